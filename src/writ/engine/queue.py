"""The FIFO queue and the end of leases (a mixin of :class:`writ.engine.kernel.Engine`).

Waiting is a FIFO queue kept in the store, shared by all conflicting resources. Whenever a lease
ends or a waiter leaves, :meth:`QueueOps._dispatch` grants, inside that same transaction, every
queued request no longer blocked by a held lease or by an *earlier* conflicting waiter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from writ.core import resources
from writ.core.clock import rfc3339
from writ.core.errors import (
    Forbidden,
    Held,
    Invalid,
    LeaseLost,
    NotFound,
    Unauthenticated,
    Unavailable,
    WritError,
    error_from_body,
)
from writ.core.models import (
    LOCK_DELAYED,
    Lease,
    Principal,
    Waiter,
    data,
    lock_delayed,
    new_id,
    waited_as,
)
from writ.engine.hooks import SYSTEM, Request, lock_row
from writ.engine.reads import ReadOps
from writ.stores.base import Tx

if TYPE_CHECKING:
    from writ.engine.kernel import Engine
    from writ.engine.principals import AuthCache
    from writ.rules.authority import Authority

log = logging.getLogger("writ.engine")

STALE_WAITER_S = 2.0  # a waiter this far past its deadline has no caller left
DISPATCH_PAGE = 4  # queued requests read at once when a lease ends (then the rest, if needed)
# what a waiting call is cancelled with when its server shuts down (its caller did not leave)
SHUTTING_DOWN = "writ: the server is shutting down"
Gate = Callable[[Tx, Principal, Request], Awaitable[WritError | None]]


@dataclass(slots=True)
class Blocked:
    """Why a request could not be granted now."""

    lease: Lease | None  # the conflicting holder (or the queue head's blocker)
    until: float | None  # when the blocker would expire on its own (store clock)
    position: int  # 1 + conflicting waiters ahead
    reason: str = "held"  # "held" | "queue" | "lock_delay"
    waits_on: str | None = None  # "queue": the resource of the first waiter ahead


@dataclass(slots=True)
class _Queued:
    waiter: Waiter
    blocked: Blocked
    now: float


class QueueOps(ReadOps):
    """Gates, grants, the queue's hand-offs, and ending leases."""

    _gates: list[Gate]
    auth_cache: AuthCache
    _on_grant: list[Callable[[Tx, Request, Lease], Awaitable[None]]]
    _on_end: list[Callable[[Tx, Lease], Awaitable[None]]]

    if TYPE_CHECKING:

        @property
        def authority(self) -> Authority: ...

    async def _run_gates(self, tx: Tx, principal: Principal, req: Request) -> WritError | None:
        for gate in self._gates:
            err = await gate(tx, principal, req)
            if err is not None:
                return err
        return None

    async def _gates_now(
        self, tx: Tx, req: Request, checked: Principal | None = None
    ) -> WritError | None:
        """The safety rules for ``req``, with its principal as it stands: ``checked`` (the
        one its token named) while no principal changed since that check, else read in
        ``tx`` — one disabled or deleted since its token was checked, or since it queued,
        is refused, never granted a lease its disable came too early to revoke."""
        principal = checked
        if checked is None or checked.checked_gen not in (None, self.auth_cache.generation):
            principal = await tx.get_principal(req.principal)
        return await self._run_gates(tx, principal, req) if principal else _gone(req)

    async def _blocked(self, tx: Tx, req: Request, before_seq: int | None) -> Blocked | None:
        """What stands between ``req`` and a grant right now, or None."""
        now = tx.now()
        held = await tx.held_related(req.expand)
        if held:
            lease = min(held, key=lambda l: l.expires_at)
            position = 1 + await tx.count_waiters_related(req.expand, before_seq)
            return Blocked(lease, max(l.expires_at for l in held), position)
        delays = [
            d
            for d in await self.policy_objects(tx, req.expand, "delay")
            if (d.get("expires_at_ts") or 0) > now
        ]
        if delays:
            until = max(d["expires_at_ts"] for d in delays)
            position = 1 + await tx.count_waiters_related(req.expand, before_seq)
            return Blocked(None, until, position, "lock_delay")
        ahead = await tx.waiters_related(req.expand, before_seq, limit=1)
        if ahead:
            position = 1 + await tx.count_waiters_related(req.expand, before_seq)
            head = self.blast.expand(ahead[0].resource)
            head_held = await tx.held_related(head)
            first = min(head_held, key=lambda l: l.expires_at) if head_held else None
            until = first.expires_at if first else now + 0.05
            return Blocked(first, until, position, "queue", ahead[0].resource)
        return None

    async def _grant(self, tx: Tx, req: Request, request_id: str | None = None) -> Lease:
        now = tx.now()
        token = await tx.next_token()
        lease = Lease(
            lease_id=new_id("ls"),
            resource=req.resource,
            holder=req.principal,
            intent=req.intent,
            fencing_token=token,
            acquired_at=now,
            expires_at=now + req.ttl_s,
            ttl_s=req.ttl_s,
            touches=req.touches,
            state="held",
            rollback=req.rollback,
        )
        await tx.insert_lease(lease, request_id)
        warn = "; ".join((req.rollback or {}).get("warnings") or [])
        await tx.append(
            self.lease_row(
                lease,
                "lease.granted",
                req.principal,
                f"granted {lease.lease_id} for {req.intent!r}, ttl {req.ttl_s:g}s, touches "
                + ",".join(req.touches)
                + (f"; warning: {warn}" if warn else "")
                + waited_as(request_id),
            )
        )
        for hook in self._on_grant:
            await hook(tx, req, lease)
        return lease

    async def _refuse(self, tx: Tx, req: Request, blocked: Blocked, waited: bool = False) -> Held:
        hidden = await self.authority.hides(tx, req.principal, blocked.lease)
        text = (_unseen_text if hidden else _blocked_text)(req.resource, blocked)
        await self._deny(
            tx, req, blocked.lease, (f"waited {req.wait_s:g}s; " if waited else "") + text
        )
        return await self._held_error(tx, req.resource, blocked, text, req.principal, hidden)

    async def _held_error(
        self,
        tx: Tx,
        resource: str,
        blocked: Blocked,
        text: str,
        asker: str | None = None,
        hidden: bool = False,
    ) -> Held:
        holder: dict[str, Any] | None = None
        if blocked.lease is not None and not hidden:
            b = blocked.lease
            holder = {**await self.holder_info(tx, b), "fencing_token": b.fencing_token}
            if asker is not None:
                holder = await self.authority.holder_view(tx, asker, holder, b)
        hint = (
            "retry with wait_s > 0 to queue for it"
            if blocked.reason != "lock_delay"
            else "retry with wait_s > 0; the lock-delay ends by itself"
        )
        return Held(
            f"{text}; {hint}",
            holder=holder,
            queue_position=blocked.position,
            reason=blocked.reason,
            retry_at=rfc3339(blocked.until) if blocked.until else None,
        )

    async def _deny(
        self, tx: Tx, req: Request, blocker: Lease | None, why: str, event: str = "lease.denied"
    ) -> None:
        if blocker is None:  # refused by a safety rule: the row still names who holds it now
            held = [l for l in await tx.held_related(req.expand) if l.expires_at > tx.now()]
            blocker = held[0] if held else None
        await tx.append(
            lock_row(
                event,
                req.principal,
                req.resource,
                blocker,
                f"refused {req.intent!r}: {why}{waited_as(req.waiter_id)}",
            )
        )

    async def _dispatch(self, tx: Tx, paths: Sequence[str]) -> None:
        """Grant, in FIFO order, every queued request related to ``paths`` that is free.

        The queue is read a few at a time: once a candidate's resource is an ancestor of (or
        equal to) every path, every later candidate conflicts with it and waits behind it,
        so a long queue on one resource costs one short read per hand-off, not the queue.
        (A stale request further back is then dropped when it reaches the front.)
        """
        page = await tx.waiters_related(paths, limit=DISPATCH_PAGE)
        earlier: list[str] = []  # resources of the candidates already considered
        now = tx.now()
        if await self._serve(tx, paths, page, earlier, now) or len(page) < DISPATCH_PAGE:
            return
        rest = [w for w in await tx.waiters_related(paths) if w.seq > page[-1].seq]
        await self._serve(tx, paths, rest, earlier, now)

    async def _serve(
        self, tx: Tx, paths: Sequence[str], queue: list[Waiter], earlier: list[str], now: float
    ) -> bool:
        """:meth:`_dispatch` over one read of the queue; True once a candidate covers every
        path (everyone after it waits behind it)."""
        for w in queue:
            if w.deadline + STALE_WAITER_S < now:
                # its wait ended and nobody came for the answer: the caller, or the server
                # it waited on, is gone; a grant would block the queue for a whole ttl
                await tx.delete_waiter(w.waiter_id)
                await self._deny(
                    tx,
                    self._queued_request(w),
                    None,
                    f"its wait ended at {rfc3339(w.deadline)} "
                    "and nobody collected it (its caller or server is gone)",
                )
                continue
            # one that conflicts with an earlier candidate waits behind it (or its grant)
            in_line = any(self.blast.conflicts(w.resource, e) for e in earlier)
            if not in_line and not await self._offer(tx, w):
                continue  # refused and gone: nobody waits behind it any more
            earlier.append(w.resource)
            if all(resources.under(p, w.resource) for p in paths):
                return True
        return False

    async def _offer(self, tx: Tx, w: Waiter) -> bool:
        """Grant a queued request if nothing blocks it (or refuse it by the safety rules),
        take it out of the queue, and notify its waiter. False when it was refused: those
        behind it no longer wait behind it."""
        req = self._queued_request(w)
        if await self._blocked(tx, req, w.seq) is not None:
            return True
        err = await self._gates_now(tx, req)
        await tx.delete_waiter(w.waiter_id)
        if err is not None:
            await self._deny(tx, req, None, err.message, _deny_event(err))
            tx.notify("granted", {"waiter_id": w.waiter_id, "error": err.to_body()["error"]})
            return False
        lease = await self._grant(tx, req, w.waiter_id)
        # the lease travels with the note: its waiter answers without reading it back
        tx.notify(
            "granted",
            {"waiter_id": w.waiter_id, "lease_id": lease.lease_id, "lease": lease.to_dict()},
        )
        return True

    async def _granted_to(self, tx: Tx, req: Request, waiter: Waiter) -> Lease | WritError | None:
        """The lease granted to queued request ``waiter`` (None: none yet). One the leases
        table names for it (``request_id``) that another principal holds, or on another
        resource, was not granted to it — the column was set by hand — and is never its
        answer: the request leaves the queue, with a row that ends its wait, and its caller
        gets :class:`Unavailable` (ask again)."""
        lease = await tx.lease_for_request(waiter.waiter_id)
        if lease is None or _granted(lease, waiter):
            return lease
        _tampered(lease, waiter)
        why = (
            "the leases table names a lease it did not grant to this request as its own (it "
            "was changed by hand): this request is withdrawn; ask again"
        )
        if await tx.delete_waiter(waiter.waiter_id):
            await self._deny(tx, req, None, why)
            await self._dispatch(tx, req.expand)
        return Unavailable(f"writ cannot answer this request: {why}", waiter_id=waiter.waiter_id)

    async def _collect(self, note: dict[str, Any], waiter: Waiter) -> dict[str, Any] | None:
        """The outcome a ``granted`` note announces for ``waiter``: the lease, or the error
        raised; None when an unverified note (another process's, see :meth:`_on_note`) is
        not borne out by the database — no lease granted for this request, or, for a
        refusal, the request still queued."""
        if not note.get("unverified"):
            if "error" in note:
                raise error_from_body(0, {"error": note["error"]})
            granted = note.get("lease")
            if isinstance(granted, dict) and granted.get("lease_id") == note.get("lease_id"):
                return granted  # as granted, in the committed transaction that sent the note

        async def look(tx: Tx) -> tuple[Lease | None, bool]:
            lease = await tx.lease_for_request(waiter.waiter_id)
            if lease is not None and not _granted(lease, waiter):
                _tampered(lease, waiter)  # not its answer: the recheck withdraws the request
                return None, True
            queued = lease is None and any(
                w.waiter_id == waiter.waiter_id for w in await tx.waiters_of(waiter.principal)
            )
            return lease, queued

        lease, queued = await self.store.read(look)
        if lease is not None:
            return lease.to_dict()  # granted: the database's copy, whatever the note said
        error = note.get("error")
        if queued or not isinstance(error, dict):
            return None
        # refused: no lease and out of the queue, as the note says; its words are taken as
        # they come, the outcome is the database's
        try:
            refusal = error_from_body(0, {"error": error})
        except (TypeError, ValueError):
            refusal = WritError(str(error.get("message", "the queued request was refused")))
        raise refusal

    def _queued_request(self, w: Waiter) -> Request:
        """The request a waiter queued (see :meth:`Request.to_json`)."""
        r = w.request
        return Request(
            resource=w.resource,
            intent=r["intent"],
            ttl_s=float(r["ttl_s"]),
            wait_s=float(r["wait_s"]),
            touches=list(r["touches"]),
            consent_id=r.get("consent_id"),
            rollback=r.get("rollback"),
            principal=w.principal,
            expand=self.blast.expand(w.resource),
            default_touches=r.get("default_touches") is True,
            waiter_id=w.waiter_id,
        )

    async def end(
        self,
        tx: Tx,
        lease: Lease,
        state: str,
        by: str,
        notes: str,
        extra: dict[str, Any] | None = None,
        lock_delay: bool = False,
    ) -> Lease:
        """End a held lease (released, expired, revoked), write its row, serve the queue.
        With ``lock_delay``, the policy's lock delay holds its resource back: a ``delay``
        object until then, which the row's notes end with (``; lock delay until T``); notes
        that would read so without one (a revoker's words) end ``; no lock delay``."""
        now = tx.now()
        lease.state = state
        lease.ended_at = now
        await tx.update_lease(lease)
        delay = self.policy.governing(lease.resource).lock_delay_s if lock_delay else 0.0
        if delay > 0:
            notes += lock_delayed(now + delay)
        elif LOCK_DELAYED in notes:  # a revoker's words that would read as a delay: none
            notes += "; no lock delay"
        await tx.append(self.lease_row(lease, f"lease.{state}", by, notes, **(extra or {})))
        if delay > 0:
            await tx.put_object(
                "delay",
                lease.lease_id,
                lease.resource,
                "active",
                {
                    "lease_id": lease.lease_id,
                    "resource": lease.resource,
                    "holder": lease.holder,
                    "until": rfc3339(now + delay),
                },
                expires_at=now + delay,
            )
        for hook in self._on_end:
            await hook(tx, lease)
        await self._dispatch(tx, self.blast.expand(lease.resource))
        return lease

    async def _expire(self, tx: Tx, lease: Lease) -> Lease:
        late = tx.now() - lease.expires_at
        return await self._end(
            tx,
            lease,
            "expired",
            SYSTEM,
            notes=f"expired: not renewed within its ttl of {lease.ttl_s:g}s"
            + (f" (found {late:.3f}s late)" if late > 0.5 else ""),
            lock_delay=True,
        )

    async def _expire_due(self, tx: Tx, paths: Sequence[str]) -> None:
        now = tx.now()
        for lease in await tx.held_related(paths):
            if lease.expires_at <= now:
                await self._expire(tx, lease)
        for d in await self.policy_objects(tx, paths, "delay"):
            if (d.get("expires_at_ts") or 0) <= now:
                await self._end_delay(tx, d)

    async def _end_due(self, sweep: Callable[[Tx], Awaitable[int]]) -> int:
        """The sweep's write, kept going past a lease or lock delay whose end fails."""
        from writ.engine.sweep_ends import end_due

        return await end_due(cast("Engine", self), sweep)

    async def _tick(self, tick: Callable[[], Awaitable[Any]]) -> None:
        """A periodic duty of the sweep, run so that one which fails stops no other."""
        from writ.engine.sweep_ends import ticked

        await ticked(tick)

    async def _end_delay(self, tx: Tx, delay: dict[str, Any]) -> None:
        """Mark a lock-delay past its end done, and serve the queue it held back."""
        await tx.put_object(
            "delay",
            delay["lease_id"],
            delay["resource"],
            "done",
            data(delay),
            delay["expires_at_ts"],
        )
        await self._dispatch(tx, self.blast.expand(delay["resource"]))

    async def own_lease(
        self, tx: Tx, principal: Principal, lease_id: str, action: str
    ) -> Lease | Forbidden:
        """``lease_id``, locked for update, when ``principal`` holds it (else 422/404, or the
        403 to answer: another's lease, which ``principal`` tried to ``action`` — a decision,
        so a ``lease.refused`` row in ``tx``, which must commit)."""
        if not isinstance(lease_id, str) or not lease_id:
            raise Invalid("lease_id is required", field="lease_id")
        lease = await tx.get_lease(lease_id, for_update=True)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", lease_id=lease_id)
        if lease.holder != principal.name:
            message = f"lease {lease_id} is held by {lease.holder}, not {principal.name}"
            await tx.append(
                lock_row(
                    "lease.refused",
                    principal.name,
                    lease.resource,
                    lease,
                    f"{principal.name} may not {action} {lease.holder}'s lease: {message}",
                )
            )
            if not self.authority.observable(principal, lease.resource):
                # closed mode: neither its holder nor its resource (the row, on that
                # resource, is not the caller's to read)
                return Forbidden(
                    f"lease {lease_id} is not {principal.name}'s, and {principal.name} may "
                    "not observe its resource"
                )
            return Forbidden(message, holder=lease.holder)
        return lease

    async def held_lease(
        self, tx: Tx, principal: Principal, lease_id: str, action: str
    ) -> Lease | WritError:
        """:meth:`own_lease`, still held: the lease, or the error to answer (its refusal row
        in ``tx``, or :class:`LeaseLost`)."""
        lease = await self.own_lease(tx, principal, lease_id, action)
        if isinstance(lease, WritError):
            return lease
        return await self.lost(tx, lease) or lease

    async def lost(self, tx: Tx, lease: Lease) -> LeaseLost | None:
        """:class:`LeaseLost` when the lease no longer holds (expiring it if due)."""
        if lease.state == "held" and lease.expires_at <= tx.now():
            await self._expire(tx, lease)
        if lease.state != "held":
            return LeaseLost(
                f"lease {lease.lease_id} on {lease.resource} was {lease.state} at "
                f"{rfc3339(lease.ended_at)}; acquire again (a new fencing token) before writing",
                lease_id=lease.lease_id,
                state=lease.state,
                fencing_token=lease.fencing_token,
            )
        return None

    async def withdraw(self, tx: Tx, w: Waiter, notes: str, error: WritError) -> None:
        """Refuse the queued request of waiter ``w`` (already deleted by the caller) with
        ``error``: its denial row, the note that wakes its waiting call, and the queue behind it."""
        req = self._queued_request(w)
        await self._deny(tx, req, None, notes)
        tx.notify("granted", {"waiter_id": w.waiter_id, "error": error.to_body()["error"]})
        await self._dispatch(tx, req.expand)  # those behind it may go now

    # the old private names (rules now call the public ones; removed in the rooms renovation)
    _end = end

    async def _abandon(
        self, waiter_id: str, req: Request, made: Sequence[str] = (), why: Any = None
    ) -> None:
        """The caller of ``req`` went away (its task cancelled: ``why``, the cancellation,
        says :data:`SHUTTING_DOWN` when its server drains) while it waited, or while its
        queue join or its grant was committing: take ``waiter_id`` out of the queue if it is
        there, with a row that ends its ``lease.queued`` one, or give back the lease granted
        to it meanwhile (from the queue, or one of ``made``, the leases its attempts granted
        directly). Nothing if none (nothing committed)."""
        gone, left = ("the waiting caller disconnected", "the caller disconnected")
        if SHUTTING_DOWN in getattr(why, "args", ()):
            gone = left = "its server shut down"

        async def fn(tx: Tx) -> None:
            if await tx.delete_waiter(waiter_id):
                held = await tx.held_related(req.expand)
                await tx.append(
                    lock_row(
                        "lease.denied",
                        req.principal,
                        req.resource,
                        held[0] if held else None,
                        f"withdrawn {req.intent!r}: {gone} before a grant{waited_as(waiter_id)}",
                    )
                )
                await self._dispatch(tx, req.expand)
                return
            leases = [await tx.lease_for_request(waiter_id)]
            leases += [await tx.get_lease(lease_id, for_update=True) for lease_id in made]
            for lease in leases:
                if (
                    lease is not None
                    and lease.state == "held"
                    and (lease.holder, lease.resource) == (req.principal, req.resource)
                ):
                    await self._end(
                        tx,
                        lease,
                        "released",
                        req.principal,
                        notes=f"released: {left} before the grant reached it",
                    )

        with contextlib.suppress(WritError):
            await self.store.transact(fn)

    async def give_back(self, lease: dict[str, Any], shutting_down: bool = False) -> None:
        """Release ``lease`` (an acquire's answer) if it is still held as granted: its caller
        was gone when the answer was ready (it hung up as the grant committed, or its server
        drains), so nobody holds it but the ledger, for a whole ttl."""
        left = "its server shut down" if shutting_down else "the caller disconnected"

        async def fn(tx: Tx) -> None:
            held = await tx.get_lease(str(lease.get("lease_id")), for_update=True)
            if (
                held is not None
                and held.state == "held"
                and (held.fencing_token == lease.get("fencing_token"))
            ):
                notes = f"released: {left} before the grant reached it"
                await self._end(tx, held, "released", held.holder, notes=notes)

        with contextlib.suppress(WritError):
            await self.store.transact(fn)

    _lost = lost
    _own_lease = own_lease


def _granted(lease: Lease, waiter: Waiter) -> bool:
    """Whether ``lease``, which the leases table names as granted to ``waiter``'s request,
    can be: its holder the request's principal, on the request's resource."""
    return lease.holder == waiter.principal and lease.resource == waiter.resource


def _tampered(lease: Lease, waiter: Waiter) -> None:
    log.error(
        "tampering: the leases table names lease %s (%s on %s) as granted to request %s of %s "
        "on %s: its request_id was changed by hand; not answered with it",
        lease.lease_id,
        lease.holder,
        lease.resource,
        waiter.waiter_id,
        waiter.principal,
        waiter.resource,
    )


def _deny_event(err: WritError) -> str:
    """The row of a grant a safety rule refused: ``lease.refused`` when it was not the
    caller's authority (403), ``lease.denied`` otherwise."""
    return "lease.refused" if isinstance(err, Forbidden) else "lease.denied"


def _gone(req: Request) -> WritError:
    """A request whose principal was deleted (by hand) since its token was checked."""
    return Unauthenticated(
        f"principal {req.principal} no longer exists: its request is refused",
        principal=req.principal,
    )


def _blocked_text(resource: str, b: Blocked) -> str:
    if b.reason == "lock_delay":
        return f"{resource} is in lock-delay after its holder died, until {rfc3339(b.until)}"
    if b.lease is None:
        return f"{resource} has {b.position - 1} conflicting request(s) queued ahead"
    # behind a queue, the lease blocks the first waiter, whose resource it may be the only
    # one to conflict with (bob on prod, alice on prod/db, carol asking prod/cache)
    resource = b.waits_on or resource
    l = b.lease
    on = "" if l.resource == resource else f" (on {l.resource})"
    text = (
        f"{resource} is held by {l.holder}{on} since {rfc3339(l.acquired_at)} for "
        f"{l.intent!r}, until {rfc3339(l.expires_at)}"
    )
    if b.reason == "queue":
        text = f"{b.position - 1} conflicting request(s) queued ahead; the first waits on: " + text
    return text


def _unseen_text(resource: str, b: Blocked) -> str:
    """:func:`_blocked_text` for an asker who may not observe the blocker's resource (a
    member of the blast radius, closed mode): neither it nor its holder is named."""
    if b.reason == "queue":  # the lease blocks the first waiter, maybe not ``resource``
        return (
            f"{b.position - 1} conflicting request(s) queued ahead; the first waits on a "
            f"lease on a resource you may not observe, until {rfc3339(b.until)}"
        )
    return (
        f"{resource} is held through its blast radius, by a lease on a resource you may "
        f"not observe, until {rfc3339(b.until)}"
    )
