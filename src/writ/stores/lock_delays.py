"""The lock delays against the ledger: the part of ``writ audit verify`` that covers the
``delay`` objects of the objects table.

After a lease expires or is revoked (not on a release, nor a revoke that waives it), writ
holds its resource back for the policy's ``lock_delay_s``: a ``delay`` object on the lease's
resource until then, which every grant there waits behind. It is written in the transaction
of the row that ended the lease (``lease.expired``, ``lease.revoked``), on its resource and
at its instant, and that row's notes end with when it ends: ``; lock delay until T``
(:func:`~writ.core.models.lock_delayed`). A delay shortened, marked done or deleted by hand
frees the resource those seconds sooner. So verify checks every delay in the table against
its row, found by its resource and time as :mod:`writ.stores.policy_objects` finds an
object's rows (an index range a delay, never a parse of the ledger):

* the row must exist (a delay inserted by hand, or moved to another resource or time, has
  none) and name the delay's ``holder`` (its ``lock_holder``); a row that says the delay
  was waived accounts for none;
* where the row says until when (today's writ), the delay's ``until`` and its ``expires_at``
  column (what holds grants back) must be that ``T``; and it may be marked ``done`` only
  once ``T`` has passed (writ ends it at the first sweep after, never before).

Each row accounts for one delay (writ writes one a lease). A row without the suffix (an
older writ's) vouches for the delay's existence and holder alone. Each page is read again
with its rows in one snapshot, so a delay writ ends while verify runs is judged as it stood
then. The converse, a delay the rows say still stands deleted from the table, is found by the
walk (:class:`~writ.stores.open_objects.OpenObjects`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339
from writ.core.models import LOCK_DELAYED
from writ.stores.base import Probe, Store, Tx
from writ.stores.policy_objects import BY_HAND, EPS, PAGE, differ, ended, one_of

__all__ = ["EVENTS", "delay_disagrees", "delay_probes", "delay_until", "delays_disagree"]

#: The rows that end a lease with a lock delay.
EVENTS = ("lease.expired", "lease.revoked")
_WAIVED = " (lock-delay waived)"


def delay_until(notes: Any) -> str | None:
    """The end of the lock delay a row's notes give (``…; lock delay until T``), as the row
    words it; None when they give none (no delay, or an older writ's row)."""
    if not isinstance(notes, str):
        return None
    _, sep, until = notes.rpartition(LOCK_DELAYED)
    return until if sep else None


def delay_probes(o: dict[str, Any]) -> list[Probe]:
    """The rows delay ``o`` is checked against (:meth:`Tx.audit_probes`): the ending rows on
    its resource at its ``created_at``."""
    made = o["created_at"] if isinstance(o["created_at"], (int, float)) else 0.0
    return [(o["resource"], EVENTS, made - EPS, made + EPS if made > 0 else 0.0)]


def delay_disagrees(
    o: dict[str, Any], rows: list[list[dict[str, Any]]], now: float, taken: dict[int, str]
) -> str | None:
    """Why the rows of :func:`delay_probes` do not account for delay ``o`` at ``now``, or
    None; ``taken``: the delay each row was taken by so far (by seq), which ``o``'s joins."""
    d, name, state = o["data"], f"delay {o['id']} on {o['resource']}", o["state"]
    if not isinstance(d, dict):
        return f"delay {o['id']}: its data cannot be read: {BY_HAND}"
    if state not in ("active", "done"):
        return f"{name}: its state ({state!r}) is none writ gives a delay: {BY_HAND}"

    def judge(row: dict[str, Any]) -> list[str]:
        notes = row.get("notes") or ""
        if notes.endswith(_WAIVED):
            return [f"{name}: its row {row['seq']} ({row['event']}) waived it: {BY_HAND}"]
        checks: list[tuple[str, Any, Any, dict[str, Any]]] = [
            ("holder", d.get("holder"), row["lock_holder"], row),
            ("resource", d.get("resource"), row["resource"], row),
        ]
        until = delay_until(notes)
        if until is not None:  # today's writ: the row says until when
            checks += [
                ("until", d.get("until"), until, row),
                ("expires_at column", rfc3339(o["expires_at"]), until, row),
            ]
        whys = differ(name, checks)
        if until is not None and state == "done":
            whys += ended(name, state, until, row, now)
        return whys

    what = "lease.expired or lease.revoked row on its resource at its created_at"
    return one_of(name, rows[0], what, judge, taken, o["created_at"])


async def delays_disagree(store: Store) -> tuple[str, str] | None:
    """``("delay ID", why)`` of the first lock delay in the objects table the ledger does not
    account for, or None."""

    async def listed(tx: Tx) -> list[str]:
        return await tx.object_keys("delay")

    taken: dict[int, str] = {}  # the delay each row accounts for, across pages

    async def judge(page: Sequence[str]) -> tuple[str, str] | None:
        async def check(tx: Tx) -> tuple[str, str] | None:
            objs = await tx.objects_by_key("delay", list(page))  # as they stand now
            now = tx.now()
            found = await tx.audit_probes([p for o in objs for p in delay_probes(o)])
            for o, rows in zip(objs, found, strict=True):
                why = delay_disagrees(o, [rows], now, taken)
                if why is not None:
                    return f"delay {o['id']}", why
            return None

        return await store.read(check)

    return await first_in_pages(await store.read(listed), PAGE, judge)
