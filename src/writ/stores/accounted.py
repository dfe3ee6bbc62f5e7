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

from collections.abc import Sequence

from writ.core.ledger import Record
from writ.stores.base import Store
from writ.stores.enrolled import principals_disagree
from writ.stores.held import OpenLeases, counter_below, held_disagrees
from writ.stores.lock_delays import delays_disagree
from writ.stores.open_objects import OpenObjects, objects_gone
from writ.stores.policy_objects import objects_disagree
from writ.stores.queued import OpenWaits, waiters_disagree

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
    rows verified leave open."""
    found = await held_disagrees(store, opened.leases) or await counter_below(store, opened.leases)
    if found is not None:
        return "lease_id", *found
    found = await principals_disagree(store)
    if found is not None:
        return "principal", *found
    found = await waiters_disagree(store, opened.waits)
    if found is not None:
        return "waiter_id", *found
    found = (
        await objects_disagree(store)
        or await delays_disagree(store)
        or await objects_gone(store, opened.objects)
    )
    if found is not None:
        return "policy_object", *found
    return None
