"""OpenTelemetry (issue 14): spans for HTTP requests, engine operations, store
transactions and outbound calls, captured with the SDK's in-memory exporter; the caller's
``traceparent`` is continued, outbound calls carry one, and log lines name the trace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from tests.stores_fixtures import Backend
from writ.api.app import create_app
from writ.core.clock import ManualClock
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.sqlite import SQLiteStore
from writ.telemetry import tracing
from writ.telemetry.logs import ACCESS, DECISION, log_decisions

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


class Hook:
    """A receiver that records each request's headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    )
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled()


async def test_spans_cover_request_engine_store_and_outbound(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    hook = Hook()
    clock = ManualClock()
    engine = Engine(
        SQLiteStore(f"sqlite:///{tmp_path}/t.db", clock=clock),
        parse('[[rules]]\nprefix = "prod"\nmax_hold_s = 60\npage_after_s = 60\n'),
    )
    tracing.instrument(engine)
    log_decisions(engine)
    await engine.start(background=False)
    records = Records()
    levels = [(lg, lg.level) for lg in (ACCESS, DECISION)]
    for lg in (ACCESS, DECISION):
        lg.addHandler(records)
        lg.setLevel(logging.INFO)
    try:
        _, token = await engine.add_principal(None, "tr-agent", "agent", wake=f"{hook.base}/w")
        app = create_app(engine, start_engine=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as c:
            spans.clear()
            r = await c.post(
                "/v1/leases",
                json={"resource": "prod/db", "intent": "x", "ttl_s": 600},
                headers={
                    "Authorization": f"Bearer {token}",
                    "traceparent": f"00-{TRACE}-{PARENT}-01",
                },
            )
            assert r.status_code == 201
            lease_id = r.json()["lease_id"]
            finished = spans.get_finished_spans()
            spans.clear()
            ch = await c.post(
                f"/v1/leases/{lease_id}/changes",
                json={"attribute": "capacity", "summary": "4->8"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert ch.status_code == 201
            rule_spans = {s.name for s in spans.get_finished_spans()}
            assert "writ.consents.record_change" in rule_spans
            assert "HTTP POST /v1/leases/{lease_id}/changes" in rule_spans
        by_name = {s.name: s for s in finished}
        http = by_name["HTTP POST /v1/leases"]
        assert format(http.context.trace_id, "032x") == TRACE  # the caller's trace, continued
        assert format(http.parent.span_id, "016x") == PARENT
        assert http.attributes["http.route"] == "/v1/leases"
        assert http.attributes["http.response.status_code"] == 201
        acquire = by_name["writ.acquire"]
        transact = by_name["writ.store.transact"]
        assert acquire.parent.span_id == http.context.span_id
        assert transact.parent.span_id == acquire.context.span_id
        assert {s.context.trace_id for s in (http, acquire, transact)} == {int(TRACE, 16)}

        # log lines carry the trace
        access = next(x for x in records.records if x.name == "writ.access")
        assert access.writ["trace_id"] == TRACE  # type: ignore[attr-defined]
        granted = next(x for x in records.records if x.getMessage() == "lease.granted")
        assert granted.writ["trace_id"] == TRACE  # type: ignore[attr-defined]

        # a stuck lease: the wake call is a span and carries traceparent to the receiver
        spans.clear()
        clock.advance(61)
        await engine.sweep()
        await engine.caller.drain()
        [outbound] = [s for s in spans.get_finished_spans() if s.name == "writ.outbound"]
        [headers] = hook.headers
        tp = headers["traceparent"].split("-")
        assert tp[1] == format(outbound.context.trace_id, "032x")
        assert tp[2] == format(outbound.context.span_id, "016x")
        assert by_name  # the sweep's own spans
        assert any(s.name == "writ.sweep" for s in spans.get_finished_spans())
    finally:
        for lg, level in levels:
            lg.removeHandler(records)
            lg.setLevel(level)  # as it was: later tests take the hot routes' shortest way
        await engine.stop()
        hook.server.shutdown()
        hook.server.server_close()


async def test_a_relayed_acquire_is_one_trace_across_both_servers(
    spans: InMemorySpanExporter,
    pg_backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two servers on one store and one relay directory, in this process: an acquire sent
    to the one that relays is written by the other, and its spans are one trace — the
    caller's, then the relaying server's request and its call over the relay, then the
    writer's work on that call, the engine's acquire inside it."""
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", "relay-trace-admin")
    where = tmp_path / "relay"
    where.mkdir(mode=0o700)
    apps = []
    for _ in range(2):
        engine = Engine(pg_backend.open_store(), None)
        tracing.instrument(engine)
        apps.append(create_app(engine, relay_dir=str(where)))
    async with contextlib.AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not any(a.relay.role() == "relaying" and a.relay.link() for a in apps):
            assert loop.time() < deadline, "no server came to relay to the other"
            await asyncio.sleep(0.01)
        (relaying,) = [a for a in apps if a.relay.role() == "relaying"]
        (writer,) = [a for a in apps if a.relay.role() == "writer"]
        admin = {"authorization": "Bearer relay-trace-admin"}
        transport = httpx.ASGITransport(app=relaying)
        async with httpx.AsyncClient(transport=transport, base_url="http://writ") as c:
            r = await c.post("/v1/principals", json={"name": "a", "kind": "agent"}, headers=admin)
            assert r.status_code == 201, r.text
            me = {"authorization": f"Bearer {r.json()['token']}"}
            spans.clear()
            r = await c.post(
                "/v1/leases",
                json={"resource": "db/traced", "intent": "x"},
                headers=me | {"traceparent": f"00-{TRACE}-{PARENT}-01"},
            )
            assert r.status_code == 201, r.text
        assert relaying.relay.counts["relayed"] == 1 and writer.relay.counts["served"] == 1
    done = {s.name: s for s in spans.get_finished_spans()}  # (background work: traces of its own)
    request = done["HTTP POST /v1/leases"]
    call = done["writ.relay.acquire"]
    served = done["writ.relayed.acquire"]
    acquired = done["writ.acquire"]
    chain = (request, call, served, acquired)
    assert {f"{s.context.trace_id:032x}" for s in chain} == {TRACE}, chain
    assert request.parent.span_id == int(PARENT, 16)
    assert call.parent.span_id == request.context.span_id
    assert served.parent.span_id == call.context.span_id
    assert acquired.parent.span_id == served.context.span_id


async def test_one_server_span_per_request_and_the_engines_spans_inside_it(
    spans: InMemorySpanExporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under ``writ serve``, whose provider is the process's global one: a request through
    FastAPI's routes is one server span, writ's ``HTTP <method> <route>``, with the engine's
    and the store's spans inside it. FastAPI's own telemetry (on by default where FastAPI
    has it) added a second server span per request, which took the engine's spans as its
    own and, with no caller's traceparent, stood in a trace apart from writ's."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # as set_tracer_provider would
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/t.db"), None)
    tracing.instrument(engine)
    await engine.start(background=False)
    try:
        _, token = await engine.add_principal(None, "one-span", "agent")
        app = create_app(engine, start_engine=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as c:
            spans.clear()
            r = await c.get("/v1/leases", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        done = spans.get_finished_spans()
        servers = [s.name for s in done if s.kind == SpanKind.SERVER]
        assert servers == ["HTTP GET /v1/leases"], [s.name for s in done]
        (http,) = [s for s in done if s.kind == SpanKind.SERVER]
        reads = [s for s in done if s.name == "writ.store.read"]
        assert reads and all(s.parent.span_id == http.context.span_id for s in reads), done
    finally:
        await engine.stop()
        provider.shutdown()
