"""``writ rollback``: rollback requests only a human queue answers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from writ.cli import answers
from writ.cli._helpers import (
    EXIT_REFUSED,
    _client,
    _echo_json,
    _items,
)
from writ.cli.options import api_options, json_option
from writ.cli.table import echo_line
from writ.core.textsafe import printable


# ----------------------------------------------------------------------------- rollbacks
@click.group()
def rollback() -> None:
    """Request rollbacks; approve or deny them with the human-held key."""


def _rollback(body: Any) -> dict[str, Any]:
    return answers.fields(body, "the rollback", text=("rollback_id", "status"))


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
        r = _rollback(client.request_rollback(reason, lease_id=lease_id, change_id=change_id))
    _echo_json(r) if as_json else echo_line(_rollback_line(r))


def _answer_rollback(approve: bool) -> Callable[..., None]:
    def answer(rollback_id: str, url: str, token: str | None, as_json: bool) -> None:
        with _client(url, token, timeout=60.0) as client:
            r = _rollback(
                client.approve_rollback(rollback_id)
                if approve
                else client.deny_rollback(rollback_id)
            )
        _echo_json(r) if as_json else echo_line(_rollback_line(r))
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
        r = _rollback(client.rollback_defect(rollback_id, notes))
    _echo_json(r) if as_json else echo_line(_rollback_line(r))


@rollback.command("show")
@click.argument("rollback_id")
@api_options
@json_option
def rollback_show(rollback_id: str, url: str, token: str | None, as_json: bool) -> None:
    """Show rollback ROLLBACK_ID and its outcome."""
    with _client(url, token) as client:
        r = _rollback(client.get_rollback(rollback_id))
    _echo_json(r) if as_json else echo_line(_rollback_line(r))


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
        echo_line(_rollback_line(r))
