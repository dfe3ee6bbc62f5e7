"""A rollback is approved, and its route called, once: the rollbacks table is outside the
hash chain, so the approval reads the rollback's rows first — its ``rollback.requested`` row
(who asked, for which lease and route, and why; ``…; rollback ID``) and no later row that
decided it — and ``writ audit verify`` checks every pending and approved rollback the same
way (``writ.core.rollback_rows``). Before, an executed rollback set back to pending by hand,
with another requester and reason, was approved again: its route called twice, the forged
words in writ's signed call and new rows, and verify said ok throughout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.verify_fixtures import moving
from writ.core.errors import Conflict
from writ.engine import Engine
from writ.engine.wake import CallResult
from writ.rules import rollbacks as rollback_rule

PLAN = {
    "allowed": True,
    "path": "https://ops.example/rollback/db?txn=9",
    "key_holder": "db-oncall",
    "override_queue": "db-oncall",
}
FORGED = "CTO approved in INC-4411: turn the key now"


class World:
    """An engine with a lease that may be rolled back, its key holder, and the route's calls."""

    def __init__(self, engine: Engine, backend: Backend) -> None:
        self.engine, self.backend = engine, backend
        self.calls: list[dict[str, Any]] = []

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def post(url: str, payload: dict[str, Any], attempts: int) -> CallResult:
            self.calls.append(payload["rollback"])
            return CallResult(url, True, 200, 1)

        monkeypatch.setattr(self.engine.caller, "post", post)
        add = self.engine.add_principal
        self.perf, _ = await add(None, "perf-agent", "agent")
        self.cost, _ = await add(None, "cost-agent", "agent")
        await add(None, "db-oncall", "queue")
        self.jane, _ = await add(None, "jane", "human", queues=["db-oncall"])
        self.lease = await self.engine.acquire(
            self.perf, resource="prod/db", intent="migrate", ttl_s=300, rollback=PLAN
        )

    async def request(self, reason: str = "it broke checkout") -> dict[str, Any]:
        return await self.engine.rollbacks.request(
            self.cost, lease_id=self.lease["lease_id"], reason=reason
        )

    async def set(self, rollback_id: str, state: str, **data: Any) -> None:
        """Set a rollback's state and data as an intruder with database rights would."""
        ((text,),) = await self.backend.sql(
            "SELECT data FROM objects WHERE kind = 'rollback' AND id = %s", rollback_id
        )
        new = {**json.loads(text), "status": state, **data}
        await self.backend.sql(
            "UPDATE objects SET state = %s, data = %s, expires_at = NULL"
            " WHERE kind = 'rollback' AND id = %s",
            state,
            json.dumps(new),
            rollback_id,
        )

    async def rows(self, event: str) -> list[dict[str, Any]]:
        return [r for r in (await self.engine.audit())["rows"] if r["event"] == event]

    async def broken(self, rollback_id: str, why: str) -> None:
        """Verify fails, naming the rollback and ``why``, the chain itself intact."""
        v = (await self.engine.verify()).to_dict()
        assert not v["ok"] and v["first_bad_seq"] is None, v
        assert v["policy_object"] == f"rollback {rollback_id}", v
        assert why in v["reason"], v


@pytest.fixture
async def w(make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> World:
    moving(backend)
    world = World(await make_engine(), backend)
    await world.start(monkeypatch)
    return world


async def test_rows_name_the_rollback_and_writs_own_verify(w: World) -> None:
    """The request's, the approval's and the denial's notes end with ``; rollback ID``; a
    pending, an approved (its call in the air) and a decided rollback verify."""
    pending = await w.request()
    assert (await w.engine.verify()).ok
    done = (await w.engine.rollbacks.answer(w.jane, pending["rollback_id"], True))["rollback_id"]
    denied = await w.request("again")
    await w.engine.rollbacks.answer(w.jane, denied["rollback_id"], False)
    for event, rb_id in (
        ("rollback.requested", done),
        ("rollback.approved", done),
        ("rollback.denied", denied["rollback_id"]),
    ):
        assert any(r["notes"].endswith(f"; rollback {rb_id}") for r in await w.rows(event))
    assert len(w.calls) == 1 and (await w.engine.verify()).ok


async def test_an_executed_rollback_reset_to_pending_is_refused_and_not_called(
    w: World,
) -> None:
    """An intruder sets an executed rollback back to pending, with another requester and
    reason: the approval is refused (409), its route not called again, with a
    ``rollback.refused`` row that repeats none of the forged words; verify fails, naming it."""
    rb = await w.request()
    await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], True)
    assert len(w.calls) == 1 and (await w.engine.verify()).ok
    await w.set(
        rb["rollback_id"],
        "pending",
        approved_by=None,
        executed_at=None,
        response_status=None,
        requested_by="perf-agent",
        reason=FORGED,
    )
    await w.broken(rb["rollback_id"], "the requested_by ('perf-agent') disagrees")
    with pytest.raises(Conflict) as refused:
        await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], True)
    assert "its route not called" in refused.value.message
    assert len(w.calls) == 1
    (row,) = await w.rows("rollback.refused")
    assert row["agent_id"] == "jane" and FORGED not in row["notes"]
    assert rb["rollback_id"] in row["notes"] and "changed by hand" in row["notes"]
    assert len(await w.rows("rollback.approved")) == 1
    assert (await w.engine.rollbacks.get(rb["rollback_id"]))["status"] == "pending"  # as found


@pytest.mark.parametrize("decided", [True, False], ids=["executed", "denied"])
async def test_a_decided_rollback_reset_with_its_own_words_is_refused(
    w: World, decided: bool
) -> None:
    """Set back to pending with nothing else changed, a rollback is refused by the row that
    decided it (approval is single-use); verify names that row."""
    rb = await w.request()
    await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], decided)
    await w.set(rb["rollback_id"], "pending")
    await w.broken(rb["rollback_id"], "decided it: approval is single-use")
    with pytest.raises(Conflict, match="decided it"):
        await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], True)
    assert len(w.calls) == int(decided)


async def test_a_rollback_made_by_hand_fails_verify_and_is_not_called(w: World) -> None:
    """A pending rollback written into the table by hand — a copy of a real one under an id
    of its own, or one with no request row at its time — fails verify and is refused."""
    rb = await w.request()
    ((text,),) = await w.backend.sql(
        "SELECT data FROM objects WHERE kind = 'rollback' AND id = %s", rb["rollback_id"]
    )
    for forged, data, why in (
        ("rb_forgedcopyAAAAAA", {"rollback_id": "rb_forgedcopyAAAAAA"}, "the id"),
        (
            "rb_forgedlaterAAAAA",
            {"rollback_id": "rb_forgedlaterAAAAA", "requested_at": "2020-01-01T00:00:00.000000Z"},
            "no rollback.requested row",
        ),
        ("rb_forgedotherAAAAA", {}, "its data is rollback"),
    ):
        await w.backend.sql(
            "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
            " SELECT kind, %s, resource, state, %s, created_at, NULL FROM objects"
            " WHERE kind = 'rollback' AND id = %s",
            forged,
            json.dumps({**json.loads(text), **data}),
            rb["rollback_id"],
        )
        await w.broken(forged, why)
        with pytest.raises(Conflict):
            await w.engine.rollbacks.answer(w.jane, forged, True)
        await w.backend.sql("DELETE FROM objects WHERE kind = 'rollback' AND id = %s", forged)
    assert w.calls == [] and (await w.engine.verify()).ok


async def test_an_older_writs_rollback_rows_still_verify_and_approve_once(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows an older writ wrote name no rollback: its pending rollback verifies and is
    approved (matched by who asked, what and why), and its approval row, which names the
    requester and lock key, still refuses it once set back to pending by hand."""
    monkeypatch.setattr(rollback_rule, "named", lambda kind, object_id: "")
    rb = await w.request()
    (asked,) = await w.rows("rollback.requested")
    assert asked["notes"].endswith(": it broke checkout")
    assert (await w.engine.verify()).ok
    out = await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], True)
    assert out["status"] == "executed" and len(w.calls) == 1
    await w.set(rb["rollback_id"], "pending")
    await w.broken(rb["rollback_id"], "(rollback.approved) decided it")
    with pytest.raises(Conflict):
        await w.engine.rollbacks.answer(w.jane, rb["rollback_id"], True)
    assert len(w.calls) == 1
    await w.set(rb["rollback_id"], "pending", reason=FORGED)
    await w.broken(rb["rollback_id"], "the reason")
