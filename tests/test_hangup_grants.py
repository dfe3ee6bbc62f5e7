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
