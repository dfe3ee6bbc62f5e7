"""Rows to records: the column lists and converters both SQL stores share, for their
queries and for dumps (:meth:`~writ.stores.base.Store.export_rows`).

JSON columns are read with :func:`writ.core.validate.loads`: a value that is not text (a lone
surrogate, stored before writ refused them or written by hand) reads back with U+FFFD in
its place, so no read and no grant ever fails on it."""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from writ.core.models import Lease, Principal, Waiter
from writ.core.validate import loads
from writ.stores.tables import TABLES

LEASE_COLS = (
    "lease_id, resource, holder, intent, fencing_token, acquired_at, expires_at, ttl_s, "
    "touches, state, rollback, ended_at"
)
PRINCIPAL_COLS = (
    "name, kind, vendor, wake, admin, created_at, queues, disabled_at, disabled_reason, "
    "token_expires_at"
)
WAITER_COLS = "seq, waiter_id, resource, principal, request, enqueued_at, deadline"
OBJECT_COLS = "data, state, expires_at"


def to_lease(r: Sequence[Any]) -> Lease:
    """A :class:`Lease` from a row of ``LEASE_COLS``."""
    return Lease(
        lease_id=r[0],
        resource=r[1],
        holder=r[2],
        intent=r[3],
        fencing_token=r[4],
        acquired_at=r[5],
        expires_at=r[6],
        ttl_s=r[7],
        touches=loads(r[8]),
        state=r[9],
        rollback=loads(r[10]) if r[10] else None,
        ended_at=r[11],
    )


def to_principal(r: Sequence[Any]) -> Principal:
    """A :class:`Principal` from a row of ``PRINCIPAL_COLS``."""
    return Principal(
        name=r[0],
        kind=r[1],
        vendor=r[2],
        wake=r[3],
        admin=bool(r[4]),
        created_at=r[5],
        queues=json.loads(r[6]) if r[6] else [],
        disabled_at=r[7],
        disabled_reason=r[8],
        token_expires_at=r[9],
    )


def to_waiter(r: Sequence[Any]) -> Waiter:
    """A :class:`Waiter` from a row of ``WAITER_COLS``."""
    return Waiter(
        waiter_id=r[1],
        seq=r[0],
        resource=r[2],
        principal=r[3],
        request=loads(r[4]),
        enqueued_at=r[5],
        deadline=r[6],
    )


def to_object(r: Sequence[Any]) -> dict[str, Any]:
    """A policy object's document from a row of ``OBJECT_COLS``, with its ``state`` and
    ``expires_at_ts`` columns merged in."""
    data: dict[str, Any] = loads(r[0])
    data["state"] = r[1]
    data["expires_at_ts"] = r[2]
    return data


def object_row(r: Sequence[Any]) -> dict[str, Any]:
    """A policy object as the objects table holds it, from a row of
    :data:`~writ.stores.base.OBJECT_COLUMNS` (``data`` decoded): what verify reads."""
    try:
        data = loads(r[4])
    except (ValueError, RecursionError):  # written by hand: verify says it cannot be read
        data = None
    return {
        "kind": r[0],
        "id": r[1],
        "resource": r[2],
        "state": r[3],
        "data": data,
        "created_at": r[5],
        "expires_at": r[6],
    }


# ---- what a store asks for the standing policy objects (objects_related_many) ----
Spec = tuple[tuple[str, tuple[str, ...]], ...]


class Wanted(NamedTuple):
    """What ``objects_related_many`` asks about one spec (a ``(kind, states)`` per kind),
    worked out once per spec (see :func:`wanted_objects`)."""

    kinds: tuple[str, ...]
    states: tuple[str, ...]  # every state any of the kinds is wanted in, sorted
    states_of: Mapping[str, frozenset[str]]  # kind -> its own states (read-only: shared)
    pairs: tuple[tuple[str, str], ...]  # every (kind, state) asked about


def spec_of(specs: Sequence[tuple[str, Sequence[str]]]) -> Spec:
    """``specs`` as a hashable spec: itself when it already is one (the engine's constant,
    so nothing is rebuilt per call), else rebuilt of tuples."""
    try:
        hash(specs)
    except TypeError:  # a list, or lists inside
        return tuple((k, tuple(sts)) for k, sts in specs)
    return specs  # type: ignore[return-value]  # hashable: tuples all the way down


@functools.lru_cache(maxsize=256)
def _wanted(spec: Spec) -> Wanted:
    return Wanted(
        kinds=tuple(k for k, _ in spec),
        states=tuple(sorted({st for _, sts in spec for st in sts})),
        states_of=types.MappingProxyType({k: frozenset(sts) for k, sts in spec}),
        pairs=tuple((k, st) for k, sts in spec for st in sorted(set(sts))),
    )


def wanted_objects(specs: Sequence[tuple[str, Sequence[str]]]) -> Wanted:
    """:class:`Wanted` of ``specs``, worked out once per spec."""
    return _wanted(spec_of(specs))


# ---- records to rows (the values of an INSERT; its placeholders are each store's own) ----
def lease_values(lease: Lease, request_id: str | None) -> tuple[Any, ...]:
    """A lease's column values, in the order of ``LEASE_COLS, request_id``."""
    return (
        lease.lease_id,
        lease.resource,
        lease.holder,
        lease.intent,
        lease.fencing_token,
        lease.acquired_at,
        lease.expires_at,
        lease.ttl_s,
        json.dumps(lease.touches),
        lease.state,
        json.dumps(lease.rollback) if lease.rollback else None,
        lease.ended_at,
        request_id,
    )


PRINCIPAL_INSERT_COLS = ", ".join(TABLES["principals"])


def principal_values(principal: Principal, token_hash: str) -> tuple[Any, ...]:
    """A principal's column values, in the order of ``PRINCIPAL_INSERT_COLS`` (the dump
    columns: ``name, kind, vendor, wake, admin, token_hash, created_at, queues,
    disabled_at, disabled_reason, token_expires_at``)."""
    return (
        principal.name,
        principal.kind,
        principal.vendor,
        principal.wake,
        bool(principal.admin),
        token_hash,
        principal.created_at,
        json.dumps(principal.queues),
        principal.disabled_at,
        principal.disabled_reason,
        principal.token_expires_at,
    )


def waiter_values(waiter: Waiter) -> tuple[Any, ...]:
    """A queued request's column values but ``seq`` (the store assigns it): ``waiter_id,
    resource, principal, request, enqueued_at, deadline``."""
    return (
        waiter.waiter_id,
        waiter.resource,
        waiter.principal,
        json.dumps(waiter.request),
        waiter.enqueued_at,
        waiter.deadline,
    )


# ---- dumps ------------------------------------------------------------------------------
#: The dump columns (:data:`~writ.stores.base.TABLES`) both stores keep as JSON text.
JSON_COLS = frozenset(
    {
        ("leases", "touches"),
        ("leases", "rollback"),
        ("waiters", "request"),
        ("objects", "data"),
        ("principals", "queues"),
    }
)


def export_sql(table: str) -> str:
    """The SELECT that dumps ``table``: its :data:`TABLES` columns, in primary-key order."""
    cols = TABLES[table]
    key = "kind, id" if table == "objects" else cols[0]
    return f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}"


def kept(head: Sequence[Any] | None) -> dict[str, Any]:
    """A dump's meta field for the head its store keeps beside the chain (a row of
    ``SELECT seq, hash FROM audit_head``): ``{"audit_head": [seq, hash]}``, or nothing for
    an empty ledger. A copy checks that the chain it carries reaches it."""
    return {"audit_head": [int(head[0]), str(head[1])]} if head and head[0] else {}


def export_row(table: str, r: Sequence[Any]) -> dict[str, Any]:
    """A stored row of :func:`export_sql` as a dump row: JSON decoded, ``admin`` a bool."""
    out: dict[str, Any] = {}
    for col, v in zip(TABLES[table], r, strict=True):
        if (table, col) in JSON_COLS and v is not None:
            v = loads(v)
        elif col == "admin":
            v = bool(v)
        out[col] = v
    return out


def import_row(table: str, r: dict[str, Any]) -> list[Any]:
    """A dump row as the values of ``table``'s :data:`TABLES` columns, ready to store."""
    cols = TABLES[table]
    if table == "audit":  # the bulk of any dump: plain values
        return [r.get(c) for c in cols]
    out: list[Any] = []
    for col in cols:
        v = r.get(col)
        if (table, col) == ("principals", "queues") and v is None:
            v = []  # a dump from before queue membership (v1.1)
        if (table, col) in JSON_COLS and v is not None:
            v = json.dumps(v)
        elif col == "admin":
            v = bool(v)
        out.append(v)
    return out
