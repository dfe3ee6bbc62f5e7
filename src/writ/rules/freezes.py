"""Freezes: a human stops all new grants under a prefix (an incident freeze).

``POST /v1/freezes`` by a human or a queue (an alert webhook holding a queue's token is the
incident-freeze path). While a freeze stands, a grant on any resource related to its
prefix — below it, or above it (an ancestor covers the frozen part) — is refused with 423
``frozen``, unless the requester is in its ``allow`` list. Leases already held are not
touched: revoke them if they must stop.
"""

from __future__ import annotations

from typing import Any

from writ.core import resources
from writ.core.clock import parse_duration, parse_time, rfc3339
from writ.core.errors import Forbidden, Frozen, Invalid, NotFound, WritError
from writ.core.grants import sees_freeze
from writ.core.models import Principal, data, named, new_id, public
from writ.core.validate import check_text, check_tree, text
from writ.engine.hooks import SYSTEM, Request, Rule
from writ.stores.base import Tx

FREEZE = "freeze"


class Freezes(Rule):
    name = "freezes"
    gate_priority = 10  # after principals and authority, before consent

    async def gate(self, tx: Tx, me: Principal | None, req: Request) -> WritError | None:
        now = tx.now()
        for f in await self.engine.policy_objects(tx, req.expand, FREEZE):
            if f.get("expires_at_ts") is not None and f["expires_at_ts"] <= now:
                continue
            if req.principal in (f.get("allow") or []):
                continue
            s = getattr(self.engine.policy, "authority", None)
            if me is not None and s is not None and not sees_freeze(s, me, f.get("prefix")):
                # a freeze on a blast-radius neighbour the caller may not observe: that it
                # stands in the way and until when, not where, by whom or why
                return Frozen(
                    f"{req.resource} is frozen through its blast radius "
                    + (f"until {f['until']}" if f.get("until") else "until lifted")
                    + ", by a freeze you may not observe",
                    freeze=None,
                    until=f.get("until"),
                    hidden=True,
                )
            return Frozen(
                f"{f['prefix']} is frozen by {f['by']} since {f['at']}"
                + (f" until {f['until']}" if f.get("until") else " until lifted")
                + f": {f['reason']}. Ask {f['by']} to lift it or to add you to its allow list",
                freeze=public(f),
            )
        return None

    async def freeze(
        self, me: Principal, prefix: Any, reason: Any, until: Any = None, allow: Any = None
    ) -> dict[str, Any]:
        if not me.is_human:
            err = Forbidden(
                f"{me.name} is a{'n' if me.kind == 'agent' else ''} {me.kind}: "
                "only humans and queues may freeze"
            )
            try:
                where = resources.validate(prefix, "prefix")
            except Invalid:
                where = "freezes"
            await self.engine.refusal_row("freeze.refused", me, where, err)
            raise err
        resources.validate(prefix, "prefix")
        why = text(reason, "reason")
        if allow is None:
            allow = []
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise Invalid("allow must be a list of principal names", field="allow")
        check_tree(allow, "allow")
        check_text(until, "until")

        async def fn(tx: Tx) -> dict[str, Any]:
            now = tx.now()
            until_ts = None
            if until not in (None, ""):
                text = str(until).strip()
                # "30m", "2h": a duration from now; otherwise an RFC 3339 time (or epoch seconds)
                until_ts = (
                    now + parse_duration(text)
                    if text[-1:] in "smhd" and text[:1].isdigit() and not text[:4].isdigit()
                    else parse_time(text, now)
                )
            if until_ts is not None and until_ts <= now:
                raise Invalid("until is in the past", field="until")
            for name in allow:
                if await tx.get_principal(name) is None:
                    raise Invalid(
                        f"allow names {name!r}, who is not a registered principal", field="allow"
                    )
            f = {
                "freeze_id": new_id("frz"),
                "prefix": prefix,
                "reason": why,
                "by": me.name,
                "at": rfc3339(now),
                "until": rfc3339(until_ts),
                "allow": allow,
                "lifted_by": None,
                "lifted_at": None,
            }
            await tx.put_object(FREEZE, f["freeze_id"], prefix, "active", f, until_ts)
            await tx.append(
                {
                    "event": "freeze.created",
                    "agent_id": me.name,
                    "resource": prefix,
                    **await self.engine.lock_columns(tx, prefix),
                    "approved_by": me.name,
                    "notes": f"{me.name} froze {prefix}"
                    + (f" until {f['until']}" if f["until"] else "")
                    + (f" (allowed: {', '.join(allow)})" if allow else "")
                    + f": {why}",
                }
            )
            return {**f, "state": "active"}

        return await self.engine.store.transact(fn)

    async def lift(self, me: Principal, freeze_id: str) -> dict[str, Any]:
        if not me.is_human:
            err = Forbidden("only humans and queues may lift a freeze")
            await self.engine.refusal_row("freeze.refused", me, "freezes", err)
            raise err

        async def fn(tx: Tx) -> dict[str, Any]:
            f = await tx.get_object(FREEZE, freeze_id, for_update=True)
            if f is None:
                raise NotFound(f"no freeze {freeze_id!r}", freeze_id=freeze_id)
            if f["state"] != "active":
                raise Invalid(f"freeze {freeze_id} is already {f['state']}")
            f.update(lifted_by=me.name, lifted_at=rfc3339(tx.now()))
            await tx.put_object(FREEZE, freeze_id, f["prefix"], "lifted", data(f), None)
            await tx.append(
                {
                    "event": "freeze.lifted",
                    "agent_id": me.name,
                    "resource": f["prefix"],
                    **await self.engine.lock_columns(tx, f["prefix"]),
                    "approved_by": me.name,
                    # the freeze it lifts, after the human's reason (models.named)
                    "notes": f"{me.name} lifted the freeze on {f['prefix']} ({f['reason']})"
                    + named("freeze", freeze_id),
                }
            )
            return public({**f, "state": "lifted"})

        return await self.engine.store.transact(fn)

    async def list(self, include_ended: bool = False) -> list[dict[str, Any]]:
        eng = self.engine

        async def fn(tx: Tx) -> list[dict[str, Any]]:
            now = tx.now()
            rows = await tx.list_objects(FREEZE, None if include_ended else ["active"], 1000)
            return [
                public(f)
                for f in rows
                if include_ended or f.get("expires_at_ts") is None or f["expires_at_ts"] > now
            ]

        return await eng.store.read(fn)

    async def due(self, tx: Tx, now: float) -> bool:
        return bool(await tx.objects_due(FREEZE, "active", now, 1))  # what tick ends

    async def tick(self) -> None:
        async def fn(tx: Tx) -> None:
            for f in await tx.objects_due(FREEZE, "active", tx.now(), 200):
                await tx.put_object(
                    FREEZE, f["freeze_id"], f["prefix"], "expired", data(f), f["expires_at_ts"]
                )
                await tx.append(
                    {
                        "event": "freeze.expired",
                        "agent_id": SYSTEM,
                        "resource": f["prefix"],
                        **await self.engine.lock_columns(tx, f["prefix"]),
                        "notes": f"the freeze on {f['prefix']} by {f['by']} ended at {f['until']}",
                    }
                )

        await self.engine.store.transact(fn)
