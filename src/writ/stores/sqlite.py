"""The embedded store: ``sqlite:///path/writ.db`` (``sqlite:///:memory:`` for tests).

WAL mode with ``synchronous=FULL``: a commit writ acknowledged is on disk, across a killed
process and a power cut. Writes go through one connection as *group commits*: every
transaction that arrives while a commit is being flushed joins the next batch, each inside
its own savepoint, and the whole batch costs one fsync. Statements run on the event loop
(they touch only pages in memory); the COMMIT — the fsync — runs in a worker thread, so
the loop does not wait on the disk while a batch is flushed. A batch of a single
transaction commits on the loop instead while the disk is quick (recent commits under
``INLINE_COMMIT_MAX_S``): for a lone request the two thread hops cost more than the fsync.

Caveat: one ``writ serve`` process per file. Other processes (``writ principal add`` on the
store, ``writ audit verify``) may open it at the same time; they take SQLite's write lock
and see a consistent chain, but a server does not hear their notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlparse

from ..clock import Clock
from ..errors import Conflict, Invalid, Unavailable, WritError
from ..ledger import GENESIS, Record, Sealed, row_from, seal
from ..models import Lease, Principal, Waiter
from ..resources import related_clauses
from .base import TABLES, Store, Tx, check_empty
from .rows import (
    LEASE_COLS,
    PRINCIPAL_COLS,
    PRINCIPAL_INSERT_COLS,
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

# A batch of one transaction commits on the event loop while recent commits took less than
# this: handing a lone COMMIT to the worker thread and back cost more CPU than the fsync
# itself (bench/RESULTS.md). A slower disk, or a batch of several, commits in the thread.
INLINE_COMMIT_MAX_S = 0.002

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta (key, value) VALUES ('fencing_token', 0);
        CREATE TABLE principals (
            name TEXT PRIMARY KEY, kind TEXT NOT NULL, vendor TEXT, wake TEXT,
            admin INTEGER NOT NULL DEFAULT 0, token_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL);
        CREATE TABLE leases (
            lease_id TEXT PRIMARY KEY, resource TEXT NOT NULL, holder TEXT NOT NULL,
            intent TEXT NOT NULL, fencing_token INTEGER NOT NULL UNIQUE,
            acquired_at REAL NOT NULL, expires_at REAL NOT NULL, ttl_s REAL NOT NULL,
            touches TEXT NOT NULL, state TEXT NOT NULL, rollback TEXT, ended_at REAL,
            request_id TEXT);
        CREATE INDEX leases_held ON leases (resource) WHERE state = 'held';
        CREATE INDEX leases_due ON leases (expires_at) WHERE state = 'held';
        CREATE INDEX leases_by_resource ON leases (resource, acquired_at);
        CREATE INDEX leases_by_request ON leases (request_id) WHERE request_id IS NOT NULL;
        CREATE TABLE waiters (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, waiter_id TEXT NOT NULL UNIQUE,
            resource TEXT NOT NULL, principal TEXT NOT NULL, request TEXT NOT NULL,
            enqueued_at REAL NOT NULL, deadline REAL NOT NULL);
        CREATE INDEX waiters_by_resource ON waiters (resource, seq);
        CREATE TABLE objects (
            kind TEXT NOT NULL, id TEXT NOT NULL, resource TEXT NOT NULL, state TEXT NOT NULL,
            data TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
            PRIMARY KEY (kind, id));
        CREATE INDEX objects_by_resource ON objects (kind, resource);
        CREATE INDEX objects_due ON objects (kind, state, expires_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL,
            resource TEXT NOT NULL, lock_key TEXT, body TEXT NOT NULL, hash TEXT NOT NULL);
        CREATE INDEX audit_by_resource ON audit (resource, ts);
        CREATE INDEX audit_by_lock_key ON audit (lock_key) WHERE lock_key IS NOT NULL;
        CREATE INDEX audit_by_ts ON audit (ts);
        CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'writ: audit rows are append-only'); END;
        CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'writ: audit rows are append-only'); END;
        """,
    ),
    (
        "principal lifecycle and queue membership",
        """
        ALTER TABLE principals ADD COLUMN queues TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE principals ADD COLUMN disabled_at REAL;
        ALTER TABLE principals ADD COLUMN disabled_reason TEXT;
        ALTER TABLE principals ADD COLUMN token_expires_at REAL;
        INSERT INTO meta (key, value) VALUES ('principals_gen', 0);
        CREATE TRIGGER principals_changed_u AFTER UPDATE ON principals BEGIN UPDATE meta SET value = value + 1 WHERE key = 'principals_gen'; END;
        CREATE TRIGGER principals_changed_d AFTER DELETE ON principals BEGIN UPDATE meta SET value = value + 1 WHERE key = 'principals_gen'; END;
        """,
    ),
]


def _related_sql(column: str, paths: Sequence[str]) -> tuple[str, list[Any]]:
    sql, args = _related_sql_cached(column, tuple(paths))
    return sql, list(args)


@functools.lru_cache(maxsize=4096)
def _related_sql_cached(column: str, paths: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    exact, ranges = related_clauses(paths)
    parts = [f"{column} IN ({','.join('?' * len(exact))})"]
    args: list[Any] = list(exact)
    for lo, hi in ranges:
        parts.append(f"({column} >= ? AND {column} < ?)")
        args += [lo, hi]
    return "(" + " OR ".join(parts) + ")", tuple(args)


@functools.lru_cache(maxsize=4096)
def _held_related_sql(paths: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """Held leases related to ``paths``: one SELECT per clause, each pinned to the partial
    index of held leases. With the clauses OR-ed, SQLite answered the exact-match part from
    ``leases_by_resource``, which holds every lease ever granted on a resource, so a grant
    cost grew with history (bench/RESULTS.md)."""
    exact, ranges = related_clauses(paths)
    sel = f"SELECT {LEASE_COLS} FROM leases INDEXED BY leases_held WHERE state = 'held' AND "
    parts = [sel + f"resource IN ({','.join('?' * len(exact))})"]
    args: list[Any] = list(exact)
    for lo, hi in ranges:
        parts.append(sel + "resource >= ? AND resource < ?")
        args += [lo, hi]
    return " UNION ".join(parts) + " ORDER BY fencing_token", tuple(args)


_ANY_WAITER = "SELECT EXISTS (SELECT 1 FROM waiters)"

_HEADS = (
    "SELECT (SELECT value FROM meta WHERE key = 'fencing_token'),"
    " (SELECT seq FROM audit ORDER BY seq DESC LIMIT 1),"
    " (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1)"
)


class _LiveObjects(NamedTuple):
    """What :meth:`SQLiteTx.objects_related_many` asks about one ``specs``, built once."""

    kinds: tuple[str, ...]
    states: tuple[str, ...]  # every state any of the kinds is wanted in
    wanted: dict[str, frozenset[str]]  # kind -> its own states
    probe: str  # EXISTS: is any object of these kinds in one of these states?
    probe_args: tuple[str, ...]
    known_key: tuple[Any, ...]  # what the store remembers the probe's answer under


@functools.lru_cache(maxsize=256)
def _live_objects(specs: tuple[tuple[str, tuple[str, ...]], ...]) -> _LiveObjects:
    kinds = tuple(k for k, _ in specs)
    states = tuple(sorted({st for _, sts in specs for st in sts}))
    probe = (
        f"SELECT EXISTS (SELECT 1 FROM objects WHERE kind IN ({','.join('?' * len(kinds))})"
        f" AND state IN ({','.join('?' * len(states))}))"
    )
    args = (*kinds, *states)
    wanted = {k: frozenset(sts) for k, sts in specs}
    return _LiveObjects(kinds, states, wanted, probe, args, ("objects", probe, *args))


@functools.lru_cache(maxsize=4096)
def _objects_related_many_sql(
    specs: tuple[tuple[str, tuple[str, ...]], ...], paths: tuple[str, ...]
) -> tuple[str, tuple[Any, ...]]:
    live = _live_objects(specs)
    where, args = _related_sql_cached("resource", paths)
    return (
        f"SELECT kind, data, state, expires_at FROM objects WHERE kind IN"
        f" ({','.join('?' * len(live.kinds))}) AND {where}"
        f" AND state IN ({','.join('?' * len(live.states))}) ORDER BY created_at, id",
        (*live.kinds, *args, *live.states),
    )


# Text as read once a connection met a stored value that is not UTF-8 (written by hand:
# writ itself only writes UTF-8): U+FFFD in place of each bad byte, never a failed read.
# Switched on per connection at the first such value; the default (C) decoding is faster.
_TOLERANT_TEXT = functools.partial(str, encoding="utf-8", errors="replace")


def _tolerate(conn: sqlite3.Connection, exc: BaseException) -> bool:
    """Whether ``exc`` is sqlite3 failing to decode stored text as UTF-8 on ``conn`` for the
    first time; if so ``conn`` now decodes leniently and the caller retries once."""
    if (
        isinstance(exc, sqlite3.OperationalError)
        and "decode to UTF-8" in str(exc)
        and conn.text_factory is not _TOLERANT_TEXT
    ):
        conn.text_factory = _TOLERANT_TEXT
        return True
    return False


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a transaction function that awaits only this store's (non-suspending) methods."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a transaction function awaited something other than the store")


class SQLiteTx(Tx):
    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection, writable: bool) -> None:
        self.store = store
        self.c = conn
        self.writable = writable
        self.notes = []
        self._now = store.clock.now()
        self._memo: dict[Any, Any] = {}  # repeated reads within this tx, until it writes

    def now(self) -> float:
        return self._now

    def _knows_none(self, key: Any, probe: str, args: Sequence[Any] = ()) -> bool:
        """True when the writer knows no row matches ``probe`` (an EXISTS query), so a
        lookup can be skipped. Only a writing transaction asks: it holds the write lock, and
        the store forgets what it knows whenever another connection has committed, a
        savepoint rolled back or a batch failed (see ``SQLiteStore._known``)."""
        if not self.writable:
            return False
        known = self.store._known
        if key not in known:
            known[key] = bool(self.c.execute(probe, args).fetchone()[0])
        return not known[key]

    def _w(self) -> None:
        if not self.writable:
            raise RuntimeError("write in a read transaction")
        self._memo.clear()

    async def next_token(self) -> int:
        self._w()
        self.store._token += 1
        return self.store._token

    # principals
    async def insert_principal(self, principal: Principal, token_hash: str) -> None:
        self._w()
        try:
            self.c.execute(
                f"INSERT INTO principals ({PRINCIPAL_INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                principal_values(principal, token_hash),
            )
        except sqlite3.IntegrityError:
            raise Conflict(
                f"principal {principal.name!r} already exists", name=principal.name
            ) from None

    async def get_principal(self, name: str) -> Principal | None:
        r = self.c.execute(
            f"SELECT {PRINCIPAL_COLS} FROM principals WHERE name = ?", (name,)
        ).fetchone()
        return to_principal(r) if r else None

    async def principal_by_token(self, token_hash: str) -> Principal | None:
        r = self.c.execute(
            f"SELECT {PRINCIPAL_COLS} FROM principals WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return to_principal(r) if r else None

    async def list_principals(self) -> list[Principal]:
        rows = self.c.execute(f"SELECT {PRINCIPAL_COLS} FROM principals ORDER BY name")
        return [to_principal(r) for r in rows]

    async def update_principal(self, principal: Principal, token_hash: str | None = None) -> None:
        self._w()
        self.c.execute(
            "UPDATE principals SET queues = ?, disabled_at = ?, disabled_reason = ?,"
            " token_expires_at = ?, token_hash = coalesce(?, token_hash) WHERE name = ?",
            (
                json.dumps(principal.queues),
                principal.disabled_at,
                principal.disabled_reason,
                principal.token_expires_at,
                token_hash,
                principal.name,
            ),
        )

    # leases
    async def insert_lease(self, lease: Lease, request_id: str | None = None) -> None:
        self._w()
        self.c.execute(
            f"INSERT INTO leases ({LEASE_COLS}, request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            lease_values(lease, request_id),
        )

    async def update_lease(self, lease: Lease) -> None:
        self._w()
        self.c.execute(
            "UPDATE leases SET state = ?, expires_at = ?, ttl_s = ?, ended_at = ? WHERE lease_id = ?",
            (lease.state, lease.expires_at, lease.ttl_s, lease.ended_at, lease.lease_id),
        )

    async def get_lease(self, lease_id: str, for_update: bool = False) -> Lease | None:
        r = self.c.execute(
            f"SELECT {LEASE_COLS} FROM leases WHERE lease_id = ?", (lease_id,)
        ).fetchone()
        return to_lease(r) if r else None

    async def lease_for_request(self, request_id: str) -> Lease | None:
        r = self.c.execute(
            f"SELECT {LEASE_COLS} FROM leases WHERE request_id = ?", (request_id,)
        ).fetchone()
        return to_lease(r) if r else None

    async def held_related(self, paths: Sequence[str]) -> list[Lease]:
        at = tuple(paths)
        key = ("held", at)
        hit = self._memo.get(key)
        if hit is not None:
            return list(hit)
        sql, args = _held_related_sql(at)
        out = [to_lease(r) for r in self.c.execute(sql, args)]
        self._memo[key] = out
        return list(out)

    async def due_leases(self, now: float, limit: int) -> list[Lease]:
        rows = self.c.execute(
            f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held' AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return [to_lease(r) for r in rows]

    async def next_expiry(self) -> float | None:
        r = self.c.execute("SELECT min(expires_at) FROM leases WHERE state = 'held'").fetchone()
        return r[0] if r else None

    async def list_leases(
        self, prefix: str | None, state: str | None, limit: int, holder: str | None = None
    ) -> list[Lease]:
        where, args = ["1=1"], []  # type: list[str], list[Any]
        if prefix:
            where.append("(resource = ? OR (resource >= ? AND resource < ?))")
            args += [prefix, prefix + "/", prefix + "0"]
        if state:
            where.append("state = ?")
            args.append(state)
        if holder:
            where.append("holder = ?")
            args.append(holder)
        rows = self.c.execute(
            f"SELECT {LEASE_COLS} FROM leases WHERE {' AND '.join(where)}"
            " ORDER BY fencing_token DESC LIMIT ?",
            [*args, limit],
        )
        return [to_lease(r) for r in rows]

    # waiters
    async def insert_waiter(self, waiter: Waiter) -> Waiter:
        self._w()
        cur = self.c.execute(
            "INSERT INTO waiters (waiter_id, resource, principal, request, enqueued_at, deadline)"
            " VALUES (?,?,?,?,?,?)",
            waiter_values(waiter),
        )
        waiter.seq = int(cur.lastrowid or 0)
        self.store._known["waiters"] = True
        return waiter

    async def delete_waiter(self, waiter_id: str) -> bool:
        self._w()
        self.store._known.pop("waiters", None)  # maybe the last one: look again when asked
        return self.c.execute("DELETE FROM waiters WHERE waiter_id = ?", (waiter_id,)).rowcount > 0

    async def waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None, limit: int | None = None
    ) -> list[Waiter]:
        if self._knows_none("waiters", _ANY_WAITER):
            return []
        where, args = _related_sql("resource", paths)
        if before_seq is not None:
            where += " AND seq < ?"
            args.append(before_seq)
        sql = (
            "SELECT seq, waiter_id, resource, principal, request, enqueued_at, deadline"
            f" FROM waiters WHERE {where} ORDER BY seq"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [to_waiter(r) for r in self.c.execute(sql, args)]

    async def waiters_of(self, principal: str) -> list[Waiter]:
        if self._knows_none("waiters", _ANY_WAITER):
            return []
        rows = self.c.execute(
            "SELECT seq, waiter_id, resource, principal, request, enqueued_at, deadline"
            " FROM waiters WHERE principal = ? ORDER BY seq",
            (principal,),
        )
        return [to_waiter(r) for r in rows]

    async def count_waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None
    ) -> int:
        if self._knows_none("waiters", _ANY_WAITER):
            return 0
        where, args = _related_sql("resource", paths)
        if before_seq is not None:
            where += " AND seq < ?"
            args.append(before_seq)
        return int(
            self.c.execute(f"SELECT count(*) FROM waiters WHERE {where}", args).fetchone()[0]
        )

    async def gauges(self) -> tuple[int, int]:
        held = self.c.execute(
            "SELECT count(*) FROM leases WHERE state = 'held' AND expires_at > ?", (self.now(),)
        ).fetchone()[0]
        waiting = self.c.execute("SELECT count(*) FROM waiters").fetchone()[0]
        return int(held), int(waiting)

    # objects
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
        self.c.execute(
            "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT (kind, id) DO UPDATE SET"
            " resource = excluded.resource, state = excluded.state, data = excluded.data,"
            " expires_at = excluded.expires_at",
            (kind, obj_id, resource, state, json.dumps(data), self._now, expires_at),
        )
        for key in [k for k in self.store._known if k != "waiters"]:
            del self.store._known[key]

    async def get_object(
        self, kind: str, obj_id: str, for_update: bool = False
    ) -> dict[str, Any] | None:
        r = self.c.execute(
            "SELECT data, state, expires_at FROM objects WHERE kind = ? AND id = ?", (kind, obj_id)
        ).fetchone()
        return to_object(r) if r else None

    async def objects_related(
        self, kind: str, paths: Sequence[str], states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        where, args = _related_sql("resource", paths)
        sql = f"SELECT data, state, expires_at FROM objects WHERE kind = ? AND {where}"
        args = [kind, *args]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        return [to_object(r) for r in self.c.execute(sql + " ORDER BY created_at, id", args)]

    async def objects_related_many(
        self, specs: Sequence[tuple[str, Sequence[str]]], paths: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        spec = tuple((k, tuple(sts)) for k, sts in specs)
        live = _live_objects(spec)
        if self._knows_none(live.known_key, live.probe, live.probe_args):
            return {k: [] for k, _ in specs}
        at = tuple(paths)
        key = ("objects", spec, at)
        hit = self._memo.get(key)
        if hit is None:
            sql, args = _objects_related_many_sql(spec, at)
            hit = {k: [] for k in live.wanted}
            for kind, *rest in self.c.execute(sql, args):
                if rest[1] in live.wanted[kind]:
                    hit[kind].append(to_object(rest))
            self._memo[key] = hit
        return {k: list(v) for k, v in hit.items()}

    async def objects_due(
        self, kind: str, state: str, now: float, limit: int
    ) -> list[dict[str, Any]]:
        rows = self.c.execute(
            "SELECT data, state, expires_at FROM objects WHERE kind = ? AND state = ?"
            " AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (kind, state, now, limit),
        )
        return [to_object(r) for r in rows]

    async def list_objects(
        self, kind: str, states: Sequence[str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT data, state, expires_at FROM objects WHERE kind = ?", [kind]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        return [to_object(r) for r in self.c.execute(sql, [*args, limit])]

    # ledger
    async def append(self, fields: dict[str, Any]) -> Sealed:
        self._w()
        seq, prev = self.store._head
        s = seal(seq + 1, prev, self._now, fields)
        self.c.execute(
            "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash) VALUES (?,?,?,?,?,?,?)",
            (s.seq, s.timestamp, s.event, s.resource, s.lock_key, s.body, s.hash),
        )
        self.store._head = (s.seq, s.hash)
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
        where, args = ["seq > ?"], [after_seq]  # type: list[str], list[Any]
        ts_sql, ts_args = [], []  # type: list[str], list[Any]
        if since is not None:
            ts_sql.append("ts >= ?")
            ts_args.append(since)
        if until is not None:
            ts_sql.append("ts <= ?")
            ts_args.append(until)
        if prefix or ts_sql:
            # walk an index of the filter, never the whole table in seq order: the time
            # index for a window of few rows, else the resource index ("+col" rules an
            # index out)
            where[0] = "+seq > ?"
        if prefix and (not ts_sql or not self._few_rows(since, until)):
            ts2 = [t.replace("ts", "+ts") for t in ts_sql]
            where.append(
                "((resource = ?"
                + "".join(f" AND {t}" for t in ts_sql)
                + ") OR (resource >= ? AND resource < ?"
                + "".join(f" AND {t}" for t in ts2)
                + "))"
            )
            args += [prefix, *ts_args, prefix + "/", prefix + "0", *ts_args]
        else:
            where += ts_sql
            args += ts_args
            if prefix:
                where.append("(+resource = ? OR (+resource >= ? AND +resource < ?))")
                args += [prefix, prefix + "/", prefix + "0"]
        rows = self.c.execute(
            f"SELECT body, hash FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*args, limit],
        )
        return [row_from(b, h) for b, h in rows]

    def _few_rows(self, since: float | None, until: float | None, cap: int = 50_000) -> bool:
        """Does the window hold at most ``cap`` rows (all resources)? Counts index entries."""
        sql = "SELECT count(*) FROM (SELECT 1 FROM audit WHERE ts >= ? AND ts <= ? LIMIT ?)"
        lo = float("-inf") if since is None else since
        hi = float("inf") if until is None else until
        return int(self.c.execute(sql, (lo, hi, cap + 1)).fetchone()[0]) <= cap

    async def audit_head(self) -> tuple[int, str]:
        r = self.c.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (r[0], r[1]) if r else (0, GENESIS)

    async def audit_latest(
        self, resources: Sequence[str], events: Sequence[str], at: float
    ) -> dict[str, Any] | None:
        best: tuple[int, str, str] | None = None
        ev = ",".join("?" * len(events))
        for res in resources:  # one indexed probe per resource
            r = self.c.execute(
                f"SELECT seq, body, hash FROM audit WHERE resource = ? AND ts <= ?"
                f" AND event IN ({ev}) ORDER BY ts DESC, seq DESC LIMIT 1",
                [res, at, *events],
            ).fetchone()
            if r and (best is None or r[0] > best[0]):
                best = r
        return row_from(best[1], best[2]) if best else None

    async def audit_for_lock_key(self, lock_key: str) -> list[dict[str, Any]]:
        rows = self.c.execute(
            "SELECT body, hash FROM audit WHERE lock_key = ? ORDER BY seq", (lock_key,)
        )
        return [row_from(b, h) for b, h in rows]


class SQLiteStore(Store):
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``."""

    def __init__(self, url: str, clock: Clock | None = None) -> None:
        super().__init__()
        self.url = url
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc:
            raise Invalid(f"store URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
        self.path = path[1:] if path.startswith("/") else path
        if not self.path:
            raise Invalid(f"store URL {url!r} names no file (e.g. sqlite:///writ.db)")
        self.memory = self.path == ":memory:"
        self.clock = clock or Clock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writ-sqlite-commit")
        self._head: tuple[int, str] = (0, GENESIS)
        self._token = 0
        # What the writer knows to be absent ("no waiter at all", "no live policy object"),
        # so the hot path can skip those lookups. Forgotten when another connection has
        # committed (PRAGMA data_version moved), a savepoint rolled back or a batch failed.
        self._known: dict[Any, bool] = {}
        self._data_version: int | None = None
        self._commit_s = 0.0  # recent COMMIT (fsync) time, a moving average
        self.batches = 0  # commits made (for tests and benchmarks)
        self.transactions = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def open(self) -> None:
        if self._w is not None:
            return
        if not self.memory:
            parent = os.path.dirname(os.path.abspath(self.path))  # noqa: ASYNC240 - once, at open
            os.makedirs(parent, exist_ok=True)
        try:
            self._w = self._connect()
            self._migrate(self._w)
            self._r = self._w if self.memory else self._connect()
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    def _migrate(self, c: sqlite3.Connection) -> None:
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "CREATE TABLE IF NOT EXISTS writ_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            have = {r[0] for r in c.execute("SELECT version FROM writ_migrations")}
            for version, (name, sql) in enumerate(MIGRATIONS, start=1):
                if version in have:
                    continue
                for stmt in sql.split(";\n"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(
                    "INSERT INTO writ_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (version, name),
                )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        while self._draining:
            await self._idle.wait()
        for conn in {id(x): x for x in (self._r, self._w) if x is not None}.values():
            conn.close()
        self._w = self._r = None
        self._io.shutdown(wait=True)
        # the store may be opened again (an app's lifespan can run twice): a fresh executor
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writ-sqlite-commit")

    # -- writes: group commit ------------------------------------------------------------
    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self._w is None:
            raise Unavailable("store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if not self._draining:
            self._draining = True
            self._idle.clear()
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the requests arriving in this tick join the batch
                batch, self._pending = self._pending, []
                try:
                    await self._commit_batch(loop, batch)
                except Exception as exc:  # never leave a caller waiting on a failed batch
                    self._known.clear()
                    if self._w is not None and self._w.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._w.execute("ROLLBACK")
                    self._fail_all(batch, exc)
        finally:
            self._draining = False
            self._idle.set()

    async def _commit_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]],
    ) -> None:
        c = self._w
        assert c is not None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        notes: list[tuple[str, dict[str, Any]]] = []
        done: list[SQLiteTx] = []
        began = time.perf_counter()
        try:
            c.execute("BEGIN IMMEDIATE")
            # another process may have written since our last batch: re-read the heads,
            # and forget what we knew if anyone else committed in between
            version = c.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._known.clear()
                self._data_version = version
            r = c.execute(_HEADS).fetchone()
            self._head = (r[1], r[2]) if r[1] is not None else (0, GENESIS)
            self._token = int(r[0])
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        head0, token0 = self._head, self._token
        for fn, fut in batch:
            if fut.done():
                continue
            head = self._head
            failure: BaseException | None = None
            for attempt in (1, 2):
                c.execute("SAVEPOINT tx")
                tx = SQLiteTx(self, c, writable=True)
                try:
                    result: Any = _run_now(fn(tx))  # type: ignore[arg-type]
                except BaseException as exc:
                    c.execute("ROLLBACK TO tx")
                    c.execute("RELEASE tx")
                    self._known.clear()
                    # the chain head goes back; the token counter does not: a token drawn
                    # by a transaction that rolled back is never handed out again (contract)
                    self._head = head
                    if attempt == 1 and _tolerate(c, exc):
                        continue  # once more, reading hand-written bad text leniently
                    failure = exc
                break
            if failure is not None:
                if isinstance(failure, sqlite3.Error):
                    failure = Unavailable(f"store error: {failure}")
                outcomes.append((fut, None, failure))
                continue
            c.execute("RELEASE tx")
            outcomes.append((fut, result, None))
            notes.extend(tx.notes)
            done.append(tx)
        if self._token != token0:
            c.execute("UPDATE meta SET value = ? WHERE key = 'fencing_token'", (self._token,))
        try:
            started = time.perf_counter()
            if len(outcomes) <= 1 and self._commit_s < INLINE_COMMIT_MAX_S:
                c.execute("COMMIT")  # a lone transaction on a quick disk: no thread hop
            else:
                await loop.run_in_executor(self._io, c.execute, "COMMIT")
            self._commit_s = 0.8 * self._commit_s + 0.2 * (time.perf_counter() - started)
        except Exception as exc:  # sqlite3.Error, or the executor refusing work
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._head, self._token = head0, token0
            self._known.clear()
            self._fail_all([(None, f) for f, _, _ in outcomes], exc)
            return
        self.batches += 1
        self.transactions += len(outcomes)
        if self.commit_observers:
            took = time.perf_counter() - began
            for observe in self.commit_observers:
                observe(took)
        for fut, result, failure in outcomes:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(result)
        if self._head != head0:
            notes.append(("audit", {"seq": self._head[0]}))
        self._deliver(notes)
        for tx in done:
            tx.committed()

    @staticmethod
    def _fail_all(batch: Sequence[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
        err = Unavailable(f"store commit failed: {exc}; nothing of this request was kept")
        for _fn, fut in batch:
            if not fut.done():
                fut.set_exception(err)

    def principals_generation(self) -> int | None:
        # Triggers count every UPDATE and DELETE of principals, by writ or by hand in the
        # sqlite3 shell (migration 2): one indexed read, ~5 us, instead of the ~25 us of
        # looking the token up again on every request.
        if self.memory:
            return 0  # nobody else can reach an in-memory store; writ's own changes notify
        c = self._r
        if c is None:
            raise Unavailable("store is closed")
        try:
            r = c.execute("SELECT value FROM meta WHERE key = 'principals_gen'").fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"store read failed: {exc}") from exc
        return int(r[0]) if r else 0

    async def ready(self) -> str | None:
        async def version(tx: Tx) -> int:
            c = tx.c  # type: ignore[attr-defined]
            return int(
                c.execute("SELECT coalesce(max(version), 0) FROM writ_migrations").fetchone()[0]
            )

        try:
            have = await self.read(version)
        except WritError as exc:
            return exc.message
        if have != len(MIGRATIONS):
            return f"the schema is at migration {have}; this writ expects {len(MIGRATIONS)}"
        return None

    # -- reads ---------------------------------------------------------------------------
    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        c = self._r
        if c is None:
            raise Unavailable("store is closed")
        if c is self._w:  # in-memory: share the writer, between batches
            while self._draining:
                await self._idle.wait()
        try:
            if c is not self._w:
                c.execute("BEGIN")
            try:
                return _run_now(fn(SQLiteTx(self, c, writable=False)))  # type: ignore[arg-type]
            finally:
                if c is not self._w:
                    c.execute("COMMIT")
        except sqlite3.Error as exc:
            if _tolerate(c, exc):
                return await self.read(fn)  # once more, reading bad text leniently
            raise Unavailable(f"store read failed: {exc}") from exc

    def audit_stream(
        self, after_seq: int = 0, batch: int = 10_000
    ) -> AsyncIterator[list[tuple[int, str, str]]]:
        return self._audit_pages("seq, body, hash", after_seq, batch)

    def audit_records(self, after_seq: int = 0, batch: int = 10_000) -> AsyncIterator[list[Record]]:
        return self._audit_pages("seq, body, hash, ts, event, resource, lock_key", after_seq, batch)

    async def _audit_pages(
        self, columns: str, after_seq: int, batch: int
    ) -> AsyncIterator[list[Any]]:
        if self._r is None:
            raise Unavailable("store is closed")
        conn = self._r if self.memory else self._connect()
        try:
            last = after_seq
            while True:
                query = f"SELECT {columns} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
                try:
                    rows = conn.execute(query, (last, batch)).fetchall()
                except sqlite3.OperationalError as exc:
                    if not _tolerate(conn, exc):
                        raise
                    # a hand-written body that is not UTF-8: read leniently, so the row's
                    # hash no longer matches and verify names it
                    rows = conn.execute(query, (last, batch)).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                yield rows
                await asyncio.sleep(0)
        finally:
            if conn is not self._r:
                conn.close()

    # -- export and import -----------------------------------------------------------------
    async def export_rows(
        self, batch: int = 10_000
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        if self._r is None:
            raise Unavailable("store is closed")
        conn = self._r if self.memory else self._connect()
        try:
            if not self.memory:
                conn.execute("BEGIN")  # one snapshot for the whole dump (WAL)
            r = conn.execute("SELECT value FROM meta WHERE key = 'fencing_token'").fetchone()
            yield "meta", [{"fencing_token": int(r[0]) if r else 0}]
            for table in TABLES:
                cur = conn.execute(export_sql(table))
                while True:
                    rows = cur.fetchmany(batch)
                    if not rows:
                        break
                    yield table, [export_row(table, r) for r in rows]
                    await asyncio.sleep(0)
        finally:
            if not self.memory:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")
                conn.close()

    async def import_rows(
        self, batches: AsyncIterable[tuple[str, list[dict[str, Any]]]]
    ) -> dict[str, int]:
        c = self._w
        if c is None:
            raise Unavailable("store is closed")
        while self._draining:  # take the writer between two group commits
            await self._idle.wait()
        self._draining = True
        self._idle.clear()
        counts: dict[str, int] = {}
        self._known.clear()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                check_empty(
                    self.url,
                    {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES},
                )
                token = 0
                async for table, rows in batches:
                    if table == "meta":
                        token = max([token, *(int(r.get("fencing_token") or 0) for r in rows)])
                        continue
                    if table not in TABLES:
                        raise Invalid(f"cannot import unknown table {table!r}")
                    cols = TABLES[table]
                    c.executemany(
                        f"INSERT INTO {table} ({', '.join(cols)})"
                        f" VALUES ({','.join('?' * len(cols))})",
                        [import_row(table, r) for r in rows],
                    )
                    counts[table] = counts.get(table, 0) + len(rows)
                    if table == "leases" and rows:
                        token = max(token, *(int(r["fencing_token"]) for r in rows))
                c.execute(
                    "UPDATE meta SET value = max(value, ?) WHERE key = 'fencing_token'", (token,)
                )
                counts["meta"] = token
                await asyncio.get_running_loop().run_in_executor(self._io, c.execute, "COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"import into {self.path!r} failed: {exc}") from exc
        finally:
            self._draining = False
            self._idle.set()
            if self._pending:
                self._draining = True
                self._idle.clear()
                asyncio.get_running_loop().create_task(self._drain())
        return counts
