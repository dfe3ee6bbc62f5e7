"""History: the ledger read back — who held what when, rows, live events, verification."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

from . import resources
from .clock import rfc3339
from .ledger import GENESIS, Verification, verify
from .models import Lease
from .stores.base import Tx
from .validate import number

if TYPE_CHECKING:
    from .engine import Engine

MAX_WAIT_S = 300


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]:
        """Who held write authority on ``resource`` at ``at`` (default now), from the ledger.

        A lease on the resource, on an ancestor of it, or on a member of its blast-radius
        group counts; such leases exclude each other, so at most one answers.
        """
        resources.validate(resource)
        covering = sorted({a for p in self.engine.blast.expand(resource)
                           for a in (p, *resources.ancestors(p))})

        async def fn(tx: Tx) -> dict[str, Any]:
            t = tx.now() if at is None else at
            # a time from the wire names a whole microsecond (as rows are shown): include
            # the rows stamped within it, e.g. a grant asked about at its own acquired_at
            grant = await tx.audit_latest(covering, ["lease.granted"], t if at is None else t + 5e-7)
            if grant is not None:
                # held over [grant, end): a release, revoke or expiry row stamped at t means
                # free at t. Leases on one resource never overlap, so the last such row on
                # the grant's resource after the grant is this lease's end (one index probe).
                end = await tx.audit_latest([grant["resource"]], _END_EVENTS,
                                            t if at is None else t + 5e-7)
                lease = await _granted_lease(tx, grant)
                # an expiry is exact at the lease's last expires_at, even when the sweeper
                # wrote its row later; a held lease renewed after t had not lapsed at t
                lapsed = lease is not None and lease.state in ("held", "expired") \
                    and lease.expires_at <= t
                if (end is None or end["seq"] < grant["seq"]) and not lapsed:
                    return {"resource": resource, "at": rfc3339(t),
                            "lock_holder": grant["lock_holder"], "lock_key": grant["lock_key"],
                            "lease": lease.to_dict() if lease else None}
            return {"resource": resource, "at": rfc3339(t), "lock_holder": "none",
                    "lock_key": None, "lease": None}

        return await self.engine.store.read(fn)

    async def audit(
        self, after_seq: int = 0, limit: int = 1000, prefix: str | None = None,
        since: float | None = None, until: float | None = None,
    ) -> dict[str, Any]:
        if prefix:
            resources.validate(prefix, "resource")
        limit = int(number(limit, "limit", 1, 100_000))
        after = int(number(after_seq, "after_seq", 0, 2**62))
        rows = await self.engine.store.read(lambda tx: tx.audit_rows(after, limit, prefix, since, until))
        return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after}

    async def events(
        self, prefix: str | None = None, after_seq: int = 0, wait_s: Any = 0, limit: int = 1000
    ) -> dict[str, Any]:
        """Rows under ``prefix`` after ``after_seq``; long-polls up to ``wait_s`` for one."""
        wait = number(wait_s, "wait_s", 0, MAX_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        after = int(number(after_seq, "after_seq", 0, 2**62))
        while True:
            changed = self.engine._audit_changed
            out = await self.audit(after, limit, prefix)
            if out["rows"]:
                return out
            # nothing under the prefix yet: skip ahead to the head we have seen
            after = max(after, min(self.engine._audit_seq, out["next_after_seq"] or after))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {"rows": [], "next_after_seq": max(after, int(number(after_seq, "after_seq", 0, 2**62)))}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def verify(self) -> Verification:
        """Recompute the whole hash chain, batch by batch (constant memory)."""
        seq, head, total = 1, GENESIS, 0
        async for chunk in self.engine.store.audit_stream():
            part = verify(chunk, seq, head)
            total += part.rows
            if not part.ok:
                return Verification(False, total, part.head, part.first_bad_seq, part.reason)
            seq, head = seq + part.rows, part.head
        return Verification(True, total, head, None)


_END_EVENTS = ("lease.released", "lease.expired", "lease.revoked")
_GRANTED_ID = re.compile(r"granted (\S+) for ")


async def _granted_lease(tx: Tx, grant: dict[str, Any]) -> Lease | None:
    """The lease a ``lease.granted`` row records (its id is in the row's notes)."""
    m = _GRANTED_ID.match(grant.get("notes") or "")
    lease = await tx.get_lease(m.group(1)) if m else None
    if lease is None:  # a ledger imported without its leases, or notes in another form
        found = await tx.list_leases(grant["resource"], None, 100)
        lease = next((l for l in found if l.fencing_token == grant["fencing_token"]), None)
    return lease if lease is not None and lease.fencing_token == grant["fencing_token"] else None
