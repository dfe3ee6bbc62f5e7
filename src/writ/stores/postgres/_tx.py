"""PgTx: the Tx interface of the PostgreSQL store, alone or inside a batch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from writ.core.errors import Conflict
from writ.core.ledger import GENESIS, Sealed, row_from, seal
from writ.core.models import Lease, Principal, Waiter
from writ.stores.base import Tx
from writ.stores.postgres._batch import (
    _RELEASE,
    _ROLLBACK_TO,
    _SAVEPOINT,
    _BatchConn,
    _Live,
    _Merged,
    _NotYet,
)
from writ.stores.postgres._schema import _READ_CLOCK, _READ_ONLY
from writ.stores.postgres._sql import _copy, _prefix_sql, _related_sql, _simple
from writ.stores.postgres._verify import VerifyReads
from writ.stores.rows import (
    LEASE_COLS,
    PRINCIPAL_COLS,
    PRINCIPAL_INSERT_COLS,
    WAITER_COLS,
    lease_values,
    principal_values,
    readable,
    to_lease,
    to_object,
    to_principal,
    to_waiter,
    waiter_values,
    wanted_objects,
)

if TYPE_CHECKING:
    from writ.stores.postgres._store import PostgresStore
    from writ.stores.postgres._writer import _Writer


class _Again(Exception):
    """A read that begins with its first statement asked for the time before it (or a single
    read for a second statement): it runs again, the time first (see PostgresStore.read)."""

    def __init__(self, time_first: bool) -> None:
        super().__init__("time first" if time_first else "a second statement")
        self.time_first = time_first


class _Outside:
    """``tx.c`` of a read whose transaction has not begun, or of a single read that has
    ended: a statement sent around ``_all`` would run outside the read's transaction."""

    def __init__(self, time_first: bool) -> None:
        self.time_first = time_first

    async def execute(self, query: str, args: Sequence[Any] | None = None) -> Any:
        raise _Again(self.time_first)


class PgTx(VerifyReads, Tx):
    """One transaction: in a write batch (``b``), against the live replica and the batch's
    connection; in a read, on a REPEATABLE READ snapshot. A read ``begun`` already has its
    transaction and the time (BEGIN and the clock went first); otherwise the transaction
    begins with its first statement — BEGIN, the statement and the clock after it in one
    round trip — and a ``single`` read ends there too, COMMIT in the same query. Asking the
    time before the first statement then raises :class:`_Again`, as does a single read's
    second statement. The clock is read after the snapshot was taken: a lease is judged
    expired a little early, never late.

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
        single: bool = False,
        begun: bool = True,
    ) -> None:
        self.store = store
        # in a batch, statements on ``c`` go through the batch (behind this transaction's
        # savepoint, after what is buffered), so a method written against a plain
        # connection keeps its transaction's atomicity
        self.c: Any = _BatchConn(self) if batch is not None else conn
        self._conn = conn
        self.writable = writable
        self.notes = []
        self._single = single  # a single read: one statement, COMMIT with it
        self._begun = begun or batch is not None  # the transaction (and the time) are here
        if not self._begun:
            self.c = _Outside(time_first=True)
        self._now = now
        self.b = batch
        self.start = len(batch.pending) if batch else 0
        self.head0 = batch.head if batch else (0, GENESIS)
        self.sp_sent = False
        self.m = _Merged()  # this transaction's rows of the hot tables
        self.undo: list[Callable[[], None]] = []

    def now(self) -> float:
        if not self._begun:
            raise _Again(time_first=True)
        return self._now

    @property
    def begun(self) -> bool:
        """Whether this read's transaction began (and must end with COMMIT, unless single)."""
        return self._begun

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
        if self.b is not None:
            return await self.b.send(self, query, args)
        if not self._begun:  # the first statement begins the read
            first = psycopg.AsyncClientCursor(self._conn)
            end = ";\nCOMMIT" if self._single else ""
            sql = f"{_READ_ONLY};\n{query};\n{_READ_CLOCK}{end}"
            await first.execute(sql, args, prepare=False)
            first.nextset()  # past BEGIN
            rows = await first.fetchall()
            first.nextset()
            clock = await first.fetchone()
            assert clock is not None
            self._now = float(clock[0])
            self._begun = True
            self.c = _Outside(time_first=False) if self._single else self._conn
            return rows
        if self._single:
            raise _Again(time_first=False)
        cur = await self._conn.execute(query, args)
        return await cur.fetchall()

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

    async def token_counter(self) -> int:
        sql = "SELECT coalesce(pg_sequence_last_value('fencing_token'), 0)"
        return int((await self._one(sql))[0])

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
        return readable(self, rows, to_principal)

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
        return readable(self, rows, to_lease)  # one written by hand stops no other's end

    async def next_expiry(self) -> float | None:
        if self.b is not None:
            return self.b.live.next_expiry()
        r = await self._one("SELECT min(expires_at) FROM leases WHERE state = 'held'")
        return r[0] if r else None

    async def list_leases(
        self,
        prefix: str | None,
        state: str | None,
        limit: int,
        holder: str | None = None,
        before: int | None = None,
    ) -> list[Lease]:
        where, args = ["true"], []  # type: list[str], list[Any]
        if before is not None:
            where.append("fencing_token < %s")
            args.append(before)
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
        return readable(self, rows, to_lease)

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
        a grant with no lock-delay, freeze or protected change anywhere asks nothing (and,
        once it knows, spends no more than a set lookup on it)."""
        want = wanted_objects(specs)
        if self.b is not None:
            live = self.b.live
            if want.pairs in live.absent:
                return {kind: [] for kind in want.kinds}
            present = live.present
            unknown = [p for p in want.pairs if p not in present]
            if unknown:
                rows = await self._all(
                    "SELECT q.k, q.s FROM unnest(%s::text[], %s::text[]) AS q(k, s)"
                    " WHERE EXISTS (SELECT 1 FROM objects WHERE kind = q.k AND state = q.s)",
                    ([k for k, _ in unknown], [s for _, s in unknown]),
                )
                found = {(k, s) for k, s in rows}
                for p in unknown:
                    present[p] = p in found
            if not any(present.get(p, True) for p in want.pairs):
                live.absent.add(want.pairs)
                return {kind: [] for kind in want.kinds}
        where, args = _related_sql("resource", paths)
        rows = await self._all(
            "SELECT kind, data, state, expires_at FROM objects WHERE kind = ANY(%s)"
            f" AND {where} AND state = ANY(%s) ORDER BY created_at, id",
            [list(want.kinds), *args, list(want.states)],
        )
        hit: dict[str, list[dict[str, Any]]] = {kind: [] for kind in want.kinds}
        for kind, *rest in rows:
            if rest[1] in want.states_of[kind]:
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
        upto: int | None = None,
    ) -> list[dict[str, Any]]:
        where, args = ["seq > %s"], [after_seq]  # type: list[str], list[Any]
        if upto is not None:
            where.append("seq <= %s")
            args.append(upto)
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
            f"SELECT seq, body, hash FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s",
            [*args, limit],
        )
        return [row_from(b, h, s) for s, b, h in rows]

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
        return row_from(r[1], r[2], r[0]) if r else None

    async def audit_for_lock_key(self, lock_key: str) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT seq, body, hash FROM audit WHERE lock_key = %s ORDER BY seq", (lock_key,)
        )
        return [row_from(b, h, s) for s, b, h in rows]


class _Batch:
    """One group commit: one PostgreSQL transaction under the ``audit_head`` lock, shared
    by the write transactions that arrived together, each run in turn against the live
    replica. Their writes are buffered (``pending``) and go to the server in one query
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
        after: int | None = None,
    ) -> None:
        self.conn = conn
        self.optimistic = optimistic
        # decided ahead (see _Gather._ahead) on top of a batch whose commit is in the air,
        # which leaves the head at version ``after``: nothing may be sent until it is back
        self.ahead = after is not None
        expect = live.version if after is None else after
        self.live = live
        self.head0 = self.head = head
        self.t0, self.p0, self.last = now, time.perf_counter(), now
        self.since = self.p0  # company is awaited from here (see _Gather._company)
        self.token0 = self.token = token
        self.wseq0 = self.wseq = wseq
        self.version = expect + 1  # what this batch's writes are stamped with
        self.pending: list[tuple[str, Sequence[Any]]] = []
        self.m = _Merged()  # the ended transactions' rows, not yet in pending
        # an optimistic batch's lock and check travel with the first statements sent, or
        # inside writ_batch when nothing was sent before the commit (lock_unsent)
        self.lock_unsent = optimistic
        if optimistic:
            self.pending += [
                ("BEGIN ISOLATION LEVEL READ COMMITTED", ()),
                ("SELECT writ_lock_head(%s, %s)", (expect, live.epoch)),
            ]
        self.wrote = self.wrote_waiters = self.wrote_other = False
        self.failed: BaseException | None = None  # a statement failed: the batch is void
        self.committing = False
        self.rowcount = -1  # of the last statement sent with send(..., query, ...)
        self.cur: PgTx | None = None  # the transaction running now
        self.undone: list[Callable[[], None]] = []  # how to take back the committed ones
        self.notes: list[tuple[str, dict[str, Any]]] = []
        self.notify = True  # send the notes by NOTIFY too (decided at commit)

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

    def _may_send(self) -> None:
        if self.ahead and self.failed is None:
            self.failed = _NotYet()
        if self.failed is not None:
            raise self.failed

    async def alone(self, writer: _Writer, query: str, args: Sequence[Any]) -> None:
        """Send ``query`` (``$n`` placeholders) as a prepared statement on its own, on this
        batch's connection (``writer.lone``): nothing else was sent, so it is the whole
        transaction (the connection is in autocommit)."""
        self._may_send()
        self.lock_unsent = False
        try:
            await writer.lone(self.conn, query, args)
        except BaseException as exc:
            self.failed = exc
            raise

    async def send(self, tx: PgTx | None, query: str | None, args: Sequence[Any]) -> list[Any]:
        """Send what is buffered (and ``query``) in one round trip; ``query``'s rows."""
        self._may_send()
        if tx is not None:
            if not tx.sp_sent:
                # the ended transactions' rows before the savepoint, this one's after it
                self.pending[tx.start : tx.start] = [*self.m.statements(), _SAVEPOINT]
                tx.sp_sent = True
            self.pending += tx.m.statements()
        items, self.pending = self.pending, []
        self.lock_unsent = False
        if tx is not None:
            tx.start = 0
        if query is not None:
            items.append((query, args))
        try:
            cur = await _simple(self.conn, items)
            if query is None:
                return []
            while cur.nextset():  # the last statement's result is the one asked for
                pass
            self.rowcount = cur.rowcount
            return await cur.fetchall() if cur.description is not None else []
        except BaseException as exc:
            self.failed = exc
            raise
