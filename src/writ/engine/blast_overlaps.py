"""Covering leases that overlap, and the one rule that names the holder of a resource.

Who holds write authority over a resource: the lease of the latest grant — the highest
fencing token — on a resource covering it (:meth:`BlastRadius.covering`), while that lease
is held; once it has ended, nobody, even when a lease of a lower token covering it is still
held. So the token current on a resource only goes up: no answer names a token lower than
one a covering lease was granted with, which the resource itself would refuse (as fencing
asks, and ``writ gate`` does). The fence and the gate (``Engine.holder``, from the leases
table) and ``who`` (from the ledger) both follow it: :func:`holder` and :func:`latest_grant`.

Covering leases exclude each other, so normally at most one is held and it is the latest
grant. They overlap only when the ``[blast_radius]`` groups changed under them: groups
change with a restart (a reload keeps them), and a lease held across it may find another
held lease in its blast radius that it did not conflict with when both were granted. writ
still starts — refusing would leave an incident without its coordinator — and takes no one's
lease: at start it logs an ERROR naming each such pair and writes a ``lease.overlapped``
row about the lower token's lease. Grants do not make it worse: every held lease in a blast
radius keeps every grant in it waiting, so a third holder never comes. The lower token's
lease keeps its place (its holder renews and releases it) but writes nothing where the
higher one covers, then or after it ends — and where a higher grant that ended before the
restart covers (a WARNING at start); an operator settles an overlap at once by revoking one.

Only a lease held at start, and in a group, can be overtaken so: a grant under the groups
in force waits for every lease covering what it covers. Those leases are remembered at
start (:attr:`ReadOps.overlapped`), and only for them does :func:`holder` read the ledger.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from writ.core.ledger import UNREADABLE
from writ.core.models import Lease
from writ.core.resources import related_clauses
from writ.engine.hooks import SYSTEM, lock_row
from writ.stores.base import Tx

if TYPE_CHECKING:
    from writ.core.resources import BlastRadius
    from writ.engine.kernel import Engine

EVENT = "lease.overlapped"

log = logging.getLogger("writ.engine")


async def latest_grant(tx: Tx, covering: Collection[str], at: float) -> dict[str, Any] | None:
    """The last ``lease.granted`` row at or before ``at`` on one of ``covering``: the
    highest fencing token granted over what they cover (one index probe a resource)."""
    return await tx.audit_latest(sorted(covering), ["lease.granted"], at)


async def holder(
    tx: Tx,
    held: Sequence[Lease],
    covering: Collection[str],
    now: float,
    overlapped: Collection[str],
) -> Lease | None:
    """Of ``held`` (leases in state held), the one holding write authority over what
    ``covering`` covers at ``now``: the unexpired covering lease of the highest token,
    unless a higher one was granted over it since (a lease of ``overlapped`` only)."""
    live = [l for l in held if l.expires_at > now and l.resource in covering]
    if not live:
        return None
    best = max(live, key=lambda l: l.fencing_token)
    if best.lease_id not in overlapped:
        return best
    grant = await latest_grant(tx, covering, now)
    if grant is None or grant["event"] == UNREADABLE:  # who names no one then: not known
        return best
    return best if int(grant.get("fencing_token") or 0) <= best.fencing_token else None


async def at_start(engine: Engine) -> None:
    """Find the held leases the groups in force make overlap: log each pair, record each
    overtaken lease in a row (once), and remember every held lease in a group."""
    blast = engine.blast
    members = sorted({m for _names, group in blast.groups for m in group})
    engine.overlapped = frozenset()
    if not members:
        return

    async def look(tx: Tx) -> tuple[list[Lease], list[tuple[Lease, dict[str, Any]]]]:
        found = await tx.held_related(members)
        now = tx.now()  # after the first statement: it begins the read (Store.read)
        held = [l for l in found if l.expires_at > now]
        late = []  # overtaken on their own resource by a grant that has ended since
        keys = {l.lock_key for l in held}
        for lease in held:
            grant = await latest_grant(tx, blast.covering(lease.resource), now)
            if grant is not None and grant["event"] != UNREADABLE:
                token = int(grant.get("fencing_token") or 0)
                if token > lease.fencing_token and grant.get("lock_key") not in keys:
                    late.append((lease, grant))
        return held, late

    held, late = await engine.store.read(look)
    engine.overlapped = frozenset(l.lease_id for l in held)
    for lease, grant in late:
        log.warning(
            "blast radius: %s writes nothing on %s while held: token %s was granted on %s, "
            "which the [blast_radius] groups now in force make cover it",
            _named(lease),
            lease.resource,
            grant.get("fencing_token"),
            grant.get("resource"),
        )
    pairs = _pairs(blast, held)
    for low, highs in _overtaken(pairs):  # a line for each overtaken lease, not each pair
        log.error(
            "blast radius: %s and %d other held lease(s), the highest %s, are held, and the "
            "[blast_radius] groups now in force make them conflict (they were granted under "
            "other groups): the higher token holds write authority where both cover; new "
            "grants in their blast radius wait for both to end; revoke one to settle it now",
            _named(low),
            len(highs),
            _named(max(highs, key=lambda l: l.fencing_token)),
        )
    if pairs:
        await engine.store.transact(lambda tx: _record(blast, tx, members))


async def _record(blast: BlastRadius, tx: Tx, members: Sequence[str]) -> None:
    """A ``lease.overlapped`` row about each held lease overtaken by a higher token, unless
    the last such row about its resource says it already: another server, or a restart
    before this one, wrote it."""
    held = await tx.held_related(members)
    now = tx.now()
    pairs = _pairs(blast, [l for l in held if l.expires_at > now])
    for low, highs in _overtaken(pairs):
        top = max(highs, key=lambda l: l.fencing_token)
        said = f"lease {top.lease_id} (token {top.fencing_token})"
        last = await tx.audit_latest([low.resource], [EVENT], now)
        if last and last.get("lock_key") == low.lock_key and said in (last.get("notes") or ""):
            continue
        notes = (
            f"lease {low.lease_id} (token {low.fencing_token}) and {len(highs)} held "
            f"lease(s) the [blast_radius] groups now in force make conflict with it, the "
            f"highest {said}, were granted under other groups: where both cover, the higher "
            "token holds write authority and this lease writes nothing; grants in their blast "
            "radius wait for both"
        )
        await tx.append(lock_row(EVENT, SYSTEM, low.resource, low, notes))


def _pairs(blast: BlastRadius, held: Sequence[Lease]) -> list[tuple[Lease, Lease]]:
    """Each pair of ``held`` the groups make conflict, the lower token first. Each lease
    looks up only the leases on what its blast radius relates to (the paths and their
    ancestors by name, their descendants by a range of the sorted names), as a store would:
    a start with thousands of held leases in groups does not compare every pair."""
    by_resource: dict[str, list[Lease]] = {}
    for lease in held:
        by_resource.setdefault(lease.resource, []).append(lease)
    names = sorted(by_resource)
    pairs: set[tuple[str, str]] = set()
    out: list[tuple[Lease, Lease]] = []
    for a in held:
        exact, ranges = related_clauses(blast.expand(a.resource))
        hits = [r for r in exact if r in by_resource]
        for lo, hi in ranges:
            hits += names[bisect.bisect_left(names, lo) : bisect.bisect_left(names, hi)]
        for b in (b for r in hits for b in by_resource[r]):
            low, high = sorted((a, b), key=lambda l: l.fencing_token)
            if b is not a and (low.lease_id, high.lease_id) not in pairs:
                pairs.add((low.lease_id, high.lease_id))
                out.append((low, high))
    return sorted(out, key=lambda p: (p[0].fencing_token, p[1].fencing_token))


def _overtaken(pairs: Sequence[tuple[Lease, Lease]]) -> list[tuple[Lease, list[Lease]]]:
    """Each lower token's lease of ``pairs``, with the leases above it."""
    over: dict[str, tuple[Lease, list[Lease]]] = {}
    for low, high in pairs:
        over.setdefault(low.lease_id, (low, []))[1].append(high)
    return list(over.values())


def _named(l: Lease) -> str:
    return f"lease {l.lease_id} of {l.holder} on {l.resource} (token {l.fencing_token})"
