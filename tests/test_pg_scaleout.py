"""The PostgreSQL store's scale-out design (docs/scaling.md): group commit on a live
replica, optimistic batches, in-place upgrade, ``writ serve --workers``.

Every test here needs ``WRIT_TEST_POSTGRES_URL`` (each gets its own schema), except the
``--workers`` refusal on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from tests.server_fixtures import ADMIN_TOKEN, writ_workers
from tests.stores_fixtures import Backend, with_query
from tests.test_engine import add, grant, queued, waiting
from writ.cli import main
from writ.core.errors import Conflict, Held, Unavailable
from writ.core.ledger import verify
from writ.core.models import Lease, Principal, Waiter
from writ.engine import Engine
from writ.stores import Store, Tx
from writ.stores.migrate import upgrade
from writ.stores.postgres import MIGRATIONS, PgTx, PostgresStore


def _lease(resource: str, token: int, now: float, lease_id: str | None = None) -> Lease:
    return Lease(
        lease_id=lease_id or f"ls_{resource.replace('/', '_')}_{token}",
        resource=resource,
        holder="a",
        intent="test",
        fencing_token=token,
        acquired_at=now,
        expires_at=now + 30,
        ttl_s=30,
    )


async def _grant(tx: Tx, resource: str) -> Lease:
    lease = _lease(resource, await tx.next_token(), tx.now())
    await tx.insert_lease(lease)
    await tx.append(
        {
            "event": "lease.granted",
            "agent_id": "a",
            "resource": resource,
            "lock_key": lease.lock_key,
        }
    )
    return lease


async def _chain(store: Store) -> Any:
    triples: list[tuple[int, str, str]] = []
    async for chunk in store.audit_stream():
        triples += chunk
    return verify(triples)


async def _close(backend: Backend) -> None:
    await (await _open(backend)).close()


async def _open(backend: Backend) -> PostgresStore:
    store = backend.open_store()
    assert isinstance(store, PostgresStore)
    await store.open()
    return store


# ------------------------------------------------------------------------- group commit
async def test_concurrent_transactions_share_commits_and_keep_their_order(
    pg_backend: Backend,
) -> None:
    """32 transactions at once: fewer commits than transactions (one batch, one fsync, for
    those that arrive together), every one committed, tokens increasing in ledger order."""
    store = await _open(pg_backend)
    try:
        leases = await asyncio.gather(
            *(store.transact(lambda tx, i=i: _grant(tx, f"r/{i}")) for i in range(32))  # type: ignore[misc]
        )
        assert store.transactions == 32 and store.batches < 32, (store.batches,)
        rows = await store.read(lambda tx: tx.audit_rows(0, 100))
        assert [r["lock_key"] for r in rows] == [l.lock_key for l in leases]
        tokens = [l.fencing_token for l in leases]
        assert tokens == sorted(tokens) and len(set(tokens)) == 32
        assert (await _chain(store)).ok
    finally:
        await store.close()


async def test_a_lone_request_after_a_quiet_commit_goes_without_waiting_a_tick(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain waits one tick of the loop before a batch, for the requests arriving in
    that tick to join it — unless it holds one request and the last commit saw no others
    arrive (one client): that one goes at once. Requests that come together still share."""
    store = await _open(pg_backend)
    ticks: list[int] = []
    real = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        if delay == 0 and sys._getframe(1).f_code.co_name == "_drain":
            ticks.append(len(store._queue))
        return await real(delay, *args)

    try:
        await store.transact(lambda tx: _grant(tx, "quiet/0"))
        monkeypatch.setattr(asyncio, "sleep", sleep)
        for i in range(1, 4):
            await store.transact(lambda tx, i=i: _grant(tx, f"quiet/{i}"))  # type: ignore[misc]
        assert ticks == []
        batches = store.batches
        await asyncio.gather(
            *(store.transact(lambda tx, i=i: _grant(tx, f"together/{i}")) for i in range(3))  # type: ignore[misc]
        )
        assert ticks and ticks[0] == 3 and store.batches == batches + 1
    finally:
        await store.close()


async def _join(tx: Tx, waiter_id: str) -> Waiter:
    tx.patient = True  # as the engine marks a queue join
    now = tx.now()
    return await tx.insert_waiter(Waiter(waiter_id, 0, "q", "a", {"intent": "i"}, now, now + 60))


def _watch_company(store: PostgresStore) -> asyncio.Event:
    """An event set once a batch waits for company (its ``_company`` waits for arrivals)."""
    gathering = asyncio.Event()
    inner = store._company

    async def company(*args: Any) -> Any:
        task = asyncio.ensure_future(inner(*args))
        await asyncio.sleep(0)  # it runs to its first wait
        if store._arrived is not None:
            gathering.set()
        return await task

    store._company = company  # type: ignore[method-assign]
    return gathering


async def test_queue_joins_wait_a_moment_for_company_and_share_its_commit(
    pg_backend: Backend,
) -> None:
    """A batch of queue joins only (nobody is answered at its commit) waits up to
    ``gather_s`` for more transactions — the release that will serve them, as a rule —
    and commits with them; other batches never wait, and a join alone commits at the
    deadline."""
    store = await _open(pg_backend)
    store.solo_after = 0.0
    try:
        for i in range(2):  # the replica is loaded; batches go optimistic from here
            await store.transact(lambda tx, i=i: _grant(tx, f"warm/{i}"))  # type: ignore[misc]
        store.gather_s = 60.0  # in this part only company ends the wait
        batches, gathering = store.batches, _watch_company(store)
        joining = asyncio.ensure_future(store.transact(lambda tx: _join(tx, "w-1")))
        await asyncio.wait_for(gathering.wait(), 10)
        assert not joining.done() and store.batches == batches
        lease = await asyncio.wait_for(store.transact(lambda tx: _grant(tx, "r/1")), 10)
        waiter = await asyncio.wait_for(joining, 10)
        assert store.batches == batches + 1 and store.transactions == 4  # one commit
        assert waiter.waiter_id == "w-1" and lease.resource == "r/1"
        queue = await store.read(lambda tx: tx.waiters_related(["q"]))
        assert [w.waiter_id for w in queue] == ["w-1"]

        # a batch that answers someone at its commit does not wait
        await asyncio.wait_for(store.transact(lambda tx: _grant(tx, "r/2")), 10)
        assert store.batches == batches + 2

        store.gather_s = 0.05  # a join with no company commits at the deadline
        await asyncio.wait_for(store.transact(lambda tx: _join(tx, "w-2")), 10)
        assert store.batches == batches + 3
        assert (await _chain(store)).ok
    finally:
        await store.close()


async def test_a_batch_that_waited_for_the_head_lock_takes_in_what_queued_meanwhile(
    pg_backend: Backend,
) -> None:
    """While another server holds the head lock, the transactions that queue behind a
    waiting batch join it once it has the lock: one lock and one commit for all of them
    (not one each), in arrival order, each its own fencing token."""
    store = await _open(pg_backend)
    store.optimistic_for = 0.0  # every batch takes the lock first, as with other servers
    await store.transact(lambda tx: _grant(tx, "warm/0"))
    holder = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo())
    began = asyncio.Event()
    begin = store._begin
    went: list[tuple[float, int]] = []

    async def _begin(conn: Any) -> Any:  # the first batch took its items: it goes for the lock
        went.append((time.perf_counter(), conn.info.backend_pid))
        began.set()
        return await begin(conn)

    store._begin = _begin  # type: ignore[method-assign]
    try:
        await holder.execute(
            sql.SQL("SELECT seq FROM {}.audit_head FOR UPDATE").format(
                sql.Identifier(pg_backend.schema)
            )
        )  # another server's hold
        batches, done = store.batches, store.transactions
        phases = dict(store.phase_s)
        took = [sum(phases.values())]  # what the batches took in all, as the metric sees it
        store.commit_observers.append(lambda s: took.__setitem__(0, took[0] + s))
        first = asyncio.ensure_future(store.transact(lambda tx: _grant(tx, "l/0")))
        await asyncio.wait_for(began.wait(), 10)
        rest = [
            asyncio.ensure_future(store.transact(lambda tx, i=i: _grant(tx, f"l/{i}")))  # type: ignore[misc]
            for i in range(1, 4)
        ]
        await _blocked_on_a_lock(pg_backend, went[0][1])  # the batch waits for it
        freed = time.perf_counter()  # and the lock is held at least until now
        await holder.rollback()
        leases = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert store.batches == batches + 1 and store.transactions == done + 4
        # the wait shows as the batch's lock phase (writ_store_batch_seconds), and the phases
        # add up to the batch's time, nothing counted twice (writ_store_commit_seconds)
        grew = {k: store.phase_s[k] - phases[k] for k in phases}
        assert grew["lock"] >= freed - went[0][0] > 0
        assert grew["decide"] > 0 and grew["commit"] > 0
        assert sum(store.phase_s.values()) == pytest.approx(took[0])
        assert [l.resource for l in leases] == ["l/0", "l/1", "l/2", "l/3"]
        tokens = [l.fencing_token for l in leases]
        assert tokens == sorted(set(tokens))
        assert (await _chain(store)).ok
    finally:
        await holder.close()
        await store.close()


async def _blocked_on_a_lock(pg_backend: Backend, pid: int) -> None:
    """Return once PostgreSQL shows backend ``pid`` waiting for a lock (10 s at most)."""
    async with await psycopg.AsyncConnection.connect(
        pg_backend._pg_conninfo(), autocommit=True
    ) as c:
        for _ in range(2000):
            cur = await c.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (pid,),
            )
            if await cur.fetchone() is not None:
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never waited for a lock")


class _HeldBack:
    """The store's prepared commit, held back until ``go`` is set (``sent`` says it is in
    the air): what arrives meanwhile is decided ahead. With ``each``, every commit waits
    for a ``go`` of its own."""

    def __init__(self, store: PostgresStore, each: bool = False) -> None:
        self.sent, self.go = asyncio.Event(), asyncio.Event()
        self.each = each
        real = store._writer.lone

        async def lone(*args: Any) -> None:
            self.sent.set()
            await self.go.wait()
            if self.each:
                self.go.clear()
            await real(*args)

        store._writer.lone = lone  # type: ignore[method-assign]
        store._busy = True  # as when several arrive during each commit

    async def in_the_air(self) -> None:
        await asyncio.wait_for(self.sent.wait(), 10)
        self.sent.clear()


@contextlib.asynccontextmanager
async def _alone(backend: Backend, others: int = 0) -> AsyncIterator[list[PostgresStore]]:
    """A store whose batches go optimistic at once (its replica loaded), and ``others``
    more stores on the same database, all closed after."""
    stores = [await _open(backend) for _ in range(1 + others)]
    stores[0].solo_after = 0.0
    try:
        for i in range(2):
            await stores[0].transact(lambda tx, i=i: _grant(tx, f"warm/{i}"))  # type: ignore[misc]
        yield stores
    finally:
        for store in stores:
            await store.close()


async def _arrive(store: PostgresStore, *fns: Callable[[Tx], Awaitable[Any]]) -> list[Any]:
    """Transactions sent to ``store`` now, once they reached it (yields, no timing)."""
    futs = [asyncio.ensure_future(store.transact(fn)) for fn in fns]
    for _ in range(5):
        await asyncio.sleep(0)
    return futs


def _free(resource: str) -> Callable[[Tx], Awaitable[Lease]]:
    return lambda tx: _grant_free(tx, resource)


async def _grant_free(tx: Tx, resource: str) -> Lease:
    if await tx.held_related([resource]):
        raise Held(f"{resource} is held")
    return await _grant(tx, resource)


async def _release_all(tx: Tx, resource: str) -> int:
    held = await tx.held_related([resource])
    for lease in held:
        await tx.update_lease(dataclasses.replace(lease, state="released", ended_at=tx.now()))
        await tx.append(
            {
                "event": "lease.released",
                "agent_id": "a",
                "resource": resource,
                "lock_key": lease.lock_key,
            }
        )
    return len(held)


async def _tokens(store: PostgresStore, prefix: str) -> list[tuple[str, int]]:
    found = await store.transact(lambda tx: tx.held_related([prefix]))
    return [(l.resource, l.fencing_token) for l in found]


async def test_what_a_transaction_reads_from_the_replica_is_its_own_copy(
    pg_backend: Backend,
) -> None:
    """The replica hands each transaction copies (``_copy``): a transaction that changes a
    lease or a waiter it read, in place, and then fails leaves the replica as it was; a
    record of every kind comes back equal and not the same object."""
    store = await _open(pg_backend)
    try:
        lease = await store.transact(lambda tx: _grant(tx, "c/one"))

        async def queue(tx: Tx) -> None:
            await tx.insert_waiter(Waiter("w-c", 0, "c/one", "a", {"intent": "i"}, 0.0, 1e12))

        await store.transact(queue)

        async def scribble(tx: Tx) -> None:
            got = await tx.get_lease(lease.lease_id)
            assert got == lease and got is not store._live.held[lease.lease_id]  # type: ignore[union-attr]
            related = (await tx.held_related(["c"]))[0]
            waiter = (await tx.waiters_related(["c/one"]))[0]
            assert waiter is not store._live.waiters["w-c"]  # type: ignore[union-attr]
            for record in (got, related):
                record.state, record.expires_at, record.holder = "released", 0.0, "mallory"
            waiter.resource, waiter.seq = "elsewhere", 10**9
            raise Conflict("changed my mind")

        with pytest.raises(Conflict):
            await store.transact(scribble)

        async def look(tx: Tx) -> tuple[list[Lease], list[Waiter]]:
            return await tx.held_related(["c"]), await tx.waiters_related(["c"])

        held, waiters = await store.transact(look)
        assert held == [lease]
        assert [(w.waiter_id, w.resource) for w in waiters] == [("w-c", "c/one")]

        # a principal read from the replica's cache: changed in place by a transaction
        # that commits (and never writes it back), the next one reads it as stored
        await store.transact(
            lambda tx: tx.insert_principal(Principal("p-c", "agent", created_at=0.0), "h")
        )

        async def disable_in_place(tx: Tx) -> None:
            p = await tx.get_principal("p-c")
            assert p is not None
            p.disabled_at, p.admin, p.queues = 1.0, True, ["ops"]

        await store.transact(disable_in_place)  # fills the cache, from the database
        await store.transact(disable_in_place)  # reads the cache
        again = await store.transact(lambda tx: tx.get_principal("p-c"))
        assert again is not None
        assert (again.disabled_at, again.admin, again.queues) == (None, False, [])
    finally:
        await store.close()


def test_copy_is_dataclasses_replace_for_every_record_and_refuses_what_it_cannot_copy() -> None:
    """``_copy`` gives what ``dataclasses.replace`` gave, field for field (the same objects:
    a shallow copy); a class whose ``__init__`` is not its fields, in order and positional,
    is refused with a TypeError rather than built wrong."""
    from writ.stores.postgres._sql import _copy

    records = [
        Lease("l", "r", "h", "i", 1, 0.0, 1.0, 1.0, ["a"], "held", {"x": 1}, None),
        Waiter("w", 1, "r", "p", {"a": 1}, 0.0, 1.0, "l"),
        Principal("n", "human", "v", "w", True, 1.0, ["q"], 2.0, "why", 3.0),
    ]
    for record in records:
        copy, replaced = _copy(record), dataclasses.replace(record)
        assert copy == replaced and copy is not record
        for f in dataclasses.fields(record):
            assert getattr(copy, f.name) is getattr(replaced, f.name)

    @dataclasses.dataclass
    class WithInitVar:
        a: int
        b: int
        c: dataclasses.InitVar[int] = 0

    @dataclasses.dataclass
    class KeywordOnly:
        a: int
        b: int = dataclasses.field(kw_only=True, default=0)

    @dataclasses.dataclass
    class NotInInit:
        a: int
        b: int
        c: int = dataclasses.field(init=False, default=0)

    for bad in (WithInitVar(1, 2), KeywordOnly(1), NotInInit(1, 2)):
        with pytest.raises(TypeError, match="does not take its fields"):
            _copy(bad)


async def test_a_writer_that_learned_no_policy_object_exists_sees_one_written_later(
    pg_backend: Backend,
) -> None:
    """A writer remembers that no lock-delay, freeze or protected change exists
    (``_Live.absent``); a freeze another server records, or one this writer's own failed
    transaction released before it learned "none", is seen at the next grant."""
    from writ.engine.reads import POLICY_OBJECTS

    a, b = await _open(pg_backend), await _open(pg_backend)
    a.solo_after = 0.0  # optimistic batches: the replica decides alone, before the lock

    async def frozen(store: PostgresStore) -> list[str]:
        got = await store.transact(lambda tx: tx.objects_related_many(POLICY_OBJECTS, ["p/db"]))
        return [o["id"] for o in got["freeze"]]

    try:
        for i in range(3):  # writes of its own: its batches go optimistic
            await a.transact(lambda tx, i=i: _grant(tx, f"warm/{i}"))  # type: ignore[misc]
        assert await frozen(a) == []
        assert a._live is not None and a._live.absent  # learned, and remembered
        assert await frozen(a) == []

        await b.transact(lambda tx: tx.put_object("freeze", "f-b", "p", "active", {"id": "f-b"}))
        assert await frozen(a) == ["f-b"]

        async def release_then_fail(tx: Tx) -> None:
            await tx.put_object("freeze", "f-b", "p", "released", {"id": "f-b"})
            got = await tx.objects_related_many(POLICY_OBJECTS, ["p/db"])
            assert got["freeze"] == []  # "none", learned inside a transaction that fails
            raise Conflict("changed my mind")

        with pytest.raises(Conflict):
            await a.transact(release_then_fail)
        assert await frozen(a) == ["f-b"]
    finally:
        await a.close()
        await b.close()


async def test_what_arrives_while_a_commit_is_in_the_air_is_decided_ahead(
    pg_backend: Backend,
) -> None:
    """A lone server decides the transactions that arrive while its commit is in the air,
    on the replica as that commit leaves it, and sends them the moment it is back: in
    arrival order, tokens rising, one chain; a transaction that must read the database is
    not decided ahead (the next batch then runs the usual way, after the commit)."""
    async with _alone(pg_backend) as (store,):
        held = _HeldBack(store)
        batches, ahead, retries = store.batches, store.ahead_batches, store.retries
        first = await _arrive(store, _free("a/0"))
        await held.in_the_air()
        rest = await _arrive(store, _free("a/1"), _free("a/0"), _free("a/2"))  # a/0 is taken
        held.go.set()
        out = await asyncio.wait_for(asyncio.gather(*first, *rest, return_exceptions=True), 10)
        assert isinstance(out[2], Held), out
        assert [l.resource for l in (out[0], out[1], out[3])] == ["a/0", "a/1", "a/2"]
        tokens = [l.fencing_token for l in (out[0], out[1], out[3])]
        assert tokens == sorted(set(tokens))
        assert store.batches == batches + 2 and store.ahead_batches == ahead + 1
        assert store.retries == retries  # decided on the right version: nothing refused

        # a transaction that reads the database ends deciding ahead: it runs after
        held.go.clear()
        store._busy = True
        first = await _arrive(store, _free("b/0"))
        await held.in_the_air()
        rest = await _arrive(store, _free("b/1"), _pid)
        held.go.set()
        out = await asyncio.wait_for(asyncio.gather(*first, *rest), 10)
        assert [out[0].resource, out[1].resource] == ["b/0", "b/1"] and isinstance(out[2], int)
        assert store.ahead_batches == ahead + 1 and store.retries == retries  # nothing sent early
        assert [r for r, _ in await _tokens(store, "a")] == ["a/0", "a/1", "a/2"]
        assert [r for r, _ in await _tokens(store, "b")] == ["b/0", "b/1"]
        assert (await _chain(store)).ok


async def test_a_batch_decided_ahead_is_taken_back_when_the_commit_before_it_fails(
    pg_backend: Backend,
) -> None:
    """Another server writes while this one's commit is in the air: that commit is refused
    by the head, and the batch decided on top of it is taken back before it is undone, then
    decided again once the replica has caught up — so it sees the other server's lease
    (a decision kept from before would have granted the same resource twice)."""
    async with _alone(pg_backend, others=1) as (a, other):
        held = _HeldBack(a)
        retries = a.retries
        first = await _arrive(a, _free("c/0"))
        await held.in_the_air()
        second = await _arrive(a, _free("c/1"))
        theirs = await other.transact(_free("c/1"))  # meanwhile
        held.go.set()
        mine = await asyncio.wait_for(first[0], 10)
        with pytest.raises(Held):
            await asyncio.wait_for(second[0], 10)
        assert a.retries >= retries + 1 and a.ahead_batches >= 1
        assert await _tokens(a, "c") == [
            ("c/1", theirs.fencing_token),
            ("c/0", mine.fencing_token),
        ]
        assert (await _chain(a)).ok


async def test_a_batch_decided_ahead_is_refused_on_its_own_when_another_server_wrote(
    pg_backend: Backend,
) -> None:
    """The batch in the air commits; another server writes before the batch decided ahead
    is sent: that one is refused by the head, taken back and decided again after the
    catch-up, where it sees the other server's lease."""
    async with _alone(pg_backend, others=1) as (a, other):
        held = _HeldBack(a, each=True)
        retries = a.retries
        first = await _arrive(a, _free("d/0"))
        await held.in_the_air()
        second = await _arrive(a, _free("d/1"))
        held.go.set()  # the first commits; the one decided ahead comes to the gate
        mine = await asyncio.wait_for(first[0], 10)
        await held.in_the_air()
        theirs = await asyncio.wait_for(other.transact(_free("d/1")), 10)
        held.go.set()
        with pytest.raises(Held):
            await asyncio.wait_for(second[0], 10)
        assert a.ahead_batches >= 1 and a.retries == retries + 1
        held.each = False
        held.go.set()
        assert await _tokens(a, "d") == [
            ("d/0", mine.fencing_token),
            ("d/1", theirs.fencing_token),
        ]
        assert (await _chain(a)).ok


async def test_deciding_ahead_stops_when_the_lesson_of_the_clock_is_stale(
    pg_backend: Backend,
) -> None:
    """A chain of batches decided ahead never goes through the lock, where the database
    clock is learned: once that lesson is older than ``optimistic_for``, the next commit
    decides nothing ahead, and the batch after it learns the clock again."""
    async with _alone(pg_backend) as (store,):
        held = _HeldBack(store, each=True)
        first = await _arrive(store, _free("f/0"))
        await held.in_the_air()
        second = await _arrive(store, _free("f/1"), _free("f/2"))  # the lesson is fresh
        live = store._live
        assert live is not None
        stale = live.learned = time.monotonic() - 2 * store.optimistic_for
        held.go.set()
        await held.in_the_air()  # f/1 and f/2 at the gate
        third = await _arrive(store, _free("f/3"), _free("f/4"))
        assert len(store._queue) == 2  # not taken to be decided on the stale lesson
        held.each = False
        held.go.set()
        leases = await asyncio.wait_for(asyncio.gather(*first, *second, *third), 10)
        assert [l.resource for l in leases] == [f"f/{i}" for i in range(5)]
        assert store._live is not None and store._live.learned > stale + store.optimistic_for
        assert (await _chain(store)).ok


async def test_a_refused_commit_is_undone_after_the_batch_decided_on_top_of_it(
    pg_backend: Backend,
) -> None:
    """Decided ahead: a release of the lease the batch in the air grants. That batch is
    refused; the release must be taken back first, newest first — undone the other way
    round, the replica would keep a lease nobody holds, and the grant's second attempt
    would find its resource taken."""
    async with _alone(pg_backend, others=1) as (a, other):
        held = _HeldBack(a)
        first = await _arrive(a, _free("e/0"))
        await held.in_the_air()
        second = await _arrive(a, lambda tx: _release_all(tx, "e/0"))
        assert not a._queue and not second[0].done()  # the release is decided ahead
        await other.transact(_free("e/9"))  # a is refused
        held.go.set()
        lease = await asyncio.wait_for(first[0], 10)
        assert lease.resource == "e/0"
        assert await asyncio.wait_for(second[0], 10) == 1  # and it released that lease
        assert [r for r, _ in await _tokens(a, "e")] == ["e/9"]
        assert (await _chain(a)).ok


async def test_the_engine_marks_a_queue_join_patient_so_the_release_shares_its_commit(
    pg_backend: Backend,
) -> None:
    """Through the engine: B's queued acquire waits for company, A's release joins its
    batch and grants B in the same commit."""
    engine = Engine(pg_backend.open_store(), None)
    await engine.start(background=False)
    store = engine.store
    assert isinstance(store, PostgresStore)
    store.solo_after = 0.0
    try:
        a, _ = await engine.add_principal(None, "agent-a", "agent")
        b, _ = await engine.add_principal(None, "agent-b", "agent")
        held = await engine.acquire(a, resource="prod/db", intent="first", ttl_s=60)
        await engine.acquire(a, resource="warm/1", intent="warm", ttl_s=60)
        store.gather_s = 60.0
        batches, gathering = store.batches, _watch_company(store)
        waiting = asyncio.ensure_future(
            engine.acquire(b, resource="prod/db", intent="second", ttl_s=60, wait_s=30)
        )
        await asyncio.wait_for(gathering.wait(), 10)
        await asyncio.wait_for(engine.release(a, held["lease_id"]), 10)
        granted = await asyncio.wait_for(waiting, 10)
        assert granted["holder"] == "agent-b" and granted["state"] == "held"
        assert store.batches == batches + 1  # the join, the release and the grant: one commit
    finally:
        await engine.stop()


async def test_a_failing_transaction_in_a_shared_batch_takes_nothing_with_it(
    pg_backend: Backend,
) -> None:
    """One transaction of a batch raises after writing a lease and a row: the others in
    the same commit keep theirs, it keeps nothing (not in the database, not in the
    replica the next decision is made on), and its token is never handed out again."""
    store = await _open(pg_backend)
    try:

        async def bad(tx: Tx) -> None:
            await _grant(tx, "prod/db")
            await tx.insert_waiter(Waiter("w-gone", 0, "prod", "a", {"intent": "i"}, 0.0, 1e12))
            raise Conflict("changed my mind")

        before = store.batches
        ok1, failed, ok2 = await asyncio.gather(
            store.transact(lambda tx: _grant(tx, "a/1")),
            store.transact(bad),
            store.transact(lambda tx: _grant(tx, "a/2")),
            return_exceptions=True,
        )
        assert isinstance(failed, Conflict)
        assert isinstance(ok1, Lease) and isinstance(ok2, Lease)
        assert store.batches == before + 1  # they did share the commit

        async def look(tx: Tx) -> Any:
            return (
                [l.resource for l in await tx.held_related(["prod", "a"])],
                await tx.waiters_related(["prod"]),
                await tx.next_token(),
            )

        held, queue, token = await store.transact(look)
        assert held == ["a/1", "a/2"] and queue == []
        # the failed one drew the token between theirs; it is never handed out again
        assert ok2.fencing_token == ok1.fencing_token + 2 and token == ok2.fencing_token + 1
        rows = await store.read(lambda tx: tx.audit_rows(0, 100))
        assert [r["resource"] for r in rows] == ["a/1", "a/2"]
        assert (await _chain(store)).ok
    finally:
        await store.close()


@pytest.mark.parametrize("draws", [1, 3])
async def test_a_draw_outside_the_head_lock_fails_the_batch_which_is_decided_again(
    pg_backend: Backend, draws: int
) -> None:
    """The replica hands out tokens and queue places itself; ``writ_batch`` checks that the
    sequences end where the batch's draws did. A draw by anyone else (a writer outside the
    head lock) fails the batch, which is decided again on the database's counters, so no
    token or queue place is handed out twice, whether the batch drew one or several."""
    store = await _open(pg_backend)
    store.solo_after = 0.0  # decide on the replica at once (as a server alone for a while)
    try:
        for i in range(3):
            await store.transact(lambda tx, i=i: _grant(tx, f"warm/{i}"))  # type: ignore[misc]
        assert store.alone_batches >= 2  # the batches are optimistic: one writ_batch call
        ((token,),) = await pg_backend.sql("SELECT nextval('fencing_token')")
        ((place,),) = await pg_backend.sql("SELECT nextval('waiters_seq_seq')")
        leases = await asyncio.gather(
            *(store.transact(lambda tx, i=i: _grant(tx, f"t/{i}")) for i in range(draws))  # type: ignore[misc]
        )
        assert min(l.fencing_token for l in leases) > token
        waiters = await asyncio.gather(
            *(store.transact(lambda tx, i=i: _join(tx, f"w-{i}")) for i in range(draws))  # type: ignore[misc]
        )
        assert min(w.seq for w in waiters) > place
        assert (await _chain(store)).ok
    finally:
        await store.close()


async def test_a_statement_that_fails_in_a_batch_fails_only_its_transaction(
    pg_backend: Backend,
) -> None:
    """A write the database refuses (here a duplicate fencing token) surfaces at COMMIT,
    for the whole batch: the batch is rolled back and each transaction runs alone, so the
    others still commit and only the culprit answers unavailable."""
    store = await _open(pg_backend)
    try:
        first = await store.transact(lambda tx: _grant(tx, "x/0"))

        async def duplicate(tx: Tx) -> None:
            await tx.insert_lease(_lease("x/dup", first.fencing_token, tx.now(), "ls_dup"))

        results = await asyncio.gather(
            store.transact(lambda tx: _grant(tx, "x/1")),
            store.transact(duplicate),
            store.transact(lambda tx: _grant(tx, "x/2")),
            return_exceptions=True,
        )
        assert isinstance(results[0], Lease) and isinstance(results[2], Lease)
        assert isinstance(results[1], Unavailable), results[1]
        held = await store.transact(lambda tx: tx.held_related(["x"]))
        assert sorted(l.resource for l in held) == ["x/0", "x/1", "x/2"]
        assert (await _chain(store)).ok
    finally:
        await store.close()


async def test_statements_on_tx_c_keep_the_transactions_atomicity(pg_backend: Backend) -> None:
    """A store method written against a plain connection (``await self.c.execute(...)``,
    as methods added to the contract are) runs inside its transaction in a batch: behind
    what the batch buffered, and rolled back with it when the transaction fails."""
    store = await _open(pg_backend)
    try:

        async def add(tx: Tx, name: str, fail: bool) -> Any:
            assert isinstance(tx, PgTx)
            tx._w()
            await tx.c.execute(
                "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
                " VALUES (%s, 'agent', false, %s, 0)",
                (name, f"h-{name}"),
            )
            cur = await tx.c.execute("SELECT count(*) FROM principals WHERE name = %s", (name,))
            seen = (await cur.fetchone())[0]
            if fail:
                raise Conflict("no")
            return seen

        results = await asyncio.gather(
            store.transact(lambda tx: _grant(tx, "c/1")),
            store.transact(lambda tx: add(tx, "kept", False)),
            store.transact(lambda tx: add(tx, "gone", True)),
            return_exceptions=True,
        )
        assert results[1] == 1 and isinstance(results[2], Conflict), results
        names = [r[0] for r in await pg_backend.sql("SELECT name FROM principals ORDER BY name")]
        assert names == ["kept"]
        assert [l.resource for l in await store.transact(lambda tx: tx.held_related(["c"]))] == [
            "c/1"
        ]
    finally:
        await store.close()


async def _end(tx: Tx, lease: Lease) -> None:
    ended = dataclasses.replace(lease, state="released", ended_at=tx.now())
    await tx.update_lease(ended)
    await tx.append(
        {
            "event": "lease.released",
            "agent_id": "a",
            "resource": lease.resource,
            "lock_key": lease.lock_key,
        }
    )


# every plan as a notice to the client; random_page_cost makes an index scan look dear, as
# statistics that no longer match the table can: the plans must not care
_EXPLAIN = (
    "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0"
    " -c auto_explain.log_nested_statements=on -c auto_explain.log_level=notice"
    " -c random_page_cost=1000"
)


async def _explained(backend: Backend, options: str = _EXPLAIN) -> tuple[PostgresStore, list[str]]:
    """An opened store on one pooled connection whose every plan lands in the list."""
    su = await backend.sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    if not su[0][0]:
        pytest.skip("auto_explain as a session library needs a superuser")
    store = PostgresStore(with_query(backend.url, pool_min="1", pool_max="1", options=options))
    await store.open()
    plans: list[str] = []
    async with store._pool_or_fail().connection() as c:  # the pool's only connection
        c.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    return store, plans


async def _grow(backend: Backend, n: int) -> None:
    """``n`` ended leases and ``n`` ledger rows more, behind every cached plan's back."""
    await backend.sql(
        "INSERT INTO leases (lease_id, resource, holder, intent, fencing_token, acquired_at,"
        " expires_at, ttl_s, touches, state, ended_at, wseq) SELECT 'old-' || g,"
        " 'old/' || (g % 1000), 'a', 'x', -g, 1, 2, 1, '[]', 'released', 2, 0"
        f" FROM generate_series(1, {n}) AS g"
    )
    await backend.sql(
        "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash) SELECT -g, 1,"
        " 'lease.granted', 'old/' || (g % 1000), 'k' || g, '{}', 'h'"
        f" FROM generate_series(1, {n}) AS g"
    )


async def test_a_release_finds_its_lease_by_key_after_the_table_grew(pg_backend: Backend) -> None:
    """A connection keeps the plans of ``writ_rows`` (PL/pgSQL caches them). Plans made
    while the tables were small must still find a lease by its key once the table holds
    many more rows than the statistics know of: a release's UPDATE is an index scan of
    ``leases_pkey``, never a scan of the table (seen through auto_explain's notices)."""
    store, plans = await _explained(pg_backend)
    try:
        for i in range(8):  # past PL/pgSQL's five custom plans: its generic plans are cached
            lease = await store.transact(lambda tx, i=i: _grant(tx, f"r/{i}"))  # type: ignore[misc]
            await store.transact(lambda tx, lease=lease: _end(tx, lease))  # type: ignore[misc]
        await _grow(pg_backend, 20000)
        plans.clear()
        lease = await store.transact(lambda tx: _grant(tx, "r/late"))
        await store.transact(lambda tx: _end(tx, lease))
        updates = [p for p in plans if "UPDATE leases" in p]
        assert updates, plans
        for plan in updates:
            assert "Index Scan using leases_pkey" in plan and "Seq Scan" not in plan, plan
        assert not any("JIT:" in p for p in plans), plans  # no query compiled on the way
        held = await store.read(lambda tx: tx.get_lease(lease.lease_id))
        assert held is not None and held.state == "released"
    finally:
        await store.close()


async def test_a_catch_up_reads_by_index_after_the_table_grew(pg_backend: Backend) -> None:
    """A batch that follows another server's catches up under the head lock with
    ``leases.wseq > version``: by the ``leases_wseq`` index, not by scanning a table
    that grew beyond what its statistics know (seen through auto_explain's notices)."""
    (a, plans), b = await _explained(pg_backend), await _open(pg_backend)
    a.solo_after = 1e9  # every batch of A catches up under the lock
    try:
        await a.transact(lambda tx: _grant(tx, "a/0"))
        await _grow(pg_backend, 20000)
        theirs = await b.transact(lambda tx: _grant(tx, "b/0"))
        plans.clear()
        held = await a.transact(lambda tx: tx.held_related(["b"]))
        assert [l.lease_id for l in held] == [theirs.lease_id]  # caught up
        on_leases = [p for p in plans if "on leases" in p]
        assert any("leases_wseq" in p for p in on_leases), plans
        assert not any("Seq Scan on leases" in p for p in on_leases), plans
        # forcing the index must not make another statement look so dear that it is
        # JIT-compiled (a disabled scan costs 10^10: 75 ms of compiling per batch, measured)
        assert not any("JIT:" in p for p in plans), plans
    finally:
        await a.close()
        await b.close()


async def test_reads_keep_their_index_plans_after_the_tables_grew(pg_backend: Backend) -> None:
    """The reads behind who, who --at, audit pages, events, a lease, fence and the sweep,
    their plans cached over a dozen rounds while the tables were small (psycopg prepares a
    query after five runs, PostgreSQL keeps a generic plan after five more), do not scan
    ``leases`` or ``audit`` once each holds 50,000 rows more."""
    store, plans = await _explained(pg_backend, _EXPLAIN.replace(" -c random_page_cost=1000", ""))
    engine = Engine(store, None)
    await engine.start(background=False)
    try:
        agent, _ = await engine.add_principal(None, "agent-a", "agent")

        async def rounds() -> None:
            lease = await engine.acquire(agent, resource="prod/db/x", intent="x", ttl_s=60)
            await engine.who("prod/db/x")
            await engine.who("prod/db/x", at=time.time() - 1)
            await engine.audit(prefix="prod/db")
            await engine.audit(after_seq=1, limit=10)
            await engine.events(prefix="prod", after_seq=1)
            await engine.get_lease(lease["lease_id"])
            await engine.fence("prod/db/x", lease["fencing_token"])
            await engine.release(agent, lease["lease_id"])
            await engine.sweep()

        for _ in range(12):
            await rounds()
        await _grow(pg_backend, 50000)
        plans.clear()
        await rounds()
        assert len(plans) > 20, plans
        scans = [p for p in plans if re.search(r"Seq Scan on (leases|audit)\b", p)]
        assert not scans, scans
    finally:
        await engine.stop()


# ------------------------------------------------------------- several servers, one replica
async def test_a_server_catches_up_with_what_others_wrote_before_it_decides(
    pg_backend: Backend,
) -> None:
    """Server A writes alone (its batches go optimistic: decided before the lock); B then
    grants a lease, queues a request and records a policy object. A's next transaction
    sees all three — its optimistic attempt is refused by the head and run again under
    the lock — and draws a larger token; one chain."""
    a, b = await _open(pg_backend), await _open(pg_backend)
    a.solo_after = 0.0  # optimistic as soon as A has seen no other writer (default 0.5 s)
    try:
        for i in range(3):
            await a.transact(lambda tx, i=i: _grant(tx, f"a/{i}"))  # type: ignore[misc]
        assert a.optimistic_batches >= 1
        retries = a.retries

        async def b_writes(tx: Tx) -> Lease:
            lease = await _grant(tx, "prod/db")
            await tx.insert_waiter(Waiter("w-b", 0, "prod", "a", {"intent": "i"}, 0.0, 1e12))
            await tx.put_object("freeze", "f-b", "prod", "active", {"id": "f-b"})
            return lease

        theirs = await b.transact(b_writes)

        async def a_looks(tx: Tx) -> Any:
            objects = await tx.objects_related_many([("freeze", ["active"])], ["prod/db"])
            return (
                [l.lease_id for l in await tx.held_related(["prod/db"])],
                [w.waiter_id for w in await tx.waiters_related(["prod/db"])],
                [o["id"] for o in objects["freeze"]],
                await tx.next_token(),
            )

        held, queue, frozen, token = await a.transact(a_looks)
        assert held == [theirs.lease_id] and queue == ["w-b"] and frozen == ["f-b"]
        assert token > theirs.fencing_token
        assert a.retries == retries + 1  # the optimistic attempt was refused, then redone

        # and B, in turn, sees A's
        mine = await b.transact(lambda tx: tx.held_related(["a"]))
        assert [l.resource for l in mine] == ["a/0", "a/1", "a/2"]
        assert (await _chain(a)).ok
    finally:
        await a.close()
        await b.close()


async def test_a_lone_batch_is_one_prepared_statement_refused_when_another_wrote(
    pg_backend: Backend,
) -> None:
    """An optimistic batch that writes only leases, the queue and the ledger is one
    prepared statement, its own transaction (autocommit): READ COMMITTED whatever the
    database's default (here SERIALIZABLE, through the URL's own options). When another
    server wrote in between, that statement is refused by the head and the batch is
    decided again under the lock; a batch that writes a policy object goes the long way."""
    url = with_query(pg_backend.url, options="-c default_transaction_isolation=serializable")
    a, b = PostgresStore(url), PostgresStore(url)
    await a.open()
    await b.open()
    a.solo_after = 0.0
    try:
        for i in range(3):
            await a.transact(lambda tx, i=i: _grant(tx, f"a/{i}"))  # type: ignore[misc]
        assert a.alone_batches >= 2, (a.batches, a.optimistic_batches, a.alone_batches)
        async with a._pool_or_fail().connection() as c:
            cur = await c.execute("SHOW default_transaction_isolation")
            assert (await cur.fetchone()) == ("read committed",)

        theirs = await b.transact(lambda tx: _grant(tx, "b/0"))
        retries, alone = a.retries, a.alone_batches
        mine = await a.transact(lambda tx: _grant(tx, "a/3"))
        assert a.retries == retries + 1  # refused by the head, then decided under the lock
        assert mine.fencing_token > theirs.fencing_token

        a.solo_after, alone = -1.0, a.alone_batches  # optimistic again
        await a.transact(lambda tx: _grant(tx, "a/4"))
        assert a.alone_batches == alone + 1

        async def with_object(tx: Tx) -> None:
            await _grant(tx, "a/5")
            await tx.put_object("freeze", "f-a", "prod", "active", {"id": "f-a"})

        await a.transact(with_object)
        assert a.alone_batches == alone + 1  # BEGIN ...; COMMIT as one simple query instead
        held = await b.transact(lambda tx: tx.held_related(["a", "b"]))
        assert [l.resource for l in held] == ["a/0", "a/1", "a/2", "b/0", "a/3", "a/4", "a/5"]
        assert (await _chain(a)).ok
    finally:
        await a.close()
        await b.close()


async def _pid(tx: Tx) -> int:
    row = await (await tx.c.execute("SELECT pg_backend_pid()")).fetchone()  # type: ignore[attr-defined]
    return int(row[0])


async def test_batches_keep_their_connection_and_give_it_back_when_it_failed(
    pg_backend: Backend,
) -> None:
    """Batches run one at a time, so one connection serves them all, kept between them;
    a connection killed under it is replaced (the batch runs again on a new one), a store
    whose pool holds one connection hands it back after every batch (reads need it), and
    closing the store closes it."""
    store = await _open(pg_backend)
    try:
        pids = {await store.transact(_pid) for _ in range(5)}
        await store.transact(lambda tx: _grant(tx, "k/0"))  # the prepared path, same one
        assert len(pids) == 1 and await store.transact(_pid) in pids
        await pg_backend.sql("SELECT pg_terminate_backend(%s)", pids.pop())
        lease = await store.transact(lambda tx: _grant(tx, "k/1"))  # retried on a new one
        assert lease.resource == "k/1" and await store.transact(_pid) not in pids
        assert [l.resource for l in await store.transact(lambda tx: tx.held_related(["k"]))] == [
            "k/0",
            "k/1",
        ]
        held = store._writer.held
        assert held is not None
    finally:
        await store.close()
    assert held[1].closed

    one = PostgresStore(with_query(pg_backend.url, pool_max="1", pool_timeout="0.5"))
    await one.open()
    try:
        for i in range(3):  # a write, then a read on the pool's only connection
            await one.transact(lambda tx, i=i: _grant(tx, f"o/{i}"))  # type: ignore[misc]
            assert len(await one.read(lambda tx: tx.held_related(["o"]))) == i + 1
        assert (await _chain(one)).ok
    finally:
        await one.close()


# ------------------------------------------------------------------------ notifications
_MARK = "writ_test_mark"  # a channel no server listens to; each read's mark is its own


async def _heard(conn: Any, log: list[Any] | None = None) -> list[tuple[str, Any]]:
    """The notes a raw LISTEN connection has been sent so far, with their sender: it
    notifies itself on the mark channel and reads up to that mark (NOTIFY arrives in
    commit order across channels, so everything committed before the mark comes first).
    The mark is this read's own (a random payload): every test on the database shares the
    channel, and another test's mark, read first, ended reads early — everything committed
    between the two came a read late, and CI failed on it (the lone-server and relay-notes
    tests). Every notification read goes into ``log`` too (a failure's evidence)."""
    mine = secrets.token_hex(8)
    await conn.execute("SELECT pg_notify(%s, %s)", (_MARK, mine))
    out: list[tuple[str, Any]] = []
    # closed on the way out, not left suspended (holding the connection's lock, with the
    # notifications it reads meanwhile kept by nobody) until the loop finalizes it
    async with asyncio.timeout(10), contextlib.aclosing(conn.notifies()) as notes:
        async for n in notes:
            if log is not None:
                log.append((n.channel == _MARK, n.pid, n.payload[:60]))
            if n.channel == _MARK:
                if n.payload == mine:
                    return out
                continue  # another test's mark
            msg = json.loads(n.payload)
            out += [(msg["i"], kind) for kind, _ in msg["n"]]
    raise AssertionError("the mark never came back")


async def test_a_read_of_the_channel_ends_at_its_own_mark_not_another_tests(
    pg_backend: Backend,
) -> None:
    """The tests' reader of a store's channel (``_heard``) reads up to its own mark: a
    mark another test sent on the shared mark channel before a note was committed does not
    end the read before that note."""
    channel = "writ_t_" + secrets.token_hex(6)
    async with (
        await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True) as raw,
        await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True) as other,
    ):
        for name in (channel, _MARK):
            await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        note = json.dumps({"i": "someone", "n": [["audit", {"seq": 1}]]})
        await other.execute("SELECT pg_notify(%s, 'another test')", (_MARK,))
        await other.execute("SELECT pg_notify(%s, %s)", (channel, note))
        assert await _heard(raw) == [("someone", "audit")]
        assert await _heard(raw) == []  # nothing left behind for the next read


async def test_a_lone_server_notifies_nobody_and_starts_when_another_says_hello(
    pg_backend: Backend,
) -> None:
    """A NOTIFY costs every commit (~0.7 ms measured): a server alone on its store sends
    none — its own notes are delivered at commit — but says hello on its channel. As soon
    as a second process opens the store and says hello (or while its own LISTEN connection
    is down), the first one's commits are announced again; the hello itself is never
    delivered as a note."""
    a = await _open(pg_backend)
    a.solo_after = 0.0  # alone as soon as its replica is loaded
    raw = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True)
    try:
        await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(a.channel)))
        await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_MARK)))
        delivered: list[str] = []
        seqs: dict[int, asyncio.Event] = {}

        def note(kind: str, payload: dict[str, Any]) -> None:
            delivered.append(kind)
            seqs.setdefault(int(payload.get("seq", 0)), asyncio.Event()).set()

        a.set_listener(note)
        # what A's batches decided (for the failure message: CI failed once on the last
        # assertion, raw having heard B's hello and neither B's commit nor A's — another
        # test's mark had ended raw's read early, see _heard)
        decided: list[tuple[bool, bool, int]] = []
        raw_log: list[Any] = []  # every notification raw read: (a mark?, sender pid, payload)

        def spy_on(store: PostgresStore, into: list[tuple[bool, bool, int]]) -> None:
            commit = store._commit

            async def spy(b: Any, ok: Any) -> Any:
                try:
                    return await commit(b, ok)
                finally:
                    into.append((b.optimistic, b.notify, len(b.notes)))

            store._commit = spy  # type: ignore[method-assign]

        spy_on(a, decided)
        for i in range(3):
            await a.transact(lambda tx, i=i: _grant(tx, f"alone/{i}"))  # type: ignore[misc]
        heard = await _heard(raw, raw_log)
        assert [k for _, k in heard if k != "hello"] == []  # nothing but (at most) hellos
        assert delivered.count("audit") == 3  # delivered here, at commit
        assert a._heard_seq >= (await a.read(lambda tx: tx.audit_head()))[0]

        a._listening.clear()  # as while its LISTEN connection is down: it cannot tell
        await a.transact(lambda tx: _grant(tx, "deaf/0"))
        heard = await _heard(raw, raw_log)
        assert (a.instance, "audit") in heard, (
            f"A {a.instance}; listening {a._listening.is_set()}; A's batches (optimistic, "
            f"notify, notes) {decided}; {delivered=}; raw read (mark?, pid, payload) {raw_log}"
        )
        a._listening.set()

        b = await _open(pg_backend)  # its LISTEN connection says hello
        b_decided: list[tuple[bool, bool, int]] = []
        spy_on(b, b_decided)
        try:
            # B's first commit reaches A after B's hello (NOTIFY is in commit order)
            await b.transact(lambda tx: _grant(tx, "b/0"))
            seq = (await b.read(lambda tx: tx.audit_head()))[0]
            async with asyncio.timeout(5):
                await seqs.setdefault(seq, asyncio.Event()).wait()
            assert a._heard_others() and "hello" not in delivered
            await a.transact(lambda tx: _grant(tx, "shared/0"))
            heard = await _heard(raw, raw_log)
            assert (a.instance, "audit") in heard, (
                f"A {a.instance}, B {b.instance}; A heard {a._heard_at}; A's batches "
                f"(optimistic, notify, notes) {decided}; B's {b_decided}; retries "
                f"{a.retries}; {delivered=}; raw read (mark?, pid, payload) {raw_log}"
            )
        finally:
            await b.close()
    finally:
        await raw.close()
        await a.close()


async def test_a_process_heard_for_the_first_time_is_answered_with_a_hello(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of two processes that open a store one after the other, the first said its hello
    before the second listened: the second's hello is answered at once, so each knows of
    the other now rather than at the first's next round of hellos (made a minute here).
    Before, a writer and a server relaying to it that started together could miss each
    other's hellos, and the writer, its relaying server gone, had heard nobody to NOTIFY."""
    from writ.stores.postgres import _listen

    monkeypatch.setattr(_listen, "HELLO_EVERY", 60.0)
    a = await _open(pg_backend)  # its hello: nobody listens yet
    try:
        b = await _open(pg_backend)  # its hello: A hears a process it did not know
        try:
            for _ in range(1000):  # (10 s at most: the next round is a minute away)
                if a.instance in b._heard_at:
                    break
                await asyncio.sleep(0.01)
            assert a.instance in b._heard_at and b.instance in a._heard_at
        finally:
            await b.close()
    finally:
        await a.close()


async def test_a_second_stranger_within_a_greeting_is_answered_once_it_may_be(
    pg_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes heard for the first time within GREET_EVERY of each other: the first is
    answered at once, the second as soon as the next answer may be (GREET_EVERY after the
    first), not at the next round of hellos (made a minute here). Before, the second waited
    for some other notification to arrive, or for the round: the relaying servers of a
    writer started together (``--workers``) could miss it for a round."""
    from writ.stores.postgres import _listen

    monkeypatch.setattr(_listen, "HELLO_EVERY", 60.0)
    monkeypatch.setattr(_listen, "GREET_EVERY", 2.0)
    async with await psycopg.AsyncConnection.connect(
        pg_backend._pg_conninfo(), autocommit=True
    ) as ear:
        store = pg_backend.open_store()
        assert isinstance(store, PostgresStore)
        await ear.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.channel)))

        async def its_hello() -> bool:
            async for n in ear.notifies(timeout=10):
                if json.loads(n.payload)["i"] == store.instance:
                    return True
            return False

        async def stranger(name: str) -> None:
            hello = json.dumps({"i": name, "n": [["hello", {}]]})
            await pg_backend.sql("SELECT pg_notify(%s, %s)", store.channel, hello)

        await store.open()
        try:
            assert await its_hello()  # its first
            await stranger("one")
            assert await its_hello()  # answered at once
            await stranger("two")  # within GREET_EVERY of that answer
            assert await its_hello()  # GREET_EVERY after the first answer, not a minute
        finally:
            await store.close()


async def test_a_hello_answered_loses_none_of_the_notes_that_came_with_it(
    pg_backend: Backend,
) -> None:
    """A stranger's hello and another process's note committed together reach the listener
    in one read: it answers the hello without dropping the note behind it. Before, it broke
    out of psycopg's ``notifies()`` after the hello to answer it, and the notes read with it
    that were not yet yielded went with the generator (a grant's wake-up lost)."""
    store = await _open(pg_backend)
    got: list[tuple[str, dict[str, Any]]] = []
    heard = asyncio.Event()

    def deliver(notes: Any) -> None:
        got.extend(notes)
        if any(kind == "mark" for kind, _ in notes):
            heard.set()

    store._deliver_foreign = deliver  # type: ignore[method-assign]
    try:
        hello = json.dumps({"i": "stranger", "n": [["hello", {}]]})
        note = json.dumps({"i": "other", "n": [["mark", {}]]})
        await pg_backend.sql(  # one transaction: delivered together
            "SELECT pg_notify(%s, %s), pg_notify(%s, %s)", store.channel, hello, store.channel, note
        )
        await asyncio.wait_for(heard.wait(), 10)
        assert [kind for kind, _ in got] == ["hello", "mark"]
    finally:
        await store.close()


async def test_servers_told_over_the_relay_do_not_make_a_batch_notify(
    pg_backend: Backend,
) -> None:
    """The processes in ``note_peers`` hear this one's notes over the relay (``note_sink``,
    after commit): hearing them alone sends no NOTIFY, and the sink gets each commit's
    notes. Any other process heard (a hello), this one deaf, a crowd of ids past
    ``MAX_HEARD``: NOTIFY again, and the sink is not called for it. A principal changed
    (the trigger's note, sent by the database) is no process."""
    from writ.stores.postgres._listen import MAX_HEARD

    a = await _open(pg_backend)
    a.solo_after = 0.0
    raw = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True)
    sunk: list[list[str]] = []
    try:
        await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(a.channel)))
        await raw.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_MARK)))
        a.note_sink = lambda notes: sunk.append([k for k, _ in notes])

        def hello(sender: str) -> None:
            a._on_notify(json.dumps({"i": sender, "n": [["hello", {}]]}))

        hello("peer1")
        a._on_notify(json.dumps({"i": "db", "n": [["principals", {"op": "UPDATE"}]]}))
        assert a._heard_others()
        a.note_peers.add("peer1")
        assert not a._heard_others()  # the trigger's "db" is not a process
        await a.transact(lambda tx: _grant(tx, "relayed/0"))
        assert [k for _, k in await _heard(raw) if k != "hello"] == []
        assert sunk == [["audit"]]

        hello("other")  # a process not told over the relay: NOTIFY, no sink
        await a.transact(lambda tx: _grant(tx, "relayed/1"))
        assert (a.instance, "audit") in await _heard(raw)
        assert sunk == [["audit"]]

        a._heard_at.pop("other")
        for i in range(MAX_HEARD + 10):  # ids invented by whoever may NOTIFY
            hello(f"fake{i}")
        assert len(a._heard_at) <= MAX_HEARD
        a.note_peers.update(f"fake{i}" for i in range(MAX_HEARD + 10))
        assert a._heard_others()  # past the bound, any other counts

        def broken(notes: Any) -> None:
            raise RuntimeError("the relay is broken")

        a._others_at = float("-inf")
        a._heard_at.clear()
        delivered: list[str] = []
        a.set_listener(lambda kind, payload: delivered.append(kind))
        a.note_sink = broken  # a sink that fails costs the commit's callers nothing
        lease = await a.transact(lambda tx: _grant(tx, "relayed/2"))
        assert lease is not None and delivered == ["audit"]
    finally:
        await raw.close()
        await a.close()


async def test_a_relaying_server_looks_up_what_it_missed_twice_and_closes_at_once(
    pg_backend: Backend,
) -> None:
    """When the relay that brought the writer's notes breaks, the store delivers what may
    have been missed at once and once more after a statement's time (a commit told over
    the relay just before the break may not have been visible at the first look); closing
    the store does not wait for the second."""
    a = await _open(pg_backend)
    resyncs: list[dict[str, Any]] = []
    more = asyncio.Event()

    def note(kind: str, payload: dict[str, Any]) -> None:
        if kind == "resync":
            resyncs.append(payload)
            more.set()

    async def until(n: int) -> None:
        async with asyncio.timeout(5):
            while len(resyncs) < n:
                more.clear()
                await more.wait()

    a.set_listener(note)
    try:
        await a.transact(lambda tx: _grant(tx, "before/0"))
        heard = a._heard_seq
        # a row number that is no number (a boolean, text, a float) moves no mark
        a.take_notes([("audit", {"seq": True}), ("audit", {"seq": "9"}), ("audit", {"seq": 9.0})])
        assert (a._relay_seq, a._heard_seq) == (0, heard)
        a.take_notes([("audit", {"seq": 1})])
        assert a._relay_seq == 1
        a.statement_timeout = 0.05
        a.notes_lost()
        assert a._relay_seq == 0
        await until(2)
        await asyncio.sleep(0)  # the look-up's end, queued behind this task's wake-up
        assert not a._replays  # two look-ups, and no wait left after the second
        a.statement_timeout = 60.0
        a.notes_lost()
        await until(3)
    finally:
        async with asyncio.timeout(5):  # the second look-up's wait is cancelled
            await a.close()


async def test_a_forged_notification_never_decides_for_a_waiter(pg_backend: Backend) -> None:
    """Anyone who may connect to the database may NOTIFY on writ's channel. A forged grant
    for a queued request (a lease it was never given), a forged refusal, and malformed
    payloads (not JSON, nested thousands deep, a list for a note, a seq that is text or
    invented) decide nothing: the request stays queued, the listener stays up, and the
    caller gets the lease the database holds once the holder releases it through another
    server."""
    one = Engine(pg_backend.open_store(), None)
    await one.start(background=False)
    two = Engine(pg_backend.open_store(), None)
    await two.start(background=False)
    store = one.store
    assert isinstance(store, PostgresStore)
    try:
        a, b = await add(one, "agent-a"), await add(one, "agent-b")
        held = await grant(one, a, "prod/db", ttl_s=60)
        task = waiting(one, b, "prod/db")
        await queued(one, "agent-b")
        ((wid,),) = await pg_backend.sql("SELECT waiter_id FROM waiters")
        forged = {"lease_id": "ls_forged", "resource": "prod/db", "holder": "agent-b"}
        forged |= {"state": "held", "fencing_token": 10**9}
        evil = [
            {
                "i": "x",
                "n": [["granted", {"waiter_id": wid, "lease_id": "ls_forged", "lease": forged}]],
            },
            {"i": "x", "n": [["granted", {"waiter_id": wid, "error": {"code": "forbidden"}}]]},
            "not json",
            "[" * 3900 + "]" * 3900,
            {"i": "x", "n": [["granted", ["not", "a", "note"]]]},
            {"i": "x", "n": [["granted", {}]]},
            {"i": "x", "n": [["audit", {"seq": "x"}], ["audit", {"seq": 10**18}]]},  # last
        ]
        woken = one.audit_changed  # set by the last one only, once all before it were read
        for text in evil:
            payload = text if isinstance(text, str) else json.dumps(text)
            await pg_backend.sql("SELECT pg_notify(%s, %s)", store.channel, payload)
        await asyncio.wait_for(woken.wait(), 10)  # the listener lived through them all
        assert not task.done()  # neither the forged grant nor the forged refusal decided
        assert one._audit_seq < 10**18  # an invented seq does not silence later rows
        assert [r[0] for r in await pg_backend.sql("SELECT waiter_id FROM waiters")] == [wid]

        await two.release(a, held["lease_id"])  # the real grant, decided on the other server
        lease = await asyncio.wait_for(task, 10)
        ((token,),) = await pg_backend.sql(
            "SELECT fencing_token FROM leases WHERE request_id = %s AND state = 'held'", wid
        )
        assert lease["lease_id"] != "ls_forged" and lease["fencing_token"] == token
    finally:
        await two.stop()
        await one.stop()


# ---------------------------------------------------------------------- upgrade in place
_DOWNGRADE = """
DELETE FROM writ_migrations WHERE name = %s;
DELETE FROM writ_migrations WHERE name = %s;
DROP FUNCTION writ_batch(bigint, bigint, jsonb, jsonb, jsonb, jsonb, jsonb, bigint, text, float8, bigint, int, int, bigint, bigint, bigint, bigint, text, jsonb);
DROP FUNCTION writ_rows(jsonb, jsonb, jsonb, jsonb, jsonb);
DELETE FROM writ_migrations WHERE name = %s;
DROP TRIGGER audit_head_versioned ON audit_head;
DROP FUNCTION writ_head_versioned();
DROP FUNCTION writ_lock_head(bigint, bigint);
ALTER TABLE audit_head DROP COLUMN version, DROP COLUMN wv, DROP COLUMN ov, DROP COLUMN epoch;
DROP INDEX leases_wseq;
ALTER TABLE leases DROP COLUMN wseq;
DELETE FROM writ_migrations WHERE name = %s;
"""
# found by name: other migrations may come before or after it
REPLICA_MIGRATION = next(name for name, _ in MIGRATIONS if name.startswith("live replica"))
BATCH_MIGRATION = next(name for name, _ in MIGRATIONS if name.startswith("a batch's rows in"))
BY_KEY_MIGRATION = next(name for name, _ in MIGRATIONS if name.startswith("a batch's rows found"))
LAST_CALL_MIGRATION = next(name for name, _ in MIGRATIONS if name.startswith("a batch's last"))


async def test_upgrade_in_place_keeps_the_old_rows_verifying_and_in_force(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """A store written by the first PostgreSQL design (schema 1: no versions, no wseq)
    is upgraded by ``writ migrate --upgrade``: its chain verifies after the upgrade, its
    held lease still holds (a conflicting request is refused naming it), its queue and
    tokens carry on, and new rows extend the same chain. A server of the older writ is
    refused from then on."""
    store = await _open(pg_backend)
    engine = Engine(store)
    await engine.start(background=False)
    try:
        agent = await engine.add_principal(None, "old-agent", "agent")
        other = await engine.add_principal(None, "new-agent", "agent")
        p_old = await engine.principal("old-agent")
        p_new = await engine.principal("new-agent")
        assert p_old and p_new and agent and other
        held = await engine.acquire(p_old, resource="prod/db", intent="before", ttl_s=600)
        done = await engine.acquire(p_old, resource="prod/web", intent="before", ttl_s=600)
        await engine.release(p_old, done["lease_id"])
    finally:
        await engine.stop()
    names = iter([LAST_CALL_MIGRATION, BY_KEY_MIGRATION, BATCH_MIGRATION, REPLICA_MIGRATION])
    for stmt in _DOWNGRADE.strip().split(";\n"):  # the rows stay as the first design wrote them
        stmt = stmt.strip().rstrip(";")
        if stmt:
            await pg_backend.sql(stmt, *([next(names)] if "%s" in stmt else []))
    rows_before = (await pg_backend.sql("SELECT count(*) FROM audit"))[0][0]

    out = await upgrade(pg_backend.url)
    assert out["ok"] and out["applied"] == [
        REPLICA_MIGRATION,
        BATCH_MIGRATION,
        BY_KEY_MIGRATION,
        LAST_CALL_MIGRATION,
    ]
    assert out["verify"]["rows"] == rows_before

    store = await _open(pg_backend)
    engine = Engine(store)
    await engine.start(background=False)
    try:
        with pytest.raises(Held) as refused:
            await engine.acquire(p_new, resource="prod", intent="after", ttl_s=30)
        assert refused.value.to_body()["error"]["holder"]["holder"] == "old-agent"
        await engine.release(p_old, held["lease_id"])
        after = await engine.acquire(p_new, resource="prod", intent="after", ttl_s=30)
        assert after["fencing_token"] > done["fencing_token"] > held["fencing_token"]
        assert (await _chain(store)).ok
    finally:
        await engine.stop()
    # a server of the older writ moves the head without a version: refused
    with pytest.raises(Exception, match="older than the store"):
        await pg_backend.sql("UPDATE audit_head SET seq = seq")
    # and upgrading again is a no-op that still verifies
    again = await upgrade(pg_backend.url)
    assert again["ok"] and again["applied"] == []


def test_cli_upgrade_reports_and_verifies(pg_backend: Backend) -> None:
    nothing = CliRunner().invoke(main, ["migrate", "--upgrade", pg_backend.url])
    assert nothing.exit_code != 0 and "not a writ store" in nothing.output, nothing.output
    asyncio.run(_close(pg_backend))  # a store of today's schema: nothing to upgrade
    result = CliRunner().invoke(main, ["migrate", "--upgrade", pg_backend.url])
    assert result.exit_code == 0, result.output
    assert "upgraded" in result.output and "audit head seq 0" in result.output
    bad = CliRunner().invoke(main, ["migrate", "--upgrade", pg_backend.url, "--to", "x"])
    assert bad.exit_code != 0 and "takes no --from/--to" in bad.output


# --------------------------------------------------------------------- serve --workers N
def test_workers_need_a_postgresql_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--store", f"sqlite:///{tmp_path / 'w.db'}", "--workers", "2"]
    )
    assert result.exit_code != 0
    assert "--workers 2 needs a PostgreSQL store" in result.output


def test_workers_refuse_an_extension_that_lives_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--checkpoint-every`` installs its checkpointer in this process only; fresh worker
    processes would run without it, so the combination is refused before serving."""
    import writ.api.app
    from writ.evidence.checkpoint import write_key

    monkeypatch.setattr(writ.api.app, "EXTENSIONS", [])
    key, _ = write_key(tmp_path / "writ.key")
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--store",
            "postgresql://nobody@127.0.0.1:1/none",
            "--workers",
            "2",
            "--checkpoint-every",
            "10",
            "--checkpoint-key",
            str(key),
        ],
    )
    assert result.exit_code != 0
    assert "--checkpoint-every" in result.output and "single-process" in result.output


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


async def test_workers_serve_one_port_from_several_processes(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """``writ serve --workers 3``: three processes accept on one port; a lease taken
    through one connection is held for every other (they agree through PostgreSQL); one
    worker is the writer and the other two relay their lease writes to it and hand it
    their connections; on SIGTERM each drains as a single ``writ serve`` does."""
    log_path = tmp_path / "serve.log"
    async with writ_workers(pg_backend.url, 3, log_path) as (base, proc):
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 3:
            assert time.monotonic() < deadline, _children(proc.pid)
            await asyncio.sleep(0.1)
        tokens = []
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=admin) as c:
            for name in ("w-a", "w-b"):
                r = await c.post("/v1/principals", json={"name": name, "kind": "agent"})
                assert r.status_code == 201, r.text
                tokens.append(r.json()["token"])
        # fresh connections land on whichever worker accepts them
        statuses = []
        for i in range(12):
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                r = await c.post(
                    "/v1/leases",
                    json={"resource": f"prod/{i}", "intent": "w", "ttl_s": 60},
                    headers={"Authorization": f"Bearer {tokens[0]}"},
                )
                statuses.append(r.status_code)
                r2 = await c.post(
                    "/v1/leases",
                    json={"resource": "prod", "intent": "w", "ttl_s": 60},
                    headers={"Authorization": f"Bearer {tokens[1]}"},
                )
                assert r2.status_code == 409, r2.text  # every worker sees every lease
        assert statuses == [201] * 12
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=admin) as c:
            r = await c.get("/v1/audit/verify")
            assert r.status_code == 200 and r.json()["ok"], r.text
        # the workers elected one writer, in a directory of their own (writ.api.relay)
        text = log_path.read_text()
        assert text.count("this server is the writer") == 1, text[-3000:]
        assert text.count("relays lease writes to the writer") == 2, text[-3000:]
        assert text.count("hands its connections to the writer") == 2, text[-3000:]
        # each worker settled its heap once started (writ.api.lifecycle.settle_heap)
        while log_path.read_text().count("heap settled") < 3:
            assert time.monotonic() < deadline + 30, log_path.read_text()[-3000:]
            await asyncio.sleep(0.05)
        assert log_path.read_text().count("heap settled") == 3
        proc.terminate()  # each worker drains (writ.api.lifecycle.DrainingServer)
        await asyncio.wait_for(proc.wait(), 30)
        assert log_path.read_text().count("draining: waiting requests answer 503") == 3


async def test_a_notification_that_is_not_writs_is_dropped_whole(pg_backend: Backend) -> None:
    """Anyone who may connect may NOTIFY on the store's channel: what is not JSON, JSON
    nested past the parser's depth, the wrong shapes, are dropped with a warning —
    nothing delivered, nobody counted as heard, no hello owed. An id that is not text
    (a boolean, a number) is only a name: heard, answered once, delivered nothing as fact."""
    a = await _open(pg_backend)
    delivered: list[tuple[str, dict[str, Any]]] = []
    a.set_listener(lambda kind, payload: delivered.append((kind, payload)))
    try:
        heard = set(a._heard_at)
        a._greet = False
        for text in (
            "not json",
            "[" * 100_000 + "]" * 100_000,  # nested past the parser's depth
            json.dumps([1, 2]),
            json.dumps({"i": "x"}),
            json.dumps({"i": "x", "n": {"audit": {}}}),
            json.dumps({"i": "x", "n": [["audit", "seq"]]}),
            json.dumps({"i": "x", "n": [["audit"]]}),
            json.dumps({"i": "x", "n": [["audit", {"seq": 1}], 7]}),  # one bad: all dropped
        ):
            a._on_notify(text)
        assert delivered == [] and set(a._heard_at) == heard and not a._greet
        a._on_notify(json.dumps({"i": True, "n": [["audit", {"seq": 1}]]}))
        assert "True" in a._heard_at and a._greet
        assert delivered and all(p.get("unverified") for _, p in delivered)
    finally:
        await a.close()
