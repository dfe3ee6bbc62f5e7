"""The server store: ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME[?OPTIONS]``.

Several ``writ serve`` processes may share one database; PostgreSQL is the only thing they
agree through. Options in the query string (every other one goes to libpq, e.g. ``sslmode``):

=======================  ==========================================================
``schema=NAME``          keep writ's tables in this schema (created if missing)
``pool_min=2``           connections kept open per process
``pool_max=10``          connections at most per process (plus one for LISTEN)
``pool_timeout=5``       seconds a request waits for a connection before 503
``statement_timeout=10`` seconds one statement (or one lock wait) may take
``idle_timeout=10``      seconds a transaction may sit idle before PostgreSQL ends it
=======================  ==========================================================

How the contract is kept (the reasoning lives in the comments below and in docs/postgres.md):

* **One serialization point, held briefly.** Every write is decided while holding the row
  lock of ``audit_head``, kept until COMMIT, so writes are serial across every process, in
  lock order, which is commit order. The write transactions that arrive together in one
  process share one PostgreSQL transaction (:class:`_Batch`: one lock, one fsync), decide on
  an in-memory replica of the held leases and the queue (:class:`_Live`) that is caught up
  under the lock first, and send their writes with COMMIT in one pipeline. A grant decided on
  "nothing conflicting is held or queued" therefore cannot race another grant, even when no
  row yet exists to lock, and the FIFO queue is one queue.
* **Time** is the database's ``clock_timestamp()`` read under that lock (for an optimistic
  batch: learned under it at most ``optimistic_for`` seconds before), never earlier than the
  newest audit row's: ledger timestamps never run backwards.
* **Store methods** read with ``self._one``/``self._all`` and write after ``self._w()``
  (directly on ``self.c`` or buffered with ``self._exec``); in a batch both go through the
  batch, behind the transaction's savepoint. Anything that changes the tables outside writ
  must move ``audit_head.epoch`` in the same transaction (servers then reload their replica).
* **Caveat:** PostgreSQL's commit acknowledges durability on the primary; with asynchronous
  replication a failover can lose acknowledged grants. Use synchronous replication.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from writ.core.errors import Conflict, Invalid, Unavailable, WritError
from writ.core.ledger import GENESIS, Record, Sealed, row_from, seal
from writ.core.models import Lease, Principal, Waiter
from writ.core.resources import related_clauses
from writ.stores.base import TABLES, Store, Tx, check_empty
from writ.stores.rows import (
    LEASE_COLS,
    PRINCIPAL_COLS,
    PRINCIPAL_INSERT_COLS,
    WAITER_COLS,
    export_row,
    export_sql,
    import_row,
    lease_values,
    principal_values,
    to_lease,
    to_object,
    to_principal,
    to_waiter,
    waiter_values,
)

T = TypeVar("T")
log = logging.getLogger("writ.stores.postgres")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,57}")
_MIGRATION_LOCK = 0x77726974_6D6967  # "writmig": one advisory key for every schema
_NOTIFY_LIMIT = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more

# Every resource column is COLLATE "C": the descendant ranges of related_clauses
# ('p/' <= r < 'p0') rely on plain byte order, which a locale's collation does not keep.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE audit_head (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            seq bigint NOT NULL, hash text NOT NULL, ts double precision NOT NULL);
        INSERT INTO audit_head (id, seq, hash, ts) VALUES (true, 0, 'GENESIS', 0);
        CREATE SEQUENCE fencing_token AS bigint MINVALUE 1 NO CYCLE CACHE 1;
        CREATE TABLE principals (
            name text PRIMARY KEY, kind text NOT NULL, vendor text, wake text,
            admin boolean NOT NULL DEFAULT false, token_hash text NOT NULL UNIQUE,
            created_at double precision NOT NULL);
        CREATE TABLE leases (
            lease_id text PRIMARY KEY, resource text COLLATE "C" NOT NULL,
            holder text NOT NULL, intent text NOT NULL, fencing_token bigint NOT NULL UNIQUE,
            acquired_at double precision NOT NULL, expires_at double precision NOT NULL,
            ttl_s double precision NOT NULL, touches text NOT NULL, state text NOT NULL,
            rollback text, ended_at double precision, request_id text);
        CREATE INDEX leases_held ON leases (resource) WHERE state = 'held';
        CREATE INDEX leases_due ON leases (expires_at) WHERE state = 'held';
        CREATE INDEX leases_by_resource ON leases (resource, acquired_at);
        CREATE INDEX leases_by_request ON leases (request_id) WHERE request_id IS NOT NULL;
        CREATE TABLE waiters (
            seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            waiter_id text NOT NULL UNIQUE, resource text COLLATE "C" NOT NULL,
            principal text NOT NULL, request text NOT NULL,
            enqueued_at double precision NOT NULL, deadline double precision NOT NULL);
        CREATE INDEX waiters_by_resource ON waiters (resource, seq);
        CREATE TABLE objects (
            kind text NOT NULL, id text NOT NULL, resource text COLLATE "C" NOT NULL,
            state text NOT NULL, data text NOT NULL, created_at double precision NOT NULL,
            expires_at double precision, PRIMARY KEY (kind, id));
        CREATE INDEX objects_by_resource ON objects (kind, resource);
        CREATE INDEX objects_due ON objects (kind, state, expires_at);
        CREATE TABLE audit (
            seq bigint PRIMARY KEY, ts double precision NOT NULL, event text NOT NULL,
            resource text COLLATE "C" NOT NULL, lock_key text, body text NOT NULL,
            hash text NOT NULL);
        CREATE INDEX audit_by_resource ON audit (resource, ts);
        CREATE INDEX audit_by_lock_key ON audit (lock_key) WHERE lock_key IS NOT NULL;
        CREATE INDEX audit_by_ts ON audit (ts);
        CREATE FUNCTION writ_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            RAISE EXCEPTION 'writ: audit rows are append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $f$;
        CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION writ_audit_append_only();
        CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
            FOR EACH STATEMENT EXECUTE FUNCTION writ_audit_append_only();
        -- ALWAYS: the triggers fire under session_replication_role = replica too
        ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_no_update;
        ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_no_truncate;
        """.replace("GENESIS", GENESIS),
    ),
    (
        "principal lifecycle and queue membership",
        # Any change to principals — by writ, or by hand in psql — is announced on the
        # store's channel (WRIT_CHANNEL, filled in per store), so every server sharing the
        # store drops the tokens it remembers: a rotated, disabled or deleted principal's
        # token is refused everywhere within a notification's delay.
        """
        ALTER TABLE principals ADD COLUMN queues text NOT NULL DEFAULT '[]';
        ALTER TABLE principals ADD COLUMN disabled_at double precision;
        ALTER TABLE principals ADD COLUMN disabled_reason text;
        ALTER TABLE principals ADD COLUMN token_expires_at double precision;
        CREATE FUNCTION writ_principals_changed() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            PERFORM pg_notify(TG_ARGV[0], json_build_object('i', 'db', 'n',
                json_build_array(json_build_array('principals', json_build_object('op', TG_OP))))::text);
            RETURN NULL;
        END $f$;
        CREATE TRIGGER principals_changed AFTER UPDATE OR DELETE OR TRUNCATE ON principals
            FOR EACH STATEMENT EXECUTE FUNCTION writ_principals_changed('WRIT_CHANNEL');
        ALTER TABLE principals ENABLE ALWAYS TRIGGER principals_changed;
        """,
    ),
    (
        "live replica: versions on the chain head, wseq on leases",
        # version: the last batch that wrote; wv / ov: moved by batches that wrote the
        # queue / anything besides leases and the queue; epoch: moved by anything that
        # changes the tables behind the servers' backs (an import), which makes every
        # server load its replica afresh. Existing rows keep wseq 0: a server loads all
        # held leases when it starts.
        """
        ALTER TABLE audit_head ADD COLUMN version bigint NOT NULL DEFAULT 0,
            ADD COLUMN wv bigint NOT NULL DEFAULT 0, ADD COLUMN ov bigint NOT NULL DEFAULT 0,
            ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
        ALTER TABLE leases ADD COLUMN wseq bigint NOT NULL DEFAULT 0;
        CREATE INDEX leases_wseq ON leases (wseq);
        -- an optimistic batch's first statement: the head lock, and an error (40001) when
        -- anyone wrote since the version the batch decided on
        CREATE FUNCTION writ_lock_head(expect_version bigint, expect_epoch bigint)
            RETURNS bigint LANGUAGE plpgsql AS $f$
        DECLARE v bigint; e bigint;
        BEGIN
            SELECT version, epoch INTO v, e FROM audit_head FOR UPDATE;
            IF v <> expect_version OR e <> expect_epoch THEN
                RAISE EXCEPTION 'writ: another server wrote since version %', expect_version
                    USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN v;
        END $f$;
        -- a server of an older writ (which moves the head without a version) would write
        -- behind the replicas' backs: its commits are refused until it is upgraded
        CREATE FUNCTION writ_head_versioned() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            IF NEW.version = OLD.version AND NEW.epoch = OLD.epoch THEN
                RAISE EXCEPTION 'writ: this server is older than the store (schema %): '
                    'upgrade it', (SELECT max(version) FROM writ_migrations)
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            RETURN NEW;
        END $f$;
        CREATE TRIGGER audit_head_versioned BEFORE UPDATE ON audit_head
            FOR EACH ROW EXECUTE FUNCTION writ_head_versioned();
        """,
    ),
]

_BEGIN_READ = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
    "SELECT greatest(extract(epoch FROM clock_timestamp())::float8,"
    " (SELECT ts FROM audit_head))"
)


# The batch's first statement (after BEGIN): take the serialization point, then read the
# clock and the counters. The clock is read in the outer query, after the CTE's row lock was
# granted, so a batch that queued for the lock does not carry a time from before its
# predecessor committed; greatest(..., ts) keeps ledger time monotonic even if the host
# clock steps back. The token and queue counters are the last values handed out.
_LOCK_HEAD = (
    "WITH h AS (SELECT seq, hash, ts, version, wv, ov, epoch FROM audit_head FOR UPDATE) "
    "SELECT h.seq, h.hash, greatest(extract(epoch FROM clock_timestamp())::float8, h.ts),"
    " h.version, h.wv, h.ov, h.epoch,"
    " coalesce(pg_sequence_last_value('fencing_token'), 0),"
    " coalesce(pg_sequence_last_value('waiters_seq_seq'), 0)"
    " FROM h"
)
# What other servers did to leases since this replica's version (the index leases_wseq).
_CATCH_UP = f"SELECT {LEASE_COLS}, request_id FROM leases WHERE wseq > %s"

_Item = tuple[Callable[["Tx"], Awaitable[Any]], "asyncio.Future[Any]"]


def _undone(b: _Batch) -> _Live | None:
    """The replica after an optimistic batch was refused: its transactions' changes are
    taken back (they never committed), newest first, so it is as the last commit left it;
    the next batch catches it up under the lock."""
    undo = list(b.undone)
    if b.cur is not None:
        undo += b.cur.undo
    for u in reversed(undo):
        u()
    b.live.forget()
    b.live.foreign_at = time.monotonic()
    return b.live


def _fail(items: Sequence[_Item], exc: BaseException) -> None:
    if not isinstance(exc, Unavailable):
        exc = Unavailable(f"store commit failed: {exc}; nothing of this request was kept")
    for _fn, fut in items:
        if not fut.done():
            fut.set_exception(exc)


def _related_sql(column: str, paths: Sequence[str]) -> tuple[str, list[Any]]:
    """``column`` equal to a path or an ancestor, or inside a descendant range: each arm an
    index range scan (the planner ORs them as a BitmapOr)."""
    exact, ranges = related_clauses(paths)
    parts = [f"{column} = ANY(%s)"]
    args: list[Any] = [exact]
    for lo, hi in ranges:
        parts.append(f"({column} >= %s AND {column} < %s)")
        args += [lo, hi]
    return "(" + " OR ".join(parts) + ")", args


def _prefix_sql(column: str, prefix: str) -> tuple[str, list[Any]]:
    return (
        f"({column} = %s OR ({column} >= %s AND {column} < %s))",
        [prefix, prefix + "/", prefix + "0"],
    )


class _Split(Exception):
    """A statement failed inside a batch; it was rolled back whole."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Retry(Exception):
    """The attempt certainly did not commit and may run again from the start."""

    def __init__(self, cause: BaseException, broken: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.broken = broken


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """The one boundary where driver errors become :class:`Unavailable`; anything else
    (the engine's own errors) passes through."""
    try:
        yield
    except (psycopg.Error, OSError) as exc:
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
            log.error("PostgreSQL store: %s failed", what, exc_info=exc)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tail = "" if what == "open the store" else "; nothing of this request was kept, retry"
        raise Unavailable(f"the PostgreSQL store could not {what}: {reason}{tail}") from exc


def _broken(conn: psycopg.AsyncConnection[Any]) -> bool:
    return bool(conn.closed or conn.broken)


class _Live:
    """This process's replica of the live state: the held leases and the wait queue.

    It is exact whenever the write lock is held: a batch first takes the ``audit_head``
    row lock, then applies what other servers committed since this replica's ``version``
    (leases by their ``wseq`` column; the whole queue when ``wv`` moved; everything when
    ``epoch`` moved), and only then decides. ``principals`` and ``present`` (which
    ``(kind, state)`` pairs have any policy object at all) are caches, forgotten whenever
    anyone writes outside leases and the queue (``ov`` moved) or a transaction fails.

    While this process is the only one writing (nobody else wrote for ``solo_after``
    seconds), a batch skips the catch-up round
    trip: it decides on the replica first and sends BEGIN, ``writ_lock_head(version,
    epoch)`` — the head lock, and an error unless nobody wrote since — its writes and COMMIT
    in one pipeline; if someone did write, the batch is rolled back and run again the
    ordinary way.
    """

    def __init__(self, version: int, wv: int, ov: int, epoch: int) -> None:
        self.version, self.wv, self.ov, self.epoch = version, wv, ov, epoch
        # What this process knows of the head as of its last batch, for the next optimistic
        # batch (see PostgresStore._attempt): valid while nobody else writes.
        self.head: tuple[int, str] = (0, GENESIS)
        self.ts = 0.0  # the head's time
        self.token = self.wseq = 0  # last fencing token and queue seq handed out
        self.offset = 0.0  # database clock minus time.time(), learned under the lock
        self.learned = 0.0  # time.monotonic() of the last lesson
        self.foreign_at = time.monotonic()  # when another server's write was last seen
        self.held: dict[str, Lease] = {}
        self.by_res: dict[str, dict[str, None]] = {}
        self.resources: list[str] = []  # sorted: the resources that have a held lease
        self.by_req: dict[str, str] = {}  # request_id -> lease_id
        self.req_of: dict[str, str] = {}  # lease_id -> request_id
        self.expiry: list[tuple[float, str]] = []  # a heap; entries go stale, checked on use
        self.waiters: dict[str, Waiter] = {}  # in seq order
        self.principals: dict[str, Principal | None] = {}
        self.present: dict[tuple[str, str], bool] = {}

    def forget(self) -> None:
        self.principals.clear()
        self.present.clear()

    def put(self, lease: Lease, request_id: str | None) -> None:
        old = self.held.get(lease.lease_id)
        self.drop(lease.lease_id)
        if lease.state != "held":
            return
        self.held[lease.lease_id] = lease
        ids = self.by_res.get(lease.resource)
        if ids is None:
            ids = self.by_res[lease.resource] = {}
            bisect.insort(self.resources, lease.resource)
        ids[lease.lease_id] = None
        if request_id:
            self.by_req[request_id] = lease.lease_id
            self.req_of[lease.lease_id] = request_id
        if old is None or old.expires_at != lease.expires_at:
            heapq.heappush(self.expiry, (lease.expires_at, lease.lease_id))

    def drop(self, lease_id: str) -> None:
        old = self.held.pop(lease_id, None)
        if old is None:
            return
        ids = self.by_res[old.resource]
        del ids[lease_id]
        if not ids:
            del self.by_res[old.resource]
            del self.resources[bisect.bisect_left(self.resources, old.resource)]
        rid = self.req_of.pop(lease_id, None)
        if rid is not None:
            self.by_req.pop(rid, None)

    def related(self, paths: Sequence[str]) -> list[Lease]:
        exact, ranges = related_clauses(paths)
        found: dict[str, None] = {}
        for r in exact:
            found.update(self.by_res.get(r, {}))
        res = self.resources
        for lo, hi in ranges:
            j = bisect.bisect_left(res, lo)
            while j < len(res) and res[j] < hi:
                found.update(self.by_res[res[j]])
                j += 1
        return sorted((self.held[i] for i in found), key=lambda l: l.fencing_token)

    def _live_top(self) -> tuple[float, str] | None:
        while self.expiry:
            exp, i = self.expiry[0]
            lease = self.held.get(i)
            if lease is not None and lease.expires_at == exp:
                return exp, i
            heapq.heappop(self.expiry)
        return None

    def next_expiry(self) -> float | None:
        top = self._live_top()
        return top[0] if top else None

    def due(self, now: float, limit: int) -> list[Lease]:
        out: dict[str, Lease] = {}
        taken: list[tuple[float, str]] = []
        while len(out) < limit:
            top = self._live_top()
            if top is None or top[0] > now:
                break
            taken.append(heapq.heappop(self.expiry))
            out[top[1]] = self.held[top[1]]
        for e in taken:
            heapq.heappush(self.expiry, e)
        return list(out.values())

    def waiters_related(
        self, paths: Sequence[str], before_seq: int | None, limit: int | None
    ) -> list[Waiter]:
        exact, ranges = related_clauses(paths)
        ex = set(exact)
        out: list[Waiter] = []
        for w in self.waiters.values():
            if before_seq is not None and w.seq >= before_seq:
                break
            r = w.resource
            if r in ex or any(lo <= r < hi for lo, hi in ranges):
                out.append(w)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def resort_waiters(self) -> None:
        self.waiters = dict(sorted(self.waiters.items(), key=lambda kv: kv[1].seq))


def _copy(obj: T) -> T:
    return dataclasses.replace(obj)  # type: ignore[type-var]


_Stmts = list[tuple[str, Sequence[Any]]]


def _chunks(rows: Sequence[T]) -> Iterator[Sequence[T]]:
    """``rows`` in power-of-two runs (13 → 8, 4, 1): few distinct statement texts, so
    psycopg's cache of parsed queries keeps hitting."""
    i = 0
    while i < len(rows):
        n = 1 << min((len(rows) - i).bit_length() - 1, 7)
        yield rows[i : i + n]
        i += n


def _multi(head: str, row: str, rows: Sequence[Sequence[Any]], tail: str = "") -> _Stmts:
    return [
        (head + ", ".join([row] * len(part)) + tail, [v for r in part for v in r])
        for part in _chunks(rows)
    ]


class _Merged:
    """Writes to the hot tables, buffered to go out as one multi-row statement per kind
    (the pipeline's cost is per statement). The kinds touch different tables or come in a
    fixed order (a lease is inserted before it is updated, a waiter before it leaves), so
    their order among other statements does not matter; a lease updated twice keeps its
    last values."""

    def __init__(self) -> None:
        self.lease_ins: list[tuple[Any, ...]] = []
        self.lease_upd: dict[str, tuple[Any, ...]] = {}
        self.waiter_ins: list[tuple[Any, ...]] = []
        self.waiter_del: list[str] = []
        self.audit: list[Sealed] = []

    def absorb(self, other: _Merged) -> None:
        self.lease_ins += other.lease_ins
        self.lease_upd.update(other.lease_upd)
        self.waiter_ins += other.waiter_ins
        self.waiter_del += other.waiter_del
        self.audit += other.audit

    def statements(self) -> _Stmts:
        out: _Stmts = []
        out += _multi(
            f"INSERT INTO leases ({LEASE_COLS}, request_id, wseq) VALUES ",
            "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            self.lease_ins,
        )
        out += _multi(
            "UPDATE leases AS l SET state = v.state, expires_at = v.expires_at,"
            " ttl_s = v.ttl_s, ended_at = v.ended_at, wseq = v.wseq FROM (VALUES ",
            "(%s::text, %s::text, %s::float8, %s::float8, %s::float8, %s::bigint)",
            list(self.lease_upd.values()),
            ") AS v(lease_id, state, expires_at, ttl_s, ended_at, wseq)"
            " WHERE l.lease_id = v.lease_id",
        )
        out += _multi(
            "INSERT INTO waiters (seq, waiter_id, resource, principal, request,"
            " enqueued_at, deadline) VALUES ",
            "(%s,%s,%s,%s,%s,%s,%s)",
            self.waiter_ins,
        )
        if self.waiter_del:
            out.append(("DELETE FROM waiters WHERE waiter_id = ANY(%s)", [self.waiter_del]))
        out += _multi(
            "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash) VALUES ",
            "(%s,%s,%s,%s,%s,%s,%s)",
            [
                (r.seq, r.timestamp, r.event, r.resource, r.lock_key, r.body, r.hash)
                for r in self.audit
            ],
        )
        self.lease_ins, self.lease_upd, self.waiter_ins = [], {}, []
        self.waiter_del, self.audit = [], []
        return out


_SAVEPOINT: tuple[str, Sequence[Any]] = ("SAVEPOINT writ_tx", ())
_RELEASE = ("RELEASE SAVEPOINT writ_tx", ())
_ROLLBACK_TO = ("ROLLBACK TO SAVEPOINT writ_tx", ())


class _Batch:
    """One group commit: one PostgreSQL transaction under the ``audit_head`` lock, shared
    by the write transactions that arrived together, each run in turn against the live
    replica. Their writes are buffered (``pending``) and go to the server in one pipeline
    with the COMMIT; a transaction that must read the database (a policy object, an ended
    lease, the ledger) sends what is buffered first, its own writes behind a savepoint."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        live: _Live,
        head: tuple[int, str],
        now: float,
        token: int,
        wseq: int,
        optimistic: bool = False,
    ) -> None:
        self.conn = conn
        self.optimistic = optimistic
        self.live = live
        self.head0 = self.head = head
        self.t0, self.p0, self.last = now, time.perf_counter(), now
        self.token0 = self.token = token
        self.wseq0 = self.wseq = wseq
        self.version = live.version + 1  # what this batch's writes are stamped with
        self.pending: list[tuple[str, Sequence[Any]]] = []
        self.m = _Merged()  # the ended transactions' rows, not yet in pending
        if optimistic:  # the lock and the check travel with the first statements sent
            self.pending += [
                ("BEGIN ISOLATION LEVEL READ COMMITTED", ()),
                ("SELECT writ_lock_head(%s, %s)", (live.version, live.epoch)),
            ]
        self.wrote = self.wrote_waiters = self.wrote_other = False
        self.failed: BaseException | None = None  # a statement failed: the batch is void
        self.committing = False
        self.rowcount = -1  # of the last statement sent with send(..., query, ...)
        self.cur: PgTx | None = None  # the transaction running now
        self.undone: list[Callable[[], None]] = []  # how to take back the committed ones
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def clock(self) -> float:
        self.last = max(self.last, self.t0 + (time.perf_counter() - self.p0))
        return self.last

    def start(self, store: PostgresStore) -> PgTx:
        self.cur = PgTx(store, self.conn, True, self.clock(), self)
        return self.cur

    def end(self, tx: PgTx, ok: bool) -> None:
        self.cur = None
        if ok:
            self.undone += tx.undo
            if tx.sp_sent:
                self.pending += tx.m.statements()
                self.pending.append(_RELEASE)
            else:
                self.m.absorb(tx.m)
            return
        for undo in reversed(tx.undo):
            undo()
        self.live.forget()
        self.head = tx.head0
        if tx.sp_sent:
            self.pending += [_ROLLBACK_TO, _RELEASE]
        else:
            del self.pending[tx.start :]

    def materialize(self) -> None:
        """The ended transactions' buffered rows become statements."""
        self.pending += self.m.statements()

    async def send(self, tx: PgTx | None, query: str | None, args: Sequence[Any]) -> list[Any]:
        """Send what is buffered (and ``query``) in one round trip; ``query``'s rows."""
        if self.failed is not None:
            raise self.failed
        if tx is not None:
            if not tx.sp_sent:
                # the ended transactions' rows before the savepoint, this one's after it
                self.pending[tx.start : tx.start] = [*self.m.statements(), _SAVEPOINT]
                tx.sp_sent = True
            self.pending += tx.m.statements()
        items, self.pending = self.pending, []
        if tx is not None:
            tx.start = 0
        conn = self.conn
        # Never prepared: a statement after a failing one in a pipeline is skipped, and
        # psycopg would still count it as prepared on the server (an optimistic batch's
        # writ_lock_head fails on purpose now and then).
        try:
            async with conn.pipeline():
                for q, a in items:
                    await conn.execute(q, a, prepare=False)
                cur = None
                if query is not None:
                    cur = conn.cursor()
                    await cur.execute(query, args, prepare=False)
            if cur is None:
                return []
            self.rowcount = cur.rowcount
            return await cur.fetchall() if cur.description is not None else []
        except BaseException as exc:
            self.failed = exc
            raise


class _Result:
    """What ``_BatchConn.execute`` returns: the rows and rowcount of a cursor."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return list(self._rows)


class _BatchConn:
    """``tx.c`` inside a batch: ``await tx.c.execute(query, args)`` as on a connection."""

    def __init__(self, tx: PgTx) -> None:
        self.tx = tx

    async def execute(self, query: str, args: Sequence[Any] | None = None) -> _Result:
        b = self.tx.b
        assert b is not None
        rows = await b.send(self.tx, query, args or ())
        return _Result(rows, b.rowcount)


class PgTx(Tx):
    """One transaction: in a write batch (``b``), against the live replica and the batch's
    connection; in a read, on a REPEATABLE READ snapshot.

    Methods that write call ``self._w()`` (or, for leases and the queue, keep the replica
    themselves) and buffer their statement with ``self._exec``; reads use ``self._one`` /
    ``self._all``, which send what is buffered first.
    """

    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.AsyncConnection[Any],
        writable: bool,
        now: float,
        batch: _Batch | None = None,
    ) -> None:
        self.store = store
        # in a batch, statements on ``c`` go through the batch (behind this transaction's
        # savepoint, after what is buffered), so a method written against a plain
        # connection keeps its transaction's atomicity
        self.c: Any = _BatchConn(self) if batch is not None else conn
        self._conn = conn
        self.writable = writable
        self.notes = []
        self._now = now
        self.b = batch
        self.start = len(batch.pending) if batch else 0
        self.head0 = batch.head if batch else (0, GENESIS)
        self.sp_sent = False
        self.m = _Merged()  # this transaction's rows of the hot tables
        self.undo: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def _b(self) -> _Batch:
        if self.b is None:
            raise RuntimeError("write in a read transaction")
        self.b.wrote = True
        return self.b

    def _w(self) -> None:
        """A write outside leases and the queue: other servers forget their caches."""
        b = self._b()
        b.wrote_other = True
        b.live.forget()

    def _exec(self, query: str, args: Sequence[Any]) -> None:
        self._b().pending.append((query, args))

    async def _all(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        if self.b is None:
            cur = await self._conn.execute(query, args)
            return await cur.fetchall()
        return await self.b.send(self, query, args)

    async def _one(self, query: str, args: Sequence[Any] = ()) -> Any:
        rows = await self._all(query, args)
        return rows[0] if rows else None

    async def next_token(self) -> int:
        # Tokens are drawn in memory from the fencing_token sequence's value read under the
        # audit_head lock, and the sequence is moved past them before COMMIT (nextval is
        # not transactional: a batch that rolls back after that still burns its tokens).
        # Every draw happens under that lock, so draw order is commit order.
        b = self._b()
        b.token += 1
        return b.token

    # ---- principals -----------------------------------------------------------------
    async def insert_principal(self, principal: Principal, token_hash: str) -> None:
        self._w()
        # ON CONFLICT DO NOTHING instead of catching a unique violation: an error would
        # abort the whole transaction, and the engine may go on after a Conflict.
        row = await self._one(
            f"INSERT INTO principals ({PRINCIPAL_INSERT_COLS})"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING RETURNING name",
            principal_values(principal, token_hash),
        )
        if row is None:
            raise Conflict(f"principal {principal.name!r} already exists", name=principal.name)

    async def get_principal(self, name: str) -> Principal | None:
        cache = self.b.live.principals if self.b is not None else None
        if cache is not None and name in cache:
            hit = cache[name]
            return _copy(hit) if hit is not None else None
        r = await self._one(f"SELECT {PRINCIPAL_COLS} FROM principals WHERE name = %s", (name,))
        p = to_principal(r) if r else None
        if cache is not None and self.b is not None and self.b.failed is None:
            cache[name] = _copy(p) if p is not None else None
        return p

    async def principal_by_token(self, token_hash: str) -> Principal | None:
        r = await self._one(
            f"SELECT {PRINCIPAL_COLS} FROM principals WHERE token_hash = %s", (token_hash,)
        )
        return to_principal(r) if r else None

    async def list_principals(self) -> list[Principal]:
        rows = await self._all(f"SELECT {PRINCIPAL_COLS} FROM principals ORDER BY name")
        return [to_principal(r) for r in rows]

    async def update_principal(self, principal: Principal, token_hash: str | None = None) -> None:
        self._w()
        await self.c.execute(
            "UPDATE principals SET queues = %s, disabled_at = %s, disabled_reason = %s,"
            " token_expires_at = %s, token_hash = coalesce(%s, token_hash) WHERE name = %s",
            (
                json.dumps(principal.queues),
                principal.disabled_at,
                principal.disabled_reason,
                principal.token_expires_at,
                token_hash,
                principal.name,
            ),
        )

    # ---- leases ---------------------------------------------------------------------
    def _keep(self, lease: Lease, request_id: str | None) -> None:
        """Put ``lease`` into the replica (or take it out, once not held), undoably."""
        live = self._b().live
        prev = live.held.get(lease.lease_id)
        prev_rid = live.req_of.get(lease.lease_id)
        rid = request_id if request_id is not None else prev_rid
        live.put(_copy(lease), rid)

        def undo() -> None:
            live.drop(lease.lease_id)
            if prev is not None:
                live.put(prev, prev_rid)

        self.undo.append(undo)

    async def insert_lease(self, lease: Lease, request_id: str | None = None) -> None:
        b = self._b()
        self._keep(lease, request_id)
        self.m.lease_ins.append((*lease_values(lease, request_id), b.version))

    async def update_lease(self, lease: Lease) -> None:
        b = self._b()
        self._keep(lease, None)
        self.m.lease_upd[lease.lease_id] = (
            lease.lease_id,
            lease.state,
            lease.expires_at,
            lease.ttl_s,
            lease.ended_at,
            b.version,
        )

    async def get_lease(self, lease_id: str, for_update: bool = False) -> Lease | None:
        if self.b is not None:
            hit = self.b.live.held.get(lease_id)
            if hit is not None:
                return _copy(hit)
        # not held: an ended lease (or none); rows of ended leases never change again
        r = await self._one(f"SELECT {LEASE_COLS} FROM leases WHERE lease_id = %s", (lease_id,))
        return to_lease(r) if r else None

    async def lease_for_request(self, request_id: str) -> Lease | None:
        if self.b is not None:
            live = self.b.live
            lid = live.by_req.get(request_id)
            if lid is not None:
                return _copy(live.held[lid])
            if request_id in live.waiters:  # still queued: granted to nobody yet
                return None
        r = await self._one(f"SELECT {LEASE_COLS} FROM leases WHERE request_id = %s", (request_id,))
        return to_lease(r) if r else None

    async def held_related(self, paths: Sequence[str]) -> list[Lease]:
        if self.b is not None:
            return [_copy(l) for l in self.b.live.related(paths)]
        where, args = _related_sql("resource", paths)
        rows = await self._all(
            f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held' AND {where}"
            " ORDER BY fencing_token",
            args,
        )
        return [to_lease(r) for r in rows]

    async def due_leases(self, now: float, limit: int) -> list[Lease]:
        if self.b is not None:
            return [_copy(l) for l in self.b.live.due(now, limit)]
        rows = await self._all(
            f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held' AND expires_at <= %s"
            " ORDER BY expires_at LIMIT %s",
            (now, limit),
        )
        return [to_lease(r) for r in rows]

    async def next_expiry(self) -> float | None:
        if self.b is not None:
            return self.b.live.next_expiry()
        r = await self._one("SELECT min(expires_at) FROM leases WHERE state = 'held'")
        return r[0] if r else None

    async def list_leases(
        self, prefix: str | None, state: str | None, limit: int, holder: str | None = None
    ) -> list[Lease]:
        where, args = ["true"], []  # type: list[str], list[Any]
        if prefix:
            clause, more = _prefix_sql("resource", prefix)
            where.append(clause)
            args += more
        if state:
            where.append("state = %s")
            args.append(state)
        if holder:
            where.append("holder = %s")
            args.append(holder)
        rows = await self._all(
            f"SELECT {LEASE_COLS} FROM leases WHERE {' AND '.join(where)}"
            " ORDER BY fencing_token DESC LIMIT %s",
            [*args, limit],
        )
        return [to_lease(r) for r in rows]

    # ---- wait queue -----------------------------------------------------------------
    async def insert_waiter(self, waiter: Waiter) -> Waiter:
        # seq is drawn in memory from the queue's identity sequence, read under the
        # audit_head lock and moved past before COMMIT (like tokens): FIFO order is the order
        # in which requests joined the one queue, across every server.
        b = self._b()
        b.wrote_waiters = True
        b.wseq += 1
        waiter.seq = b.wseq
        live = b.live
        live.waiters[waiter.waiter_id] = _copy(waiter)

        def undo() -> None:
            live.waiters.pop(waiter.waiter_id, None)

        self.undo.append(undo)
        self.m.waiter_ins.append((waiter.seq, *waiter_values(waiter)))
        return waiter

    async def delete_waiter(self, waiter_id: str) -> bool:
        b = self._b()
        live = b.live
        prev = live.waiters.pop(waiter_id, None)
        if prev is None:
            return False
        b.wrote_waiters = True

        def undo() -> None:
            live.waiters[waiter_id] = prev
            live.resort_waiters()

        self.undo.append(undo)
        self.m.waiter_del.append(waiter_id)
        return True

    async def waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None, limit: int | None = None
    ) -> list[Waiter]:
        if self.b is not None:
            return [_copy(w) for w in self.b.live.waiters_related(paths, before_seq, limit)]
        where, args = _related_sql("resource", paths)
        if before_seq is not None:
            where += " AND seq < %s"
            args.append(before_seq)
        query = f"SELECT {WAITER_COLS} FROM waiters WHERE {where} ORDER BY seq"
        if limit is not None:
            query += " LIMIT %s"
            args.append(int(limit))
        return [to_waiter(r) for r in await self._all(query, args)]

    async def waiters_of(self, principal: str) -> list[Waiter]:
        rows = await self._all(
            f"SELECT {WAITER_COLS} FROM waiters WHERE principal = %s ORDER BY seq", (principal,)
        )
        return [to_waiter(r) for r in rows]

    async def count_waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None
    ) -> int:
        if self.b is not None:
            return len(self.b.live.waiters_related(paths, before_seq, None))
        where, args = _related_sql("resource", paths)
        if before_seq is not None:
            where += " AND seq < %s"
            args.append(before_seq)
        r = await self._one(f"SELECT count(*) FROM waiters WHERE {where}", args)
        return int(r[0])

    async def gauges(self) -> tuple[int, int]:
        r = await self._one(
            "SELECT (SELECT count(*) FROM leases WHERE state = 'held' AND expires_at > %s),"
            " (SELECT count(*) FROM waiters)",
            (self.now(),),
        )
        return int(r[0]), int(r[1])

    # ---- policy objects -------------------------------------------------------------
    async def put_object(
        self,
        kind: str,
        obj_id: str,
        resource: str,
        state: str,
        data: dict[str, Any],
        expires_at: float | None = None,
    ) -> None:
        self._w()
        self._exec(
            "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (kind, id) DO UPDATE SET"
            " resource = excluded.resource, state = excluded.state, data = excluded.data,"
            " expires_at = excluded.expires_at",
            (kind, obj_id, resource, state, json.dumps(data), self._now, expires_at),
        )

    async def get_object(
        self, kind: str, obj_id: str, for_update: bool = False
    ) -> dict[str, Any] | None:
        # no row lock needed: every write transaction holds the audit_head lock
        r = await self._one(
            "SELECT data, state, expires_at FROM objects WHERE kind = %s AND id = %s",
            (kind, obj_id),
        )
        return to_object(r) if r else None

    async def objects_related(
        self, kind: str, paths: Sequence[str], states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        where, args = _related_sql("resource", paths)
        query = f"SELECT data, state, expires_at FROM objects WHERE kind = %s AND {where}"
        args = [kind, *args]
        if states:
            query += " AND state = ANY(%s)"
            args.append(list(states))
        return [to_object(r) for r in await self._all(query + " ORDER BY created_at, id", args)]

    async def objects_related_many(
        self, specs: Sequence[tuple[str, Sequence[str]]], paths: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """One query for every kind (a grant asks for the standing policy objects in each of
        its gates). A writer remembers which ``(kind, state)`` pairs have no row at all, so
        a grant with no lock-delay, freeze or protected change anywhere asks nothing."""
        wanted = {kind: set(states) for kind, states in specs}
        if self.b is not None:
            present = self.b.live.present
            pairs = [(k, s) for k, sts in wanted.items() for s in sorted(sts)]
            unknown = [p for p in pairs if p not in present]
            if unknown:
                rows = await self._all(
                    "SELECT q.k, q.s FROM unnest(%s::text[], %s::text[]) AS q(k, s)"
                    " WHERE EXISTS (SELECT 1 FROM objects WHERE kind = q.k AND state = q.s)",
                    ([k for k, _ in unknown], [s for _, s in unknown]),
                )
                found = {(k, s) for k, s in rows}
                for p in unknown:
                    present[p] = p in found
            if not any(present.get(p, True) for p in pairs):
                return {kind: [] for kind in wanted}
        where, args = _related_sql("resource", paths)
        rows = await self._all(
            "SELECT kind, data, state, expires_at FROM objects WHERE kind = ANY(%s)"
            f" AND {where} AND state = ANY(%s) ORDER BY created_at, id",
            [list(wanted), *args, sorted({st for sts in wanted.values() for st in sts})],
        )
        hit: dict[str, list[dict[str, Any]]] = {kind: [] for kind in wanted}
        for kind, *rest in rows:
            if rest[1] in wanted[kind]:
                hit[kind].append(to_object(rest))
        return hit

    async def objects_due(
        self, kind: str, state: str, now: float, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT data, state, expires_at FROM objects WHERE kind = %s AND state = %s"
            " AND expires_at IS NOT NULL AND expires_at <= %s ORDER BY expires_at LIMIT %s",
            (kind, state, now, limit),
        )
        return [to_object(r) for r in rows]

    async def list_objects(
        self, kind: str, states: Sequence[str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        query, args = "SELECT data, state, expires_at FROM objects WHERE kind = %s", [kind]  # type: str, list[Any]
        if states:
            query += " AND state = ANY(%s)"
            args.append(list(states))
        query += " ORDER BY created_at DESC, id LIMIT %s"
        return [to_object(r) for r in await self._all(query, [*args, limit])]

    # ---- ledger ---------------------------------------------------------------------
    async def append(self, fields: dict[str, Any]) -> Sealed:
        # The head is ours (the batch holds its row lock), so seq = head + 1 is final: no
        # gaps, no duplicates, and seq order is commit order, so a reader that has seen row
        # n has seen every row before it. The row is written with the batch's COMMIT.
        b = self._b()
        seq, prev = b.head
        s = seal(seq + 1, prev, self._now, fields)
        self.m.audit.append(s)
        b.head = (s.seq, s.hash)
        if self.store.row_observers:
            self.noted(s)
        return s

    async def audit_rows(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        where, args = ["seq > %s"], [after_seq]  # type: list[str], list[Any]
        if prefix:
            clause, more = _prefix_sql("resource", prefix)
            where.append(clause)
            args += more
        if since is not None:
            where.append("ts >= %s")
            args.append(since)
        if until is not None:
            where.append("ts <= %s")
            args.append(until)
        rows = await self._all(
            f"SELECT body, hash FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s",
            [*args, limit],
        )
        return [row_from(b, h) for b, h in rows]

    async def audit_head(self) -> tuple[int, str]:
        if self.b is not None:
            return self.b.head
        r = await self._one("SELECT seq, hash FROM audit_head")
        return (int(r[0]), r[1]) if r else (0, GENESIS)

    async def audit_latest(
        self, resources: Sequence[str], events: Sequence[str], at: float
    ) -> dict[str, Any] | None:
        r = await self._one(  # one indexed probe per resource, the newest of those wins
            "SELECT x.seq, x.body, x.hash FROM unnest(%s::text[]) AS r(res)"
            " CROSS JOIN LATERAL (SELECT seq, body, hash FROM audit"
            "   WHERE resource = r.res AND ts <= %s AND event = ANY(%s)"
            "   ORDER BY ts DESC, seq DESC LIMIT 1) AS x"
            " ORDER BY x.seq DESC LIMIT 1",
            (list(resources), at, list(events)),
        )
        return row_from(r[1], r[2]) if r else None

    async def audit_for_lock_key(self, lock_key: str) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT body, hash FROM audit WHERE lock_key = %s ORDER BY seq", (lock_key,)
        )
        return [row_from(b, h) for b, h in rows]


def _shrink(payload: dict[str, Any]) -> dict[str, Any]:
    """A note too large for NOTIFY keeps its short fields and says it was cut."""
    out: dict[str, Any] = {"truncated": True}
    for k, v in payload.items():
        if k == "error" and isinstance(v, dict):
            out[k] = {"code": v.get("code"), "message": str(v.get("message", ""))[:1000]}
        elif len(json.dumps(v)) <= 500:
            out[k] = v
    return out


def _payloads(instance: str, notes: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Notes packed into as few NOTIFY payloads as fit, each tagged with our instance id
    (so this process can ignore its own echo: it delivers its notes itself, at once)."""
    out: list[str] = []
    batch: list[Any] = []
    for kind, payload in notes:
        item = [kind, payload]
        if len(json.dumps(item)) > _NOTIFY_LIMIT - 100:
            item = [kind, _shrink(payload)]
        trial = json.dumps({"i": instance, "n": [*batch, item]})
        if len(trial.encode()) > _NOTIFY_LIMIT and batch:
            out.append(json.dumps({"i": instance, "n": batch}))
            batch = []
        batch.append(item)
    if batch:
        out.append(json.dumps({"i": instance, "n": batch}))
    return out


class PostgresStore(Store):
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

    def __init__(self, url: str, clock: Any = None, **_ignored: Any) -> None:
        super().__init__()
        if clock is not None:
            raise Invalid(
                "the PostgreSQL store takes its time from the database clock; "
                "a clock= option is only for the SQLite store"
            )
        self.url = url
        parsed = urlparse(url)
        if not parsed.path.strip("/"):
            raise Invalid(f"store URL {url!r} names no database (postgresql://user@host:5432/db)")
        query = dict(parse_qsl(parsed.query, keep_blank_values=True))

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
        self._kwargs: dict[str, Any] = {"autocommit": True, "options": " ".join(options)}
        self.channel = f"writ_{self.schema}" if self.schema else "writ"
        self.instance = uuid.uuid4().hex[:12]
        self._pool: AsyncConnectionPool[Any] | None = None
        self._old_pools: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._queue: list[_Item] = []
        self._drainer: asyncio.Task[None] | None = None
        self._live: _Live | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._heard_seq = 0
        self._checking = False
        self._closed = True
        self.transactions = 0  # committed write transactions (for tests and benchmarks)
        self.batches = 0  # committed batches (group commits)
        self.optimistic_batches = 0  # of those, decided before taking the lock
        self.loads = 0  # full loads of the live replica
        self.applied: list[str] = []  # migrations this store applied when it opened
        self.retries = 0

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
                await self._migrate(conn)
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
            log.warning("PostgreSQL store: the LISTEN connection is not up yet; retrying")

    async def _migrate(self, c: psycopg.AsyncConnection[Any]) -> None:
        """Apply missing migrations, recorded in ``writ_migrations``, under an advisory
        transaction lock so that servers starting together do not race. Nothing is
        locked or created when the schema is current: a server may run as a role that is
        not allowed DDL (see docs/postgres.md, "Hardening the ledger")."""
        cur = await c.execute("SELECT to_regclass('writ_migrations') IS NOT NULL")
        row = await cur.fetchone()
        if row and row[0]:
            cur = await c.execute("SELECT version FROM writ_migrations")
            if {r[0] for r in await cur.fetchall()} >= set(range(1, len(MIGRATIONS) + 1)):
                return
        async with c.transaction():
            await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if self.schema:
                await c.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            await c.execute(
                "CREATE TABLE IF NOT EXISTS writ_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            cur = await c.execute("SELECT version FROM writ_migrations")
            have = {r[0] for r in await cur.fetchall()}
            for version, (name, script) in enumerate(MIGRATIONS, start=1):
                if version in have:
                    continue
                script = script.replace("WRIT_CHANNEL", self.channel)
                self.applied.append(name)
                await c.execute(script.encode())  # several statements: simple query protocol
                await c.execute(
                    "INSERT INTO writ_migrations (version, name) VALUES (%s, %s)", (version, name)
                )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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
        if self._pool is not None:
            await self._pool.close(timeout=2)
            self._pool = None

    def _pool_or_fail(self) -> AsyncConnectionPool[Any]:
        if self._closed or self._pool is None:
            raise Unavailable("store is closed")
        return self._pool

    # -- writes: group commit --------------------------------------------------------------
    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        # Every write transaction joins the next batch (see _Batch); the batch runs in the
        # drain task, so a caller that goes away (a client that disconnects) neither leaves
        # a connection mid-statement nor cuts a commit in half: the outcome is the same as
        # if it had waited.
        self._pool_or_fail()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, fut))
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
            while self._queue:
                await asyncio.sleep(0)  # let the requests arriving in this tick join the batch
                items = [(fn, f) for fn, f in self._queue[: self.batch_max] if not f.done()]
                del self._queue[: self.batch_max]
                if items:
                    try:
                        await self._run(items)
                    except BaseException as exc:  # never leave a caller waiting
                        _fail(items, exc)
                        if not isinstance(exc, Exception):
                            raise
        finally:
            self._drainer = None

    async def _run(self, items: list[_Item]) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._attempt(items, attempt)
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
                return
            except Unavailable as exc:
                _fail(items, exc)
                return

    async def _begin(self, conn: psycopg.AsyncConnection[Any]) -> _Batch:
        """Take the serialization point, read the clock and the counters, and bring the
        live replica up to date with what other servers committed: one round trip when
        nobody else wrote."""
        live = self._live
        # not prepared: see _Batch.send (a lock timeout would skip the catch-up)
        async with conn.pipeline():
            await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED", prepare=False)
            hcur = conn.cursor()
            await hcur.execute(_LOCK_HEAD, prepare=False)
            lcur = None
            if live is not None:
                lcur = conn.cursor()
                await lcur.execute(_CATCH_UP, (live.version,), prepare=False)
        head = await hcur.fetchone()
        assert head is not None, "audit_head has no row"
        seq, hash_, now, version, wv, ov, epoch, token, wseq = head
        foreign = live is None or epoch != live.epoch or version != live.version
        if live is None or epoch != live.epoch:
            live = await self._load(conn, version, wv, ov, epoch)
        elif version != live.version:
            assert lcur is not None
            for r in await lcur.fetchall():
                live.put(to_lease(r[:-1]), r[-1])
            if wv != live.wv:
                await self._load_waiters(conn, live)
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
        await self._load_waiters(conn, live)
        self.loads += 1
        return live

    @staticmethod
    async def _load_waiters(conn: psycopg.AsyncConnection[Any], live: _Live) -> None:
        cur = await conn.execute(f"SELECT {WAITER_COLS} FROM waiters ORDER BY seq")
        live.waiters = {w.waiter_id: w for w in map(to_waiter, await cur.fetchall())}

    async def _attempt(self, items: list[_Item], attempt: int = 1) -> None:
        pool = self._pool_or_fail()
        began = time.perf_counter()
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None, PgTx]] = []
        with _translate("write"):
            async with pool.connection() as conn:
                b: _Batch | None = None
                try:
                    live = self._live
                    if live is not None and self._optimistic(live, attempt):
                        b = self._begin_optimistic(conn, live)
                    else:
                        b = await self._begin(conn)
                    for fn, fut in items:
                        tx = b.start(self)
                        try:
                            result = await fn(tx)
                        except Exception as exc:
                            if b.failed is not None or isinstance(exc, psycopg.Error):
                                raise
                            b.end(tx, False)
                            done.append((fut, None, exc, tx))
                            continue
                        b.end(tx, True)
                        done.append((fut, result, None, tx))
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
        if self.commit_observers:
            took = time.perf_counter() - began
            for observe in self.commit_observers:
                observe(took)
        self._settle(b, done, notes)

    async def _commit(self, b: _Batch, ok: list[PgTx]) -> list[tuple[str, dict[str, Any]]]:
        """The batch's last round trip: its buffered writes, the new chain head and
        counters, the notifications and COMMIT, pipelined."""
        notes = [n for tx in ok for n in tx.notes]
        if b.head != b.head0:
            notes.append(("audit", {"seq": b.head[0]}))
        b.notes = notes
        live = b.live
        tail: list[tuple[str, Sequence[Any]]] = []
        if b.wrote:
            tail.append(
                (
                    "UPDATE audit_head SET seq = %s, hash = %s, ts = %s, version = %s,"
                    " wv = wv + %s, ov = ov + %s",
                    (
                        b.head[0],
                        b.head[1],
                        b.last,
                        b.version,
                        int(b.wrote_waiters),
                        int(b.wrote_other),
                    ),
                )
            )
        # The sequences move past what the batch drew by drawing as many (USAGE is the only
        # right a server role needs on them); the draws must end where the batch's did —
        # anything else (a writer outside the head lock) fails the batch (division by zero)
        for name, last, first in (
            ("fencing_token", b.token, b.token0),
            ("waiters_seq_seq", b.wseq, b.wseq0),
        ):
            if last != first:
                tail.append(
                    (
                        f"SELECT 1 / (max(nextval('{name}')) = %s)::int"
                        " FROM generate_series(1, %s)",
                        (last, last - first),
                    )
                )
        if notes:
            tail.append(
                (
                    "SELECT count(pg_notify(%s, x)) FROM unnest(%s::text[]) AS x",
                    (self.channel, _payloads(self.instance, notes)),
                )
            )
        b.materialize()
        b.pending += tail
        b.pending.append(("COMMIT", ()))
        b.committing = True
        await b.send(None, None, ())
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
        self._deliver(notes)
        for _, _, exc, tx in done:
            if exc is None:
                tx.committed()

    async def _rollback(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if _broken(conn):
            return
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
        if have != len(MIGRATIONS):
            return f"the schema is at migration {have}; this writ expects {len(MIGRATIONS)}"
        if not self._listening.is_set():
            return "the PostgreSQL LISTEN connection is down (reconnecting): waits would not hear other servers"
        return None

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        self._pool_or_fail()
        return await self._shielded(self._read(fn))

    async def _read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            pool = self._pool_or_fail()
            try:
                with _translate("read"):
                    async with pool.connection() as conn:
                        try:
                            cur = conn.cursor()
                            await cur.execute(_BEGIN_READ)
                            cur.nextset()
                            row = await cur.fetchone()
                            assert row is not None
                            result = await fn(PgTx(self, conn, False, float(row[0])))
                            await conn.execute("COMMIT")
                            return result
                        except BaseException as exc:
                            await self._rollback(conn)
                            if (
                                isinstance(exc, psycopg.OperationalError)
                                and _broken(conn)
                                and attempt < self.max_attempts
                            ):
                                raise _Retry(exc, True) from exc
                            raise
            except _Retry:
                self.retries += 1
                await self._check_pool()

    def audit_stream(
        self, after_seq: int = 0, batch: int = 10_000
    ) -> AsyncIterator[list[tuple[int, str, str]]]:
        return self._audit_pages("seq, body, hash", after_seq, batch)

    def audit_records(self, after_seq: int = 0, batch: int = 10_000) -> AsyncIterator[list[Record]]:
        return self._audit_pages("seq, body, hash, ts, event, resource, lock_key", after_seq, batch)

    async def _audit_pages(
        self, columns: str, after_seq: int, batch: int
    ) -> AsyncIterator[list[Any]]:
        # Keyset pages by seq: seq order is commit order, so a later page never finds a
        # row that should have been in an earlier one.
        last = after_seq
        while True:
            pool = self._pool_or_fail()
            with _translate("read the ledger"):
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        f"SELECT {columns} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s",
                        (last, batch),
                    )
                    rows = [(int(r[0]), *r[1:]) for r in await cur.fetchall()]
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    # -- notifications -------------------------------------------------------------------
    async def _listen(self) -> None:
        """One LISTEN connection per store. Reconnects by itself; after a reconnect it
        delivers what may have been missed meanwhile (see :meth:`_resync`)."""
        delay, lost_at = 0.05, None  # type: float, float | None
        while not self._closed:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                if lost_at is not None:
                    await self._resync(conn, time.monotonic() - lost_at)
                    lost_at = None
                elif not self._listening.is_set():  # first start: hear from the head on
                    cur = await conn.execute("SELECT seq FROM audit_head")
                    row = await cur.fetchone()
                    self._heard_seq = max(self._heard_seq, int(row[0]) if row else 0)
                self._listening.set()
                delay = 0.05
                while not self._closed:
                    async for n in conn.notifies(timeout=5.0):
                        self._on_notify(n.payload)
                    await conn.execute("SELECT 1")  # a quiet 5 s: is the server still there?
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive an outage
                if self._closed:
                    break
                if lost_at is None:
                    lost_at = time.monotonic()
                    self._listening.clear()
                    log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _on_notify(self, text: str) -> None:
        try:
            msg = json.loads(text)
            notes = [(str(k), dict(p)) for k, p in msg["n"]]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed writ notification: %.200s", text)
            return
        # NOTIFY arrives in commit order, our own echo included: having heard row n, this
        # listener has heard every row up to n (what a resync starts from)
        for kind, payload in notes:
            if kind == "audit":
                self._heard_seq = max(self._heard_seq, int(payload.get("seq", 0)))
        if msg.get("i") != self.instance:  # our own notes were delivered at commit
            self._deliver(notes)

    async def _resync(self, conn: psycopg.AsyncConnection[Any], outage_s: float) -> None:
        """After the LISTEN connection came back: notifications sent meanwhile are lost, so
        re-announce the grants made to queued requests since the last row we had heard
        of, then the current head and a ``resync`` note. A fresh pool replaces the old
        one, whose reconnect attempts may be backing off for many seconds."""
        cur = await conn.execute(
            "SELECT request_id, lease_id FROM leases WHERE request_id IS NOT NULL AND"
            " acquired_at >= coalesce((SELECT ts FROM audit WHERE seq = %s), 0)"
            " ORDER BY fencing_token LIMIT 10000",
            (self._heard_seq,),
        )
        grants = await cur.fetchall()
        cur = await conn.execute("SELECT seq FROM audit_head")
        row = await cur.fetchone()
        head = int(row[0]) if row else 0
        self._heard_seq = max(self._heard_seq, head)
        await self._refresh_pool()
        notes: list[tuple[str, dict[str, Any]]] = [
            ("granted", {"waiter_id": r, "lease_id": l}) for r, l in grants
        ]
        notes += [
            ("audit", {"seq": head}),
            ("resync", {"seq": head, "outage_s": round(outage_s, 3)}),
        ]
        log.warning(
            "PostgreSQL reachable again after %.1fs; resynchronized at seq %d", outage_s, head
        )
        self._deliver(notes)

    async def _refresh_pool(self) -> None:
        old, new = self._pool, self._new_pool()
        await new.open(wait=False)
        self._pool = new
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(timeout=self.statement_timeout))
            self._old_pools.add(task)
            task.add_done_callback(self._old_pools.discard)

    # -- export and import -----------------------------------------------------------------
    async def export_rows(
        self, batch: int = 10_000
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        pool = self._pool_or_fail()
        with _translate("export the store"):
            async with pool.connection() as conn:
                # one snapshot for the whole dump
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    # the consumer may take its time between batches (it is writing them)
                    await conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                    cur = await conn.execute("SELECT last_value, is_called FROM fencing_token")
                    last, called = await cur.fetchone()
                    yield "meta", [{"fencing_token": int(last) if called else 0}]
                    for table in TABLES:
                        async with conn.cursor(name=f"writ_export_{table}") as scur:
                            await scur.execute(export_sql(table))
                            while True:
                                rows = await scur.fetchmany(batch)
                                if not rows:
                                    break
                                yield table, [export_row(table, r) for r in rows]

    async def import_rows(
        self, batches: AsyncIterable[tuple[str, list[dict[str, Any]]]]
    ) -> dict[str, int]:
        pool = self._pool_or_fail()
        counts: dict[str, int] = {}
        with _translate("import into the store"):
            async with self._write_lock, pool.connection() as conn, conn.transaction():
                cur = await conn.execute("SELECT seq, hash, ts FROM audit_head FOR UPDATE")
                head = await cur.fetchone()
                existing = {}
                for table in TABLES:
                    cur = await conn.execute(f"SELECT count(*) FROM {table}")
                    existing[table] = int((await cur.fetchone())[0])
                check_empty(self.url, existing)
                token = 0
                last_audit: tuple[int, str, float] | None = None
                async for table, rows in batches:
                    if table == "meta":
                        for r in rows:
                            token = max(token, int(r.get("fencing_token") or 0))
                        continue
                    if table not in TABLES:
                        raise Invalid(f"cannot import unknown table {table!r}")
                    cols = TABLES[table]
                    async with conn.cursor().copy(
                        f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                    ) as copy:
                        for r in rows:
                            await copy.write_row(import_row(table, r))
                    counts[table] = counts.get(table, 0) + len(rows)
                    if table == "leases" and rows:
                        token = max(token, max(int(r["fencing_token"]) for r in rows))
                    if table == "audit" and rows:
                        r = rows[-1]
                        last_audit = (int(r["seq"]), r["hash"], float(r["ts"]))
                if last_audit is not None:
                    ts = max(float(head[2]) if head else 0.0, last_audit[2])
                    await conn.execute(
                        "UPDATE audit_head SET seq = %s, hash = %s, ts = %s, epoch = epoch + 1",
                        (*last_audit[:2], ts),
                    )
                else:
                    await conn.execute("UPDATE audit_head SET epoch = epoch + 1")
                # every server (this one too) loads its live replica afresh
                self._live = None
                if token > 0:
                    await conn.execute("SELECT setval('fencing_token', %s, true)", (token,))
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence('waiters', 'seq'),"
                    " greatest((SELECT max(seq) FROM waiters), 1),"
                    " (SELECT max(seq) FROM waiters) IS NOT NULL)"
                )
                counts["meta"] = token
        return counts
