"""The rows that lift a freeze and answer a consent name the object (``…; freeze ID``,
``…; consent ID``: ``writ.core.models.named``), so verify tells two alike apart: a lift or
an answer of one does not account for another. An older writ's rows, which name none, are
judged as before (docs/security.md)."""

from __future__ import annotations

from typing import Any

from writ.core import models
from writ.stores import policy_objects


def test_only_writs_own_suffix_names_an_object() -> None:
    """The id is read from the very end of the notes: words before it that read as a
    suffix (a reason, an attribute) name nothing; an older row ending with them, its
    reason's ``)`` last, names nothing either."""
    lift = "jane lifted the freeze on prod/web (x; freeze frz_B)"
    assert models.named_in(lift, "freeze") == (lift, None)
    today = lift + models.named("freeze", "frz_A")
    assert models.named_in(today, "freeze") == (lift, "frz_A")
    assert models.named_in(today, "consent") == (today, None)
    answer = "perf granted cost's request to undo a; consent cns_B (change chg_1 by perf)"
    assert models.named_in(answer + "; consent cns_A", "consent") == (answer, "cns_A")
    assert models.named_in(answer, "consent") == (answer, None)


def test_an_answer_of_another_consent_does_not_account_for_one() -> None:
    """Two consents of one requester on one change, answered in one instant: each answer
    row accounts for the consent it names, whatever order they come in; a row naming
    neither is taken by one, an older writ's."""
    t = 1_800_000_000.0
    at = "2027-01-15T08:00:00.000000Z"
    head = "perf granted cost's request to undo capacity (change chg_1 by perf)"

    def row(seq: int, notes: str) -> dict[str, Any]:
        return {"seq": seq, "event": "consent.granted", "agent_id": "perf", "notes": notes} | {
            "timestamp": at,
            "resource": "prod/db",
        }

    def consent(i: str) -> dict[str, Any]:
        data = {"requester": "cost", "author": "perf", "attribute": "capacity"}
        data |= {"change_id": "chg_1", "answered_by": "perf", "answered_at": at}
        return {"kind": "consent", "id": i, "resource": "prod/db", "state": "granted"} | {
            "data": data,
            "created_at": t,
            "expires_at": None,
        }

    asked = [
        {"seq": i, "event": "consent.requested", "agent_id": "cost", "notes": None}
        | {"timestamp": "2027-01-15T07:00:00.000000Z", "resource": "prod/db"}
        for i in (0, 1)
    ]
    rows = [row(2, head + "; consent cns_A"), row(3, head + "; consent cns_B")]
    for order in (["cns_A", "cns_B"], ["cns_B", "cns_A"]):
        taken: dict[int, str] = {}
        for i in order:
            why = policy_objects.object_disagrees(consent(i), [asked, rows, [], []], t, taken)
            assert why is None, (order, why)
        assert taken[2] == "consent cns_A on prod/db" and taken[3] == "consent cns_B on prod/db"
    why = policy_objects.object_disagrees(consent("cns_C"), [asked, rows, [], []], t)
    assert why is not None and "the id ('cns_C')" in why
    older = [row(2, head)]
    assert policy_objects.object_disagrees(consent("cns_C"), [asked, older, [], []], t) is None
