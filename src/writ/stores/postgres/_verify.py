"""The PostgreSQL transaction's reads for verify's checks of the held leases
(:mod:`writ.stores.held`) and of the principals (:mod:`writ.stores.enrolled`): always the
tables, never the live replica."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from writ.core.ledger import row_from
from writ.core.models import Lease, Principal
from writ.stores.base import LEASE_LIFE, PRINCIPAL_LIFE
from writ.stores.rows import LEASE_COLS, PRINCIPAL_COLS, to_lease, to_principal

_L_COLS = ", ".join(f"l.{c.strip()}" for c in LEASE_COLS.split(","))
_N = len(LEASE_COLS.split(","))
# the first grant and the last row of the life of each lease asked for, still held: two
# index probes a lease (audit_by_lock_key), all in one statement. The lock key is built in
# the default collation, the index's: in leases.resource's "C" the index was not used (each
# probe read every row with a lock key)
_KEY = "lock_key = (l.resource || '/' || l.fencing_token) COLLATE \"default\""
_LIVES = (
    f"SELECT {_L_COLS}, g.seq, g.body, g.hash, z.seq, z.body, z.hash FROM leases l"
    " LEFT JOIN LATERAL (SELECT seq, body, hash FROM audit"
    f"   WHERE {_KEY} AND event = 'lease.granted'"
    "   ORDER BY seq LIMIT 1) g ON true"
    " LEFT JOIN LATERAL (SELECT seq, body, hash FROM audit"
    f"   WHERE {_KEY} AND event = ANY(%s)"
    "   ORDER BY seq DESC LIMIT 1) z ON true"
    " WHERE l.lease_id = ANY(%s) AND l.state = 'held'"
)

# each principal asked for with the latest row of each group of PRINCIPAL_LIFE: an index
# probe a group (audit_by_resource), all in one statement; the resource built in the
# index's collation ("C", audit.resource's; principals.name is in the default)
_P_COLS = ", ".join(f"p.{c.strip()}" for c in PRINCIPAL_COLS.split(","))
_P_N = len(PRINCIPAL_COLS.split(","))
_P_LIVES = (
    f"SELECT {_P_COLS}"
    + "".join(f", r{i}.seq, r{i}.body, r{i}.hash" for i in range(len(PRINCIPAL_LIFE)))
    + " FROM principals p"
    + "".join(
        " LEFT JOIN LATERAL (SELECT seq, body, hash FROM audit"
        "   WHERE resource = ('principals/' || p.name) COLLATE \"C\" AND event = ANY(%s)"
        f"   ORDER BY ts DESC, seq DESC LIMIT 1) r{i} ON true"
        for i in range(len(PRINCIPAL_LIFE))
    )
    + " WHERE p.name = ANY(%s) ORDER BY p.name"
)

Life = tuple[Lease, "dict[str, Any] | None", "dict[str, Any] | None"]


class VerifyReads:
    """Mixed into :class:`~writ.stores.postgres._tx.PgTx`, which sends the statements."""

    async def _all(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError  # PgTx's

    async def held_leases(self) -> list[Lease]:
        rows = await self._all(f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held'")
        return [to_lease(r) for r in rows]

    async def audit_lease_life(
        self, lock_key: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        rows = await self._all(  # one round trip, an index probe each
            "(SELECT 0, seq, body, hash FROM audit WHERE lock_key = %s"
            "  AND event = 'lease.granted' ORDER BY seq LIMIT 1)"
            " UNION ALL (SELECT 1, seq, body, hash FROM audit WHERE lock_key = %s"
            "  AND event = ANY(%s) ORDER BY seq DESC LIMIT 1)",
            (lock_key, lock_key, list(LEASE_LIFE)),
        )
        found = {k: row_from(b, h, s) for k, s, b, h in rows}
        return found.get(0), found.get(1)

    async def held_lives(self, lease_ids: Sequence[str]) -> list[Life]:
        rows = await self._all(_LIVES, (list(LEASE_LIFE), list(lease_ids)))
        rows.sort(key=lambda r: r[4])  # by fencing token, as the default answers
        return [
            (
                to_lease(r[:_N]),
                None if r[_N] is None else row_from(r[_N + 1], r[_N + 2], r[_N]),
                None if r[_N + 3] is None else row_from(r[_N + 4], r[_N + 5], r[_N + 3]),
            )
            for r in rows
        ]

    async def principal_lives(
        self, names: Sequence[str]
    ) -> list[tuple[Principal, list[dict[str, Any] | None]]]:
        rows = await self._all(_P_LIVES, (*(list(g) for g in PRINCIPAL_LIFE), list(names)))
        return [
            (
                to_principal(r[:_P_N]),
                [
                    None if r[k] is None else row_from(r[k + 1], r[k + 2], r[k])
                    for k in range(_P_N, _P_N + 3 * len(PRINCIPAL_LIFE), 3)
                ],
            )
            for r in rows
        ]
