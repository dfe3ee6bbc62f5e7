"""``writ principal rotate|disable|enable|queues``: the token lifecycle and queue
membership (docs/cli.md). Each works through a server (``--url``/``--token``), or offline
on a store with ``--store URL`` (an operator on the store itself: the way back in when
every admin token is lost, and the way to rotate ``admin`` without one)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from writ.cli import answers
from writ.cli._helpers import (
    _client,
    _echo_json,
    _items,
    _run_offline,
    _table,
)
from writ.cli.options import api_options, json_option, store_option
from writ.client import Client
from writ.core.errors import Invalid
from writ.core.models import KINDS
from writ.core.textsafe import printable

T = TypeVar("T")

_ONCE = (
    "This token is shown only once: store it now (e.g. export WRIT_TOKEN=...). "
    "writ keeps only its hash."
)


def parse_expires(value: str | None) -> float | None:
    """``--expires-in``: seconds, or a duration like ``90s``, ``15m``, ``12h``, ``30d``."""
    if value is None:
        return None
    from writ.core.clock import parse_duration

    try:
        secs = float(value)
    except ValueError:
        try:
            return parse_duration(value)
        except Exception as exc:
            raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    if not math.isfinite(secs):  # JSON carries no nan or inf: a traceback from the encoder
        raise Invalid(
            f"--expires-in: {value!r} is not a finite number of seconds", field="--expires-in"
        )
    return secs


def expires_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--expires-in",
        "expires_in",
        metavar="DURATION",
        default=None,
        help="The token is refused after this long (seconds, or 90s, 15m, 12h, 30d). "
        "Default: no expiry.",
    )(f)


def _act(
    store: str | None,
    url: str,
    token: str | None,
    offline: Callable[[Any], Awaitable[T]],
    online: Callable[[Client], T],
) -> T:
    if store:
        from writ.cli._helpers import _run_offline

        return _run_offline(store, offline)
    with Client(url, token or None) as client:
        return online(client)


def _show(out: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        _echo_json(out)
    else:  # lines with the server's words (an expiry, queues, a token): escaped
        click.echo(printable(line))
        if out.get("token"):
            click.echo(printable(f"token: {out['token']}"))
    if out.get("token"):
        click.echo(_ONCE, err=True)


_STORE_HELP = "Work offline on this store (e.g. sqlite:///writ.db) instead of through a server."


@click.command("rotate")
@click.argument("name")
@expires_option
@store_option(_STORE_HELP)
@api_options
@json_option
def rotate(
    name: str,
    expires_in: str | None,
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Give NAME a new token and print it; the old token is refused at once, and so is
    every JWT issued for NAME until now (its iat). NAME's queued requests leave the queue,
    and its long polls are answered 401, not with what was written since.

    An admin may rotate any principal (admin included: this is how WRIT_ADMIN_TOKEN is
    rotated); any principal may rotate its own token.
    """
    secs = parse_expires(expires_in)
    out = _act(
        store,
        url,
        token,
        lambda engine: engine.principals.rotate(None, name, secs),
        lambda client: client.rotate_principal(name, secs),
    )
    until = out.get("token_expires_at")
    withdrawn = out.get("withdrawn") or []
    _show(
        out,
        as_json,
        f"rotated {name}"
        + (f" (expires {until})" if until else "")
        + (f": {len(withdrawn)} queued request(s) withdrawn" if withdrawn else ""),
    )


@click.command("disable")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit row).")
@store_option(_STORE_HELP)
@api_options
@json_option
def disable(
    name: str, reason: str, store: str | None, url: str, token: str | None, as_json: bool
) -> None:
    """Disable NAME (admin): its token and its JWTs are refused at once, its held leases
    are revoked (via runbook principal.disable), its queued requests leave the queue, and
    its long polls are answered 401."""
    out = _act(
        store,
        url,
        token,
        lambda engine: engine.principals.disable(None, name, reason),
        lambda client: client.disable_principal(name, reason),
    )
    revoked, withdrawn = out.get("revoked") or [], out.get("withdrawn") or []
    _show(
        out,
        as_json,
        f"disabled {name}: {len(revoked)} lease(s) revoked, "
        f"{len(withdrawn)} queued request(s) withdrawn",
    )


@click.command("enable")
@click.argument("name")
@expires_option
@store_option(_STORE_HELP)
@api_options
@json_option
def enable(
    name: str,
    expires_in: str | None,
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Enable NAME again (admin) and print its fresh token. The old token stays refused,
    and so does every JWT issued for NAME until now (its iat)."""
    secs = parse_expires(expires_in)
    out = _act(
        store,
        url,
        token,
        lambda engine: engine.principals.enable(None, name, secs),
        lambda client: client.enable_principal(name, secs),
    )
    _show(out, as_json, f"enabled {name}")


@click.command("queues")
@click.argument("name")
@click.option("--add", "add", multiple=True, metavar="QUEUE", help="Join this queue (repeatable).")
@click.option(
    "--remove", "remove", multiple=True, metavar="QUEUE", help="Leave this queue (repeatable)."
)
@store_option(_STORE_HELP)
@api_options
@json_option
def queues(
    name: str,
    add: tuple[str, ...],
    remove: tuple[str, ...],
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Change which on-call queues the human NAME is a member of (admin).

    A member may approve or deny the rollbacks whose key the queue holds, and answer the
    consents escalated to it.
    """
    if not add and not remove:
        raise click.UsageError("give --add QUEUE or --remove QUEUE")
    out = _act(
        store,
        url,
        token,
        lambda engine: engine.principals.set_queues(None, name, list(add), list(remove)),
        lambda client: client.principal_queues(name, list(add), list(remove)),
    )
    answers.fields(out, "the queue membership", maybe_names=("queues",))
    _show(
        out, as_json, f"{name} is a member of: {', '.join(out.get('queues') or []) or 'no queue'}"
    )


# ----------------------------------------------------------------------------- principals
@click.group()
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
        answers.fields(out, "the new principal", text=("name", "kind", "token"))
    if quiet:
        click.echo(printable(out["token"]))
        return
    if as_json:
        _echo_json(out)
    else:  # the server's words: escaped
        admin_ = " (admin)" if admin else ""
        click.echo(printable(f"added {out.get('kind')} {out.get('name')}{admin_}"))
        click.echo(printable(f"token: {out['token']}"))
    click.echo(
        "This token is shown only once: store it now (e.g. export WRIT_TOKEN=...). "
        "writ keeps only its hash.",
        err=True,
    )


for _command in (rotate, disable, enable, queues):
    principal.add_command(_command)


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
            for p in _items(body, "principals", maybe_names=("queues",))
        ],
    )
