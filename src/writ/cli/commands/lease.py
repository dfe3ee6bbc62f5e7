"""Lease commands: acquire, renew, release, revoke, status, who, fence."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from writ.cli import answers
from writ.cli._helpers import (
    EXIT_REFUSED,
    _before_wait,
    _client,
    _csv,
    _echo_json,
    _items,
    _lease_line,
    _table,
    _until,
)
from writ.cli.options import FiniteSeconds, SeqNumber, api_options, json_option
from writ.cli.wait import live_line
from writ.core.errors import WritError
from writ.core.textsafe import printable

F = TypeVar("F", bound=Callable[..., Any])


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


@click.command()
@click.argument("resource")
@lease_request_options
@click.option(
    "--ttl", type=FiniteSeconds(), default=30, show_default=True, help="Lease ttl in seconds."
)
@click.option(
    "--wait",
    type=FiniteSeconds(),
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
    answers.lease(lease, "the acquire")
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


@click.command()
@click.argument("lease_id")
@click.option(
    "--ttl", type=FiniteSeconds(), default=None, help="New ttl in seconds (default: its own)."
)
@api_options
@json_option
def renew(lease_id: str, ttl: float | None, url: str, token: str | None, as_json: bool) -> None:
    """Renew lease LEASE_ID for another ttl (410 lease_lost once it is gone)."""
    with _client(url, token) as client:
        lease = answers.lease(client.renew(lease_id, ttl), "the renewal")
    _echo_json(lease) if as_json else click.echo(_lease_line("renewed", lease))


@click.command()
@click.argument("lease_id")
@api_options
@json_option
def release(lease_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Release lease LEASE_ID (the next waiter is served at once)."""
    with _client(url, token) as client:
        lease = answers.lease(client.release(lease_id), "the release")
    _echo_json(lease) if as_json else click.echo(_lease_line("released", lease))


@click.command()
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
        lease = answers.lease(
            client.revoke(lease_id, runbook, paged, reason, waive_lock_delay), "the revocation"
        )
    _echo_json(lease) if as_json else click.echo(_lease_line("revoked", lease))


@click.command()
@click.argument("prefix", required=False)
@api_options
@json_option
def status(prefix: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Show held leases under PREFIX (default: everywhere) with their waiters."""
    with _client(url, token) as client:
        leases = _items(client.status(prefix), "leases", maybe_text=("expires_at",))
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


@click.command()
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
        out = answers.who(client.who(resource, at))
    if as_json:
        _echo_json(out)
        return
    from writ.cli.table import print_line  # wrapped between words at the console's width

    holder = out.get("lock_holder", "none")
    unreadable = out.get("unreadable_rows") or []
    for seq in unreadable:  # a row the answer rests on, that the store cannot read back
        click.echo(
            f"writ: warning: audit row {seq} cannot be read back (`writ audit verify` says "
            "why): this answer rests on it",
            err=True,
        )
    got = out.get("lease")
    lease: dict[str, Any] = got if isinstance(got, dict) else {}
    hand = lease.get("changed_by_hand")
    for why in hand if isinstance(hand, list) else []:  # the leases table against its rows
        click.echo(f"writ: warning: {printable(str(why))}", err=True)
    if holder == "none":
        print_line(f"{resource} at {out.get('at')}: nobody (lock_holder none)")
    elif out.get("hidden"):  # a blast-radius neighbour's lease that the caller may not see
        print_line(f"{resource} at {out.get('at')}: held through its blast radius (holder hidden)")
    elif holder is None:
        print_line(
            f"{resource} at {out.get('at')}: unknown (the row naming the holder is unreadable)"
        )
    else:
        print_line(
            f"{resource} at {out.get('at')}: {holder} (lock key {out.get('lock_key')}"
            + (f", intent {lease['intent']!r}" if lease.get("intent") else "")
            + ")"
        )


@click.command()
@click.argument("resource")
@click.argument("fencing_token", type=SeqNumber())
@api_options
@json_option
def fence(resource: str, fencing_token: int, url: str, token: str | None, as_json: bool) -> None:
    """Exit 0 if FENCING_TOKEN is the current token on RESOURCE, else 1."""
    with _client(url, token) as client:
        out = answers.fields(
            client.fence(resource, fencing_token),
            "the fence check",
            bools=("current",),
            maybe_ints=("current_token",),
        )
    if as_json:
        _echo_json(out)
    else:
        current = out.get("current_token")
        click.echo(
            f"{'current' if out.get('current') else 'stale'}: "
            + (
                f"nothing holds {resource} now"
                if current is None
                else f"current token on {resource} is {current}"
            )
        )
    if not out.get("current"):
        sys.exit(EXIT_REFUSED)
