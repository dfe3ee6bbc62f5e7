"""Several ``writ serve`` processes on one PostgreSQL (issue 6, "Done means").

Two and three real servers share one schema; 16 agents spread across them contend for one resource
over raw HTTP for a few seconds, each releasing through either server. Afterwards the
ledger — the recorded history — must show no two overlapping holders, fencing tokens
strictly increasing in grant order, the FIFO queue kept across servers, and waiters woken
through the other server within milliseconds.

Outages: the servers reach PostgreSQL through a TCP proxy the test can cut (every
connection dropped, new ones refused, as in a restart or failover) without disturbing
anyone else on the database. A real ``pg_ctlcluster restart`` runs with ``WRIT_SLOW=1``
(or ``-m slow``): it restarts the whole PostgreSQL server. Every test here runs with two
and with three servers; the fault test's workload runs across them under the history
checker (tests/history.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import shutil
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.history import Conflicts, check
from tests.server_fixtures import (
    add_principals,
    all_rows,
    verify,
    writ_servers,
)
from tests.stores_fixtures import Backend, with_query
from tests.test_faults import GROUPS
from tests.test_faults import POLICY as FAULT_POLICY
from tests.test_faults import contend as contend_faults

RESOURCE = "prod/db"


class Proxy:
    """A TCP proxy to PostgreSQL that can be cut: every connection dropped at once and
    new ones refused until it is restored — a restart, seen from the servers."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.up = True
        self.conns: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        if not self.up:  # cut while we were connecting
            writer.transport.abort()
            uw.transport.abort()
            return
        self.conns |= {writer, uw}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()
            self.conns.discard(w)

        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    def cut(self) -> None:
        self.up = False
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Load:
    """What the agents saw: every acknowledged grant and release, and the wake times."""

    granted: dict[int, dict[str, Any]] = field(default_factory=dict)  # token -> lease
    released: set[int] = field(default_factory=set)
    release_sent: dict[int, tuple[float, int]] = field(default_factory=dict)  # token -> (t, srv)
    got_at: dict[int, tuple[float, int]] = field(default_factory=dict)  # token -> (t, srv)
    statuses: dict[int, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, status) of acquires
    until: float = 0.0  # when the agents stop (time.monotonic); an outage test extends it


async def contend(urls: list[str], tokens: list[str], seconds: float, load: Load) -> None:
    """Each agent, on its home server, acquires (waiting), holds a moment, and releases
    through a random server; until ``seconds`` have passed."""
    clients = [httpx.AsyncClient(base_url=u, timeout=30) for u in urls]
    load.until = time.monotonic() + seconds
    rnd = random.Random(6)

    async def agent(i: int, token: str) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        home = i % len(clients)
        while time.monotonic() < load.until:
            try:
                r = await clients[home].post(
                    "/v1/leases",
                    headers=auth,
                    json={
                        "resource": RESOURCE,
                        "intent": f"agent {i} works",
                        "ttl_s": 10,
                        "wait_s": 5,
                    },
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            now = time.perf_counter()
            load.statuses[r.status_code] = load.statuses.get(r.status_code, 0) + 1
            load.timeline.append((now, r.status_code))
            if r.status_code == 503:
                await asyncio.sleep(0.05)
                continue
            assert r.status_code in (201, 409), r.text
            if r.status_code != 201:
                continue
            lease = r.json()
            tok = lease["fencing_token"]
            load.granted[tok] = lease
            load.got_at[tok] = (now, home)
            await asyncio.sleep(0.002)  # the critical section
            srv = rnd.randrange(len(clients))
            give_up = time.monotonic() + 15  # past the ttl: then 410
            while time.monotonic() < give_up:
                load.release_sent[tok] = (time.perf_counter(), srv)
                try:
                    rr = await clients[srv].post(
                        f"/v1/leases/{lease['lease_id']}/release", headers=auth
                    )
                except httpx.HTTPError:
                    rr = None
                if rr is not None and rr.status_code == 200:
                    load.released.add(tok)
                    break
                if rr is not None and rr.status_code != 503:
                    # 410: an outage outlasted the ttl and the lease expired: never a 500
                    assert rr.status_code == 410, rr.text
                    break
                await asyncio.sleep(0.1)

    try:
        await asyncio.gather(*(agent(i, t) for i, t in enumerate(tokens)))
    finally:
        for c in clients:
            await c.aclose()


async def setup_agents(url: str, n: int) -> list[str]:
    return await add_principals(url, "agent", [f"agent-{i:02d}" for i in range(n)])


def check_history(rows: list[dict[str, Any]], load: Load) -> dict[str, Any]:
    """The recorded history against the rules; returns a few numbers for the report."""
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    mine = [r for r in rows if r["resource"] == RESOURCE]
    holder: tuple[str, int] | None = None
    queue: list[str] = []
    tokens: list[int] = []
    handoffs: list[tuple[int, int]] = []  # (released token, next token) in one transaction
    last_end: dict[str, Any] | None = None
    for r in mine:
        ev, who = r["event"], r["agent_id"]
        if ev == "lease.queued":
            # an agent may be queued twice: a wait cut short by an outage (503) leaves its
            # entry behind until its deadline passes, and the agent asks again
            queue.append(who)
        elif ev == "lease.granted":
            assert holder is None, f"{who} granted while {holder} held (seq {r['seq']})"
            if who in queue:  # FIFO: a waiter is served only at the head of the queue
                assert queue[0] == who, f"{who} overtook {queue[0]} (seq {r['seq']})"
                queue.remove(who)
                if last_end is not None and last_end["seq"] == r["seq"] - 1:
                    handoffs.append((last_end["fencing_token"], r["fencing_token"]))
            else:  # granted at once: nobody may be waiting
                assert not queue, f"{who} granted past waiting {queue} (seq {r['seq']})"
            holder = (r["lock_holder"], r["fencing_token"])
            tokens.append(r["fencing_token"])
        elif ev in ("lease.released", "lease.expired", "lease.revoked"):
            assert holder is not None and holder[1] == r["fencing_token"]
            holder = None
            last_end = r
        elif ev == "lease.denied" and who in queue:
            queue.remove(who)  # its wait ran out (the oldest entry of that agent first)
    assert all(a < b for a, b in itertools.pairwise(tokens)), "tokens not in grant order"
    # nothing acknowledged is missing from the history
    granted_rows = {r["fencing_token"]: r for r in mine if r["event"] == "lease.granted"}
    ended = {r["fencing_token"] for r in mine if r["event"] == "lease.released"}
    for tok, lease in load.granted.items():
        assert tok in granted_rows and granted_rows[tok]["lock_holder"] == lease["holder"]
    assert load.released <= ended
    # cross-server wake: release sent on one server -> the waiter's 201 on the other
    cross = [
        load.got_at[nxt][0] - load.release_sent[prev][0]
        for prev, nxt in handoffs
        if prev in load.release_sent
        and nxt in load.got_at
        and load.release_sent[prev][1] != load.got_at[nxt][1]
    ]
    return {"grants": len(tokens), "handoffs": len(handoffs), "cross_server_wakes": cross}


@pytest.fixture(params=[2, 3], ids=["2-servers", "3-servers"])
def n_servers(request: pytest.FixtureRequest) -> int:
    """How many servers share the database: every multi-server test runs with 2 and 3."""
    return int(request.param)


@pytest.fixture
async def servers(pg_backend: Backend, tmp_path: Path, n_servers: int) -> AsyncIterator[list[str]]:
    async with writ_servers(pg_backend.url, n_servers, tmp_path) as urls:
        yield urls


@pytest.mark.parametrize("mode", ["each-writes", "relayed", "handed"])
async def test_contention_across_servers_keeps_every_guarantee(
    pg_backend: Backend, tmp_path: Path, n_servers: int, mode: str
) -> None:
    """The fault test's workload (waits, renewals, stalls past the ttl, revokes, lock
    delays, a blast-radius group, fenced writes) with its agents spread over several
    servers on one database: the history checker finds no overlap, tokens in grant order,
    every acknowledged grant and release in the one ledger, no lost update. Relayed: the
    servers elect a writer (``--relay --no-handoff``) and the others send it their lease
    writes. Handed: the others hand the writer their connections (``--relay``)."""
    relay = mode != "each-writes"
    where = tmp_path / "relay" if relay else None
    level = "info" if relay else "warning"  # a relaying server says so at info
    async with writ_servers(
        pg_backend.url,
        n_servers,
        tmp_path,
        FAULT_POLICY,
        relay=where,
        log_level=level,
        handoff=mode == "handed",
    ) as urls:
        names = [f"agent-{i:02d}" for i in range(12)]
        tokens = await add_principals(urls[0], "agent", names)
        (human,) = await add_principals(urls[0], "queue", ["oncall"])
        history, register = await contend_faults(
            urls, dict(zip(names, tokens, strict=True)), human, 3.0, seed=11
        )
        rows = await all_rows(urls[-1])
        report = check(history, rows, Conflicts(GROUPS), register)
        assert report.ok, report
        stats = report.stats
        print(f"\n{n_servers} servers: {dict(stats)}")
        assert stats["grants"] >= 12, stats
        assert stats["lease.expired"] + stats["lease.revoked"] >= 1, stats
        for url in urls:
            assert (await verify(url))["ok"] is True
        if relay:  # and the lease writes did go through the writer
            logs = [(tmp_path / f"server-{i}.log").read_text() for i in range(n_servers)]
            assert sum("relays lease writes" in text for text in logs) == n_servers - 1, logs
            outcomes: dict[str, float] = {}
            async with httpx.AsyncClient(timeout=10) as c:
                for url in urls:  # a connection that asks /metrics first stays: each its own
                    text = (await c.get(f"{url}/metrics")).text
                    for m in re.finditer(
                        r'^writ_relay_(?:calls|connections)_total\{\w+="(\w+)"\} (\S+)$',
                        text,
                        re.M,
                    ):
                        outcomes[m[1]] = outcomes.get(m[1], 0) + float(m[2])
            assert outcomes.get("lost", 0) == outcomes.get("refused", 0) == 0, outcomes
            if mode == "relayed":
                assert outcomes.get("relayed", 0) >= 20, outcomes
                assert outcomes["served"] == outcomes["relayed"], outcomes
                assert outcomes.get("handed", 0) == 0, outcomes
            else:  # the agents of the others were served by the writer
                assert sum("hands its connections" in text for text in logs) == n_servers - 1
                assert outcomes.get("handed", 0) >= n_servers - 1, outcomes
                assert outcomes["adopted"] == outcomes["handed"], outcomes


async def test_servers_sixteen_agents_one_resource(servers: list[str]) -> None:
    tokens = await setup_agents(servers[0], 16)
    load = Load()
    await contend(servers, tokens, 3.0, load)
    rows = await all_rows(servers[1])
    stats = check_history(rows, load)
    wakes = sorted(stats["cross_server_wakes"])
    assert stats["grants"] > 30 and len(wakes) > 10, stats | {"statuses": load.statuses}
    p50, p95 = statistics.median(wakes), wakes[int(len(wakes) * 0.95)]
    print(
        f"\n{stats['grants']} grants, {len(wakes)} cross-server wakes: "
        f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {wakes[-1] * 1000:.1f} ms"
    )
    # release request sent on server A -> the waiter's 201 arrives from server B: two HTTP
    # exchanges, the releasing transaction, NOTIFY, and the waiter's read of its lease
    # (~8 ms on an idle 2-core machine). Without the notification the waiter would wake on
    # its timer: the holder's ttl (10 s) or its own deadline (5 s). The worst wake is held
    # to half that deadline, not to 1 s: a loaded 2-core machine (three servers, PostgreSQL
    # and the loader) was seen at 1.1 s once, still far from any timer.
    assert p50 < 0.100 and wakes[-1] < 2.5, wakes
    assert (await verify(servers[0]))["ok"]


async def db_state(backend: Backend) -> str:
    """What is held and queued, and the last rows (for a failure message)."""
    held = await backend.sql(
        "SELECT holder, fencing_token, expires_at - extract(epoch FROM"
        " clock_timestamp()) FROM leases WHERE state = 'held'"
    )
    queue = await backend.sql(
        "SELECT seq, principal, deadline - extract(epoch FROM"
        " clock_timestamp()) FROM waiters ORDER BY seq"
    )
    last = await backend.sql("SELECT seq, event, body FROM audit ORDER BY seq DESC LIMIT 12")
    return f"held {held}\nqueue {queue}\nlast rows:\n" + "\n".join(
        f"{q} {e} {b[:300]}" for q, e, b in reversed(last)
    )


async def _outage_under_load(
    urls: list[str], disrupt: Any, backend: Backend, seconds: float = 6.0
) -> tuple[Load, dict[str, Any]]:
    tokens = await setup_agents(urls[0], 16)
    load = Load()
    work = asyncio.create_task(contend(urls, tokens, seconds, load))
    deadline = time.monotonic() + seconds / 2  # the outage begins mid-load: after 10 grants
    while len(load.granted) < 10 and not work.done():
        assert time.monotonic() < deadline, load.statuses
        await asyncio.sleep(0.02)
    t_cut = time.perf_counter()
    restored = await disrupt()
    # however long the outage took, the agents go on a while after it
    load.until = max(load.until, time.monotonic() + 4.0)
    await work
    after = [t for t, s in load.timeline if s == 201 and t > restored]
    assert after, f"no grant after the outage: {load.statuses}\n{await db_state(backend)}"
    rows = await all_rows(urls[0])
    stats = check_history(rows, load)
    result = await verify(urls[1])
    assert result["ok"] and result["rows"] == len(rows), result
    stats["recovered_in_s"] = min(after) - t_cut
    buckets: dict[float, int] = {}
    for t, st in load.timeline:
        if st == 201:
            k = round((t - t_cut) * 2) / 2
            buckets[k] = buckets.get(k, 0) + 1
    stats["grants_per_half_second"] = dict(sorted(buckets.items()))
    return load, stats


async def test_servers_ride_out_a_database_outage(
    pg_backend: Backend, tmp_path: Path, n_servers: int
) -> None:
    """PostgreSQL vanishes for 1.5 s mid-load (every connection dropped, new ones
    refused): requests meanwhile get 503, never a 500; the servers reconnect by
    themselves; every acknowledged grant and release is in the ledger; it verifies."""
    parsed = urlparse(pg_backend.url)
    proxy = Proxy(parsed.hostname or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    via_proxy = with_query(
        pg_backend.url.replace(f":{parsed.port or 5432}/", f":{proxy.port}/"),
        pool_timeout="1",
        connect_timeout="1",
    )
    try:
        async with writ_servers(via_proxy, n_servers, tmp_path) as urls:

            async def outage() -> float:
                proxy.cut()
                await asyncio.sleep(1.5)
                proxy.restore()
                return time.perf_counter()

            load, stats = await _outage_under_load(urls, outage, pg_backend)
    finally:
        await proxy.close()
    print(
        f"\n{stats['grants']} grants, statuses {load.statuses}, "
        f"first grant {stats['recovered_in_s']:.2f}s after the cut; grants per 0.5 s "
        f"from the cut: {stats['grants_per_half_second']}"
    )
    assert stats["recovered_in_s"] < 1.5 + 5.0


def _restart_command(url: str) -> list[str] | None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost") or shutil.which("pg_ctlcluster") is None:
        return None
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or os.geteuid() != 0:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


@pytest.mark.slow
@pytest.mark.pg_restart
async def test_postgresql_restart_under_load(
    pg_backend: Backend, tmp_path: Path, request: pytest.FixtureRequest, n_servers: int
) -> None:
    """The real thing: ``pg_ctlcluster restart`` while 16 agents contend."""
    wanted = os.environ.get("WRIT_SLOW") or os.environ.get("WRIT_TEST_PG_RESTART")
    if not wanted and "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip(
            "restarts the whole PostgreSQL server: run with WRIT_TEST_PG_RESTART=1 (CI does), "
            "WRIT_SLOW=1 or -m slow"
        )
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1) > 1:
        pytest.skip(
            "restarts the whole PostgreSQL server under the other workers' tests: run it "
            "alone (scripts/test runs the pg_restart tests after the rest)"
        )
    cmd = _restart_command(pg_backend.url)
    if cmd is None:
        pytest.skip("needs a local PostgreSQL that pg_ctlcluster can restart, as root")
    async with writ_servers(
        with_query(pg_backend.url, pool_timeout="2"), n_servers, tmp_path
    ) as urls:

        async def restart() -> float:
            proc = await asyncio.create_subprocess_exec(*cmd)
            assert await proc.wait() == 0
            return time.perf_counter()

        load, stats = await _outage_under_load(urls, restart, pg_backend, seconds=8.0)
    print(
        f"\n{stats['grants']} grants, statuses {load.statuses}, "
        f"first grant {stats['recovered_in_s']:.2f}s after the restart began"
    )
