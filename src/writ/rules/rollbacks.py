"""Rollback with a human-held key.

Anyone may ask for a rollback of a lease (or of a change made under one) whose rollback plan
allows it. The route, key holder and override queue are frozen into the request when it is
made. Only the key-holder queue's own token — or a human member of that queue
(:mod:`writ.engine.principals`; an admin too only as a member) — may approve or deny, never the
requester and never an agent or a portal: "agents may request rollback; only the human
queue holds the key". A member's rows name the queue in their notes. Approval is single-use: writ POSTs the frozen route once (a relative route against
the policy's ``rollback_base_url``) and records ``executed`` or ``failed`` with the
response status, the approver as ``approved_by``. A human may later mark an executed
rollback a *defect* (``rollback_denominator_is_defect: true``): it was a new failure, not
recovery, and never reads as clean history. The route and key holder are checked against the
lease's ``lease.granted`` row before the call (:func:`route_disagrees`): the tables that hold
them are outside the hash, and a route pointed elsewhere by hand is never called. So is the
rollback itself (:func:`writ.core.rollback_rows.rollback_disagrees`): its request's row must
say who asked and why, and no row may have decided it yet (``; rollback ID`` ends the
request's, the approval's and the denial's notes); one set back to pending or made by hand
is refused (409 ``conflict``, a ``rollback.refused`` row), its route not called.

Each request pages the key holder, so a request is not repeated: a principal asking again
for a lease while its own request is pending gets that request back (the same id, 201 as
before; nothing written, nobody paged), and at most :data:`PENDING_PER_LEASE` requests of a
lease await the key at once (one more is 409 ``conflict`` naming them, and writes nothing).
"""

from __future__ import annotations

import functools
import logging
from typing import Any
from urllib.parse import urlsplit

from writ.core.clock import rfc3339
from writ.core.errors import Conflict, Forbidden, Invalid, NotFound
from writ.core.models import Lease, Principal, data, named, new_id, public
from writ.core.rollback_rows import rollback_disagrees
from writ.core.routes import check_route, host_problem, resolve
from writ.core.textsafe import visible
from writ.core.validate import check_text, text
from writ.engine.hooks import SYSTEM, Rule
from writ.engine.principals import member_of, refusal
from writ.engine.wake import CallResult
from writ.rules.authority import Authority
from writ.rules.consent import CHANGE
from writ.stores.base import PROBE_ROWS, Tx

log = logging.getLogger("writ.audit")  # a table changed by hand: as verify names it

ROLLBACK = "rollback"
KEY_RULE = "agents may request rollback; only the human queue holds the key"
#: rollback requests of one lease that may await its key at once (each pages the key holder;
#: a principal asking again while its own is pending gets that one back)
PENDING_PER_LEASE = 4
#: an approved rollback with no outcome this long after its approval (a call takes 9 s at
#: most): its server stopped before it recorded one; it fails, its outcome unknown
UNKNOWN_AFTER_S = 60.0


class Rollbacks(Rule):
    name = "rollbacks"

    async def check_plan(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Validate a lease's rollback plan at acquire: a literal route, and a key held by a
        human queue (a person is accepted with a warning; an agent or portal never). What a
        plan gives is checked whether or not it allows a rollback: its ``override_queue`` is
        paged for a stuck lock and takes an unanswered consent (an agent naming itself there
        answered its own escalations), and every field lands in the grant's row."""
        allowed = plan.get("allowed", False)
        if not isinstance(allowed, bool):
            raise Invalid("rollback.allowed must be true or false", field="rollback.allowed")
        out: dict[str, Any] = {"allowed": allowed}
        for key in ("path", "key_holder", "override_queue", "denominator"):
            v = plan.get(key)
            if v is not None and (not isinstance(v, str) or not visible(v)):
                raise Invalid(f"rollback.{key} must be a non-empty string", field=f"rollback.{key}")
            out[key] = v
        unknown = set(plan) - {"allowed", "path", "key_holder", "override_queue", "denominator"}
        if unknown:
            raise Invalid(f"rollback has unknown fields {sorted(unknown)}", field="rollback")
        missing = [k for k in ("path", "key_holder", "override_queue") if not out.get(k)]
        if allowed and missing:
            raise Invalid(
                "rollback.allowed=true needs "
                + ", ".join(f"rollback.{m}" for m in missing)
                + ": a literal route, the human queue that holds the key, and the queue to page"
                " (no queue name, no rollback)",
                field="rollback",
            )
        if out["path"] is not None:
            out["path"] = check_route(out["path"], "rollback.path")
            self._check_host(out["path"])
        warnings: list[str] = []
        for key in ("key_holder", "override_queue"):
            name = out[key]
            if name is None:
                continue
            p = await self.engine.principal(name)
            if p is None:
                raise Invalid(
                    f"rollback.{key} {name!r} is not a registered principal; register the human "
                    "queue first (writ principal add NAME --kind queue)",
                    field=f"rollback.{key}",
                )
            if p.kind in ("agent", "portal"):
                raise Invalid(
                    f"rollback.{key} {name!r} is a{'n' if p.kind == 'agent' else ''} {p.kind}: "
                    "agents may request rollback; only a human queue holds the key"
                    + (
                        " (a vendor portal holding the key is a loyalty oath, not a second key)"
                        if p.kind == "portal"
                        else ""
                    ),
                    field=f"rollback.{key}",
                )
            if p.kind == "human":
                warnings.append(f"rollback.{key} {name!r} is a person, not a queue with a rotation")
        if warnings:
            out["warnings"] = warnings
        return out

    def _check_host(self, route: str) -> None:
        """An absolute route names no credentials (every reader of the trail would see them)
        and, when the policy sets ``rollback_hosts``, one of those hosts."""
        if not route.startswith(("http://", "https://")):
            return  # relative: called against the policy's rollback_base_url
        if "@" in urlsplit(route).netloc:
            raise Invalid(
                "rollback.path carries credentials (user:password@): the route is written in "
                "the audit trail for every reader; writ signs its calls (webhook_secret)",
                field="rollback.path",
            )
        pol = self.engine.policy
        problem = host_problem(route, pol.rollback_hosts, pol.rollback_base_url)
        if problem:
            raise Invalid(f"rollback.path {problem}", field="rollback.path")

    def _row(
        self, rb: dict[str, Any], event: str, agent: str, notes: str, **extra: Any
    ) -> dict[str, Any]:
        return {
            "event": event,
            "agent_id": agent,
            "resource": rb["resource"],
            "lock_holder": rb.get("lock_holder") or "none",
            "lock_key": rb.get("lock_key"),
            "lock_acquired_at": rb.get("lock_acquired_at"),
            "fencing_token": rb.get("fencing_token"),
            "rollback_allowed": True,
            "rollback_path": rb["path"],
            "rollback_key_holder": rb["key_holder"],
            "human_override_queue": rb["override_queue"],
            "rollback_denominator": rb.get("denominator"),
            "notes": notes,
            **extra,
        }

    async def request(
        self, me: Principal, lease_id: Any = None, change_id: Any = None, reason: Any = None
    ) -> dict[str, Any]:
        why = text(reason, "reason")
        check_text(lease_id, "lease_id")
        check_text(change_id, "change_id")
        if bool(lease_id) == bool(change_id):
            raise Invalid("give exactly one of lease_id or change_id", field="lease_id")
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any]:
            lid = lease_id
            change = None
            if change_id:
                change = await tx.get_object(CHANGE, str(change_id))
                if change is None:
                    raise NotFound(f"no change {change_id!r}", change_id=change_id)
                lid = change["lease_id"]
            lease = await tx.get_lease(str(lid))
            if lease is None:
                raise NotFound(f"no lease {lid!r}", lease_id=lid)
            # the 403 names what was asked about (a change: not the lease it was made under)
            asked = f"change {change_id}" if change else f"lease {lease.lease_id}"
            eng.rule(Authority).check_observe(me, lease.resource, asked)
            plan = lease.rollback or {}
            if not plan.get("allowed"):
                raise Invalid(
                    f"lease {lease.lease_id} ({lease.holder} on {lease.resource}) has no rollback "
                    "plan (rollback.allowed was not true at acquire): there is no route to call; "
                    "page a human instead",
                    lease_id=lease.lease_id,
                )
            # read and written in one transaction (writes are serialised): no two of its own
            mine = await self._pending(tx, me, lease)
            if mine is not None:
                return mine
            now = tx.now()
            rb = {
                "rollback_id": new_id("rb"),
                "status": "pending",
                "lease_id": lease.lease_id,
                "change_id": change["change_id"] if change else None,
                "resource": lease.resource,
                "lock_holder": lease.holder,
                "lock_key": lease.lock_key,
                "lock_acquired_at": rfc3339(lease.acquired_at),
                "fencing_token": lease.fencing_token,
                "path": plan["path"],
                "key_holder": plan["key_holder"],
                "override_queue": plan["override_queue"],
                "denominator": plan.get("denominator"),
                "requested_by": me.name,
                "reason": why,
                "requested_at": rfc3339(now),
                "approved_by": None,
                "denied_by": None,
                "executed_at": None,
                "response_status": None,
                "error": None,
                "defect": False,
            }
            await tx.put_object(ROLLBACK, rb["rollback_id"], lease.resource, "pending", rb)
            row = self._row(
                rb,
                "rollback.requested",
                me.name,
                f"{me.name} asks {plan['key_holder']} to roll back {lease.lock_key}: {why}"
                + named(ROLLBACK, rb["rollback_id"]),  # (models.named: verify, and approval)
            )
            await tx.append(row)
            holder = await tx.get_principal(plan["key_holder"])
            eng.call_later(
                tx,
                "page",
                holder.wake if holder else None,
                {"to": plan["key_holder"], "reason": "rollback awaits your key", "rollback": rb},
                row,
            )
            return rb

        return await eng.store.transact(fn)

    async def _pending(self, tx: Tx, me: Principal, lease: Lease) -> dict[str, Any] | None:
        """``me``'s pending request to roll ``lease`` back, as its answer was (asked again:
        the same request, nothing written and nobody paged again), or None when it may ask.
        With :data:`PENDING_PER_LEASE` requests of others pending, :class:`Conflict`: each
        new request pages the key holder, so N principals could page it N times."""
        pending = [
            rb
            for rb in await tx.objects_related(ROLLBACK, [lease.resource], ["pending"])
            if rb.get("lease_id") == lease.lease_id
        ]
        for rb in pending:
            if rb.get("requested_by") == me.name:
                return data(rb)
        if len(pending) >= PENDING_PER_LEASE:
            raise Conflict(
                f"{len(pending)} rollback requests of lease {lease.lease_id} already await "
                f"{pending[0]['key_holder']}'s key, who was paged for each: follow one "
                f"(GET /v1/rollbacks/{pending[0]['rollback_id']}) until it is decided",
                lease_id=lease.lease_id,
                pending=[rb["rollback_id"] for rb in pending],
            )
        return None

    async def get(self, rollback_id: str) -> dict[str, Any]:
        rb = await self.engine.store.read(lambda tx: tx.get_object(ROLLBACK, rollback_id))
        if rb is None:
            raise NotFound(f"no rollback {rollback_id!r}", rollback_id=rollback_id)
        return public(rb)

    async def list(self, status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.engine.store.read(
            lambda tx: tx.list_objects(ROLLBACK, [status] if status else None, limit)
        )
        return [public(r) for r in rows]

    @staticmethod
    def _check_key(me: Principal, rb: dict[str, Any]) -> None:
        if me.kind in ("agent", "portal"):
            raise Forbidden(
                f"{me.name} is a{'n' if me.kind == 'agent' else ''} {me.kind}: {KEY_RULE}",
                key_holder=rb["key_holder"],
            )
        if me.name == rb["requested_by"]:
            raise Forbidden(
                f"{me.name} requested this rollback and cannot also approve it: "
                "the key is a second key",
                key_holder=rb["key_holder"],
            )
        if not member_of(me, rb["key_holder"]):
            raise Forbidden(
                f"{me.name} may not turn this key: only the key-holder queue "
                f"{rb['key_holder']} or a human member of it may approve or deny this rollback"
                f" (an admin adds members: writ principal queues NAME --add {rb['key_holder']})",
                key_holder=rb["key_holder"],
                queue=rb["key_holder"],
            )

    async def answer(self, me: Principal, rollback_id: str, approve: bool) -> dict[str, Any]:
        eng = self.engine

        async def decide(tx: Tx) -> dict[str, Any] | Forbidden | Conflict:
            rb = await tx.get_object(ROLLBACK, rollback_id, for_update=True)
            if rb is None:
                raise NotFound(f"no rollback {rollback_id!r}", rollback_id=rollback_id)
            # membership as it stands now, not as it was when the token was checked; and one
            # disabled since turns no key
            me_now = await tx.get_principal(me.name) or me
            gone = refusal(me_now, tx.now())
            if gone is not None:
                raise gone
            try:
                self._check_key(me_now, rb)
            except Forbidden as refused:  # a decision too: the postmortem reads who tried
                verb = "approve" if approve else "deny"
                await tx.append(
                    self._row(
                        rb,
                        "rollback.refused",
                        me.name,
                        f"{me.name} may not {verb} {rb['requested_by']}'s rollback of "
                        f"{rb['lock_key']}: {refused.message}",
                    )
                )
                if not eng.rule(Authority).observable(me_now, rb["resource"]):
                    return Forbidden(refused.message)  # an agent's words: no key holder named
                return refused
            if rb["state"] != "pending":
                raise Invalid(
                    f"rollback {rollback_id} is already {rb['state']}: approval is single-use",
                    status=rb["state"],
                )
            if approve and (why := await route_disagrees(tx, rb)) is not None:
                return await self._not_called(tx, me, rb, why)
            # the table is outside the hash: its request, and no decision, must be in the rows
            why = await rollback_disagrees(tx, rollback_id, rb, "pending", PROBE_ROWS)
            if why is not None:
                return await _tampered(tx, me, rb, rollback_id, approve, why)
            status = "approved" if approve else "denied"
            rb.update(
                status=status, **({"approved_by": me.name} if approve else {"denied_by": me.name})
            )
            due = tx.now() + UNKNOWN_AFTER_S if approve else None  # (see tick)
            await tx.put_object(ROLLBACK, rollback_id, rb["resource"], status, data(rb), due)
            rb["state"] = status  # as stored now: the answer and the route's payload say so
            holder = await tx.get_principal(rb["key_holder"]) if rb.get("key_holder") else None
            if holder is not None and holder.wake:  # its page is answered: resolve it
                tx.after_commit(
                    functools.partial(
                        eng.caller.resolve,
                        holder.wake,
                        {"to": holder.name, "reason": f"rollback {status}", "rollback": public(rb)},
                        {"agent_id": me.name, "resource": rb["resource"], "lock_holder": "none"},
                    )
                )
            await tx.append(
                self._row(
                    rb,
                    f"rollback.{status}",
                    me.name,
                    f"{_who(me, rb)} {status} {rb['requested_by']}'s rollback of {rb['lock_key']}"
                    + (f"; calling {rb['path']}" if approve else "")
                    + named(ROLLBACK, rollback_id),
                    approved_by=me.name if approve else None,
                )
            )
            return rb

        rb = await eng.store.transact(decide)
        if isinstance(rb, Forbidden | Conflict):  # refused, and its row written
            raise rb
        if not approve or rb["state"] == "failed":  # denied, or a route the ledger never recorded
            return public(rb)
        # the call and its outcome's row, carried to their end if this request is not
        return public(await eng.caller.carry(self._execute(me, rb)))

    async def _execute(self, me: Principal, rb: dict[str, Any]) -> dict[str, Any]:
        """Call an approved rollback's route, then record what it answered."""
        eng, rollback_id = self.engine, rb["rollback_id"]
        pol = eng.policy
        try:
            url = resolve(rb["path"], pol.rollback_base_url)
            # frozen at request time, called under today's policy
            problem = host_problem(url, pol.rollback_hosts, pol.rollback_base_url)
            if problem:
                raise Invalid(f"route {problem}: not called")
        except Invalid as exc:
            result = CallResult(rb["path"], False, None, 0, exc.message)
        else:
            result = await eng.caller.post(
                url, {"rollback": public(rb), "approved_by": me.name}, attempts=1
            )

        async def record(tx: Tx) -> dict[str, Any]:
            cur = await tx.get_object(ROLLBACK, rollback_id, for_update=True)
            assert cur is not None
            status = "executed" if result.ok else "failed"
            cur.update(
                status=status,
                executed_at=rfc3339(tx.now()),
                response_status=result.status,
                error=None if result.ok else result.describe(),
            )
            await tx.put_object(ROLLBACK, rollback_id, cur["resource"], status, data(cur))
            cur["state"] = status
            await tx.append(
                self._row(
                    cur,
                    f"rollback.{status}",
                    me.name,
                    f"rollback {rollback_id} approved by {_who(me, rb)}: {result.describe()}",
                    approved_by=me.name,
                )
            )
            return cur

        out: dict[str, Any] = await eng.store.transact(record)
        return out

    async def due(self, tx: Tx, now: float) -> bool:
        return bool(await tx.objects_due(ROLLBACK, "approved", now, 1))

    async def tick(self) -> None:
        """An approved rollback whose outcome no server recorded within UNKNOWN_AFTER_S (its
        server stopped, or died, between the approval and the answer) fails, its outcome
        unknown: approval is single-use, so it stayed ``approved`` for ever."""

        async def fn(tx: Tx) -> None:
            for rb in await tx.objects_due(ROLLBACK, "approved", tx.now(), 200):
                why = (
                    f"no outcome was recorded within {UNKNOWN_AFTER_S:g} s of its approval (the "
                    "server stopped while calling its route?): the route may have been called; "
                    "look before a new rollback is approved"
                )
                rb.update(status="failed", executed_at=rfc3339(tx.now()), error=why)
                await tx.put_object(ROLLBACK, rb["rollback_id"], rb["resource"], "failed", data(rb))
                rb["state"] = "failed"
                approver = rb.get("approved_by") or "nobody"
                notes = f"rollback {rb['rollback_id']} approved by {approver}: {why}"
                await tx.append(
                    self._row(rb, "rollback.failed", SYSTEM, notes, approved_by=approver)
                )

        await self.engine.store.transact(fn)

    async def _not_called(
        self, tx: Tx, me: Principal, rb: dict[str, Any], why: str
    ) -> dict[str, Any]:
        """An approval refused before the call: the rollback fails, its route never called."""
        rb.update(status="failed", approved_by=me.name, executed_at=rfc3339(tx.now()), error=why)
        await tx.put_object(ROLLBACK, rb["rollback_id"], rb["resource"], "failed", data(rb))
        rb["state"] = "failed"
        await tx.append(
            self._row(
                rb,
                "rollback.failed",
                me.name,
                f"rollback {rb['rollback_id']} approved by {_who(me, rb)}: not called: {why}",
                approved_by=me.name,
            )
        )
        return rb

    async def defect(self, me: Principal, rollback_id: str, notes: Any) -> dict[str, Any]:
        why = text(notes, "notes")
        if not me.is_human:
            raise Forbidden("only a human or a queue may mark a rollback as a defect")

        async def fn(tx: Tx) -> dict[str, Any]:
            rb = await tx.get_object(ROLLBACK, rollback_id, for_update=True)
            if rb is None:
                raise NotFound(f"no rollback {rollback_id!r}", rollback_id=rollback_id)
            if rb["state"] not in ("executed", "failed"):
                raise Invalid(
                    f"rollback {rollback_id} is {rb['state']}: only a rollback that ran can be a defect"
                )
            rb.update(defect=True, defect_notes=why, defect_by=me.name)
            await tx.put_object(ROLLBACK, rollback_id, rb["resource"], rb["state"], data(rb))
            await tx.append(
                self._row(
                    rb,
                    "rollback.defect",
                    me.name,
                    f"{me.name}: the rollback was a new defect, not recovery: {why}"
                    + named("rollback", rb["rollback_id"]),
                    approved_by=rb.get("approved_by"),
                    rollback_denominator_is_defect=True,
                )
            )
            return rb

        return public(await self.engine.store.transact(fn))


async def route_disagrees(tx: Tx, rb: dict[str, Any]) -> str | None:
    """Why a rollback's route or key holder is not the one its lease's ``lease.granted`` row
    recorded (hashed: the rollbacks and leases tables are not), or None. writ calls only a
    route the ledger recorded: one pointed elsewhere by hand would be called, and signed."""
    lock_key = rb.get("lock_key")
    grant, _ = await tx.audit_lease_life(lock_key) if isinstance(lock_key, str) else (None, None)
    said = f"granted {rb.get('lease_id')} for "
    if (
        grant is None
        or grant["event"] != "lease.granted"
        or not (grant["notes"] or "").startswith(said)
    ):
        return (
            f"no lease.granted row of lease {rb.get('lease_id')} names lock key {lock_key!r}: "
            "the rollback was changed by hand"
        )
    for field, have, want in (
        ("path", rb.get("path"), grant["rollback_path"] if grant["rollback_allowed"] else None),
        ("key_holder", rb.get("key_holder"), grant["rollback_key_holder"]),
    ):
        if have != want:
            return (
                f"its {field} ({have!r}) disagrees with the lease's grant, row {grant['seq']} "
                f"({want!r}): the rollback was changed by hand, and writ calls only the route "
                "the ledger recorded"
            )
    return None


async def _tampered(
    tx: Tx, me: Principal, rb: dict[str, Any], rollback_id: str, approve: bool, why: str
) -> Conflict:
    """An answer to a rollback the ledger does not account for (``why``): refused, its route
    never called, and a ``rollback.refused`` row says so; the rollback stays as the table
    has it, for ``writ audit verify`` to name. The row takes nothing of the table's words
    (who asked and why): they are what was changed."""
    verb = "approve" if approve else "deny"
    log.error("tampering: %s may not %s rollback %s: %s", me.name, verb, rollback_id, why)
    await tx.append(
        {
            "event": "rollback.refused",
            "agent_id": me.name,
            "resource": rb["resource"],
            "lock_holder": "none",
            "notes": f"{me.name} may not {verb} rollback {rollback_id}: {why}",
        }
    )
    done = "approved, and its route not called" if approve else "denied"
    return Conflict(
        f"{why}: not {done} (writ audit verify names what disagrees)",
        rollback_id=rollback_id,
    )


def _who(me: Principal, rb: dict[str, Any]) -> str:
    """The approver as the notes name it: a member with the queue it acted for."""
    kh = rb.get("key_holder")
    return me.name if me.name == kh else f"{me.name} (member of {kh})"
