"""The engine: write authority, decided in store transactions. No HTTP, no SQL.

Every operation is one store transaction (:meth:`writ.stores.base.Store.transact`) that
makes its change and appends its audit row together. The server, the CLI, the MCP adapter
and the gate are thin shells over this class.

Waiting is a FIFO queue kept in the store, shared by all conflicting resources. A request
that cannot be granted joins it (``lease.queued``); whenever a lease ends or a waiter leaves,
:meth:`Engine._dispatch` grants, inside that same transaction, every queued request that is
no longer blocked by a held lease or by an *earlier* conflicting waiter — so nobody is
overtaken, and the waiter learns of its grant from a notification, not by polling. A waiter
sleeps until its blocker would expire, so an expired holder is replaced on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from writ.core import resources
from writ.core.bulk import Turns
from writ.core.clock import rfc3339
from writ.core.errors import Forbidden, Invalid, NotFound, Unavailable, WritError
from writ.core.ledger import Verification
from writ.core.models import Lease, Principal, Waiter, new_id, queued_as
from writ.core.policy import Policy
from writ.core.textsafe import visible
from writ.core.validate import check_text, check_tree, number, text
from writ.engine import blast_overlaps as overlaps
from writ.engine.defaults import DEFAULT_RULES, load_rule
from writ.engine.hooks import MAX_TTL_S, MAX_WAIT_S, R, Request, Rule, lock_row
from writ.engine.principals import RESERVED_NAMES as RESERVED_NAMES
from writ.engine.principals import PrincipalOps
from writ.engine.principals import hash_token as hash_token
from writ.engine.principals import new_token as new_token
from writ.engine.queue import DISPATCH_PAGE as DISPATCH_PAGE
from writ.engine.queue import (
    Gate,
    QueueOps,
    _blocked_text,
    _deny_event,
    _Queued,
    _unseen_text,
)
from writ.engine.reads import POLICY_OBJECTS as POLICY_OBJECTS
from writ.stores.base import Store, Tx

if TYPE_CHECKING:
    from writ.engine.hooks import EngineView
    from writ.engine.principals import Principals
    from writ.evidence.history import History
    from writ.rules.authority import Authority
    from writ.rules.consent import Consents
    from writ.rules.freezes import Freezes
    from writ.rules.rollbacks import Rollbacks
    from writ.rules.stuck import Stuck

log = logging.getLogger("writ.engine")

MAX_INTENT = 1000


class Engine(PrincipalOps, QueueOps):
    """writ's decisions over one store and one policy."""

    def __init__(
        self,
        store: Store,
        policy: Policy | None = None,
        rules: Sequence[str | type[Any]] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or Policy()
        self._known: tuple[Policy, list[str]] | None = None  # see known_prefixes()
        self.blast = self.policy.blast
        # the grant notes awaited by this process's queued requests, by waiter id
        self._grants: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._audit_seq = 0
        self._audit_changed = asyncio.Event()
        from writ.core.identity import Identity
        from writ.engine.principals import AuthCache

        # tokens remembered briefly where a store read is remote (see principals.py)
        self.auth_cache = AuthCache(False)  # enabled at start() when the store allows
        self.identity = Identity(self.policy.identity)
        self._tasks: list[asyncio.Task[Any]] = []
        self._gates: list[Gate] = []  # safety rules checked at every grant
        self._on_end: list[Callable[[Tx, Lease], Awaitable[None]]] = []  # lease-ended hooks
        self._on_grant: list[Callable[[Tx, Request, Lease], Awaitable[None]]] = []
        self._tickers: list[Callable[[], Awaitable[Any]]] = []  # periodic duties
        self._dues: dict[Any, Callable[[Tx, float], Awaitable[bool]]] = {}  # a tick's Rule.due
        self._swept: tuple[bool, float | None] = (True, None)  # wrote; next expiry (loop time)
        self.sweep_interval = 1.0
        self._closing = False
        from writ.engine.fencing import Fencing
        from writ.engine.wake import Caller

        # not rules: the wake caller and the fencing checks the kernel itself uses
        self.caller = Caller(self)
        self.bulk = Turns()  # long reads page by page, one page at a time (core.bulk)
        self.fencing = Fencing(self)
        # the rules, chosen in one place (writ.engine.defaults) and wired here by the hooks
        # each overrides: construction order is on_grant/on_end/tick order, and the gates
        # run by gate_priority (stably)
        self.rules: list[Any] = []
        self._named: dict[str, Any] = {}
        for spec in rules if rules is not None else DEFAULT_RULES:
            self._add_rule(load_rule(spec)(self))
        self._gates.sort(key=lambda g: getattr(g.__self__, "gate_priority", 100))  # type: ignore[attr-defined]

    def _add_rule(self, r: Any) -> None:
        self.rules.append(r)
        self._named[getattr(type(r), "name", type(r).__name__.lower())] = r
        if not isinstance(r, Rule):
            return
        kind = type(r)
        if kind.gate is not Rule.gate:
            self._gates.append(r.gate)
        if kind.on_grant is not Rule.on_grant:
            self._on_grant.append(r.on_grant)
        if kind.on_end is not Rule.on_end:
            self._on_end.append(r.on_end)
        if kind.tick is not Rule.tick:
            self._tickers.append(r.tick)
            if kind.due is not Rule.due:
                self._dues[r.tick] = r.due

    # ------------------------------------------------------------------ compat: new code calls
    # engine.rule(Consents); tests and older callers use these names
    @property
    def consents(self) -> Consents:
        return cast("Consents", self._named["consents"])

    @property
    def rollbacks(self) -> Rollbacks:
        return cast("Rollbacks", self._named["rollbacks"])

    @property
    def freezes(self) -> Freezes:
        return cast("Freezes", self._named["freezes"])

    @property
    def stuck(self) -> Stuck:
        return cast("Stuck", self._named["stuck"])

    @property
    def history(self) -> History:
        return cast("History", self._named["history"])

    @property
    def authority(self) -> Authority:
        return cast("Authority", self._named["authority"])

    @property
    def principals(self) -> Principals:
        return cast("Principals", self._named["principals"])

    def call_later(
        self, tx: Tx, kind: str, route: str | None, payload: dict[str, Any], row: dict[str, Any]
    ) -> None:
        """Make an outbound wake/page call once ``tx`` commits; its outcome is a row."""
        fields = {k: v for k, v in row.items() if k not in ("event", "notes")}
        tx.after_commit(lambda: self.caller.call(kind, route, payload, fields))

    # ------------------------------------------------------------------ lifecycle
    async def start(self, background: bool = True) -> None:
        """Open the store, create the bootstrap admin, start the sweeper."""
        self._closing = False  # an engine may be started again after stop()
        self.store.set_listener(self._on_note)
        await self.store.open()
        self._audit_seq = (await self.store.read(lambda tx: tx.audit_head()))[0]
        await overlaps.at_start(self)  # held leases the blast-radius groups now make overlap
        self.auth_cache.enabled = (
            self.store.announces_principal_changes or self.store.principals_generation() is not None
        )
        if token := os.environ.get("WRIT_ADMIN_TOKEN"):
            await self.bootstrap_admin(token)
        self._sweeps = background  # the sweeper ends leases and serves the queue
        if background:
            self._tasks.append(asyncio.get_running_loop().create_task(self._sweeper()))

    async def stop(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.caller.close()
        await self.store.close()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_note(self, kind: str, payload: dict[str, Any]) -> None:
        # A note another process sent arrives "unverified" (anyone who can connect to a
        # shared database can send one): it may wake a waiter, never decide for it.
        if kind == "granted":
            fut = self._grants.get(str(payload.get("waiter_id")))
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif kind in ("principals", "resync"):
            # a principal changed (here, on another server, or by hand in the database),
            # or notifications may have been missed: forget every remembered token
            self.auth_cache.forget()
        elif kind == "audit":
            seq = payload.get("seq")
            if type(seq) is not int:
                return
            if payload.get("unverified"):  # wake the readers (they read the ledger itself)
                seq = self._audit_seq  # but an invented seq must not silence later ones
            elif seq <= self._audit_seq:
                return
            self._audit_seq = seq
            ev, self._audit_changed = self._audit_changed, asyncio.Event()
            ev.set()

    # ------------------------------------------------------------------ leases
    def validate_request(
        self,
        principal: Principal,
        resource: Any,
        intent: Any,
        ttl_s: Any = 30,
        wait_s: Any = 0,
        touches: Any = None,
        consent_id: Any = None,
        rollback: Any = None,
    ) -> Request:
        check_text(resource, "resource")
        resources.validate(resource)
        check_text(intent, "intent")
        check_tree(touches, "touches")
        check_text(consent_id, "consent_id")
        check_tree(rollback, "rollback")
        if not isinstance(intent, str) or not visible(intent):
            raise Invalid(
                "intent is required: say in a few words what you will change", field="intent"
            )
        if len(intent) > MAX_INTENT:
            raise Invalid(f"intent is at most {MAX_INTENT} characters", field="intent")
        ttl = number(ttl_s, "ttl_s", 1, MAX_TTL_S)
        wait = number(wait_s, "wait_s", 0, MAX_WAIT_S)
        default_touches = touches is None
        if touches is None:
            touches = ["*"]
        if (
            not isinstance(touches, list)
            or not touches
            or not all(isinstance(t, str) and 0 < len(t) <= 128 for t in touches)
            or len(touches) > 64
        ):
            raise Invalid(
                "touches must be a list of 1-64 attribute names (or ['*'])", field="touches"
            )
        if consent_id is not None and not isinstance(consent_id, str):
            raise Invalid("consent_id must be a string", field="consent_id")
        if rollback is not None and not isinstance(rollback, dict):
            raise Invalid("rollback must be an object", field="rollback")
        return Request(
            resource=resource,
            intent=intent.strip(),
            ttl_s=ttl,
            wait_s=wait,
            touches=list(dict.fromkeys(touches)),
            consent_id=consent_id,
            rollback=rollback,
            principal=principal.name,
            expand=self.blast.expand(resource),
            default_touches=default_touches,
        )

    async def acquire(self, principal: Principal, **kwargs: Any) -> dict[str, Any]:
        """Grant write authority, waiting up to ``wait_s`` in the FIFO queue.

        Raises :class:`Held` (with ``holder`` and ``queue_position``) when the wait ends
        without a grant, or the error of a safety rule (frozen, consent required).
        """
        req = self.validate_request(principal, **kwargs)
        if req.rollback is not None:
            req.rollback = await self.rollbacks.check_plan(req.rollback)
        waiter_id = new_id("wt")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._grants[waiter_id] = fut
        made: list[str] = []  # the leases its attempts granted (one committed, if any)
        try:
            try:
                out = await self.store.transact(
                    lambda tx: self._acquire_tx(tx, principal, req, waiter_id, made)
                )
            except asyncio.CancelledError as why:
                # the queue join, or the grant, may have committed: leave it, give it back
                await asyncio.shield(self._abandon(waiter_id, req, made, why))
                raise
            if isinstance(out, WritError):
                raise out
            if isinstance(out, Lease):
                return self._typo_warning(out.to_dict())
            return self._typo_warning(await self._wait(principal, req, out, fut))
        finally:
            self._grants.pop(waiter_id, None)

    def known_prefixes(self) -> list[str]:
        """The prefixes the policy names (its rules, its blast-radius groups and, when it has
        an ``[authority]`` section, its grants' write and observe prefixes): a lease outside
        all of them is granted with a ``warning`` (a likely typo)."""
        if self._known is None or self._known[0] is not self.policy:
            named = [r.prefix for r in self.policy.rules] + [
                m for _names, members in self.blast.groups for m in members
            ]
            for grant in getattr(getattr(self.policy, "authority", None), "grants", ()):
                named += [*getattr(grant, "write", ()), *getattr(grant, "observe", ())]
            self._known = (self.policy, named)
        return self._known[1]

    def _typo_warning(self, lease: dict[str, Any]) -> dict[str, Any]:
        warning = resources.outside_known(str(lease.get("resource")), self.known_prefixes())
        if warning:
            lease["warning"] = warning
        return lease

    async def _acquire_tx(
        self, tx: Tx, principal: Principal, req: Request, waiter_id: str, made: list[str]
    ) -> Lease | _Queued | WritError:
        err = await self._gates_now(tx, req, principal)  # disabled since checked: refused
        if err is not None:
            await self._deny(tx, req, None, err.message, _deny_event(err))
            return err
        # a blocker past its ttl is expired now, whether or not the sweeper has run yet
        await self._expire_due(tx, req.expand)
        blocked = await self._blocked(tx, req, None)
        if blocked is None:
            lease = await self._grant(tx, req)
            made.append(lease.lease_id)
            return lease
        if req.wait_s <= 0:
            return await self._refuse(tx, req, blocked)
        now = tx.now()
        w = await tx.insert_waiter(
            Waiter(
                waiter_id=waiter_id,
                seq=0,
                resource=req.resource,
                principal=req.principal,
                request=req.to_json(),
                enqueued_at=now,
                deadline=now + req.wait_s,
            )
        )
        tx.patient = True  # answered at the grant or the deadline, not at this commit
        hidden = await self.authority.hides(tx, req.principal, blocked.lease)
        await tx.append(
            lock_row(
                "lease.queued",
                req.principal,
                req.resource,
                blocked.lease,
                f"queued at position {blocked.position} for up to {req.wait_s:g}s: "
                + (_unseen_text if hidden else _blocked_text)(req.resource, blocked)
                + queued_as(w),  # names the waiter and its request, for verify
            )
        )
        return _Queued(w, blocked, now)

    async def _wait(
        self,
        principal: Principal,
        req: Request,
        queued: _Queued,
        fut: asyncio.Future[dict[str, Any]],
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.wait_s
        blocked, store_now = queued.blocked, queued.now
        waiter = queued.waiter
        req.waiter_id = waiter.waiter_id  # queued: the row that ends its wait names it
        try:
            while True:
                remaining = deadline - loop.time()
                timeout = remaining
                # the first in line looks at its blocker's end; the sweeper serves the rest
                if blocked.until is not None and (blocked.position <= 1 or not self._sweeps):
                    timeout = min(timeout, max(blocked.until - store_now, 0.0) + 0.001)
                if not fut.done() and timeout > 0:
                    me = asyncio.current_task()
                    n = me.cancelling() if me is not None else 0  # cancels before this wait
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), timeout)
                    if me is not None and me.cancelling() > n:  # (3.11's wait_for returned)
                        raise asyncio.CancelledError
                if fut.done():
                    try:
                        got = await self._collect(fut.result(), waiter)
                    except Unavailable:  # granted, but the store is out of reach: read again
                        if deadline - loop.time() <= 0:
                            raise
                        await asyncio.sleep(0.25)
                        continue
                    if got is not None:
                        return got
                    # a note the database does not bear out: keep waiting for a real one
                    fut = loop.create_future()
                    self._grants[waiter.waiter_id] = fut
                final = deadline - loop.time() <= 0
                try:
                    out = await self.store.transact(
                        lambda tx, final=final: self._recheck_tx(tx, req, waiter, final)  # type: ignore[misc]
                    )
                except Unavailable:
                    if final:
                        raise
                    # out of reach for now (a restart): keep our place, look again (not a 503)
                    await asyncio.sleep(min(0.25, max(deadline - loop.time(), 0.0)))
                    continue
                if isinstance(out, WritError):
                    raise out
                if isinstance(out, Lease):
                    return out.to_dict()
                blocked, store_now = out.blocked, out.now
        except asyncio.CancelledError as why:
            # the caller went away: leave the queue, and give back a lease granted meanwhile
            await asyncio.shield(self._abandon(waiter.waiter_id, req, (), why))
            raise

    async def _recheck_tx(
        self, tx: Tx, req: Request, waiter: Waiter, final: bool
    ) -> Lease | _Queued | WritError:
        granted = await self._granted_to(tx, req, waiter)  # (never one set there by hand)
        if granted is not None:
            return granted
        # expire what is due among the blockers: that dispatches, maybe to this waiter
        await self._expire_due(tx, req.expand)
        granted = await self._granted_to(tx, req, waiter)
        if granted is not None:
            return granted
        blocked = await self._blocked(tx, req, waiter.seq)
        if blocked is None:  # free and first, but nobody served the queue since
            # this request goes first, as the queue would send it, and those behind it are
            # served after it: taken out and the queue served before its own grant, one
            # behind it that conflicts was granted ahead of it
            await tx.delete_waiter(waiter.waiter_id)
            # the safety rules hold here too: a dispatch may have refused this waiter
            # already, and its note may not have reached us yet (another server's)
            err = await self._gates_now(tx, req)
            if err is not None:
                await self._deny(tx, req, None, err.message, _deny_event(err))
            out: Lease | WritError = err or await self._grant(tx, req, waiter.waiter_id)
            await self._dispatch(tx, req.expand)
            return out
        if not final:
            return _Queued(waiter, blocked, tx.now())
        await tx.delete_waiter(waiter.waiter_id)
        err = await self._refuse(tx, req, blocked, waited=True)
        await self._dispatch(tx, req.expand)  # those behind us may go now
        return err

    # ------------------------------------------------------------------ the view rules use
    @property
    def audit_changed(self) -> asyncio.Event:
        """Set when audit rows were appended (a fresh event each time: re-read it)."""
        return self._audit_changed

    def add_ticker(self, tick: Callable[[], Awaitable[Any]]) -> None:
        """Run ``tick`` on every sweep (after the rules' own periodic duties)."""
        self._tickers.append(tick)

    def rule(self, cls: type[R]) -> R:
        """The engine's instance of rule class ``cls`` (e.g. ``engine.rule(Authority)``)."""
        for r in (*self.rules, self.fencing):
            if isinstance(r, cls):
                return r
        raise LookupError(f"this engine has no rule {cls.__name__}")

    async def renew(self, principal: Principal, lease_id: str, ttl_s: Any = None) -> dict[str, Any]:
        """Extend a held lease by ``ttl_s`` (default: its own ttl) from now."""
        ttl = None if ttl_s is None else number(ttl_s, "ttl_s", 1, MAX_TTL_S)

        async def fn(tx: Tx) -> Lease | WritError:
            lease = await self.held_lease(tx, principal, lease_id, "renew")
            if isinstance(lease, WritError):
                return lease
            now = tx.now()
            if ttl is not None:
                lease.ttl_s = ttl
            lease.expires_at = now + lease.ttl_s
            await tx.update_lease(lease)
            await tx.append(
                lock_row(
                    "lease.renewed",
                    principal.name,
                    lease.resource,
                    lease,
                    f"renewed until {rfc3339(lease.expires_at)}",
                )
            )
            return lease

        out = await self.store.transact(fn)
        if isinstance(out, WritError):
            raise out
        return out.to_dict()

    async def release(self, principal: Principal, lease_id: str) -> dict[str, Any]:
        """Give up a held lease; the queue is served at once (no lock-delay)."""

        async def fn(tx: Tx) -> Lease | WritError:
            lease = await self.held_lease(tx, principal, lease_id, "release")
            if isinstance(lease, WritError):
                return lease
            return await self._end(
                tx, lease, "released", principal.name, notes="released by its holder"
            )

        out = await self.store.transact(fn)
        if isinstance(out, WritError):
            raise out
        return out.to_dict()

    async def revoke(
        self,
        principal: Principal,
        lease_id: str,
        runbook: Any,
        paged: Any,
        reason: Any,
        waive_lock_delay: bool = False,
    ) -> dict[str, Any]:
        """Force-release a lease: humans and queues only, with provenance."""
        if not principal.is_human:
            err = Forbidden(
                f"{principal.name} is a{'n' if principal.kind == 'agent' else ''} "
                f"{principal.kind}: only humans and queues may revoke a lease (agents may ask a "
                "human queue to do it)",
                kind=principal.kind,
            )
            await self.lease_refusal(principal, lease_id, err)
            raise err
        fields_ = {"runbook": runbook, "paged": paged, "reason": reason}
        missing = [k for k, v in fields_.items() if not isinstance(v, str) or not visible(v)]
        if missing:
            how = "(runbook followed, who was paged, and why), in words a reader sees"
            raise Invalid(
                f"a revoke must say how: {', '.join(missing)} required {how}", fields=missing
            )
        for field, value in fields_.items():
            text(value, field)  # text, and at most MAX_TEXT characters

        async def fn(tx: Tx) -> Lease | WritError:
            lease = (
                await tx.get_lease(lease_id, for_update=True) if isinstance(lease_id, str) else None
            )
            if lease is None:
                raise NotFound(f"no lease {lease_id!r}", lease_id=lease_id)
            lost = await self._lost(tx, lease)
            if lost is not None:
                return lost
            provenance = {
                "revoked_by": principal.name,
                "via_runbook": runbook.strip(),
                "at": rfc3339(tx.now()),
                "after_paging": paged.strip(),
            }
            return await self._end(
                tx,
                lease,
                "revoked",
                principal.name,
                notes=f"revoked {lease.holder}'s lease: {reason.strip()}"
                + (" (lock-delay waived)" if waive_lock_delay else ""),
                extra={"second_key_revoke_provenance": provenance, "approved_by": principal.name},
                lock_delay=not waive_lock_delay,
            )

        out = await self.store.transact(fn)
        if isinstance(out, WritError):
            raise out
        return out.to_dict()

    # ------------------------------------------------------------------ fencing and history
    async def fence(self, resource: str, token: Any, me: Principal | None = None) -> dict[str, Any]:
        """See :meth:`writ.engine.fencing.Fencing.fence`."""
        return await self.fencing.fence(resource, token, me)

    async def gate_check(
        self,
        gate: Principal,
        caller_token: str | None,
        lease_id: Any,
        fencing_token: Any,
        resource: str,
        method: str,
        path: str,
        attribute: str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`writ.engine.fencing.Fencing.gate_check`."""
        return await self.fencing.gate_check(
            gate, caller_token, lease_id, fencing_token, resource, method, path, attribute
        )

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]:
        """See :meth:`writ.evidence.history.History.who`."""
        return await self.history.who(resource, at)

    async def audit(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """See :meth:`writ.evidence.history.History.audit`."""
        return await self.history.audit(after_seq, limit, prefix, since, until)

    async def events(
        self, prefix: str | None = None, after_seq: int = 0, wait_s: Any = 0, limit: int = 1000
    ) -> dict[str, Any]:
        """See :meth:`writ.evidence.history.History.events`."""
        return await self.history.events(prefix, after_seq, wait_s, limit)

    async def verify(self) -> Verification:
        """See :meth:`writ.evidence.history.History.verify`."""
        return await self.history.verify()

    # ------------------------------------------------------------------ background
    async def sweep(self) -> int:
        """Expire every lease past its ttl (and end lock-delays), then run the tickers;
        returns leases expired. A read says first what is due, so an idle sweep writes
        nothing (on PostgreSQL: no turn at the chain head's lock). What falls due after it
        is the next sweep's (an acquire expires a blocker itself); the write looks again
        under the lock. A rule ticks when its ``due`` says so; if the look fails, all do."""
        tickers = [(tick, self._dues.get(tick)) for tick in self._tickers]

        async def look(tx: Tx) -> tuple[bool, list[bool], float | None]:
            nxt = await _next_due(tx, self.sweep_interval)
            ticks = [d is None or await d(tx, tx.now()) for _, d in tickers]
            return nxt is not None and nxt <= 0, ticks, nxt

        async def fn(tx: Tx) -> int:
            now = tx.now()
            due = await tx.due_leases(now, 500)
            for lease in due:
                fresh = await tx.get_lease(lease.lease_id, for_update=True)
                if fresh is not None and fresh.state == "held" and fresh.expires_at <= now:
                    await self._expire(tx, fresh)
            for d in await tx.objects_due("delay", "active", now, 500):
                await self._end_delay(tx, d)
            return len(due)

        try:
            ends, ticks, nxt = await self.store.read(look)
        except Unavailable:
            raise  # the store is out of reach: the sweeper says so, and tries again
        except Exception:  # (a rule's due that raises): everything, as before the look
            log.warning("sweep: what is due could not be read (%s)", sys.exc_info()[1])
            ends, ticks, nxt = True, [True] * len(tickers), None
        self._swept = (ends, None if nxt is None else asyncio.get_running_loop().time() + nxt)
        n = await self._end_due(fn) if ends else 0  # one that fails: the others still end
        for (tick, _), wanted in zip(tickers, ticks, strict=True):
            if wanted:
                await self._tick(tick)  # one that fails: the others still run
        return n

    async def _sweeper(self) -> None:
        while not self._closing:
            try:
                await self.sweep()
                wrote, at = self._swept  # as the sweep's read found it, unless it wrote
                nxt = None if at is None else at - asyncio.get_running_loop().time()  # (ticked)
                if wrote:
                    nxt = await self.store.read(lambda tx: _next_due(tx, self.sweep_interval))
                delay = min(self.sweep_interval, float("inf") if nxt is None else max(nxt, 0.005))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "sweep failed (%s); retrying in %.1fs", sys.exc_info()[1], self.sweep_interval
                )
                delay = self.sweep_interval
            await asyncio.sleep(delay)


async def _next_due(tx: Tx, within: float) -> float | None:
    """Seconds to the next lease expiry or lock-delay end (a delay's only if ``within``)."""
    expiry = await tx.next_expiry()  # first: a store may begin the snapshot with it
    now = tx.now()
    ends = [d["expires_at_ts"] for d in await tx.objects_due("delay", "active", now + within, 1)]
    ends += [] if expiry is None else [expiry]
    return min(ends) - now if ends else None


if TYPE_CHECKING:

    def _a_view(engine: Engine) -> EngineView:
        """mypy checks here that an Engine is everything EngineView promises the rules."""
        return engine
