"""``writ serve``'s standing verify: the ledger and the tables checked while the server runs,
so tampering raises an alert (``writ_audit_verify_ok 0``, an ERROR log line) within a minute,
not at the next time someone thinks of running ``writ audit verify``.

Every ``every`` seconds (``--verify-every``, default 60; the first a period after start) a pass
walks the rows written since the last one — from the seq and hash it verified last, carrying
what the rows leave open (:class:`~writ.stores.accounted.Opened`) — then checks the tables as
``writ audit verify`` does (:func:`writ.stores.migrate.verify_store`). Before walking on, it
reads the row it verified last again: an intruder who rewrote any earlier row and re-hashed the
rest to hide it changed that row's hash too. The first pass, and one a day, walks the whole
chain, which also finds a row edited in place behind the point verified (its hash left alone).
A pass gives way between pages (:mod:`writ.core.bulk`): after the first, it reads only the new
rows, 7-13 µs a row; the table checks read the whole of their tables each pass, so a pass that
took T seconds puts the next one at least 19 T later (passes take at most :data:`SHARE` of the
time).

A checkpoint (``--checkpoint-every``) is signed only at a row a pass has just verified
(:meth:`Sentinel.verified`): rows rewritten and re-hashed after a pass saw them are never
vouched for by the next checkpoint.

A row found with another hash than the one a pass verified (:attr:`Sentinel.rewritten`:
rewritten and re-hashed, or removed) stays a break for the life of the process: the whole
walk that follows a break would find the re-hashed chain consistent, and must not clear the
alert, or let a checkpoint be signed over the rewrite. The furthest row verified
(:attr:`Sentinel.vouched`) is read again by every pass, whole passes included. A pass that
could not run (the store unreachable) is no break; a table changed by hand, or a row that
had not been verified yet, verifies again once mended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from writ.core.ledger import GENESIS, UNREADABLE, Record, Verification
from writ.stores.accounted import Opened

if TYPE_CHECKING:
    from writ.engine import Engine

__all__ = ["DEFAULT_EVERY_S", "FULL_EVERY_S", "Sentinel"]

log = logging.getLogger("writ.audit")

DEFAULT_EVERY_S = 60.0
FULL_EVERY_S = 86_400.0  # a pass over the whole chain this often, and at start
BROKEN_EVERY_S = 600.0  # while the ledger does not verify, passes (all whole) this far apart
#: the share of the server's time passes may take: after a pass of T seconds the next comes
#: no sooner than T / SHARE - T later (a large store's table checks stretch the period)
SHARE = 0.05


class Sentinel:
    """The standing verify of one server. ``pass_()`` runs a pass now (one at a time);
    :meth:`tick`, hooked into the engine's periodic duties, starts one every ``every``
    seconds in a task of its own (never holding the sweep)."""

    def __init__(
        self,
        engine: Engine,
        every: float = DEFAULT_EVERY_S,
        full_every: float = FULL_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.every, self.full_every, self.clock = engine, every, full_every, clock
        self.at: tuple[int, str] = (0, GENESIS)  # the last row verified: seq, hash
        self.vouched: tuple[int, str] = (0, GENESIS)  # the furthest row verified: never reset
        #: a row changed after a pass verified it: the answer of every pass from then on
        self.rewritten: Verification | None = None
        self.opened = Opened()
        self.last: Verification | None = None  # the last pass's answer
        self.last_end = 0.0  # time.time() the last pass ended
        self.passes = 0
        self._lock = asyncio.Lock()
        self._due = clock() + every  # clock() of the next pass: not at start (restarts stay cheap)
        self._full_due = 0.0  # clock() of the next whole pass
        self._task: asyncio.Task[Verification] | None = None
        if every > 0:  # else passes run only when asked (a checkpointer's own)
            engine.add_ticker(self.tick)

    async def tick(self) -> None:
        now = self.clock()
        if self.every <= 0 or now < self._due or (self._task and not self._task.done()):
            return
        self._due = now + self.every
        task = self._task = asyncio.get_running_loop().create_task(self.pass_())
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Verification]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            # the metrics keep the last pass that ran: writ_audit_verify_last_end_timestamp_seconds
            # goes stale, which deploy/alerts.yml's WritLedgerVerifyStale alerts on
            log.warning("the standing verify could not run: %s", task.exception())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def pass_(self, tables: bool = True) -> Verification:
        """Verify the rows written since the last pass, then (``tables``) the tables; the
        answer. A pass of the chain alone that verifies says nothing of the tables, so it
        leaves :attr:`last` (and the metric) as the last whole pass left it."""
        async with self._lock:
            began = self.clock()
            if began >= self._full_due:
                self._full_due = self.clock() + self.full_every
                self.at, self.opened = (0, GENESIS), Opened()
            out = await self._changed_behind() or await self._walk(tables)
            if self.rewritten is None and self.at[0] >= self.vouched[0]:
                self.vouched = self.at
            elif self.rewritten is not None and out.ok:
                out = self.rewritten  # a whole walk of the re-hashed chain clears nothing
            if out.ok and not tables:
                return out
            before, self.last, self.last_end = self.last, out, time.time()
            self.passes += 1
            ended = self.clock()
            self._due = max(self._due, ended + (ended - began) * (1 / SHARE - 1))
            if not out.ok:
                # nothing after a break is vouched for: the next pass walks the whole chain,
                # and while it stays broken, no more often than every BROKEN_EVERY_S
                self._full_due = 0.0
                self._due = max(self._due, self.clock() + BROKEN_EVERY_S)
                if before is None or before.reason != out.reason:
                    where = f" at seq {out.first_bad_seq}" if out.first_bad_seq else ""
                    log.error("the ledger does not verify%s: %s", where, out.reason)
            elif before is not None and not before.ok:
                log.warning("the ledger verifies again: %d rows, head %s", out.rows, out.head)
            return out

    async def verified(self) -> tuple[int, str, str | None] | None:
        """Verify the chain up to now (the rows since the last pass, and the last row verified
        read again); ``(seq, hash, timestamp)`` of the last row verified, or None when the
        ledger does not verify (or holds no row). The tables are left to the passes."""
        out = await self.pass_(tables=False)
        seq, hash_ = self.at
        if not out.ok or seq == 0 or self.rewritten is not None:
            return None
        row = await self._row(seq)
        return (seq, hash_, row.get("timestamp")) if row and row.get("hash") == hash_ else None

    async def _row(self, seq: int) -> dict[str, Any] | None:
        rows = await self.engine.store.read(lambda tx: tx.audit_rows(seq - 1, 1))
        return rows[0] if rows and rows[0].get("seq") == seq else None

    async def _changed_behind(self) -> Verification | None:
        """A failed answer if the last row verified, or the furthest (:attr:`vouched`), no
        longer has the hash it had."""
        for seq, hash_ in dict.fromkeys((self.vouched, self.at)):
            if seq > 0 and (out := await self._changed(seq, hash_)) is not None:
                return out
        return None

    async def _changed(self, seq: int, hash_: str) -> Verification | None:
        row = await self._row(seq)
        if row is not None and row.get("hash") == hash_:
            if row.get("event") != UNREADABLE:
                return None
            # its hash kept, its body no longer one writ reads (stored as a BLOB, say)
            why = f"{row.get('notes')}; it was changed since writ verified it"
            return Verification(False, seq, hash_, seq, why)
        return self._rewrite(seq, hash_)

    def _rewrite(self, seq: int, hash_: str) -> Verification:
        """The answer for row ``seq`` found without the hash ``hash_`` a pass verified; kept
        in :attr:`rewritten` (the first one found) for the life of the process."""
        out = Verification(
            False,
            seq,
            hash_,
            seq,
            f"row {seq} no longer has the hash writ verified ({hash_[:12]}…): rows up to it "
            "were rewritten and re-hashed, or removed, since",
        )
        self.rewritten = self.rewritten or out
        return out

    async def _walk(self, tables: bool = True) -> Verification:
        from writ.stores.migrate import verify_store

        seq, hash_ = self.vouched

        def step(chunk: list[Record]) -> None:
            first = chunk[0][0]
            if first <= seq <= chunk[-1][0] and chunk[seq - first][2] != hash_:
                self._rewrite(seq, hash_)  # rewritten since it was read again, before the walk
            self.at = (chunk[-1][0], chunk[-1][2])

        before = self.rewritten
        out = await verify_store(self.engine.store, self.at, self.opened, step, tables)
        found = self.rewritten  # found by this walk: its answer, whatever the tables say
        return found if found is not None and found is not before else out
