"""The ``writ`` command line (``docs/cli.md``): a thin click layer over the client.

Commands talk to a server through :class:`writ.client.Client` (``--url``/``--token``, or
``WRIT_URL``/``WRIT_TOKEN``); ``--store URL`` on ``principal add`` and ``audit verify|export``
works on a store directly, offline, through the engine.

Exit codes: :data:`EXIT_STATUS` is the one table (docs/cli.md shows it, `writ --help` prints
it, and a test holds the three together).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click

from writ._version import __version__
from writ.cli._helpers import (
    _client,
    _csv,
    _echo_json,
    _items,
    _json_or_text,
    _lease_line,
    _run_offline,
    _table,
    _until,
)
from writ.cli.commands.principal import expires_option, parse_expires
from writ.cli.commands.principal import register as register_principal_commands
from writ.cli.options import api_options, existing_store, json_option, store_option
from writ.cli.spawn import popen_tied
from writ.cli.wait import SelfHeld, check_not_self, live_line
from writ.client import Client
from writ.core.errors import Held, Invalid, LeaseLost, WritError
from writ.core.models import KINDS
from writ.core.textsafe import printable
from writ.net.limits import from_options, limit_options

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 3
EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: the work was cut short; acquire again and retry
EXIT_NOT_FOUND = 127
DEFAULT_STORE = "sqlite:///writ.db"

EXIT_STATUS: dict[str, str] = {
    "0": "done",
    "1": "refused or failed: one line `writ: CODE: message` on stderr, no traceback",
    "2": "usage error: a missing argument or option, or a bad value (`invalid` naming a "
    "field, e.g. --ttl 0)",
    "3": "`consent ask --wait`: nobody answered in time",
    "75": "`writ run`: the lease was lost while COMMAND ran, and COMMAND was stopped",
    "127": "`writ run`: COMMAND could not be started",
    "N": "`writ run`: COMMAND's own exit status, or 128 + signal if a signal killed it",
}

# the CLI option that carries a request field, for `invalid` answers naming the field
FIELD_OPTIONS = {
    "ttl_s": "--ttl",
    "wait_s": "--wait",
    "touches": "--touches",
    "consent_id": "--consent",
    "intent": "--intent",
    "protect_s": "--protect",
    "at": "--at",
}

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ----------------------------------------------------------------------------- errors
class Refused(click.ClickException):
    """A :class:`WritError` shown as one line on stderr, exit status 1."""

    exit_code = EXIT_REFUSED

    def __init__(self, error: WritError, hint: dict[str, Any] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.hint = hint or {}
        field = error.details.get("field") if isinstance(error, Invalid) else None
        self.option = FIELD_OPTIONS.get(field) if isinstance(field, str) else None
        if field:  # a bad value of a named input is a usage error
            self.exit_code = EXIT_USAGE  # type: ignore[misc]  # click reads it from the instance

    def show(self, file: IO[Any] | None = None) -> None:
        text = self.error.phrased("cli", **self.hint)  # the next step as a command and flag
        if self.option:
            text += f" (option {self.option})"
        click.echo(printable(f"writ: {self.error.code}: {text}"), err=True)


class Failed(click.ClickException):
    """A local failure with a chosen exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it from the instance

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(printable(f"writ: {self.message}"), err=True)


class WritGroup(click.Group):
    """The top group: every :class:`WritError` raised below it becomes :class:`Refused`.
    (Subcommands inherit ``CONTEXT`` from it.)"""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WritError as exc:
            raise Refused(exc, _hint_context(ctx, exc)) from exc


def _hint_context(ctx: click.Context, exc: WritError) -> dict[str, Any]:
    """What the CLI phrasing of a refusal needs: the resource asked for, the seconds already
    waited, and (for a held answer) the caller's own name, so "held by you" is said plainly."""
    hint: dict[str, Any] = dict(ctx.meta.get("writ.hint") or {})
    api = hint.pop("api", None)
    if isinstance(exc, Held) and "me" not in hint and api:
        with contextlib.suppress(WritError), _client(*api) as client:
            hint["me"] = client.whoami().get("name")
    return hint


def _before_wait(
    client: Client, url: str, token: str | None, resource: str, wait: float
) -> str | None:
    """Record the hint context; when the command will wait, refuse at once if the caller
    itself holds what it would wait for. Returns the caller's name when it was read."""
    hint: dict[str, Any] = {"resource": resource, "waited": wait, "api": (url, token)}
    click.get_current_context().meta["writ.hint"] = hint
    if wait <= 0:
        return None
    try:
        me = check_not_self(client, resource)
    except SelfHeld as exc:
        raise Failed(str(exc)) from exc
    if me:
        hint["me"] = me
    return me


# ----------------------------------------------------------------------------- the group
@click.group(cls=WritGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="writ")
def main() -> None:
    """writ: which agent holds write authority on a resource right now, and who holds the
    key to undo it.

    Server URL and token come from --url/--token or WRIT_URL/WRIT_TOKEN.
    """


main.epilog = "\b\nExit status:\n" + "\n".join(
    f"  {code:>4}  {meaning.replace('`', '')}" for code, meaning in EXIT_STATUS.items()
)


@main.command()
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
    help="Require 'Authorization: Bearer TOKEN' on /metrics [env WRIT_METRICS_TOKEN].",
)
@click.option(
    "--check",
    "check_only",
    envvar="WRIT_CHECK",
    is_flag=True,
    help="Validate the whole configuration (policy, store, address, logs, tracing) and "
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
    **limits: Any,
) -> None:
    """Serve the writ protocol over HTTP until SIGTERM/SIGINT, then shut down gracefully.

    If WRIT_ADMIN_TOKEN is set when the store is first opened, a principal `admin` (a human
    admin) is created with that token. Every option can also be set by its WRIT_*
    environment variable (docs/operations.md has the table).
    """
    if check_only:
        from writ.lifecycle import check

        problems = check(
            store, host, port, policy, log_level, log_format, shutdown_timeout, metrics_token
        )
        for p in problems:
            click.echo(f"writ serve --check: {p}", err=True)
        if problems:
            raise SystemExit(1)
        click.echo(f"writ serve --check: ok ({store.split('://')[0]} store ready, {host}:{port})")
        return
    from writ.server import run
    from writ.workers import check_workers

    check_workers(store, workers)
    extra = {"workers": workers} if workers != 1 else {}
    run(
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
        **extra,
    )


@main.group()
def policy() -> None:
    """Check policy files, explain what a principal may do, reload a server's policy."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@store_option("Check the grants' principal names against this store (e.g. sqlite:///writ.db).")
@json_option
def policy_check(file: str, store: str | None, as_json: bool) -> None:
    """Read policy FILE as `writ serve --policy FILE` would: exit 0 and summarise it, or
    exit 1 with FILE:LINE: reason. Grants are listed with their lines; overlapping grants
    are explained, and with --store unknown principals are warned of."""
    from writ.cli.commands.policy import authority_lines
    from writ.core.policy import load

    pol = load(file)
    if as_json:
        _echo_json(pol.to_dict())
        return
    groups = pol.blast.groups
    click.echo(f"{file}: ok — {len(groups)} blast-radius group(s), {len(pol.rules)} rule(s)")
    for names, members in groups:
        click.echo(f"  group {'+'.join(sorted(names))}: {', '.join(members)}")
    for r in pol.rules:
        click.echo(
            f"  rule {r.prefix or '(everything)'}: protect_s={r.protect_s:g} max_hold_s="
            f"{'-' if r.max_hold_s is None else f'{r.max_hold_s:g}'} page_after_s={r.page_after_s:g} "
            f"lock_delay_s={r.lock_delay_s:g} consent_timeout_s={r.consent_timeout_s:g}"
        )
    for line in authority_lines(pol, store):
        click.echo(line, err=line.startswith("warning:"))


# ----------------------------------------------------------------------------- principals
@main.group()
def principal() -> None:
    """Register and list principals (agents, humans, queues, portals)."""


@principal.command("add")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    required=True,
    help="agent, human, queue (an on-call queue with a rotation) or portal (a vendor UI).",
)
@click.option("--vendor", default=None, help="Who ships this principal (for agents and portals).")
@click.option(
    "--wake",
    default=None,
    metavar="ROUTE",
    help="The exact call that wakes it: an http(s):// URL, a /route, pagerduty:ROUTING_KEY "
    "or slack:WEBHOOK_URL (docs/operations.md).",
)
@click.option("--admin", is_flag=True, help="May add principals (humans and queues only).")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="Humans: a queue whose rotation it is on (repeatable); members may turn its keys.",
)
@expires_option
@store_option("Work offline on this store (e.g. sqlite:///writ.db) instead of through a server.")
@api_options
@json_option
@click.option(
    "-q", "--quiet", is_flag=True, help="Print only the token (export WRIT_TOKEN=$(...))."
)
def principal_add(
    name: str,
    kind: str,
    vendor: str | None,
    wake: str | None,
    admin: bool,
    queues: tuple[str, ...],
    expires_in: str | None,
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Add principal NAME and print its token (shown only this once).

    Through a server this needs an admin token; with --store it works on the store itself.
    """
    secs = parse_expires(expires_in)
    if store:

        async def add(engine: Any) -> dict[str, Any]:
            p, tok = await engine.add_principal(
                None, name, kind, vendor, wake, admin, queues=list(queues), expires_in_s=secs
            )
            return {**p.to_dict(), "token": tok}

        out = _run_offline(store, add)
    else:
        with _client(url, token) as client:
            out = client.add_principal(name, kind, vendor, wake, admin, list(queues), secs)
    if quiet:
        click.echo(out["token"])
        return
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"added {out.get('kind')} {out.get('name')}" + (" (admin)" if admin else ""))
        click.echo(f"token: {out['token']}")
    click.echo(
        "This token is shown only once: store it now (e.g. export WRIT_TOKEN=...). "
        "writ keeps only its hash.",
        err=True,
    )


register_principal_commands(principal)


@principal.command("list")
@api_options
@json_option
def principal_list(url: str, token: str | None, as_json: bool) -> None:
    """List principals (never their tokens)."""
    with _client(url, token) as client:
        body = client.principals()
    if as_json:
        _echo_json(body)
        return
    _table(
        ["NAME", "KIND", "VENDOR", "WAKE", "ADMIN", "QUEUES", "STATE"],
        drop=["WAKE", "VENDOR"],
        rows=[
            (
                p.get("name"),
                p.get("kind"),
                p.get("vendor"),
                p.get("wake"),
                "yes" if p.get("admin") else "",
                ", ".join(p.get("queues") or []),
                "disabled"
                if p.get("disabled")
                else (f"expires {p['token_expires_at']}" if p.get("token_expires_at") else ""),
            )
            for p in _items(body, "principals")
        ],
    )


# ----------------------------------------------------------------------------- leases
def _rollback_plan(
    path: str | None, key_holder: str | None, override_queue: str | None, denominator: str | None
) -> dict[str, Any] | None:
    if not any((path, key_holder, override_queue, denominator)):
        return None
    plan = {
        "allowed": bool(path),
        "path": path,
        "key_holder": key_holder,
        "override_queue": override_queue,
        "denominator": denominator,
    }
    return {k: v for k, v in plan.items() if v is not None}


def lease_request_options(f: F) -> F:
    """Options shared by ``writ acquire`` and ``writ run``."""
    for opt in reversed(
        [
            click.option("--intent", required=True, help="What you will change, in a few words."),
            click.option(
                "--touches",
                default=None,
                metavar="A,B",
                help="Attributes you will change (comma-separated; default every attribute, *).",
            ),
            click.option(
                "--consent",
                "consent_id",
                default=None,
                metavar="CONSENT_ID",
                help="A granted consent to undo another agent's protected change.",
            ),
            click.option(
                "--rollback-path",
                default=None,
                metavar="ROUTE",
                help="Literal route that rolls this change back (/path or http(s):// URL).",
            ),
            click.option(
                "--key-holder",
                default=None,
                metavar="QUEUE",
                help="Human queue that holds the rollback key.",
            ),
            click.option(
                "--override-queue",
                default=None,
                metavar="QUEUE",
                help="Human queue to page if this lease gets stuck.",
            ),
            click.option(
                "--denominator",
                default=None,
                help="What a rollback is measured in (e.g. incident_minutes).",
            ),
        ]
    ):
        f = opt(f)
    return f


@main.command()
@click.argument("resource")
@lease_request_options
@click.option("--ttl", type=float, default=30, show_default=True, help="Lease ttl in seconds.")
@click.option(
    "--wait",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to wait in the FIFO queue while it is held.",
)
@api_options
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the lease id.")
def acquire(
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
    url: str,
    token: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Acquire write authority on RESOURCE and print the lease.

    The lease is not renewed by this command: renew it (writ renew) before its ttl runs
    out, or use `writ run` to hold it while a command runs.
    """
    plan = _rollback_plan(rollback_path, key_holder, override_queue, denominator)
    with _client(url, token) as client:
        me = _before_wait(client, url, token, resource, wait)
        with live_line(url, token, resource, wait, me):
            lease = client.acquire(resource, intent, ttl, wait, _csv(touches), consent_id, plan)
    if quiet:
        click.echo(lease["lease_id"])
    elif as_json:
        _echo_json(lease)
    else:
        click.echo(_lease_line("granted", lease))
        for warning in (lease.get("rollback") or {}).get("warnings") or []:
            click.echo(printable(f"warning: {warning}"), err=True)
    if lease.get("warning"):
        click.echo(printable(f"writ: warning: {lease['warning']}"), err=True)


@main.command()
@click.argument("lease_id")
@click.option("--ttl", type=float, default=None, help="New ttl in seconds (default: its own).")
@api_options
@json_option
def renew(lease_id: str, ttl: float | None, url: str, token: str | None, as_json: bool) -> None:
    """Renew lease LEASE_ID for another ttl (410 lease_lost once it is gone)."""
    with _client(url, token) as client:
        lease = client.renew(lease_id, ttl)
    _echo_json(lease) if as_json else click.echo(_lease_line("renewed", lease))


@main.command()
@click.argument("lease_id")
@api_options
@json_option
def release(lease_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Release lease LEASE_ID (the next waiter is served at once)."""
    with _client(url, token) as client:
        lease = client.release(lease_id)
    _echo_json(lease) if as_json else click.echo(_lease_line("released", lease))


@main.command()
@click.argument("lease_id")
@click.option("--runbook", required=True, help="The runbook followed (e.g. R-44).")
@click.option("--paged", required=True, help="Who was paged before revoking.")
@click.option("--reason", required=True, help="Why the lease is force-released.")
@click.option(
    "--waive-lock-delay",
    is_flag=True,
    help="Let the next holder in at once instead of after the policy's lock-delay.",
)
@api_options
@json_option
def revoke(
    lease_id: str,
    runbook: str,
    paged: str,
    reason: str,
    waive_lock_delay: bool,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Force-release lease LEASE_ID (humans and queues only), recording the provenance."""
    with _client(url, token) as client:
        lease = client.revoke(lease_id, runbook, paged, reason, waive_lock_delay)
    _echo_json(lease) if as_json else click.echo(_lease_line("revoked", lease))


@main.command()
@click.argument("prefix", required=False)
@api_options
@json_option
def status(prefix: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Show held leases under PREFIX (default: everywhere) with their waiters."""
    with _client(url, token) as client:
        leases = _items(client.status(prefix), "leases")
    if as_json:
        _echo_json({"leases": leases})
        return
    if not leases:
        click.echo(f"no leases held under {prefix}" if prefix else "no leases held")
        return
    _table(
        ["RESOURCE", "HOLDER", "INTENT", "FENCING TOKEN", "EXPIRES", "WAITERS"],
        wrap=["INTENT"],
        drop=["WAITERS", "FENCING TOKEN"],
        rows=[
            (
                l.get("resource"),
                l.get("holder"),
                l.get("intent"),
                l.get("fencing_token"),
                _until(l.get("expires_at")),
                l.get("waiters"),
            )
            for l in leases
        ],
    )


@main.command()
@click.argument("resource")
@click.option(
    "--at",
    default=None,
    metavar="TIME",
    help="RFC 3339 time, epoch seconds, now, or a time ago (-15m, -2h, -1d); default now.",
)
@api_options
@json_option
def who(resource: str, at: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Who held write authority on RESOURCE (now, or --at a past time), from the ledger."""
    if at:
        from writ.core.clock import parse_time

        try:
            parse_time(at)  # read here too, so a bad value is a usage error listing the forms
        except WritError as exc:
            raise click.BadParameter(exc.message, param_hint="--at") from exc
    with _client(url, token) as client:
        out = client.who(resource, at)
    if as_json:
        _echo_json(out)
        return
    from writ.cli.table import print_line  # wrapped between words at the console's width

    holder = out.get("lock_holder", "none")
    if holder == "none":
        print_line(f"{resource} at {out.get('at')}: nobody (lock_holder none)")
    else:
        lease = out.get("lease") or {}
        print_line(
            f"{resource} at {out.get('at')}: {holder} (lock key {out.get('lock_key')}"
            + (f", intent {lease['intent']!r}" if lease.get("intent") else "")
            + ")"
        )


@main.command()
@click.argument("resource")
@click.argument("fencing_token", type=int)
@api_options
@json_option
def fence(resource: str, fencing_token: int, url: str, token: str | None, as_json: bool) -> None:
    """Exit 0 if FENCING_TOKEN is the current token on RESOURCE, else 1."""
    with _client(url, token) as client:
        out = client.fence(resource, fencing_token)
    if as_json:
        _echo_json(out)
    else:
        click.echo(
            f"{'current' if out.get('current') else 'stale'}: current token on {resource} is "
            f"{out.get('current_token')}"
        )
    if not out.get("current"):
        sys.exit(EXIT_REFUSED)


# ----------------------------------------------------------------------------- writ run
@main.command()
@click.argument("resource")
@lease_request_options
@click.option(
    "--ttl",
    type=float,
    default=30,
    show_default=True,
    help="Lease ttl in seconds; renewed every ttl/3 while CMD runs.",
)
@click.option(
    "--wait",
    type=float,
    default=30,
    show_default=True,
    help="Seconds to wait in the queue for the lease.",
)
@click.option(
    "--grace",
    type=float,
    default=10,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when the lease is lost.",
)
@click.option(
    "--renew-every",
    type=float,
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

    COMMAND gets WRIT_LEASE_ID, WRIT_LOCK_KEY and WRIT_FENCING_TOKEN in its environment.
    The lease is renewed every ttl/3 and released when COMMAND exits. If the lease is lost
    (revoked, expired, or not renewable before its expiry) COMMAND gets SIGTERM, then
    SIGKILL after --grace seconds, and writ run exits 75. Otherwise it exits with COMMAND's
    status (128+N if a signal N killed it); 1 if the lease was refused, 127 if COMMAND
    cannot be started. SIGTERM and SIGHUP sent to writ run are passed on to COMMAND.
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
            ).acquire()
        if warning := (lease.data or {}).get("warning"):
            click.echo(printable(f"writ run: warning: {warning}"), err=True)
        try:
            # dies with writ run, even SIGKILLed (Linux): see writ.spawn
            proc = popen_tied(command, env={**os.environ, **lease.env()})
        except OSError as exc:
            lease.close()
            raise Failed(
                f"cannot run {command[0]!r}: {exc.strerror or exc}", EXIT_NOT_FOUND
            ) from exc

        def reap() -> None:
            proc.wait()
            wake.set()

        threading.Thread(target=reap, name="writ-run-reap", daemon=True).start()
        with _forward_signals(proc):
            while proc.poll() is None and not lease.lost.is_set():
                wake.wait()
                wake.clear()
            if lease.lost.is_set():
                _stop_child(proc, lease.error, grace)
        rc = proc.wait()
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


def _stop_child(proc: subprocess.Popen[bytes], error: LeaseLost | None, grace: float) -> None:
    why = error.message if error else "lease lost"
    if proc.poll() is not None:
        click.echo(f"writ run: {why} (the command had already exited)", err=True)
        return
    click.echo(f"writ run: {why}; sending SIGTERM to pid {proc.pid}", err=True)
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        click.echo(f"writ run: pid {proc.pid} still running after {grace:g}s; SIGKILL", err=True)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass SIGTERM and SIGHUP on to the child; Ctrl-C reaches it from the terminal, so
    writ run itself ignores SIGINT and waits for the child to finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    saved = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGTERM, forward),
            (signal.SIGHUP, forward),
            (signal.SIGINT, signal.SIG_IGN),
        )
    }
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- audit
@main.group()
def audit() -> None:
    """Check and export the hash-chained audit log."""


@audit.command("verify")
@store_option("Verify this store directly, offline (e.g. sqlite:///writ.db).")
@api_options
@json_option
def audit_verify(store: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Recompute the audit hash chain; name the first bad row and exit 1 if broken."""
    if store:

        async def check(engine: Any) -> dict[str, Any]:
            return dict((await engine.verify()).to_dict())

        out = _run_offline(existing_store(store), check)
    else:
        with _client(url, token, timeout=600.0) as client:
            out = client.verify()
    if as_json:
        _echo_json(out)
    elif out.get("ok"):
        click.echo(f"ok: {out.get('rows')} rows, head {out.get('head')}")
    else:
        reason = f": {out['reason']}" if out.get("reason") else ""
        click.echo(
            f"BROKEN at seq {out.get('first_bad_seq')}{reason} "
            f"({out.get('rows')} rows verified before it)",
            err=True,
        )
    if not out.get("ok"):
        sys.exit(EXIT_REFUSED)


@audit.command("export")
@click.option("--after-seq", type=int, default=0, show_default=True, help="Start after this seq.")
@click.option(
    "--resource", default=None, metavar="PREFIX", help="Only rows on this resource or below it."
)
@click.option("--since", default=None, metavar="TIME", help="Only rows at or after this time.")
@click.option("--until", default=None, metavar="TIME", help="Only rows at or before this time.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to FILE instead of stdout.",
)
@store_option("Export from this store directly, offline (e.g. sqlite:///writ.db).")
@api_options
def audit_export(
    after_seq: int,
    resource: str | None,
    since: str | None,
    until: str | None,
    out_path: str | None,
    store: str | None,
    url: str,
    token: str | None,
) -> None:
    """Export audit rows as JSON Lines, one row per line, in seq order."""
    with (
        open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout)
    ) as out:
        if store:
            n = _export_offline(existing_store(store), after_seq, resource, since, until, out)
        else:
            n = 0
            with _client(url, token, timeout=60.0) as client:
                for row in client.iter_audit(after_seq, resource, since, until, page=10_000):
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
    if out_path:
        click.echo(f"exported {n} rows to {out_path}", err=True)


def _export_offline(
    store_url: str,
    after_seq: int,
    prefix: str | None,
    since: str | None,
    until: str | None,
    out: IO[str],
) -> int:
    from writ.core.clock import parse_time, rfc3339
    from writ.core.ledger import row_from
    from writ.core.resources import under, validate

    if prefix:
        validate(prefix, "resource")
    lo = rfc3339(parse_time(since)) if since else None
    hi = rfc3339(parse_time(until)) if until else None

    async def export(engine: Any) -> int:
        n = 0
        async for chunk in engine.store.audit_stream(after_seq):
            for _seq, body, hash_ in chunk:
                row = row_from(body, hash_)
                if prefix and not under(str(row.get("resource") or ""), prefix):
                    continue
                if (lo and row["timestamp"] < lo) or (hi and row["timestamp"] > hi):
                    continue
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        return n

    return _run_offline(store_url, export)


# ----------------------------------------------------------------------------- changes
@main.command()
@click.argument("lease_id")
@click.option("--attribute", required=True, help="The attribute changed (e.g. capacity).")
@click.option(
    "--summary", required=True, help="What changed, in a few words (e.g. 'capacity 4→8')."
)
@click.option("--before", default=None, help="Value before (JSON, or a plain string).")
@click.option("--after", default=None, help="Value after (JSON, or a plain string).")
@click.option(
    "--protect",
    "protect_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Revert-protection window (default: the policy's protect_s).",
)
@api_options
@json_option
def change(
    lease_id: str,
    attribute: str,
    summary: str,
    before: str | None,
    after: str | None,
    protect_s: float | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Record a change made under lease LEASE_ID; it is protected from other agents' undo."""
    with _client(url, token) as client:
        out = client.change(
            lease_id, attribute, summary, _json_or_text(before), _json_or_text(after), protect_s
        )
    if as_json:
        _echo_json(out)
    else:
        click.echo(
            printable(
                f"recorded change {out.get('change_id')} on {out.get('resource')}: {summary} "
                f"(protected until {out.get('protected_until')})"
            )
        )


@main.group()
def consent() -> None:
    """Ask for, answer and follow consent to undo another agent's protected change."""


def _consent_line(c: dict[str, Any]) -> str:
    line = (
        f"consent {c.get('consent_id')} {c.get('status')}: {c.get('requester')} asks "
        f"{c.get('author')} (change {c.get('change_id')})"
    )
    if c.get("answered_by"):
        line += f", answered by {c['answered_by']}"
    elif c.get("status") == "expired":
        line += f", nobody answered; escalated to {c.get('escalated_to')}"
    else:
        line += f", answer by {c.get('expires_at')}"
    return printable(line)


@consent.command("ask")
@click.argument("change_id")
@click.option("--reason", required=True, help="Why you need to undo the change.")
@click.option(
    "--wait",
    type=float,
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for an answer (exit 0 granted, 1 denied, 3 no answer).",
)
@api_options
@json_option
def consent_ask(
    change_id: str, reason: str, wait: float, url: str, token: str | None, as_json: bool
) -> None:
    """Ask the author of change CHANGE_ID for consent to undo it."""
    with _client(url, token) as client:
        c = client.ask_consent(change_id, reason)
        deadline = time.monotonic() + wait
        while wait and c.get("status") == "pending":
            left = deadline - time.monotonic()
            if left <= 0:
                break
            c = client.consent(c["consent_id"], wait_s=min(left, 300))
    _echo_json(c) if as_json else click.echo(_consent_line(c))
    if wait:
        status_ = c.get("status")
        if status_ == "denied":
            sys.exit(EXIT_REFUSED)
        if status_ not in ("granted", "used"):
            sys.exit(EXIT_NO_ANSWER)


def _answer_consent(grant: bool) -> Callable[..., None]:
    def answer(consent_id: str, url: str, token: str | None, as_json: bool) -> None:
        with _client(url, token) as client:
            c = client.grant_consent(consent_id) if grant else client.deny_consent(consent_id)
        _echo_json(c) if as_json else click.echo(_consent_line(c))

    return answer


for _verb, _grant in (("grant", True), ("deny", False)):
    consent.command(
        _verb,
        help=f"{_verb.capitalize()} consent CONSENT_ID (the change's author, or a human/queue; "
        "once expired and escalated, only its override queue or a human member of it).",
    )(click.argument("consent_id")(api_options(json_option(_answer_consent(_grant)))))


@consent.command("show")
@click.argument("consent_id")
@click.option(
    "--wait",
    type=float,
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Long-poll this long while it is pending.",
)
@api_options
@json_option
def consent_show(consent_id: str, wait: float, url: str, token: str | None, as_json: bool) -> None:
    """Show consent CONSENT_ID."""
    with _client(url, token) as client:
        c = client.consent(consent_id, wait_s=min(wait, 300))
    _echo_json(c) if as_json else click.echo(_consent_line(c))


# ----------------------------------------------------------------------------- rollbacks
@main.group()
def rollback() -> None:
    """Request rollbacks; approve or deny them with the human-held key."""


def _rollback_line(r: dict[str, Any]) -> str:
    line = (
        f"rollback {r.get('rollback_id')} {r.get('status')}: {r.get('path')} "
        f"(key holder {r.get('key_holder')}, requested by {r.get('requested_by')})"
    )
    if r.get("approved_by"):
        line += f", approved by {r['approved_by']}"
    if r.get("response_status") is not None:
        line += f", route answered {r['response_status']}"
    return printable(line)


@rollback.command("request")
@click.option(
    "--lease",
    "lease_id",
    default=None,
    metavar="LEASE_ID",
    help="Roll back the work done under this lease.",
)
@click.option(
    "--change",
    "change_id",
    default=None,
    metavar="CHANGE_ID",
    help="Roll back this recorded change.",
)
@click.option("--reason", required=True, help="Why it should be rolled back.")
@api_options
@json_option
def rollback_request(
    lease_id: str | None,
    change_id: str | None,
    reason: str,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Ask for a rollback (--lease or --change); only the key-holder queue can approve."""
    if (lease_id is None) == (change_id is None):
        raise click.UsageError("give exactly one of --lease LEASE_ID or --change CHANGE_ID")
    with _client(url, token) as client:
        r = client.request_rollback(reason, lease_id=lease_id, change_id=change_id)
    _echo_json(r) if as_json else click.echo(_rollback_line(r))


def _answer_rollback(approve: bool) -> Callable[..., None]:
    def answer(rollback_id: str, url: str, token: str | None, as_json: bool) -> None:
        with _client(url, token, timeout=60.0) as client:
            r = (
                client.approve_rollback(rollback_id)
                if approve
                else client.deny_rollback(rollback_id)
            )
        _echo_json(r) if as_json else click.echo(_rollback_line(r))
        if approve and r.get("status") == "failed":
            sys.exit(EXIT_REFUSED)

    return answer


rollback.command(
    "approve",
    help="Approve rollback ROLLBACK_ID: writ calls its frozen route once. Only the key-holder "
    "queue's own token or a human member of that queue may (never the requester, an agent or "
    "a portal; an admin only as a member). Exits 1 if the route failed.",
)(click.argument("rollback_id")(api_options(json_option(_answer_rollback(True)))))
rollback.command(
    "deny",
    help="Deny rollback ROLLBACK_ID: the key-holder queue's own token or a human member of it.",
)(click.argument("rollback_id")(api_options(json_option(_answer_rollback(False)))))


@rollback.command("defect")
@click.argument("rollback_id")
@click.option("--notes", required=True, help="What the rollback broke.")
@api_options
@json_option
def rollback_defect(
    rollback_id: str, notes: str, url: str, token: str | None, as_json: bool
) -> None:
    """Mark executed rollback ROLLBACK_ID as a new defect, not a recovery (humans only)."""
    with _client(url, token) as client:
        r = client.rollback_defect(rollback_id, notes)
    _echo_json(r) if as_json else click.echo(_rollback_line(r))


@rollback.command("show")
@click.argument("rollback_id")
@api_options
@json_option
def rollback_show(rollback_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Show rollback ROLLBACK_ID and its outcome."""
    with _client(url, token) as client:
        r = client.get_rollback(rollback_id)
    _echo_json(r) if as_json else click.echo(_rollback_line(r))


@rollback.command("list")
@click.option(
    "--status",
    "status_",
    default=None,
    type=click.Choice(["pending", "approved", "denied", "executed", "failed"]),
    help="Only rollbacks in this status.",
)
@api_options
@json_option
def rollback_list(status_: str | None, url: str, token: str | None, as_json: bool) -> None:
    """List rollback requests."""
    with _client(url, token) as client:
        body = client.rollbacks(status_)
    if as_json:
        _echo_json(body)
        return
    for r in _items(body, "rollbacks"):
        click.echo(_rollback_line(r))


# ----------------------------------------------------------------------------- freezes
@main.command()
@click.argument("prefix")
@click.option("--reason", required=True, help="Why new grants under PREFIX must stop.")
@click.option(
    "--until",
    default=None,
    metavar="TIME",
    help="When the freeze ends: RFC 3339 time or a duration like 30m (default: lifted).",
)
@click.option(
    "--allow",
    default=None,
    metavar="A,B",
    help="Principals still granted leases under PREFIX (comma-separated).",
)
@api_options
@json_option
def freeze(
    prefix: str,
    reason: str,
    until: str | None,
    allow: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Freeze PREFIX: new grants under it get 423 frozen (humans and queues only)."""
    with _client(url, token) as client:
        f = client.freeze(prefix, reason, until, _csv(allow))
    if as_json:
        _echo_json(f)
    else:
        click.echo(
            printable(
                f"froze {f.get('prefix')}: freeze {f.get('freeze_id')}"
                + (f" until {f['until']}" if f.get("until") else " until lifted")
                + (f", allowing {', '.join(f['allow'])}" if f.get("allow") else "")
            )
        )


@main.command()
@click.argument("freeze_id")
@api_options
@json_option
def unfreeze(freeze_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Lift freeze FREEZE_ID."""
    with _client(url, token) as client:
        f = client.lift_freeze(freeze_id)
    _echo_json(f) if as_json else click.echo(f"lifted freeze {freeze_id} on {f.get('prefix')}")


@main.command()
@click.option("--all", "include_lifted", is_flag=True, help="Include lifted and ended freezes.")
@api_options
@json_option
def freezes(include_lifted: bool, url: str, token: str | None, as_json: bool) -> None:
    """List freezes standing now."""
    with _client(url, token) as client:
        body = client.freezes(include_lifted)
    if as_json:
        _echo_json(body)
        return
    _table(
        ["FREEZE", "PREFIX", "BY", "UNTIL", "ALLOW", "REASON"],
        wrap=["REASON"],
        drop=["ALLOW", "BY"],
        rows=[
            (
                f.get("freeze_id"),
                f.get("prefix"),
                f.get("by"),
                f.get("until") or "lifted",
                ",".join(f.get("allow") or []),
                f.get("reason"),
            )
            for f in _items(body, "freezes")
        ],
    )


# ----------------------------------------------------------------------------- watch
def _row_line(row: dict[str, Any]) -> str:
    line = (
        f"{row.get('seq'):>6} {row.get('timestamp')} {row.get('event'):<20} "
        f"{row.get('resource')} holder={row.get('lock_holder')} by={row.get('agent_id')}"
    )
    if row.get("fencing_token") is not None:
        line += f" token={row['fencing_token']}"
    if row.get("notes"):
        line += f"  {row['notes']}"
    return printable(line)


@main.command()
@click.argument("prefix", required=False)
@click.option(
    "--after-seq",
    type=int,
    default=None,
    metavar="SEQ",
    help="Start after this seq (default: only rows from now on; 0 replays all).",
)
@api_options
@json_option
def watch(
    prefix: str | None, after_seq: int | None, url: str, token: str | None, as_json: bool
) -> None:
    """Print audit rows under PREFIX live as they happen (Ctrl-C stops)."""
    with _client(url, token) as client:
        try:
            for row in client.watch(prefix, after_seq):
                click.echo(json.dumps(row, ensure_ascii=False) if as_json else _row_line(row))
        except KeyboardInterrupt:
            return


# ----------------------------------------------------------------------------- migrate
@main.command()
@click.option("--from", "src", default=None, metavar="URL", help="Store URL to copy from.")
@click.option(
    "--to",
    "dst",
    default=None,
    metavar="URL",
    help="Empty store URL to copy into (e.g. postgresql://user@host:5432/writ).",
)
@click.option(
    "--upgrade",
    "upgrade_url",
    default=None,
    metavar="URL",
    help="Upgrade this store's schema in place instead, then verify its chain.",
)
@json_option
def migrate(src: str | None, dst: str | None, upgrade_url: str | None, as_json: bool) -> None:
    """Copy a whole store into an empty one on any backend, and verify the copy; or, with
    --upgrade URL, bring a store's schema up to this writ's in place.

    Principals (token hashes), leases, the wait queue, policy objects, the fencing-token
    counter and the audit log row for row. Stop the servers on the source (or the
    upgraded store) first. Exits 1 if the copy or the upgraded chain does not verify.
    """
    from writ.stores.migrate import migrate as copy_store
    from writ.stores.migrate import upgrade

    if upgrade_url is not None:
        if src is not None or dst is not None:
            raise click.UsageError("--upgrade URL takes no --from/--to")
        up = asyncio.run(upgrade(upgrade_url))
        if as_json:
            _echo_json(up)
        else:
            done = ", ".join(up["applied"]) or "nothing to do, the schema is current"
            click.echo(
                f"{'upgraded' if up['ok'] else 'UPGRADED, BUT THE CHAIN DOES NOT VERIFY'}: "
                f"{up['store']} ({done}); audit head seq {up['head']['seq']}"
            )
        if not up["ok"]:
            sys.exit(EXIT_REFUSED)
        return
    if src is None or dst is None:
        raise click.UsageError("give --from URL and --to URL (or --upgrade URL)")

    def progress(table: str, rows: int) -> None:
        if not as_json:
            click.echo(f"  {table}: {rows} rows", err=True)

    out = asyncio.run(copy_store(src, dst, progress))
    if as_json:
        _echo_json(out)
    else:
        tables = ", ".join(f"{n} {t}" for t, n in (out.get("tables") or {}).items())
        head = out.get("head") or {}
        click.echo(
            f"{'copied' if out.get('ok') else 'COPY DOES NOT VERIFY'}: {out.get('source')} -> "
            f"{out.get('destination')} ({tables}); audit head seq {head.get('seq')}"
        )
    if not out.get("ok"):
        sys.exit(EXIT_REFUSED)


# ----------------------------------------------------------------------------- plug-ins
# Commands that live in their own modules (each imports its heavy dependencies lazily)
from writ.cli.commands.evidence import register as _register_evidence  # noqa: E402
from writ.cli.commands.lint import lint_command  # noqa: E402
from writ.cli.commands.policy import register as _register_authority  # noqa: E402
from writ.cli.commands.reach import gate_command, mcp_command  # noqa: E402

main.add_command(lint_command)
main.add_command(gate_command)
main.add_command(mcp_command)
_register_evidence(main)
_register_authority(main)


if __name__ == "__main__":  # pragma: no cover
    main()
