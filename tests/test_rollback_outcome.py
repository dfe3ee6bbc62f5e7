"""An approved rollback always ends with its outcome on the record. Before, a graceful
shutdown (or a client gone) that cancelled the approving request while writ called the
route left the rollback ``approved`` for ever: no ``rollback.executed`` or ``failed`` row,
and approval is single-use, so it could not be approved again either. Now the call and its
row are carried to their end whatever becomes of the request, and an approval whose
outcome no server recorded (its server died mid-call) fails after a minute, its outcome
named unknown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.test_safety import World, _pending_rollback, receiver, world  # noqa: F401
from writ.engine.wake import CallResult
from writ.rules.rollbacks import UNKNOWN_AFTER_S, Rollbacks


async def _state(w: World, rollback_id: str) -> dict[str, Any]:
    r = await w.get("oncall-jane", f"/v1/rollbacks/{rollback_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_a_cancelled_approval_still_records_the_routes_answer(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = world
    rb = await _pending_rollback(w, "/ops/rollback?txn=1", "perf-agent")
    calling, answer = asyncio.Event(), asyncio.Event()

    async def slow_post(url: str, payload: dict[str, Any], attempts: int) -> CallResult:
        calling.set()
        await answer.wait()
        return CallResult(url, True, 200, 1)

    monkeypatch.setattr(w.engine.caller, "post", slow_post)
    rules = w.engine.rule(Rollbacks)
    jane = await w.engine.principal("oncall-jane")
    assert jane is not None
    approving = asyncio.ensure_future(rules.answer(jane, rb["rollback_id"], True))
    await asyncio.wait_for(calling.wait(), 5)
    approving.cancel()  # a shutdown's cancel, or the client gone
    with pytest.raises(asyncio.CancelledError):
        await approving
    answer.set()
    await w.engine.caller.drain()
    assert (await _state(w, rb["rollback_id"]))["status"] == "executed"
    assert [r["approved_by"] for r in await w.rows("rollback.executed")] == ["oncall-jane"]


async def test_an_approval_whose_outcome_was_never_recorded_fails_unknown(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = world
    rb = await _pending_rollback(w, "/ops/rollback?txn=2", "perf-agent")

    async def died_mid_call(self: Rollbacks, me: Any, approved: dict[str, Any]) -> Any:
        return approved  # the server died after the approval's commit: nothing recorded

    monkeypatch.setattr(Rollbacks, "_execute", died_mid_call)
    r = await w.post("oncall-jane", f"/v1/rollbacks/{rb['rollback_id']}/approve")
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    await w.tick(UNKNOWN_AFTER_S - 5)
    assert (await _state(w, rb["rollback_id"]))["status"] == "approved"  # still in the air
    await w.tick(10)
    now = await _state(w, rb["rollback_id"])
    assert now["status"] == "failed" and "may have been called" in now["error"], now
    failed = await w.rows("rollback.failed")
    assert len(failed) == 1 and failed[0]["agent_id"] == "writ", failed
    assert failed[0]["approved_by"] == "oncall-jane"
    r = await w.post("oncall-jane", f"/v1/rollbacks/{rb['rollback_id']}/approve")
    assert r.status_code == 422 and "already failed" in r.text
    await w.tick(120)
    assert len(await w.rows("rollback.failed")) == 1  # once
    assert (await w.engine.verify()).ok
