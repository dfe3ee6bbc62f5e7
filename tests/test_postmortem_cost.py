"""The postmortem reads agents' words in time linear in them: an ask is matched to the change
it names by one pass over it, not by trying each ``: `` of each change its author recorded
(600 changes with 666 of them each, and an ask on each, took over a minute)."""

from __future__ import annotations

from typing import Any

from tests.test_postmortem_chart_bounds import _lines
from writ.evidence.postmortem import Query, build

T = "2026-05-16T10:00:00.000000Z"


def _rows(n: int, summary: str) -> list[dict[str, Any]]:
    """``n`` changes by one agent whose summary is ``summary``, then another's ask on each,
    with a reason of ``): `` again and again."""
    said = [
        ("change.recorded", "au", f"attr{i}: {summary}; protected until {T}") for i in range(n)
    ] + [
        (
            "consent.requested",
            "rq",
            f"rq asks au to undo attr{i} ({summary}): why{'): ' * 50}; answer by {T}; "
            f"consent cns_{i}",
        )
        for i in range(n)
    ]
    return [
        {
            "seq": seq,
            "timestamp": T,
            "event": ev,
            "agent_id": who,
            "resource": "prod/db",
            "notes": notes,
        }
        for seq, (ev, who, notes) in enumerate(said, 1)
    ]


def test_asks_on_changes_full_of_colons_cost_work_linear_in_them() -> None:
    """Four times the changes (each summary ``a: a: ...``) and the asks on them, or summaries
    four times as long, cost at most about four times the work, not sixteen; each ask still
    reads as the change it names."""
    reports: dict[tuple[int, int], dict[str, Any]] = {}

    def added(n: int, colons: int) -> int:
        """The lines a report on ``n`` changes and asks costs more than one on none."""
        rows = _rows(n, "a: " * colons)

        def work() -> None:
            reports[(n, colons)] = build(rows, Query(["prod"]))

        return _lines(work) - _lines(lambda: build([], Query(["prod"])))

    build(_rows(1, "a: "), Query(["prod"]))  # what is done once (compiling patterns) first
    ten = added(10, 100)
    more, longer = added(40, 100), added(10, 400)
    assert more <= 4.5 * ten and longer <= 4.5 * ten, (ten, more, longer)
    asks = [(c["attribute"], c["change"], c["reason"]) for c in reports[(40, 100)]["consents"]]
    assert asks == [(f"attr{i}", "a: " * 100, "why" + "): " * 50) for i in range(40)]
