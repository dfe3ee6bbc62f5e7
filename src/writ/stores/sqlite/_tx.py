"""The SQLite transaction: the Tx interface on one connection inside a savepoint."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import (
    Sequence,
)
from typing import TYPE_CHECKING, Any

from writ.core.errors import Conflict
from writ.core.ledger import GENESIS, Sealed, row_from, seal
from writ.core.models import Lease, Principal, Waiter
from writ.stores.base import LEASE_LIFE, OBJECT_COLUMNS, PROBE_ROWS, WAIT_ENDS, Tx
from writ.stores.rows import (
    LEASE_COLS,
    PRINCIPAL_COLS,
    PRINCIPAL_INSERT_COLS,
    WAITER_COLS,
    lease_values,
    object_row,
    principal_values,
    readable,
    spec_of,
    to_lease,
    to_object,
    to_principal,
    to_waiter,
    waiter_values,
)
from writ.stores.sqlite._sql import (
    _ANY_WAITER,
    _held_related_sql,
    _live_objects,
    _objects_related_many_sql,
    _related_sql,
)

if TYPE_CHECKING:
    from writ.stores.sqlite._store import SQLiteStore

# a filter whose index holds fewer rows than this is read by that index at once
SMALL = 5000
FEW_LEASES = 1000  # the same for leases (sorting 1,000 is nothing; counting is the cost)


_LIFE = ",".join("?" * len(LEASE_LIFE))
_ENDS = ",".join("?" * len(WAIT_ENDS))


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

    async def token_counter(self) -> int:
        r = self.c.execute("SELECT value FROM meta WHERE key = 'fencing_token'").fetchone()
        return int(r[0]) if r and r[0].__class__ is int else 0  # a BLOB, say: no counter

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
        return readable(self, rows, to_principal)

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

    async def held_leases(self) -> list[Lease]:
        rows = self.c.execute(f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held'")
        return readable(self, rows, to_lease)

    async def due_leases(self, now: float, limit: int) -> list[Lease]:
        rows = self.c.execute(
            f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held' AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return readable(self, rows, to_lease)  # one written by hand stops no other's end

    async def next_expiry(self) -> float | None:
        r = self.c.execute("SELECT min(expires_at) FROM leases WHERE state = 'held'").fetchone()
        return r[0] if r else None

    async def list_leases(
        self,
        prefix: str | None,
        state: str | None,
        limit: int,
        holder: str | None = None,
        before: int | None = None,
    ) -> list[Lease]:
        where, args = ["1=1"], []  # type: list[str], list[Any]
        if before is not None:
            where.append("fencing_token < ?")
            args.append(before)
        if prefix:
            # the resource index for a prefix of few leases; else the tokens' walk, newest
            # first, finds a broad one's at once (the index sorted them all: 147 ms at 67,000)
            few = self._count(*_lease_prefix(prefix), FEW_LEASES) < FEW_LEASES
            col = "resource" if few else "+resource"
            where.append(f"({col} = ? OR ({col} >= ? AND {col} < ?))")
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
        return readable(self, rows, to_lease)

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

    async def waiter_seqs(self) -> list[int]:
        return [r[0] for r in self.c.execute("SELECT seq FROM waiters ORDER BY seq")]

    async def waiters_between(self, after: int, last: int) -> list[Waiter]:
        rows = self.c.execute(
            f"SELECT {WAITER_COLS} FROM waiters WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, last),
        )
        return readable(self, rows, to_waiter)

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
        spec = spec_of(specs)
        live = _live_objects(spec)
        if self._knows_none(live.known_key, live.probe, live.probe_args):
            return {k: [] for k, _ in specs}
        at = tuple(paths)
        key = ("objects", spec, at)
        hit = self._memo.get(key)
        if hit is None:
            sql, args = _objects_related_many_sql(spec, at)
            hit = {k: [] for k in live.w.states_of}
            for kind, *rest in self.c.execute(sql, args):
                if rest[1] in live.w.states_of[kind]:
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

    async def object_keys(self, kind: str, states: Sequence[str] | None = None) -> list[str]:
        sql, args = "SELECT id FROM objects WHERE kind = ?", [kind]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        return [r[0] for r in self.c.execute(sql + " ORDER BY id", args)]

    async def objects_by_key(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        rows = self.c.execute(
            f"SELECT {', '.join(OBJECT_COLUMNS)} FROM objects WHERE kind = ?"
            f" AND id IN ({','.join('?' * len(ids))}) ORDER BY id",
            [kind, *ids],
        )
        return [object_row(r) for r in rows]

    async def objects_made(
        self, probes: Sequence[tuple[str, str, float, float]]
    ) -> list[list[str]]:
        sql = (
            "SELECT id FROM objects WHERE kind = ? AND resource = ? AND created_at >= ?"
            " AND created_at <= ? ORDER BY created_at, id"
        )
        return [[r[0] for r in self.c.execute(sql, p)] for p in probes]

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
        upto: int | None = None,
    ) -> list[dict[str, Any]]:
        if upto is not None:
            return self._audit_walk(after_seq, upto, limit, prefix, since, until)
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
        if prefix and (not ts_sql or self._by_resource(prefix, since, until)):
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
            f"SELECT seq, body, hash FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*args, limit],
        )
        return [row_from(b, h, s) for s, b, h in rows]

    def _audit_walk(
        self,
        lo: int,
        hi: int,
        limit: int,
        prefix: str | None,
        since: float | None,
        until: float | None,
    ) -> list[dict[str, Any]]:
        """The rows in ``(lo, hi]`` under the filters, walked in seq order: no index of a
        filter ("+col" rules one out), so the cost is the window's, not the filter's."""
        where, args = ["seq > ?", "seq <= ?"], [lo, hi]  # type: list[str], list[Any]
        if prefix:
            where.append("(+resource = ? OR (+resource >= ? AND +resource < ?))")
            args += [prefix, prefix + "/", prefix + "0"]
        for op, t in ((">=", since), ("<=", until)):
            if t is not None:
                where.append(f"+ts {op} ?")
                args.append(t)
        rows = self.c.execute(
            f"SELECT seq, body, hash FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            [*args, limit],
        )
        return [row_from(b, h, s) for s, b, h in rows]

    async def audit_candidates(
        self, prefix: str | None, since: float | None, until: float | None, cap: int
    ) -> int:
        counts = []
        if prefix:
            counts.append(self._count(*self._prefix_rows(prefix), cap))
        if since is not None or until is not None:
            counts.append(self._count(*self._window_rows(since, until), cap))
        return min(counts, default=0)

    def _by_resource(self, prefix: str, since: float | None, until: float | None) -> bool:
        """Read rows under ``prefix`` in a time window by the resource index (else the time
        index): when the prefix has few rows, or the window many."""
        small = self._count(*self._prefix_rows(prefix), SMALL) < SMALL
        return small or not self._few_rows(since, until)

    @staticmethod
    def _prefix_rows(prefix: str) -> tuple[str, list[Any]]:
        sql = "SELECT 1 FROM audit WHERE resource = ? OR (resource >= ? AND resource < ?)"
        return sql, [prefix, prefix + "/", prefix + "0"]

    @staticmethod
    def _window_rows(since: float | None, until: float | None) -> tuple[str, list[Any]]:
        lo = float("-inf") if since is None else since
        return "SELECT 1 FROM audit WHERE ts >= ? AND ts <= ?", [
            lo,
            float("inf") if until is None else until,
        ]

    def _count(self, sql: str, args: list[Any], cap: int) -> int:
        """How many rows ``sql`` selects, counted up to ``cap`` (its index entries)."""
        count = f"SELECT count(*) FROM ({sql} LIMIT ?)"
        return int(self.c.execute(count, [*args, cap]).fetchone()[0])

    def _few_rows(self, since: float | None, until: float | None, cap: int = 50_000) -> bool:
        """Does the window hold at most ``cap`` rows (all resources)? Counts index entries."""
        return self._count(*self._window_rows(since, until), cap + 1) <= cap

    async def audit_head(self) -> tuple[int, str]:
        r = self.c.execute("SELECT seq, hash FROM audit_head").fetchone()
        return (r[0], r[1]) if r and r[0] else (0, GENESIS)

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
        return row_from(best[1], best[2], best[0]) if best else None

    async def audit_waits_ended(
        self, windows: Sequence[tuple[str, float, float]], waiter_ids: Sequence[str]
    ) -> list[tuple[int, str, str, float, str]]:  # any waiter: picked in process
        out: list[tuple[int, str, str, float, str]] = []
        for resource, since, until in windows:  # an index range each (resource, ts)
            out += self.c.execute(
                "SELECT seq, body, hash, ts, resource FROM audit WHERE resource = ?"
                f" AND ts >= ? AND ts <= ? AND event IN ({_ENDS})"
                " AND instr(body, '; waiter ') > 0 ORDER BY seq",
                (resource, since, until, *WAIT_ENDS),
            ).fetchall()
        return out

    async def audit_at(self, resource: str, event: str, at: float) -> list[dict[str, Any]]:
        rows = self.c.execute(
            "SELECT seq, body, hash FROM audit WHERE resource = ? AND ts >= ? AND ts <= ?"
            " AND event = ? ORDER BY seq",
            (resource, at - 1e-6, at + 1e-6, event),
        )
        return [row_from(b, h, s) for s, b, h in rows]

    async def audit_window(
        self, resource: str, events: Sequence[str], since: float, until: float
    ) -> list[dict[str, Any]]:
        rows = self.c.execute(
            "SELECT seq, body, hash FROM audit WHERE resource = ? AND ts >= ? AND ts <= ?"
            f" AND event IN ({','.join('?' * len(events))}) ORDER BY ts, seq LIMIT ?",
            [resource, since, until, *events, PROBE_ROWS],
        )
        return [row_from(b, h, s) for s, b, h in rows]

    async def audit_for_lock_key(self, lock_key: str) -> list[dict[str, Any]]:
        rows = self.c.execute(
            "SELECT seq, body, hash FROM audit WHERE lock_key = ? ORDER BY seq", (lock_key,)
        )
        return [row_from(b, h, s) for s, b, h in rows]

    async def audit_lease_life(
        self, lock_key: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        first = self.c.execute(
            "SELECT seq, body, hash FROM audit WHERE lock_key = ? AND event = 'lease.granted'"
            " ORDER BY seq LIMIT 1",
            (lock_key,),
        ).fetchone()
        last = self.c.execute(
            f"SELECT seq, body, hash FROM audit WHERE lock_key = ? AND event IN ({_LIFE})"
            " ORDER BY seq DESC LIMIT 1",
            (lock_key, *LEASE_LIFE),
        ).fetchone()
        return (
            row_from(first[1], first[2], first[0]) if first else None,
            row_from(last[1], last[2], last[0]) if last else None,
        )


def _lease_prefix(prefix: str) -> tuple[str, list[Any]]:
    sql = "SELECT 1 FROM leases WHERE resource = ? OR (resource >= ? AND resource < ?)"
    return sql, [prefix, prefix + "/", prefix + "0"]
