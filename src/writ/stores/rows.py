"""Rows to records: the column lists and converters both SQL stores share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..models import Lease, Principal, Waiter

LEASE_COLS = (
    "lease_id, resource, holder, intent, fencing_token, acquired_at, expires_at, ttl_s, "
    "touches, state, rollback, ended_at"
)
PRINCIPAL_COLS = "name, kind, vendor, wake, admin, created_at"
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
        touches=json.loads(r[8]),
        state=r[9],
        rollback=json.loads(r[10]) if r[10] else None,
        ended_at=r[11],
    )


def to_principal(r: Sequence[Any]) -> Principal:
    """A :class:`Principal` from a row of ``PRINCIPAL_COLS``."""
    return Principal(
        name=r[0], kind=r[1], vendor=r[2], wake=r[3], admin=bool(r[4]), created_at=r[5]
    )


def to_waiter(r: Sequence[Any]) -> Waiter:
    """A :class:`Waiter` from a row of ``WAITER_COLS``."""
    return Waiter(
        waiter_id=r[1],
        seq=r[0],
        resource=r[2],
        principal=r[3],
        request=json.loads(r[4]),
        enqueued_at=r[5],
        deadline=r[6],
    )


def to_object(r: Sequence[Any]) -> dict[str, Any]:
    """A policy object's document from a row of ``OBJECT_COLS``, with its ``state`` and
    ``expires_at_ts`` columns merged in."""
    data: dict[str, Any] = json.loads(r[0])
    data["state"] = r[1]
    data["expires_at_ts"] = r[2]
    return data
