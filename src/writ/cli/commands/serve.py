"""``writ serve``: run the HTTP server."""

from __future__ import annotations

from typing import Any

import click

from writ.cli._helpers import (
    DEFAULT_KEY,
    DEFAULT_STORE,
)
from writ.cli.options import warn_of_flags
from writ.net.options import from_options, limit_options


@click.command()
@click.option(
    "--store",
    envvar="WRIT_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store URL: sqlite:///path/writ.db or postgresql://user@host:port/db [env WRIT_STORE].",
)
@click.option(
    "--host",
    envvar="WRIT_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on [env WRIT_HOST].",
)
@click.option(
    "--port",
    envvar="WRIT_PORT",
    type=int,
    default=7411,
    show_default=True,
    help="Port to listen on [env WRIT_PORT].",
)
@click.option(
    "--policy",
    envvar="WRIT_POLICY",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Policy file (TOML): blast-radius groups and per-prefix rules [env WRIT_POLICY].",
)
@click.option(
    "--log-level",
    envvar="WRIT_LOG_LEVEL",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
    help="Server log level; info logs one line per request and per decision [env WRIT_LOG_LEVEL].",
)
@limit_options(env_prefix="WRIT_")
@click.option(
    "--log-format",
    envvar="WRIT_LOG_FORMAT",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="Log lines for a terminal, or one JSON object per line [env WRIT_LOG_FORMAT].",
)
@click.option(
    "--shutdown-timeout",
    envvar="WRIT_SHUTDOWN_TIMEOUT",
    type=click.IntRange(1, 3600),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM: answer waiters 503, finish in-flight requests within this bound "
    "[env WRIT_SHUTDOWN_TIMEOUT].",
)
@click.option(
    "--metrics/--no-metrics",
    envvar="WRIT_METRICS",
    default=True,
    show_default=True,
    help="Measure and serve Prometheus metrics at /metrics [env WRIT_METRICS].",
)
@click.option(
    "--metrics-token",
    envvar="WRIT_METRICS_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on /metrics; 16 characters or more, or writ "
    "serve refuses to start. Give it as the variable: a flag is warned of, since every user of "
    "the host reads a command line [env WRIT_METRICS_TOKEN].",
)
@click.option(
    "--check",
    "check_only",
    envvar="WRIT_CHECK",
    is_flag=True,
    help="Validate the whole configuration (policy, store, address, logs, metrics token, "
    "tracing) and "
    "exit: 0, or 1 with the reasons [env WRIT_CHECK].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    envvar="WRIT_WORKERS",
    help="Server processes sharing the port (PostgreSQL stores only; docs/scaling.md) "
    "[env WRIT_WORKERS].",
)
@click.option(
    "--relay",
    default=None,
    metavar="DIR|off",
    envvar="WRIT_RELAY",
    help="Servers on this host given the same directory elect one writer and relay lease "
    "writes to it (PostgreSQL stores; on by default with --workers; docs/operations.md) "
    "[env WRIT_RELAY].",
)
@click.option(
    "--handoff/--no-handoff",
    envvar="WRIT_HANDOFF",
    default=True,
    show_default=True,
    help="With --relay (or --workers): a server relaying to the host's writer hands it each "
    "new connection while the writer is not busy, so the host's servers cost what one does "
    "(docs/operations.md) [env WRIT_HANDOFF].",
)
@click.option(
    "--max-waits-per-principal",
    "max_waits",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    envvar="WRIT_MAX_WAITS_PER_PRINCIPAL",
    help="Requests one principal may have waiting at once (queued acquires, long polls); "
    "one more is 503. Default: a quarter of --max-connections "
    "[env WRIT_MAX_WAITS_PER_PRINCIPAL].",
)
@click.option(
    "--verify-every",
    type=click.IntRange(0, 86_400),
    default=60,
    show_default=True,
    metavar="SECONDS",
    envvar="WRIT_VERIFY_EVERY",
    help="The standing verify: every SECONDS check the audit rows written since, and the "
    "leases and principals tables, as writ audit verify does; a break is an ERROR log line and "
    "writ_audit_verify_ok 0 (0: off; docs/security.md) [env WRIT_VERIFY_EVERY].",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    envvar="WRIT_CHECKPOINT_EVERY",
    help="Write a signed audit checkpoint every N rows [env WRIT_CHECKPOINT_EVERY].",
)
@click.option(
    "--checkpoint-key",
    default=DEFAULT_KEY,
    show_default=True,
    envvar="WRIT_CHECKPOINT_KEY",
    type=click.Path(dir_okay=False),
    help="Ed25519 key for the checkpoints [env WRIT_CHECKPOINT_KEY].",
)
@click.option(
    "--checkpoint-dir",
    default="writ-checkpoints",
    show_default=True,
    envvar="WRIT_CHECKPOINT_DIR",
    type=click.Path(file_okay=False),
    help="Where the checkpoints go [env WRIT_CHECKPOINT_DIR].",
)
def serve(
    store: str,
    host: str,
    port: int,
    policy: str | None,
    log_level: str,
    log_format: str = "console",
    shutdown_timeout: int = 10,
    metrics: bool = True,
    metrics_token: str | None = None,
    check_only: bool = False,
    workers: int = 1,
    relay: str | None = None,
    handoff: bool = True,
    max_waits: int | None = None,
    verify_every: int = 60,
    checkpoint_every: int | None = None,
    checkpoint_key: str = DEFAULT_KEY,
    checkpoint_dir: str = "writ-checkpoints",
    **limits: Any,
) -> None:
    """Serve the writ protocol over HTTP until SIGTERM/SIGINT, then shut down gracefully.

    If WRIT_ADMIN_TOKEN is set when the store is first opened, a principal `admin` (a human
    admin) is created with that token. Every option can also be set by its WRIT_*
    environment variable (docs/operations.md has the table).
    """
    from writ.api.workers import check_relay, check_workers
    from writ.stores import redact

    password = [("store", "the store URL's password", "WRIT_STORE, PGPASSWORD or ~/.pgpass")]
    metrics_flag = [("metrics_token", "the metrics token", "WRIT_METRICS_TOKEN")]
    warn_of_flags("writ serve", (password if redact(store) != store else []) + metrics_flag)
    from writ.core.errors import Invalid

    early: list[str] = []  # for --check: said among the other problems, not alone before them

    def checked(what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Invalid as exc:
            if not check_only:
                raise
            early.append(f"{what}: {exc.message}")
            return None

    if checkpoint_every:
        checked(
            "checkpoint key", install_checkpointer, checkpoint_key, checkpoint_dir, checkpoint_every
        )
    relay_dir = checked("relay", check_relay, store, relay) if relay is not None else None
    if check_only:
        from writ.api.lifecycle import check

        problems = early + check(
            store, host, port, policy, log_level, log_format, shutdown_timeout, metrics_token
        )
        problems += workers_problems(store, workers, checkpoint_every)
        for p in problems:
            click.echo(f"writ serve --check: {p}", err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"writ serve --check: ok ({store.split('://')[0]} store ready, {host}:{port})")
        return
    if metrics_token is not None and len(metrics_token) < 16:  # as --check says
        raise click.UsageError(
            "the metrics token is under 16 characters, short enough to guess: use 16 or more"
        )
    from writ.api import serve as api_serve  # looked up at call time (tests patch its `run`)

    check_workers(store, workers)
    extra: dict[str, Any] = {"workers": workers} if workers != 1 else {}
    if relay_dir is not None:
        extra["relay"] = relay_dir
    if max_waits is not None:
        extra["max_waits"] = max_waits
    if not handoff:
        extra["handoff"] = False
    api_serve.run(
        store,
        host,
        port,
        policy,
        log_level=log_level,
        log_format=log_format,
        shutdown_timeout=shutdown_timeout,
        metrics=metrics,
        metrics_token=metrics_token,
        limits=from_options(limits),
        verify_every=verify_every,
        **extra,
    )


def workers_problems(store: str, workers: int, checkpoint_every: int | None) -> list[str]:
    """What serving would refuse in ``--workers`` (as :func:`writ.api.workers.run_workers`
    does), for ``--check`` to name."""
    from writ.api.workers import check_workers
    from writ.core.errors import Invalid

    try:
        check_workers(store, workers)
    except Invalid as exc:
        return [f"workers: {exc.message}"]
    if workers > 1 and checkpoint_every:
        return [
            f"workers: --workers {workers} runs fresh processes that would not carry "
            "--checkpoint-every: run checkpoints from a single-process writ serve"
        ]
    return []


def install_checkpointer(key_path: str, directory: str, every: int) -> None:
    """Make every app built by :func:`writ.api.app.create_app` run a Checkpointer."""
    from writ.api import app as server
    from writ.evidence.checkpoint import Checkpointer, load_private_key

    key = load_private_key(key_path)  # fail at start, not at the first checkpoint

    def extend(app: Any, engine: Any, auth: Any) -> None:
        sentinel = getattr(app.state, "sentinel", None)  # the standing verify, when on
        app.state.checkpointer = Checkpointer(engine, key, directory, every, sentinel)

    server.EXTENSIONS.append(extend)
