"""The rows an engine commits, handed to observers (metrics, decision logs) after commit.

:func:`observed` wraps the engine's ``store.transact`` once: each ``tx.append`` notes its
row, and once the transaction has committed (never if it rolled back) every sink gets the
rows with the context of the request that asked for the transaction (its request id and
trace ids, captured when ``transact`` was called — a group commit runs many requests'
transactions in one task). Timers get each transaction's duration, submit to commit.
Nothing is wrapped until a sink or timer is added.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import tracing

if TYPE_CHECKING:
    from .engine import Engine
    from .ledger import Sealed
    from .stores.base import Tx

T = TypeVar("T")

#: the id of the HTTP request being served (set by :class:`writ.ops.OpsFront`)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "writ_request_id", default=None
)

Rows = list[tuple["Sealed", dict[str, Any]]]
Sink = Callable[[Rows, dict[str, str]], None]  # rows, and request_id / trace_id / span_id


class Observed:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sinks: list[Sink] = []
        self.timers: list[Callable[[float], None]] = []
        self.wants_context = False
        self._wrapped = False

    def add_sink(self, sink: Sink, context: bool = False) -> None:
        """``sink(rows, context)`` after each commit; ``context`` True when it reads the
        request id and trace ids (capturing them costs a little on every transaction)."""
        self.sinks.append(sink)
        self.wants_context |= context
        self._wrap()

    def add_timer(self, timer: Callable[[float], None]) -> None:
        self.timers.append(timer)
        self._wrap()

    def _wrap(self) -> None:
        if self._wrapped:
            return
        self._wrapped = True
        store = self.engine.store
        transact = store.transact
        sinks, timers = self.sinks, self.timers

        async def observed_transact(fn: Callable[[Tx], Awaitable[T]]) -> T:
            ctx = context() if self.wants_context else _NO_CONTEXT
            t0 = time.perf_counter()
            try:
                return await transact(lambda tx: _noting(tx, fn, sinks, ctx))
            finally:
                took = time.perf_counter() - t0
                for timer in timers:
                    timer(took)

        store.transact = observed_transact  # type: ignore[method-assign]


_NO_CONTEXT: dict[str, str] = {}
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
