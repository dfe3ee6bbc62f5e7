"""The held leases against the ledger: the part of ``writ audit verify`` that covers the
leases table.

writ serves held leases from the leases table (fence checks, the gate, who holds what),
and the table is outside the hash chain. So verify checks every held lease against the
hashed rows of its life, found by its lock key (:meth:`~writ.stores.base.Tx.held_lives`:
two index probes a lease, however long the ledger is): a ``lease.granted`` row must name
it; the latest of its grant and renewal rows must agree with the table on holder,
resource, fencing token, acquisition time and expiry (a renewal row says until when; a
grant row gives the ttl, so the expiry is the acquisition plus it); the grant must agree on
the intent, touches and rollback plan; and no row may have ended it (released, expired,
revoked). The lookup columns that find these rows are checked against the hashed bodies by
the chain's own check, which runs first.

Each lease is read again with its rows in one snapshot, so a lease granted, renewed or
ended while verify runs is judged as it stood in that snapshot: never called changed by
hand for being changed by writ.

And the converse: a lease the ledger holds open (a ``lease.granted`` row, no row that ended
it) must still be held in the table. Deleted there, or marked ended, by hand, it frees its
resource for the next grant without a human's revoke. Only a pass over the whole chain
finds the ledger's open leases; verify makes one anyway, and :class:`OpenLeases` keeps them
as the verified rows go by (their lookup columns are checked against the hashed bodies
before it sees them).

A held lease the table holds in a form writ cannot read (a cell that is not JSON, a time
stored as text: :class:`~writ.stores.rows.Unreadable`) is changed by hand too, and named so;
it never hides a lease that can be read and disagrees (:func:`~writ.stores.rows.told`), nor
reads as deleted. Two held leases on one resource, or one above the other, conflict under
any blast radius, so writ never holds both (unless a ``lease.overlapped`` row says writ
found them so at a start: :mod:`writ.engine.blast_overlaps`); and a fencing-token counter at
the largest token a store keeps leaves every grant without one. Neither is a state writ
makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339
from writ.core.ledger import Record
from writ.core.models import Lease
from writ.core.resources import ancestors
from writ.stores.base import LEASE_LIFE, Store, Tx
from writ.stores.rows import Unreadable, left_out, told

__all__ = [
    "LAST_TOKEN",
    "PAGE",
    "OpenLeases",
    "counter_below",
    "held_disagrees",
    "lease_disagrees",
]

PAGE = 200  # leases a snapshot: each read holds the store (and SQLite, the loop) briefly
#: The largest fencing token a store keeps (a signed 64-bit integer: SQLite's INTEGER,
#: PostgreSQL's bigint sequence): a counter there leaves the next grant no token.
LAST_TOKEN = 2**63 - 1
_OVERLAPPED = "lease.overlapped"  # writ.engine.blast_overlaps.EVENT
_ENDS = frozenset(LEASE_LIFE[2:])
_RENEWED = "renewed until "


class OpenLeases:
    """The leases the ledger holds open, by lock key (the seq of its grant), as verified
    rows go by in seq order (:meth:`feed`, a chunk at a time); and the largest fencing token
    a grant row names (``top``: token, lock key, seq), which the store's counter must not
    be below (:func:`counter_below`)."""

    __slots__ = ("keys", "top")

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.top: tuple[int, str, int] = (0, "", 0)

    def feed(self, chunk: Sequence[Record]) -> None:
        keys, ends, top = self.keys, _ENDS, self.top[0]
        for rec in chunk:
            key = rec[6]
            if key is not None:
                event = rec[4]
                if event == "lease.granted":
                    keys[key] = rec[0]
                    # a lock key is RESOURCE/TOKEN (Lease.lock_key), checked against the body
                    token = key[key.rfind("/") + 1 :]
                    if token.isdigit() and int(token) > top:
                        top = int(token)
                        self.top = (top, key, rec[0])
                elif event in ends:
                    keys.pop(key, None)


async def counter_below(store: Store, opened: OpenLeases) -> tuple[str, str] | None:
    """``(lease_id, why)`` when the store's fencing-token counter (SQLite: ``meta``;
    PostgreSQL: the ``fencing_token`` sequence) is below the largest token a grant row
    names: lowered by hand, the next grant would reuse a token, and a holder's stale token
    would pass the fence again. None when it is not. Read after the chain (the counter only
    grows), so a grant written meanwhile never makes it look low. And ``("", why)`` when it
    is at :data:`LAST_TOKEN`, which writ's grants (a token each) never bring it near:
    raised by hand, every grant fails (no lease is named)."""
    token, key, seq = opened.top

    async def read(tx: Tx) -> tuple[int, dict[str, Any] | None]:
        counter = await tx.token_counter()
        return counter, (await tx.audit_lease_life(key))[0] if counter < token else None

    counter, grant = await store.read(read)
    if counter >= LAST_TOKEN:
        return "", (
            f"the store's fencing-token counter ({counter}) is at the largest fencing token a "
            f"store keeps ({LAST_TOKEN}), which writ's grants, a token each, never bring it "
            "near: it was raised by hand, and every grant fails for want of a token"
        )
    if counter >= token:
        return None
    notes = (grant or {}).get("notes") or ""
    lease_id = notes.split(" ", 2)[1] if notes.startswith("granted ") else key
    return lease_id, (
        f"the store's fencing-token counter ({counter}) is below fencing token {token}, "
        f"which row {seq} (lease.granted, lease {lease_id} on {key.rpartition('/')[0]}) "
        f"granted: it was lowered by hand, so the next grant would reuse token {counter + 1} "
        "and a stale holder's writes would pass the fence"
    )


async def held_disagrees(store: Store, opened: OpenLeases | None = None) -> tuple[str, str] | None:
    """``(lease_id, why)`` of the first held lease the ledger does not account for, or of
    the first lease of ``opened`` (the open ones of the rows verified) the table no longer
    holds; or None."""

    async def listed(tx: Tx) -> tuple[list[str], tuple[str, str] | None, list[Unreadable]]:
        held = await tx.held_leases()
        unread = list(left_out(tx))  # held, as the read asked for held ones
        later = await _overlapping(tx, held)
        if later is None and opened:
            keys, ids = {h.lock_key for h in held}, {u.key for u in unread}
            later = await _unheld(tx, opened.keys, keys, ids)
        return [h.lease_id for h in held], later, unread

    # later: told after the held ones, which say more; unread: after everything read
    ids, later, unread = await store.read(listed)

    async def judge(page: Sequence[str]) -> tuple[str, str] | None:
        async def check(tx: Tx) -> tuple[tuple[str, str] | None, list[Unreadable]]:
            # read again: one ended since it was listed is left out (its row says so)
            for lease, grant, last in await tx.held_lives(list(page)):
                why = lease_disagrees(lease, grant, last)
                if why is not None:
                    return (lease.lease_id, why), left_out(tx)
            return None, left_out(tx)

        found, more = await store.read(check)
        unread.extend(more)
        return found

    found = await first_in_pages(ids, PAGE, judge)
    return told(found or later, unread)


async def _overlapping(tx: Tx, held: Sequence[Lease]) -> tuple[str, str] | None:
    """``(lease_id, why)`` of the higher token of the first two ``held`` leases on one
    resource, or one above the other, that no ``lease.overlapped`` row about the lower one
    explains; or None. Such leases conflict whatever the ``[blast_radius]`` groups, so writ
    never grants one while the other is held (one ending first); writ records the leases it
    found overlapping at a start (:mod:`writ.engine.blast_overlaps`), which groups alone make."""
    on: dict[str, list[Lease]] = {}
    for lease in held:
        on.setdefault(lease.resource, []).append(lease)
    pairs = set()
    for lease in held:
        for at in (lease.resource, *ancestors(lease.resource)):
            for other in on.get(at, ()):
                if other is not lease:
                    low, high = sorted((other, lease), key=lambda l: l.fencing_token)
                    pairs.add((high.fencing_token, low.fencing_token, high.lease_id, low.lease_id))
    by_id = {l.lease_id: l for l in held}
    for _, _, high_id, low_id in sorted(pairs):
        high, low = by_id[high_id], by_id[low_id]
        rows = await tx.audit_for_lock_key(low.lock_key)
        if any(r["event"] == _OVERLAPPED for r in rows):
            continue
        where = (
            f"both on {high.resource}"
            if high.resource == low.resource
            else f"{high.resource} and {low.resource}, one above the other"
        )
        return high.lease_id, (
            f"held lease {high.lease_id} (fencing token {high.fencing_token}) and held lease "
            f"{low.lease_id} (fencing token {low.fencing_token}) conflict whatever the blast "
            f"radius ({where}), and writ never grants a lease while a conflicting one is held "
            f"(no {_OVERLAPPED} row records them): the leases table, or the ledger after its "
            "last signed checkpoint, was changed by hand"
        )
    return None


async def _unheld(
    tx: Tx, opened: dict[str, int], held: set[str], unread: set[str]
) -> tuple[str, str] | None:
    """The first lease of ``opened`` that is neither held in the table nor ended by a row
    since the rows verified (read in ``tx``'s snapshot, with ``held``): ``(lease_id, why)``.
    One the table holds in a form writ cannot read (``unread``: their ids) is not gone."""
    for key, seq in sorted(opened.items(), key=lambda kv: kv[1]):
        if key in held:
            continue
        grant, last = await tx.audit_lease_life(key)
        if last is not None and last["event"] in _ENDS:
            continue  # ended by writ since its rows were verified
        notes = (grant or {}).get("notes") or ""
        lease_id = notes.split(" ", 2)[1] if notes.startswith("granted ") else key
        if lease_id in unread:
            continue  # named as unreadable
        resource, _, token = key.rpartition("/")
        return lease_id, (
            f"lease {lease_id} on {resource}: the ledger holds it open (row {seq}, "
            f"lease.granted, fencing token {token}; no row released, expired or revoked it), "
            "but the leases table does not hold it: it was deleted there, or marked ended, by "
            "hand, which frees its resource without a revoke"
        )
    return None


def lease_disagrees(
    lease: Lease, grant: dict[str, Any] | None, last: dict[str, Any] | None
) -> str | None:
    """Why the ledger's rows do not account for held ``lease``, or None: ``grant`` is the
    first ``lease.granted`` row naming its lock key, ``last`` the last row of its life."""
    name = f"held lease {lease.lease_id} on {lease.resource}"
    if grant is None or grant["event"] != "lease.granted":
        return (
            f"{name}: no lease.granted row names its lock key {lease.lock_key!r}: the lease "
            "was written into the leases table by hand, or its resource or fencing_token "
            "was changed there"
        )
    if last is None or last["seq"] == grant["seq"]:
        last = grant
    if last["event"] in _ENDS:
        return (
            f"{name}: row {last['seq']} ({last['event']}) ended it, but the leases table "
            "still holds it: the table was changed by hand"
        )
    if last["event"] not in ("lease.granted", "lease.renewed"):
        return f"{name}: row {last['seq']} of its life cannot be read back"
    for field, have, want, row in (
        *_grant_fields(lease, grant, renewed=last is not grant),
        ("holder", lease.holder, last["lock_holder"], last),
        ("resource", lease.resource, last["resource"], last),
        ("fencing_token", lease.fencing_token, last["fencing_token"], last),
        ("acquired_at", rfc3339(lease.acquired_at), last["lock_acquired_at"], last),
        ("expires_at", rfc3339(lease.expires_at), _expiry(lease, last), last),
    ):
        if have != want:
            return (
                f"{name}: the {field} column ({have!r}) disagrees with its row {row['seq']} "
                f"({row['event']}, {want!r}): the leases table was changed by hand"
            )
    return None


def _grant_fields(
    lease: Lease, grant: dict[str, Any], renewed: bool
) -> list[tuple[str, Any, Any, Any]]:
    """``(field, table's, row's, row)`` for what only the grant row records: the lease's id,
    intent, ttl and touches (its notes, as the engine writes them) and its rollback plan."""
    notes = grant.get("notes") or ""
    said = f"granted {lease.lease_id} for "
    out: list[tuple[str, Any, Any, Any]] = [
        ("lease_id", lease.lease_id, lease.lease_id if notes.startswith(said) else notes, grant)
    ]
    said += f"{lease.intent!r}, ttl "
    out.append(("intent", lease.intent, lease.intent if notes.startswith(said) else notes, grant))
    ttl, _, touches = notes[len(said) :].partition("s, touches ")
    if not renewed:  # a renewal may set another ttl, which its row does not carry
        out.append(("ttl_s", f"{lease.ttl_s:g}", ttl, grant))
    joined = ",".join(lease.touches)
    if touches == joined or touches.startswith((joined + "; warning: ", joined + "; waiter ")):
        touches = joined  # then the plan's warnings, and the waiter a queued one was granted to
    out.append(("touches", joined, touches, grant))
    rb = lease.rollback or {}
    out += [
        ("rollback.allowed", bool(rb.get("allowed")), grant["rollback_allowed"], grant),
        ("rollback.path", rb.get("path"), grant["rollback_path"], grant),
        ("rollback.key_holder", rb.get("key_holder"), grant["rollback_key_holder"], grant),
        ("rollback.denominator", rb.get("denominator"), grant["rollback_denominator"], grant),
    ]
    if rb.get("override_queue"):  # else the policy's default queue, named in the row
        out.append(
            ("rollback.override_queue", rb["override_queue"], grant["human_override_queue"], grant)
        )
    return out


def _expiry(lease: Lease, last: dict[str, Any]) -> str | None:
    """The expiry the row ``last`` gives ``lease``, as shown: a renewal's own words, a
    grant's acquisition plus its ttl (checked against the row's above)."""
    if last["event"] == "lease.renewed":
        notes = last.get("notes") or ""
        return notes[len(_RENEWED) :] if notes.startswith(_RENEWED) else notes
    return rfc3339(lease.acquired_at + lease.ttl_s)
