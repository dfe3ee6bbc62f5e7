"""The engine: write authority, decided in store transactions. No HTTP, no SQL.

Every operation is one store transaction (:meth:`writ.stores.base.Store.transact`) that
makes its change and appends its audit row together. The server, the CLI, the MCP adapter
and the gate are thin shells over this class.

Waiting is a FIFO queue kept in the store, shared by all conflicting resources. A request
that cannot be granted joins it (``lease.queued``); whenever a lease ends or a waiter leaves,
:meth:`Engine._dispatch` grants, inside that same transaction, every queued request that is
no longer blocked by a held lease or by an *earlier* conflicting waiter — so nobody is
overtaken, and the waiter learns of its grant from a notification, not by polling. A
waiter also sleeps until the moment its blocker would expire, so an expired holder is
replaced on time even when nobody sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
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
)
from writ.core.ledger import Verification
from writ.core.models import KINDS, NAME, Lease, Principal, Waiter, data, new_id, public
from writ.core.policy import Policy
from writ.core.validate import check_text, check_tree, number
from writ.core.wake_routes import check_wake_route, redact
from writ.engine.defaults import DEFAULT_RULES, load_rule
from writ.engine.hooks import MAX_TTL_S, MAX_WAIT_S, SYSTEM, R, Request, Rule, lock_row
from writ.engine.principals import hash_token as hash_token
from writ.engine.principals import new_token as new_token
from writ.stores.base import Store, Tx

if TYPE_CHECKING:
    from writ.engine.principals import Principals
    from writ.history import History
    from writ.rules.authority import Authority
    from writ.rules.consent import Consents
    from writ.rules.freezes import Freezes
    from writ.rules.rollbacks import Rollbacks
    from writ.rules.stuck import Stuck

log = logging.getLogger("writ.engine")

MAX_INTENT = 1000
STALE_WAITER_S = 2.0  # a waiter this far past its deadline has no caller left
# the policy objects a grant is checked against, fetched together (one query where the
# store can): lock-delays, freezes, protected changes
POLICY_OBJECTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("delay", ("active",)),
    ("freeze", ("active",)),
    ("change", ("protected",)),
)
DISPATCH_PAGE = 4  # queued requests read at once when a lease ends (then the rest, if needed)
# names writ itself writes into rows where a principal's name goes: never a principal's
# (``none``: lock_holder when nobody holds; ``operator``: offline store work; ``unknown``:
# a gate.refused row's caller without a valid token)
RESERVED_NAMES = frozenset({SYSTEM, "none", "operator", "unknown"})

Gate = Callable[[Tx, Principal, "Request"], Awaitable["WritError | None"]]


@dataclass(slots=True)
class Blocked:
    """Why a request could not be granted now."""

    lease: Lease | None  # the conflicting holder (or the queue head's blocker)
    until: float | None  # when the blocker would expire on its own (store clock)
    position: int  # 1 + conflicting waiters ahead
    reason: str = "held"  # "held" | "queue" | "lock_delay"


@dataclass(slots=True)
class _Queued:
    waiter: Waiter
    blocked: Blocked
    now: float


class Engine:
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
        self.sweep_interval = 1.0
        self._closing = False
        from writ.engine.fencing import Fencing
        from writ.engine.wake import Caller

        # not rules: the wake caller and the fencing checks the kernel itself uses
        self.caller = Caller(self)
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

    # ------------------------------------------------------------------ helpers for rows
    def override_queue(self, lease: Lease) -> str | None:
        """The human queue paged for ``lease``: its rollback plan's, else the policy's."""
        return (lease.rollback or {}).get("override_queue") or self.policy.default_override_queue

    def lease_row(
        self, lease: Lease, event: str, agent: str, notes: str, **extra: Any
    ) -> dict[str, Any]:
        """Audit fields of a row about ``lease`` (its lock and its rollback plan)."""
        rb = lease.rollback or {}
        return {
            "event": event,
            "agent_id": agent,
            "resource": lease.resource,
            "lock_holder": lease.holder,
            "lock_key": lease.lock_key,
            "lock_acquired_at": rfc3339(lease.acquired_at),
            "fencing_token": lease.fencing_token,
            "rollback_allowed": bool(rb.get("allowed")),
            "rollback_path": rb.get("path"),
            "rollback_key_holder": rb.get("key_holder"),
            "human_override_queue": self.override_queue(lease),
            "rollback_denominator": rb.get("denominator"),
            "notes": notes,
            **extra,
        }

    async def policy_objects(self, tx: Tx, paths: Sequence[str], kind: str) -> list[dict[str, Any]]:
        """The standing policy objects of ``kind`` related to ``paths`` (see POLICY_OBJECTS)."""
        return (await tx.objects_related_many(POLICY_OBJECTS, paths))[kind]

    async def holder(self, tx: Tx, resource: str) -> Lease | None:
        """The lease that holds write authority over ``resource`` now, if any."""
        now = tx.now()
        covering = self.blast.covering(resource)
        for lease in await tx.held_related(self.blast.expand(resource)):
            if lease.expires_at > now and lease.resource in covering:
                return lease
        return None

    async def holder_name(self, tx: Tx, resource: str) -> str:
        """Who holds write authority over ``resource`` now (``"none"`` when nobody)."""
        lease = await self.holder(tx, resource)
        return lease.holder if lease else "none"

    async def holder_info(self, tx: Tx, lease: Lease) -> dict[str, Any]:
        """The ``holder`` object of an answer that ``lease`` stands in the way of: who holds
        what, for what, until when, and the route that wakes them."""
        p = await tx.get_principal(lease.holder)
        return {
            "holder": lease.holder,
            "resource": lease.resource,
            "intent": lease.intent,
            "acquired_at": rfc3339(lease.acquired_at),
            "expires_at": rfc3339(lease.expires_at),
            "wake": redact(p.wake) if p and p.wake else None,  # no routing keys, webhooks
        }

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
        self.auth_cache.enabled = (
            self.store.announces_principal_changes or self.store.principals_generation() is not None
        )
        token = os.environ.get("WRIT_ADMIN_TOKEN")
        if token:
            await self.bootstrap_admin(token)
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
        if kind == "granted":
            fut = self._grants.get(payload["waiter_id"])
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif kind in ("principals", "resync"):
            # a principal changed (here, on another server, or by hand in the database),
            # or notifications may have been missed: forget every remembered token
            self.auth_cache.forget()
        elif kind == "audit":
            seq = int(payload.get("seq", 0))
            if seq > self._audit_seq:
                self._audit_seq = seq
                ev, self._audit_changed = self._audit_changed, asyncio.Event()
                ev.set()

    # ------------------------------------------------------------------ principals
    async def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token belongs to, or :class:`Unauthenticated`."""
        if not token:
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        from writ.engine.principals import refusal

        h = hash_token(token)
        cache = self.auth_cache
        if cache.enabled:
            seen = self.store.principals_generation()
            if seen is not None and seen != cache.store_generation:
                cache.forget()  # a principal changed, maybe by hand: look every token up again
                cache.store_generation = seen
        p = cache.get(h)
        if p is not None:
            return p
        generation = cache.generation

        async def by_token(tx: Tx) -> tuple[Principal | None, float]:
            return await tx.principal_by_token(h), tx.now()

        p, now = await self.store.read(by_token)
        if p is None and self.identity.handles(token):
            # not a writ token (looked up first: a writ token may contain dots): a JWT
            return await self._authenticate_jwt(token)
        if p is None:
            raise Unauthenticated(
                "unknown token: ask an admin for a principal (writ principal add), or for "
                "a new token if it was rotated"
            )
        err = refusal(p, now)
        if err is not None:
            raise err
        cache.put(h, p, generation)
        return p

    async def _authenticate_jwt(self, token: str) -> Principal:
        """The registered, enabled principal a JWT from a configured issuer names."""
        from writ.engine.principals import refusal

        name = await self.identity.verify(token)

        async def by_name(tx: Tx) -> tuple[Principal | None, float]:
            return await tx.get_principal(name), tx.now()

        p, now = await self.store.read(by_name)
        if p is None:
            raise Unauthenticated(
                f"the JWT names {name[:64]!r}, which is not a registered principal: "
                "ask an admin to add it (writ principal add)"
            )
        if p.disabled_at is not None:  # the writ token's own expiry does not apply
            err = refusal(p, now)
            assert err is not None
            raise err
        return p

    async def bootstrap_admin(self, token: str) -> None:
        """Create principal ``admin`` (human, admin) with ``token`` unless it exists.

        An existing ``admin`` is left as it is: once its token was rotated, the old
        ``WRIT_ADMIN_TOKEN`` stays refused (a warning says so), never restored."""

        async def fn(tx: Tx) -> bool:
            if await tx.get_principal("admin") is not None:
                p = await tx.principal_by_token(hash_token(token))
                return p is not None and p.name == "admin"
            await self._insert_principal(tx, SYSTEM, "admin", "human", None, None, True, token)
            return True

        if not await self.store.transact(fn):
            log.warning(
                "WRIT_ADMIN_TOKEN is not the token of principal admin (it was rotated): "
                "the variable is ignored and that token is refused; use the rotated token, "
                "or 'writ principal rotate admin --store URL' on the store to get a new one"
            )

    async def add_principal(
        self,
        actor: Principal | None,
        name: str,
        kind: str,
        vendor: str | None = None,
        wake: str | None = None,
        admin: bool = False,
        token: str | None = None,
        queues: Any = None,
        expires_in_s: Any = None,
    ) -> tuple[Principal, str]:
        """Register a principal; returns it with its token (shown only now).

        ``actor`` None means an operator working offline on the store itself. ``queues``
        (humans only) names the on-call queues it is a member of; ``expires_in_s`` ends its
        token (see :mod:`writ.principals`).
        """
        if actor is not None and not actor.admin:
            raise Forbidden("only an admin may add principals", actor=actor.name)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise Invalid("name must be 1-64 of a-z 0-9 . _ -", field="name")
        if name in RESERVED_NAMES:
            raise Invalid(
                f"name {name!r} is reserved: writ writes it into audit rows itself "
                f"(reserved: {', '.join(sorted(RESERVED_NAMES))})",
                field="name",
            )
        if kind not in KINDS:
            raise Invalid(f"kind must be one of {', '.join(KINDS)}", field="kind")
        if vendor is not None and (not isinstance(vendor, str) or len(vendor) > 200):
            raise Invalid("vendor must be a string of at most 200 characters", field="vendor")
        check_text(vendor, "vendor")
        check_text(wake, "wake")
        if wake is not None:
            check_wake_route(wake, "wake")
        if admin and kind not in ("human", "queue"):
            raise Invalid("only a human or a queue may be an admin", field="admin")
        if queues is not None and queues != [] and kind != "human":
            raise Invalid("only a human is a member of queues", field="queues")
        from writ.engine.principals import expires_in

        ttl = expires_in(expires_in_s)
        tok = token or new_token()
        by = actor.name if actor else "operator"

        async def fn(tx: Tx) -> Principal:
            member_of = await self.principals.check_queues(tx, queues, "queues") if queues else []
            return await self._insert_principal(
                tx, by, name, kind, vendor, wake, admin, tok, member_of, ttl
            )

        p = await self.store.transact(fn)
        return p, tok

    async def _insert_principal(
        self,
        tx: Tx,
        by: str,
        name: str,
        kind: str,
        vendor: str | None,
        wake: str | None,
        admin: bool,
        token: str,
        queues: list[str] | None = None,
        expires_in_s: float | None = None,
    ) -> Principal:
        now = tx.now()
        p = Principal(
            name=name,
            kind=kind,
            vendor=vendor,
            wake=wake,
            admin=admin,
            created_at=now,
            queues=list(queues or []),
            token_expires_at=now + expires_in_s if expires_in_s is not None else None,
        )
        await tx.insert_principal(p, hash_token(token))
        await tx.append(
            {
                "event": "principal.added",
                "agent_id": by,
                "resource": f"principals/{name}",
                "notes": f"{by} added {kind} {name!r}"
                + (f" (vendor {vendor})" if vendor else "")
                + (" as admin" if admin else "")
                + (f"; wake {redact(wake)}" if wake else "")
                + (f"; member of {', '.join(p.queues)}" if p.queues else "")
                + (
                    f"; its token expires at {rfc3339(p.token_expires_at)}"
                    if p.token_expires_at
                    else ""
                ),
            }
        )
        return p

    async def list_principals(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in await self.store.read(lambda tx: tx.list_principals())]

    async def principal(self, name: str) -> Principal | None:
        return await self.store.read(lambda tx: tx.get_principal(name))

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
        if not isinstance(intent, str) or not intent.strip():
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
        try:
            out = await self.store.transact(
                lambda tx: self._acquire_tx(tx, principal, req, waiter_id)
            )
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
        self, tx: Tx, principal: Principal, req: Request, waiter_id: str
    ) -> Lease | _Queued | WritError:
        err = await self._run_gates(tx, principal, req)
        if err is not None:
            await self._deny(tx, req, None, err.message, _deny_event(err))
            return err
        # a blocker past its ttl is expired now, whether or not the sweeper has run yet
        await self._expire_due(tx, req.expand)
        blocked = await self._blocked(tx, req, None)
        if blocked is None:
            return await self._grant(tx, req)
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
        hidden = await self.authority.hides(tx, req.principal, blocked.lease)
        await tx.append(
            lock_row(
                "lease.queued",
                req.principal,
                req.resource,
                blocked.lease,
                f"queued at position {blocked.position} for up to {req.wait_s:g}s: "
                + (_unseen_text if hidden else _blocked_text)(req.resource, blocked),
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
        try:
            while True:
                remaining = deadline - loop.time()
                timeout = remaining
                if blocked.until is not None:
                    timeout = min(timeout, max(blocked.until - store_now, 0.0) + 0.001)
                if not fut.done() and timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), timeout)
                if fut.done():
                    try:
                        return await self._collect(fut.result())
                    except Unavailable:  # granted, but the store is out of reach: read again
                        if deadline - loop.time() <= 0:
                            raise
                        await asyncio.sleep(0.25)
                        continue
                final = deadline - loop.time() <= 0
                try:
                    out = await self.store.transact(
                        lambda tx, final=final: self._recheck_tx(tx, req, waiter, final)  # type: ignore[misc]
                    )
                except Unavailable:
                    if final:
                        raise
                    # the store is out of reach for now (a database restart): keep our place
                    # in the queue and look again, rather than answer 503 and leave an entry
                    # behind that would be granted a lease nobody collects
                    await asyncio.sleep(min(0.25, max(deadline - loop.time(), 0.0)))
                    continue
                if isinstance(out, WritError):
                    raise out
                if isinstance(out, Lease):
                    return out.to_dict()
                blocked, store_now = out.blocked, out.now
        except asyncio.CancelledError:
            # the caller went away: leave the queue, and give back a lease granted meanwhile
            await asyncio.shield(self._abandon(waiter))
            raise

    async def _collect(self, note: dict[str, Any]) -> dict[str, Any]:
        if "error" in note:
            from writ.core.errors import error_from_body

            raise error_from_body(0, {"error": note["error"]})
        granted = note.get("lease")
        if isinstance(granted, dict) and granted.get("lease_id") == note["lease_id"]:
            return granted  # as granted, in the committed transaction that sent the note
        lease = await self.store.read(lambda tx: tx.get_lease(note["lease_id"]))
        if lease is None:  # pragma: no cover - the grant committed before the note
            raise NotFound("granted lease vanished")
        return lease.to_dict()

    async def _recheck_tx(
        self, tx: Tx, req: Request, waiter: Waiter, final: bool
    ) -> Lease | _Queued | WritError:
        granted = await tx.lease_for_request(waiter.waiter_id)
        if granted is not None:
            return granted
        # expire what is due among the blockers: that dispatches, maybe to this waiter
        await self._expire_due(tx, req.expand)
        granted = await tx.lease_for_request(waiter.waiter_id)
        if granted is not None:
            return granted
        blocked = await self._blocked(tx, req, waiter.seq)
        if blocked is None:  # free, but nobody dispatched yet (e.g. a lock-delay ended)
            await tx.delete_waiter(waiter.waiter_id)
            await self._dispatch(tx, req.expand)
            granted = await tx.lease_for_request(waiter.waiter_id)
            if granted is not None:
                return granted
            blocked = await self._blocked(tx, req, None)
            if blocked is None:
                # the safety rules hold here too: a dispatch may have refused this waiter
                # already, and its note may not have reached us yet (another server's)
                principal = await tx.get_principal(req.principal)
                err = await self._run_gates(tx, principal, req) if principal else _gone(req)
                if err is not None:
                    await self._deny(tx, req, None, err.message, _deny_event(err))
                    return err
                return await self._grant(tx, req, waiter.waiter_id)
        if not final:
            return _Queued(waiter, blocked, tx.now())
        await tx.delete_waiter(waiter.waiter_id)
        err = await self._refuse(tx, req, blocked, waited=True)
        await self._dispatch(tx, req.expand)  # those behind us may go now
        return err

    async def _abandon(self, waiter: Waiter) -> None:
        async def fn(tx: Tx) -> None:
            if await tx.delete_waiter(waiter.waiter_id):
                # leaving the queue is a state change too: its row ends the lease.queued one
                held = await tx.held_related(self.blast.expand(waiter.resource))
                await tx.append(
                    lock_row(
                        "lease.denied",
                        waiter.principal,
                        waiter.resource,
                        held[0] if held else None,
                        f"withdrawn {waiter.request.get('intent')!r}: the waiting caller "
                        "disconnected before a grant",
                    )
                )
                await self._dispatch(tx, self.blast.expand(waiter.resource))
                return
            lease = await tx.lease_for_request(waiter.waiter_id)
            if lease is not None and lease.state == "held":
                await self._end(
                    tx,
                    lease,
                    "released",
                    waiter.principal,
                    notes="released: the waiting caller disconnected before the grant reached it",
                )

        with contextlib.suppress(WritError):
            await self.store.transact(fn)

    async def _run_gates(self, tx: Tx, principal: Principal, req: Request) -> WritError | None:
        for gate in self._gates:
            err = await gate(tx, principal, req)
            if err is not None:
                return err
        return None

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
            return Blocked(first, first.expires_at if first else now + 0.05, position, "queue")
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
                + (f"; warning: {warn}" if warn else ""),
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
                f"refused {req.intent!r}: {why}",
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
            earlier.append(w.resource)
            if not in_line:
                await self._offer(tx, w)
            if all(resources.under(p, w.resource) for p in paths):
                return True
        return False

    async def _offer(self, tx: Tx, w: Waiter) -> None:
        """Grant a queued request if nothing blocks it (or refuse it by the safety rules),
        take it out of the queue, and notify its waiter."""
        req = self._queued_request(w)
        if await self._blocked(tx, req, w.seq) is not None:
            return
        principal = await tx.get_principal(w.principal)
        err = await self._run_gates(tx, principal, req) if principal else _gone(req)
        await tx.delete_waiter(w.waiter_id)
        if err is not None:
            await self._deny(tx, req, None, err.message, _deny_event(err))
            tx.notify("granted", {"waiter_id": w.waiter_id, "error": err.to_body()["error"]})
            return
        lease = await self._grant(tx, req, w.waiter_id)
        # the lease travels with the note: its waiter answers without reading it back
        tx.notify(
            "granted",
            {"waiter_id": w.waiter_id, "lease_id": lease.lease_id, "lease": lease.to_dict()},
        )

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
        """End a held lease (released, expired, revoked), write its row, serve the queue."""
        now = tx.now()
        lease.state = state
        lease.ended_at = now
        await tx.update_lease(lease)
        await tx.append(self.lease_row(lease, f"lease.{state}", by, notes, **(extra or {})))
        if lock_delay:
            delay = self.policy.rule_for(lease.resource).lock_delay_s
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

    async def own_lease(self, tx: Tx, principal: Principal, lease_id: str) -> Lease:
        """``lease_id``, locked for update, when ``principal`` holds it (else 422/404/403)."""
        if not isinstance(lease_id, str) or not lease_id:
            raise Invalid("lease_id is required", field="lease_id")
        lease = await tx.get_lease(lease_id, for_update=True)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", lease_id=lease_id)
        if lease.holder != principal.name:
            raise Forbidden(
                f"lease {lease_id} is held by {lease.holder}, not {principal.name}",
                holder=lease.holder,
            )
        return lease

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
    _own_lease = own_lease
    _lost = lost

    # ------------------------------------------------------------------ the view rules use
    @property
    def audit_changed(self) -> asyncio.Event:
        """Set when audit rows were appended; the engine swaps in a fresh event each time,
        so a waiter must re-read this property on every loop."""
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
            lease = await self._own_lease(tx, principal, lease_id)
            lost = await self._lost(tx, lease)
            if lost is not None:
                return lost
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
            lease = await self._own_lease(tx, principal, lease_id)
            lost = await self._lost(tx, lease)
            if lost is not None:
                return lost
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
            raise Forbidden(
                f"{principal.name} is a{'n' if principal.kind == 'agent' else ''} "
                f"{principal.kind}: only humans and queues may revoke a lease (agents may ask a "
                "human queue to do it)",
                kind=principal.kind,
            )
        fields_ = {"runbook": runbook, "paged": paged, "reason": reason}
        missing = [k for k, v in fields_.items() if not isinstance(v, str) or not v.strip()]
        if missing:
            raise Invalid(
                "a revoke must say how: "
                + ", ".join(missing)
                + " required (runbook followed, who was paged, and why)",
                fields=missing,
            )
        for field, value in fields_.items():
            check_text(value, field)

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

    async def get_lease(self, lease_id: str) -> dict[str, Any]:
        async def fn(tx: Tx) -> dict[str, Any] | None:
            lease = await tx.get_lease(lease_id)
            return lease.to_dict(tx.now()) if lease else None

        out = await self.store.read(fn)
        if out is None:
            raise NotFound(f"no lease {lease_id!r}", lease_id=lease_id)
        return out

    async def list_leases(
        self,
        prefix: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        holder: str | None = None,
    ) -> list[dict[str, Any]]:
        if prefix:
            resources.validate(prefix, "resource")
        if state is not None and state not in ("held", "released", "expired", "revoked"):
            raise Invalid("state must be held, released, expired or revoked", field="state")
        limit = int(number(limit, "limit", 1, 100_000))

        async def fn(tx: Tx) -> list[dict[str, Any]]:
            now = tx.now()
            # a held lease past its expiry is expired, whether or not the sweeper wrote it yet
            want = "held" if state in ("held", "expired") else state
            out = [l.to_dict(now) for l in await tx.list_leases(prefix, want, limit, holder)]
            if state == "held":
                out = [d for d in out if d["state"] == "held"]
            if state == "expired":
                more = [
                    l.to_dict(now) for l in await tx.list_leases(prefix, "expired", limit, holder)
                ]
                out = sorted(
                    [d for d in out if d["state"] == "expired"] + more,
                    key=lambda d: -d["fencing_token"],
                )[:limit]
            return out

        return await self.store.read(fn)

    async def resource_status(self, resource: str) -> dict[str, Any]:
        resources.validate(resource)
        exp = self.blast.expand(resource)

        async def fn(tx: Tx) -> dict[str, Any]:
            now = tx.now()
            held = [l for l in await tx.held_related(exp) if l.expires_at > now]
            own = [l for l in held if l.resource == resource] or held
            queue = await tx.waiters_related(exp)
            objects = await tx.objects_related_many(POLICY_OBJECTS, exp)
            protected = [c for c in objects["change"] if (c.get("expires_at_ts") or 0) > now]
            freezes = [
                f
                for f in objects["freeze"]
                if not f.get("expires_at_ts") or f["expires_at_ts"] > now
            ]
            delays = [d for d in objects["delay"] if (d.get("expires_at_ts") or 0) > now]
            return {
                "resource": resource,
                "lease": own[0].to_dict(now) if own else None,
                "conflicting": [l.to_dict(now) for l in held],
                "queue": [
                    {
                        "position": i + 1,
                        "principal": w.principal,
                        "resource": w.resource,
                        "intent": w.request.get("intent"),
                        "since": rfc3339(w.enqueued_at),
                        "deadline": rfc3339(w.deadline),
                    }
                    for i, w in enumerate(queue)
                ],
                "protected_changes": [public(c) for c in protected],
                "frozen": bool(freezes),
                "freezes": [public(f) for f in freezes],
                "lock_delay_until": max((d["until"] for d in delays), default=None),
                "blast_radius": list(exp),
            }

        return await self.store.read(fn)

    async def status(self, prefix: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Held leases under ``prefix`` with their waiter counts (``writ status``)."""
        leases = await self.list_leases(prefix, "held", limit)

        async def fn(tx: Tx) -> list[int]:
            return [
                await tx.count_waiters_related(self.blast.expand(l["resource"])) for l in leases
            ]

        counts = await self.store.read(fn)
        for lease, n in zip(leases, counts, strict=True):
            lease["waiters"] = n
        return leases

    # ------------------------------------------------------------------ fencing and history
    async def fence(self, resource: str, token: Any, me: Principal | None = None) -> dict[str, Any]:
        """See :meth:`writ.fencing.Fencing.fence`."""
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
        """See :meth:`writ.fencing.Fencing.gate_check`."""
        return await self.fencing.gate_check(
            gate, caller_token, lease_id, fencing_token, resource, method, path, attribute
        )

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]:
        """See :meth:`writ.history.History.who`."""
        return await self.history.who(resource, at)

    async def audit(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        """See :meth:`writ.history.History.audit`."""
        return await self.history.audit(after_seq, limit, prefix, since, until)

    async def events(
        self, prefix: str | None = None, after_seq: int = 0, wait_s: Any = 0, limit: int = 1000
    ) -> dict[str, Any]:
        """See :meth:`writ.history.History.events`."""
        return await self.history.events(prefix, after_seq, wait_s, limit)

    async def verify(self) -> Verification:
        """See :meth:`writ.history.History.verify`."""
        return await self.history.verify()

    # ------------------------------------------------------------------ background
    async def sweep(self) -> int:
        """Expire every lease past its ttl (and end lock-delays); returns leases expired."""

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

        n = await self.store.transact(fn)
        for tick in self._tickers:
            await tick()
        return n

    async def _sweeper(self) -> None:
        while not self._closing:
            try:
                await self.sweep()
                nxt = await self.store.read(_next_due)
                delay = (
                    self.sweep_interval
                    if nxt is None
                    else min(self.sweep_interval, max(nxt, 0.005))
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "sweep failed (%s); retrying in %.1fs", sys.exc_info()[1], self.sweep_interval
                )
                delay = self.sweep_interval
            await asyncio.sleep(delay)


def _deny_event(err: WritError) -> str:
    """The row of a grant a safety rule refused: ``lease.refused`` when it was not the
    caller's authority (403), ``lease.denied`` otherwise."""
    return "lease.refused" if isinstance(err, Forbidden) else "lease.denied"


def _gone(req: Request) -> WritError:
    """A queued request whose principal was deleted (by hand) while it waited."""
    return Unauthenticated(
        f"principal {req.principal} no longer exists: its queued request is refused",
        principal=req.principal,
    )


def _blocked_text(resource: str, b: Blocked) -> str:
    if b.reason == "lock_delay":
        return f"{resource} is in lock-delay after its holder died, until {rfc3339(b.until)}"
    if b.lease is None:
        return f"{resource} has {b.position - 1} conflicting request(s) queued ahead"
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
    text = (
        f"{resource} is held through its blast radius, by a lease on a resource you may "
        f"not observe, until {rfc3339(b.until)}"
    )
    if b.reason == "queue":
        text = f"{b.position - 1} conflicting request(s) queued ahead; the first waits on: " + text
    return text


async def _next_due(tx: Tx) -> float | None:
    nxt = await tx.next_expiry()
    return None if nxt is None else nxt - tx.now()
