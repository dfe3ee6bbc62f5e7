"""Stuck locks: wake the holder, then page the human override queue.

A lease is *stuck* when it is held longer than its rule's ``max_hold_s`` (renewals do not
reset the clock: a holder that renews and does nothing is stuck too), or when it expires
while others wait behind it (its holder died). writ then calls the holder's ``wake`` route;
if the lease is still held ``page_after_s`` later, writ pages the override queue (the one
in the lease's rollback plan, or the policy's default) through that queue's ``wake`` route.
Humans then revoke, with provenance. Each step is an audit row (``lease.stuck``,
``wake.*``, ``lease.paged``, ``page.*``); several servers doing this at once still do
each step once, since each is a state change of one ``holdcheck`` record.
"""

from __future__ import annotations

import functools
from typing import Any

from writ.core.clock import rfc3339
from writ.core.models import Lease, data
from writ.engine.hooks import SYSTEM, Request, Rule
from writ.engine.wake_payloads import redact, route_kind
from writ.stores.base import Tx

HOLDCHECK = "holdcheck"


class Stuck(Rule):
    name = "stuck"

    async def on_grant(self, tx: Tx, req: Request, lease: Lease) -> None:
        limit = self.engine.policy.governing(lease.resource).max_hold_s
        if limit is not None and limit > 0:
            await tx.put_object(
                HOLDCHECK,
                lease.lease_id,
                lease.resource,
                "pending",
                {"lease_id": lease.lease_id, "max_hold_s": limit},
                lease.acquired_at + limit,
            )

    async def on_end(self, tx: Tx, lease: Lease) -> None:
        limit = self.engine.policy.governing(lease.resource).max_hold_s
        if limit is not None and limit > 0:
            await self._resolve_pages(tx, lease)
        if lease.state != "expired":
            return
        waiting = await tx.count_waiters_related(self.engine.blast.expand(lease.resource))
        if waiting:
            await self._wake(
                tx, lease, f"expired with {waiting} waiting behind it: the holder may have died"
            )

    async def _resolve_pages(self, tx: Tx, lease: Lease) -> None:
        """The lease ended: resolve the PagerDuty incidents its wake and page opened."""
        hc = await tx.get_object(HOLDCHECK, lease.lease_id)
        if hc is None or hc.get("state") not in ("woken", "paged"):
            return
        payload = {"to": "pagerduty", "reason": f"lease {lease.state}", "lease": lease.to_dict()}
        row = {
            k: v
            for k, v in self.engine.lease_row(lease, "", SYSTEM, "").items()
            if k not in ("event", "notes")
        }
        for key in ("wake_route", "page_route"):
            route = hc.get(key)
            if route and route_kind(route) == "pagerduty":
                caller = self.engine.caller
                tx.after_commit(functools.partial(caller.resolve, route, payload, row))

    async def _wake(self, tx: Tx, lease: Lease, why: str) -> str | None:
        eng = self.engine
        holder = await tx.get_principal(lease.holder)
        route = holder.wake if holder else None
        row = eng.lease_row(
            lease,
            "lease.stuck",
            SYSTEM,
            f"{lease.holder}'s lease {why}; waking it: "
            + (f"POST {redact(route)}" if route else "no wake route registered"),
        )
        await tx.append(row)
        waiting = await tx.count_waiters_related(eng.blast.expand(lease.resource))
        eng.call_later(
            tx,
            "wake",
            route,
            {"to": lease.holder, "reason": why, "lease": lease.to_dict(), "waiting": waiting},
            row,
        )
        return route

    async def due(self, tx: Tx, now: float) -> bool:
        """A hold check to wake or to page at (what tick looks for)."""
        return bool(
            await tx.objects_due(HOLDCHECK, "pending", now, 1)
            or await tx.objects_due(HOLDCHECK, "woken", now, 1)
        )

    async def tick(self) -> None:
        eng = self.engine

        async def fn(tx: Tx) -> None:
            now = tx.now()
            for hc in await tx.objects_due(HOLDCHECK, "pending", now, 200):
                lease = await _still_held(tx, hc, now)
                if lease is None:
                    continue
                page_after = eng.policy.governing(lease.resource).page_after_s
                wake_route = await self._wake(
                    tx,
                    lease,
                    f"has been held {now - lease.acquired_at:.0f}s, past max_hold_s "
                    f"{hc['max_hold_s']:g}",
                )
                await tx.put_object(
                    HOLDCHECK,
                    lease.lease_id,
                    lease.resource,
                    "woken",
                    {**data(hc), "woken_at": rfc3339(now), "wake_route": wake_route},
                    now + page_after,
                )
            for hc in await tx.objects_due(HOLDCHECK, "woken", now, 200):
                lease = await _still_held(tx, hc, now)
                if lease is None:
                    continue
                queue = await eng.human_queue(tx, eng.override_queue(lease))
                q = await tx.get_principal(queue) if queue else None
                route = q.wake if q else None
                row = eng.lease_row(
                    lease,
                    "lease.paged",
                    SYSTEM,
                    f"{lease.holder} was woken at {hc.get('woken_at')} and still holds {lease.lock_key}; "
                    f"paging {queue or 'nobody (no override queue)'}: "
                    + (f"POST {redact(route)}" if route else "no wake route registered"),
                )
                await tx.append(row)
                waiting = await tx.count_waiters_related(eng.blast.expand(lease.resource))
                eng.call_later(
                    tx,
                    "page",
                    route,
                    {
                        "to": queue,
                        "reason": "stuck lock",
                        "lease": lease.to_dict(),
                        "waiting": waiting,
                    },
                    row,
                )
                await tx.put_object(
                    HOLDCHECK,
                    lease.lease_id,
                    lease.resource,
                    "paged",
                    {**data(hc), "paged_at": rfc3339(now), "page_route": route},
                    None,
                )

        await eng.store.transact(fn)


async def _still_held(tx: Tx, hc: dict[str, Any], now: float) -> Lease | None:
    """The lease of a due hold check, if it still holds; else the check is done (None)."""
    lease = await tx.get_lease(hc["lease_id"], for_update=True)
    if lease is not None and lease.state == "held" and lease.expires_at > now:
        return lease
    await tx.put_object(
        HOLDCHECK, hc["lease_id"], lease.resource if lease else "", "done", data(hc), None
    )
    return None
