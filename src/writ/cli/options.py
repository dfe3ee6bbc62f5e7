"""Options and checks shared by the CLI's command modules (the modules under
writ.cli.commands)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from writ.client import DEFAULT_URL
from writ.core.errors import Invalid

F = TypeVar("F", bound=Callable[..., Any])


def api_options(
    f: F, token_help: str = "Bearer token of the principal to act as [env WRIT_TOKEN]."
) -> F:
    """``--url`` and ``--token`` on a command that talks to a server."""
    f = click.option("--token", envvar="WRIT_TOKEN", metavar="TOKEN", help=token_help)(f)
    return url_option()(f)


def url_option(help_text: str = "URL of the writ server [env WRIT_URL].") -> Callable[[F], F]:
    """``--url``: from ``WRIT_URL``, else the local default server."""
    return click.option(
        "--url", envvar="WRIT_URL", default=DEFAULT_URL, show_default=True, help=help_text
    )


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")(f)


def store_option(help_text: str) -> Callable[[F], F]:
    return click.option("--store", metavar="URL", default=None, help=help_text)


def log_level_option(f: F) -> F:
    """``--log-level`` for the long-running proxies (gate, mcp)."""
    return click.option(
        "--log-level",
        default="warning",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Log level on stderr.",
    )(f)


def existing_store(url: str) -> str:
    """Refuse to create an empty SQLite store where one was meant to be read."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:" and not os.path.exists(path):
            raise Invalid(f"no store at {path} (from {url}): check the path")
    return url


def warn_of_flags(command: str, secrets: list[tuple[str, str, str]]) -> None:
    """Say so for each ``(parameter, what, variable)`` of ``secrets`` given as a flag: every
    user of the host reads a command line (``ps``), never another user's environment."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for name, what, instead in secrets:
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            click.echo(
                f"{command}: warning: {what} is on the command line, where every user of "
                f"this host can read it (use {instead})",
                err=True,
            )
