"""The evidence commands: ``writ postmortem``, ``writ demo`` and signed checkpoints.

:mod:`writ.cli.group` adds the first two to ``writ``, :mod:`writ.cli.commands.audit` the
checkpoint commands to ``writ audit``:

* ``writ postmortem`` — the incident report from the ledger (:mod:`writ.evidence.postmortem`);
* ``writ demo`` — 02:17 replayed without and with writ (:mod:`writ.demo`);
* ``writ audit keygen`` / ``writ audit checkpoint`` — an Ed25519 key, and a signed checkpoint
  of the chain head (:mod:`writ.checkpoint`);
* ``writ audit verify-checkpoint FILE...``: the ledger must still extend each checkpoint (the
  same as ``--checkpoint FILE --pubkey FILE`` on ``writ audit verify``, declared in
  :mod:`writ.cli.commands.audit`);
* ``--checkpoint-every N`` on ``writ serve`` (declared in :mod:`writ.cli.commands.serve`, with
  :func:`install_checkpointer`): the server writes a signed checkpoint every N rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from writ.cli import answers
from writ.cli._helpers import DEFAULT_KEY
from writ.cli.commands.serve import install_checkpointer as install_checkpointer
from writ.cli.options import (
    api_options,
    existing_store,
    json_option,
    not_a_database,
    output_file,
    replaced_atomically,
    store_option,
    writable_file,
    write_failed,
)
from writ.client import AsyncClient, Client
from writ.core.errors import Invalid
from writ.core.ledger import NAMED
from writ.core.textsafe import counted, printable

T = TypeVar("T")
FORMATS = ("md", "html", "json")


def _api(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``/``--token`` to read a server's ledger, or ``--store`` to read one offline."""
    f = api_options(f, "Bearer token to read the server's ledger with [env WRIT_TOKEN].")
    return store_option(
        "Read this store directly, offline (e.g. sqlite:///writ.db) instead of a server."
    )(f)


async def _with_store(url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Open a store read-only (no sweeper, no bootstrap admin; nothing created, migrated or
    written: a store that is not writ's, or not at this writ's schema, is refused) with an
    engine over it."""
    from writ.engine import Engine
    from writ.stores import open_store

    engine = Engine(open_store(existing_store(url), read_only=True))
    await engine.store.open()
    try:
        return await fn(engine)
    finally:
        await engine.store.close()


# ----------------------------------------------------------------------------- postmortem
def _when(value: str | float, flag: str) -> float:
    """A time a report can name (the years 1 to 9999), else :class:`Invalid` naming ``flag``."""
    from writ.core.clock import parse_time

    try:
        return parse_time(value)
    except Invalid as exc:
        raise Invalid(f"{flag}: {exc.message}", field=flag) from None


def _in_range(t: float) -> bool:
    try:
        _when(t, "")
    except Invalid:
        return False
    return True


def _query(
    resources: tuple[str, ...],
    since: str | None,
    until: str | None,
    around: str | None,
    window: str,
) -> Any:
    """The report's :class:`~writ.evidence.postmortem.Query`; a window that ends before it
    begins, or reaches past the years 1 to 9999, is :class:`Invalid` (exit 2)."""
    from writ.core.clock import parse_duration
    from writ.evidence.postmortem import Query

    lo: float | None
    hi: float | None
    if around:
        at = _when(around, "--around")
        try:
            half = parse_duration(window)
        except Invalid as exc:
            raise Invalid(f"--window: {exc.message}", field="--window") from None
        if not _in_range(at - half) or not _in_range(at + half):
            raise Invalid(
                f"--window: {window} either side of --around {around} reaches past the years "
                "1 to 9999",
                field="--window",
            )
        lo, hi = at - half, at + half
    else:
        lo = _when(since, "--since") if since else None
        hi = _when(until, "--until") if until else None
    if lo is not None and hi is not None and hi < lo:
        raise Invalid(
            f"--until: {until} is before --since {since}: the window ends before it begins",
            field="--until",
        )
    return Query(list(resources), lo, hi)


@click.command("postmortem")
@click.option(
    "--resource",
    "resources",
    multiple=True,
    metavar="PREFIX",
    help="Resource prefix to report on (repeatable; default: every resource).",
)
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Start of the window: RFC 3339 (2026-05-16T02:17:00Z), epoch or -2h.",
)
@click.option("--until", default=None, metavar="TIME", help="End of the window (default: now).")
@click.option(
    "--around",
    default=None,
    metavar="TIME",
    help="Centre of the window, instead of --since/--until.",
)
@click.option(
    "--window",
    default="30m",
    show_default=True,
    metavar="DURATION",
    help="With --around: how far either side of it (90s, 30m, 2h).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="md, html (with an SVG timeline) or json [default: from --out's suffix, else md].",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to FILE instead of stdout.",
)
@click.option("--title", default=None, help="Title of the report.")
@click.option(
    "--limit",
    type=click.IntRange(1, 5_000_000),
    default=200_000,
    show_default=True,
    help="Read at most this many rows (the report says when it stopped there).",
)
@_api
def postmortem_command(
    resources: tuple[str, ...],
    since: str | None,
    until: str | None,
    around: str | None,
    window: str,
    fmt: str | None,
    out_path: str | None,
    title: str | None,
    limit: int,
    store: str | None,
    url: str,
    token: str | None,
) -> None:
    """Write an incident postmortem draft from the audit ledger alone.

    Sections: summary, impact window, timeline, who held write authority when, changes,
    what writ refused and why, consents and their answers, rollbacks and who approved them,
    stuck-lock wakes and pages, revocations with provenance, rows flagged by writ lint, and
    the hash verification of the rows used. Reads indexed slices of the ledger (resource
    prefix and time range), from a store (--store, offline) or a server (--url/--token).
    """
    from writ.evidence.postmortem import collect, to_json, to_markdown

    if around and (since or until):
        raise click.UsageError("give --around (with --window) or --since/--until, not both")
    query = _query(resources, since, until, around, window)
    output_file(out_path, store)  # before the report is built; never a database
    query.limit, query.title = limit, title
    if fmt is None:  # from --out's suffix, else md
        suffix = Path(out_path or "").suffix.lstrip(".").replace("markdown", "md")
        fmt = suffix if suffix in FORMATS else "md"

    async def go() -> dict[str, Any]:
        from writ.evidence.postmortem import HttpSource, StoreSource

        if store:
            return await _with_store(store, lambda e: collect(StoreSource(e), query))
        async with AsyncClient(url, token, timeout=120.0) as client:
            return await collect(HttpSource(client), query)

    report = asyncio.run(go())
    if fmt == "html":
        from writ.evidence.postmortem import to_html

        text = to_html(report)
    elif fmt == "json":
        text = to_json(report)
    else:
        text = to_markdown(report)
    if out_path:
        try:
            with replaced_atomically(out_path) as f:
                f.write(text)
        except OSError as exc:
            raise write_failed(out_path, exc) from None
        counts = [(report["source"]["rows"], "row")] + [
            (len(report[k + "s"]), k)
            for k in ("holder", "refusal", "consent", "rollback", "revocation")
        ]
        said = ", ".join(counted(n, noun) for n, noun in counts)
        click.echo(f"wrote {out_path}: {said}", err=True)
    else:
        click.echo(text, nl=False)


# ----------------------------------------------------------------------------- demo
@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    default="writ-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the run-2 postmortem (postmortem.md and postmortem.html).",
)
@click.option(
    "--mode",
    type=click.Choice(["open", "closed"]),
    default="open",
    show_default=True,
    help="Run 2's authority mode: closed adds [authority] grants, and cost-agent's "
    "consolidation is refused as not its authority before consent is asked.",
)
def demo_command(out_dir: str, mode: str) -> None:
    """Replay 02:17 twice on a simulated clock: three agents, one simulated DB.

    Run 1 without writ: the DB goes down at 02:19. Run 2 through writ (the real engine and
    an embedded store in a temp folder): perf holds authority, cost's consolidation is
    refused pending consent, routing waits on the blast radius, and the DB stays up. Prints
    both timelines side by side and writes the postmortem. Same output every run.
    """
    from writ.demo import run

    for name in ("postmortem.md", "postmortem.html"):  # what run() writes there
        not_a_database(os.path.join(out_dir, name), flag="--out")
    run(out_dir, mode=mode)


# ----------------------------------------------------------------------------- checkpoints
@click.command("keygen")
@click.option(
    "--out",
    "out_path",
    default=DEFAULT_KEY,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Private key file to write (mode 0600); the public key goes to FILE.pub.",
)
def keygen_command(out_path: str) -> None:
    """Make an Ed25519 key for signing audit checkpoints (keep the private key off the
    database host; give FILE.pub to whoever verifies)."""
    from writ.evidence.checkpoint import key_id, load_private_key, raw_public, write_key

    not_a_database(out_path)  # write_key makes the folder, so only this is checked here
    not_a_database(out_path + ".pub")
    priv, pub = write_key(out_path)
    kid = key_id(raw_public(load_private_key(priv).public_key()))
    click.echo(f"wrote {priv} (private, keep it secret) and {pub} (public); key id {kid}")


@click.command("checkpoint")
@click.option(
    "--key",
    "key_path",
    envvar="WRIT_CHECKPOINT_KEY",
    default=DEFAULT_KEY,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Ed25519 private key (writ audit keygen) [env WRIT_CHECKPOINT_KEY].",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the checkpoint to FILE instead of stdout.",
)
@_api
def checkpoint_command(
    key_path: str, out_path: str | None, store: str | None, url: str, token: str | None
) -> None:
    """Verify the store, then sign the audit chain's head (seq, hash, time) with an Ed25519 key.

    The whole chain and the tables are verified first, as `writ audit verify` does (through
    the server, or offline with --store); a ledger that does not verify gets no checkpoint.
    Keep the checkpoint somewhere the database's writers cannot reach; later,
    `writ audit verify --checkpoint FILE` proves the ledger still extends it.
    """
    from writ.evidence.checkpoint import load_private_key, make, sign, signable

    _checkpoint_out(out_path, store)
    key = load_private_key(key_path)
    if store:
        cp = asyncio.run(_with_store(store, lambda e: make(e.store, key)))
    else:
        with Client(url, token, timeout=600.0) as client:
            verified = answers.verify(client.verify())
            seq = verified["rows"]
            if verified["ok"] and not seq:
                raise Invalid("the audit log is empty: there is nothing to checkpoint yet")
            rows = _audit_row(client, seq) if seq > 0 else []
        at = signable(verified, rows[0] if rows else None)
        cp = sign(key, seq, verified["head"], at)
    if out_path:
        try:  # its folder is made, as the server's checkpoint folder is
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            # the writer of every --out: a FIFO, /dev/fd/N or a device is written, not replaced;
            # a symlink to a file is itself replaced, never written through (checkpoints.md)
            with replaced_atomically(out_path, 0o644, "\n", follow=False) as f:  # public
                f.write(cp.text())
        except OSError as exc:
            raise write_failed(out_path, exc) from None
        click.echo(
            f"checkpoint of seq {cp.seq} (hash {cp.hash[:16]}…) written to {out_path}", err=True
        )
    else:
        click.echo(cp.text(), nl=False)


def _checkpoint_out(out_path: str | None, store: str | None) -> None:
    """``--out`` of ``writ audit checkpoint``, checked before the ledger is verified: never a
    database, and writable where its folder exists already (else it is made at the end)."""
    if out_path is None:
        return
    not_a_database(out_path, store)  # it would be replaced by the checkpoint
    if os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
        writable_file(out_path)


def verify_checkpoints(
    checkpoints: tuple[str, ...],
    pubkey: str | None,
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """``writ audit verify --checkpoint FILE...``: exit 1 unless the ledger extends each."""
    from writ.evidence.checkpoint import (
        key_id,
        load_public_key,
        raw_public,
        read_checkpoint,
        verify_store,
    )

    cps = [read_checkpoint(p) for p in checkpoints]
    trusted = load_public_key(pubkey) if pubkey else None
    if store:
        outcome = asyncio.run(_with_store(store, lambda e: verify_store(e.store, cps, trusted)))
        out = outcome.to_dict()
    else:
        out = _verify_over_http(cps, trusted, url, token)
    out["trusted_key"] = key_id(raw_public(trusted)) if trusted else None
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif out["ok"]:  # escaped: a checkpoint file and a server's answer are not ours
        for cp in cps:
            click.echo(
                printable(
                    f"ok: the ledger extends checkpoint seq {cp.seq} ({cp.name}, signed "
                    f"{cp.signed_at} by key {key_id(cp.public_key)}"
                    + (", the trusted key" if trusted else "; pass --pubkey to check who signed it")
                    + ")"
                )
            )
        click.echo(printable(f"ok: {out['rows']} rows, head {out['head']}"))
    else:  # a reason quotes the tables, which someone with database rights writes
        at = "" if out["first_bad_seq"] is None else f" at seq {out['first_bad_seq']}"
        click.echo(printable(f"BROKEN{at}: {out['reason']}"), err=True)
    if not out["ok"]:
        sys.exit(1)


def _audit_row(client: Client, seq: int) -> list[dict[str, Any]]:
    """The audit row at ``seq`` (``[]`` past the end), once its seq and hash are what writ sends."""
    from writ.cli._helpers import _items

    rows = _items(client.audit(seq - 1, 1), "rows")[:1]
    for row in rows:
        answers.fields(row, "the audit page", ints=("seq",), text=("hash",))
    return rows


def _verify_over_http(cps: list[Any], trusted: Any, url: str, token: str | None) -> dict[str, Any]:
    """The server recomputes the chain; the rows at each checkpoint seq must still carry the
    signed hashes."""
    from writ.evidence.checkpoint import check_all

    check_all(cps, trusted)
    with Client(url, token, timeout=600.0) as client:
        v = answers.verify(client.verify())
        out: dict[str, Any] = {
            "ok": v["ok"],
            "rows": v.get("rows"),
            "head": v.get("head"),
            "first_bad_seq": v.get("first_bad_seq"),
            "reason": v.get("reason"),
            "checkpoints": [],
        }
        found = [k for k in NAMED if v.get(k)]  # the chain held; a table did not
        if found:
            out[found[0]] = v.get(found[0])
        elif not out["ok"]:  # a bad row; or a table that names nothing (the token counter)
            said, seq = v.get("reason") or "chain broken", v.get("first_bad_seq")
            out["reason"] = said if seq is None else f"row {seq}: {said}"
        for cp in sorted(cps, key=lambda c: c.seq):
            rows = _audit_row(client, cp.seq)
            got = rows[0]["hash"] if rows and rows[0]["seq"] == cp.seq else None
            ok = got == cp.hash
            out["checkpoints"].append({"seq": cp.seq, "hash": cp.hash, "file": cp.source, "ok": ok})
            if not ok and out["ok"]:
                out.update(
                    ok=False,
                    first_bad_seq=cp.seq,
                    reason=(
                        f"the ledger ends before checkpoint seq {cp.seq}: rows were removed"
                        if got is None
                        else f"row {cp.seq} no longer has the hash checkpoint {cp.name} signed: rows up to "
                        f"{cp.seq} were rewritten and re-hashed after it was signed"
                    ),
                )
    return out


@click.command("verify-checkpoint")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--pubkey",
    default=None,
    type=click.Path(dir_okay=False),
    help="The public key you trust (PEM; FILE.pub from writ audit keygen).",
)
@json_option
@_api
def verify_checkpoint_command(
    checkpoints: tuple[str, ...],
    pubkey: str | None,
    store: str | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Prove the ledger still extends each signed checkpoint FILE (exit 1 naming the row if
    not); the same as `writ audit verify --checkpoint FILE`."""
    verify_checkpoints(checkpoints, pubkey, store, url, token, as_json)
