"""``writ run``: hold a lease while a child command runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from writ.cli._helpers import (
    EXIT_LEASE_LOST,
    EXIT_NOT_FOUND,
    Failed,
    _before_wait,
    _client,
    _csv,
)
from writ.cli.commands.lease import _rollback_plan, lease_request_options
from writ.cli.options import FiniteSeconds, api_options
from writ.cli.spawn import Job
from writ.cli.wait import live_line
from writ.core.errors import LeaseLost
from writ.core.textsafe import printable
from writ.net.options import Seconds

SECONDS = Seconds(0, 3600)  # not inf either: a grace must end


# ----------------------------------------------------------------------------- writ run
@click.command()
@click.argument("resource")
@lease_request_options
@click.option(
    "--ttl",
    type=FiniteSeconds(),
    default=30,
    show_default=True,
    help="Lease ttl in seconds; renewed every ttl/3 while CMD runs.",
)
@click.option(
    "--wait",
    type=FiniteSeconds(),
    default=30,
    show_default=True,
    help="Seconds to wait in the queue for the lease.",
)
@click.option(
    "--grace",
    type=SECONDS,
    default=10,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when the lease is lost.",
)
@click.option(
    "--renew-every",
    type=SECONDS,
    default=None,
    metavar="SECONDS",
    help="Renewal interval (default ttl/3).",
)
@api_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    resource: str,
    intent: str,
    touches: str | None,
    consent_id: str | None,
    rollback_path: str | None,
    key_holder: str | None,
    override_queue: str | None,
    denominator: str | None,
    ttl: float,
    wait: float,
    grace: float,
    renew_every: float | None,
    url: str,
    token: str | None,
    command: tuple[str, ...],
) -> None:
    """Hold a lease on RESOURCE while COMMAND runs; stop COMMAND if the lease is lost.

    \b
        writ run prod/db --intent "resize" --ttl 30 -- examples/resize.sh 8

    COMMAND gets WRIT_LEASE_ID, WRIT_LOCK_KEY and WRIT_FENCING_TOKEN in its environment,
    WRIT_URL and WRIT_TOKEN as writ run used them, and none of writ's other credentials
    (WRIT_ADMIN_TOKEN, ...); it runs in a process group of its own. The lease is renewed
    every ttl/3 and released when COMMAND exits (what COMMAND left running is stopped
    first). If the lease is lost
    (revoked, expired, or not renewable before its expiry) COMMAND's whole process group
    gets SIGTERM, then SIGKILL after --grace seconds, and writ run exits 75. Otherwise it
    exits with COMMAND's status (128+N if a signal N killed it); 1 if the lease was refused,
    127 if COMMAND cannot be started. SIGTERM, SIGHUP and SIGINT sent to writ run are
    passed on to COMMAND's process group.
    """
    plan = _rollback_plan(rollback_path, key_holder, override_queue, denominator)
    wake = threading.Event()
    with _client(url, token) as client:
        me = _before_wait(client, url, token, resource, wait)
        with live_line(url, token, resource, wait, me):
            lease = client.lease(
                resource,
                intent,
                ttl_s=ttl,
                wait_s=wait,
                touches=_csv(touches),
                rollback=plan,
                consent_id=consent_id,
                renew_every=renew_every,
                on_lost=lambda _e: wake.set(),
                watch=True,  # a revoke stops COMMAND now, not at the next renewal
            )
            # renewals failing, COMMAND is stopped --grace before the server's expiry, so
            # its SIGKILL lands before another may be granted the resource (up to half the ttl)
            lease.margin_s = min(grace, ttl / 2)
            lease.acquire()
        if warning := (lease.data or {}).get("warning"):
            click.echo(printable(f"writ run: warning: {warning}"), err=True)
        try:
            # in a group of its own, dying with writ run even SIGKILLed: see writ.cli.spawn
            job = Job(command, env=_child_env(client.url, client.token, lease.env()))
        except OSError as exc:
            lease.close()
            raise Failed(
                f"cannot run {command[0]!r}: {exc.strerror or exc}", EXIT_NOT_FOUND
            ) from exc
        threading.Thread(
            target=job.reap, args=(wake.set,), name="writ-run-reap", daemon=True
        ).start()
        with _forward_signals(job):
            while not job.exited.is_set() and not lease.lost.is_set():
                wake.wait()
                wake.clear()
                if job.stopped.is_set():
                    job.suspend()
            if lease.lost.is_set():
                _stop(job, lease.error, grace)
            elif job.running():  # the command is done, what it started is not: the lease
                _stop_left(job, grace)  # is released only once nothing of it can write
            job.exited.wait()
            job.give_terminal_back()
        rc = job.returncode if job.returncode is not None else 1
        if lease.lost.is_set():
            with contextlib.suppress(LeaseLost):
                lease.close()  # stops renewing; nothing to release
            sys.exit(EXIT_LEASE_LOST)
        try:
            lease.close()
        except LeaseLost as exc:
            raise Failed(
                f"lease lost while {command[0]!r} ran: {exc.message}", EXIT_LEASE_LOST
            ) from exc
    sys.exit(rc if rc >= 0 else 128 - rc)


# credentials writ's commands read from the environment that COMMAND has no use for: the
# bootstrap admin's token (often exported in the shell that runs writ run for an agent),
# writ's own store (whoever holds its URL writes the ledger and the leases directly, around
# every rule), the metrics token, the webhook secret, the gate's and the MCP listener's tokens
KEPT_BACK = (
    "WRIT_ADMIN_TOKEN",
    "WRIT_STORE",
    "WRIT_METRICS_TOKEN",
    "WRIT_WEBHOOK_SECRET",
    "WRIT_GATE_TOKEN",
    "WRIT_MCP_HTTP_TOKEN",
)


def _child_env(url: str, token: str | None, lease: dict[str, str]) -> dict[str, str]:
    """writ run's environment for COMMAND, less :data:`KEPT_BACK`; ``WRIT_URL`` and
    ``WRIT_TOKEN`` are the server and the token writ run holds the lease with (so COMMAND
    can call writ as the holder: ``writ change``, ``writ fence``), and the lease's own."""
    env = {k: v for k, v in os.environ.items() if k not in KEPT_BACK and k != "WRIT_TOKEN"}
    env["WRIT_URL"] = url
    if token:
        env["WRIT_TOKEN"] = token
    return {**env, **lease}


def _stop(job: Job, error: LeaseLost | None, grace: float) -> None:
    why = printable(error.message) if error else "lease lost"
    if not job.running():
        click.echo(f"writ run: {why} (the command had already exited)", err=True)
        return
    click.echo(f"writ run: {why}; sending SIGTERM to pid {job.pid} and its process group", err=True)
    if job.stop(grace):
        click.echo(
            f"writ run: process group {job.pid} still running after {grace:g}s; SIGKILL",
            err=True,
        )


def _stop_left(job: Job, grace: float) -> None:
    click.echo(
        f"writ run: the command exited; processes it started still run (process group "
        f"{job.pid}): sending SIGTERM before the lease is released",
        err=True,
    )
    if job.stop(grace):
        click.echo(f"writ run: still running after {grace:g}s; SIGKILL", err=True)


@contextlib.contextmanager
def _forward_signals(job: Job) -> Iterator[None]:
    """Pass SIGTERM, SIGHUP and SIGINT on to the command's process group; Ctrl-Z (SIGTSTP,
    when writ run has the terminal) stops the group and writ run, and a continue goes on
    with both. SIGTTOU is ignored: writ run, in the background while the command has the
    terminal, may still write its notes to it and take the terminal back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        job.signal(signum)

    def suspend(signum: int, frame: Any) -> None:
        job.signal(signal.SIGTSTP)
        os.kill(os.getpid(), signal.SIGSTOP)
        job.signal(signal.SIGCONT)

    saved = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGTERM, forward),
            (signal.SIGHUP, forward),
            (signal.SIGINT, forward),
            (signal.SIGTSTP, suspend),
            (signal.SIGTTOU, signal.SIG_IGN),
        )
    }
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
