"""The engine's reads: lease rows, holders, the policy objects a grant meets, and lease and
resource status (a mixin of :class:`writ.engine.kernel.Engine`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from writ.core import resources
from writ.core.clock import rfc3339
from writ.core.errors import (
    Invalid,
    NotFound,
    WritError,
)
from writ.core.models import Lease, Principal, public
from writ.core.policy import Policy
from writ.core.resources import BlastRadius
from writ.core.validate import number
from writ.core.wake_routes import redact
from writ.engine import blast_overlaps as overlaps
from writ.engine.hooks import lock_row
from writ.stores.base import Store, Tx

# the policy objects a grant is checked against, fetched together (one query where the
# store can): lock-delays, freezes, protected changes
POLICY_OBJECTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("delay", ("active",)),
    ("freeze", ("active",)),
    ("change", ("protected",)),
)

log = logging.getLogger("writ.engine")


class ReadOps:
    """Reads over the store; no state of their own."""

    store: Store
    policy: Policy
    blast: BlastRadius
    # the leases held in a blast-radius group when the engine started: only these may be
    # overtaken by a higher token covering what they cover (set at start: blast_overlaps)
    overlapped: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ helpers for rows
    def override_queue(self, lease: Lease) -> str | None:
        """The human queue paged for ``lease``: its rollback plan's, else the policy's."""
        return (lease.rollback or {}).get("override_queue") or self.policy.default_override_queue

    async def human_queue(self, tx: Tx, name: str | None) -> str | None:
        """``name`` when it is a principal a page or an escalation may go to (a queue, or a
        person), else the policy's ``default_override_queue``: a plan stored before writ
        checked the queue of one that allows no rollback may name an agent (itself, even),
        a portal or nobody registered."""
        default = self.policy.default_override_queue
        if not name or name == default:
            return default
        p = await tx.get_principal(name)
        return name if p is not None and p.kind in ("queue", "human") else default

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
        """The lease that holds write authority over ``resource`` now, if any, by the rule
        ``who`` follows too (:mod:`writ.engine.blast_overlaps`). One statement, the time
        asked after it (a single read, see Store.read); a second only where covering leases
        overlap (leases held across a restart that changed the groups)."""
        held = await tx.held_related(self.blast.expand(resource))
        now = tx.now()
        return await overlaps.holder(tx, held, self.blast.covering(resource), now, self.overlapped)

    async def refusal_row(
        self, event: str, actor: Principal | None, resource: str, err: WritError
    ) -> None:
        """A refused request changed nothing, and is still a decision: ``event``'s row, in a
        transaction of its own, naming who asked and why not (an operator on the store, None,
        is not refused). The refusal stands whatever happens to its row: a store that cannot
        take it is logged, and the caller still gets ``err``."""
        if actor is None:
            return

        async def fn(tx: Tx) -> None:
            notes = f"refused {actor.name}: {err.message}"[:2000]
            await tx.append(
                lock_row(event, actor.name, resource, await self.holder(tx, resource), notes)
            )

        try:
            await self.store.transact(fn)
        except Exception:
            log.exception("the row of a refusal (%s by %s) was not written", event, actor.name)

    async def lease_refusal(self, actor: Principal, lease_id: Any, err: WritError) -> None:
        """:meth:`refusal_row` of a request about lease ``lease_id``: ``lease.refused`` on its
        resource (none for a lease that does not exist)."""

        async def lease_of(tx: Tx) -> Lease | None:
            return await tx.get_lease(lease_id) if isinstance(lease_id, str) else None

        lease = await self.store.read(lease_of)
        if lease is not None:
            await self.refusal_row("lease.refused", actor, lease.resource, err)

    async def lock_columns(self, tx: Tx, resource: str) -> dict[str, Any]:
        """The lock columns of a row about ``resource``: the lease holding write authority
        over it now, if any (``lock_holder`` with its ``lock_key``, so that a reader's view
        can tell whether it may see it: :func:`writ.core.grants.row_view`)."""
        row = lock_row("", "", resource, await self.holder(tx, resource), "")
        return {k: row[k] for k in ("lock_holder", "lock_key", "lock_acquired_at", "fencing_token")}

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

    async def get_lease(self, lease_id: str) -> dict[str, Any]:
        async def fn(tx: Tx) -> dict[str, Any] | None:
            lease = await tx.get_lease(lease_id)
            return lease.to_dict(tx.now()) if lease else None

        out = await self.store.read(fn, single=True)
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
        return (await self.lease_page(prefix, state, limit, holder, whole=True))[0]

    async def lease_page(
        self,
        prefix: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        holder: str | None = None,
        before: int | None = None,
        whole: bool = False,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """:meth:`list_leases` below fencing token ``before``, from at most ``limit`` leases
        of the store (of each, for ``expired``); and the token the next page reads below,
        or None when there is none (a long list is read page by page: api.streaming).
        ``whole``: this read is the whole answer (no next page): for ``expired``, the
        newest ``limit`` of both lists, as one read gives them."""
        if prefix:
            resources.validate(prefix, "resource")
        if state is not None and state not in ("held", "released", "expired", "revoked"):
            raise Invalid("state must be held, released, expired or revoked", field="state")
        limit = int(number(limit, "limit", 1, 100_000))

        async def fn(tx: Tx) -> tuple[list[dict[str, Any]], int | None]:
            # a held lease past its expiry is expired, whether or not the sweeper wrote it yet
            want = "held" if state in ("held", "expired") else state
            listed = await tx.list_leases(prefix, want, limit, holder, before)
            now = tx.now()  # after the first statement: it begins the read (Store.read)
            more = []
            if state == "expired":
                more = await tx.list_leases(prefix, "expired", limit, holder, before)
            # every lease from the top down to ``floor`` was read: the lowest token of a
            # list that came back full (below it, the other list may have skipped some)
            full = [part[-1].fencing_token for part in (listed, more) if len(part) == limit]
            floor = max(full) if full and not whole else None
            read = sorted(listed + more, key=lambda l: -l.fencing_token)
            out = [l.to_dict(now) for l in read if floor is None or l.fencing_token >= floor]
            if state in ("held", "expired"):
                out = [d for d in out if d["state"] == state]
            if len(out) > limit:  # both lists full (expired): the newest ``limit`` of them
                out = out[:limit]
                floor = None if whole else out[-1]["fencing_token"]
            return out, floor

        return await self.store.read(fn)

    async def resource_status(self, resource: str) -> dict[str, Any]:
        resources.validate(resource)
        exp = self.blast.expand(resource)

        async def fn(tx: Tx) -> dict[str, Any]:
            related = await tx.held_related(exp)
            now = tx.now()  # after the first statement: it begins the read (Store.read)
            held = [l for l in related if l.expires_at > now]
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
        return (await self.status_page(prefix, limit, whole=True))[0]

    async def status_page(
        self,
        prefix: str | None = None,
        limit: int = 1000,
        before: int | None = None,
        whole: bool = False,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """:meth:`status` page by page, as :meth:`lease_page`."""
        leases, floor = await self.lease_page(prefix, "held", limit, None, before, whole)

        async def fn(tx: Tx) -> list[int]:
            return [
                await tx.count_waiters_related(self.blast.expand(l["resource"])) for l in leases
            ]

        counts = await self.store.read(fn)
        for lease, n in zip(leases, counts, strict=True):
            lease["waiters"] = n
        return leases, floor
