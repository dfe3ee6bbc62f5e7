"""SQL helpers of the PostgreSQL store: related-resource clauses, multi-row statements, driver errors,
statements sent in one round trip."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg

from writ.core.errors import Unavailable
from writ.core.resources import related_clauses

T = TypeVar("T")
log = logging.getLogger("writ.stores.postgres")


def _related_sql(column: str, paths: Sequence[str]) -> tuple[str, list[Any]]:
    """``column`` equal to a path or an ancestor, or inside a descendant range: each arm an
    index range scan (the planner ORs them as a BitmapOr)."""
    exact, ranges = related_clauses(paths)
    parts = [f"{column} = ANY(%s)"]
    args: list[Any] = [exact]
    for lo, hi in ranges:
        parts.append(f"({column} >= %s AND {column} < %s)")
        args += [lo, hi]
    return "(" + " OR ".join(parts) + ")", args


def _prefix_sql(column: str, prefix: str) -> tuple[str, list[Any]]:
    return (
        f"({column} = %s OR ({column} >= %s AND {column} < %s))",
        [prefix, prefix + "/", prefix + "0"],
    )


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """The one boundary where driver errors become :class:`Unavailable`; anything else
    (the engine's own errors) passes through."""
    try:
        yield
    except (psycopg.Error, OSError) as exc:
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
            log.error("PostgreSQL store: %s failed", what, exc_info=exc)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tail = "" if what == "open the store" else "; nothing of this request was kept, retry"
        raise Unavailable(f"the PostgreSQL store could not {what}: {reason}{tail}") from exc


def _broken(conn: psycopg.AsyncConnection[Any]) -> bool:
    return bool(conn.closed or conn.broken)


_FIELDS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _copy(obj: T) -> T:
    """A shallow copy of a dataclass (the replica's records, handed to one transaction):
    its ``__init__`` fed its fields, four times as fast as :func:`dataclasses.replace`. A
    class whose ``__init__`` takes anything but exactly its fields, in order and positional
    (an ``InitVar``, a keyword-only or ``init=False`` field), is refused, not misbuilt."""
    cls = type(obj)
    get = _FIELDS.get(cls)
    if get is None:
        names = [f.name for f in dataclasses.fields(obj)]  # type: ignore[arg-type]
        params = list(inspect.signature(cls).parameters.values())
        if (
            len(names) < 2
            or [p.name for p in params] != names
            or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params)
        ):
            raise TypeError(f"_copy: {cls.__name__}.__init__ does not take its fields, in order")
        get = _FIELDS[cls] = operator.attrgetter(*names)  # two or more: a tuple
    return cls(*get(obj))


_Stmts = list[tuple[str, Sequence[Any]]]


async def _simple(
    conn: psycopg.AsyncConnection[Any], items: Sequence[tuple[str, Sequence[Any]]]
) -> psycopg.AsyncClientCursor[Any]:
    """Send ``items`` in one round trip, as one query string of the simple protocol with
    the values bound by psycopg on this side (quoted as literals): one message and one
    parse per statement at the server, where a pipeline of the extended protocol costs a
    Parse/Bind/Execute per statement on both sides (measured: half the client CPU per
    batch). After the first failing statement the server skips the rest."""
    cur = psycopg.AsyncClientCursor(conn)
    args = [value for _, values in items for value in values]
    await cur.execute(";\n".join(q for q, _ in items), args or None, prepare=False)
    return cur
