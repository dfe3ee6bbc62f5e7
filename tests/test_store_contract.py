"""The store contract (writ.stores.base), checked directly on every backend.

Each test runs on SQLite and on PostgreSQL (``store_url`` fixture); the tests named
``test_pg_*`` are about what only a shared server database has: several processes, a
network between them, and a server that can go away.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.stores_fixtures import Backend, pg_url, with_query
from writ.core.errors import Conflict, Held, Unavailable
from writ.core.ledger import GENESIS, verify
from writ.core.models import Lease, Principal, Waiter
from writ.stores import Store, Tx, open_store


def _lease(resource: str, token: int, holder: str = "a", now: float = 0.0) -> Lease:
    return Lease(
        lease_id=f"ls_{resource.replace('/', '_')}_{token}",
        resource=resource,
        holder=holder,
        intent="test",
        fencing_token=token,
        acquired_at=now,
        expires_at=now + 30,
        ttl_s=30,
    )


async def _tokens(store: Store, n: int) -> list[int]:
    async def fn(tx: Tx) -> list[int]:
        return [await tx.next_token() for _ in range(n)]

    return await store.transact(fn)


async def _append(store: Store, *resources: str) -> list[int]:
    async def fn(tx: Tx) -> list[int]:
        return [
            (await tx.append({"event": "test.row", "agent_id": "t", "resource": r})).seq
            for r in resources
        ]

    return await store.transact(fn)


def _notify(kind: str) -> Any:
    """A transaction that only sends a note of ``kind`` (a barrier: notes are delivered in
    commit order, so once it is heard, everything committed before it has been heard)."""

    async def fn(tx: Tx) -> None:
        tx.notify(kind, {})

    return fn


async def _stored(store: Store) -> list[tuple[int, str, str]]:
    out: list[tuple[int, str, str]] = []
    async for chunk in store.audit_stream():
        out += chunk
    return out


class Notes:
    """A store listener that records every note."""

    def __init__(self, store: Store) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        store.set_listener(self)

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        self.seen.append((kind, payload))
        self.arrived.set()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]

    async def wait_for(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for k, p in self.seen:
                    if k == kind:
                        return p
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(poll(), within)


# ------------------------------------------------------------------------- tokens
async def test_tokens_strictly_increase_across_reopen(backend: Backend) -> None:
    """Fencing tokens increase within a transaction, across transactions and restarts."""
    s = backend.open_store()
    await s.open()
    first = await _tokens(s, 3) + await _tokens(s, 2)
    await s.close()
    s = backend.open_store()
    await s.open()
    later = await _tokens(s, 2)
    await s.close()
    seq = first + later
    assert all(a < b for a, b in itertools.pairwise(seq)), seq


async def test_token_of_a_rolled_back_transaction_is_never_reused(store: Store) -> None:
    drawn: list[int] = []

    async def fails(tx: Tx) -> None:
        drawn.append(await tx.next_token())
        raise ValueError("changed my mind")

    with pytest.raises(ValueError):
        await store.transact(fails)
    (after,) = await _tokens(store, 1)
    assert after > drawn[0]


# ------------------------------------------------------------------------- ledger
async def test_ledger_is_one_gapless_hash_chain(store: Store) -> None:
    assert await store.read(lambda tx: tx.audit_head()) == (0, GENESIS)
    await _append(store, "a")
    await _append(store, "b", "c")  # two rows in one transaction
    seqs = await _append(store, "d")
    assert seqs == [4]
    stored = await _stored(store)
    assert [s for s, _, _ in stored] == [1, 2, 3, 4]
    result = verify(stored)
    assert result.ok and result.rows == 4
    assert await store.read(lambda tx: tx.audit_head()) == (4, stored[-1][2])
    rows = await store.read(lambda tx: tx.audit_rows(0, 10))
    assert [r["resource"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["prev_hash"] == GENESIS and rows[0]["lock_holder"] == "none"
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)


async def test_audit_stream_pages_in_seq_order(store: Store) -> None:
    for i in range(5):
        await _append(store, *[f"r/{i}/{j}" for j in range(5)])
    chunks = [c async for c in store.audit_stream(after_seq=3, batch=10)]
    assert [len(c) for c in chunks] == [10, 10, 2]
    assert [t[0] for c in chunks for t in c] == list(range(4, 26))


async def test_audit_reads_by_prefix_time_and_lock_key(store: Store) -> None:
    async def fn(tx: Tx) -> None:
        for r, key in (
            ("prod/db", "prod/db/1"),
            ("prod/dbx", None),
            ("prod/db/x", "prod/db/1"),
            ("prod", None),
        ):
            await tx.append(
                {"event": "lease.granted", "agent_id": "t", "resource": r, "lock_key": key}
            )
        # a write transaction sees its own rows
        assert len(await tx.audit_for_lock_key("prod/db/1")) == 2

    await store.transact(fn)
    under = await store.read(lambda tx: tx.audit_rows(0, 100, "prod/db"))
    assert [r["resource"] for r in under] == ["prod/db", "prod/db/x"]
    keyed = await store.read(lambda tx: tx.audit_for_lock_key("prod/db/1"))
    assert [r["seq"] for r in keyed] == [1, 3]
    now = await store.read(lambda tx: _now(tx))
    latest = await store.read(
        lambda tx: tx.audit_latest(["prod", "prod/db"], ["lease.granted"], now + 1)
    )
    assert latest is not None and latest["resource"] == "prod"
    assert (
        await store.read(lambda tx: tx.audit_latest(["prod/db"], ["lease.granted"], now - 3600))
        is None
    )


async def _now(tx: Tx) -> float:
    return tx.now()


async def test_audit_rows_refuse_update_and_delete(backend: Backend, store: Store) -> None:
    await _append(store, "a", "b")
    for stmt in ("UPDATE audit SET body = '{}' WHERE seq = 1", "DELETE FROM audit WHERE seq = 2"):
        with pytest.raises(Exception, match="append-only"):
            await backend.sql(stmt)
    assert verify(await _stored(store)).ok


async def test_pg_audit_refuses_truncate_and_replica_mode(pg_backend: Backend) -> None:
    """TRUNCATE is refused too, and the triggers fire under session_replication_role =
    replica (which silences ordinary triggers, e.g. during logical replication)."""
    backend = pg_backend
    store = backend.open_store()
    await store.open()
    await _append(store, "a", "b")
    for stmt in ("TRUNCATE audit", "UPDATE audit SET body = '{}'", "DELETE FROM audit"):
        for replica in (False, True):
            with pytest.raises(Exception, match="append-only"):
                await backend.sql(stmt, replica=replica)
    assert len(await _stored(store)) == 2
    await store.close()


# ------------------------------------------------------------------------- atomicity
async def test_a_failed_transaction_keeps_nothing(store: Store) -> None:
    notes = Notes(store)
    await _append(store, "before")
    head = await store.read(lambda tx: tx.audit_head())
    notes.seen.clear()

    async def fails(tx: Tx) -> None:
        await tx.insert_principal(Principal("ghost", "agent", created_at=tx.now()), "h-ghost")
        await tx.insert_lease(_lease("prod/db", await tx.next_token(), "ghost", tx.now()))
        await tx.put_object("change", "c1", "prod/db", "protected", {"x": 1})
        await tx.append({"event": "test.row", "agent_id": "ghost", "resource": "prod/db"})
        tx.notify("granted", {"waiter_id": "w"})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await store.transact(fails)

    async def look(tx: Tx) -> Any:
        return (
            await tx.get_principal("ghost"),
            await tx.held_related(["prod/db"]),
            await tx.get_object("change", "c1"),
            await tx.audit_head(),
        )

    assert await store.read(look) == (None, [], None, head)
    assert notes.seen == []
    # and the store goes on: the next transaction appends right after the old head
    assert await _append(store, "after") == [head[0] + 1]
    assert verify(await _stored(store)).ok


async def test_a_returned_error_commits(store: Store) -> None:
    async def refuse(tx: Tx) -> Held:
        await tx.append({"event": "lease.denied", "agent_id": "a", "resource": "prod/db"})
        return Held("prod/db is held")

    out = await store.transact(refuse)
    assert isinstance(out, Held)
    rows = await store.read(lambda tx: tx.audit_rows())
    assert [r["event"] for r in rows] == ["lease.denied"]


async def test_engine_errors_pass_through_unchanged(store: Store) -> None:
    async def dup(tx: Tx) -> None:
        await tx.insert_principal(Principal("p", "agent", created_at=tx.now()), "h1")
        await tx.insert_principal(Principal("p", "human", created_at=tx.now()), "h2")

    with pytest.raises(Conflict):
        await store.transact(dup)
    assert await store.read(lambda tx: tx.list_principals()) == []


async def test_reads_cannot_write(store: Store) -> None:
    with pytest.raises(RuntimeError, match="read transaction"):
        await store.read(lambda tx: tx.next_token())


async def test_after_commit_runs_once_and_only_on_commit(store: Store) -> None:
    ran: list[str] = []

    async def ok(tx: Tx) -> None:
        tx.after_commit(lambda: ran.append("ok"))

    async def fails(tx: Tx) -> None:
        tx.after_commit(lambda: ran.append("fails"))
        raise ValueError

    await store.transact(ok)
    with pytest.raises(ValueError):
        await store.transact(fails)
    assert ran == ["ok"]


# ------------------------------------------------------------------------- notifications
async def test_notifications_are_delivered_after_commit_only(store: Store) -> None:
    notes = Notes(store)

    async def fn(tx: Tx) -> None:
        tx.notify("granted", {"waiter_id": "w1", "lease_id": "ls_1"})
        await tx.append({"event": "lease.granted", "agent_id": "a", "resource": "r"})
        assert notes.seen == []  # nothing before the commit

    await store.transact(fn)
    assert ("granted", {"waiter_id": "w1", "lease_id": "ls_1"}) in notes.seen
    assert ("audit", {"seq": 1}) in notes.seen

    notes.seen.clear()

    async def quiet(tx: Tx) -> None:
        tx.notify("granted", {"waiter_id": "w2"})
        raise KeyError("no")

    with pytest.raises(KeyError):
        await store.transact(quiet)
    await store.transact(_notify("barrier"))
    assert notes.seen == [("barrier", {})]


async def test_pg_notifications_reach_every_process(pg_backend: Backend) -> None:
    """A second store on the same database (another ``writ serve``) hears the first's
    notifications — after commit, never for a rollback — and not its own echo twice."""
    store, other = pg_backend.open_store(), pg_backend.open_store()
    await store.open()
    await other.open()
    try:
        theirs, ours = Notes(other), Notes(store)

        async def rolled_back(tx: Tx) -> None:
            tx.notify("granted", {"waiter_id": "never"})
            await tx.append({"event": "x", "agent_id": "a", "resource": "r"})
            raise ValueError

        with pytest.raises(ValueError):
            await store.transact(rolled_back)

        async def fn(tx: Tx) -> None:
            tx.notify("granted", {"waiter_id": "w1", "lease_id": "ls_1", "big": "x" * 20_000})
            await tx.append({"event": "x", "agent_id": "a", "resource": "r"})

        t0 = time.perf_counter()
        await store.transact(fn)
        got = await theirs.wait_for("granted")
        latency = time.perf_counter() - t0
        assert got["waiter_id"] == "w1" and got["lease_id"] == "ls_1"
        assert got.get("truncated") is True  # too large for NOTIFY: cut, not lost
        assert (await theirs.wait_for("audit"))["seq"] == 1
        assert latency < 1.0, latency
        # each listener hears a later commit of the other store: it has heard all before it
        await store.transact(_notify("barrier-theirs"))
        await other.transact(_notify("barrier-ours"))
        await theirs.wait_for("barrier-theirs")
        await ours.wait_for("barrier-ours")
        assert [k for k in theirs.kinds() if k == "granted"] == ["granted"]
        assert ours.kinds().count("granted") == 1  # delivered locally, echo ignored
    finally:
        await other.close()
        await store.close()


# ------------------------------------------------------------------------- lookups
RESOURCES = ["a", "a/b", "a/b/c", "a/b/c/d", "a/bc", "a/b0", "a/b-x", "a/b.x", "ab", "b", "a/x"]


async def test_related_lookups_are_exact(store: Store) -> None:
    """Related means equal, ancestor or descendant: not a sibling that shares a prefix."""

    async def fill(tx: Tx) -> None:
        for r in RESOURCES:
            await tx.insert_lease(_lease(r, await tx.next_token(), now=tx.now()))
            await tx.insert_waiter(Waiter(f"w-{r}", 0, r, "a", {"intent": "i"}, tx.now(), 1e12))
            await tx.put_object("change", f"c-{r}", r, "protected", {"r": r})

    await store.transact(fill)
    want = {"a", "a/b", "a/b/c", "a/b/c/d"}

    async def look(tx: Tx) -> Any:
        held = await tx.held_related(["a/b"])
        waiters = await tx.waiters_related(["a/b"])
        objects = await tx.objects_related("change", ["a/b"], ["protected"])
        none = await tx.objects_related("change", ["a/b"], ["expired"])
        both = await tx.held_related(["a/b/c", "b"])
        count = await tx.count_waiters_related(["a/b"])
        before = await tx.waiters_related(["a/b"], before_seq=waiters[2].seq, limit=1)
        return held, waiters, objects, none, both, count, before

    held, waiters, objects, none, both, count, before = await store.read(look)
    assert {l.resource for l in held} == want
    assert [l.fencing_token for l in held] == sorted(l.fencing_token for l in held)
    assert [w.resource for w in waiters] == [r for r in RESOURCES if r in want]  # FIFO
    assert {o["r"] for o in objects} == want and none == []
    assert {l.resource for l in both} == {"a", "a/b", "a/b/c", "a/b/c/d", "b"}
    assert count == 4
    assert [w.resource for w in before] == ["a"]


async def test_writers_see_every_queued_request_and_policy_object(
    backend: Backend, store: Store
) -> None:
    """A store may remember that the queue is empty or that no policy object is live (the
    SQLite store does, to skip those lookups on the grant path); what it remembers must
    never hide a row: not one another connection committed, not after a rollback, not
    after the last waiter left."""
    specs = (("freeze", ("active",)), ("change", ("protected",)))

    async def look(tx: Tx) -> tuple[list[str], int, list[str]]:
        waiters = [w.waiter_id for w in await tx.waiters_related(["prod/db"])]
        count = await tx.count_waiters_related(["prod/db"])
        objects = await tx.objects_related_many(specs, ["prod/db"])
        return waiters, count, [o["id"] for rows in objects.values() for o in rows]

    assert await store.transact(look) == ([], 0, [])

    # a rolled-back transaction leaves nothing, and nothing stale
    async def queue_then_fail(tx: Tx) -> None:
        await tx.insert_waiter(Waiter("w-gone", 0, "prod/db", "a", {"intent": "i"}, 0.0, 1e12))
        await tx.put_object("freeze", "f-gone", "prod", "active", {"id": "f-gone"})
        assert (await look(tx))[0] == ["w-gone"]
        raise Conflict("changed my mind")

    with pytest.raises(Conflict):
        await store.transact(queue_then_fail)
    assert await store.transact(look) == ([], 0, [])

    # another connection (another process on the same file, or another server) writes
    other = backend.open_store()
    await other.open()
    try:

        async def queue(tx: Tx) -> None:
            await tx.insert_waiter(Waiter("w-1", 0, "prod/db/a", "a", {"intent": "i"}, 0.0, 1e12))
            await tx.put_object("change", "c-1", "prod", "protected", {"id": "c-1"})

        await other.transact(queue)
    finally:
        await other.close()
    assert await store.transact(look) == (["w-1"], 1, ["c-1"])

    # the last waiter leaves, the change stops being protected: the lookups say so
    async def drain(tx: Tx) -> None:
        assert await tx.delete_waiter("w-1")
        await tx.put_object("change", "c-1", "prod", "recorded", {"id": "c-1"})

    async def drain_then_fail(tx: Tx) -> None:
        await drain(tx)
        assert await look(tx) == ([], 0, [])
        raise Conflict("changed my mind")

    with pytest.raises(Conflict):
        await store.transact(drain_then_fail)
    assert await store.transact(look) == (["w-1"], 1, ["c-1"])
    await store.transact(drain)
    assert await store.transact(look) == ([], 0, [])

    async def queue_again(tx: Tx) -> None:
        await tx.insert_waiter(Waiter("w-2", 0, "prod", "a", {"intent": "i"}, 0.0, 1e12))
        await tx.put_object("freeze", "f-1", "prod/db", "active", {"id": "f-1"})

    await store.transact(queue_again)
    assert await store.transact(look) == (["w-2"], 1, ["f-1"])


async def test_lease_round_trip_and_queries(store: Store) -> None:
    async def fn(tx: Tx) -> Lease:
        lease = _lease("prod/db", await tx.next_token(), "agent-1", tx.now())
        lease.rollback = {"allowed": True, "path": "/rb"}
        lease.touches = ["capacity"]
        await tx.insert_lease(lease, request_id="wt_1")
        return lease

    lease = await store.transact(fn)

    async def end(tx: Tx) -> None:
        got = await tx.get_lease(lease.lease_id, for_update=True)
        assert got == lease
        got.state, got.ended_at = "released", tx.now()
        await tx.update_lease(got)

    await store.transact(end)

    async def look(tx: Tx) -> Any:
        return (
            await tx.lease_for_request("wt_1"),
            await tx.list_leases("prod", None, 10),
            await tx.list_leases(None, "held", 10),
            await tx.next_expiry(),
        )

    by_request, listed, held, nxt = await store.read(look)
    assert by_request is not None and by_request.state == "released"
    assert by_request.rollback == {"allowed": True, "path": "/rb"}
    assert [l.lease_id for l in listed] == [lease.lease_id]
    assert held == [] and nxt is None


async def test_leases_list_below_a_token_page_by_page(store: Store) -> None:
    """``list_leases(..., before=T)``: only tokens below T, newest first (a long list's pages)."""

    async def fn(tx: Tx) -> list[int]:
        tokens = []
        for i in range(5):
            lease = _lease(f"prod/r{i}", await tx.next_token(), "agent-1", tx.now())
            await tx.insert_lease(lease)
            tokens.append(lease.fencing_token)
        return tokens

    tokens = await store.transact(fn)

    async def pages(tx: Tx) -> list[list[int]]:
        out, before = [], None
        while True:
            page = await tx.list_leases("prod", "held", 2, None, before)
            if not page:
                return out
            out.append([l.fencing_token for l in page])
            before = page[-1].fencing_token

    got = await store.read(pages)
    assert got == [sorted(tokens, reverse=True)[i : i + 2] for i in range(0, 5, 2)]


async def test_a_single_read_answers_as_a_snapshot_read(store: Store) -> None:
    """``read(fn, single=True)`` — one statement, the time asked after it — answers what
    the same ``fn`` answers on a snapshot, with the store's time; a ``fn`` that asks for the
    time first, or sends a second statement, is answered all the same."""

    async def grant(tx: Tx) -> tuple[Lease, float]:
        lease = _lease("prod/db", await tx.next_token(), "agent-1", tx.now())
        await tx.insert_lease(lease)
        return lease, tx.now()

    lease, at = await store.transact(grant)

    async def one(tx: Tx) -> tuple[Lease | None, float]:
        got = await tx.get_lease(lease.lease_id)
        return got, tx.now()

    async def time_first(tx: Tx) -> tuple[Lease | None, float]:
        now = tx.now()
        return await tx.get_lease(lease.lease_id), now

    async def two(tx: Tx) -> tuple[Lease | None, float]:
        await tx.get_lease("ls_nobody")
        return await tx.get_lease(lease.lease_id), tx.now()

    async def none(tx: Tx) -> int:
        return 7

    for fn in (one, time_first, two):
        snapshot, single = await store.read(fn), await store.read(fn, single=True)
        assert single[0] == snapshot[0] == lease, fn.__name__
        assert at <= single[1] <= snapshot[1] + 5 and at <= snapshot[1], fn.__name__
    assert await store.read(none, single=True) == 7
    with pytest.raises(RuntimeError, match="read"):  # still a read: writes are refused
        await store.read(lambda tx: tx.insert_lease(_lease("x", 99)), single=True)


# ------------------------------------------------------------------------- PostgreSQL
async def test_pg_a_single_read_is_one_round_trip(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a single read sends one query (BEGIN, its statement, the clock, COMMIT);
    a read on a snapshot two (the same without COMMIT, then COMMIT), or three when it asks
    the time first (BEGIN with the clock, the statement, COMMIT); a single read that asks
    for more runs again on a snapshot, and is counted."""
    import psycopg

    store = pg_backend.open_store()
    await store.open()
    try:
        lease = _lease("prod/db", 1, "agent-1", 0.0)
        await store.transact(lambda tx: tx.insert_lease(lease))
        sent: list[str] = []
        real = psycopg.AsyncCursor.execute  # every query goes through it (client cursors too)

        def counting(self: Any, query: Any, *a: Any, **k: Any) -> Any:
            if "pg_notify" not in str(query):  # not the listener's hello
                sent.append(str(query))
            return real(self, query, *a, **k)

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)

        async def one(tx: Tx) -> tuple[Lease | None, float]:
            return await tx.get_lease(lease.lease_id), tx.now()

        got, now = await store.read(one, single=True)
        assert got == lease and now > 1e9
        assert len(sent) == 1, sent
        # its own read-only transaction, the statement, then the clock: read after the
        # statement's snapshot, it judges a lease expired early, never late
        where = [sent[0].find(s) for s in ("READ ONLY", "FROM leases", "clock_timestamp", "COMMIT")]
        assert -1 not in where and where == sorted(where), sent[0]
        sent.clear()
        # a read on a snapshot begins it with its first statement: BEGIN, the statement and
        # the clock, then COMMIT
        assert (await store.read(one))[0] == lease
        assert len(sent) == 2 and sent[1] == "COMMIT", sent
        assert "FROM leases" in sent[0] and "COMMIT" not in sent[0], sent
        sent.clear()
        misses = store.single_misses  # type: ignore[attr-defined]

        async def time_first(tx: Tx) -> tuple[float, Lease | None]:
            return tx.now(), await tx.get_lease(lease.lease_id)

        assert (await store.read(time_first, single=True))[1] == lease
        assert store.single_misses == misses + 1  # type: ignore[attr-defined]
        # asked nothing of the database before it ran again: BEGIN with the clock first, the
        # statement, COMMIT — and remembered, so it runs that way at once from now on
        assert len(sent) == 3 and "clock_timestamp" in sent[0], sent
        assert time_first.__code__ in store._time_first  # type: ignore[attr-defined]
        sent.clear()
        assert (await store.read(time_first))[1] == lease
        assert len(sent) == 3 and store.single_misses == misses + 1, sent  # type: ignore[attr-defined]
        sent.clear()

        async def two(tx: Tx) -> Lease | None:
            await tx.get_lease("ls_nobody")
            return await tx.get_lease(lease.lease_id)

        assert await store.read(two, single=True) == lease
        assert store.single_misses == misses + 2  # type: ignore[attr-defined]
        assert len(sent) == 1 + 3, sent  # the first statement, then a snapshot of two
        # and the database itself refuses a write in one (READ ONLY), whatever the code does
        with pytest.raises(Exception, match="read-only"):
            await store.read(lambda tx: tx._all("UPDATE audit_head SET ts = ts"), single=True)  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_pg_unreachable_database_is_unavailable() -> None:
    base = pg_url()
    bad = with_query(base.replace(":5432", ":1"), connect_timeout="1")
    store = open_store(bad)
    with pytest.raises(Unavailable, match="could not open"):
        await store.open()


async def test_pg_time_is_the_database_clock(pg_backend: Backend) -> None:
    backend = pg_backend
    store = backend.open_store()
    await store.open()
    db_now = (await backend.sql("SELECT extract(epoch FROM clock_timestamp())::float8"))[0][0]
    times = [await store.transact(_now) for _ in range(5)]
    assert times == sorted(times)
    assert abs(times[0] - db_now) < 5
    await store.close()
    with pytest.raises(Exception, match="database clock"):
        open_store(backend.url, clock=object())


async def test_pg_servers_starting_together_migrate_once(pg_backend: Backend) -> None:
    backend = pg_backend
    stores = [backend.open_store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        from writ.stores.postgres import MIGRATIONS

        rows = await backend.sql("SELECT version, name FROM writ_migrations ORDER BY version")
        assert rows == [(i, name) for i, (name, _) in enumerate(MIGRATIONS, start=1)]
    finally:
        for s in stores:
            await s.close()


async def test_pg_recovers_from_killed_connections(pg_backend: Backend) -> None:
    """Every connection of a store is killed (as in a PostgreSQL restart): the next
    request still succeeds, and the listener comes back and says it resynchronized."""
    backend = pg_backend
    name = "writ_kill_" + (backend.schema or "x")[-12:]
    store = open_store(with_query(backend.url, application_name=name))
    await store.open()
    notes = Notes(store)
    try:
        await _append(store, "before")
        killed = await backend.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            name,
        )
        assert len(killed) >= 2  # the pool and the LISTEN connection
        assert await _append(store, "after") == [2]  # retried on a fresh connection
        assert await store.read(lambda tx: tx.audit_head()) == (2, (await _stored(store))[-1][2])
        resync = await notes.wait_for("resync")
        assert resync["seq"] >= 1
        # and other processes' notes flow again
        other = backend.open_store()
        await other.open()
        try:
            notes.seen.clear()
            await _append(other, "from-the-other")
            assert (await notes.wait_for("audit"))["seq"] == 3
        finally:
            await other.close()
    finally:
        await store.close()


async def test_pg_conflicting_writers_serialize(pg_backend: Backend) -> None:
    """Two "servers" each run 20 check-then-insert transactions at once on one row that
    does not exist yet: exactly one inserts (no phantom race), and the ledger is one
    chain without gaps."""
    backend = pg_backend
    a, b = backend.open_store(), backend.open_store()
    await a.open()
    await b.open()
    try:

        async def claim(tx: Tx) -> bool:
            if await tx.held_related(["prod/db"]):
                await tx.append({"event": "lease.denied", "agent_id": "x", "resource": "prod/db"})
                return False
            await tx.insert_lease(_lease("prod/db", await tx.next_token(), now=tx.now()))
            await tx.append({"event": "lease.granted", "agent_id": "x", "resource": "prod/db"})
            return True

        results = await asyncio.gather(*(s.transact(claim) for s in [a, b] * 20))
        assert results.count(True) == 1
        stored = await _stored(a)
        assert [s for s, _, _ in stored] == list(range(1, 41)) and verify(stored).ok
        events = [json.loads(body)["event"] for _, body, _ in stored]
        assert events[0] == "lease.granted" and events.count("lease.granted") == 1
    finally:
        await a.close()
        await b.close()


async def test_pg_a_server_role_that_does_not_own_the_ledger_cannot_rewrite_it(
    pg_backend: Backend,
) -> None:
    """docs/postgres.md, "Hardening the ledger": migrate as the owner, serve as a role with
    row rights only. It serves; it cannot UPDATE the ledger or switch its triggers off."""
    import psycopg

    owner = pg_backend.open_store()
    await owner.open()
    await owner.close()
    role = "writ_srv_" + (pg_backend.schema or "x")[-12:]
    schema = pg_backend.schema
    grants = [
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT ON {schema}.audit TO {role}",
        f"GRANT SELECT, UPDATE ON {schema}.audit_head TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.leases, {schema}.waiters,"
        f" {schema}.objects, {schema}.principals TO {role}",
        f"GRANT SELECT ON {schema}.writ_migrations TO {role}",
        f"GRANT USAGE ON SEQUENCE {schema}.fencing_token, {schema}.waiters_seq_seq TO {role}",
    ]
    for g in grants:
        await pg_backend.sql(g)
    parts = urlparse(pg_backend.url)
    as_role = urlunparse(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    try:
        store = open_store(as_role)
        try:
            await store.open()
        except Unavailable as exc:
            pytest.skip(f"cannot log in as a new role here: {exc}")
        try:
            assert await _append(store, "a", "b") == [1, 2]
            assert (await _tokens(store, 1))[0] >= 1
            conninfo = urlunparse(
                parts._replace(
                    netloc=parts.netloc.replace(parts.username or "postgres", role, 1), query=""
                )
            )
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as c:
                for stmt in (
                    f"UPDATE {schema}.audit SET body = '{{}}'",
                    f"ALTER TABLE {schema}.audit DISABLE TRIGGER audit_no_update",
                    f"TRUNCATE {schema}.audit",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        await c.execute(stmt)
            assert verify(await _stored(store)).ok
        finally:
            await store.close()
    finally:
        await pg_backend.sql(f"DROP OWNED BY {role}")
        await pg_backend.sql(f"DROP ROLE {role}")


def test_sqlite_held_lookup_reads_only_held_leases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The held-lease lookup is planned on the partial index of held leases, so its cost
    does not grow with the history of released leases on the resource."""
    import sqlite3

    from writ.stores import sqlite as sq

    store = sq.SQLiteStore(f"sqlite:///{tmp_path}/plan.db")
    asyncio.run(store.open())
    asyncio.run(store.close())
    sql, args = sq._held_related_sql(("prod/db", "routing/db-tier"))
    conn = sqlite3.connect(tmp_path / "plan.db")
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    conn.close()
    assert "leases_held" in plan and "leases_by_resource" not in plan, plan


async def test_sqlite_slow_commits_move_off_the_event_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A lone transaction commits on the loop while the disk is quick; once commits are slow
    (a stalled disk), they go to the worker thread and the loop keeps serving others."""
    import time as _time

    from writ.stores import sqlite as sq

    store = sq.SQLiteStore(f"sqlite:///{tmp_path}/slow.db")
    await store.open()
    real = store._w
    assert real is not None

    class SlowDisk:  # the connection, with a COMMIT that takes 50 ms
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                _time.sleep(0.05)
            return real.execute(sql, *args)

    async def write(tx: Tx) -> None:
        await tx.append({"event": "test.row", "agent_id": "a", "resource": "r"})

    async def ticks_during_a_write() -> int:
        n, done = 0, False

        async def tick() -> None:
            nonlocal n
            while not done:
                n += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        start = n
        await store.transact(write)
        done = True
        await ticker
        return n - start

    try:
        store._w = SlowDisk()  # type: ignore[assignment]
        first = await ticks_during_a_write()  # quick so far: inline, the loop waits
        assert first < 10, first
        for _ in range(3):  # now it knows the disk is slow
            await ticks_during_a_write()
        assert await ticks_during_a_write() > 100
    finally:
        store._w = real
        await store.close()
