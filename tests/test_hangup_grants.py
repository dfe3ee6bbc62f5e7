"""A lease granted to a caller that was gone when its answer was ready is given back. Two
timings once kept it held for its whole ttl, by nobody: the grant and the caller's hang-up
seen in one turn of the loop (Python 3.11's ``wait_for`` then returned the lease to a
cancelled wait, and the caller was told 503 "its place in the queue was given up" while
the ledger said granted), and a 201 the lean path found no one to write to. Each trial here
has the holder release while its waiter's caller hangs up some turns of the loop before or
after the grant's note."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.test_engine import adds, queued, rows
from writ.api.fast import LEASES
from writ.api.middleware import _unless_hung_up
from writ.core.errors import Unavailable
from writ.engine import Engine

pytestmark = pytest.mark.usefixtures("no_admin_env")


@pytest.mark.parametrize("turns", [-1, 0, 1, 2, 3, 4])
async def test_a_grant_met_by_its_callers_hang_up_is_answered_or_given_back(
    engine: Engine, turns: int
) -> None:
    holder, waiter = await adds(engine, "holder", "waiter")
    held = await engine.acquire(holder, resource="c/r", intent="h", ttl_s=60)
    hung = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await hung.wait()
        return {"type": "http.disconnect"}

    work = engine.acquire(waiter, resource="c/r", intent="w", ttl_s=120, wait_s=30)
    call = asyncio.ensure_future(_unless_hung_up(receive, work, None, engine.give_back))
    await queued(engine, "waiter")
    real = engine._on_note

    def on_note(kind: str, payload: Any) -> None:  # the hang-up, ``turns`` from the note
        if kind == "granted" and turns < 0:
            hung.set()
        real(kind, payload)
        if kind == "granted" and turns >= 0:
            loop = asyncio.get_running_loop()

            def later(k: int) -> None:
                hung.set() if k == 0 else loop.call_soon(later, k - 1)

            later(turns)

    engine.store.set_listener(on_note)
    await engine.release(holder, held["lease_id"])
    try:
        answered = await call
    except Unavailable:
        answered = None
    engine.store.set_listener(real)
    mine = [x for x in await engine.store.read(lambda tx: tx.held_leases()) if x.holder == "waiter"]
    if answered is not None:  # the caller got it: it holds it
        assert [x.lease_id for x in mine] == [answered["lease_id"]]
        return
    assert mine == []  # 503 to the caller: nothing held in its name
    back = [r for r in await rows(engine, "lease.released") if r["agent_id"] == "waiter"]
    denied = [r for r in await rows(engine, "lease.denied") if r["agent_id"] == "waiter"]
    assert len(back) + len(denied) == 1, (back, denied)
    if back:
        assert "before the grant reached it" in back[0]["notes"]


async def test_a_grant_the_lean_path_could_not_deliver_is_given_back(engine: Engine) -> None:
    """The lean path's 201 found its client gone (``direct_answer`` wrote nothing): the
    lease is given back, with the row that says so."""
    from writ.api.app import create_app

    (agent,) = await adds(engine, "agent-a")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale", ttl_s=600)
    app = create_app(engine, start_engine=False)
    await app._undelivered(LEASES, 201, {"writ.lease": lease})
    assert await engine.store.read(lambda tx: tx.held_leases()) == []
    (back,) = await rows(engine, "lease.released")
    assert back["notes"].startswith("released: the caller disconnected before the grant")
    await app._undelivered(LEASES, 201, {"writ.lease": lease})  # twice: nothing more
    assert len(await rows(engine, "lease.released")) == 1


async def test_a_grant_done_in_the_turn_its_caller_hangs_up_is_given_back() -> None:
    """The work and the hang-up wake on one event: the caller is answered 503 and the
    grant goes to ``give_back`` (before, the lease went to a caller that had hung up)."""
    woke = asyncio.Event()
    given: list[Any] = []

    async def work() -> dict[str, Any]:
        await woke.wait()
        return {"lease_id": "ls_1", "fencing_token": 1}

    async def receive() -> dict[str, Any]:
        await woke.wait()
        return {"type": "http.disconnect"}

    async def give_back(lease: dict[str, Any], draining: bool) -> None:
        given.append((lease["lease_id"], draining))

    call = asyncio.ensure_future(_unless_hung_up(receive, work(), None, give_back))
    await asyncio.sleep(0)
    woke.set()
    with pytest.raises(Unavailable, match="hung up"):
        await call
    assert given == [("ls_1", False)]


async def test_a_cancel_its_caller_handled_before_does_not_end_a_wait(engine: Engine) -> None:
    """A task that caught a cancel of its own (and went on) then waits in the queue: its
    wait is not taken for a cancelled one — the lease is granted and held, not given back."""
    holder, waiter = await adds(engine, "holder", "waiter")
    held = await engine.acquire(holder, resource="c/r", intent="h", ttl_s=60)

    async def caller() -> dict[str, Any]:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass  # handled, and not uncancel()ed: cancelling() stays 1
        return await engine.acquire(waiter, resource="c/r", intent="w", ttl_s=60, wait_s=5)

    call = asyncio.ensure_future(caller())
    await queued(engine, "waiter")
    await engine.release(holder, held["lease_id"])
    lease = await call
    assert lease["holder"] == "waiter" and lease["state"] == "held"
    now = await engine.store.read(lambda tx: tx.get_lease(lease["lease_id"]))
    assert now is not None and now.state == "held"
