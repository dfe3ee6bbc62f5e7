"""What the ledger says of a rollback: the rows that account for one in the rollbacks table.

A rollback lives in the objects table (kind ``rollback``), outside the hash chain, and writ
calls its route on a human's approval of it while it is pending. So a rollback reset to
pending by hand, or made there, would be approved and its route called again — with the
requester and reason the table gives, in writ's signed call and its new rows. Its rows say
what it is: the ``rollback.requested`` row written with it (at its ``requested_at``, on its
resource: who asked, for which lease and route, and why) and the rows that decided it after
(:data:`DECIDED`). Today's writ ends the request's, the approval's and the denial's notes with
``; rollback ID`` (:func:`~writ.core.models.named`); an outcome's (executed, failed) begins
``rollback ID approved by``, as it always has. An older writ's request row is matched by who
asked, what and why, and its approval or denial by the requester and lock key it names
(a principal's next request of a lease is taken only once its last is decided).

:func:`rollback_disagrees` is asked both by the approval, in its transaction, before a route
is called, and by ``writ audit verify`` (:mod:`writ.stores.policy_objects`) for every pending
and approved rollback. It reads through any transaction that has ``audit_window`` and ``now``
(:class:`~writ.stores.base.Tx` has both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from writ.core.clock import time_or_zero
from writ.core.models import named_in

__all__ = ["ASKED", "DECIDED", "rollback_disagrees"]

ASKED = "rollback.requested"
#: the rows that decide a rollback after its request
DECIDED = ("rollback.approved", "rollback.denied", "rollback.executed", "rollback.failed")
BY_HAND = "the objects table was changed by hand"
EPS = 2e-6  # a row's time is its rollback's requested_at to the microsecond it shows
Row = dict[str, Any]


class Window(Protocol):
    """The reads asked for (those of :class:`~writ.stores.base.Tx`)."""

    def now(self) -> float: ...

    async def audit_window(
        self, resource: str, events: Sequence[str], since: float, until: float
    ) -> list[Row]: ...


def _asked(rb_id: str, rb: dict[str, Any], name: str, row: Row) -> list[str]:
    """What a ``rollback.requested`` row says against rollback ``rb_id`` (``rb``: its data),
    first first; none when it accounts for it."""
    notes, its = named_in(row.get("notes") or "", "rollback")
    checks: list[tuple[str, Any, Any]] = [] if its is None else [("id", rb_id, its)]
    checks += [
        ("requested_by", rb.get("requested_by"), row.get("agent_id")),
        ("lock_key", rb.get("lock_key"), row.get("lock_key")),
        ("path", rb.get("path"), row.get("rollback_path")),
        ("key_holder", rb.get("key_holder"), row.get("rollback_key_holder")),
        ("requested_at", rb.get("requested_at"), row.get("timestamp")),
    ]
    said = f"{row.get('agent_id')} asks {row.get('rollback_key_holder')} to roll back "
    said += f"{row.get('lock_key')}: "
    if notes.startswith(said):  # as writ words it (a row worded otherwise: its fields only)
        checks.append(("reason", rb.get("reason"), notes[len(said) :]))
    return [
        f"{name}: the {field} ({have!r}) disagrees with its row {row['seq']} "
        f"({row['event']}, {want!r}): {BY_HAND}"
        for field, have, want in checks
        if have != want
    ]


def _decides(rb_id: str, rb: dict[str, Any], row: Row) -> bool:
    """Whether ``row`` (of :data:`DECIDED`, after the request of rollback ``rb_id``) decided
    it: an outcome names it first; today's approval or denial last; an older writ's names
    the requester and lock key."""
    if row.get("lock_key") != rb.get("lock_key"):
        return False
    notes = row.get("notes") or ""
    if row["event"] in ("rollback.executed", "rollback.failed"):
        return notes.startswith(f"rollback {rb_id} ")
    its = named_in(notes, "rollback")[1]
    if its is not None:
        return its == rb_id
    verb = str(row["event"]).removeprefix("rollback.")
    return f" {verb} {rb.get('requested_by')}'s rollback of {rb.get('lock_key')}" in notes


async def _decisions(
    tx: Window, rb_id: str, rb: dict[str, Any], asked: Row, page: int
) -> list[Row]:
    """The rows on the rollback's resource after its request row ``asked`` that decided it,
    read ``page`` rows (the store's probe size) at a time: there are few (its own, and its
    lease's other requests')."""
    res, since, until = (
        str(rb.get("resource")),
        time_or_zero(asked["timestamp"]) - EPS,
        tx.now() + 1e5,
    )
    seen, out = {asked["seq"]}, []
    while True:
        rows = await tx.audit_window(res, DECIDED, since, until)
        fresh = [r for r in rows if r["seq"] not in seen]
        seen.update(r["seq"] for r in fresh)
        out += [r for r in fresh if r["seq"] > asked["seq"] and _decides(rb_id, rb, r)]
        if len(rows) < page:
            return out
        # on from the last row's instant; past it once a page holds nothing new there
        last = time_or_zero(rows[-1]["timestamp"])
        since = last - EPS if fresh else last + EPS


async def rollback_disagrees(
    tx: Window,
    rb_id: str,
    rb: dict[str, Any],
    state: str,
    page: int,
    taken: dict[int, str] | None = None,
) -> str | None:
    """Why the ledger does not account for rollback ``rb_id`` (``rb``: its data) as
    ``state`` (pending or approved: writ may yet call its route), or None. Its
    ``rollback.requested`` row at its ``requested_at`` must say who asked, for which lease
    and route, and why; no later row may have decided it, but for an approved one its
    approval (and no outcome yet). ``page``: the most rows ``audit_window`` answers;
    ``taken``: the rollback each request row (by seq) was taken by so far, which this one's
    joins (verify: one row records one rollback)."""
    name = f"rollback {rb_id} on {rb.get('resource')}"
    if rb.get("rollback_id") != rb_id:  # another's, copied under this id
        return f"{name}: its data is rollback {rb.get('rollback_id')!r}'s: {BY_HAND}"
    at = time_or_zero(rb.get("requested_at"))
    rows = (
        await tx.audit_window(str(rb.get("resource")), (ASKED,), at - EPS, at + EPS) if at else []
    )
    judged = [(_asked(rb_id, rb, name, r), r) for r in rows]
    mine = sorted((r for whys, r in judged if not whys), key=lambda r: r["seq"])
    if not mine:
        if not judged:
            return (
                f"{name}: no {ASKED} row on its resource at its requested_at: it was written "
                "into the objects table by hand, or its resource or time was changed there"
            )
        return min((whys for whys, _ in judged), key=len)[0]
    if taken is not None:
        free = [r for r in mine if r["seq"] not in taken]
        if not free:
            seq = mine[0]["seq"]
            return f"{name}: its row {seq} ({ASKED}) is {taken[seq]}'s: {BY_HAND}"
        taken[free[0]["seq"]] = name
        mine = free
    row = mine[0]
    decided = await _decisions(tx, rb_id, rb, row, page)
    after = [r for r in decided if state != "approved" or r["event"] != "rollback.approved"]
    if after:
        return (
            f"{name}: it is {state}, but its row {after[0]['seq']} ({after[0]['event']}) "
            f"decided it: approval is single-use; {BY_HAND}"
        )
    if state == "approved" and not decided:
        return f"{name}: it is approved, but no rollback.approved row approved it: {BY_HAND}"
    return None
