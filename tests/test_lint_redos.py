"""The lint rules' regexes take time linear in the value they read (a security review).

A row's text fields reach these patterns whole, up to the reader's 64 MiB a value, so a pattern
whose backtracking grows with the square of its input is a way to stall ``writ lint`` with one
row. Each rewritten pattern is checked two ways: it matches what the old one matched (same
truthiness, same span) on a table of cases and on random strings made of the pattern's own
pieces; and an input that took seconds with the old pattern now takes well under a second (a
generous bound: the point is quadratic against linear, not speed).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import pytest

from writ.evidence.lint import check_row, provenance_parts
from writ.evidence.lint.rules import _PROVENANCE_TEXT

BOUND_S = 0.5  # each slow input below took 5 s or more before its pattern was rewritten


def _same_matches(old: re.Pattern[str], new: re.Pattern[str], text: str) -> None:
    a, b = old.search(text), new.search(text)
    assert (a and a.span()) == (b and b.span()), text


def _random_texts(pieces: list[str], n: int = 4000, longest: int = 12) -> list[str]:
    rnd = random.Random(20260516)
    return ["".join(rnd.choices(pieces, k=rnd.randint(0, longest))) for _ in range(n)]


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- runbook

OLD_RUNBOOK = re.compile(r"\brunbook\b\s*[:=#]?\s*[\w./#-]*\w", re.I)
RUNBOOK = _PROVENANCE_TEXT["runbook"]


@pytest.mark.parametrize(
    ("text", "matched"),
    [
        ("svc-ops-princess revoked via runbook R-44 at 04:12Z", "runbook R-44"),
        ("runbook: R-44", "runbook: R-44"),
        ("runbook=ops/db.md", "runbook=ops/db.md"),
        ("runbook #12", "runbook #12"),
        ("runbook # 12", "runbook # 12"),
        ("runbook#x", "runbook#x"),
        ("runbook ##12", "runbook ##12"),
        ("RUNBOOK\tr1", "RUNBOOK\tr1"),
        ("runbook  :  ./x", "runbook  :  ./x"),
        ("runbook R-44.", "runbook R-44"),
        ("runbook ./x/", "runbook ./x"),
        ("runbook runbook", "runbook runbook"),
        ("runbook", None),
        ("runbook:", None),
        ("runbook :  !", None),
        ("runbook::R", None),
        ("runbook -.-", None),
        ("the runbooks R-1", None),
        ("myrunbook R-1", None),
        ("runbook" + " " * 50 + "!", None),
    ],
)
def test_the_runbook_pattern_matches_what_it_matched_before(text: str, matched: str | None):
    for rx in (OLD_RUNBOOK, RUNBOOK):
        m = rx.search(text)
        assert (m and m.group()) == matched, (rx.pattern, text)
    assert ("runbook" in provenance_parts(text)) == (matched is not None)


def test_the_runbook_pattern_agrees_with_the_old_one_on_random_text():
    pieces = ["runbook", "RunBook", "runbooks", " ", "  ", "\t", ":", "=", "#", "-", ".", "/"]
    for text in _random_texts([*pieces, "R", "4", "_", "!", "x", "\n"]):
        _same_matches(OLD_RUNBOOK, RUNBOOK, text)


def test_a_runbook_followed_by_a_long_run_of_spaces_is_judged_in_linear_time():
    """``runbook`` + 16,000 spaces + ``!`` took 5 s: each split of the spaces between the two
    ``\\s*`` around the optional separator was tried before failing."""
    text = "runbook" + " " * 16_000 + "!"
    assert _seconds(lambda: provenance_parts(text)) < BOUND_S
    row = {"second_key_revoke_provenance": "jane revoked at 04:12Z, paged db-oncall, " + text}
    took = _seconds(lambda: check_row(row, fragment=True))
    (finding,) = check_row(row, fragment=True).findings
    assert finding.rule == "revoke-provenance-incomplete" and "runbook" in finding.reason
    assert took < BOUND_S
