"""Fencing: is this token the current one? — for resources and for ``writ gate``.

A fencing token is the proof a writer shows a resource: the resource accepts a write only
with the token of the lease that holds it right now (and never one lower than it has seen),
so a holder that was paused past its ttl cannot write into its successor's term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from writ.core import resources
from writ.core.errors import Invalid, Unauthenticated
from writ.core.models import Lease, Principal
from writ.core.validate import check_text
from writ.engine.hooks import lock_row
from writ.stores.base import Tx

if TYPE_CHECKING:
    from writ.engine.kernel import Engine


class Fencing:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def fence(self, resource: str, token: Any, me: Principal | None = None) -> dict[str, Any]:
        """Is ``token`` the fencing token of the lease holding ``resource`` right now? For
        ``me`` in closed mode, a holder on a resource ``me`` may not observe (a member of
        the blast radius) is not named: ``holder`` null, ``hidden`` true."""
        resources.validate(resource)
        try:
            tok = int(token)
        except (TypeError, ValueError):
            raise Invalid("token must be an integer fencing token", field="token") from None

        async def fn(tx: Tx) -> dict[str, Any]:
            # the same holder who and the gate name: a lease on the resource, an ancestor,
            # or another member of a group it is in (BlastRadius.covering)
            lease = await self.engine.holder(tx, resource)
            current = lease.fencing_token if lease else None
            out = {
                "resource": resource,
                "current": current == tok and await self._may_write(tx, lease, resource),
                "current_token": current,
                "holder": lease.holder if lease else None,
            }
            if lease and me and not self.engine.authority.observable(me, lease.resource):
                out.update(holder=None, hidden=True)
            return out

        return await self.engine.store.read(fn, single=True)  # the check before each write

    def _not_holding(self, lease: Lease, resource: str) -> str:
        """Why ``lease`` does not hold ``resource``: it does not cover it, or it does by the
        blast-radius groups and a higher token was granted over it since (the groups changed
        under it: :mod:`writ.engine.blast_overlaps`)."""
        if lease.resource in self.engine.blast.covering(resource):
            return (
                f"lease {lease.lease_id} on {lease.resource} no longer holds {resource}: a "
                "higher fencing token was granted over it"
            )
        return f"lease {lease.lease_id} on {lease.resource} does not cover {resource}"

    async def _may_write(self, tx: Tx, lease: Lease | None, resource: str) -> bool:
        """Whether ``lease``'s holder may write ``resource`` itself: always in open mode; in
        closed mode only with a grant for it. A lease on another member of the blast radius
        keeps everyone else off ``resource``, but writes there only with write authority."""
        auth = self.engine.authority
        if lease is None or not auth.settings.closed or resources.under(resource, lease.resource):
            return True  # its own resource or below: the grant it was leased under covers it
        holder = await tx.get_principal(lease.holder)
        return holder is not None and auth.decide(holder, resource).write

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
        """Decide one mutating request at a gate, and record the decision as a row.

        It passes only when the caller's lease ``lease_id`` is held right now on
        ``resource`` (or an ancestor, or a member of a group it is in) by the caller, with
        exactly ``fencing_token``, and that token is not lower than the highest this store
        has passed for the resource, and — when the gate's route names an ``attribute`` —
        the lease's ``touches`` include it (or ``*``). The decision and its row (``gate.passed`` or
        ``gate.refused``) commit together.
        """
        resources.validate(resource)
        # a row about a resource is added only by a principal who may read about it: in
        # closed mode, a gate's principal needs observe on what it guards (403, no row)
        self.engine.authority.check_observe(gate, resource)
        for field, value in (
            ("caller_token", caller_token),
            ("lease_id", lease_id),
            ("fencing_token", fencing_token),
            ("method", method),
            ("path", path),
            ("attribute", attribute),
        ):
            check_text(value, field)
        method = str(method)[:64].upper()
        path = str(path)[:512]
        attribute = str(attribute)[:128] if attribute else None
        try:
            caller = await self.engine.authenticate(caller_token)
        except Unauthenticated:
            # a refusal that names no one writes no row (anyone could fill the ledger with
            # them) and tells nothing of who holds the resource
            return {
                "passed": False,
                "code": "unauthenticated",
                "reason": "no valid writ token in Authorization",
                "holder": None,
                "caller": "unknown",
                "fencing_token": None,
            }
        try:
            token = int(fencing_token) if fencing_token not in (None, "") else None
        except (TypeError, ValueError):
            token = None

        async def fn(tx: Tx) -> dict[str, Any]:
            now = tx.now()
            current = await self.engine.holder(tx, resource)
            mark = await tx.get_object("gatemark", resource)
            highest = int(mark["token"]) if mark else 0
            lease = await tx.get_lease(lease_id) if isinstance(lease_id, str) and lease_id else None
            code, why = "held", ""
            if lease is None or token is None:
                why = "no Writ-Lease / Writ-Fencing-Token of a lease on this resource"
            elif lease.holder != caller.name:
                why = f"lease {lease.lease_id} belongs to {lease.holder}, not {caller.name}"
                if self.engine.authority.settings.closed:
                    # the answer and its row go to observers of the gated resource, who
                    # may not observe the lease's: its holder is not named
                    why = f"lease {lease.lease_id} is not {caller.name}'s"
            elif lease.state != "held" or lease.expires_at <= now:
                code = "lease_lost"
                why = f"lease {lease.lease_id} is {'expired' if lease.state == 'held' else lease.state}"
            elif current is None or current.lease_id != lease.lease_id:
                why = self._not_holding(lease, resource)
            elif not await self._may_write(tx, lease, resource):
                code, why = "forbidden", self.engine.authority.decide(caller, resource).message
            elif token != lease.fencing_token:
                code, why = (
                    "lease_lost",
                    f"fencing token {token} is not the lease's ({lease.fencing_token})",
                )
            elif token < highest:
                code, why = (
                    "lease_lost",
                    f"fencing token {token} is lower than {highest}, already passed",
                )
            elif attribute and "*" not in lease.touches and attribute not in lease.touches:
                code, why = (
                    "forbidden",
                    f"lease {lease.lease_id} touches only {', '.join(lease.touches)}, not "
                    f"{attribute}: acquire a lease whose touches name {attribute}",
                )
            else:
                code = "passed"
            who = caller.name
            await tx.append(
                lock_row(
                    "gate.passed" if code == "passed" else "gate.refused",
                    who,
                    resource,
                    current,
                    f"{method} {path} via {gate.name}: "
                    + (f"passed with token {token}" if code == "passed" else f"refused: {why}"),
                )
            )
            if code == "passed" and token is not None and token > highest:
                await tx.put_object("gatemark", resource, resource, "active", {"token": token})
            return {
                "passed": code == "passed",
                "code": None if code == "passed" else code,
                "reason": why or None,
                "holder": await self._holder(tx, caller, resource, current),
                "caller": who,
                "fencing_token": token if code == "passed" else None,
            }

        return await self.engine.store.transact(fn)

    async def _holder(
        self, tx: Tx, caller: Principal, resource: str, current: Lease | None
    ) -> dict[str, Any] | None:
        """The ``holder`` of a gate answer. In closed mode only for a caller who may observe
        ``resource`` (one who may not learns nothing of who holds it; an unknown caller is
        answered before, with no holder),
        with writ's wake route for an agent (see :meth:`Authority.holder_view`)."""
        if current is None:
            return None
        auth = self.engine.authority
        info = await self.engine.holder_info(tx, current)
        if not auth.settings.closed:
            return info
        if not auth.observable(caller, current.resource):
            return None
        return await auth.holder_view(tx, caller.name, info, current)
