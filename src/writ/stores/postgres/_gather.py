"""What a batch takes in besides the transactions it started with: company for queue
joins, what queued while it waited for the head lock, and — decided ahead — what queues while
the batch before it commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg

from writ.stores.base import Tx
from writ.stores.postgres._batch import _Item, _Live, _take_back
from writ.stores.postgres._tx import PgTx, _Batch

if TYPE_CHECKING:
    from writ.stores.postgres._store import PostgresStore

_Done = tuple[asyncio.Future[Any], Any, BaseException | None, PgTx]
# a batch decided ahead: the batch, its decided transactions, and all it took from the queue
_Ahead = tuple[_Batch, list[_Done], list[_Item]]


class _Gather:
    """The gathering half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    batch_max: int
    gather_s: float
    ahead_batches: int
    _queue: list[_Item]
    _arrived: asyncio.Event | None
    _live: _Live | None

    async def _decide(
        self, b: _Batch, fn: Callable[[Tx], Awaitable[Any]], fut: asyncio.Future[Any]
    ) -> _Done:
        """Run one transaction of batch ``b`` on the replica: its result, or the error it
        raised (kept for its caller; a database error fails the whole batch instead)."""
        tx = b.start(self._store())
        try:
            result = await fn(tx)
        except Exception as exc:
            if b.failed is not None or isinstance(exc, psycopg.Error):
                raise
            b.end(tx, False)
            return (fut, None, exc, tx)
        b.end(tx, True)
        return (fut, result, None, tx)

    async def _company(
        self,
        b: _Batch,
        done: list[_Done],
        n: int,
    ) -> list[_Item]:
        """More transactions for batch ``b`` once its ``n`` are decided. A batch that took
        the head lock first takes in those that queued meanwhile — while another server
        held the lock — at the cost of their decisions under it, not of a lock of their
        own (two round trips and an fsync). A batch of queue joins only (``Tx.patient``)
        also waits for company: nobody waits for its commit, and the release that will
        serve those waiters usually arrives a fraction of a millisecond later; one commit
        then does both. That wait happens only while nothing was sent (the lock is not
        held), for ``gather_s`` at most from the batch's start."""
        locked = not b.optimistic and bool(self._queue)
        joins = b.lock_unsent and all(e is None and tx.patient for _, _, e, tx in done)
        if n >= self.batch_max or not (locked or (joins and done)):
            return []
        until = b.since + self.gather_s
        while not self._queue:
            left = until - time.perf_counter()
            if left <= 0:
                return []
            self._arrived = asyncio.Event()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            finally:
                self._arrived = None
        take = self.batch_max - n
        more = [(fn, f) for fn, f in self._queue[:take] if not f.done()]
        del self._queue[:take]
        return more

    def _store(self) -> PostgresStore:
        return self  # type: ignore[return-value]

    # -- deciding ahead ------------------------------------------------------------------
    async def _send_ahead(self, b: _Batch, commit: Awaitable[None]) -> _Ahead | None:
        """Run ``commit``, ``b``'s last round trip, and meanwhile decide the next batch
        (:meth:`_ahead`); that batch, or None. If ``b`` fails, the next batch is taken back
        first (newest first), then ``b``'s error is raised for ``b`` to be undone."""
        send = asyncio.ensure_future(commit)
        send.add_done_callback(_retrieved)  # its error is read below, or moot after a cancel
        ahead = None
        try:
            ahead = await self._ahead(b, send)
        finally:
            if not send.done():
                await asyncio.wait([send])  # never leave the commit running alone
        self.ahead_batches += int(ahead is not None)
        try:
            send.result()
        except BaseException:
            if ahead is not None:
                self._abandon(ahead)
            raise
        return ahead

    async def _ahead(self, b: _Batch, send: asyncio.Future[Any]) -> _Ahead | None:
        """While ``b``'s commit is in the air (``send``), decide what queues meanwhile, as
        the next batch, on the replica as ``b`` leaves it: when ``b`` comes back committed
        the next batch is ready to go at once, its decisions made while this process would
        otherwise have waited. Nothing of it is sent before ``b``'s outcome is known (a
        transaction that must read the database ends the attempt), so its check of the
        head's version is exactly the one it would have made after ``b``. If ``b`` fails,
        the caller takes it back (:meth:`_abandon`) before ``b`` is undone.

        Deciding never waits, so the commit's answer is read once what had queued is
        decided (at most ``batch_max``): the work the next batch does anyway, now before
        ``b``'s callers hear back rather than after. Yielding after each decision, or
        every 16, to hear ``b`` sooner cost 256 clients 11-20 % (measured)."""
        nxt: _Batch | None = None
        items: list[_Item] = []
        done: list[_Done] = []
        wake = asyncio.Event()
        send.add_done_callback(lambda _f: wake.set())
        try:
            while not send.done():
                if not self._queue or len(items) >= self.batch_max:
                    self._arrived = wake
                    try:
                        await wake.wait()
                    finally:
                        self._arrived = None
                    wake.clear()
                    continue
                fn, fut = self._queue.pop(0)
                if fut.done():
                    continue
                if nxt is None:
                    nxt = self._begin_ahead(b)
                items.append((fn, fut))
                done.append(await self._decide(nxt, fn, fut))
                if nxt.failed is not None:
                    raise nxt.failed
        except BaseException as exc:
            if nxt is not None:
                self._abandon((nxt, done, items))
            if not isinstance(exc, Exception):
                raise
            return None  # a transaction needs the database: it runs after b, as usual
        return (nxt, done, items) if nxt is not None else None

    def _begin_ahead(self, b: _Batch) -> _Batch:
        live = b.live
        now = max(time.time() + live.offset, b.last)
        expect = b.version if b.wrote else live.version
        return _Batch(b.conn, live, b.head, now, b.token, b.wseq, optimistic=True, after=expect)

    def _abandon(self, ahead: _Ahead, requeue: bool = True) -> None:
        """Take back a batch decided ahead (its changes to the replica, newest first) and
        put its transactions back at the head of the queue, in their order (unless the
        caller runs them itself)."""
        nxt, _, items = ahead
        _take_back(nxt)
        nxt.ahead = False  # taken back: nothing of it is left to undo
        if requeue:
            self._queue[0:0] = [it for it in items if not it[1].done()]


def _retrieved(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()
