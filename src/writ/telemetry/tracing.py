"""OpenTelemetry tracing — optional (``pip install 'writ[otel]'``), off unless configured.

``writ serve`` calls :func:`configure` once: with the SDK installed and the standard
environment asking for traces (``OTEL_TRACES_EXPORTER=otlp|console``, or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), it installs a
tracer provider (service name, resource attributes and sampler from the ``OTEL_*``
variables, as the SDK reads them) with a batch exporter. Otherwise every helper here is a
no-op that costs one global read.

Spans (docs/operations.md): ``HTTP <method> <route>`` for each request (the caller's
``traceparent`` continued), ``writ.<operation>`` for engine operations, ``writ.store.transact``
/ ``writ.store.read`` for store transactions, and ``writ.outbound`` for wake, page and
rollback calls, which carry ``traceparent`` to the receiver.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from writ.engine import Engine

T = TypeVar("T")
log = logging.getLogger("writ.tracing")

_tracer: Any = None  # an opentelemetry Tracer once tracing is on

ENGINE_OPERATIONS = ("acquire", "renew", "release", "revoke", "sweep", "gate_check")
# the safety rules' operations, by the engine attribute that holds each rule
RULE_OPERATIONS = {
    "consents": ("record_change", "ask", "answer"),
    "rollbacks": ("request", "answer", "defect"),
    "freezes": ("freeze", "lift"),
}


def enabled() -> bool:
    return _tracer is not None


def wanted(env: dict[str, str] | None = None) -> bool:
    """Does the standard OTEL_* environment ask for traces?"""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure() -> str | None:
    """Turn tracing on from the environment, if it asks for it. Returns what was set up
    (for the startup log), or None when tracing stays off. Raises :class:`RuntimeError`
    when traces are asked for but the extra is not installed."""
    if not wanted():
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_* asks for traces but the OpenTelemetry SDK is not installed: "
            "pip install 'writ[otel]'"
        ) from exc
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
                "pip install 'writ[otel]'"
            ) from exc
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    else:
        raise RuntimeError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported by writ: otlp, console or none"
        )
    provider = TracerProvider()  # resource and sampler from OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    from opentelemetry import trace

    trace.set_tracer_provider(provider)  # for any other instrumented library in the process
    enable(provider)
    return exporter_name


def enable(provider: Any) -> None:
    """Trace with ``provider`` (an SDK TracerProvider; tests pass one with an in-memory
    exporter)."""
    global _tracer
    _tracer = provider.get_tracer("writ")


def disable() -> None:
    global _tracer
    _tracer = None


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[dict[str, str]]:
    """A client-side span; yields the headers (``traceparent``) that carry it onward.
    With tracing off: no span, no headers."""
    if _tracer is None:
        yield {}
        return
    from opentelemetry import propagate, trace

    with _tracer.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes=_attrs(attributes)
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


@contextmanager
def server_span(method: str, headers: list[tuple[bytes, bytes]]) -> Iterator[Any]:
    """The span of one HTTP request, continuing the caller's ``traceparent``."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate, trace

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    ctx = propagate.extract(carrier)
    with _tracer.start_as_current_span(
        f"HTTP {method}",
        context=ctx,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method},
    ) as s:
        yield s


@contextmanager
def continued(name: str, traceparent: str | None, **attributes: Any) -> Iterator[Any]:
    """A server-side span for work another writ process asked for over its own wire (a
    relayed call), continuing the ``traceparent`` it sent (a new trace without one)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import propagate, trace

    ctx = propagate.extract({"traceparent": traceparent} if traceparent else {})
    with _tracer.start_as_current_span(
        name, context=ctx, kind=trace.SpanKind.SERVER, attributes=_attrs(attributes)
    ) as s:
        yield s


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, when tracing is on."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def current_ids_of(span: Any) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of ``span``."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def instrument(engine: Engine) -> None:
    """Spans around ``engine``'s operations and its store's transactions and reads."""
    for name in ENGINE_OPERATIONS:
        method = getattr(engine, name)
        setattr(engine, name, _traced(f"writ.{name}", method))
    for rule_name, names in RULE_OPERATIONS.items():
        rule = getattr(engine, rule_name)
        for name in names:
            setattr(rule, name, _traced(f"writ.{rule_name}.{name}", getattr(rule, name)))
    store = engine.store
    store.transact = _traced("writ.store.transact", store.transact)  # type: ignore[method-assign,assignment]
    store.read = _traced("writ.store.read", store.read)  # type: ignore[method-assign,assignment]


def _traced(name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        if _tracer is None:
            return await fn(*args, **kwargs)
        with _tracer.start_as_current_span(name):
            return await fn(*args, **kwargs)

    return wrapper


def _attrs(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("_", "."): v for k, v in attributes.items() if v is not None}
