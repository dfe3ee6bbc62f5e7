"""The tables writ serves from, against the ledger: every check ``writ audit verify`` makes
once the chain itself verified, in the order it makes them — the held leases, the leases
the rows leave open and the fencing-token counter (:mod:`writ.stores.held`), the principals (:mod:`writ.stores.enrolled`),
the wait queue (:mod:`writ.stores.queued`), the policy objects
(:mod:`writ.stores.policy_objects`), the lock delays (:mod:`writ.stores.lock_delays`) and the
objects the rows say stand (:mod:`writ.stores.open_objects`). Both verifies
(:func:`writ.stores.migrate.verify_store`, :func:`writ.evidence.checkpoint.verify_store`) ask
it, and name what it finds in the field of their answer that :data:`~writ.core.ledger.NAMED`
lists for its kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from writ.core.ledger import Record
from writ.stores.base import Store
from writ.stores.enrolled import principals_disagree
from writ.stores.held import OpenLeases, counter_below, held_disagrees
from writ.stores.lock_delays import delays_disagree
from writ.stores.open_objects import OpenObjects, objects_gone
from writ.stores.policy_objects import objects_disagree
from writ.stores.queued import OpenWaits, waiters_disagree
from writ.stores.rows import UnreadOnly

__all__ = ["Opened", "tables_disagree"]


class Opened:
    """What the rows verified leave open, collected as they go by in seq order (one
    :meth:`feed` a verified chunk, lookup columns already checked against the hashed
    bodies): the leases (:class:`~writ.stores.held.OpenLeases`), the waits
    (:class:`~writ.stores.queued.OpenWaits`) and the policy objects
    (:class:`~writ.stores.open_objects.OpenObjects`). Each is checked against its table
    once the chain verified: open in the ledger, gone from the table, is an authority freed
    (or a place in the queue taken) by hand."""

    __slots__ = ("leases", "objects", "waits")

    def __init__(self) -> None:
        self.leases = OpenLeases()
        self.waits = OpenWaits()
        self.objects = OpenObjects()

    def feed(self, chunk: Sequence[Record]) -> None:
        self.leases.feed(chunk)
        self.waits.feed(chunk)
        self.objects.feed(chunk)


async def tables_disagree(store: Store, opened: Opened) -> tuple[str, str, str] | None:
    """``(field, name, why)`` of the first thing in the tables the ledger does not account
    for (``field`` one of :data:`~writ.core.ledger.NAMED`), or None. ``opened``: what the
    rows verified leave open. A check that finds only a row it could not read
    (:class:`~writ.stores.rows.UnreadOnly`) lets the ones after it run: what they find is
    named first, that row after it; a decoy in the leases table hid an admin written into
    the principals table by hand."""
    checks: list[tuple[str, Callable[[], Awaitable[tuple[str, str] | None]]]] = [
        ("lease_id", lambda: held_disagrees(store, opened.leases)),
        ("lease_id", lambda: counter_below(store, opened.leases)),
        ("principal", lambda: principals_disagree(store)),
        ("waiter_id", lambda: waiters_disagree(store, opened.waits)),
        ("policy_object", lambda: objects_disagree(store)),
        ("policy_object", lambda: delays_disagree(store)),
        ("policy_object", lambda: objects_gone(store, opened.objects)),
    ]
    unread: tuple[str, str, str] | None = None
    for field, check in checks:
        found = await check()
        if found is None:
            continue
        if not isinstance(found, UnreadOnly):
            return field, found[0], found[1] + (f"; and {unread[2]}" if unread else "")
        if unread is None:
            unread = (field, found[0], found[1])
    return unread
