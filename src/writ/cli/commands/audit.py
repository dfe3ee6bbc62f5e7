"""``writ audit verify|export``: the hash-chained audit log."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import IO, Any

import click

from writ.cli import answers
from writ.cli._helpers import (
    EXIT_REFUSED,
    _client,
    _echo_json,
)
from writ.cli.commands.evidence import (
    _with_store,
    checkpoint_command,
    keygen_command,
    verify_checkpoint_command,
    verify_checkpoints,
)
from writ.cli.options import (
    SeqNumber,
    api_options,
    existing_store,
    json_option,
    output_file,
    replaced_atomically,
    store_option,
    write_failed,
)
from writ.client import DEFAULT_URL
from writ.core.textsafe import dumps, printable


# ----------------------------------------------------------------------------- audit
@click.group()
def audit() -> None:
    """Check and export the hash-chained audit log."""


@audit.command("verify")
@store_option("Verify this store directly, offline (e.g. sqlite:///writ.db).")
@api_options
@json_option
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Also prove the ledger still extends this signed checkpoint (repeatable).",
)
@click.option(
    "--pubkey",
    default=None,
    type=click.Path(dir_okay=False),
    help="With --checkpoint: the public key you trust (PEM, from writ audit keygen).",
)
def audit_verify(
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
    checkpoints: tuple[str, ...] = (),
    pubkey: str | None = None,
) -> None:
    """Recompute the audit hash chain; name the first bad row and exit 1 if broken."""
    if checkpoints:
        verify_checkpoints(checkpoints, pubkey, store, url or DEFAULT_URL, token, as_json)
        return
    if store:

        async def check(engine: Any) -> dict[str, Any]:
            return dict((await engine.verify()).to_dict())

        out = asyncio.run(_with_store(store, check))  # read-only
    else:
        with _client(url, token, timeout=600.0) as client:
            out = answers.verify(client.verify())
    # every line escaped: a reason quotes the tables (a principal's name, a lease's cells),
    # which someone with database rights writes, and a server's answer is its own
    if as_json:
        _echo_json(out)
    elif out.get("ok"):
        click.echo(printable(f"ok: {out.get('rows')} rows, head {out.get('head')}"))
    elif out.get("first_bad_seq") is None and out.get("reason"):  # the chain held; a lease did not
        click.echo(
            printable(f"BROKEN: {out['reason']} ({out.get('rows')} rows verified)"), err=True
        )
    else:
        reason = f": {out['reason']}" if out.get("reason") else ""
        click.echo(
            printable(
                f"BROKEN at seq {out.get('first_bad_seq')}{reason} "
                f"({out.get('rows')} rows verified before it)"
            ),
            err=True,
        )
    if not out.get("ok"):
        sys.exit(EXIT_REFUSED)


@audit.command("export")
@click.option(
    "--after-seq", type=SeqNumber(), default=0, show_default=True, help="Start after this seq."
)
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
    if store:
        store = existing_store(store)
    output_file(out_path, store)  # never the store's own file, nor any SQLite database

    try:
        # a temp file beside --out, renamed over it when the export is complete: --out is
        # not touched before then, so a store that fails to open (or fails half-way) leaves
        # it as it was
        with (
            replaced_atomically(out_path) if out_path else contextlib.nullcontext(sys.stdout)
        ) as out:
            if store:
                n = _export_offline(store, after_seq, resource, since, until, out)
            else:
                n = 0
                with _client(url, token, timeout=60.0) as client:
                    for row in client.iter_audit(after_seq, resource, since, until, page=10_000):
                        out.write(dumps(row) + "\n")
                        n += 1
    except OSError as exc:
        if not out_path or isinstance(exc, BrokenPipeError):
            raise
        raise write_failed(out_path, exc) from None
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
    from writ.core.ledger import UNREADABLE, row_from
    from writ.core.resources import under, validate

    if prefix:
        validate(prefix, "resource")
    lo = rfc3339(parse_time(since)) if since else None
    hi = rfc3339(parse_time(until)) if until else None

    async def export(engine: Any) -> int:
        n = 0
        async for chunk in engine.store.audit_stream(after_seq):
            for seq, body, hash_ in chunk:
                row = row_from(body, hash_, seq)
                if row["event"] == UNREADABLE:
                    # a body edited into something writ cannot read: its resource and time
                    # are unknown, so it is kept whatever the filters, with its raw text
                    row["body"] = body
                elif prefix and not under(row["resource"], prefix):
                    continue
                elif (lo and row["timestamp"] < lo) or (hi and row["timestamp"] > hi):
                    continue
                out.write(dumps(row) + "\n")
                n += 1
        return n

    return asyncio.run(_with_store(store_url, export))  # read-only


audit.add_command(keygen_command)
audit.add_command(checkpoint_command)
audit.add_command(verify_checkpoint_command)
