"""The wait queue against the ledger: the part of ``writ audit verify`` that covers the
waiters table.

writ serves its FIFO queue from the waiters table (the next grant goes to the first request
no lease or earlier request blocks), and the table is outside the hash chain. So verify
checks every queued request against the hashed ``lease.queued`` row the engine wrote in the
transaction that queued it, found by its resource and the microsecond of its
``enqueued_at`` (:meth:`~writ.stores.base.Tx.waiter_lives`: one index probe a waiter):

- a row names it: today's writ ends the row's notes with ``; waiter ID, request
  sha256:HEX`` (:func:`writ.core.models.queued_as`); the row's ``agent_id`` is its
  principal, the digest is its request's (intent, ttl, wait, touches, consent, rollback
  plan), and its deadline is its ``enqueued_at`` plus the request's ``wait_s``;
- the queue's order is the ledger's: requests in ``seq`` order were queued by rows in seq
  order (the store draws a waiter's seq in the transaction that appends its row, under the
  same lock), so a request moved ahead of another (or behind it) is found;
- nothing ended its wait: no lease was granted to it (the leases table names the request a
  queued lease was granted to), and no ``lease.granted``, ``lease.denied`` or
  ``lease.refused`` row names it (today's writ ends the notes of the row that grants,
  refuses or withdraws a queued request with ``; waiter ID``): each takes it out of the
  queue in its own transaction. The row is looked for on its resource from its
  ``enqueued_at`` to a few seconds after its deadline: a copy written back later is past
  its deadline, and dropped, never granted, when the queue reaches it.

A row of an older writ names no waiter: one by the waiter's principal, on its resource, at
its ``enqueued_at``, vouches for its existence alone (its request, deadline and place are
not compared), so an upgraded store with such waiters still verifies.

Each page of waiters is read again with its rows in one snapshot, so a request queued,
granted, refused or withdrawn while verify runs is judged as it stood in that snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339
from writ.core.models import Waiter, request_digest, waited_as
from writ.stores.base import Store, Tx, WaiterLife

__all__ = ["PAGE", "queued_row", "waiter_disagrees", "waiters_disagree"]

PAGE = 200  # waiters a snapshot
_NAMES = re.compile(r"; waiter (\S+), request (sha256:[0-9a-f]{64})\Z")


async def waiters_disagree(store: Store) -> tuple[str, str] | None:
    """``(waiter_id, why)`` of the first queued request the ledger does not account for,
    or None."""
    seqs = await store.read(lambda tx: tx.waiter_seqs())
    after = seqs[0] - 1 if seqs else 0  # each page is the seqs above the last one judged
    ahead: tuple[Waiter, dict[str, Any]] | None = None  # the last waiter a row names

    async def judge(page: Sequence[int]) -> tuple[str, str] | None:
        nonlocal after, ahead
        lo, after = after, page[-1]

        async def lives(tx: Tx) -> list[WaiterLife]:
            return await tx.waiter_lives(lo, page[-1])

        for w, rows, granted, ended in await store.read(lives):
            why = waiter_disagrees(w, rows, granted, ended)
            if why is not None:
                return w.waiter_id, why
            row = queued_row(w, rows)
            if row is None or _named(row) is None:
                continue  # an older writ's row: its place is not compared
            if ahead is not None and ahead[1]["seq"] > row["seq"]:
                return ahead[0].waiter_id, _out_of_order(ahead, (w, row))
            ahead = w, row
        return None

    return await first_in_pages(seqs, PAGE, judge)


def queued_row(w: Waiter, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the ``lease.queued`` rows on ``w``'s resource at its ``enqueued_at``: the one that
    names it, else one of an older writ (naming no waiter) by its principal, else None."""
    older = None
    for row in rows:
        named = _named(row)
        if named is not None and named[0] == w.waiter_id:
            return row
        if named is None and older is None and row.get("agent_id") == w.principal:
            older = row
    return older


def waiter_disagrees(
    w: Waiter,
    rows: Sequence[dict[str, Any]],
    granted: str | None,
    ended: dict[str, Any] | None = None,
) -> str | None:
    """Why the ledger does not account for queued request ``w``, or None: ``rows`` are the
    ``lease.queued`` rows on its resource at its ``enqueued_at``, ``granted`` the id of a
    lease granted to it, ``ended`` a row naming it that ended its wait (None: none)."""
    name = f"waiter {w.waiter_id} on {w.resource}"
    row = queued_row(w, rows)
    if row is None:
        return (
            f"{name}: no lease.queued row on {w.resource} at its enqueued_at "
            f"({rfc3339(w.enqueued_at)}) names it: the request was written into the waiters "
            "table by hand, or its resource or enqueued_at was changed there"
        )
    if granted is not None:
        return (
            f"{name}: lease {granted} was granted to it, yet the waiters table still queues "
            "it (a grant takes it out of the queue): the table was changed by hand"
        )
    if ended is not None and (ended.get("notes") or "").endswith(waited_as(w.waiter_id)):
        return (
            f"{name}: row {ended['seq']} ({ended['event']}) ended its wait at "
            f"{ended.get('timestamp')}, yet the waiters table still queues it: the table was "
            "changed by hand"
        )
    named = _named(row)
    if named is None:
        return None  # an older writ's row: it vouches for the request's existence alone
    if request_digest(w.request) != named[1]:
        return (
            f"{name}: the request column ({_shown(w)}) does not hash to the {named[1][:19]}… "
            f"its row {row['seq']} (lease.queued) names: its intent, ttl, wait, touches, "
            "consent or rollback plan was changed by hand in the waiters table"
        )
    wait_s = w.request.get("wait_s") if isinstance(w.request, dict) else None
    until = w.enqueued_at + wait_s if isinstance(wait_s, (int, float)) else None
    for field, have, want in (
        ("principal", w.principal, row.get("agent_id")),
        ("deadline", rfc3339(w.deadline), rfc3339(until) if until is not None else None),
    ):
        if have != want:
            return (
                f"{name}: the {field} column ({have!r}) disagrees with its row {row['seq']} "
                f"(lease.queued, {want!r}): the waiters table was changed by hand"
            )
    return None


def _named(row: dict[str, Any]) -> tuple[str, str] | None:
    """``(waiter_id, request digest)`` a ``lease.queued`` row of today's writ names, or None
    (an older writ's, or notes worded otherwise)."""
    m = _NAMES.search(row.get("notes") or "")
    return (m.group(1), m.group(2)) if m else None


def _shown(w: Waiter) -> str:
    r = w.request if isinstance(w.request, dict) else {}
    touches = r.get("touches")
    touches = ",".join(map(str, touches)) if isinstance(touches, list) else touches
    return f"intent {r.get('intent')!r}, ttl {r.get('ttl_s')}s, touches {touches}, …"


def _out_of_order(first: tuple[Waiter, dict[str, Any]], then: tuple[Waiter, dict[str, Any]]) -> str:
    (a, ra), (b, rb) = first, then
    return (
        f"waiter {a.waiter_id} on {a.resource}: the seq column puts it ahead of waiter "
        f"{b.waiter_id} on {b.resource} (seq {a.seq} before {b.seq}), but its lease.queued "
        f"row {ra['seq']} comes after {b.waiter_id}'s row {rb['seq']}: the queue's order was "
        "changed by hand in the waiters table"
    )
