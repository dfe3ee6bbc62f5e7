"""The standing verify (``writ serve --verify-every``): each pass walks only the rows written
since the last, reads the last row it verified again, checks the tables, and says a break
in the log and in ``writ_audit_verify_ok``; checkpoints are signed only at rows it verified."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import server_process, wait_until
from tests.stores_fixtures import Backend
from tests.verify_fixtures import edit_row
from writ.api.app import create_app
from writ.cli import main
from writ.core.clock import ManualClock
from writ.engine import Engine
from writ.evidence import sentinel as sentinel_mod
from writ.evidence.checkpoint import MARK, Checkpointer, generate_key
from writ.evidence.sentinel import Sentinel
from writ.stores.sqlite import SQLiteStore


class Ticks:
    """A clock for the sentinel's schedule, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _rows(engine: Engine, n: int, name: str = "agent") -> None:
    for i in range(n):
        await engine.add_principal(None, f"{name}-{i}", "agent")


def _walked_from(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``after_seq`` of every walk of the ledger from now on."""
    seen: list[int] = []
    real = engine.store.audit_records

    def records(after_seq: int = 0, batch: int = 10_000) -> Any:
        seen.append(after_seq)
        return real(after_seq, batch)

    monkeypatch.setattr(engine.store, "audit_records", records)
    return seen


async def test_each_pass_walks_only_the_rows_written_since(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pass walks the whole chain; the next ones from the last row verified, and
    say the rows verified through; one a day walks the whole chain again."""
    await _rows(engine, 5)
    ticks = Ticks()
    s = Sentinel(engine, every=60, full_every=3600, clock=ticks)
    walks = _walked_from(engine, monkeypatch)
    first = await s.pass_()
    head = await engine.store.read(lambda tx: tx.audit_head())
    assert first.ok and (first.rows, first.head) == head and s.at == head
    await _rows(engine, 3, "late")
    second = await s.pass_()
    assert second.ok and second.rows == head[0] + 3 and walks == [0, head[0]]
    ticks.now += 3600
    assert (await s.pass_()).ok and walks[-1] == 0


async def test_a_lease_deleted_by_hand_is_found_by_the_next_pass(
    engine: Engine, backend: Backend
) -> None:
    """Tables are checked on every pass, with the leases the rows left open carried from
    one pass to the next: a lease granted before the last pass, deleted by hand after it."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    s = Sentinel(engine, every=60)
    assert (await s.pass_()).ok
    await _rows(engine, 2)
    await backend.sql(f"DELETE FROM leases WHERE lease_id = '{lease['lease_id']}'")
    out = await s.pass_()
    assert not out.ok and out.lease_id == lease["lease_id"]
    assert "the ledger holds it open" in (out.reason or "")


async def test_a_waiter_deleted_by_hand_is_found_by_the_next_pass(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waits the rows left open are carried from one pass to the next, like the leases:
    a request queued before the last pass, deleted by hand after it, is found by a pass that
    walks only the rows since; a whole pass starts them afresh from the chain."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    other, _ = await engine.add_principal(None, "cost-agent", "agent")
    await engine.acquire(agent, resource="prod/db", intent="scale up")
    task = asyncio.create_task(
        engine.acquire(other, resource="prod/db", intent="scale down", wait_s=120)
    )
    try:
        for _ in range(500):
            queue = await engine.store.read(lambda tx: tx.waiters_between(0, 1 << 62))
            if queue:
                break
            await asyncio.sleep(0.01)
        (w,) = queue
        ticks = Ticks()
        s = Sentinel(engine, every=60, full_every=3600, clock=ticks)
        walks = _walked_from(engine, monkeypatch)
        assert (await s.pass_()).ok and list(s.opened.waits.waits) == [w.waiter_id]
        await _rows(engine, 2)
        await backend.sql(f"DELETE FROM waiters WHERE waiter_id = '{w.waiter_id}'")
        out = await s.pass_()
        assert walks == [0, s.at[0] - 2] and not out.ok and out.waiter_id == w.waiter_id
        assert "the ledger holds its wait open" in (out.reason or "")
        before = s.opened.waits
        ticks.now += 3600  # a whole pass: the waits collected again, from the first row
        again = await s.pass_()
        assert walks[-1] == 0 and s.opened.waits is not before
        assert not again.ok and again.waiter_id == w.waiter_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_freeze_deleted_by_hand_is_found_by_the_next_pass(
    engine: Engine, backend: Backend
) -> None:
    """The policy objects the rows say stand are carried from one pass to the next too: a
    freeze made before the last pass (its row not walked again), deleted by hand after it."""
    jane, _ = await engine.add_principal(None, "jane", "human")
    frozen = await engine.freezes.freeze(jane, "prod/api", "incident 4411")
    s = Sentinel(engine, every=60)
    assert (await s.pass_()).ok
    seq = s.at[0]
    await _rows(engine, 2)
    await backend.sql(f"DELETE FROM objects WHERE id = '{frozen['freeze_id']}'")
    out = await s.pass_()
    assert not out.ok and out.policy_object == f"freeze at row {seq}", out
    assert "lets grants under prod/api through" in (out.reason or "")


async def test_a_row_written_since_the_last_pass_changed_by_hand(
    engine: Engine, backend: Backend
) -> None:
    """A row after the point verified, changed in place, is named by the next pass."""
    await _rows(engine, 3)
    s = Sentinel(engine, every=60)
    assert (await s.pass_()).ok
    await _rows(engine, 3, "late")
    seq = s.at[0] + 2
    body = (await engine.store.read(lambda tx: tx.audit_rows(seq - 1, 1)))[0]
    await backend.tamper(seq, str(body).replace("late-1", "late-9"))
    out = await s.pass_()
    assert not out.ok and out.first_bad_seq == seq


async def test_rows_rewritten_and_rehashed_behind_the_point_verified(tmp_path: Path) -> None:
    """Plain ``writ audit verify`` passes a chain re-hashed after a change (head moved too);
    the standing verify does not, as the last row it verified has another hash now. A row
    changed in place behind that point (its hash left alone) is found by the next whole
    pass."""
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=ManualClock()))
    await engine.start(background=False)
    try:
        await _rows(engine, 10)
        ticks = Ticks()
        s = Sentinel(engine, every=60, full_every=3600, clock=ticks)
        assert (await s.pass_()).ok and s.at[0] == 10
        edit_row(tmp_path / "w.db", 4, rehash=True)
        assert (await engine.verify()).ok  # the chain alone vouches for the rewrite
        out = await s.pass_()
        assert not out.ok and out.first_bad_seq == 10
        assert "no longer has the hash writ verified" in (out.reason or "")

        fresh = Sentinel(engine, every=60, full_every=3600, clock=ticks)
        assert (await fresh.pass_()).ok  # re-hashed: nothing left to see from scratch
        edit_row(tmp_path / "w.db", 2, rehash=False)
        assert (await fresh.pass_()).ok  # behind the point verified, its hash unchanged
        ticks.now += 3600
        whole = await fresh.pass_()
        assert not whole.ok and whole.first_bad_seq == 2
    finally:
        await engine.stop()


async def test_a_break_is_logged_once_and_passes_slow_down(
    engine: Engine, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A break is one ERROR line (not one a pass), and while it lasts the passes, all of the
    whole chain, come BROKEN_EVERY_S apart; mended, the next pass says so."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    ticks = Ticks()
    s = Sentinel(engine, every=60, clock=ticks)
    await s.tick()
    assert s.passes == 0 and s._task is None  # the first pass comes a period after start
    ticks.now += 60
    await s.tick()
    await asyncio.wait_for(_ended(s, 1), 10)
    assert s.last is not None and s.last.ok
    await backend.sql(
        f"UPDATE leases SET holder = 'cost-agent' WHERE lease_id = '{lease['lease_id']}'"
    )
    with caplog.at_level(logging.INFO, logger="writ.audit"):
        for passes in (2, 3):
            ticks.now += sentinel_mod.BROKEN_EVERY_S
            await s.tick()
            await s.tick()  # one at a time: a pass is running, or not yet due
            await asyncio.wait_for(_ended(s, passes), 10)
            assert s.last is not None and not s.last.ok
        ticks.now += 60
        await s.tick()
        assert s.passes == 3  # broken: not due for BROKEN_EVERY_S
        await backend.sql(
            f"UPDATE leases SET holder = 'perf-agent' WHERE lease_id = '{lease['lease_id']}'"
        )
        assert (await s.pass_()).ok
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "the holder column" in errors[0].getMessage()
    assert any("verifies again" in r.getMessage() for r in caplog.records)


async def _ended(s: Sentinel, passes: int) -> None:
    """The pass the last tick started has ended, the ``passes``-th."""
    assert s._task is not None
    await asyncio.shield(s._task)
    assert s.passes == passes


async def test_metrics_say_the_last_pass(engine: Engine, backend: Backend) -> None:
    """``/metrics`` shows nothing of the standing verify before its first pass, then
    ``writ_audit_verify_ok`` 1, and 0 once a pass finds a break."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    app = create_app(engine, start_engine=False, verify_every=3600)
    s = app.state.sentinel
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://writ") as http:

        async def scraped() -> str:
            return (await http.get("/metrics")).text

        assert "writ_audit_verify_ok" not in await scraped()
        await s.pass_()
        text = await scraped()
        assert "writ_audit_verify_ok 1.0" in text
        assert f"writ_audit_verified_rows {float(s.at[0])}" in text
        await backend.sql(f"DELETE FROM leases WHERE lease_id = '{lease['lease_id']}'")
        await s.pass_()
        assert "writ_audit_verify_ok 0.0" in await scraped()


async def test_a_checkpoint_is_signed_only_at_a_row_verified(tmp_path: Path) -> None:
    """The checkpointer signs the row the standing verify has just verified; rows rewritten
    and re-hashed after a pass verified them get no checkpoint (before, the next one was
    signed over the rewrite, and every checkpoint vouched for it)."""
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=ManualClock()))
    await engine.start(background=False)
    try:
        s = Sentinel(engine, every=60)
        cp = Checkpointer(engine, generate_key(), tmp_path / "cps", every=5, sentinel=s)
        await _rows(engine, 6)
        path = await cp.tick()
        assert path is not None and cp.last_seq == 6
        await _rows(engine, 6, "late")
        assert (await s.pass_()).ok  # the standing verify's pass, a minute later
        edit_row(tmp_path / "w.db", 9, rehash=True)
        assert (await engine.verify()).ok
        assert await cp.tick() is None and cp.last_seq == 6
        # the mark holds the row the pass verified, as it was then
        assert sorted(p.name for p in (tmp_path / "cps").iterdir()) == [path.name, MARK]
    finally:
        await engine.stop()


def test_the_flag_takes_whole_seconds_up_to_a_day() -> None:
    """``--verify-every`` is 0 (off) to 86,400 seconds; anything else is refused before
    anything is served, naming the flag."""
    for bad in ("-1", "nan", "1.5", "86401", "true"):
        res = CliRunner().invoke(main, ["serve", "--verify-every", bad, "--check"])
        assert res.exit_code == 2 and "--verify-every" in res.output, (bad, res.output)
    res = CliRunner().invoke(main, ["serve", "--help"])
    assert "--verify-every" in res.output and "writ_audit_verify_ok" in res.output


def test_a_server_says_a_break_within_its_period(tmp_path: Path) -> None:
    """``writ serve`` with a standing verify every second: ``writ_audit_verify_ok`` goes
    from 1 to 0 once a held lease is deleted from the store file by hand, and the log
    names the lease."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with server_process(url, tmp_path, run_args="verify_every=1") as srv, srv.client() as http:
        agent = http.post("/v1/principals", json={"name": "perf-agent", "kind": "agent"}).json()
        lease = httpx.post(
            srv.url + "/v1/leases",
            json={"resource": "prod/db", "intent": "scale up"},
            headers={"Authorization": f"Bearer {agent['token']}"},
        ).json()
        wait_until(lambda: "writ_audit_verify_ok 1.0" in http.get("/metrics").text)
        with contextlib.closing(sqlite3.connect(srv.db, isolation_level=None)) as db:
            db.execute("DELETE FROM leases WHERE lease_id = ?", (lease["lease_id"],))
        wait_until(lambda: "writ_audit_verify_ok 0.0" in http.get("/metrics").text)
        assert f"lease {lease['lease_id']} on prod/db: the ledger holds it open" in srv.logs()


async def test_passes_take_at_most_a_twentieth_of_the_time(engine: Engine) -> None:
    """A pass that took T seconds (a large store's table checks) puts the next one at
    least 19 T later, whatever ``every`` says."""
    ticks = Ticks()
    s = Sentinel(engine, every=60, clock=ticks)
    real = s._walk

    async def slow(tables: bool = True) -> Any:
        ticks.now += 10  # the pass takes ten seconds
        return await real(tables)

    s._walk = slow  # type: ignore[method-assign]
    ticks.now += 60
    await s.tick()
    await _ended(s, 1)
    ended = ticks.now
    for later in (60, 120, 189):
        ticks.now = ended + later
        await s.tick()
        assert s.passes == 1 and (s._task is None or s._task.done()), later
    ticks.now = ended + 190
    await s.tick()
    await _ended(s, 2)


async def test_a_checkpoints_pass_of_the_chain_leaves_the_last_whole_pass(
    engine: Engine, backend: Backend
) -> None:
    """The checkpointer's pass verifies the chain alone (what a checkpoint signs): it
    signs over a table changed by hand, and leaves the break the last whole pass found
    in ``last`` (and so in the metric)."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    s = Sentinel(engine, every=60)
    await backend.sql(f"DELETE FROM leases WHERE lease_id = '{lease['lease_id']}'")
    broken = await s.pass_()
    assert not broken.ok and broken.lease_id == lease["lease_id"]
    await _rows(engine, 2)
    signed = await s.verified()
    head = await engine.store.read(lambda tx: tx.audit_head())
    assert signed is not None and signed[:2] == head
    assert s.last is broken and s.passes == 1
