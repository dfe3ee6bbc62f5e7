"""Filtered reads of the ledger cost a bounded step of the loop (evidence.history._rows).

``GET /v1/audit?resource=fleet&limit=1`` on a ledger of 300,000 rows, most under ``fleet``,
once walked the resource index over all of them and sorted them by seq to answer one row:
90-200 ms of the event loop per call, so two loops of it took an honest agent's
acquire+release from 10 ms to over a second; and every events long poll with such a
filter re-ran it after every commit. Now such a read walks the rows after its cursor when
they are few, the index when it holds few, and otherwise the ledger a window at a time,
making way between windows. The answers are those of one read, on every store.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bench.ledger_bench import build
from tests.stores_fixtures import Backend
from writ.core.clock import parse_time
from writ.engine import Engine
from writ.evidence import history
from writ.stores.sqlite import SQLiteStore


async def test_a_windowed_read_answers_as_one_read_does(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way of reading (the rows after the cursor, the index, window by window) gives
    the rows one indexed read gives, for cursors, limits, prefixes and time windows."""
    monkeypatch.setattr(history, "WINDOW", 5)  # windows of 5 rows: every path taken
    agent, _ = await engine.add_principal(None, "agent-a", "agent")
    for i in range(12):
        res = ("a/x", "a/y", "ab/c", "b/z")[i % 4] + f"/{i}"
        lease = await engine.acquire(agent, resource=res, intent="fill", ttl_s=60)
        await engine.release(agent, lease["lease_id"])
        if backend.clock is not None:  # each pair at a time of its own (the time windows)
            backend.clock.advance(1.0)
    store = engine.store
    everything = await store.read(lambda tx: tx.audit_rows(0, 10_000))
    head = everything[-1]["seq"]
    stamps = sorted({r["timestamp"] for r in everything})
    times = [None, *(parse_time(s) for s in (stamps[3], stamps[len(stamps) // 2]))]
    checked = 0
    for after, n, prefix, since, until in itertools.product(
        (0, 3, head - 20, head - 4, head),
        (1, 3, 500),
        (None, "a", "a/x", "ab", "b/z/3", "zz"),
        times,
        (None, times[-1]),
    ):
        want = await store.read(
            lambda tx, a=after, k=n, p=prefix, s=since, u=until: tx.audit_rows(a, k, p, s, u)
        )
        got = (await engine.audit(after, n, prefix, since, until))["rows"]
        assert got == want, (after, n, prefix, since, until)
        checked += bool(want)
    assert checked > 100  # most combinations found rows


@pytest.fixture(scope="module")
def big_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store of 60,000 rows, 1 in 50 on prod/db, the rest spread over fleet/."""
    path = tmp_path_factory.mktemp("ledger") / "w.db"
    build(path, 60_000, 50)
    return path


@pytest.fixture
async def big(big_ledger: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("WRIT_ADMIN_TOKEN", raising=False)
    store = SQLiteStore(f"sqlite:///{big_ledger}")
    engine = Engine(store)
    await engine.start(background=False)
    try:
        yield engine
    finally:
        await engine.stop()


def _metered(store: SQLiteStore, per_read: list[int]) -> Any:
    """``store.read``, counting the SQLite VM's work of each read into ``per_read`` (a
    progress call per 1,000 instructions)."""
    conn, real = store._r, store.read
    assert conn is not None

    async def counted(fn: Any, single: bool = False) -> Any:
        steps = [0]

        def tick() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(tick, 1000)
        try:
            return await real(fn, single)
        finally:
            conn.set_progress_handler(None, 0)
            per_read.append(steps[0])

    return counted


async def test_a_broad_prefix_of_leases_is_listed_newest_first_without_a_sort(
    big: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/leases?resource=fleet&limit=1`` over thousands of leases: the tokens'
    index is walked newest first, not every lease under the prefix sorted."""
    store = big.store
    assert isinstance(store, SQLiteStore)
    per_read: list[int] = []
    monkeypatch.setattr(store, "read", _metered(store, per_read))
    conn = store._r
    assert conn is not None
    for prefix, limit in (("fleet", 1), ("fleet", 3), ("prod/db", 2)):
        per_read.clear()
        got = [d["lease_id"] for d in await big.list_leases(prefix, None, limit)]
        newest = conn.execute(
            "SELECT lease_id FROM leases WHERE resource = ? OR resource LIKE ?"
            " ORDER BY fencing_token DESC LIMIT ?",
            (prefix, prefix + "/%", limit),
        ).fetchall()
        assert got == [r[0] for r in newest], prefix
        assert max(per_read) < 30, (prefix, per_read)


async def test_no_filtered_read_walks_the_whole_ledger_at_once(
    big: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads that once walked or sorted every row under their filter in one step (one row
    of a broad prefix, one row of a time window, a long poll's re-read past the head):
    each store read is now bounded by the window, whatever the ledger's size."""
    store = big.store
    assert isinstance(store, SQLiteStore)
    per_read: list[int] = []
    real = store.read
    monkeypatch.setattr(store, "read", _metered(store, per_read))
    head = (await real(lambda tx: tx.audit_head()))[0]
    since = (await real(lambda tx: tx.audit_rows(100, 1)))[0]
    t0 = parse_time(since["timestamp"])
    for args in (
        (0, 1, "fleet", None, None),  # most of the ledger under the prefix
        (0, 1, None, t0, None),  # most of the ledger in the window
        (0, 1, "fleet", t0, None),
        (head, 1, "fleet", None, None),  # a long poll's re-read: nothing after the cursor
        (head - 10, 5, "prod/db", None, None),
        (0, 3, "prod/db", None, None),  # a narrow prefix: its index, at once
    ):
        per_read.clear()
        out = await big.audit(*args)
        expect = await real(lambda tx, a=args: tx.audit_rows(*a))
        assert out["rows"] == expect, args
        # a window's walk is 5,000 rows: about a hundred calls of 1,000 steps; the whole
        # ledger's walk and sort was 823 (measured without this code), more as it grows
        assert max(per_read) < 250, (args, per_read)
