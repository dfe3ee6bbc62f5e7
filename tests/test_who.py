"""``who RESOURCE --at T``: exact at the boundaries, and answered by index probes.

The rule: write authority is held over the half-open interval ``[grant, end)``. A grant
stamped exactly T counts as held at T; a release, revoke or expiry at exactly T counts as
free at T. An expiry is exact at the lease's last ``expires_at`` even when the sweeper wrote
its row later.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from writ.core.clock import ManualClock, parse_time, rfc3339
from writ.core.models import Principal
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.sqlite import SQLiteStore

POLICY = """
[blast_radius]
db-tier = ["prod/db", "routing/db-tier", "capacity/db"]
"""
T0 = parse_time("2026-05-16T02:17:00Z")
US = 1e-6


class W:
    def __init__(self, engine: Engine, clock: ManualClock) -> None:
        self.engine, self.clock = engine, clock
        self.p: dict[str, Principal] = {}

    def at(self, offset: float) -> None:
        self.clock.t = T0 + offset

    async def who(self, resource: str, offset: float) -> str:
        return str((await self.engine.who(resource, T0 + offset))["lock_holder"])

    async def grant(self, who: str, resource: str, **kw: Any) -> dict[str, Any]:
        return await self.engine.acquire(self.p[who], resource=resource, intent="x", **kw)


@pytest.fixture
async def w(tmp_path: Any) -> AsyncIterator[W]:
    clock = ManualClock(T0 - 60)
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=clock), parse(POLICY))
    await engine.start(background=False)
    world = W(engine, clock)
    for name, kind in (
        ("perf-agent", "agent"),
        ("cost-agent", "agent"),
        ("routing-agent", "agent"),
        ("oncall-jane", "human"),
    ):
        world.p[name] = (await engine.add_principal(None, name, kind))[0]
    yield world
    await engine.stop()


async def test_grant_at_t_is_held_at_t_and_release_at_t_is_free_at_t(w: W) -> None:
    """Both sides of both boundaries, to the microsecond."""
    w.at(0)
    lease = await w.grant("perf-agent", "prod/db", ttl_s=600)
    w.at(30)
    await w.engine.release(w.p["perf-agent"], lease["lease_id"])
    assert await w.who("prod/db", -US) == "none"
    assert await w.who("prod/db", 0) == "perf-agent"
    assert await w.who("prod/db", 15) == "perf-agent"
    assert await w.who("prod/db", 30 - US) == "perf-agent"
    assert await w.who("prod/db", 30) == "none"
    assert await w.who("prod/db", 31) == "none"


async def test_times_as_shown_on_the_wire_round_trip(w: W) -> None:
    """Asking at a row's own RFC 3339 timestamp gives the same answer as at its float."""
    w.clock.t = T0 + 0.1234567  # not a whole microsecond
    lease = await w.grant("perf-agent", "prod/db")
    w.clock.t = T0 + 5.7654321
    await w.engine.release(w.p["perf-agent"], lease["lease_id"])
    granted_at = parse_time(lease["acquired_at"])
    rows = (await w.engine.audit(0, 100))["rows"]
    released_at = parse_time(next(r for r in rows if r["event"] == "lease.released")["timestamp"])
    assert (await w.engine.who("prod/db", granted_at))["lock_holder"] == "perf-agent"
    assert (await w.engine.who("prod/db", released_at))["lock_holder"] == "none"
    assert (await w.engine.who("prod/db", released_at - US))["lock_holder"] == "perf-agent"


async def test_expiry_is_exact_even_when_the_row_is_written_late(w: W) -> None:
    """A lease that lapsed at expires_at is free from then on, though the sweeper wrote
    lease.expired later; a renewal before expiry extends it."""
    w.at(0)
    await w.grant("perf-agent", "prod/db", ttl_s=10)
    w.at(25)
    await w.engine.sweep()
    rows = (await w.engine.audit(0, 100))["rows"]
    assert rfc3339(T0 + 25) in [r["timestamp"] for r in rows if r["event"] == "lease.expired"]
    assert await w.who("prod/db", 10 - US) == "perf-agent"
    assert await w.who("prod/db", 10) == "none"
    assert await w.who("prod/db", 20) == "none"

    w.at(100)
    lease = await w.grant("cost-agent", "prod/db", ttl_s=10)
    w.at(108)
    await w.engine.renew(w.p["cost-agent"], lease["lease_id"])  # now until 118
    assert await w.who("prod/db", 112) == "cost-agent"
    assert await w.who("prod/db", 118 - US) == "cost-agent"
    assert await w.who("prod/db", 118) == "none"  # not swept yet: still exact


async def test_revoke_at_t_is_free_at_t(w: W) -> None:
    w.at(0)
    lease = await w.grant("perf-agent", "prod/db", ttl_s=600)
    w.at(40)
    await w.engine.revoke(w.p["oncall-jane"], lease["lease_id"], "R-44", "oncall-jane", "stuck")
    assert await w.who("prod/db", 40 - US) == "perf-agent"
    assert await w.who("prod/db", 40) == "none"


async def test_handoff_at_the_same_instant_names_the_new_holder(w: W) -> None:
    """A waiter granted in the release's own transaction holds at that instant."""
    w.at(0)
    lease = await w.grant("perf-agent", "prod/db", ttl_s=600)
    w.at(10)
    seen = (await w.engine.audit(0, 100))["next_after_seq"]
    waiting = asyncio.ensure_future(w.grant("cost-agent", "prod/db", wait_s=60))
    queued = (await w.engine.events("prod/db", seen, wait_s=5))["rows"]
    assert [r["event"] for r in queued] == ["lease.queued"]  # it waits in the queue
    w.at(20)
    await w.engine.release(w.p["perf-agent"], lease["lease_id"])
    await asyncio.wait_for(waiting, 5)
    assert await w.who("prod/db", 20 - US) == "perf-agent"
    assert await w.who("prod/db", 20) == "cost-agent"


async def test_ancestors_and_the_blast_radius_count(w: W) -> None:
    """A lease on an ancestor, or on another member of the blast-radius group, is write
    authority over the resource; a lease on a sibling is not."""
    w.at(0)
    lease = await w.grant("routing-agent", "routing/db-tier")
    assert await w.who("prod/db", 1) == "routing-agent"
    assert await w.who("capacity/db", 1) == "routing-agent"
    assert await w.who("prod/cache", 1) == "none"
    w.at(5)
    await w.engine.release(w.p["routing-agent"], lease["lease_id"])
    w.at(10)
    await w.grant("perf-agent", "prod")
    assert await w.who("prod/cache", 11) == "perf-agent"
    assert await w.who("prod/db", 11) == "perf-agent"
    assert await w.who("prod/db", 6) == "none"
    answer = await w.engine.who("prod/db", T0 + 11)
    assert answer["lease"]["resource"] == "prod" and answer["lock_key"].startswith("prod/")


async def test_who_answers_with_index_searches_not_scans(w: W, tmp_path: Any) -> None:
    """Every statement who runs against the audit or lease table is an index search."""
    w.at(0)
    lease = await w.grant("perf-agent", "prod/db")
    w.at(5)
    await w.engine.release(w.p["perf-agent"], lease["lease_id"])
    store = w.engine.store
    assert isinstance(store, SQLiteStore)
    seen: list[str] = []
    conn = store._r
    assert conn is not None
    conn.set_trace_callback(seen.append)
    try:
        await w.engine.who("prod/db", T0 + 2)
        await w.engine.who("prod/db", T0 + 9)
    finally:
        conn.set_trace_callback(None)
    plans = _plans(f"{tmp_path}/w.db", [s for s in seen if s.lstrip().upper().startswith("SELECT")])
    assert plans, "who ran no queries"
    for sql, plan in plans:
        assert "SCAN audit" not in plan and "SCAN leases" not in plan, (sql, plan)


def _plans(path: str, statements: list[str]) -> list[tuple[str, str]]:
    """EXPLAIN QUERY PLAN of traced statements (parameters are already inlined by trace)."""
    c = sqlite3.connect(path)
    try:
        out = []
        for sql in statements:
            plan = " | ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql))
            out.append((sql, plan))
        return out
    finally:
        c.close()
