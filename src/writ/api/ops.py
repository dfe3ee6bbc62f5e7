"""The operations surface in front of the app: ``/livez``, ``/readyz``, ``/metrics``, and
the per-request measurements (PROTOCOL.md v1.1 "Operations"; docs/operations.md).

:class:`OpsFront` is the outermost ASGI layer of :class:`writ.api.fast.WritApp`. It answers
its three routes itself (no FastAPI routing, no bearer token but ``--metrics-token``), and
around every other request it measures the duration by method, route *template* and status,
counts error answers by code, and the acquire latency of granted leases. It reads a
response's body only when the status is 400 or more (to learn the error code); the hot path
pays two clock reads, a closure and a dict lookup.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ.core.errors import _BY_CODE
from writ.net.credentials import Twice, sole
from writ.telemetry import tracing
from writ.telemetry.logs import ACCESS, DECISION
from writ.telemetry.observe import request_id

if TYPE_CHECKING:
    from writ.engine import Engine
    from writ.telemetry.metrics import Metrics

LEASES = "/v1/leases"
RELEASE = "/v1/leases/{lease_id}/release"
FENCE = "/v1/fence"
OPS_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
READY_TIMEOUT_S = 5.0
# A request's start, set in its scope by the shortest way in (``WritApp.writ_direct``) when it
# hands over a request whose body it has read: its duration counts from there, upload and all
STARTED = "writ.started"


def _started(scope: Scope) -> float:
    """When ``scope``'s request began: as the shortest way in noted it, or now."""
    noted = scope.pop(STARTED, None)
    return time.perf_counter() if noted is None else float(noted)


def route_template(scope: Scope) -> str:
    """The route template a request matched (never its raw path: bounded cardinality)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    # the lean path (api.fast.FastLeases) answers these three without FastAPI's routing
    path = scope.get("path", "")
    if scope.get("method") == "GET" and path == FENCE:
        return FENCE
    if scope.get("method") == "POST":
        if path == LEASES:
            return LEASES
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "leases" and parts[4] == "release" and parts[3]:
            return RELEASE
    return "unmatched"


GONE = 499
"""The status a request is measured and logged with when no answer was started because its
client went away first (nginx's "client closed request"), with the outcome ``hung_up``: not
a refusal, and not a 500 for an alert on server errors to fire on. A request that fails
before answering is a 500 (:func:`failed`)."""


def failed(status: int) -> int:
    """The status a request that raised is measured with: what it answered, else 500."""
    return 500 if status == GONE else status


class OpsFront:
    """``/livez``, ``/readyz``, ``/metrics``, and metrics around ``app`` (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        metrics: Metrics | None,
        metrics_token: str | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.metrics = metrics
        self.metrics_token = metrics_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in OPS_PATHS and scope["method"] == "GET":
            await self._ops(path, scope, send)
            return
        m = self.metrics
        if self.lean():
            if m is None:
                await self.app(scope, receive, send)  # nothing to measure
            else:
                await self._measure(scope, receive, send, m)
            return
        logging_on = ACCESS.isEnabledFor(logging.INFO)
        logged = logging_on or DECISION.isEnabledFor(logging.INFO)
        rid = _request_id(scope) if logged else None
        token = request_id.set(rid) if logged else None
        status = GONE  # until an answer starts
        error = False
        chunks: list[bytes] = []
        rid_header = (b"x-request-id", rid.encode()) if rid else None

        async def measured(msg: Message) -> None:
            nonlocal status, error
            if msg["type"] == "http.response.start":
                status = msg["status"]
                error = status >= 400
                if rid_header is not None:
                    msg["headers"] = [*msg.get("headers", ()), rid_header]
            elif error and msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
            await send(msg)

        t0 = _started(scope)
        span = None
        try:
            if tracing.enabled():
                with tracing.server_span(scope["method"], scope.get("headers") or []) as span:
                    try:
                        await self.app(scope, receive, measured)
                    finally:
                        route = route_template(scope)
                        span.update_name(f"HTTP {scope['method']} {route}")
                        span.set_attribute("http.route", route)
                        span.set_attribute("http.response.status_code", status)
            else:
                await self.app(scope, receive, measured)
        except BaseException:
            status = failed(status)
            raise
        finally:
            took = time.perf_counter() - t0
            route = route_template(scope)
            body = b"".join(chunks)
            if m is not None:
                record(m, scope["method"], route, status, took, body)
            if logging_on and rid is not None:
                code = "hung_up" if status == GONE else _error_code(body, status) if error else None
                _access_line(scope, rid, route, status, took, code, span)
            if token is not None:
                request_id.reset(token)

    async def _measure(self, scope: Scope, receive: Receive, send: Send, m: Metrics) -> None:
        """Metrics only (no logs, no tracing): the hot path's measurement, kept lean."""
        status = GONE  # until an answer starts
        body = b""

        async def measured(msg: Message) -> None:
            nonlocal status, body
            if msg["type"] == "http.response.start":
                status = msg["status"]
            elif status >= 400:
                body += msg.get("body", b"")
            await send(msg)

        start = _started(scope)
        try:
            await self.app(scope, receive, measured)
        except BaseException:
            status = failed(status)
            raise
        finally:
            took = time.perf_counter() - start
            record(m, scope["method"], route_template(scope), status, took, body)

    @staticmethod
    def lean() -> bool:
        """Whether requests are only measured now: no access log to write, no trace."""
        return not ACCESS.isEnabledFor(logging.INFO) and not tracing.enabled()

    async def _ops(self, path: str, scope: Scope, send: Send) -> None:
        if path == "/livez":
            await _answer(send, 200, b'{"ok":true}')
        elif path == "/readyz":
            reason = await self._not_ready()
            if reason is None:
                await _answer(send, 200, b'{"ok":true}')
            else:
                body = json.dumps({"ok": False, "reason": reason}).encode()
                await _answer(send, 503, body, [(b"retry-after", b"5")])
        elif self.metrics is None:
            await _answer(
                send,
                404,
                b'{"error":{"code":"not_found","message":"metrics are off (writ serve --no-metrics)"}}',
            )
        elif self.metrics_token and not _bearer_ok(scope, self.metrics_token):
            await _answer(
                send,
                401,
                b'{"error":{"code":"unauthenticated","message":"/metrics needs the metrics bearer token"}}',
                [(b"www-authenticate", b"Bearer")],
            )
        else:
            text = await self.metrics.render()
            from writ.telemetry.metrics import CONTENT_TYPE_LATEST

            await _answer(send, 200, text, content_type=CONTENT_TYPE_LATEST.encode())

    async def _not_ready(self) -> str | None:
        try:
            return await asyncio.wait_for(self.engine.store.ready(), READY_TIMEOUT_S)
        except TimeoutError:
            return f"the store did not answer within {READY_TIMEOUT_S:g}s"


_IDS = itertools.count(1)
_PREFIX = os.urandom(4).hex()
_GOOD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_id(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` when it is a plain token, else a fresh one."""
    for k, v in scope.get("headers") or ():
        if k == b"x-request-id":
            given: str = v.decode("latin-1")
            if _GOOD_ID.match(given):
                return given
            break
    return f"{_PREFIX}-{next(_IDS):x}"


def _access_line(
    scope: Scope,
    rid: str,
    route: str,
    status: int,
    took: float,
    code: str | None,
    span: object,
) -> None:
    lease = scope.get("writ.lease") or {}
    params = scope.get("path_params") or {}
    fields: dict[str, object] = {
        "request_id": rid,
        "method": scope["method"],
        "route": route,
        "path": scope.get("path"),
        "status": status,
        "duration_ms": round(took * 1000, 3),
        "principal": scope.get("writ.principal"),
        "resource": lease.get("resource") or params.get("resource"),
        "lease_id": lease.get("lease_id") or params.get("lease_id"),
        "fencing_token": lease.get("fencing_token"),
        "outcome": code or "ok",
    }
    if span is not None:
        ids = tracing.current_ids_of(span)
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
    ACCESS.info("%s %s %s", scope["method"], route, status, extra={"writ": fields})


def _bearer_ok(scope: Scope, token: str) -> bool:
    try:
        auth = sole(scope.get("headers") or [])
    except Twice:
        return False
    scheme, _, given = (auth or b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def record(m: Metrics, method: str, route: str, status: int, took: float, body: bytes) -> None:
    """One request's measurements: its duration by method, route template and status, the
    acquire latency of a grant, the error code of a refusal (``body``: the answer, read only
    when ``status`` is 400 or more)."""
    m.observe_http(method, route, status, took)
    if status == 201 and route == LEASES:
        m.acquire_wait.observe(took)
    elif status >= 400 and status != GONE:
        m.refused(_error_code(body, status))


def _error_code(body: bytes, status: int) -> str:
    """The writ error code of an error answer (one of the error tree's), else ``http_<status>``."""
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:  # uvicorn's plain-text 400s, or anything not writ's error shape
        return f"http_{status}"
    return code if isinstance(code, str) and code in _BY_CODE else f"http_{status}"


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    head: list[tuple[bytes, bytes]] = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
