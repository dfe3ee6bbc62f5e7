"""Authority: who may ever hold write authority on what (PROTOCOL.md v1.1, "Authority").

A lease serialises writers; authority says who may be a writer at all. The policy file::

    [authority]
    mode = "closed"                  # "open" (the default: anyone may lease anything)

    [[authority.grant]]              # applies to a principal named, or of a kind, or a vendor
    principals = ["perf-agent"]
    write = ["prod/db", "capacity"]  # prefixes it may take write authority on
    observe = ["prod", "routing"]    # prefixes it may read (write implies observe)
    attributes = ["capacity"]        # what it may name in touches and record ("*" = any)

In ``closed`` mode this rule is the first gate of every grant, and of every hand-off from
the queue (a grant removed by a policy reload refuses the waiter when its turn comes): a
lease on a resource no grant lets the caller write is 403 ``forbidden`` with ``"rule"``
(FILE:LINE of the nearest grant) and a message saying what the caller may do; the refusal
is a ``lease.refused`` row. ``touches`` must lie within the grant's attributes (omitted:
the caller's attributes), and a change recorded under a lease must name one of its
``touches``. Agents and portals read only under prefixes they may observe; humans and
queues read everything, and need a grant to lease unless they are admins.

The model (:class:`Grant`, :class:`Settings`, :func:`decide`) is pure; :class:`Authority`
is the engine rule that applies it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from writ.core import policy as policy_file  # load looked up at call time (tests patch it)
from writ.core import resources
from writ.core.bulk import make_way
from writ.core.clock import rfc3339
from writ.core.errors import Forbidden, Invalid, LeaseLost, NotFound, WritError
from writ.core.grants import (
    GRANT_KEYS as GRANT_KEYS,
)
from writ.core.grants import (
    MODES as MODES,
)
from writ.core.grants import (
    OPEN as OPEN,
)
from writ.core.grants import (
    READ_ALL as READ_ALL,
)
from writ.core.grants import (
    SECTION_KEYS as SECTION_KEYS,
)
from writ.core.grants import (
    Decision as Decision,
)
from writ.core.grants import (
    Grant as Grant,
)
from writ.core.grants import (
    Settings as Settings,
)
from writ.core.grants import (
    _list,
    may_filter,
)
from writ.core.grants import (
    decide as decide,
)
from writ.core.grants import (
    grant_lines as grant_lines,
)
from writ.core.grants import (
    observable as observable,
)
from writ.core.grants import (
    parse_section as parse_section,
)
from writ.core.grants import (
    review as review,
)
from writ.core.grants import (
    row_view as row_view,
)
from writ.core.grants import (
    section_line as section_line,
)
from writ.core.grants import (
    sees_freeze as sees_freeze,
)
from writ.core.identity import Identity
from writ.core.models import Lease, Principal
from writ.core.validate import text
from writ.engine.hooks import SYSTEM, EngineView, Request, Rule
from writ.engine.wake_payloads import redact
from writ.stores.base import Tx

log = logging.getLogger("writ.authority")

WAKE = "wake"  # policy-object kind: when a lease's holder was last woken through writ
WAKE_EVERY_S = 30.0
# an agent's events long-poll in closed mode: rows read a step, and rows it may not read
# walked past in one request before it answers an empty page that keeps its place
WALK = 1000
WALK_BUDGET = 20_000


# ----------------------------------------------------------------------------- the rule
class Authority(Rule):
    """The engine rule: checked first at every grant (see the module docstring)."""

    name = "authority"
    gate_priority = 1  # after principals; before freezes, consent and the queue

    def __init__(self, engine: EngineView) -> None:
        super().__init__(engine)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloading = asyncio.Lock()  # one reload at a time: the last read is applied

    @property
    def settings(self) -> Settings:
        return getattr(self.engine.policy, "authority", None) or OPEN

    def decide(self, p: Principal, resource: str) -> Decision:
        return decide(self.settings, p, resource)

    async def gate(self, tx: Tx, me: Principal, req: Request) -> WritError | None:
        s = self.settings
        if not s.closed:
            return None
        d = decide(s, me, req.resource)
        if not d.write:
            return Forbidden(d.message, rule=d.rule, may=d.may)
        if req.default_touches:  # omitted: the attributes of this grant (again at hand-off)
            req.touches = list(d.attributes)
        elif "*" not in d.attributes:
            bad = [t for t in req.touches if t not in d.attributes]
            if bad:
                return Forbidden(
                    f"{me.name} may name only {_list(d.attributes)} in touches on "
                    f"{req.resource}, not {_list(bad)} ({d.rule or 'no grant'})",
                    rule=d.rule,
                    may=d.may,
                )
        return None

    # -- reads ---------------------------------------------------------------------------
    def observable(self, me: Principal, resource: str | None) -> bool:
        return observable(self.settings, me, resource)

    def check_observe(self, me: Principal, resource: str, of: str | None = None) -> None:
        """Raise 403 unless ``me`` may read about ``resource``. ``of`` names what was asked
        for by id (``lease ls_…``): then the 403 does not name the resource either."""
        if not self.observable(me, resource):
            d = self.decide(me, resource)
            if of is None:
                raise Forbidden(d.message, rule=d.rule, may=d.may)
            raise Forbidden(
                f"{me.name} may not observe the resource of {of}; it may observe under: "
                f"{_list(d.may['observe'])}",
                may=d.may,
            )

    async def hides(self, tx: Tx, name: str, lease: Lease | None) -> bool:
        """Is ``lease`` (standing in ``name``'s way) on a resource ``name`` may not observe?
        Then a 409 ``held`` and its rows name neither it nor its holder (closed mode)."""
        s = self.settings
        if lease is None or not s.closed:
            return False
        p = await tx.get_principal(name)
        return p is None or not observable(s, p, lease.resource)

    def visible(
        self, me: Principal, rows: list[dict[str, Any]], key: str = "resource"
    ) -> list[dict[str, Any]]:
        """The rows ``me`` may read (all of them for humans, queues and open mode)."""
        s = self.settings
        if not s.closed or me.kind in READ_ALL:
            return rows
        return [r for r in rows if observable(s, me, r.get(key))]

    def unseen_holder(self, me: Principal, who: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/who`` for ``me``: a holder on another member of the blast radius that
        ``me`` may not observe is not named (``lock_holder`` null, ``hidden`` true)."""
        key = who.get("lock_key")
        if not key or self.observable(me, str(key).rsplit("/", 1)[0]):
            return who
        return {**who, "lock_holder": None, "lock_key": None, "lease": None, "hidden": True}

    def policy_view(self, me: Principal, policy: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/policy`` for ``me``: in closed mode an agent or portal sees only the
        grants that apply to it (as ``GET /v1/authority`` answers it only about itself)."""
        s = self.settings
        if not s.closed or me.kind in READ_ALL:
            return policy
        mine = [g.to_dict() for g in s.grants if g.applies(me)]
        return {**policy, "authority": {**policy.get("authority", {}), "grants": mine}}

    def visible_freezes(self, me: Principal, freezes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``GET /v1/freezes`` for ``me``: in closed mode an agent or portal sees the freezes
        that touch what it may observe or write (above it, on it or below it), no others."""
        s = self.settings
        return [f for f in freezes if sees_freeze(s, me, f.get("prefix"))]

    def wake_urls(self, me: Principal, principals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``GET /v1/principals`` for ``me``: in closed mode an agent or portal sees no other
        principal's wake URL (``POST /v1/leases/{id}/wake`` is how it wakes a holder)."""
        if not self.settings.closed or me.kind in READ_ALL:
            return principals
        return [p if p["name"] == me.name else {**p, "wake": None} for p in principals]

    def check_filter(self, me: Principal, prefix: str | None) -> None:
        """Raise 403 unless ``me`` may read the ledger filtered to ``prefix``
        (:func:`~writ.core.grants.may_filter`): in closed mode an agent or portal filters to
        what it observes or stands above, never to a resource it may not observe, whose
        rows the page's cursor would tell of (when, and how many)."""
        if prefix and not may_filter(self.settings, me, prefix):
            d = self.decide(me, prefix)
            raise Forbidden(d.message, rule=d.rule, may=d.may)

    def verification(self, me: Principal, found: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/audit/verify`` for ``me``: in closed mode an agent or portal is told
        whether the ledger verifies and where it breaks, not the reason or what it names
        (a lease, a principal, a queued request of resources it may not observe)."""
        if not self.settings.closed or me.kind in READ_ALL:
            return found
        return {k: found[k] for k in ("ok", "rows", "head", "first_bad_seq") if k in found}

    def visible_page(self, me: Principal, page: dict[str, Any]) -> dict[str, Any]:
        """An audit/events page as ``me`` may read it (:func:`row_view`: rows left out, lock
        columns of what it may not observe blanked); ``next_after_seq`` still moves past
        the rows left out, so the reader keeps its place."""
        s = self.settings
        if not s.closed or me.kind in READ_ALL:
            return page
        seen = (row_view(s, me, r) for r in page.get("rows") or [])
        return {**page, "rows": [r for r in seen if r is not None]}

    async def events(
        self, me: Principal, prefix: str | None, after_seq: int, wait_s: float, limit: int
    ) -> dict[str, Any]:
        """``GET /v1/events`` for ``me``: the long-poll ends on a row ``me`` may read, not on
        one it may not (its timing would tell of the row).

        It walks past the rows ``me`` may not read :data:`WALK` at a time whatever its
        ``limit``, making way for others between steps, and at most :data:`WALK_BUDGET` of
        them a request: then it answers an empty page that keeps its place (its
        ``next_after_seq`` says as much of those rows as a page at the deadline would). One
        walk that never gave way held the server for seconds on a large ledger."""
        eng = self.engine
        if not self.settings.closed or me.kind in READ_ALL:
            return await eng.events(prefix, after_seq, wait_s, limit)
        self.check_filter(me, prefix)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        walked = 0
        while True:
            began = time.perf_counter()
            left = max(0.0, deadline - loop.time())
            page = await eng.events(prefix, after_seq, left, max(limit, WALK))
            rows: list[dict[str, Any]] = []
            for row in page["rows"]:
                walked += 1
                after_seq = row["seq"]
                if (seen := row_view(self.settings, me, row)) is not None:
                    rows.append(seen)
                    if len(rows) == limit:
                        break
            else:
                after_seq = page["next_after_seq"]
            if rows or deadline <= loop.time() or walked >= WALK_BUDGET:
                return {**page, "rows": rows, "next_after_seq": after_seq}
            await make_way(time.perf_counter() - began)

    # -- changes -------------------------------------------------------------------------
    async def check_change(
        self, tx: Tx, me: Principal, lease: Lease, attribute: str
    ) -> WritError | None:
        """In closed mode a recorded change must name one of its lease's ``touches``; a
        refusal is a ``lease.refused`` row (the caller commits it with the error)."""
        if not self.settings.closed or "*" in lease.touches or attribute in lease.touches:
            return None
        d = self.decide(me, lease.resource)
        err = Forbidden(
            f"lease {lease.lease_id} touches only {_list(lease.touches)}, not {attribute}: "
            f"acquire a lease whose touches name {attribute}"
            + (
                ""
                if "*" in d.attributes or attribute in d.attributes
                else f" (you may not: {d.message})"
            ),
            rule=d.rule,
            touches=list(lease.touches),
        )
        await tx.append(
            self.engine.lease_row(
                lease, "lease.refused", me.name, f"refused change to {attribute}: {err.message}"
            )
        )
        return err

    # -- 409 held --------------------------------------------------------------------------
    async def holder_view(
        self, tx: Tx, asker: str, holder: dict[str, Any], lease: Lease
    ) -> dict[str, Any]:
        """In closed mode an agent sees writ's wake route as ``holder.wake``, never the
        holder's own URL; humans and queues see both (``wake_via_writ``)."""
        if not self.settings.closed:
            return holder
        route = f"/v1/leases/{lease.lease_id}/wake"
        p = await tx.get_principal(asker)
        if p is not None and p.kind in READ_ALL:
            return {**holder, "wake_via_writ": route}
        return {**holder, "wake": route}

    # -- explain ---------------------------------------------------------------------------
    async def explain(self, me: Principal, name: Any, resource: Any) -> dict[str, Any]:
        """``GET /v1/authority``: what ``name`` may do on ``resource`` (agents and portals
        may ask only about themselves)."""
        if not isinstance(name, str) or not name:
            raise Invalid("principal is required", field="principal")
        resources.validate(resource)
        if me.kind not in READ_ALL and name != me.name:
            raise Forbidden(
                f"{me.name} is a{'n' if me.kind == 'agent' else ''} {me.kind}: it may ask "
                f"only about itself (principal={me.name})"
            )
        p = me if name == me.name else await self.engine.principal(name)
        if p is None:
            raise NotFound(f"no principal {name!r}", principal=name)
        return self.decide(p, resource).to_dict()

    # -- reload ----------------------------------------------------------------------------
    async def reload(self, me: Principal | None) -> dict[str, Any]:
        """Read the policy file again and apply it to new requests (held leases keep their
        term; queued requests meet the new grants when their turn comes). Blast-radius
        groups stay as they were until a restart: exclusion must not change under held
        leases. ``me`` None is SIGHUP. A bad file changes nothing (422 with FILE:LINE).
        Reloads run one at a time, so the file read last is the policy in force."""
        if me is not None and not me.admin:
            err = Forbidden("only an admin may reload the policy", actor=me.name)
            await self.engine.refusal_row("policy.refused", me, "policy", err)
            raise err
        async with self._reloading:
            return await self._reload(me)

    async def _reload(self, me: Principal | None) -> dict[str, Any]:
        eng = self.engine
        source = eng.policy.source
        if not source or source == "<policy>":  # no file: the built-in defaults stay
            return {
                "source": None,
                "mode": self.settings.mode,
                "grants": len(self.settings.grants),
                "rules": len(eng.policy.rules),
                "warnings": ["writ serve was started without --policy: nothing to reload"],
            }
        new = policy_file.load(source)
        warnings: list[str] = []
        if new.blast.groups != eng.blast.groups:
            warnings.append("blast_radius changed: it applies after a restart, not on reload")
        new.blast = eng.blast
        by = me.name if me else SYSTEM
        s = new.authority or OPEN

        async def fn(tx: Tx) -> None:
            await tx.append(
                {
                    "event": "policy.reloaded",
                    "agent_id": by,
                    "resource": "policy",
                    "lock_holder": "none",
                    "approved_by": by if me is not None else None,
                    "notes": f"{by} reloaded {source}: authority mode {s.mode}, "
                    f"{len(s.grants)} grant(s), {len(new.rules)} rule(s)"
                    + (f"; {'; '.join(warnings)}" if warnings else ""),
                }
            )

        await eng.store.transact(fn)
        if [i.to_dict() for i in new.identity] != [i.to_dict() for i in eng.policy.identity]:
            eng.identity = Identity(new.identity, eng.identity)  # unchanged ones keep their keys
        eng.policy = new
        log.info("policy reloaded from %s by %s", source, by)
        return {
            "source": source,
            "mode": s.mode,
            "grants": len(s.grants),
            "rules": len(new.rules),
            "warnings": warnings,
        }

    def on_sighup(self) -> None:
        """Reload on SIGHUP (``writ serve``; call from the main thread)."""

        def handler(signum: int, frame: Any) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            loop.call_soon_threadsafe(self._spawn_reload)

        try:
            signal.signal(signal.SIGHUP, handler)
        except ValueError:  # not the main thread (an embedded server): reload by route only
            log.warning("SIGHUP reload not installed: not in the main thread")

    def _spawn_reload(self) -> None:
        async def go() -> None:
            try:
                await self.reload(None)
            except WritError as exc:
                log.error("SIGHUP: the policy was not reloaded: %s", exc.message)
            except Exception:  # a task's error would otherwise go unseen until exit
                log.exception("SIGHUP: the policy was not reloaded")

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- waking the holder -----------------------------------------------------------------
    async def wake(self, me: Principal, lease_id: Any, reason: Any) -> dict[str, Any]:
        """``POST /v1/leases/{id}/wake``: writ calls the holder's wake route for anyone who
        may observe the resource — at most once per 30 s per lease; a call within that
        window answers with ``already_woken_at`` and calls nobody. A row either way."""
        why = str(text(reason, "reason"))
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any] | WritError:
            lease = await tx.get_lease(lease_id, for_update=True)
            if lease is None:
                raise NotFound(f"no lease {lease_id!r}", lease_id=lease_id)
            self.check_observe(me, lease.resource, f"lease {lease.lease_id}")
            now = tx.now()
            if lease.state != "held" or lease.expires_at <= now:
                return LeaseLost(
                    f"lease {lease.lease_id} on {lease.resource} no longer holds: there is "
                    "nobody to wake",
                    lease_id=lease.lease_id,
                    state="expired" if lease.state == "held" else lease.state,
                )
            mark = await tx.get_object(WAKE, lease.lease_id, for_update=True)
            holder = await tx.get_principal(lease.holder)
            route = holder.wake if holder else None
            answer: dict[str, Any] = {
                "lease_id": lease.lease_id,
                "resource": lease.resource,
                "holder": lease.holder,
                "woken_at": rfc3339(now),
                "already_woken_at": None,
            }
            if mark is not None and (mark.get("expires_at_ts") or 0) > now:
                answer.update(woken_at=mark["at"], already_woken_at=mark["at"])
                await tx.append(
                    eng.lease_row(
                        lease,
                        "wake.requested",
                        me.name,
                        f"{me.name} asked writ to wake {lease.holder} ({why}); already woken "
                        f"at {mark['at']} by {mark['by']}: not called again within "
                        f"{WAKE_EVERY_S:g}s",
                    )
                )
                return answer
            await tx.put_object(
                WAKE,
                lease.lease_id,
                lease.resource,
                "active",
                {"at": rfc3339(now), "by": me.name, "reason": why},
                now + WAKE_EVERY_S,
            )
            row = eng.lease_row(
                lease,
                "wake.requested",
                me.name,
                f"{me.name} asked writ to wake {lease.holder} ({why}): "
                + (f"POST {redact(route)}" if route else "no wake route registered"),
            )
            await tx.append(row)
            eng.call_later(
                tx,
                "wake",
                route,
                {"to": lease.holder, "reason": why, "by": me.name, "lease": lease.to_dict()},
                row,
            )
            return answer

        out = await eng.store.transact(fn)
        if isinstance(out, WritError):
            raise out
        return out


__all__ = [
    "OPEN",
    "Authority",
    "Decision",
    "Grant",
    "Settings",
    "decide",
    "grant_lines",
    "observable",
    "parse_section",
    "review",
]
