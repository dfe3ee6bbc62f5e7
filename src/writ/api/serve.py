"""``writ serve``: run the app under uvicorn until SIGTERM or SIGINT, with its logs, tracing,
the SIGHUP policy reload and a graceful shutdown (:mod:`writ.api.lifecycle`)."""

from __future__ import annotations

import logging
from typing import Any

from writ.api.app import create_app
from writ.api.middleware import MAX_HEADERS
from writ.api.waits import default_cap
from writ.engine import Engine
from writ.evidence.sentinel import DEFAULT_EVERY_S
from writ.net.limits import Limits

log = logging.getLogger("writ.server")


def uvicorn_options(
    host: str, port: int, log_level: str, limits: Limits | None = None, shutdown_timeout: int = 10
) -> dict[str, Any]:
    """How ``writ serve`` configures uvicorn: its own loggers and access log, the listener's
    ``limits`` (the protocol of :mod:`writ.net.limits`, whose hook answers the hot routes:
    nothing may wrap the app, so no proxy-header rewriting)."""
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": None,  # logs.setup configured uvicorn's loggers
        "access_log": False,  # writ.access logs each request instead
        "server_header": False,
        "proxy_headers": False,  # writ never uses the client's address: skip rewriting it
        "timeout_graceful_shutdown": shutdown_timeout,
        **(limits or Limits(max_header_bytes=MAX_HEADERS)).uvicorn_options(),
    }


def run(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 7411,
    policy_path: str | None = None,
    log_level: str = "info",
    limits: Limits | None = None,
    *,
    log_format: str = "console",
    shutdown_timeout: int = 10,
    metrics: bool = True,
    metrics_token: str | None = None,
    workers: int = 1,
    relay: str | None = None,
    max_waits: int | None = None,
    verify_every: float = DEFAULT_EVERY_S,
    handoff: bool = True,
) -> None:
    """Serve writ until SIGTERM or SIGINT (``writ serve``), then shut down gracefully
    (:mod:`writ.api.lifecycle`) within ``shutdown_timeout`` seconds, each connection within
    ``limits``; ``workers`` > 1 runs that many processes on one port (PostgreSQL stores
    only, :mod:`writ.api.workers`); ``relay`` is a directory in which the servers of this
    host elect one writer of leases (:mod:`writ.api.relay`; with ``workers``, one of their
    own unless ``"off"``); ``handoff``: the servers relaying to it hand it their connections
    while it has room (:mod:`writ.api.handoff`). Each principal may have ``max_waits``
    requests waiting at once on each process (by default a quarter of
    ``limits.max_connections``: :mod:`writ.api.waits`).
    Every ``verify_every`` seconds (0: never) the standing verify checks the rows written since
    and the tables (:mod:`writ.evidence.sentinel`)."""
    import os

    import uvicorn

    from writ.api.lifecycle import DrainingServer
    from writ.core.policy import load
    from writ.stores import open_store
    from writ.telemetry import logs, tracing

    policy = load(policy_path)
    secrets = [
        os.environ.get("WRIT_ADMIN_TOKEN"),
        os.environ.get("WRIT_WEBHOOK_SECRET"),
        policy.webhook_secret,
        metrics_token,
    ]
    logs.setup(log_format, log_level, [s for s in secrets if s])
    options = uvicorn_options(host, port, log_level, limits, shutdown_timeout)
    listener = options["http"].LIMITS
    if max_waits is None:  # of the connections the listener allows (below the file limit)
        max_waits = default_cap(listener.max_connections)
    if workers != 1:
        from writ.api.workers import AppSettings, run_workers

        settings = AppSettings(
            log_format,
            log_level,
            metrics,
            metrics_token,
            relay,
            max_waits,
            verify_every,
            handoff,
            listener.max_header_bytes,
        )
        run_workers(store_url, workers, policy_path, settings, **options)
        return
    traced = tracing.configure()
    engine = Engine(open_store(store_url), policy)
    engine.authority.on_sighup()  # SIGHUP reloads the policy file (see writ.rules.authority)
    if traced:
        tracing.instrument(engine)
        log.info("tracing on: OTEL_TRACES_EXPORTER=%s", traced)
    logs.log_decisions(engine)
    relay_dir = relay if relay != "off" else None
    app = create_app(
        engine,
        metrics=metrics,
        metrics_token=metrics_token,
        relay_dir=relay_dir,
        settle=True,
        max_waits=max_waits,
        verify_every=verify_every,
        handoff=handoff,
        max_headers=listener.max_header_bytes,
    )
    config = uvicorn.Config(app, **options)
    DrainingServer(config, app.draining).run()  # type: ignore[attr-defined]
