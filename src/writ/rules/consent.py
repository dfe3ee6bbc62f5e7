"""Revert protection: changes recorded under a lease, and the consent to undo them.

A change recorded by a lease's holder is *protected* for ``protect_s``. While it is, a lease
asked for by a different principal, on a conflicting resource, whose ``touches`` include the
change's attribute (or ``*``), is refused with 409 ``consent_required`` naming the change,
its author and ``protected_until``. The requester asks the author (``POST /v1/consents``),
who is woken through its ``wake`` route; the author or a human/queue grants or denies (once
expired and escalated: only the override queue or a human member of it). Anyone else's try
is refused (403) on the record: a ``consent.refused`` row naming who tried what.
Unanswered by ``consent_timeout_s``, the request becomes ``expired`` — never ``denied`` —
and escalates to the author's override queue (the one in the author's rollback plan, or the
policy's default), which is paged and may still grant or deny. A granted consent is used
by one grant of its requester on a lease that the change blocks, then it is ``used``; while
its change blocks, it also lets its requester past the older changes of the same author on
the same attribute of the same resource (undoing the newest undoes them), and a refusal
names the newest of those, the one to ask about. A grant it did not let past anything
leaves it granted.

A change that no longer protects (recorded with ``protect_s`` 0, or past its window) needs
no consent: an ask about it is 409 ``conflict`` and writes nothing, wakes nobody.
Each ask wakes the author, so an ask is not repeated: a requester asking again about a change
while its own ask is pending gets that ask back (the same id, 201 as before; nothing written,
nobody woken), and at most :data:`PENDING_PER_CHANGE` asks about a change await its author
at once (one more is 409 ``conflict``, and writes nothing).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from writ.core.clock import rfc3339
from writ.core.errors import (
    Conflict,
    ConsentRequired,
    Forbidden,
    Invalid,
    NotFound,
    WritError,
)
from writ.core.models import Lease, Principal, data, named, new_id, public
from writ.core.polls import Polls
from writ.core.validate import check_text, json_value, text
from writ.engine.hooks import SYSTEM, EngineView, Request, Rule
from writ.engine.principals import member_of, refusal
from writ.rules.authority import Authority
from writ.stores.base import Tx

CHANGE, CONSENT = "change", "consent"
#: consent asks about one change that may await its author at once (each wakes the author
#: and may page its queue; a requester asking again while its own is pending gets that one)
PENDING_PER_CHANGE = 8


class Consents(Rule):
    """Changes, revert protection and consent (wired into the engine at construction)."""

    name = "consents"
    gate_priority = 50  # after principals, authority and freezes

    def __init__(self, engine: EngineView) -> None:
        super().__init__(engine)
        # the long polls of one consent share one reader (writ.core.polls)
        self._polls: Polls[dict[str, Any]] = Polls(lambda: engine.audit_changed)

    # ------------------------------------------------------------------ changes
    async def record_change(
        self,
        me: Principal,
        lease_id: str,
        attribute: Any,
        summary: Any,
        before: Any = None,
        after: Any = None,
        protect_s: Any = None,
        fencing_token: Any = None,
    ) -> dict[str, Any]:
        attr = text(attribute, "attribute", limit=128)
        if attr == "*":
            raise Invalid(
                "a change names the attribute it changed: '*' would hold every attribute of the "
                "resource behind consent",
                field="attribute",
            )
        summ = text(summary, "summary")
        before = json_value(before, "before")
        after = json_value(after, "after")
        if protect_s is not None and (
            isinstance(protect_s, bool)
            or not isinstance(protect_s, (int, float))
            or not 0 <= protect_s <= 86_400
        ):
            raise Invalid("protect_s must be between 0 and 86400 seconds", field="protect_s")
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any] | WritError:
            lease = await eng.held_lease(tx, me, lease_id, "record a change under")
            if isinstance(lease, WritError):
                return lease
            if fencing_token is not None and fencing_token != lease.fencing_token:
                return Forbidden(
                    f"fencing token {fencing_token} is not this lease's ({lease.fencing_token})",
                    fencing_token=lease.fencing_token,
                )
            refused = await eng.rule(Authority).check_change(tx, me, lease, str(attr))
            if refused is not None:
                return refused
            now = tx.now()
            policy_window = eng.policy.governing(lease.resource).protect_s
            if protect_s is not None and protect_s > policy_window and not me.is_human:
                # an agent may shorten its change's protection, not hold others off longer
                # than the policy says (a human may)
                return Invalid(
                    f"protect_s {protect_s:g} is longer than the policy's {policy_window:g}s for "
                    f"{lease.resource}: an agent may shorten it, only a human may lengthen it",
                    field="protect_s",
                )
            window = float(protect_s) if protect_s is not None else policy_window
            change = {
                "change_id": new_id("chg"),
                "resource": lease.resource,
                "author": me.name,
                "attribute": attr,
                "summary": summ,
                "before": before,
                "after": after,
                "lease_id": lease.lease_id,
                "fencing_token": lease.fencing_token,
                "at": rfc3339(now),
                "protected_until": rfc3339(now + window),
                "override_queue": await eng.human_queue(tx, eng.override_queue(lease)),
            }
            await tx.put_object(
                CHANGE,
                change["change_id"],
                lease.resource,
                "protected" if window > 0 else "recorded",
                change,
                now + window,
            )
            await tx.append(
                eng.lease_row(
                    lease,
                    "change.recorded",
                    me.name,
                    f"{attr}: {summ}; protected until {change['protected_until']}",
                    human_override_queue=change["override_queue"],
                )
            )
            return change

        out = await eng.store.transact(fn)
        if isinstance(out, WritError):
            raise out
        return out

    async def get_change(self, change_id: str) -> dict[str, Any]:
        c = await self.engine.store.read(lambda tx: tx.get_object(CHANGE, change_id))
        if c is None:
            raise NotFound(f"no change {change_id!r}", change_id=change_id)
        return public(c)

    # ------------------------------------------------------------------ the gate
    async def _blocking(self, tx: Tx, req: Request) -> list[dict[str, Any]]:
        """The protected changes of others that ``req`` would undo, oldest first."""
        now = tx.now()
        touches = set(req.touches)
        return sorted(
            (
                c
                for c in await self.engine.policy_objects(tx, req.expand, CHANGE)
                if (c.get("expires_at_ts") or 0) > now
                and c["author"] != req.principal
                and ("*" in touches or c["attribute"] in touches or c["attribute"] == "*")
            ),
            key=_recorded,
        )

    async def _consent(self, tx: Tx, req: Request) -> dict[str, Any] | None:
        """The granted consent ``req`` names, if it is its requester's."""
        if not req.consent_id:
            return None
        consent = await tx.get_object(CONSENT, req.consent_id)
        if consent is None or consent["state"] != "granted":
            return None
        return consent if consent["requester"] == req.principal else None

    async def gate(self, tx: Tx, me: Principal | None, req: Request) -> WritError | None:
        """Refuse a grant that would undo another principal's protected change.

        A granted consent about change C lets its requester past C and past every older
        change of C's author on C's attribute of C's resource, while C itself still stands
        in the way (:func:`_covers`): undoing the newest change undoes the state the older
        ones led to. A refusal names the newest change of the group it stops at, the one
        to ask about."""
        blocking = await self._blocking(tx, req)
        if not blocking:
            return None
        covers = _covers(await self._consent(tx, req), blocking)
        for c in blocking:
            if not covers(c):
                return self._refusal(me, req, max(filter(_same_as(c), blocking), key=_recorded))
        return None

    def _refusal(self, me: Principal | None, req: Request, c: dict[str, Any]) -> WritError:
        if me is not None and not self.engine.rule(Authority).observable(me, c["resource"]):
            return ConsentRequired(  # closed mode: a change the caller may not observe
                f"{req.resource} is protected until {c['protected_until']} by a recent "
                "change in its blast radius, on a resource you may not observe: retry "
                "after that, or ask a human to look",
                protected_until=c["protected_until"],
            )
        return ConsentRequired(
            # the attribute and summary are another agent's words: quoted, never read
            # as writ's (a newline and "Next: ..." in them would pass for guidance)
            f"{c['author']} changed {c['attribute']!r} on {c['resource']} at {c['at']} "
            f"(summary: {c['summary']!r}); it is protected until {c['protected_until']}. "
            "Ask first: "
            f'POST /v1/consents {{"change_id": "{c["change_id"]}", "reason": ...}}, '
            "then retry with the granted consent_id",
            change=public(c),
            author=c["author"],
            protected_until=c["protected_until"],
            ask={
                "method": "POST",
                "path": "/v1/consents",
                "body": {"change_id": c["change_id"]},
            },
        )

    async def on_grant(self, tx: Tx, req: Request, lease: Lease) -> None:
        """Mark the consent ``req`` names used, when the gate let the grant past a change by
        it (in this transaction, so the same changes): a grant that needed no consent, or
        not this one, leaves it granted."""
        consent = await self._consent(tx, req)
        if consent is None:
            return
        covers = _covers(consent, blocking := await self._blocking(tx, req))
        if not any(covers(c) for c in blocking):
            return
        consent.update(status="used", used_by_lease=lease.lease_id, used_at=rfc3339(tx.now()))
        await tx.put_object(
            CONSENT, consent["consent_id"], consent["resource"], "used", data(consent), None
        )
        await tx.append(
            self.engine.lease_row(
                lease,
                "consent.used",
                req.principal,
                f"consent {consent['consent_id']} from {consent.get('answered_by')} used for "
                f"change {consent['change_id']} by {consent['author']}",
                approved_by=consent.get("approved_by"),
            )
        )

    # ------------------------------------------------------------------ consents
    async def ask(self, me: Principal, change_id: Any, reason: Any) -> dict[str, Any]:
        why = text(reason, "reason")
        check_text(change_id, "change_id")
        if not isinstance(change_id, str) or not change_id:
            raise Invalid("change_id is required", field="change_id")
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any]:
            change = await tx.get_object(CHANGE, change_id)
            if change is None:
                raise NotFound(f"no change {change_id!r}", change_id=change_id)
            eng.rule(Authority).check_observe(me, change["resource"], f"change {change_id}")
            if change["author"] == me.name:
                raise Invalid("this is your own change: you need nobody's consent to touch it")
            if change["state"] != "protected" or (change.get("expires_at_ts") or 0) <= tx.now():
                # an ask wakes the author and, unanswered, pages a queue: not for nothing
                raise Conflict(
                    f"change {change_id} is no longer protected (it was until "
                    f"{change['protected_until']}): no consent needed, acquire without one",
                    change_id=change_id,
                    protected_until=change["protected_until"],
                )
            # read and written in one transaction (writes are serialised): no two of its own
            mine = await self._pending(tx, me, change)
            if mine is not None:
                return mine
            now = tx.now()
            timeout = eng.policy.governing(change["resource"]).consent_timeout_s
            consent = {
                "consent_id": new_id("cns"),
                "change_id": change_id,
                "resource": change["resource"],
                "attribute": change["attribute"],
                "requester": me.name,
                "author": change["author"],
                "reason": why,
                "status": "pending",
                "requested_at": rfc3339(now),
                "expires_at": rfc3339(now + timeout),
                "escalated_to": None,
                "answered_by": None,
                "answered_at": None,
            }
            await tx.put_object(
                CONSENT,
                consent["consent_id"],
                change["resource"],
                "pending",
                consent,
                now + timeout,
            )
            row = {
                "agent_id": me.name,
                "resource": change["resource"],
                **await eng.lock_columns(tx, change["resource"]),
                "human_override_queue": change.get("override_queue"),
                "notes": f"{me.name} asks {change['author']} to undo {change['attribute']} "
                f"({change['summary']}): {why}; answer by {consent['expires_at']}"
                # the ask its answer names (models.named): the postmortem pairs them by it
                + named("consent", consent["consent_id"]),
            }
            await tx.append({"event": "consent.requested", **row})
            author = await tx.get_principal(change["author"])
            eng.call_later(
                tx,
                "wake",
                author.wake if author else None,
                {
                    "to": change["author"],
                    "reason": "consent requested",
                    "consent": consent,
                    "change": public(change),
                },
                row,
            )
            return consent

        return await eng.store.transact(fn)

    async def _pending(
        self, tx: Tx, me: Principal, change: dict[str, Any]
    ) -> dict[str, Any] | None:
        """``me``'s pending ask about ``change``, as its answer was (asked again: the same
        ask, nothing written and nobody woken again), or None when it may ask. With
        :data:`PENDING_PER_CHANGE` asks of others pending, :class:`Conflict`: each ask wakes
        the author and, unanswered, pages its queue. An ask past its deadline no longer
        counts: it is expired (the sweeper may not have said so yet) and escalated."""
        now = tx.now()
        pending = [
            c
            for c in await tx.objects_related(CONSENT, [change["resource"]], ["pending"])
            if c.get("change_id") == change["change_id"] and (c.get("expires_at_ts") or 0) > now
        ]
        for c in pending:
            if c.get("requester") == me.name:
                return data(c)
        if len(pending) >= PENDING_PER_CHANGE:
            raise Conflict(
                f"{len(pending)} consent requests about change {change['change_id']} already "
                f"await {change['author']}'s answer: ask again after {pending[0]['expires_at']}",
                change_id=change["change_id"],
                retry_at=pending[0]["expires_at"],
            )
        return None

    async def answer(self, me: Principal, consent_id: str, grant: bool) -> dict[str, Any]:
        eng = self.engine

        async def fn(tx: Tx) -> dict[str, Any] | Forbidden:
            consent = await tx.get_object(CONSENT, consent_id, for_update=True)
            if consent is None:
                raise NotFound(f"no consent {consent_id!r}", consent_id=consent_id)
            # as it stands now, not as it was when the token was checked: one disabled
            # since answers nothing
            me_now = await tx.get_principal(me.name) or me
            gone = refusal(me_now, tx.now())
            if gone is not None:
                raise gone
            if me.name != consent["author"]:  # closed mode: told nothing of what it may not see
                eng.rule(Authority).check_observe(me, consent["resource"], f"consent {consent_id}")
            state = consent["state"]
            if state == "pending" and tx.now() >= (consent.get("expires_at_ts") or 0):
                state = "expired"  # the sweeper has not got to it yet; humans may still answer
            try:
                member = await self._answerer(tx, me_now, consent, state)
            except Forbidden as refused:  # a decision too: the postmortem reads who tried
                await tx.append(
                    {
                        "event": "consent.refused",
                        "agent_id": me.name,
                        "resource": consent["resource"],
                        **await eng.lock_columns(tx, consent["resource"]),
                        "notes": f"{me.name} may not {'grant' if grant else 'deny'} "
                        f"{consent['requester']}'s request to undo {consent['attribute']} "
                        f"(change {consent['change_id']} by {consent['author']}): "
                        f"{refused.message}" + named("consent", consent_id),
                    }
                )
                return refused  # returned, not raised: the row commits
            now = tx.now()
            consent.update(
                status="granted" if grant else "denied",
                answered_by=me.name,
                answered_at=rfc3339(now),
                approved_by=me.name if grant and me.is_human else None,
            )
            await tx.put_object(
                CONSENT, consent_id, consent["resource"], consent["status"], data(consent), None
            )
            if state == "expired" and consent.get("escalated_to"):
                # the page of its escalation is answered: resolve a PagerDuty incident
                q = await tx.get_principal(consent["escalated_to"])
                if q is not None and q.wake:
                    tx.after_commit(
                        functools.partial(
                            eng.caller.resolve,
                            q.wake,
                            {
                                "to": q.name,
                                "reason": "consent answered",
                                "consent": public(consent),
                            },
                            {
                                "agent_id": SYSTEM,
                                "resource": consent["resource"],
                                "lock_holder": "none",
                            },
                        )
                    )
            await tx.append(
                {
                    "event": f"consent.{consent['status']}",
                    "agent_id": me.name,
                    "resource": consent["resource"],
                    **await eng.lock_columns(tx, consent["resource"]),
                    # approved_by names a human key only: an author agent's consent is in the notes
                    "approved_by": me.name if grant and me.is_human else None,
                    "notes": f"{me.name}"
                    + (f" (member of {member})" if member else "")
                    + f" {consent['status']} {consent['requester']}'s request to undo "
                    f"{consent['attribute']} (change {consent['change_id']} by {consent['author']})"
                    + named("consent", consent_id),  # the one it answers (models.named)
                }
            )
            return consent

        out = await eng.store.transact(fn)
        if isinstance(out, Forbidden):
            raise out
        return public(out)

    async def _answerer(
        self, tx: Tx, me: Principal, consent: dict[str, Any], state: str
    ) -> str | None:
        """Raise :class:`Forbidden` unless ``me`` (as it stands now) may answer ``consent``
        in ``state`` (pending, or expired: escalated); :class:`Invalid` once it is answered.
        The queue ``me`` answers it as a member of, if it does."""
        if me.name == consent["requester"]:
            raise Forbidden("you cannot answer your own consent request")
        if state == "pending":
            if me.name != consent["author"] and not me.is_human:
                raise Forbidden(
                    f"only the author ({consent['author']}) or a human/queue may answer this consent"
                )
            return None
        if state != "expired":
            raise Invalid(f"consent {consent['consent_id']} is already {state}", status=state)
        # escalated: only its override queue or a human member of it (PROTOCOL v1.1); with
        # no queue to escalate to, an admin
        queue = consent.get("escalated_to")
        if queue is None:
            change = await tx.get_object(CHANGE, consent["change_id"])
            queue = (change or {}).get("override_queue")
        queue = await self.engine.human_queue(tx, queue)
        if not (member_of(me, queue) or (queue is None and me.admin)):
            raise Forbidden(
                "this consent expired unanswered and was escalated: only its override "
                f"queue ({queue or 'none: then an admin'}) or a human member of it may "
                "answer it now",
                queue=queue,
            )
        return queue if queue and me.name != queue else None

    async def get(self, consent_id: str, wait_s: float = 0) -> dict[str, Any]:
        """A consent; with ``wait_s``, wait until it is no longer pending (long poll). The
        polls of one consent share one read after each commit (:class:`Polls`): a
        thousand of them cost one read a commit, not a thousand."""
        eng = self.engine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s

        async def read() -> dict[str, Any]:
            c = await eng.store.read(lambda tx: tx.get_object(CONSENT, consent_id))
            if c is None:
                raise NotFound(f"no consent {consent_id!r}", consent_id=consent_id)
            return c

        async def settled() -> dict[str, Any] | None:
            c = await read()
            return c if c["state"] != "pending" else None

        c = await read()
        if c["state"] != "pending" or deadline <= loop.time():
            return public(c)
        done = await self._polls.wait(consent_id, settled, deadline - loop.time())
        return public(done if done is not None else await read())

    async def due(self, tx: Tx, now: float) -> bool:
        """A change past its window, or a consent past its deadline (what tick looks for)."""
        return bool(
            await tx.objects_due(CHANGE, "protected", now, 1)
            or await tx.objects_due(CONSENT, "pending", now, 1)
        )

    async def tick(self) -> None:
        """Lapse changes past their window; expire unanswered consents and escalate them."""
        eng = self.engine

        async def fn(tx: Tx) -> None:
            # a change past its window no longer protects: take it out of the grant check
            for ch in await tx.objects_due(CHANGE, "protected", tx.now(), 500):
                await tx.put_object(
                    CHANGE, ch["change_id"], ch["resource"], "lapsed", data(ch), ch["expires_at_ts"]
                )
            for c in await tx.objects_due(CONSENT, "pending", tx.now(), 200):
                change = await tx.get_object(CHANGE, c["change_id"])
                queue = await eng.human_queue(tx, (change or {}).get("override_queue"))
                c.update(status="expired", escalated_to=queue)
                await tx.put_object(
                    CONSENT, c["consent_id"], c["resource"], "expired", data(c), None
                )
                row = {
                    "agent_id": SYSTEM,
                    "resource": c["resource"],
                    **await eng.lock_columns(tx, c["resource"]),
                    "human_override_queue": queue,
                }
                await tx.append(
                    {
                        **row,
                        "event": "consent.expired",
                        "notes": f"{c['author']} did not answer {c['requester']}'s consent request by "
                        f"{c['expires_at']}: expired (not denied); escalated to {queue or 'nobody: no queue'}"
                        # the ask it ends (models.named): the postmortem pairs them by it
                        + named("consent", c["consent_id"]),
                    }
                )
                q = await tx.get_principal(queue) if queue else None
                eng.call_later(
                    tx,
                    "page",
                    q.wake if q else None,
                    {"to": queue, "reason": "consent unanswered", "consent": public(c)},
                    row,
                )

        await eng.store.transact(fn)


def _recorded(c: dict[str, Any]) -> str:
    """When a change was recorded: RFC 3339 in UTC to the microsecond, so its text sorts as
    its time does."""
    return str(c["at"])


def _same_as(c: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Whether a change is by ``c``'s author, on ``c``'s resource and attribute."""
    key = (c["author"], c["resource"], c["attribute"])
    return lambda d: (d["author"], d["resource"], d["attribute"]) == key


def _covers(
    consent: dict[str, Any] | None, blocking: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], bool]:
    """Which of the ``blocking`` changes a granted ``consent`` lets its requester past: its
    own change, while that still blocks, and every change of its author on the same
    resource and attribute recorded no later than it (undoing the newest undoes them all)."""
    own = next((c for c in blocking if consent and c["change_id"] == consent["change_id"]), None)
    if own is None:
        return lambda _c: False
    same = _same_as(own)
    return lambda c: same(c) and _recorded(c) <= _recorded(own)
