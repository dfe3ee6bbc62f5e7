"""The tables of a dump (``Store.export_rows`` / ``import_rows``, as ``writ migrate`` copies a
store), the same for every backend."""

from __future__ import annotations

from writ.core.errors import Invalid

#: The columns of each table in a dump (:meth:`Store.export_rows`), tables in dump order,
#: the same for every backend. Times are float seconds since the epoch; ``touches``,
#: ``rollback``, ``request`` and ``data`` are decoded JSON; audit rows carry their stored
#: ``body`` and ``hash`` unchanged.
TABLES: dict[str, tuple[str, ...]] = {
    "principals": (
        "name",
        "kind",
        "vendor",
        "wake",
        "admin",
        "token_hash",
        "created_at",
        "queues",
        "disabled_at",
        "disabled_reason",
        "token_expires_at",
    ),
    "leases": (
        "lease_id",
        "resource",
        "holder",
        "intent",
        "fencing_token",
        "acquired_at",
        "expires_at",
        "ttl_s",
        "touches",
        "state",
        "rollback",
        "ended_at",
        "request_id",
    ),
    "waiters": ("seq", "waiter_id", "resource", "principal", "request", "enqueued_at", "deadline"),
    "objects": ("kind", "id", "resource", "state", "data", "created_at", "expires_at"),
    "audit": ("seq", "ts", "event", "resource", "lock_key", "body", "hash"),
}


def check_empty(url: str, counts: dict[str, int]) -> None:
    """Refuse to import into a store that already holds records (for backends)."""
    held = {t: n for t, n in counts.items() if n}
    if held:
        raise Invalid(
            f"store {url} is not empty ("
            + ", ".join(f"{n} {t}" for t, n in held.items())
            + "): import into a new, empty store"
        )
