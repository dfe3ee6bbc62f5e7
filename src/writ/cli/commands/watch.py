"""``writ watch``: follow the audit log live."""

from __future__ import annotations

from typing import Any

import click

from writ.cli._helpers import (
    _client,
)
from writ.cli.options import SeqNumber, api_options, json_option
from writ.cli.table import echo_line
from writ.core.textsafe import dumps, printable


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


@click.command()
@click.argument("prefix", required=False)
@click.option(
    "--after-seq",
    type=SeqNumber(),
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
                click.echo(dumps(row)) if as_json else echo_line(_row_line(row))
        except KeyboardInterrupt:
            return
