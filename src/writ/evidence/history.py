"""History: the ledger read back — who held what when, rows, live events, verification."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from writ.core import resources
from writ.core.bulk import PAGE
from writ.core.clock import rfc3339
from writ.core.ledger import UNREADABLE, Verification
from writ.core.models import Lease
from writ.core.validate import number
from writ.engine.hooks import MAX_WAIT_S
from writ.stores.base import Tx
from writ.stores.migrate import verify_store

if TYPE_CHECKING:
    from writ.engine import Engine


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._watches: dict[tuple[Any, ...], _Watch] = {}
        self._verify_run: asyncio.Task[None] | None = None  # the verify running now
        self._verify_next: asyncio.Future[Verification] | None = None  # the one asked for next

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]:
        """Who held write authority on ``resource`` at ``at`` (default now), from the ledger.

        A lease on the resource, on an ancestor of it, or on a member of a blast-radius group
        it is in (or an ancestor of one) counts (``BlastRadius.covering``); such leases
        exclude each other, so at most one answers.

        A row the answer rests on that the store cannot read back (a stub, event
        ``unreadable``: see :func:`~writ.core.ledger.row_from`) is named in an added
        ``unreadable_rows`` field (its seq). When it is the grant, which alone names the
        holder, ``lock_holder`` is null (not known), never ``"none"``. No extra read: these
        are the rows the answer reads anyway.
        """
        resources.validate(resource)
        covering = sorted(self.engine.blast.covering(resource))

        async def fn(tx: Tx) -> dict[str, Any]:
            t = tx.now() if at is None else at
            # a time from the wire names a whole microsecond (as rows are shown): include
            # the rows stamped within it, e.g. a grant asked about at its own acquired_at
            grant = await tx.audit_latest(
                covering, ["lease.granted"], t if at is None else t + 5e-7
            )
            if grant is not None and grant["event"] == UNREADABLE:
                return {
                    "resource": resource,
                    "at": rfc3339(t),
                    "lock_holder": None,
                    "lock_key": None,
                    "lease": None,
                    "unreadable_rows": [grant["seq"]],
                }
            unread: dict[str, Any] = {}
            if grant is not None:
                # held over [grant, end): a release, revoke or expiry row stamped at t means
                # free at t. Leases on one resource never overlap, so the last such row on
                # the grant's resource after the grant is this lease's end (one index probe).
                end = await tx.audit_latest(
                    [grant["resource"]], _END_EVENTS, t if at is None else t + 5e-7
                )
                if end is not None and end["event"] == UNREADABLE and end["seq"] > grant["seq"]:
                    unread["unreadable_rows"] = [end["seq"]]
                lease = await _granted_lease(tx, grant)
                # an expiry is exact at the lease's last expires_at, even when the sweeper
                # wrote its row later; a held lease renewed after t had not lapsed at t
                lapsed = (
                    lease is not None
                    and lease.state in ("held", "expired")
                    and lease.expires_at <= t
                )
                if (end is None or end["seq"] < grant["seq"]) and not lapsed:
                    return {
                        "resource": resource,
                        "at": rfc3339(t),
                        "lock_holder": grant["lock_holder"],
                        "lock_key": grant["lock_key"],
                        "lease": lease.to_dict() if lease else None,
                    }
            return {
                "resource": resource,
                "at": rfc3339(t),
                "lock_holder": "none",
                "lock_key": None,
                "lease": None,
                **unread,
            }

        return await self.engine.store.read(fn)

    async def audit(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        if prefix:
            resources.validate(prefix, "resource")
        limit = int(number(limit, "limit", 1, 100_000))
        after = int(number(after_seq, "after_seq", 0, 2**62))
        if limit <= PAGE:
            rows = await self._rows(after, limit, prefix, since, until)
            return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after}
        # more than a page (a long poll's 10,000): read page by page, taking turns with the
        # other bulk reads (core.bulk). Rows only ever follow the last seq, so the pages
        # together are what one read would give, as of the last
        rows, last = [], after
        while len(rows) < limit:
            want = min(limit - len(rows), PAGE)
            async with self.engine.bulk.page():
                page = await self._rows(last, want, prefix, since, until)
            rows += page
            if len(page) < want:
                break
            last = page[-1]["seq"]
        return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after}

    async def _rows(
        self, after: int, n: int, prefix: str | None, since: float | None, until: float | None
    ) -> list[dict[str, Any]]:
        return await self.engine.store.read(
            lambda tx: tx.audit_rows(after, n, prefix, since, until)
        )

    async def events(
        self, prefix: str | None = None, after_seq: int = 0, wait_s: Any = 0, limit: int = 1000
    ) -> dict[str, Any]:
        """Rows under ``prefix`` after ``after_seq``; long-polls up to ``wait_s`` for one."""
        wait = number(wait_s, "wait_s", 0, MAX_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        after = int(number(after_seq, "after_seq", 0, 2**62))
        out = await self.audit(after, limit, prefix)
        if out["rows"] or deadline <= loop.time():
            return out
        # Wait with every long-poll asking the same question: one task re-reads after each
        # commit for all of them, so 1,000 watchers cost one query per commit, and none of
        # them wakes up until a row matches (each waking on every commit starves the loop).
        key = (prefix, after, limit)
        watch = self._watches.get(key)
        if watch is None or watch.answer.done():
            watch = self._watches[key] = _Watch(loop.create_future())
            watch.task = loop.create_task(self._watch(key, watch))
        watch.waiters += 1
        try:
            found = await asyncio.wait_for(asyncio.shield(watch.answer), deadline - loop.time())
            return {**found, "rows": list(found["rows"])}
        except TimeoutError:
            return {"rows": [], "next_after_seq": after}
        finally:
            watch.waiters -= 1
            if watch.waiters == 0 and not watch.answer.done():  # nobody is waiting any more
                if self._watches.get(key) is watch:
                    del self._watches[key]
                if watch.idle:  # between reads; a read in progress ends the task after it
                    watch.task.cancel()

    async def _watch(self, key: tuple[Any, ...], watch: _Watch) -> None:
        """Re-read ``key``'s rows after every commit until some exist; answer the watchers.
        Each read starts after the latest commit it was told of, so no row is missed."""
        prefix, after, limit = key
        try:
            while True:
                changed = self.engine.audit_changed
                out = await self.audit(after, limit, prefix)
                if out["rows"]:
                    watch.answer.set_result(out)
                    return
                if watch.waiters == 0:
                    return
                watch.idle = True
                try:
                    await changed.wait()
                finally:
                    watch.idle = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store error reaches every watcher, as it would one
            watch.answer.set_exception(exc)
            watch.answer.exception()  # retrieved: the watchers may all have timed out
        finally:
            if self._watches.get(key) is watch:
                del self._watches[key]

    async def verify(self) -> Verification:
        """Recompute the whole hash chain, batch by batch (constant memory), up to the head
        the store keeps beside it.

        Callers share runs: one runs at a time, and those who ask while it runs share the
        next one, which starts when it ends — so each answer covers the chain as it stood
        when its caller asked (or later), and a hundred callers at once cost two runs, not
        a hundred (a whole-ledger read is seconds of the server's CPU on a large ledger)."""
        fut = self._verify_next
        if fut is None:
            fut = self._verify_next = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieved)  # every caller may have hung up
            if self._verify_run is None:
                self._verify_start()
        return await asyncio.shield(fut)

    def _verify_start(self) -> None:
        fut, self._verify_next = self._verify_next, None
        assert fut is not None
        self._verify_run = asyncio.get_running_loop().create_task(self._verify(fut))

    async def _verify(self, fut: asyncio.Future[Verification]) -> None:
        try:
            fut.set_result(await verify_store(self.engine.store))
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # a store error reaches every caller of this run
            fut.set_exception(exc)
        finally:
            self._verify_run = None
            if self._verify_next is not None:
                self._verify_start()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _Watch:
    """The long-polls waiting for the same rows, and the task that looks for them."""

    __slots__ = ("answer", "idle", "task", "waiters")

    def __init__(self, answer: asyncio.Future[dict[str, Any]]) -> None:
        self.answer = answer
        self.task: asyncio.Task[None]
        self.waiters = 0
        self.idle = False  # waiting for a commit (not reading the store)


_END_EVENTS = ("lease.released", "lease.expired", "lease.revoked")
_GRANTED_ID = re.compile(r"granted (\S+) for ")


async def _granted_lease(tx: Tx, grant: dict[str, Any]) -> Lease | None:
    """The lease a ``lease.granted`` row records (its id is in the row's notes)."""
    m = _GRANTED_ID.match(grant.get("notes") or "")
    lease = await tx.get_lease(m.group(1)) if m else None
    if lease is None:  # a ledger imported without its leases, or notes in another form
        found = await tx.list_leases(grant["resource"], None, 100)
        lease = next((l for l in found if l.fencing_token == grant["fencing_token"]), None)
    return lease if lease is not None and lease.fencing_token == grant["fencing_token"] else None
