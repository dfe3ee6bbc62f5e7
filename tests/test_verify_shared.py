"""Verifies share runs: a whole-ledger verify is seconds of a server's CPU on a large ledger,
and any principal may ask for one (``GET /v1/audit/verify``). One runs at a time; those who
ask while it runs share the next one, so each answer still covers the chain as it stood when
its caller asked, and a crowd of callers costs two runs, not one each. On every store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from writ.core.errors import Unavailable
from writ.engine import Engine


class Gated:
    """Counts the store's whole-ledger reads; each waits at its first page until let go."""

    def __init__(self, engine: Engine) -> None:
        self.store = engine.store
        self.inner = engine.store.audit_records
        self.runs = 0
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.fail: BaseException | None = None
        engine.store.audit_records = self.records  # type: ignore[method-assign]

    def records(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.runs += 1
        return self._pages(*args, **kwargs)

    async def _pages(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.started.set()
        await self.go.wait()
        if self.fail is not None:
            raise self.fail
        async for page in self.inner(*args, **kwargs):
            yield page


async def _rows(engine: Engine, n: int) -> None:
    agent = (
        await engine.principal("perf-agent")
        or (await engine.add_principal(None, "perf-agent", "agent"))[0]
    )
    for _ in range(n):
        lease = await engine.acquire(agent, resource="prod/db", intent="scale")
        await engine.release(agent, lease["lease_id"])


async def test_a_crowd_of_verifies_costs_two_runs_and_each_covers_its_ask(
    engine: Engine,
) -> None:
    await _rows(engine, 3)
    gate = Gated(engine)
    first = asyncio.ensure_future(engine.verify())
    await gate.started.wait()  # the first run is in the air, before any row of it was read
    await _rows(engine, 2)  # rows committed after the first run began, before the crowd asks
    crowd = [asyncio.ensure_future(engine.verify()) for _ in range(50)]
    await asyncio.sleep(0)
    gate.go.set()
    done = await asyncio.gather(first, *crowd)
    assert gate.runs == 2, gate.runs
    head = (await engine.audit(limit=1000))["rows"][-1]["seq"]
    assert all(v.ok for v in done), [v.reason for v in done if not v.ok]
    # the crowd's run began after they asked: it covers the rows written before they did
    assert {v.rows for v in done[1:]} == {head}, ({v.rows for v in done[1:]}, head)
    assert done[0].rows <= head
    # alone again: each verify is a run of its own
    await engine.verify()
    assert gate.runs == 3


async def test_a_caller_who_hangs_up_does_not_end_the_run_for_the_others(
    engine: Engine,
) -> None:
    await _rows(engine, 2)
    gate = Gated(engine)
    running = asyncio.ensure_future(engine.verify())
    await gate.started.wait()
    leaving = asyncio.ensure_future(engine.verify())  # these two share the next run
    staying = asyncio.ensure_future(engine.verify())
    await asyncio.sleep(0)
    leaving.cancel()
    gate.go.set()
    assert (await running).ok and (await staying).ok
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert gate.runs == 2


async def test_a_store_error_reaches_every_caller_of_that_run_and_the_next_run_is_fresh(
    engine: Engine,
) -> None:
    await _rows(engine, 1)
    gate = Gated(engine)
    gate.fail = Unavailable("store unreachable")
    callers = [asyncio.ensure_future(engine.verify()) for _ in range(3)]
    await gate.started.wait()
    gate.go.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results
    assert gate.runs == 2  # the first caller's run, and the one the others shared
    gate.fail = None
    assert (await engine.verify()).ok
    assert gate.runs == 3
