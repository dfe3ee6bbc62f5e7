"""Rows to records: the column lists and converters both SQL stores share, for their
queries and for dumps (:meth:`~writ.stores.base.Store.export_rows`).

JSON columns are read with :func:`writ.core.validate.loads`: a value that is not text (a lone
surrogate, stored before writ refused them or written by hand) reads back with U+FFFD in
its place, so no read and no grant ever fails on it.

A cell writ cannot read at all — not JSON, JSON of another shape, or a column stored as
another type than writ stores it in (text in a time column, a time of infinity):
written by hand — makes its row :class:`Unreadable`. The converters raise it, so a read that
decides something (a grant, a fence check, a token) fails rather than guess; the reads that
list rows (the principals, the leases, the held leases and the queue verify reads) leave the
row out with an ERROR line (:func:`readable`) and keep it for verify, which names it
(:func:`left_out`, :func:`told`)."""

from __future__ import annotations

import functools
import json
import logging
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from writ.core.ledger import stored_name
from writ.core.models import Lease, Principal, Waiter
from writ.core.validate import loads
from writ.stores.tables import TABLES

log = logging.getLogger("writ.audit")  # a table changed by hand: as verify names it
T = TypeVar("T")

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


class Unreadable(ValueError):
    """A row of a table writ serves from, holding a cell writ cannot read back (written by
    hand): ``table``, the row's ``key`` (its lease id, name or waiter id) and the
    ``column``. Its message is what verify says of the row."""

    def __init__(self, table: str, key: Any, column: str, value: Any, what: str) -> None:
        self.table, self.column = table, column
        self.key = key if isinstance(key, str) else repr(key)
        shown = repr(value)
        shown = shown if len(shown) <= 120 else shown[:119] + "…"
        super().__init__(
            f"{_NOUNS[table]} {self.key}: its {column} column ({shown}) cannot be read "
            f"({what}): the {table} table was changed by hand"
        )


_NOUNS = {"leases": "lease", "principals": "principal", "waiters": "waiter"}
Kinds = frozenset[type]
_NONE: type = type(None)
_TEXT: Kinds = frozenset({str})
_MAYBE_TEXT: Kinds = frozenset({str, _NONE})
_WHOLE: Kinds = frozenset({int})
_FLAG: Kinds = frozenset({bool, int})
# a time (or a ttl): a number, and a finite one (no clock reads infinity or NaN, and no
# time shows them)
_TIME: Kinds = frozenset({int, float})
_MAYBE_TIME: Kinds = frozenset({int, float, _NONE})
_WANT = {_TEXT: "text", _MAYBE_TEXT: "text", _WHOLE: "an integer", _FLAG: "0 or 1"}
_WANT |= {_TIME: "a number", _MAYBE_TIME: "a number"}


class _Shape:
    """A table's columns as a converter reads them: the types writ stores in each, and
    which hold times and flags (worked out once: a check is about a microsecond a row)."""

    __slots__ = ("cols", "flags", "kinds", "table", "times")

    def __init__(self, table: str, cols: Sequence[tuple[str, Kinds]]) -> None:
        self.table, self.cols = table, tuple(cols)
        self.kinds = tuple(k for _, k in cols)
        self.times = tuple(i for i, (_, k) in enumerate(cols) if k in (_TIME, _MAYBE_TIME))
        self.flags = tuple(i for i, (_, k) in enumerate(cols) if k is _FLAG)

    def check(self, key: Any, r: Sequence[Any]) -> None:
        """Raise :class:`Unreadable` at the first cell of ``r`` not as writ stores it."""
        if all(map(frozenset.__contains__, self.kinds, map(type, r))):
            for i in self.times:
                v = r[i]
                if v is not None and v - v != 0:  # infinity or NaN
                    break
            else:
                if all(r[i] in (0, 1) for i in self.flags):
                    return
        for (column, ok), cell in zip(self.cols, r, strict=True):
            why = _wrong(ok, cell)
            if why is not None:
                raise Unreadable(self.table, key, column, cell, why)


def _wrong(ok: Kinds, v: Any) -> str | None:
    """Why ``v`` is not what writ stores in a column of the types ``ok``, or None."""
    if type(v) not in ok:
        return f"stored as {stored_name(v)}, not {_WANT[ok]}"
    if ok in (_TIME, _MAYBE_TIME) and v is not None and v - v != 0:
        return "not a finite number"
    if ok is _FLAG and v not in (0, 1):
        return "not 0 or 1"
    return None


_LEASE = _Shape(
    "leases",
    (
        ("lease_id", _TEXT),
        ("resource", _TEXT),
        ("holder", _TEXT),
        ("intent", _TEXT),
        ("fencing_token", _WHOLE),
        ("acquired_at", _TIME),
        ("expires_at", _TIME),
        ("ttl_s", _TIME),
        ("touches", _TEXT),
        ("state", _TEXT),
        ("rollback", _MAYBE_TEXT),
        ("ended_at", _MAYBE_TIME),
    ),
)
_PRINCIPAL = _Shape(
    "principals",
    (
        ("name", _TEXT),
        ("kind", _TEXT),
        ("vendor", _MAYBE_TEXT),
        ("wake", _MAYBE_TEXT),
        ("admin", _FLAG),
        ("created_at", _TIME),
        ("queues", _MAYBE_TEXT),
        ("disabled_at", _MAYBE_TIME),
        ("disabled_reason", _MAYBE_TEXT),
        ("token_expires_at", _MAYBE_TIME),
    ),
)
_WAITER = _Shape(
    "waiters",
    (
        ("seq", _WHOLE),
        ("waiter_id", _TEXT),
        ("resource", _TEXT),
        ("principal", _TEXT),
        ("request", _TEXT),
        ("enqueued_at", _TIME),
        ("deadline", _TIME),
    ),
)


def _json(table: str, key: Any, column: str, text: str, shape: type) -> Any:
    """The JSON cell ``text``, which must hold a ``shape`` (a list: of strings)."""
    try:
        value = loads(text)
    except (ValueError, RecursionError):
        raise Unreadable(table, key, column, text, "not JSON") from None
    if not isinstance(value, shape) or (
        isinstance(value, list) and not all(isinstance(v, str) for v in value)
    ):
        what = "a list of names" if shape is list else "an object"
        raise Unreadable(table, key, column, text, f"not {what}")
    return value


def to_lease(r: Sequence[Any]) -> Lease:
    """A :class:`Lease` from a row of ``LEASE_COLS``; :class:`Unreadable` if it cannot be."""
    _LEASE.check(r[0], r)
    return Lease(
        lease_id=r[0],
        resource=r[1],
        holder=r[2],
        intent=r[3],
        fencing_token=r[4],
        acquired_at=r[5],
        expires_at=r[6],
        ttl_s=r[7],
        touches=_json("leases", r[0], "touches", r[8], list),
        state=r[9],
        rollback=_json("leases", r[0], "rollback", r[10], dict) if r[10] else None,
        ended_at=r[11],
    )


def to_principal(r: Sequence[Any]) -> Principal:
    """A :class:`Principal` from a row of ``PRINCIPAL_COLS``; :class:`Unreadable` if it
    cannot be."""
    _PRINCIPAL.check(r[0], r)
    return Principal(
        name=r[0],
        kind=r[1],
        vendor=r[2],
        wake=r[3],
        admin=bool(r[4]),
        created_at=r[5],
        queues=_json("principals", r[0], "queues", r[6], list) if r[6] else [],
        disabled_at=r[7],
        disabled_reason=r[8],
        token_expires_at=r[9],
    )


def to_waiter(r: Sequence[Any]) -> Waiter:
    """A :class:`Waiter` from a row of ``WAITER_COLS``; :class:`Unreadable` if it cannot
    be."""
    _WAITER.check(r[1], r)
    return Waiter(
        waiter_id=r[1],
        seq=r[0],
        resource=r[2],
        principal=r[3],
        request=_json("waiters", r[1], "request", r[4], dict),
        enqueued_at=r[5],
        deadline=r[6],
    )


def read_one(tx: Any, convert: Callable[[Sequence[Any]], T], r: Sequence[Any]) -> T | None:
    """``convert(r)``, or None for a row that cannot be read: then an ERROR line names it,
    and ``tx`` keeps it for verify (:func:`left_out`)."""
    try:
        return convert(r)
    except Unreadable as exc:
        left_out(tx).append(exc)
        log.error("%s; left out of this read (writ audit verify names it)", exc)
        return None


def readable(
    tx: Any, rows: Iterable[Sequence[Any]], convert: Callable[[Sequence[Any]], T]
) -> list[T]:
    """Each of ``rows`` converted, but those that cannot be read (:func:`read_one`): what a
    read that lists rows answers, where one row written by hand must not fail them all."""
    out = []
    for r in rows:
        got = read_one(tx, convert, r)
        if got is not None:
            out.append(got)
    return out


def left_out(tx: Any) -> list[Unreadable]:
    """The rows ``tx``'s reads have left out so far, as they could not be read."""
    found: list[Unreadable] = vars(tx).setdefault("_left_out", [])
    return found


class UnreadOnly(tuple[str, str]):
    """A verify check's answer that names only a row writ could not read: the tables after
    it are checked still (:func:`writ.stores.accounted.tables_disagree`), so that a decoy in
    one table hides nothing written by hand in another."""

    __slots__ = ()


def told(found: tuple[str, str] | None, unread: Sequence[Unreadable]) -> tuple[str, str] | None:
    """A verify check's answer (``(name, why)``): what it ``found`` among the rows it read,
    the first row it could not read said after it; else that row, as changed by hand; else
    None. A row that cannot be read never hides one that can: an admin written in by hand
    is named, whatever decoy beside it cannot be read."""
    if not unread:
        return found
    first = unread[0]
    if found is None:
        return UnreadOnly((first.key, str(first)))
    return found[0], f"{found[1]}; and {first}"


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
