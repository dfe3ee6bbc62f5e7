"""The CLI of authority (registered on the ``writ`` group by writ.cli.group): ``writ policy explain``,
``writ policy reload`` and ``writ wake``, thin shells over :mod:`writ.rules.authority` and the
client, plus the authority lines of ``writ policy check``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from writ.cli import answers
from writ.cli._helpers import _echo_json
from writ.cli.options import api_options, existing_store, json_option, store_option
from writ.client import Client
from writ.core.models import KINDS, Principal
from writ.core.policy import Policy
from writ.core.textsafe import printable

__all__ = ["authority_lines", "explain_command", "policy", "reload_command", "wake_command"]


def _describe(d: dict[str, Any]) -> str:
    verdict = "may write" if d["write"] else ("may observe" if d["observe"] else "may not touch")
    rule = d.get("rule") or "no grant"
    head = f"{d['principal']} {verdict} {d['resource']} ({d['mode']} mode; {rule})"
    return f"{head}\n  {d['message']}"


def authority_lines(pol: Policy, store: str | None) -> list[str]:
    """What ``writ policy check`` says of ``[authority]``: the mode, each grant with its
    line, and the warnings (unknown principals need ``--store``)."""
    from writ.core.grants import review

    s = pol.authority
    out = [f"  authority {s.mode}: {len(s.grants)} grant(s)"]
    for g in s.grants:
        out.append(
            f"  grant {s.where(g) or '?'}: {g.who()} — write {', '.join(g.write) or '-'}; "
            f"observe {', '.join(g.observe) or '-'}; "
            f"attributes {', '.join(g.attributes) if g.write else '-'}"
        )
    known = _principals(store) if store else None
    for warning in review(s, known):
        out.append(f"warning: {warning}")
    if known is None and any(g.principals for g in s.grants):
        out.append("  (principal names not checked: pass --store to check them)")
    return out


def _principals(store: str) -> dict[str, Principal]:
    from writ.stores import open_store

    async def go() -> dict[str, Principal]:
        opened = open_store(existing_store(store), read_only=True)  # nothing written
        await opened.open()
        try:
            rows = await opened.read(lambda tx: tx.list_principals())
            return {p.name: p for p in rows}
        finally:
            await opened.close()

    return asyncio.run(go())


@click.command("explain")
@click.argument("name")
@click.argument("resource")
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Decide offline from this policy file instead of asking the server.",
)
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="agent",
    show_default=True,
    help="With --file: the principal's kind.",
)
@click.option("--vendor", default=None, help="With --file: the principal's vendor.")
@click.option("--admin", is_flag=True, help="With --file: the principal is an admin.")
@api_options
@json_option
def explain_command(
    name: str,
    resource: str,
    file: str | None,
    kind: str,
    vendor: str | None,
    admin: bool,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """What principal NAME may do on RESOURCE, and which line of which file says so.

    Asks the server (GET /v1/authority; an agent may ask only about itself), or decides
    offline from --file with --kind/--vendor/--admin.
    """
    from writ.core import resources

    if file:
        from writ.core.errors import Invalid
        from writ.core.grants import decide
        from writ.core.policy import load
        from writ.core.validate import check_text
        from writ.engine import NAME

        resources.validate(resource)
        if not NAME.fullmatch(name):
            raise Invalid(f"name {name!r} is not a principal name (a-z 0-9 . _ -)", field="name")
        check_text(vendor, "vendor")
        p = Principal(name, kind, vendor, admin=admin)
        out = decide(load(file).authority, p, resource).to_dict()
    else:
        with Client(url, token or None) as client:
            out = answers.authority(client.authority(name, resource))
    _echo_json(out) if as_json else click.echo(_describe(out))


@click.command("reload")
@api_options
@json_option
def reload_command(url: str, token: str | None, as_json: bool) -> None:
    """Make the server read its policy file again (admin; also SIGHUP): new grants apply to
    new requests at once, held leases keep their term. A bad file changes nothing."""
    with Client(url, token or None) as client:
        out = answers.fields(
            client.reload_policy(),
            "the policy reload",
            text=("mode",),
            maybe_text=("source",),
            ints=("grants", "rules"),
            maybe_names=("warnings",),
        )
    if as_json:
        _echo_json(out)
        return
    click.echo(  # the server's words: escaped
        printable(
            f"reloaded {out.get('source') or '(no policy file)'}: authority {out.get('mode')}, "
            f"{out.get('grants')} grant(s), {out.get('rules')} rule(s)"
        )
    )
    for warning in out.get("warnings") or []:
        click.echo(printable(f"warning: {warning}"), err=True)


@click.command("wake")
@click.argument("lease_id")
@click.option("--reason", required=True, help="Why the holder should look now.")
@api_options
@json_option
def wake_command(lease_id: str, reason: str, url: str, token: str | None, as_json: bool) -> None:
    """Ask writ to wake the holder of LEASE_ID (anyone who may observe its resource).

    writ calls the holder's wake route at most once per 30 s per lease; a later call in that
    window is answered with the time it was woken and calls nobody. Each is an audit row.
    """
    with Client(url, token or None) as client:
        out = answers.wake(client.wake(lease_id, reason))
    if as_json:
        _echo_json(out)
    elif out.get("already_woken_at"):  # the server's words: escaped
        click.echo(
            printable(
                f"{out['holder']} was already woken at {out['already_woken_at']}; "
                "writ does not call again within 30 s"
            )
        )
    else:
        click.echo(
            printable(
                f"writ is waking {out['holder']} (lease {out['lease_id']} on {out['resource']})"
            )
        )


@click.group()
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
    for line in authority_lines(pol, store):  # names from the store: escaped
        click.echo(printable(line), err=line.startswith("warning:"))


policy.add_command(explain_command)
policy.add_command(reload_command)
