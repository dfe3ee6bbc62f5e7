"""The PostgreSQL transaction's reads for verify's checks of the held leases
(:mod:`writ.stores.held`), of the principals (:mod:`writ.stores.enrolled`), of the wait
queue (:mod:`writ.stores.queued`) and of the policy objects
(:mod:`writ.stores.policy_objects`): always the tables, never the live replica."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from writ.core.ledger import row_from
from writ.core.models import Lease, Principal, Waiter
from writ.stores.base import (
    LEASE_LIFE,
    OBJECT_COLUMNS,
    PRINCIPAL_LIFE,
    PROBE_ROWS,
    WAIT_ENDS,
    Probe,
    Tx,
    WaiterLife,
)
from writ.stores.rows import (
    LEASE_COLS,
    PRINCIPAL_COLS,
    WAITER_COLS,
    object_row,
    read_one,
    readable,
    to_lease,
    to_principal,
    to_waiter,
)

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

# each queued request of a range of seq with the lease.queued rows on its resource at its
# enqueued_at (an index probe, audit_by_resource: both resource columns are in "C") and the
# lease granted to it (leases_by_request), all in one statement: a result row per row found;
# then the rows that end waits, a window a resource (Tx.with_ends), in a second
_W_COLS = ", ".join(f"w.{c.strip()}" for c in WAITER_COLS.split(","))
_W_N = len(WAITER_COLS.split(","))
_ENDED = (
    "SELECT a.seq, a.body, a.hash, a.ts, a.resource"
    " FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS win(resource, since, until)"
    " JOIN LATERAL (SELECT seq, body, hash, ts, resource FROM audit"
    '   WHERE resource = win.resource COLLATE "C" AND ts >= win.since AND ts <= win.until'
    "   AND event = ANY(%s) AND strpos(body, '; waiter ') > 0) a ON true"
    # only the rows naming a waiter asked about leave the server: what follows the last
    # "; waiter " of the notes (in a canonical body, "prev_hash" follows them)
    ' WHERE reverse(split_part(reverse(split_part(a.body, \'","prev_hash":"\', 1)),'
    " ' retiaw ;', 1)) = ANY(%s) ORDER BY a.seq"
)
_W_LIVES = (
    f"SELECT {_W_COLS}, g.lease_id, q.seq, q.body, q.hash FROM waiters w"
    " LEFT JOIN LATERAL (SELECT lease_id FROM leases WHERE request_id = w.waiter_id"
    "   LIMIT 1) g ON true"
    " LEFT JOIN LATERAL (SELECT seq, body, hash FROM audit WHERE resource = w.resource"
    "   AND ts >= w.enqueued_at - 1e-6 AND ts <= w.enqueued_at + 1e-6"
    "   AND event = 'lease.queued' ORDER BY seq LIMIT 64) q ON true"
    " WHERE w.seq > %s AND w.seq <= %s ORDER BY w.seq, q.seq"
)

# the rows of each probe (Tx.audit_probes): an index range each (audit_by_resource), all
# in one statement; the events of a probe joined by a newline
_PROBES = (
    "SELECT p.i, x.seq, x.body, x.hash"
    " FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[])"
    "   WITH ORDINALITY AS p(res, evs, lo, hi, i)"
    " CROSS JOIN LATERAL (SELECT seq, body, hash, ts FROM audit"
    '   WHERE resource = p.res COLLATE "C" AND ts >= p.lo AND ts <= p.hi'
    "   AND event = ANY(string_to_array(p.evs, E'\\n'))"
    f"   ORDER BY ts, seq LIMIT {PROBE_ROWS}) x"
    " WHERE p.hi > 0 ORDER BY p.i, x.ts, x.seq"
)
_WINDOW = (
    "SELECT seq, body, hash FROM audit WHERE resource = %s AND ts >= %s AND ts <= %s"
    f" AND event = ANY(%s) ORDER BY ts, seq LIMIT {PROBE_ROWS}"
)
_O_COLS = ", ".join(OBJECT_COLUMNS)
# the objects of each (kind, resource, since, until) asked for: an index range each
# (objects_by_resource), all in one statement
_MADE = (
    "SELECT p.i, o.id FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[])"
    "   WITH ORDINALITY AS p(kind, res, lo, hi, i)"
    ' JOIN objects o ON o.kind = p.kind AND o.resource = p.res COLLATE "C"'
    "   AND o.created_at >= p.lo AND o.created_at <= p.hi"
    " ORDER BY p.i, o.created_at, o.id"
)

Life = tuple[Lease, "dict[str, Any] | None", "dict[str, Any] | None"]


class VerifyReads:
    """Mixed into :class:`~writ.stores.postgres._tx.PgTx`, which sends the statements."""

    async def _all(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError  # PgTx's

    async def held_leases(self) -> list[Lease]:
        rows = await self._all(f"SELECT {LEASE_COLS} FROM leases WHERE state = 'held'")
        return readable(self, rows, to_lease)

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
                lease,
                None if r[_N] is None else row_from(r[_N + 1], r[_N + 2], r[_N]),
                None if r[_N + 3] is None else row_from(r[_N + 4], r[_N + 5], r[_N + 3]),
            )
            for r in rows
            if (lease := read_one(self, to_lease, r[:_N])) is not None
        ]

    async def principal_lives(
        self, names: Sequence[str]
    ) -> list[tuple[Principal, list[dict[str, Any] | None]]]:
        rows = await self._all(_P_LIVES, (*(list(g) for g in PRINCIPAL_LIFE), list(names)))
        return [
            (
                p,
                [
                    None if r[k] is None else row_from(r[k + 1], r[k + 2], r[k])
                    for k in range(_P_N, _P_N + 3 * len(PRINCIPAL_LIFE), 3)
                ],
            )
            for r in rows
            if (p := read_one(self, to_principal, r[:_P_N])) is not None
        ]

    async def object_keys(self, kind: str, states: Sequence[str] | None = None) -> list[str]:
        sql, args = "SELECT id FROM objects WHERE kind = %s", [kind]  # type: str, list[Any]
        if states:
            sql, args = sql + " AND state = ANY(%s)", [kind, list(states)]
        return [r[0] for r in await self._all(sql + " ORDER BY id", args)]

    async def objects_by_key(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        rows = await self._all(
            f"SELECT {_O_COLS} FROM objects WHERE kind = %s AND id = ANY(%s)",
            (kind, list(ids)),
        )
        return sorted((object_row(r) for r in rows), key=lambda o: str(o["id"]))

    async def objects_made(
        self, probes: Sequence[tuple[str, str, float, float]]
    ) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in probes]
        if probes:
            cols = ([p[i] for p in probes] for i in range(4))
            for i, obj_id in await self._all(_MADE, tuple(cols)):
                out[i - 1].append(obj_id)
        return out

    async def audit_window(
        self, resource: str, events: Sequence[str], since: float, until: float
    ) -> list[dict[str, Any]]:
        rows = await self._all(_WINDOW, (resource, since, until, list(events)))
        return [row_from(b, h, s) for s, b, h in rows]

    async def audit_probes(self, probes: Sequence[Probe]) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = [[] for _ in probes]
        if not probes:
            return out
        rows = await self._all(
            _PROBES,
            (
                [p[0] for p in probes],
                ["\n".join(p[1]) for p in probes],
                [float(p[2]) for p in probes],
                [float(p[3]) for p in probes],
            ),
        )
        for i, seq, body, hash_ in rows:
            out[i - 1].append(row_from(body, hash_, seq))
        return out

    async def waiter_seqs(self) -> list[int]:
        return [r[0] for r in await self._all("SELECT seq FROM waiters ORDER BY seq")]

    async def waiters_between(self, after: int, last: int) -> list[Waiter]:
        rows = await self._all(
            f"SELECT {WAITER_COLS} FROM waiters WHERE seq > %s AND seq <= %s ORDER BY seq",
            (after, last),
        )
        return readable(self, rows, to_waiter)

    async def audit_waits_ended(
        self, windows: Sequence[tuple[str, float, float]], waiter_ids: Sequence[str]
    ) -> list[tuple[int, str, str, float, str]]:
        res, since, until = (list(col) for col in zip(*windows, strict=True))
        args = (res, since, until, list(WAIT_ENDS), list(waiter_ids))
        rows = await self._all(_ENDED, args)
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def audit_at(self, resource: str, event: str, at: float) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT seq, body, hash FROM audit WHERE resource = %s AND ts >= %s AND ts <= %s"
            " AND event = %s ORDER BY seq",
            (resource, at - 1e-6, at + 1e-6, event),
        )
        return [row_from(b, h, s) for s, b, h in rows]

    async def waiter_lives(self, after: int, last: int) -> list[WaiterLife]:
        lives: list[tuple[Waiter, list[dict[str, Any]], str | None]] = []
        seq = None  # of the waiter of the result rows read last
        for r in await self._all(_W_LIVES, (after, last)):
            if r[0] != seq:  # a waiter's first result row (a row per lease.queued row found)
                seq, w = r[0], read_one(self, to_waiter, r[:_W_N])
                if w is not None:
                    lives.append((w, [], r[_W_N]))
            if lives and lives[-1][0].seq == r[0] and r[_W_N + 1] is not None:
                lives[-1][1].append(row_from(r[_W_N + 2], r[_W_N + 3], r[_W_N + 1]))
        return await Tx.with_ends(cast(Tx, self), lives)
