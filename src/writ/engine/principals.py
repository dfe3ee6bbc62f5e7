"""Token lifecycle and queue membership (PROTOCOL.md v1.1): rotate, disable, enable,
expiry, and the on-call queues a human is a member of.

A principal has one token at a time, stored hashed. ``rotate`` replaces it (the old one is
refused from that commit on), ``disable`` refuses it and takes the principal out of play
(its held leases are revoked, its queued requests leave the queue), ``enable`` brings the
principal back with a fresh token. ``expires_in_s`` on create or rotate gives the token an
end. Each is one store transaction with its audit row.

Tokens that were refused must stay refused everywhere at once. The engine remembers the
tokens it accepted only briefly (:data:`AUTH_CACHE_S`) and forgets every one of them when
a principal changes: on a ``principals`` notification — sent by each change made here
and, in PostgreSQL, by a trigger on any change to the table, hand edits included — after
the store's listener reconnects (``resync``), and, in SQLite, when the store's count of
principal changes (kept by triggers, read on every request) moved.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from writ.core.clock import rfc3339
from writ.core.errors import Forbidden, Invalid, NotFound, Unauthenticated, WritError
from writ.core.models import Principal
from writ.core.validate import number, text
from writ.engine.hooks import Request, Rule
from writ.stores.base import Tx

if TYPE_CHECKING:
    from writ.engine.kernel import Engine


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "writ_" + secrets.token_urlsafe(32)


#: How long a server that reads principals from a remote store may reuse what it read
#: (seconds): the bound on a missed notification. Within a process, changes made here
#: and notifications clear it at once.
AUTH_CACHE_S = 0.5
#: The longest ``expires_in_s`` accepted: ten years.
MAX_EXPIRES_S = 10 * 365 * 86_400
DISABLE_RUNBOOK = "principal.disable"
_NAME = re.compile(r"[a-z0-9._-]{1,64}")  # a principal's name (engine.NAME)


def plain_text(value: Any, field: str) -> str:
    """:func:`~writ.validate.text`, refusing strings that are not Unicode text (a lone
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


@dataclass(slots=True)
class _Remembered:
    principal: Principal
    until: float  # time.monotonic()


class AuthCache:
    """Token hash → principal, for stores whose reads are remote. Entries live at most
    :data:`AUTH_CACHE_S`; :meth:`forget` drops them all and makes reads that began before
    it unable to store what they read (a generation counter)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.generation = 0
        self.store_generation: int | None = None  # the store's count of principal changes
        self._entries: dict[str, _Remembered] = {}

    def get(self, token_hash: str) -> Principal | None:
        if not self.enabled:
            return None
        e = self._entries.get(token_hash)
        if e is None:
            return None
        if time.monotonic() >= e.until:
            del self._entries[token_hash]
            return None
        return e.principal

    def put(self, token_hash: str, p: Principal, generation: int) -> None:
        if not self.enabled or generation != self.generation or p.token_expires_at is not None:
            return  # an expiring token is checked against the store's clock every time
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[token_hash] = _Remembered(p, time.monotonic() + AUTH_CACHE_S)

    def forget(self) -> None:
        self.generation += 1
        self._entries.clear()


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
    @staticmethod
    def _admin(actor: Principal | None, what: str) -> str:
        if actor is not None and not actor.admin:
            raise Forbidden(f"only an admin may {what}", actor=actor.name)
        return actor.name if actor else "operator"

    @staticmethod
    async def _get(tx: Tx, name: Any) -> Principal:
        p = await tx.get_principal(name) if isinstance(name, str) else None
        if p is None:
            raise NotFound(f"no principal {name!r}", name=name)
        return p

    def _changed(self, tx: Tx, name: str) -> None:
        tx.notify("principals", {"name": name})
        tx.after_commit(self.engine.auth_cache.forget)

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
        """A new token for ``name`` (admin, or the principal itself); the old one is
        refused from this commit on."""
        if actor is not None and not actor.admin and actor.name != name:
            raise Forbidden(
                f"{actor.name} may rotate only its own token (an admin may rotate any)",
                actor=actor.name,
            )
        ttl = expires_in(expires_in_s)
        by = actor.name if actor else "operator"
        token = new_token()

        async def fn(tx: Tx) -> Principal:
            p = await self._get(tx, name)
            if p.disabled_at is not None:
                raise Invalid(
                    f"principal {name} is disabled: enable it (which gives it a fresh token)",
                    name=name,
                )
            now = tx.now()
            p.token_expires_at = now + ttl if ttl is not None else None
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
            self._changed(tx, name)
            return p

        p = await self.engine.store.transact(fn)
        return {"name": p.name, "token": token, "token_expires_at": rfc3339(p.token_expires_at)}

    async def disable(self, actor: Principal | None, name: str, reason: Any) -> dict[str, Any]:
        """Refuse ``name``'s token, revoke its held leases, take its requests out of the
        queue (admin only)."""
        by = self._admin(actor, "disable principals")
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
            withdrawn: list[str] = []
            err = Unauthenticated(
                f"principal {name} was disabled while this request waited: {why}",
                principal=name,
            )
            for w in await tx.waiters_of(name):
                if not await tx.delete_waiter(w.waiter_id):
                    continue
                await eng.withdraw(tx, w, f"{name} was disabled by {by}: {why}", err)
                withdrawn.append(w.waiter_id)
            self._changed(tx, name)
            return {**p.to_dict(), "revoked": revoked, "withdrawn": withdrawn}

        return await eng.store.transact(fn)

    async def enable(
        self, actor: Principal | None, name: str, expires_in_s: Any = None
    ) -> dict[str, Any]:
        """Accept ``name`` again, with a fresh token (admin only)."""
        by = self._admin(actor, "enable principals")
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
            self._changed(tx, name)
            return p

        p = await self.engine.store.transact(fn)
        return {**p.to_dict(), "token": token}

    # ---- queue membership --------------------------------------------------------------
    async def set_queues(
        self, actor: Principal | None, name: str, add: Any = None, remove: Any = None
    ) -> dict[str, Any]:
        """Add ``name`` (a human) to queues and take it off others (admin only)."""
        by = self._admin(actor, "change queue membership")
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
    """True when ``me`` is ``queue`` itself or a human member of it."""
    if not queue:
        return False
    return me.name == queue or (me.kind == "human" and queue in me.queues)
