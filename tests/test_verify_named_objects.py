"""The rows that lift a freeze and answer a consent name the object (``…; freeze ID``,
``…; consent ID``: ``writ.core.models.named``), so verify tells two alike apart: a lift or
an answer of one does not account for another. An older writ's rows, which name none, are
judged as before (docs/security.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.verify_fixtures import moving, walked
from writ.core import models
from writ.core.errors import Frozen
from writ.engine import Engine
from writ.rules import consent as consent_rule
from writ.rules import freezes as freeze_rule
from writ.stores import policy_objects

_FAKE = "frz_BBBBBBBBBBBBBBBB"  # the second freeze's id, when a reason names it


def _older(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows as an older writ wrote them: naming no freeze and no consent."""
    monkeypatch.setattr(freeze_rule, "named", lambda kind, object_id: "")
    monkeypatch.setattr(consent_rule, "named", lambda kind, object_id: "")


async def _set(backend: Backend, object_id: str, state: str, **data: Any) -> None:
    ((text,),) = await backend.sql(f"SELECT data FROM objects WHERE id = '{object_id}'")
    new = json.dumps({**json.loads(text), **data}).replace("'", "''")
    await backend.sql(
        f"UPDATE objects SET state = '{state}', expires_at = NULL, data = '{new}'"
        f" WHERE id = '{object_id}'"
    )


async def _swapped(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch, reason: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two freezes on prod/web with one reason, the first allowing cost-agent; writ lifts
    the first. An intruder sets it back to active and marks the second lifted with its
    lift (lifted_by, lifted_at): cost-agent is let through where the second stopped it."""
    moving(backend)
    ids: Iterator[str] = iter(["frz_AAAAAAAAAAAAAAAA", _FAKE])
    monkeypatch.setattr(freeze_rule, "new_id", lambda prefix: next(ids))
    jane, _ = await engine.add_principal(None, "jane", "human")
    cost, _ = await engine.add_principal(None, "cost-agent", "agent")
    first = await engine.freezes.freeze(jane, "prod/web", reason, allow=["cost-agent"])
    second = await engine.freezes.freeze(jane, "prod/web", reason)
    lift = await engine.freezes.lift(jane, first["freeze_id"])
    with pytest.raises(Frozen):
        await engine.acquire(cost, resource="prod/web", intent="deploy")
    assert (await engine.verify()).ok
    await _set(backend, first["freeze_id"], "active", lifted_by=None, lifted_at=None)
    said = {k: lift[k] for k in ("lifted_by", "lifted_at")}
    await _set(backend, second["freeze_id"], "lifted", **said)
    await engine.acquire(cost, resource="prod/web", intent="deploy")  # let through now
    return first, second


async def _disagrees(engine: Engine, named: str, claimed: str, row_names: str) -> None:
    """Verify fails on the policy object ``named``: the id it claims (``claimed``) is not
    the one its row names (``row_names``)."""
    bad = await engine.verify()
    assert not bad.ok and bad.policy_object == named, bad
    assert f"the id ('{claimed}') disagrees with its row" in (bad.reason or ""), bad
    assert f"'{row_names}')" in (bad.reason or ""), bad


@pytest.mark.parametrize("reason", ["incident", f"incident; freeze {_FAKE}"])
async def test_two_freezes_swapped_fail_verify(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    """The lift row names the freeze writ lifted, after the human's reason: the other one,
    marked lifted with it, has no lift of its own, even when the reason ends as if it
    named that one (``; freeze ID`` of the second: writ's own suffix comes last)."""
    if backend.is_pg and reason != "incident":
        pytest.skip("on PostgreSQL, the plain reason")
    first, second = await _swapped(engine, backend, monkeypatch, reason)
    await _disagrees(engine, f"freeze {second['freeze_id']}", _FAKE, first["freeze_id"])


async def test_an_older_lift_row_is_judged_as_before(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older writ's lift row names no freeze: it verifies, and lifts one freeze of its
    prefix and reason, so the swap is not told apart (docs/security.md)."""
    if backend.clock is None:
        pytest.skip("on SQLite")
    _older(monkeypatch)
    engine = await make_engine()
    await _swapped(engine, backend, monkeypatch, "incident")
    assert (await engine.verify()).ok


async def _granted_twice(
    engine: Engine, backend: Backend
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """cost-agent asks twice to undo perf-agent's change; perf-agent grants the first,
    which cost-agent uses. An intruder marks the second granted with the first's answer
    (answered_by, answered_at): one more use of what was granted once."""
    moving(backend)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    cost, _ = await engine.add_principal(None, "cost-agent", "agent")
    lease = await engine.acquire(perf, resource="prod/db", intent="scale", touches=["*"])
    change = await engine.consents.record_change(perf, lease["lease_id"], "capacity", "4→8")
    await engine.release(perf, lease["lease_id"])
    # asked again once answered (while pending, asking again is the same ask)
    asked = [await engine.consents.ask(cost, change["change_id"], "need it")]
    granted = await engine.consents.answer(perf, asked[0]["consent_id"], True)
    asked.append(await engine.consents.ask(cost, change["change_id"], "need it"))
    used = await engine.acquire(
        cost, resource="prod/db", intent="undo", touches=["capacity"],
        consent_id=granted["consent_id"],
    )  # fmt: skip
    await engine.release(cost, used["lease_id"])
    assert (await engine.verify()).ok
    said = {k: granted[k] for k in ("answered_by", "answered_at")}
    await _set(backend, asked[1]["consent_id"], "granted", status="granted", **said)
    return cost, asked[0], asked[1]


async def test_a_consent_granted_with_a_used_ones_answer_fails_verify(
    engine: Engine, backend: Backend
) -> None:
    """The answer row names the consent it answers: the copy, granted with the answer of
    one since used (no longer read), has no answer of its own, where verify said ok and
    its requester could be let past the protection a second time."""
    _, first, second = await _granted_twice(engine, backend)
    second_id = second["consent_id"]
    await _disagrees(engine, f"consent {second_id}", second_id, first["consent_id"])


async def test_an_older_answer_row_is_judged_as_before(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older writ's answer row names no consent: it verifies, and the copy granted with
    the answer of one since used is not told apart (docs/security.md)."""
    if backend.clock is None:
        pytest.skip("on SQLite")
    _older(monkeypatch)
    engine = await make_engine()
    await _granted_twice(engine, backend)
    assert (await engine.verify()).ok


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


async def test_the_walk_reads_the_reason_before_the_id(make_engine: Any, backend: Backend) -> None:
    """The walk matches a lift row to the freeze it ends by its prefix and reason (no created
    row names an id): the id after the reason is left out, and a reason that ends as if it
    named a freeze is read whole, so of two freezes on a prefix the lifted one is ended and
    the other kept as standing (reading the id as the reason's, it ended neither)."""
    if backend.clock is None:
        pytest.skip("on SQLite")
    engine = await make_engine()
    jane, _ = await engine.add_principal(None, "jane", "human")
    for reason in ("incident", f"incident; freeze {_FAKE}"):
        prefix = f"prod/{len(reason)}"
        await engine.freezes.freeze(jane, prefix, "deploy")
        f = await engine.freezes.freeze(jane, prefix, reason)
        await engine.freezes.lift(jane, f["freeze_id"])
    opened = await walked(engine)
    kept = [(o.resource, o.reason) for o in opened.objects.objects.values()]
    assert sorted(kept) == [("prod/37", "deploy"), ("prod/8", "deploy")]
