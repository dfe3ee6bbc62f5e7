"""PostgresStore: the pool, batching, LISTEN/NOTIFY, export and import (see :mod:`._migrations`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

from writ.core.errors import Conflict, Invalid, Unavailable, WritError
from writ.stores import SECRET_OPTIONS, redact
from writ.stores.base import Store, Tx
from writ.stores.postgres import _schema
from writ.stores.postgres._batch import _fail, _Item, _Live, _Retry, _Split, _undone
from writ.stores.postgres._gather import _Ahead, _Gather
from writ.stores.postgres._listen import _Listener, _payloads
from writ.stores.postgres._migrations import _Migrations
from writ.stores.postgres._reads import _Reads
from writ.stores.postgres._schema import (
    _CATCH_UP,
    _CATCH_UP_QUEUE,
    _LOCK_HEAD,
    _SCHEMA_NAME,
    _WRIT_BATCH,
    _WRIT_BATCH_TYPED,
)
from writ.stores.postgres._sql import T, _broken, _simple, _translate, log
from writ.stores.postgres._transfer import _Transfer
from writ.stores.postgres._tx import PgTx, _Batch
from writ.stores.postgres._writer import _Writer
from writ.stores.rows import (
    LEASE_COLS,
    WAITER_COLS,
    to_lease,
)


def _unescaped(password: str) -> str:
    """A URL's password as libpq reads it (percent escapes decoded), refused as libpq would
    refuse it, without quoting it: a ``%`` that starts no escape, or an escaped NUL."""
    if re.search(r"%(?![0-9A-Fa-f]{2})|%00", password):
        raise Invalid(
            "the store URL's password has a % that starts no escape (%XX), or %00: "
            "write a % in the password as %25"
        )
    return unquote(password)


class PostgresStore(_Reads, _Listener, _Transfer, _Gather, _Migrations, Store):
    """``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME[?schema=NAME&pool_max=10...]``.

    Caveats: needs PostgreSQL 12 or newer; acknowledged grants survive a failover only
    with synchronous replication; the audit triggers stop accidents and replication tools,
    not the owner of the tables (run ``writ serve`` as a role that does not own them to
    make the ledger append-only for the server itself; see docs/postgres.md).
    """

    max_attempts = 5
    announces_principal_changes = True  # a trigger NOTIFYs on any change (migration 2)
    batch_max = 256  # write transactions per group commit at most
    optimistic_for = 1.0  # seconds between lessons of the database clock (see _Live)
    solo_after = 0.5  # seconds without another server's write before batches go optimistic
    gather_s = 0.002  # how long a batch of queue joins may wait for company (see _company)

    def __init__(self, url: str, clock: Any = None, read_only: bool = False, **_: Any) -> None:
        super().__init__()
        if clock is not None:
            raise Invalid(
                "the PostgreSQL store takes its time from the database clock; "
                "a clock= option is only for the SQLite store"
            )
        self.url = redact(url)  # what messages and reports may show (no password)
        self.read_only = read_only  # opened without migrating (see _Migrations)
        parsed = urlparse(url)
        if not parsed.path.strip("/"):
            raise Invalid(
                f"store URL {self.url!r} names no database (postgresql://user@host:5432/db)"
            )
        query = dict(parse_qsl(parsed.query, keep_blank_values=True))
        # the password goes to libpq on its own, never inside the URL it parses: libpq
        # quotes a part of the URL it cannot read ("invalid percent-encoded token:
        # <the password>"), and that text reached the CLI, writ serve --check and the log
        secrets = {name: query.pop(name) for name in SECRET_OPTIONS if name in query}
        userinfo, at, host = parsed.netloc.rpartition("@")
        if at and ":" in userinfo:
            user, raw = userinfo.split(":", 1)
            secrets["password"] = _unescaped(raw)
            parsed = parsed._replace(netloc=f"{user}@{host}" if user else host)

        def take(name: str, default: float, lo: float, hi: float) -> float:
            raw = query.pop(name, None)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise Invalid(f"store URL option {name}={raw!r} is not a number") from None
            if not lo <= value <= hi:
                raise Invalid(f"store URL option {name}={raw} must be between {lo:g} and {hi:g}")
            return value

        self.schema = query.pop("schema", None) or None
        if self.schema is not None and not _SCHEMA_NAME.fullmatch(self.schema):
            raise Invalid(f"store URL option schema={self.schema!r}: use 1-58 of a-z 0-9 _")
        self.pool_min = int(take("pool_min", 2, 0, 1000))
        self.pool_max = int(take("pool_max", 10, 1, 1000))
        self.pool_min = min(self.pool_min, self.pool_max)
        self.pool_timeout = take("pool_timeout", 5.0, 0.1, 600)
        self.statement_timeout = take("statement_timeout", 10.0, 0.1, 3600)
        self.idle_timeout = take("idle_timeout", 10.0, 0.1, 3600)
        user_options = query.pop("options", "")  # kept, with ours after it
        options = [user_options] if user_options else []
        if self.schema:
            options.append(f"-c search_path={self.schema}")
        options += [
            # a batch's statement alone is its own transaction: READ COMMITTED, like the
            # transactions that say so (a database default of SERIALIZABLE would turn
            # every head-lock wait into a serialization failure)
            "-c default_transaction_isolation=read\\ committed",
            f"-c statement_timeout={int(self.statement_timeout * 1000)}",
            f"-c lock_timeout={int(self.statement_timeout * 1000)}",
            f"-c idle_in_transaction_session_timeout={int(self.idle_timeout * 1000)}",
        ]
        query.setdefault("application_name", "writ")
        query.setdefault("connect_timeout", "5")
        # a server on a dead network path notices within ~15 s
        query.setdefault("keepalives", "1")
        query.setdefault("keepalives_idle", "5")
        query.setdefault("keepalives_interval", "2")
        query.setdefault("keepalives_count", "3")
        self._conninfo = urlunparse(parsed._replace(query=urlencode(query)))
        # search_path and timeouts travel in the startup packet (libpq "options"), so every
        # connection — pooled or the listener, new or replaced after a restart — has them
        # before its first statement, at no extra round trip.
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "options": " ".join(options),
            **secrets,
        }
        self.channel = f"writ_{self.schema}" if self.schema else "writ"
        self.instance = uuid.uuid4().hex[:12]
        self._pool: AsyncConnectionPool[Any] | None = None
        self._writer = _Writer()  # the batches' connection, kept between them
        self._old_pools: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._queue: list[_Item] = []
        self._drainer: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None  # set when a transaction joins the queue
        self._carry: _Ahead | None = None  # the next batch, decided ahead (see _Gather)
        self._busy = False  # several transactions arrived during the last commit
        self._live: _Live | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._heard_seq = 0
        self._heard_at: dict[str, float] = {}
        self._replays: set[asyncio.Task[None]] = set()  # look-ups after a relay link ended
        self._checking = False
        self._closed = True
        self.transactions = 0  # committed write transactions (for tests and benchmarks)
        self.batches = 0  # committed batches (group commits)
        self.optimistic_batches = 0  # of those, decided before taking the lock
        self.alone_batches = 0  # of those, sent as one prepared statement (see _commit)
        self.ahead_batches = 0  # decided while the one before committed (see _Gather)
        self.loads = 0  # full loads of the live replica
        # where committed batches spent their time (see Store.phase_s), adding up to what
        # commit_observers see: "lock", from the attempt's start (the connection) until it
        # held the head lock, caught up — an optimistic batch waits for the lock inside its
        # commit instead; "decide", its transactions, the company it took in and any wait
        # for that company (a batch decided ahead has done this during the commit before
        # it, which counts it); "commit", its last round trip, with what was decided ahead
        # meanwhile and, after a lost connection, finding out whether it committed. A failed
        # attempt (refused, retried, split) counts nowhere
        self.phase_s.update(lock=0.0, decide=0.0, commit=0.0)
        self.applied: list[str] = []  # migrations this store applied when it opened
        self.retries = 0
        self.single_misses = 0  # single reads that asked for more (see read)
        self._time_first: set[Any] = set()  # reads that ask the time first (see read)

    # -- lifecycle -----------------------------------------------------------------------
    def _new_pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            self._conninfo,
            kwargs=self._kwargs,
            min_size=self.pool_min,
            max_size=self.pool_max,
            open=False,
            timeout=self.pool_timeout,
            # keep trying for a day: a PostgreSQL outage must not shrink the pool for good
            reconnect_timeout=86_400,
            max_idle=300,
            name=f"writ-{self.instance}",
        )

    async def open(self) -> None:
        if not self._closed:
            return
        with _translate("open the store"):
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
            try:
                await self._schema_at_open(conn)
            finally:
                await conn.close()
            pool = self._new_pool()
            await pool.open(wait=True, timeout=self.pool_timeout + 5)
        self._pool = pool
        self._closed = False
        self._listener_task = asyncio.get_running_loop().create_task(self._listen())
        try:
            await asyncio.wait_for(self._listening.wait(), self.pool_timeout + 5)
        except TimeoutError:
            if self.fingerprint is not None:  # a server: it cannot tell its blast radius
                await self.close()
                raise Unavailable(
                    "the PostgreSQL LISTEN connection did not come up: this server can tell "
                    "no other its blast radius, nor hear them"
                ) from None
            log.warning("PostgreSQL store: the LISTEN connection is not up yet; retrying")
        self._opened_listening = True  # from now on, a blast radius found differing is logged
        if self.differs is not None:  # another server runs another blast radius
            await self.close()
            raise Conflict(self.differs)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for replay in list(self._replays):
            replay.cancel()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=self.statement_timeout)
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener_task
            self._listener_task = None
        for t in list(self._old_pools):
            with contextlib.suppress(Exception):
                await t
        await self._writer.close()
        if self._pool is not None:
            await self._pool.close(timeout=2)
            self._pool = None

    def _pool_or_fail(self) -> AsyncConnectionPool[Any]:
        if self._closed or self._pool is None:
            raise Unavailable("store is closed")
        return self._pool

    # -- writes: group commit --------------------------------------------------------------
    def _keeps(self, pool: AsyncConnectionPool[Any]) -> bool:
        """Whether the batches keep their connection from ``pool`` (see _Writer)."""
        return not self._closed and self.pool_max > 1 and pool is self._pool

    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        # Every write transaction joins the next batch (see _Batch); the batch runs in the
        # drain task, so a caller that goes away (a client that disconnects) neither leaves
        # a connection mid-statement nor cuts a commit in half: the outcome is the same as
        # if it had waited.
        self._pool_or_fail()
        if self.differs is not None:  # found after start: it writes nothing while it stands
            raise Unavailable(self.differs)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, fut))
        if self._arrived is not None:
            self._arrived.set()
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
            self._inflight.add(self._drainer)
            self._drainer.add_done_callback(self._forget)
        return await fut

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left does not leave a warning behind

    async def _shielded(self, coro: Awaitable[T]) -> T:
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    async def _drain(self) -> None:
        try:
            while self._queue or self._carry:
                carry, self._carry = self._carry, None
                if carry is not None:
                    items = carry[2]
                else:
                    if self._busy or len(self._queue) > 1:
                        # let the requests arriving in this tick join; a lone request after
                        # a quiet commit (one client) goes at once, a tick sooner
                        await asyncio.sleep(0)
                    items = [(fn, f) for fn, f in self._queue[: self.batch_max] if not f.done()]
                    del self._queue[: self.batch_max]
                if items:
                    try:
                        await self._run(items, carry)
                    except BaseException as exc:  # never leave a caller waiting
                        _fail(items, exc)
                        if not isinstance(exc, Exception):
                            raise
        finally:
            self._drainer = None

    async def _run(self, items: list[_Item], carry: _Ahead | None = None) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    await self._attempt(items, attempt, carry if attempt == 1 else None)
                except BaseException:
                    if attempt == 1 and carry is not None and carry[0].ahead:
                        self._abandon(carry, requeue=False)  # failed before taking it over
                    raise
                return
            except _Retry as r:
                self.retries += 1
                if attempt >= self.max_attempts:
                    try:
                        with _translate("commit"):
                            raise r.cause from None
                    except Unavailable as exc:
                        _fail(items, exc)
                        return
                if r.broken:
                    await self._check_pool()
                await asyncio.sleep(random.uniform(0.001, 0.005) * attempt)
            except _Split as s:
                # a statement failed inside a batch of several: each runs alone, so that
                # only the transaction that caused it fails
                if len(items) == 1:
                    try:
                        with _translate("write"):
                            raise s.cause from None
                    except Unavailable as exc:
                        _fail(items, exc)
                        return
                for item in items:
                    if not item[1].done():
                        await self._run([item])
                        if self._carry is not None:  # decided on a replica the next item
                            self._abandon(self._carry)  # must not see: after the split
                            self._carry = None
                return
            except Unavailable as exc:
                _fail(items, exc)
                return

    async def _begin(self, conn: psycopg.AsyncConnection[Any]) -> _Batch:
        """Take the serialization point, read the clock and the counters, and bring the
        live replica up to date with what other servers committed: one round trip when
        nobody else wrote."""
        live = self._live
        # one round trip (see _simple); a lock timeout skips the statements after it
        items: list[tuple[str, Sequence[Any]]] = [
            ("BEGIN ISOLATION LEVEL READ COMMITTED", ()),
            (_LOCK_HEAD, ()),
        ]
        if live is not None:
            items += [
                # by the leases_wseq index whatever the statistics say: to the planner, an
                # unanalyzed table's "wseq > n" is a third of it, and it would scan the
                # whole of a table that only grows, under the lock (9 ms at 100,000 rows).
                # Only around that statement: a scan with no index to use instead costs
                # 10^10 when disabled, which buys a JIT compilation (75 ms measured).
                ("SET LOCAL enable_seqscan = off", ()),
                (_CATCH_UP, (live.version,)),
                ("SET LOCAL enable_seqscan = on", ()),
                (_CATCH_UP_QUEUE, (live.wv,)),
            ]
        cur = await _simple(conn, items)
        cur.nextset()  # past BEGIN
        head = await cur.fetchone()
        assert head is not None, "audit_head has no row"
        seq, hash_, now, version, wv, ov, epoch, token, wseq = head
        foreign = live is None or epoch != live.epoch or version != live.version
        if live is None or epoch != live.epoch:
            live = await self._load(conn, version, wv, ov, epoch)
        elif version != live.version:
            cur.nextset()  # past SET
            cur.nextset()
            for r in await cur.fetchall():
                live.put(to_lease(r[:-1]), r[-1])
            if wv != live.wv:
                cur.nextset()  # past SET
                cur.nextset()
                live.set_queue(await cur.fetchall())
            if ov != live.ov:
                live.forget()
            live.version, live.wv, live.ov = version, wv, ov
        if foreign:
            live.foreign_at = time.monotonic()
        live.offset, live.learned = float(now) - time.time(), time.monotonic()
        self._live = live
        return _Batch(conn, live, (int(seq), hash_), float(now), int(token), int(wseq))

    def _begin_optimistic(self, conn: psycopg.AsyncConnection[Any], live: _Live) -> _Batch:
        """A batch decided on the replica as this process left it (see :class:`_Live`)."""
        now = max(time.time() + live.offset, live.ts)
        return _Batch(conn, live, live.head, now, live.token, live.wseq, optimistic=True)

    def _optimistic(self, live: _Live | None, attempt: int) -> bool:
        return (
            live is not None
            and time.monotonic() - live.foreign_at > self.solo_after
            and attempt == 1
            and time.monotonic() - live.learned < self.optimistic_for
        )

    async def _load(
        self, conn: psycopg.AsyncConnection[Any], version: int, wv: int, ov: int, epoch: int
    ) -> _Live:
        live = _Live(version, wv, ov, epoch)
        cur = await conn.execute(
            f"SELECT {LEASE_COLS}, request_id FROM leases WHERE state = 'held'"
            " ORDER BY fencing_token"
        )
        for r in await cur.fetchall():
            live.put(to_lease(r[:-1]), r[-1])
        cur = await conn.execute(f"SELECT {WAITER_COLS} FROM waiters ORDER BY seq")
        live.set_queue(await cur.fetchall())
        self.loads += 1
        return live

    async def _attempt(
        self, items: list[_Item], attempt: int = 1, carry: _Ahead | None = None
    ) -> None:
        began = held = sending = time.perf_counter()
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None, PgTx]] = []
        with _translate("write"):
            async with self._writer.use(self._pool_or_fail(), self._keeps) as conn:
                b: _Batch | None = None
                try:
                    live = self._live
                    if carry is not None:  # decided ahead while the batch before committed
                        b, done[:] = carry[0], carry[1]
                        b.conn, b.ahead, b.since = conn, False, time.perf_counter()
                    elif live is not None and self._optimistic(live, attempt):
                        b = self._begin_optimistic(conn, live)
                    else:
                        b = await self._begin(conn)
                    held = time.perf_counter()
                    # company joins ``items`` itself, so a retry, a split or a failure
                    # covers those transactions too
                    i = len(done)
                    while True:
                        while i < len(items):
                            done.append(await self._decide(b, *items[i]))
                            i += 1
                        more = await self._company(b, done, i)
                        if not more:
                            break
                        items += more
                    sending = time.perf_counter()
                    notes = await self._commit(b, [tx for _, _, e, tx in done if e is None])
                except BaseException as exc:
                    if isinstance(exc, pgerrors.SerializationFailure) and b and b.optimistic:
                        # someone else wrote since our last batch: the replica is behind,
                        # not wrong; catch it up under the lock and decide again
                        await self._rollback(conn)
                        self._live = _undone(b)
                        raise _Retry(exc, False) from exc
                    self._live = None  # the replica may hold what never committed
                    if b is not None and b.committing and _broken(conn):
                        # the connection broke in the COMMIT's round trip: find out
                        if not await self._committed_anyway(b, exc):
                            raise _Retry(exc, True) from exc
                        notes = b.notes
                    else:
                        await self._rollback(conn)
                        if isinstance(
                            exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected
                        ):
                            raise _Retry(exc, False) from exc
                        if isinstance(exc, psycopg.OperationalError) and _broken(conn):
                            raise _Retry(exc, True) from exc
                        if isinstance(exc, psycopg.Error):
                            raise _Split(exc) from exc
                        raise
        ended = time.perf_counter()
        phase = self.phase_s
        phase["lock"] += held - began
        phase["decide"] += sending - held
        phase["commit"] += ended - sending
        for observe in self.commit_observers:
            observe(ended - began)
        self._settle(b, done, notes)

    async def _commit(self, b: _Batch, ok: list[PgTx]) -> list[tuple[str, dict[str, Any]]]:
        """The batch's last round trip: its buffered writes, the new chain head and
        counters, the notifications and COMMIT, in one query."""
        notes = [n for tx in ok for n in tx.notes]
        if b.head != b.head0:
            notes.append(("audit", {"seq": b.head[0]}))
        b.notes = notes
        # NOTIFY only where another process may hear it (see _listen.HELLO_EVERY): while
        # this server is alone, the rows up to its head are its own and count as heard once
        # committed
        b.notify = bool(notes) and (
            self._heard_others() or time.monotonic() - b.live.foreign_at <= self.solo_after
        )
        live = b.live
        lock: tuple[int | None, int | None] = (None, None)
        # an optimistic batch that sent nothing yet and wrote only the hot tables is one
        # statement, its own transaction: prepared once per connection (extended protocol)
        alone = b.lock_unsent and len(b.pending) == 2
        if b.lock_unsent:  # pending starts with BEGIN and the lock: writ_batch takes it
            lock = (live.version, live.epoch)
            del b.pending[1]
        head = (
            (b.head[0], b.head[1], b.last, b.version, int(b.wrote_waiters), int(b.wrote_other))
            if b.wrote
            else (None,) * 6
        )
        args = (
            *lock,
            *b.m.rows(),
            *head,
            b.token,
            b.token - b.token0,
            b.wseq,
            b.wseq - b.wseq0,
            self.channel,
            json.dumps(_payloads(self.instance, notes)) if b.notify else None,
        )
        b.committing = True
        if alone:
            b.pending.clear()
            send = b.alone(self._writer, _WRIT_BATCH_TYPED, args)
            # several arrive while a commit is in the air: decide them, while this server
            # is still alone and its lesson of the database clock fresh (as _optimistic)
            if self._busy and self._optimistic(live, 1):
                self._carry = await self._send_ahead(b, send)
                arrived = len(self._carry[2]) if self._carry is not None else 0
            else:
                await send
                arrived = 0
            self._busy = arrived + len(self._queue) > 1
            self.alone_batches += 1
        else:
            b.pending.append((_WRIT_BATCH, args))
            b.pending.append(("COMMIT", ()))
            await b.send(None, None, ())
        if notes and not b.notify:
            self._heard_seq = max(self._heard_seq, b.head[0])
        if b.wrote:
            live.version = b.version
            live.wv += int(b.wrote_waiters)
            live.ov += int(b.wrote_other)
        live.head, live.ts, live.token, live.wseq = b.head, b.last, b.token, b.wseq
        self.optimistic_batches += int(b.optimistic)
        return notes

    def _settle(
        self,
        b: _Batch | None,
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None, PgTx]],
        notes: list[tuple[str, dict[str, Any]]],
    ) -> None:
        self.batches += 1
        self.transactions += sum(1 for _, _, e, _ in done if e is None)
        for fut, result, exc, _ in done:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        if notes and b is not None and not b.notify and self.note_sink is not None:
            try:  # the servers relaying to this one, told over the relay
                self.note_sink(notes)
            except Exception:  # never the commit's callers: they lose a note at most
                log.exception("the notes of a commit could not be relayed")
        self._deliver(notes)
        for _, _, exc, tx in done:
            if exc is None:
                tx.committed()

    async def _rollback(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if _broken(conn) or conn.info.transaction_status == pq.TransactionStatus.IDLE:
            return  # nothing to roll back (a statement alone ended its own transaction)
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")

    async def _committed_anyway(self, b: _Batch, exc: BaseException) -> bool:
        """The connection broke during COMMIT: find out whether it committed.

        Taking the audit_head lock waits out the orphaned transaction (PostgreSQL ends it,
        one way or the other, when it notices the connection is gone); after that, the
        batch committed exactly when its last audit row is in the ledger. Without an audit
        row, a batch that wrote nothing may be treated as done; one that wrote cannot be
        told apart, and is reported as unavailable.
        """
        if b.head == b.head0:
            if not b.wrote:
                return True
            raise Unavailable(
                "the PostgreSQL connection was lost while committing; the outcome of this "
                "request is unknown, check before retrying"
            ) from exc
        seq, hash_ = b.head
        for attempt in range(1, self.max_attempts + 1):
            pool = self._pool_or_fail()
            try:
                with _translate("confirm a commit"):
                    async with pool.connection() as c2:
                        async with c2.transaction():
                            await c2.execute("SELECT seq FROM audit_head FOR UPDATE")
                            cur = await c2.execute(
                                "SELECT 1 FROM audit WHERE seq = %s AND hash = %s", (seq, hash_)
                            )
                            found = await cur.fetchone() is not None
                break
            except Unavailable as lost:
                # the other pooled connections may be dead too (a restart kills them all)
                if attempt == self.max_attempts:
                    raise Unavailable(
                        "the PostgreSQL connection was lost while committing and the store "
                        "cannot be reached to confirm it: the outcome of this request is "
                        "unknown, check before retrying"
                    ) from lost
                await self._check_pool()
                await asyncio.sleep(random.uniform(0.001, 0.005) * attempt)
        log.warning(
            "PostgreSQL connection lost during COMMIT; the batch %s",
            "had committed" if found else "had not committed, running it again",
        )
        return found

    async def _check_pool(self) -> None:
        """After a broken connection, test the idle ones at once instead of failing on
        each in turn (a PostgreSQL restart breaks them all)."""
        if self._checking or self._pool is None:
            return
        self._checking = True
        try:
            with contextlib.suppress(Exception):
                await self._pool.check()
        finally:
            self._checking = False

    # -- reads ---------------------------------------------------------------------------
    async def ready(self) -> str | None:
        async def version(tx: Tx) -> int:
            row = await tx._one(  # type: ignore[attr-defined]
                "SELECT coalesce(max(version), 0) FROM writ_migrations"
            )
            return int(row[0])

        try:
            have = await self.read(version)
        except WritError as exc:
            return exc.message
        if have != len(_schema.MIGRATIONS):
            return f"the schema is at migration {have}; this writ expects {len(_schema.MIGRATIONS)}"
        if not self._listening.is_set():
            return "the PostgreSQL LISTEN connection is down (reconnecting): waits would not hear other servers"
        return self.differs
