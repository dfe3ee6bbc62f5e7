"""SQL helpers of the SQLite store: related-resource clauses, live objects, and running a transaction function."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import (
    Coroutine,
    Sequence,
)
from typing import Any, NamedTuple, TypeVar

from writ.core.resources import related_clauses
from writ.stores.rows import (
    LEASE_COLS,
    Spec,
    Wanted,
    wanted_objects,
)

T = TypeVar("T")


def _related_sql(column: str, paths: Sequence[str]) -> tuple[str, list[Any]]:
    sql, args = _related_sql_cached(column, tuple(paths))
    return sql, list(args)


@functools.lru_cache(maxsize=4096)
def _related_sql_cached(column: str, paths: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    exact, ranges = related_clauses(paths)
    parts = [f"{column} IN ({','.join('?' * len(exact))})"]
    args: list[Any] = list(exact)
    for lo, hi in ranges:
        parts.append(f"({column} >= ? AND {column} < ?)")
        args += [lo, hi]
    return "(" + " OR ".join(parts) + ")", tuple(args)


@functools.lru_cache(maxsize=4096)
def _held_related_sql(paths: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """Held leases related to ``paths``: one SELECT per clause, each pinned to the partial
    index of held leases. With the clauses OR-ed, SQLite answered the exact-match part from
    ``leases_by_resource``, which holds every lease ever granted on a resource, so a grant
    cost grew with history (bench/RESULTS.md)."""
    exact, ranges = related_clauses(paths)
    sel = f"SELECT {LEASE_COLS} FROM leases INDEXED BY leases_held WHERE state = 'held' AND "
    parts = [sel + f"resource IN ({','.join('?' * len(exact))})"]
    args: list[Any] = list(exact)
    for lo, hi in ranges:
        parts.append(sel + "resource >= ? AND resource < ?")
        args += [lo, hi]
    return " UNION ".join(parts) + " ORDER BY fencing_token", tuple(args)


_ANY_WAITER = "SELECT EXISTS (SELECT 1 FROM waiters)"

# after an import: the chain's head is its last imported row
_IMPORTED_HEAD = (
    "UPDATE audit_head SET (seq, hash) = (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1)"
    " WHERE EXISTS (SELECT 1 FROM audit)"
)
_HEADS = (
    "SELECT (SELECT value FROM meta WHERE key = 'fencing_token'),"
    " (SELECT seq FROM audit_head), (SELECT hash FROM audit_head)"
)


class _LiveObjects(NamedTuple):
    """What :meth:`SQLiteTx.objects_related_many` asks about one spec, built once."""

    w: Wanted
    probe: str  # EXISTS: is any object of these kinds in one of these states?
    probe_args: tuple[str, ...]
    known_key: tuple[Any, ...]  # what the store remembers the probe's answer under


@functools.lru_cache(maxsize=256)
def _live_objects(spec: Spec) -> _LiveObjects:
    w = wanted_objects(spec)
    probe = (
        f"SELECT EXISTS (SELECT 1 FROM objects WHERE kind IN ({','.join('?' * len(w.kinds))})"
        f" AND state IN ({','.join('?' * len(w.states))}))"
    )
    args = (*w.kinds, *w.states)
    return _LiveObjects(w, probe, args, ("objects", probe, *args))


@functools.lru_cache(maxsize=4096)
def _objects_related_many_sql(spec: Spec, paths: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    w = _live_objects(spec).w
    where, args = _related_sql_cached("resource", paths)
    return (
        f"SELECT kind, data, state, expires_at FROM objects WHERE kind IN"
        f" ({','.join('?' * len(w.kinds))}) AND {where}"
        f" AND state IN ({','.join('?' * len(w.states))}) ORDER BY created_at, id",
        (*w.kinds, *args, *w.states),
    )


# Text as read once a connection met a stored value that is not UTF-8 (written by hand:
# writ itself only writes UTF-8): U+FFFD in place of each bad byte, never a failed read.
# Switched on per connection at the first such value; the default (C) decoding is faster.
_TOLERANT_TEXT = functools.partial(str, encoding="utf-8", errors="replace")


def _tolerate(conn: sqlite3.Connection, exc: BaseException) -> bool:
    """Whether ``exc`` is sqlite3 failing to decode stored text as UTF-8 on ``conn`` for the
    first time; if so ``conn`` now decodes leniently and the caller retries once."""
    if (
        isinstance(exc, sqlite3.OperationalError)
        and "decode to UTF-8" in str(exc)
        and conn.text_factory is not _TOLERANT_TEXT
    ):
        conn.text_factory = _TOLERANT_TEXT
        return True
    return False


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a transaction function that awaits only this store's (non-suspending) methods."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a transaction function awaited something other than the store")
