"""``writ freeze``, ``unfreeze`` and ``freezes``."""

from __future__ import annotations

import click

from writ.cli import answers
from writ.cli._helpers import (
    _client,
    _csv,
    _echo_json,
    _items,
    _table,
)
from writ.cli.options import api_options, json_option
from writ.core.textsafe import printable


# ----------------------------------------------------------------------------- freezes
@click.command()
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
        f = answers.fields(
            client.freeze(prefix, reason, until, _csv(allow)),
            "the freeze",
            text=("freeze_id", "prefix"),
            maybe_text=("until",),
            maybe_names=("allow",),
        )
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


@click.command()
@click.argument("freeze_id")
@api_options
@json_option
def unfreeze(freeze_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Lift freeze FREEZE_ID."""
    with _client(url, token) as client:
        f = answers.fields(client.lift_freeze(freeze_id), "the unfreeze", text=("prefix",))
    _echo_json(f) if as_json else click.echo(f"lifted freeze {freeze_id} on {f.get('prefix')}")


@click.command()
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
            for f in _items(body, "freezes", maybe_names=("allow",))
        ],
    )
