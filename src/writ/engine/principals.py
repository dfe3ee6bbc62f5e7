"""Token lifecycle and queue membership (PROTOCOL.md v1.1): rotate, disable, enable,
expiry, and the on-call queues a human is a member of.

A principal has one token at a time, stored hashed. ``rotate`` replaces it (the old one is
refused from that commit on), ``disable`` refuses it and takes the principal out of play
(its held leases are revoked, its queued requests leave the queue), ``enable`` brings the
principal back with a fresh token. Rotate and enable also cut off the JWTs issued for the
principal until then (:mod:`writ.engine.cutoff`), and rotate takes its queued requests
out of the queue: each was asked with a credential that is refused now. ``expires_in_s``
on create or rotate gives the token an end. Each is one store transaction with its audit
row.

Tokens that were refused must stay refused everywhere at once. The engine remembers the
tokens it accepted only briefly (:mod:`writ.engine.auth_cache`) and forgets every one of
them when a principal changes: on a ``principals`` notification — sent by each change made
here and, in PostgreSQL, by a trigger on any change to the table, hand edits included —
after the store's listener reconnects (``resync``), and, in SQLite, when the store's count
of principal changes (kept by triggers, read on every request) moved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

from writ.core.clock import rfc3339
from writ.core.errors import (
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
    WritError,
)
from writ.core.identity import Identity
from writ.core.models import KINDS, NAME, Principal
from writ.core.validate import check_text, number, text, text_problem
from writ.core.wake_routes import check_wake_route, redact
from writ.engine.auth_cache import AUTH_CACHE_S as AUTH_CACHE_S
from writ.engine.auth_cache import AuthCache as AuthCache
from writ.engine.cutoff import cut_off, cut_off_at, refuse_early
from writ.engine.hooks import SYSTEM, Request, Rule
from writ.stores.base import Store, Tx

if TYPE_CHECKING:
    from writ.engine.kernel import Engine

log = logging.getLogger("writ.engine")


def about(name: Any) -> str:
    """The resource of a row about principal ``name`` (``principals`` when not a name)."""
    return f"principals/{name}" if isinstance(name, str) and _NAME.fullmatch(name) else "principals"


# below this, a token an operator chose (WRIT_ADMIN_TOKEN) is warned of at every start
MIN_CHOSEN_TOKEN = 16


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "writ_" + secrets.token_urlsafe(32)


#: The longest ``expires_in_s`` accepted: ten years.
MAX_EXPIRES_S = 10 * 365 * 86_400
DISABLE_RUNBOOK = "principal.disable"
_NAME = re.compile(r"[a-z0-9._-]{1,64}")  # a principal's name (engine.NAME)


def plain_text(value: Any, field: str) -> str:
    """:func:`~writ.core.validate.text`, refusing strings that are not Unicode text (a lone
    surrogate from a JSON escape cannot be stored)."""
    out = text(value, field)
    assert out is not None
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(
            f"{field} is not valid Unicode text (it holds a lone surrogate)", field=field
        ) from None
    return out


def expires_in(value: Any) -> float | None:
    """``expires_in_s`` checked: None, or seconds in ``[1, MAX_EXPIRES_S]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid("expires_in_s must be a number of seconds", field="expires_in_s")
    return number(value, "expires_in_s", 1, MAX_EXPIRES_S)


def refusal(p: Principal, now: float) -> Unauthenticated | None:
    """Why ``p``'s token is not accepted now (disabled, expired), or None."""
    if p.disabled_at is not None:
        return Unauthenticated(
            f"principal {p.name} is disabled since {rfc3339(p.disabled_at)}"
            + (f" ({p.disabled_reason})" if p.disabled_reason else "")
            + ": an admin may enable it (writ principal enable)",
            principal=p.name,
        )
    if p.token_expires_at is not None and now >= p.token_expires_at:
        return Unauthenticated(
            f"the token of {p.name} expired at {rfc3339(p.token_expires_at)}: "
            "an admin may rotate it (writ principal rotate)",
            principal=p.name,
        )
    return None


class Principals(Rule):
    """The lifecycle operations, hooked into the engine (``engine.principals``)."""

    name = "principals"
    # the first gate: a request queued before its principal was disabled is refused when
    # its turn comes
    gate_priority = 0
    engine: Engine  # a kernel collaborator: it also uses the token cache

    async def gate(self, tx: Tx, me: Principal | None, req: Request) -> WritError | None:
        # (a token that expired while its request waited was valid when it asked: granted)
        if me is not None and me.disabled_at is not None:
            return refusal(me, tx.now())
        return None

    # ---- helpers -----------------------------------------------------------------------
    async def _admin(self, actor: Principal | None, what: str, name: Any) -> str:
        """Who acts (``operator`` offline); an actor who is no admin is refused, on the
        record (``principal.refused``)."""
        if actor is not None and not actor.admin:
            err = Forbidden(f"only an admin may {what}", actor=actor.name)
            await self.engine.refusal_row("principal.refused", actor, about(name), err)
            raise err
        return actor.name if actor else "operator"

    @staticmethod
    async def _get(tx: Tx, name: Any) -> Principal:
        p = await tx.get_principal(name) if isinstance(name, str) else None
        if p is None:
            raise NotFound(f"no principal {name!r}", name=name)
        return p

    def _changed(self, tx: Tx, name: str) -> None:
        tx.notify("principals", {"name": name})
        cache = self.engine.auth_cache
        # at once too: a grant later in this commit reads its principal again (queue.py)
        cache.forget()
        tx.after_commit(cache.forget)
        tx.after_commit(lambda: cache.changed(name))  # its waiting requests check again

    async def _withdraw(self, tx: Tx, name: str, notes: str, err: WritError) -> list[str]:
        """Take ``name``'s queued requests out of the queue, each refused with ``err`` (its
        waiting caller gets it, wherever it waits); their ids."""
        withdrawn: list[str] = []
        for w in await tx.waiters_of(name):
            if not await tx.delete_waiter(w.waiter_id):
                continue
            await self.engine.withdraw(tx, w, notes, err)
            withdrawn.append(w.waiter_id)
        return withdrawn

    @staticmethod
    async def check_queues(tx: Tx, names: Any, field: str) -> list[str]:
        """``names``: a list of registered principals of kind ``queue``."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Invalid(f"{field} must be a list of queue names", field=field)
        if len(names) > 100:
            raise Invalid(f"{field} names at most 100 queues", field=field)
        for n in names:
            if not _NAME.fullmatch(n):
                raise Invalid(f"{field}: {n[:80]!r} is not a principal name", field=field)
            q = await tx.get_principal(n)
            if q is None or q.kind != "queue":
                raise Invalid(
                    f"{field}: {n!r} is not a registered queue (add it with "
                    f"writ principal add {n} --kind queue)"
                    if q is None
                    else f"{field}: {n} is a{'n' if q.kind == 'agent' else ''} {q.kind}, "
                    "not a queue",
                    field=field,
                )
        return list(dict.fromkeys(names))

    # ---- token lifecycle ---------------------------------------------------------------
    async def rotate(
        self, actor: Principal | None, name: str, expires_in_s: Any = None
    ) -> dict[str, Any]:
        """A new token for ``name`` (admin, or the principal itself); the old one, and every
        JWT issued for it until now, are refused from this commit on, and its queued
        requests leave the queue."""
        if actor is not None and not actor.admin and actor.name != name:
            err = Forbidden(
                f"{actor.name} may rotate only its own token (an admin may rotate any)",
                actor=actor.name,
            )
            await self.engine.refusal_row("principal.refused", actor, about(name), err)
            raise err
        if actor is not None and actor.signed_in_by is not None and actor.name == name:
            # a token of its own minted here would outlive the identity provider's say (its
            # JWT's exp, its revocation): a caller signed in by JWT gets its tokens there
            raise Forbidden(
                f"{actor.name} signed in with a JWT from {actor.signed_in_by}: its tokens come "
                "from that identity provider, and writ mints none for a JWT's caller "
                "(an admin with a writ token may rotate it)",
                actor=actor.name,
            )
        ttl = expires_in(expires_in_s)
        by = actor.name if actor else "operator"
        token = new_token()
        # a principal rotating its own token keeps the expiry an admin set: it may shorten it,
        # never lengthen or lift it
        bounded = actor is not None and not actor.admin

        async def fn(tx: Tx) -> tuple[Principal, list[str]]:
            p = await self._get(tx, name)
            if p.disabled_at is not None:
                raise Invalid(
                    f"principal {name} is disabled: enable it (which gives it a fresh token)",
                    name=name,
                )
            now = tx.now()
            wanted = now + ttl if ttl is not None else None
            kept = p.token_expires_at if bounded else None
            if kept is not None and (wanted is None or wanted > kept):
                wanted = kept
            p.token_expires_at = wanted
            await tx.update_principal(p, hash_token(token))
            await tx.append(
                {
                    "event": "principal.rotated",
                    "agent_id": by,
                    "resource": f"principals/{name}",
                    "notes": f"{by} rotated the token of {name}; the old token is refused"
                    + (
                        f"; the new one expires at {rfc3339(p.token_expires_at)}"
                        if p.token_expires_at
                        else ""
                    ),
                }
            )
            await cut_off(tx, name, by, "principal.rotated")
            err = Unauthenticated(
                f"the token of {name} was rotated while this request waited: its credential "
                "is refused; ask again with the new token (or a JWT issued since)",
                principal=name,
            )
            withdrawn = await self._withdraw(tx, name, f"{by} rotated the token of {name}", err)
            self._changed(tx, name)
            return p, withdrawn

        p, withdrawn = await self.engine.store.transact(fn)
        return {
            "name": p.name,
            "token": token,
            "token_expires_at": rfc3339(p.token_expires_at),
            "withdrawn": withdrawn,
        }

    async def disable(self, actor: Principal | None, name: str, reason: Any) -> dict[str, Any]:
        """Refuse ``name``'s token, revoke its held leases, take its requests out of the
        queue (admin only)."""
        by = await self._admin(actor, "disable principals", name)
        why = plain_text(reason, "reason")
        if actor is not None and actor.name == name:
            raise Invalid("you cannot disable yourself: ask another admin", name=name)
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any]:
            p = await self._get(tx, name)
            if p.disabled_at is not None:
                raise Invalid(
                    f"principal {name} is already disabled since {rfc3339(p.disabled_at)}",
                    name=name,
                )
            if p.admin and not any(
                o.admin and o.disabled_at is None and o.name != name
                for o in await tx.list_principals()
            ):
                raise Invalid(
                    f"{name} is the last enabled admin: add or enable another admin first",
                    name=name,
                )
            now = tx.now()
            p.disabled_at, p.disabled_reason = now, why
            await tx.update_principal(p)
            await tx.append(
                {
                    "event": "principal.disabled",
                    "agent_id": by,
                    "resource": f"principals/{name}",
                    "notes": f"{by} disabled {p.kind} {name}: {why}; its token is refused",
                }
            )
            revoked: list[str] = []
            for lease in await tx.list_leases(None, "held", 100_000, holder=name):
                lease = await tx.get_lease(lease.lease_id, for_update=True) or lease
                if await eng.lost(tx, lease) is not None:
                    continue  # it had expired: ended as expired, nothing to revoke
                provenance = {
                    "revoked_by": by,
                    "via_runbook": DISABLE_RUNBOOK,
                    "at": rfc3339(now),
                    "after_paging": f"nobody: {name} was disabled ({why})",
                }
                await eng.end(
                    tx,
                    lease,
                    "revoked",
                    by,
                    notes=f"revoked {name}'s lease: {name} was disabled by {by}: {why}",
                    extra={"second_key_revoke_provenance": provenance, "approved_by": by},
                    lock_delay=True,
                )
                revoked.append(lease.lease_id)
            err = Unauthenticated(
                f"principal {name} was disabled while this request waited: {why}",
                principal=name,
            )
            withdrawn = await self._withdraw(tx, name, f"{name} was disabled by {by}: {why}", err)
            self._changed(tx, name)
            return {**p.to_dict(), "revoked": revoked, "withdrawn": withdrawn}

        return await eng.store.transact(fn)

    async def enable(
        self, actor: Principal | None, name: str, expires_in_s: Any = None
    ) -> dict[str, Any]:
        """Accept ``name`` again, with a fresh token (admin only); JWTs issued for it until
        now stay refused."""
        by = await self._admin(actor, "enable principals", name)
        ttl = expires_in(expires_in_s)
        token = new_token()

        async def fn(tx: Tx) -> Principal:
            p = await self._get(tx, name)
            if p.disabled_at is None:
                raise Invalid(
                    f"principal {name} is not disabled (rotate its token instead)", name=name
                )
            p.disabled_at = p.disabled_reason = None
            p.token_expires_at = tx.now() + ttl if ttl is not None else None
            await tx.update_principal(p, hash_token(token))
            await tx.append(
                {
                    "event": "principal.enabled",
                    "agent_id": by,
                    "resource": f"principals/{name}",
                    "notes": f"{by} enabled {p.kind} {name} with a fresh token",
                }
            )
            await cut_off(tx, name, by, "principal.enabled")
            self._changed(tx, name)
            return p

        p = await self.engine.store.transact(fn)
        return {**p.to_dict(), "token": token}

    # ---- queue membership --------------------------------------------------------------
    async def set_queues(
        self, actor: Principal | None, name: str, add: Any = None, remove: Any = None
    ) -> dict[str, Any]:
        """Add ``name`` (a human) to queues and take it off others (admin only)."""
        by = await self._admin(actor, "change queue membership", name)
        add = [] if add is None else add
        remove = [] if remove is None else remove
        if not isinstance(remove, list) or not all(isinstance(n, str) for n in remove):
            raise Invalid("remove must be a list of queue names", field="remove")
        if not add and not remove:
            raise Invalid("give queues to add or remove", field="add")

        async def fn(tx: Tx) -> Principal:
            p = await self._get(tx, name)
            if p.kind != "human":
                raise Invalid(
                    f"{name} is a{'n' if p.kind == 'agent' else ''} {p.kind}: "
                    "only humans are members of queues",
                    field="name",
                )
            added = await self.check_queues(tx, add, "add")
            before = list(p.queues)
            p.queues = [q for q in p.queues if q not in remove]
            p.queues += [q for q in added if q not in p.queues]
            if p.queues == before:
                return p
            await tx.update_principal(p)
            await tx.append(
                {
                    "event": "principal.queues",
                    "agent_id": by,
                    "resource": f"principals/{name}",
                    "notes": f"{by} set the queues of {name}: "
                    + (", ".join(p.queues) or "none")
                    + f" (was {', '.join(before) or 'none'})",
                }
            )
            self._changed(tx, name)
            return p

        p = await self.engine.store.transact(fn)
        return p.to_dict()


def member_of(me: Principal, queue: str | None) -> bool:
    """True when ``me`` is ``queue`` itself (a queue or a person, never an agent or portal
    that a stored plan named) or a human member of it."""
    if not queue:
        return False
    if me.name == queue:
        return me.kind in ("queue", "human")
    return me.kind == "human" and queue in me.queues


# names writ itself writes into rows where a principal's name goes: never a principal's
# (``none``: lock_holder when nobody holds; ``operator``: offline store work; ``unknown``:
# a gate.refused row's caller without a valid token)
RESERVED_NAMES = frozenset({SYSTEM, "none", "operator", "unknown"})


class PrincipalOps:
    """Principals and their tokens (a mixin of :class:`writ.engine.kernel.Engine`)."""

    store: Store
    auth_cache: AuthCache
    identity: Identity

    if TYPE_CHECKING:

        @property
        def principals(self) -> Principals: ...

        async def refusal_row(
            self, event: str, actor: Principal | None, resource: str, err: WritError
        ) -> None: ...

    async def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token belongs to, or :class:`Unauthenticated`."""
        if not token:
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        if not token.isascii() and text_problem(token):  # a lone surrogate hashes to nothing
            raise Unauthenticated("the bearer token is not valid text")
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
            return p  # remembered: no principal changed since (a change forgets them all)
        generation = cache.generation

        async def by_token(tx: Tx) -> tuple[Principal | None, float]:
            return await tx.principal_by_token(h), tx.now()

        p, now = await self.store.read(by_token, single=True)
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
        p.checked_gen = generation
        cache.put(h, p, generation)
        return p

    async def _authenticate_jwt(self, token: str) -> Principal:
        """The registered, enabled principal a JWT from a configured issuer names."""
        from writ.engine.principals import refusal

        name, issuer, iat = await self.identity.verify(token)

        async def by_name(tx: Tx) -> tuple[Principal | None, float | None, float]:
            return await tx.get_principal(name), await cut_off_at(tx, name), tx.now()

        generation = self.auth_cache.generation
        p, cut, now = await self.store.read(by_name)
        if p is None:
            raise Unauthenticated(
                f"the JWT names {name[:64]!r}, which is not a registered principal: "
                "ask an admin to add it (writ principal add)"
            )
        if p.disabled_at is not None:  # the writ token's own expiry does not apply
            err = refusal(p, now)
            assert err is not None
            raise err
        why = issuer.refuses(p)
        if why is not None:
            raise Unauthenticated(f"the JWT from {issuer.issuer} may not act as {name}: {why}")
        refuse_early(name, issuer.issuer, iat, cut)  # issued before a rotate or an enable
        # a copy: p may be shared
        return dataclasses.replace(p, signed_in_by=issuer.issuer, checked_gen=generation)

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
        elif len(token) < MIN_CHOSEN_TOKEN:
            log.warning(
                "WRIT_ADMIN_TOKEN is %d characters, admin's token: one this short can be "
                "guessed, and read back from its hash in the store (SHA-256, which is fast); "
                "'writ principal rotate admin' gives a token writ makes (256 random bits)",
                len(token),
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
        token (see :mod:`writ.engine.principals`).
        """
        if actor is not None and not actor.admin:
            err = Forbidden("only an admin may add principals", actor=actor.name)
            await self.refusal_row("principal.refused", actor, about(name), err)
            raise err
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise Invalid("name must be 1-64 of a-z 0-9 . _ -", field="name")
        if name.strip(".") == "":
            raise Invalid(
                f"name {name!r} is only dots: in a URL (/v1/principals/{name}/rotate) it would "
                "walk to another route",
                field="name",
            )
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
        if vendor is not None and (";" in vendor or ") as admin" in vendor):
            # the added row's notes say "(vendor V) as admin; wake W": a vendor holding
            # writ's own words would read two ways there (writ.stores.enrolled)
            raise Invalid(
                "vendor must not hold ';' or ') as admin', the words the principal's audit "
                "row is written with",
                field="vendor",
            )
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
