"""The sweep, on SQLite and on PostgreSQL: one read says what is due, and an idle sweep (no
lease past its ttl, no lock-delay or rule's duty at its end) writes no transaction — on
PostgreSQL, no turn on the chain head's lock, once a second on every server. What is due is
still done, and every ticker still runs. Time moves with ``backend.advance``; a commit is
seen through the store's ``commit_observers``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stores_fixtures import Backend
from writ.core.errors import Held, Unavailable
from writ.engine import Engine

pytestmark = pytest.mark.usefixtures("no_admin_env")

POLICY = '[[rules]]\nprefix = "prod"\nlock_delay_s = 30\nmax_hold_s = 600\n'


def _commits(engine: Engine) -> list[float]:
    seen: list[float] = []
    engine.store.commit_observers.append(seen.append)
    return seen


async def _events(engine: Engine, event: str) -> list[dict[str, Any]]:
    return [r for r in (await engine.audit(limit=10_000))["rows"] if r["event"] == event]


async def _held_and_frozen(make_engine: Any, ttl_s: float, until: str) -> Engine:
    """An engine where agent-a holds prod/db for ``ttl_s`` (under a max_hold_s of 600: a
    hold check) and jane froze prod/web ``until``."""
    engine: Engine = await make_engine(POLICY)
    a, _ = await engine.add_principal(None, "agent-a", "agent")
    jane, _ = await engine.add_principal(None, "jane", "human")
    await engine.acquire(a, resource="prod/db", intent="migrate", ttl_s=ttl_s)
    await engine.freezes.freeze(jane, "prod/web", "incident", until=until)
    return engine


async def test_an_idle_sweep_writes_no_transaction_and_runs_every_ticker(
    make_engine: Any, backend: Backend
) -> None:
    # a freeze and a hold check that end later: each rule has something standing, not yet due
    engine = await _held_and_frozen(make_engine, 60, "2h")
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)

    engine.add_ticker(tick)
    commits = _commits(engine)
    assert await engine.sweep() == 0
    assert await engine.sweep() == 0
    assert commits == [] and len(ticks) == 2


async def test_a_sweep_still_expires_a_due_lease_and_ends_a_due_lock_delay(
    make_engine: Any, backend: Backend
) -> None:
    engine: Engine = await make_engine(POLICY)
    a, _ = await engine.add_principal(None, "agent-a", "agent")
    lease = await engine.acquire(a, resource="prod/db", intent="migrate", ttl_s=5)
    commits = _commits(engine)
    await backend.advance(6)
    assert await engine.sweep() == 1  # expired; its lock-delay of 30 s begins
    [expired] = await _events(engine, "lease.expired")
    assert expired["resource"] == lease["resource"] and len(commits) == 1
    assert await engine.sweep() == 0 and len(commits) == 1  # the delay is not due: idle
    with pytest.raises(Held):
        await engine.acquire(a, resource="prod/db", intent="again", ttl_s=5)
    await backend.advance(31)
    assert await engine.sweep() == 0 and len(commits) == 3  # (the refusal's, then the sweep's)
    [(state,)] = await backend.sql("SELECT state FROM objects WHERE kind = 'delay'")
    assert state == "done"


async def test_a_rules_duty_is_done_by_the_first_sweep_at_its_end(
    make_engine: Any, backend: Backend
) -> None:
    engine = await _held_and_frozen(make_engine, 3600, "40s")
    commits = _commits(engine)
    await engine.sweep()
    assert commits == [] and await _events(engine, "freeze.expired") == []
    await backend.advance(41)
    await engine.sweep()  # the freeze ends (Freezes)
    assert len(commits) == 1 and len(await _events(engine, "freeze.expired")) == 1
    await backend.advance(600)
    await engine.sweep()  # held past max_hold_s: its holder is woken (Stuck)
    assert len(commits) == 2 and len(await _events(engine, "lease.stuck")) == 1


async def test_a_rule_whose_due_fails_costs_the_sweep_nothing(
    make_engine: Any, backend: Backend
) -> None:
    """A rule's ``due`` that raises (a third party's) makes the sweep do everything, as
    before it looked first: leases past their ttl still expire, every rule still ticks."""
    engine = await _held_and_frozen(make_engine, 5, "40s")

    async def broken(tx: Any, now: float) -> bool:
        raise RuntimeError("a rule's bug")

    engine._dues[engine.freezes.tick] = broken
    await backend.advance(41)
    assert await engine.sweep() == 1
    assert len(await _events(engine, "lease.expired")) == 1
    assert len(await _events(engine, "freeze.expired")) == 1


async def test_a_store_out_of_reach_fails_the_sweep_once(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store out of reach as the sweep looks: the sweep fails (the sweeper says so and
    tries again), not the look's fallback, which would try a write to it as well."""
    engine = await _held_and_frozen(make_engine, 5, "40s")
    written: list[Any] = []

    async def unreachable(fn: Any) -> Any:
        raise Unavailable("the store is out of reach")

    async def transact(fn: Any) -> Any:
        written.append(fn)

    monkeypatch.setattr(engine.store, "read", unreachable)
    monkeypatch.setattr(engine.store, "transact", transact)
    with pytest.raises(Unavailable):
        await engine.sweep()
    assert written == []


async def test_the_sweeper_waits_for_the_next_expiry_less_the_time_its_ticks_took(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle sweep's read says when the next lease expires; the tickers run after it. The
    sweeper sleeps until then, not that long again from after the tickers (each sweep whose
    ticks took a while expired its next lease that much late)."""
    import asyncio

    engine = await _held_and_frozen(make_engine, 5, "2h")
    engine.sweep_interval = 60.0
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def tick() -> None:
        await real_sleep(0.3)  # a ticker that takes its time (a pass, a checkpoint)

    sweeper: asyncio.Task[None] | None = None

    async def sleep(delay: float, *args: Any) -> Any:
        # asyncio.sleep is patched for everyone: only the sweeper's own wait between sweeps
        # is taken (a store's background tasks, or its own brief yields, sleep for real)
        if asyncio.current_task() is not sweeper or delay < 1.0:
            return await real_sleep(delay, *args)
        slept.append(delay)
        engine._closing = True

    engine.add_ticker(tick)
    monkeypatch.setattr("writ.engine.kernel.asyncio.sleep", sleep)
    sweeper = asyncio.ensure_future(engine._sweeper())
    await asyncio.wait_for(sweeper, 30)
    assert len(slept) == 1 and 4.0 < slept[0] <= 4.75, slept


async def test_the_sweeper_wakes_when_a_lock_delay_ends(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease expires into a lock-delay of 30 s: the sweeper's next wake-up is the delay's
    end, after the sweep that began it and after an idle one, so the queue it holds back is
    served then. Before, it counted only lease expiries, and slept its whole interval (here
    made a minute; a second by default): a waiter behind a lock-delay got the resource up to
    that much late."""
    import asyncio

    engine: Engine = await make_engine(POLICY)
    engine.sweep_interval = 60.0
    a, _ = await engine.add_principal(None, "agent-a", "agent")
    await engine.acquire(a, resource="prod/db", intent="migrate", ttl_s=5)
    await backend.advance(6)  # past its ttl: the first sweep expires it, its delay begins
    slept: list[float] = []
    real_sleep = asyncio.sleep
    sweeper: asyncio.Task[None] | None = None

    async def sleep(delay: float, *args: Any) -> Any:
        # only the sweeper's own wait between sweeps is taken (see the test above)
        if asyncio.current_task() is not sweeper or delay < 1.0:
            return await real_sleep(delay, *args)
        slept.append(delay)
        await backend.advance(10)
        engine._closing = len(slept) == 2

    monkeypatch.setattr("writ.engine.kernel.asyncio.sleep", sleep)
    sweeper = asyncio.ensure_future(engine._sweeper())
    await asyncio.wait_for(sweeper, 30)
    assert len(slept) == 2, slept
    assert 29.0 < slept[0] <= 30.0 and 19.0 < slept[1] <= 20.0, slept  # (the delay's end)
