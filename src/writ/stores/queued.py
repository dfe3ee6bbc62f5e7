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
  ``lease.refused`` row by its principal names it (today's writ ends the notes of the row
  that grants, refuses or withdraws a queued request with ``; waiter ID``, begins them as
  :data:`~writ.stores.base.ENDS_AS` says, and writes it as the waiter's principal; a row
  whose notes end in an agent's words, begun otherwise, ends no wait): each takes it out of the
  queue in its own transaction. The row is looked for on its resource from its
  ``enqueued_at`` to a few seconds after its deadline: a copy written back later is past
  its deadline, and dropped, never granted, when the queue reaches it.

A row of an older writ names no waiter: one by the waiter's principal, on its resource, at
its ``enqueued_at``, vouches for its existence alone (its request, deadline and place are
not compared), so an upgraded store with such waiters still verifies.

Each page of waiters is read again with its rows in one snapshot, so a request queued,
granted, refused or withdrawn while verify runs is judged as it stood in that snapshot.

And the converse: a wait the ledger holds open (a ``lease.queued`` row naming its waiter, no
row since ending it) must still be queued in the table. Deleted there by hand, the request
is out of the queue without a row: a lease ended passes it by, granting the request behind
it. Every way writ ends a wait writes a row naming the waiter (a grant, a refusal at the
deadline, a withdrawal by a caller gone or a principal disabled, a stale request dropped),
and :class:`OpenWaits` keeps the open ones as the verified rows go by (only a pass over the
whole chain finds them; verify makes one anyway). Left out: an older writ's rows, which
name no waiter, and a wait past its deadline and :data:`ENDS_WITHIN_S`: its caller was
answered or is gone, so taking the request out takes nobody's place (writ drops it when the
queue reaches it).

A queued request the table holds in a form writ cannot read (a request that is not JSON, a
deadline stored as text: :class:`~writ.stores.rows.Unreadable`) is changed by hand too,
named after any request that can be read and disagrees (:func:`~writ.stores.rows.told`),
and never read as deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339
from writ.core.ledger import Record
from writ.core.models import Waiter, request_digest, waited_as
from writ.stores.base import (
    ENDS_WITHIN_S,
    LONGEST_WAIT_S,
    WAIT_ENDS,
    Store,
    Tx,
    WaiterLife,
    wait_end,
)
from writ.stores.rows import Unreadable, left_out, told

__all__ = ["PAGE", "OpenWaits", "queued_row", "waiter_disagrees", "waiters_disagree"]

PAGE = 200  # waiters a snapshot
_NAMES = re.compile(r"; waiter (\S+), request (sha256:[0-9a-f]{64})\Z")
_SAID = "; waiter "  # in the notes of every row that names a waiter (models.waited_as)
_ENDS = frozenset(WAIT_ENDS)
_UP_TO = re.compile(r"queued at position \d+ for up to ([^s]+)s: ")

OpenWait = tuple[str, int, float, float, str]
"""``(resource, seq, ts, deadline, principal)`` of a wait the ledger holds open: its
``lease.queued`` row's seq and time, the deadline the row gives (its time plus the wait it
says) and its ``agent_id``, which every row that ends the wait names too."""


class OpenWaits:
    """The waits the ledger holds open, by waiter id, as verified rows go by in seq order
    (:meth:`feed`, a chunk at a time). Only a ``lease.queued`` row, or a row that can end a
    wait and says ``; waiter `` in its stored body, is parsed; waits past their deadline and
    :data:`ENDS_WITHIN_S` by the rows' own time are let go, so the set stays the queue's
    size."""

    __slots__ = ("soonest", "waits")

    def __init__(self) -> None:
        self.waits: dict[str, OpenWait] = {}
        self.soonest = float("inf")  # the earliest deadline among them (or earlier)

    def feed(self, chunk: Sequence[Record]) -> None:
        waits, ends, said = self.waits, _ENDS, _SAID
        for rec in chunk:
            event = rec[4]
            if event == "lease.queued":
                if said in rec[1]:  # else an older writ's row: it names no waiter
                    self._queued(rec)
            elif waits and event in ends and said in rec[1]:
                who = _ends(rec[1], rec[5], waits)
                if who is not None:
                    del waits[who]
        if waits and chunk and chunk[-1][3] - ENDS_WITHIN_S > self.soonest:
            self._let_go(chunk[-1][3] - ENDS_WITHIN_S)

    def _queued(self, rec: Record) -> None:
        fields = json.loads(rec[1])
        notes = fields.get("notes")
        m = _NAMES.search(notes) if isinstance(notes, str) else None
        if m is None:
            return
        said = _UP_TO.match(notes)
        try:
            wait_s = min(float(said.group(1)), LONGEST_WAIT_S) if said else LONGEST_WAIT_S
        except ValueError:
            wait_s = LONGEST_WAIT_S
        deadline = rec[3] + wait_s
        self.waits[m.group(1)] = (rec[5], rec[0], rec[3], deadline, str(fields.get("agent_id")))
        self.soonest = min(self.soonest, deadline)

    def _let_go(self, before: float) -> None:
        """Forget the waits whose deadline is before ``before``."""
        self.waits = {k: w for k, w in self.waits.items() if w[3] >= before}
        self.soonest = min((w[3] for w in self.waits.values()), default=float("inf"))


async def waiters_disagree(store: Store, opened: OpenWaits | None = None) -> tuple[str, str] | None:
    """``(waiter_id, why)`` of the first queued request the ledger does not account for,
    or of the first wait of ``opened`` (the open ones of the rows verified) the table no
    longer queues; or None."""

    async def listed(tx: Tx) -> tuple[list[int], tuple[str, str] | None, list[Unreadable]]:
        gone = await _unqueued(tx, opened.waits) if opened and opened.waits else None
        return await tx.waiter_seqs(), gone, list(left_out(tx))

    # gone: told after the queued ones, which say more; unread: after everything read
    seqs, gone, unread = await store.read(listed)
    after = seqs[0] - 1 if seqs else 0  # each page is the seqs above the last one judged
    ahead: tuple[Waiter, dict[str, Any]] | None = None  # the last waiter a row names

    async def judge(page: Sequence[int]) -> tuple[str, str] | None:
        nonlocal after, ahead
        lo, after = after, page[-1]

        async def lives(tx: Tx) -> tuple[list[WaiterLife], list[Unreadable]]:
            return await tx.waiter_lives(lo, page[-1]), left_out(tx)

        read, more = await store.read(lives)
        unread.extend(u for u in more if u.key not in {v.key for v in unread})
        for w, rows, granted, ended in read:
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

    found = await first_in_pages(seqs, PAGE, judge)
    return told(found or gone, unread)


async def _unqueued(tx: Tx, opened: dict[str, OpenWait]) -> tuple[str, str] | None:
    """The first wait of ``opened`` that is not past its deadline (and
    :data:`ENDS_WITHIN_S`), not in the waiters table and not ended by a row since the rows
    verified, all read in ``tx``'s snapshot: ``(waiter_id, why)``."""
    now = tx.now()
    due = {k: w for k, w in opened.items() if w[3] + ENDS_WITHIN_S >= now}
    if not due:
        return None
    for w in await tx.waiters_between(0, 1 << 62):
        due.pop(w.waiter_id, None)
    for bad in left_out(tx):  # queued, in a form writ cannot read: named as such
        due.pop(bad.key, None)
    if not due:
        return None
    windows = [(w[0], w[2] - 1e-6, w[3] + ENDS_WITHIN_S) for w in due.values()]
    for _, body, _, _, resource in await tx.audit_waits_ended(windows, list(due)):
        who = _ends(body, resource, due)
        if who is not None:
            del due[who]  # ended by writ since its rows were verified
    if not due:
        return None
    waiter_id, (resource, seq, _, deadline, _) = min(due.items(), key=lambda kv: kv[1][1])
    return waiter_id, (
        f"waiter {waiter_id} on {resource}: the ledger holds its wait open (row {seq}, "
        f"lease.queued, until {rfc3339(deadline)}; no row granted, refused or withdrew it), "
        "but the waiters table does not queue it: it was deleted there by hand, which takes "
        "the request out of the queue without a row (a lease ended passes it by)"
    )


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


def _ends(body: str, resource: str, waits: dict[str, OpenWait]) -> str | None:
    """The waiter of ``waits`` whose wait the row of stored ``body`` on ``resource`` ends
    (its notes end with ``; waiter ID``, on the wait's resource, by the wait's principal,
    worded as a wait's end (:data:`~writ.stores.base.ENDS_AS`), as every row writ ends a
    wait with is: an agent's words elsewhere end nobody's), or None."""
    end = wait_end(body)
    wait = waits.get(end[0]) if end is not None else None
    if end is None or wait is None or wait[0] != resource or wait[4] != end[1]:
        return None
    return end[0]


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
