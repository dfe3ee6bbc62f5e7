"""Batched writes: the in-memory replica (_Live), the merged transaction (_Batch) and its connection."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from writ.core.errors import Unavailable
from writ.core.ledger import GENESIS, Sealed
from writ.core.models import Lease, Principal, Waiter
from writ.core.resources import related_clauses
from writ.stores.base import Tx
from writ.stores.postgres._sql import _Stmts
from writ.stores.rows import to_waiter

if TYPE_CHECKING:
    from writ.stores.postgres._tx import PgTx, _Batch


_Item = tuple[Callable[["Tx"], Awaitable[Any]], "asyncio.Future[Any]"]


def _take_back(b: _Batch) -> None:
    """Undo what batch ``b``'s transactions (the one running too) did to the replica,
    newest first; they never committed."""
    undo = list(b.undone)
    if b.cur is not None:
        undo += b.cur.undo
    for u in reversed(undo):
        u()
    b.live.forget()


def _undone(b: _Batch) -> _Live:
    """The replica after an optimistic batch was refused: its transactions' changes are
    taken back, so it is as the last commit left it; the next batch catches it up under
    the lock."""
    _take_back(b)
    b.live.foreign_at = time.monotonic()
    return b.live


def _fail(items: Sequence[_Item], exc: BaseException) -> None:
    if not isinstance(exc, Unavailable):
        exc = Unavailable(f"store commit failed: {exc}; nothing of this request was kept")
    for _fn, fut in items:
        if not fut.done():
            fut.set_exception(exc)


class _Split(Exception):
    """A statement failed inside a batch; it was rolled back whole."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _NotYet(Exception):
    """A transaction of a batch decided ahead needs the database before the batch in the
    air came back: the batch is taken back and runs after it, the usual way."""


class _Retry(Exception):
    """The attempt certainly did not commit and may run again from the start."""

    def __init__(self, cause: BaseException, broken: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.broken = broken


class _Live:
    """This process's replica of the live state: the held leases and the wait queue.

    It is exact whenever the write lock is held: a batch first takes the ``audit_head``
    row lock, then applies what other servers committed since this replica's ``version``
    (leases by their ``wseq`` column; the whole queue when ``wv`` moved; everything when
    ``epoch`` moved), and only then decides. ``principals``, ``present`` (which
    ``(kind, state)`` pairs have any policy object at all) and ``absent`` (the specs none of
    whose pairs has one) are caches, forgotten whenever anyone writes outside leases and the
    queue (``ov`` moved) or a transaction fails.

    While this process is the only one writing (nobody else wrote for ``solo_after``
    seconds), a batch skips the catch-up round
    trip: it decides on the replica first and sends BEGIN, ``writ_lock_head(version,
    epoch)`` — the head lock, and an error unless nobody wrote since — its writes and COMMIT
    in one query; if someone did write, the batch is rolled back and run again the
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
        self.absent: set[tuple[tuple[str, str], ...]] = set()  # Wanted.pairs none of has a row

    def forget(self) -> None:
        self.principals.clear()
        self.present.clear()
        self.absent.clear()

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
        if not self.waiters:
            return []
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

    def set_queue(self, rows: Sequence[Any]) -> None:
        """The whole queue, from rows of ``WAITER_COLS`` in seq order."""
        self.waiters = {w.waiter_id: w for w in map(to_waiter, rows)}

    def resort_waiters(self) -> None:
        self.waiters = dict(sorted(self.waiters.items(), key=lambda kv: kv[1].seq))


class _Merged:
    """Writes to the hot tables, buffered to go out as one call of ``writ_rows`` (a JSON
    array per kind: one statement, whatever the batch holds). The kinds touch different
    tables or come in a fixed order (a lease is inserted before it is updated, a waiter
    before it leaves), so their order among other statements does not matter; a lease
    updated twice keeps its last values."""

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

    def rows(self) -> list[str | None]:
        """The buffered rows as ``writ_rows``' arguments (schema migration 4): a JSON array
        per kind, or None; the buffer is emptied."""
        kinds = (
            self.lease_ins,
            list(self.lease_upd.values()),
            self.waiter_ins,
            self.waiter_del,
            [
                (r.seq, r.timestamp, r.event, r.resource, r.lock_key, r.body, r.hash)
                for r in self.audit
            ],
        )
        self.lease_ins, self.lease_upd, self.waiter_ins = [], {}, []
        self.waiter_del, self.audit = [], []
        # allow_nan=False: JSON has no NaN or Infinity (the engine never makes them)
        return [json.dumps(rows, allow_nan=False) if rows else None for rows in kinds]

    def statements(self) -> _Stmts:
        """The buffered rows as one call of ``writ_rows``, or none."""
        args = self.rows()
        return [("SELECT writ_rows(%s, %s, %s, %s, %s)", args)] if any(args) else []


_SAVEPOINT: tuple[str, Sequence[Any]] = ("SAVEPOINT writ_tx", ())
_RELEASE = ("RELEASE SAVEPOINT writ_tx", ())
_ROLLBACK_TO = ("ROLLBACK TO SAVEPOINT writ_tx", ())


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
