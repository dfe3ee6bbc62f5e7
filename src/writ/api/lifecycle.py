"""Running ``writ serve``: its configuration check, and a graceful shutdown.

On SIGTERM (or SIGINT) :class:`DrainingServer` first marks the app as draining — every
waiting request (a queued acquire, an ``/v1/events`` or consent long-poll) ends at once
with 503 ``unavailable`` and ``Retry-After``, a queued acquire leaving the queue with a row
of its own — then stops accepting connections, lets in-flight requests and their
transactions finish, waits (bounded) for outbound calls in flight to record their outcome,
and closes the store. All of it within ``--shutdown-timeout`` seconds; what is still
running then is cancelled (uvicorn's own bound).

:func:`check` validates a whole ``writ serve`` configuration without serving
(``writ serve --check``): the reasons it finds, or none.

:func:`settle_heap` tunes Python's cycle collector for a server, once it has started.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from typing import Any

import uvicorn

log = logging.getLogger("writ.server")

# The cycle collector's thresholds while serving: a young-generation pass per 10,000 net
# new container objects instead of CPython's 700 (nearly all of a request's objects are
# freed by reference counting before any pass); the older generations' ratios as CPython's.
# Tuned and measured on CPython 3.11 (3.12 and 3.13 collect the same way); 3.14's incremental
# collector reads these numbers differently.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_heap() -> None:
    """Once a server has started: what it built to serve (modules, routes, schemas, the
    engine, the store's pool) lives as long as the process, so the cycle collector stops
    walking it (:func:`gc.freeze`), and walks the young generation less often
    (:data:`GC_THRESHOLDS`). Measured (bench/RESULTS.md, ninth look): a full collection of
    a started server's heap took ~30 ms, once a second at 16 clients, and was their p99;
    collecting took 11 % of the server's CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info(
        "heap settled: %d objects built at startup frozen, collector thresholds %s",
        gc.get_freeze_count(),
        GC_THRESHOLDS,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining waiting requests before its own graceful shutdown, and
    lending the write relay's hand-off (:mod:`writ.api.handoff`) its listener: a connection
    another server hands over is served as one this server accepted. ``draining`` is the
    app's event (None: read from the app once loaded, as in each of ``--workers``)."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event | None = None) -> None:
        super().__init__(config)
        self.draining = draining
        self._adopting: set[asyncio.Task[None]] = set()
        self._handoff: Any = None  # the relay's hand-off, once lent the listener

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.loaded_app
        for _ in range(4):  # under uvicorn's own wrappers, if any (trace logging)
            if hasattr(app, "draining"):
                break
            app = getattr(app, "app", None)
        if self.draining is None and app is not None:
            self.draining = getattr(app, "draining", None)
        handoff = getattr(getattr(app, "relay", None), "handoff", None)
        protocol = self.config.http_protocol_class
        limits = getattr(protocol, "LIMITS", None)
        if handoff is not None and limits is not None:
            handoff.attach(
                self._adopt,
                lambda: len(self.server_state.connections) + len(self._adopting),
                limits.max_connections,
                {"limits": repr(limits), "keep_alive": self.config.timeout_keep_alive},
            )
            protocol.OFFER = handoff.offer  # type: ignore[attr-defined]
            self._handoff = handoff
        await super().startup(sockets)

    def _adopt(self, sock: socket.socket, first: bytes, late: float = 0.0) -> None:
        """Serve ``sock``, a connection another server accepted ``late`` seconds ago and
        handed over having read ``first`` from it, as one this server accepted: its
        protocol, limits (its head's deadline running from then) and graceful shutdown."""
        config = self.config
        made = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )
        made._adopted, made._read_there = True, first  # type: ignore[attr-defined]
        made._late = late  # type: ignore[attr-defined]
        task = asyncio.get_running_loop().create_task(_serve(sock, made))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info(
            "draining: waiting requests answer 503, in-flight ones finish (at most %gs)",
            self.config.timeout_graceful_shutdown or 0,
        )
        if self.draining is not None:
            self.draining.set()
        # No more handed connections, and those handed already are connections before
        # uvicorn shuts each down: one adopted after that would be kept alive past its
        # answer (the drain waiting on it), one left unread on the hand-off socket closed
        # unanswered.
        if self._handoff is not None:
            self._handoff.stop_listening()
        if self._adopting:
            await asyncio.wait(list(self._adopting), timeout=1.0)
        await super().shutdown(sockets)


async def _serve(sock: socket.socket, protocol: asyncio.Protocol) -> None:
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
    except OSError as exc:  # gone before it was served: its client connects again
        sock.close()
        log.warning("hand-off: a handed connection could not be served: %s", exc)


def check(
    store_url: str,
    host: str,
    port: int,
    policy_path: str | None,
    log_level: str = "info",
    log_format: str = "console",
    shutdown_timeout: float = 10.0,
    metrics_token: str | None = None,
) -> list[str]:
    """Every reason the configuration would not serve, checked without serving: the policy
    file, the store (opened, reachable, its schema at this writ's migration), the listen
    address, the log settings, the shutdown bound, the tracing environment."""
    from writ.core.errors import PolicyError, WritError
    from writ.core.policy import load
    from writ.stores import open_store, redact
    from writ.telemetry import tracing
    from writ.telemetry.logs import FORMATS

    problems: list[str] = []
    try:
        load(policy_path)
    except PolicyError as exc:
        problems.append(f"policy: {exc}")
    except OSError as exc:
        problems.append(f"policy: cannot read {policy_path}: {exc.strerror}")
    if log_format not in FORMATS:
        problems.append(f"log format {log_format!r}: use one of {', '.join(FORMATS)}")
    if log_level.upper() not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        problems.append(f"log level {log_level!r}: use critical, error, warning, info or debug")
    if not 0 < shutdown_timeout <= 3600:
        problems.append(f"shutdown timeout {shutdown_timeout:g}s: give 0 < seconds <= 3600")
    if metrics_token is not None and len(metrics_token) < 16:
        problems.append("metrics token: use at least 16 characters")
    if not 0 < port < 65536:
        problems.append(f"port {port}: give 1-65535")
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(infos[0][4])
        except OSError as exc:
            problems.append(f"listen {host}:{port}: {exc.strerror or exc}")
    if tracing.wanted():
        try:
            _check_tracing()
        except RuntimeError as exc:
            problems.append(f"tracing: {exc}")

    async def store_ready() -> str | None:
        store = open_store(store_url)
        try:
            await store.open()
        except WritError as exc:
            return exc.message
        try:
            return await store.ready()
        finally:
            await store.close()

    try:
        reason = asyncio.run(store_ready())
    except WritError as exc:
        reason = exc.message
    except Exception as exc:  # a driver that is not installed, a malformed URL
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        problems.append(f"store {redact(store_url)}: {reason}")
    return problems


def _check_tracing() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_* asks for traces but the SDK is not installed: pip install 'writ[otel]'"
        ) from exc
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter not in ("otlp", "console"):
        raise RuntimeError(f"OTEL_TRACES_EXPORTER={exporter!r}: writ supports otlp, console, none")
