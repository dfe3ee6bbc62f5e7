"""The rows an engine commits, with the request that caused them (the decision log).

The store's own ``row_observers`` (what :mod:`writ.telemetry.metrics` uses) see committed rows but
not which request asked for them: SQLite runs a whole group commit's transactions in one
task. :func:`observed` therefore wraps the engine's ``store.transact`` once, capturing the
caller's request id and trace ids (:func:`context`) when ``transact`` is called; each
``tx.append`` notes its row, and once the transaction has committed (never if it rolled
back) every sink gets the rows and that context. Nothing is wrapped until a sink is added,
and a transaction is not observed while no sink wants rows (the decision log below ``info``).
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from writ.telemetry import tracing

if TYPE_CHECKING:
    from writ.core.ledger import Sealed
    from writ.engine import Engine
    from writ.stores.base import Tx

T = TypeVar("T")

#: the id of the HTTP request being served (set by :class:`writ.api.ops.OpsFront`)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "writ_request_id", default=None
)

Rows = list[tuple["Sealed", dict[str, Any]]]
Sink = Callable[[Rows, dict[str, str]], None]  # rows, and request_id / trace_id / span_id


class Observed:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sinks: list[tuple[Sink, Callable[[], bool] | None]] = []
        self._wrapped = False

    def add_sink(self, sink: Sink, active: Callable[[], bool] | None = None) -> None:
        """``sink(rows, context)`` after each commit of the engine's store. ``active()``,
        when given, says whether the sink wants rows now (the decision log: whether its
        level is on); a transaction that no sink wants is not observed at all."""
        self.sinks.append((sink, active))
        if self._wrapped:
            return
        self._wrapped = True
        store = self.engine.store
        transact = store.transact
        entries = self.sinks

        # a plain function handing back the store's own coroutine: no frame of its own to
        # step through on every await
        def observed_transact(fn: Callable[[Tx], Awaitable[T]]) -> Awaitable[T]:
            sinks = [sink for sink, on in entries if on is None or on()]
            if not sinks:
                return transact(fn)
            ctx = context()  # the caller's: the transaction may run in another task
            return transact(lambda tx: _noting(tx, fn, sinks, ctx))

        store.transact = observed_transact  # type: ignore[method-assign,assignment]


_BY_ENGINE: weakref.WeakKeyDictionary[Engine, Observed] = weakref.WeakKeyDictionary()


def observed(engine: Engine) -> Observed:
    """The one :class:`Observed` of ``engine``."""
    o = _BY_ENGINE.get(engine)
    if o is None:
        o = _BY_ENGINE[engine] = Observed(engine)
    return o


def context() -> dict[str, str]:
    """The request id and trace ids of the current request, as far as they are known."""
    out: dict[str, str] = {}
    rid = request_id.get()
    if rid is not None:
        out["request_id"] = rid
    if tracing.enabled():
        ids = tracing.current_ids()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
    return out


async def _noting(
    tx: Tx, fn: Callable[[Tx], Awaitable[T]], sinks: list[Sink], ctx: dict[str, str]
) -> T:
    """Run ``fn(tx)``, noting every row it appends; hand them to ``sinks`` after commit."""
    rows: Rows = []
    append = tx.append

    async def noted(fields: dict[str, Any]) -> Any:
        sealed = await append(fields)
        rows.append((sealed, fields))
        return sealed

    tx.append = noted  # type: ignore[method-assign]
    out = await fn(tx)
    if rows:

        def deliver() -> None:
            for sink in sinks:
                sink(rows, ctx)

        tx.after_commit(deliver)
    return out
