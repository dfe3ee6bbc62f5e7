"""The operations surface in front of the app: ``/livez``, ``/readyz``, ``/metrics``, and
the per-request measurements (PROTOCOL.md v1.1 "Operations"; docs/operations.md).

:class:`OpsFront` is the outermost ASGI layer of :class:`writ.server.WritApp`. It answers
its three routes itself (no FastAPI routing, no bearer token but ``--metrics-token``), and
around every other request it measures the duration by method, route *template* and status,
counts error answers by code, and the acquire latency of granted leases. It reads a
response's body only when the status is 400 or more (to learn the error code); the hot path
pays two clock reads, a closure and a dict lookup.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import _BY_CODE

if TYPE_CHECKING:
    from .engine import Engine
    from .metrics import Metrics

LEASES = "/v1/leases"
RELEASE = "/v1/leases/{lease_id}/release"
OPS_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
READY_TIMEOUT_S = 5.0


def route_template(scope: Scope) -> str:
    """The route template a request matched (never its raw path: bounded cardinality)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    # the lean path (server.FastLeases) answers these two without FastAPI's routing
    path = scope.get("path", "")
    if scope.get("method") == "POST":
        if path == LEASES:
            return LEASES
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "leases" and parts[4] == "release" and parts[3]:
            return RELEASE
    return "unmatched"


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
        if m is None:
            await self.app(scope, receive, send)
            return
        status = 500
        error = False
        chunks: list[bytes] = []

        async def measured(msg: Message) -> None:
            nonlocal status, error
            if msg["type"] == "http.response.start":
                status = msg["status"]
                error = status >= 400
            elif error and msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
            await send(msg)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, measured)
        finally:
            took = time.perf_counter() - t0
            route = route_template(scope)
            m.observe_http(scope["method"], route, status, took)
            if status == 201 and route == LEASES:
                m.acquire_wait.observe(took)
            elif error:
                m.refused(_error_code(b"".join(chunks), status))

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
            from .metrics import CONTENT_TYPE_LATEST

            await _answer(send, 200, text, content_type=CONTENT_TYPE_LATEST.encode())

    async def _not_ready(self) -> str | None:
        try:
            return await asyncio.wait_for(self.engine.store.ready(), READY_TIMEOUT_S)
        except TimeoutError:
            return f"the store did not answer within {READY_TIMEOUT_S:g}s"


def _bearer_ok(scope: Scope, token: str) -> bool:
    for k, v in scope.get("headers") or []:
        if k == b"authorization":
            scheme, _, given = v.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), token.encode()
            )
    return False


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
