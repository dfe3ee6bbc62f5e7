"""``writ change`` and ``writ consent``: record changes and ask before undoing another agent's."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from writ.cli import answers
from writ.cli._helpers import (
    EXIT_NO_ANSWER,
    EXIT_REFUSED,
    _client,
    _echo_json,
    _json_or_text,
)
from writ.cli.options import FiniteSeconds, api_options, json_option
from writ.cli.table import echo_line
from writ.client._pages import QUIET_POLL_S
from writ.core.textsafe import printable


# ----------------------------------------------------------------------------- changes
@click.command()
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
    type=FiniteSeconds(),
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
    was, now = _json_or_text(before, "--before"), _json_or_text(after, "--after")
    with _client(url, token) as client:
        out = client.change(lease_id, attribute, summary, was, now, protect_s)
    answers.fields(out, "the change", text=("change_id", "resource"))
    if as_json:
        _echo_json(out)
    else:
        click.echo(
            printable(
                f"recorded change {out.get('change_id')} on {out.get('resource')}: {summary} "
                f"(protected until {out.get('protected_until')})"
            )
        )


@click.group()
def consent() -> None:
    """Ask for, answer and follow consent to undo another agent's protected change."""


def _consent(body: Any) -> dict[str, Any]:
    return answers.fields(body, "the consent", text=("consent_id", "status"))


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
    type=FiniteSeconds(),
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
        c = _consent(client.ask_consent(change_id, reason))
        deadline = time.monotonic() + wait
        while wait and c.get("status") == "pending":
            sent = time.monotonic()
            left = deadline - sent
            if left <= 0:
                break
            c = _consent(client.consent(str(c.get("consent_id")), wait_s=min(left, 300)))
            if c.get("status") == "pending":  # answered sooner than asked: not again at once
                time.sleep(max(0.0, min(sent + QUIET_POLL_S, deadline) - time.monotonic()))
    _echo_json(c) if as_json else echo_line(_consent_line(c))
    if wait:
        status_ = c.get("status")
        if status_ == "denied":
            sys.exit(EXIT_REFUSED)
        if status_ not in ("granted", "used"):
            sys.exit(EXIT_NO_ANSWER)


def _answer_consent(grant: bool) -> Callable[..., None]:
    def answer(consent_id: str, url: str, token: str | None, as_json: bool) -> None:
        with _client(url, token) as client:
            c = _consent(
                client.grant_consent(consent_id) if grant else client.deny_consent(consent_id)
            )
        _echo_json(c) if as_json else echo_line(_consent_line(c))

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
    type=FiniteSeconds(),
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
        c = _consent(client.consent(consent_id, wait_s=min(wait, 300)))
    _echo_json(c) if as_json else echo_line(_consent_line(c))
