"""``writ migrate``: copy or upgrade a store."""

from __future__ import annotations

import asyncio
import sys

import click

from writ.cli._helpers import (
    EXIT_REFUSED,
    _echo_json,
)
from writ.cli.options import json_option
from writ.core.textsafe import printable


# ----------------------------------------------------------------------------- migrate
@click.command()
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
    upgraded store) first. The source is only read; a source that does not verify (its
    chain, or its tables against it) is refused before anything is committed. Exits 1 if
    the copy or the upgraded chain does not verify.
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
        if out.get("reason"):  # it quotes the tables, which hand edits write: escaped
            click.echo(printable(f"writ: {out['reason']}"), err=True)
    if not out.get("ok"):
        sys.exit(EXIT_REFUSED)
