"""The HTTP protocol (PROTOCOL.md) over the engine: FastAPI routes, auth, errors.

Thin by design: each route authenticates, hands its validated body to one engine call and
returns the engine's answer. Errors are mapped in one place: every :class:`WritError` is
answered with its own status and ``{"error": {"code", "message", ...}}``; malformed JSON,
wrong types, unknown routes and oversized bodies get the same shape. Never a 500 for bad
input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute

from writ._version import __version__
from writ.api.deps import principal
from writ.api.errors import install_error_handlers
from writ.api.fast import WritApp
from writ.api.handoff import Handoff
from writ.api.middleware import MAX_HEADERS
from writ.api.openapi import install_openapi
from writ.api.ops import OpsFront
from writ.api.routers import (
    audit,
    authority,
    consent,
    freezes,
    gate,
    leases,
    meta,
    principals,
    rollbacks,
)
from writ.api.waits import DEFAULT_CAP
from writ.core.models import Principal
from writ.engine import Engine
from writ.evidence.sentinel import Sentinel
from writ.telemetry.metrics import Metrics

# Route modules of later features register here: extend(app, engine, auth_dependency).
EXTENSIONS: list[Callable[[FastAPI, Engine, Callable[[Request], Awaitable[Principal]]], None]] = []

# The routers in the order their routes were written: it decides matching and the order of
# openapi.json's paths. /v1/health comes first, /v1/policy after the gate route.
ROUTERS = (
    meta.health_router,
    principals.router,
    leases.router,
    audit.router,
    consent.router,
    rollbacks.router,
    freezes.router,
    gate.router,
    meta.policy_router,
    authority.router,
)


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add ``router``'s routes to ``app`` as routes of the app itself, in order, as if each had
    been declared with ``@app.get(...)``/``@app.post(...)``. (``include_router`` would add one
    lazily resolved entry per router to ``app.routes`` instead of the routes themselves.) The
    routers set only methods, status codes, tags and (for an endpoint that may stream its
    answer) the response model; the rest comes from each endpoint."""
    for route in router.routes:
        if not isinstance(route, APIRoute):  # pragma: no cover - the routers hold only these
            raise TypeError(f"not an API route: {route!r}")
        app.router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            status_code=route.status_code,
            tags=route.tags,
            response_model=route.response_model,
        )


def create_app(
    engine: Engine,
    start_engine: bool = True,
    metrics: bool = True,
    metrics_token: str | None = None,
    relay_dir: str | None = None,
    settle: bool = False,
    max_waits: int = DEFAULT_CAP,
    verify_every: float = 0.0,
    handoff: bool = True,
    max_headers: int = MAX_HEADERS,
) -> FastAPI:
    """The ASGI app. Starts and stops ``engine`` with the app's lifespan. ``/livez``,
    ``/readyz`` and ``/metrics`` (:mod:`writ.api.ops`) sit in front of it; ``metrics=False``
    measures nothing (``/metrics`` is then 404), ``metrics_token`` guards ``/metrics``.
    ``settle`` (a server process of its own: ``writ serve``) tunes the cycle collector
    once started (:func:`writ.api.lifecycle.settle_heap`). Each principal may have
    ``max_waits`` requests waiting at once (:mod:`writ.api.waits`). ``verify_every`` > 0:
    the standing verify, a pass that often (:mod:`writ.evidence.sentinel`). With a
    ``relay_dir``, ``handoff`` hands the connections of a relaying server to the writer
    while it has room, once ``writ serve`` lends its listener (:mod:`writ.api.handoff`).
    ``max_headers`` is the listener's ``--max-header-bytes``, which the app checks too."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            # servers sharing a store must agree on what conflicts (an offline command, which
            # grants nothing, does not say)
            engine.store.fingerprint = engine.blast.digest()
            await engine.start()
        try:
            if app.relay is not None:
                await app.relay.start()
            if settle:
                from writ.api.lifecycle import settle_heap

                settle_heap()
            yield
        finally:
            if sentinel is not None:
                await sentinel.stop()
            if app.relay is not None:
                await app.relay.stop()
            if start_engine:
                if app.draining.is_set():  # a graceful shutdown: let outbound calls land
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(engine.caller.drain()), 5)
                await engine.stop()

    app = WritApp(
        engine,
        relay_dir,
        max_waits,
        max_headers,
        title="writ",
        version=__version__,
        summary="Vendor-neutral write authority for autonomous agents (protocol v1).",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN (a major version,
        # no integrity check) into writ's origin, where an operator pastes an admin token:
        # the schema is served (/openapi.json), a viewer of the operator's choosing reads it
        docs_url=None,
        redoc_url=None,
    )
    sentinel = Sentinel(engine, verify_every) if verify_every > 0 else None
    app.state.sentinel = sentinel
    measured = Metrics.for_engine(engine) if metrics else None
    if measured is not None:
        measured.sentinel = sentinel
    if app.relay is not None and handoff:
        token = hashlib.sha256(metrics_token.encode()).hexdigest() if metrics_token else None
        said = {"metrics": metrics, "metrics_token": token, "max_waits": max_waits}
        app.relay.handoff = Handoff(app.relay.directory, app.relay.identity, said)
        app.relay.handoff.on_gone = app.relay.writer_gone
    if measured is not None and app.relay is not None:
        measured.relay = app.relay  # writ_relay_calls_total, writ_relay_role
    app.ops = app.front = OpsFront(app.front, engine, measured, metrics_token)

    install_error_handlers(app)
    for router in ROUTERS:
        add_routes(app, router)
    for extend in EXTENSIONS:
        extend(app, engine, principal)
    install_openapi(app)
    return app
