"""A lease's end wakes the first in line, not the whole queue (engine.kernel._wait).

Each waiter once looked again when the lease blocking it was due to end: a principal that
queued 1,000 acquires behind a 1-second lease it kept renewing made 1,000 write
transactions at every end, and another agent's pair took 146-288 ms each second instead of
10 ms. With the sweeper running (every `writ serve`), it ends the lease and serves the queue
in order; only the first waiter looks itself, in case it is quicker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from writ.core.errors import ConsentRequired
from writ.engine import Engine
from writ.rules.consent import Consents
from writ.stores.sqlite import SQLiteStore


async def test_only_the_first_waiter_looks_again_when_its_blocker_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WRIT_ADMIN_TOKEN", raising=False)
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}"))
    await engine.start(background=True)  # the sweeper, as writ serve runs it
    try:
        holder, _ = await engine.add_principal(None, "holder", "agent")
        greedy, _ = await engine.add_principal(None, "greedy", "agent")
        rechecks: list[str] = []
        real = engine._recheck_tx

        async def counted(tx: Any, req: Any, waiter: Any, final: bool) -> Any:
            rechecks.append(waiter.waiter_id)
            return await real(tx, req, waiter, final)

        monkeypatch.setattr(engine, "_recheck_tx", counted)
        first = await engine.acquire(holder, resource="herd/r", intent="hold", ttl_s=1)
        waits = [
            asyncio.create_task(
                engine.acquire(greedy, resource="herd/r", intent=f"w{i}", ttl_s=30, wait_s=20)
            )
            for i in range(20)
        ]
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED, timeout=15)
        assert len(done) == 1, "the lease's end served nobody"
        granted = next(iter(done)).result()
        assert granted["fencing_token"] > first["fencing_token"]
        assert granted["intent"] == "w0"  # in order
        # the head may have looked itself; the nineteen behind it did not
        assert len(rechecks) <= 2, rechecks
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await engine.stop()


async def _queued(engine: Engine, n: int) -> None:
    """Until ``n`` requests are queued (each acquire task queues in its first steps)."""
    async with asyncio.timeout(10):
        while True:
            changed = engine.audit_changed  # set by the next commit (a lease.queued row)
            if len(await engine.store.read(lambda tx: tx.waiter_seqs())) >= n:
                return
            await changed.wait()


async def test_a_waiter_behind_one_refused_at_the_hand_off_is_served_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease ends; the first in line is refused by the safety rules (its acquire would
    undo the holder's fresh change); the one behind it gets the free resource then, not at
    its own deadline (it no longer looks at the blocker's end: it was not first)."""
    monkeypatch.delenv("WRIT_ADMIN_TOKEN", raising=False)
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}"))
    await engine.start(background=True)
    try:
        a, _ = await engine.add_principal(None, "a", "agent")
        b, _ = await engine.add_principal(None, "b", "agent")
        c, _ = await engine.add_principal(None, "c", "agent")
        kw: dict[str, Any] = {"resource": "prod/db", "ttl_s": 30, "wait_s": 30}
        held = await engine.acquire(a, intent="scale", touches=["capacity"], **kw)
        wb = asyncio.create_task(engine.acquire(b, intent="undo", touches=["capacity"], **kw))
        await _queued(engine, 1)
        wc = asyncio.create_task(engine.acquire(c, intent="route", touches=["routing"], **kw))
        await _queued(engine, 2)
        await engine.rule(Consents).record_change(a, held["lease_id"], "capacity", "4->8")
        await engine.release(a, held["lease_id"])
        with pytest.raises(ConsentRequired):
            await wb
        granted = await asyncio.wait_for(wc, 5)  # before: at c's deadline, 30 s on
        assert granted["holder"] == "c"
    finally:
        await engine.stop()
