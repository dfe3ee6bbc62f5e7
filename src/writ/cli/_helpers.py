"""Helpers shared by the ``writ`` commands: the client, JSON and table output, offline runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import reprlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click

from writ.cli import answers
from writ.cli.table import echo_line
from writ.cli.wait import SelfHeld, check_not_self
from writ.client import DEFAULT_TIMEOUT, Client
from writ.core.errors import Held, Invalid, Unavailable, WritError
from writ.core.textsafe import dumps, printable

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_ANSWER = 3
EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: the work was cut short; acquire again and retry
EXIT_NOT_FOUND = 127
DEFAULT_STORE = "sqlite:///writ.db"
DEFAULT_KEY = "writ-checkpoint.key"  # the audit checkpoint signing key

EXIT_STATUS: dict[str, str] = {
    "0": "done",
    "1": "refused or failed: one line `writ: CODE: message` on stderr, no traceback (an "
    "answer that is not writ's: `writ: unavailable: the server answered ...`)",
    "2": "usage error: a missing argument or option, or a bad value (`invalid` naming a "
    "field, e.g. --ttl 0; --ttl nan, --until before --since, --out in no folder)",
    "3": "`consent ask --wait`: nobody answered in time",
    "75": "`writ run`: the lease was lost while COMMAND ran, and COMMAND was stopped",
    "127": "`writ run`: COMMAND could not be started",
    "N": "`writ run`: COMMAND's own exit status, or 128 + signal if a signal killed it",
}

# the CLI option that carries a request field, for `invalid` answers naming the field
FIELD_OPTIONS = {
    "ttl_s": "--ttl",
    "wait_s": "--wait",
    "touches": "--touches",
    "url": "--url",
    "consent_id": "--consent",
    "intent": "--intent",
    "protect_s": "--protect",
    "at": "--at",
}

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ----------------------------------------------------------------------------- errors
class Refused(click.ClickException):
    """A :class:`WritError` shown as one line on stderr, exit status 1."""

    exit_code = EXIT_REFUSED

    def __init__(self, error: WritError, hint: dict[str, Any] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.hint = hint or {}
        field = error.details.get("field") if isinstance(error, Invalid) else None
        self.option = FIELD_OPTIONS.get(field) if isinstance(field, str) else None
        if field:  # a bad value of a named input is a usage error
            self.exit_code = EXIT_USAGE  # type: ignore[misc]  # click reads it from the instance

    def show(self, file: IO[Any] | None = None) -> None:
        text = self.error.phrased("cli", **self.hint)  # the next step as a command and flag
        if self.option:
            text += f" (option {self.option})"
        echo_line(printable(f"writ: {self.error.code}: {text}"), err=True)


class Failed(click.ClickException):
    """A local failure with a chosen exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it from the instance

    def show(self, file: IO[Any] | None = None) -> None:
        echo_line(printable(f"writ: {self.message}"), err=True)


def _hint_context(ctx: click.Context, exc: WritError) -> dict[str, Any]:
    """What the CLI phrasing of a refusal needs: the resource asked for, the seconds already
    waited, and (for a held answer) the caller's own name, so "held by you" is said plainly."""
    hint: dict[str, Any] = dict(ctx.meta.get("writ.hint") or {})
    api = hint.pop("api", None)
    if isinstance(exc, Held) and "me" not in hint and api:
        with contextlib.suppress(WritError), _client(*api) as client:
            hint["me"] = client.whoami().get("name")
    return hint


def _before_wait(
    client: Client, url: str, token: str | None, resource: str, wait: float
) -> str | None:
    """Record the hint context; when the command will wait, refuse at once if the caller
    itself holds what it would wait for. Returns the caller's name when it was read."""
    hint: dict[str, Any] = {"resource": resource, "waited": wait, "api": (url, token)}
    click.get_current_context().meta["writ.hint"] = hint
    if wait <= 0:
        return None
    try:
        me = check_not_self(client, resource)
    except SelfHeld as exc:
        raise Failed(str(exc)) from exc
    if me:
        hint["me"] = me
    return me


def _client(url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> Client:
    return Client(url, token or None, timeout=timeout)


def _echo_json(obj: Any) -> None:
    click.echo(dumps(obj, indent=2))  # C1 and bidi characters as \uXXXX, never raw


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give one or more names separated by commas")
    return items


def _finite(text: str) -> float:
    out = float(text)
    if not math.isfinite(out):  # 1e400 reads as inf
        raise _NotJSON(text)
    return out


class _NotJSON(Exception):
    """A number JSON cannot carry (``NaN``, ``Infinity``, ``1e400``)."""


def _json_or_text(value: str | None, flag: str = "value") -> Any:
    """``--before 4`` is the number 4, ``--before '{"n": 4}'`` an object, else a string.
    JSON with a number no JSON carries (``NaN``, ``Infinity``, ``1e400``) or nested past the
    parser is :class:`Invalid` (exit 2), never sent as a string nor a traceback."""
    if value is None:
        return None
    try:
        return json.loads(value, parse_constant=_refuse_constant, parse_float=_finite)
    except _NotJSON as exc:
        raise Invalid(
            f"{flag} holds {printable(str(exc))}, a number JSON cannot carry",
            field=flag.lstrip("-"),
        ) from None
    except RecursionError:
        raise Invalid(f"{flag} is JSON nested too deeply", field=flag.lstrip("-")) from None
    except ValueError:
        return value


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(name)


def _run_offline(store_url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store at ``store_url`` with an engine (no sweeper) and run ``fn(engine)``."""
    from writ.engine import Engine
    from writ.stores import open_store

    async def go() -> T:
        engine = Engine(open_store(store_url))
        await engine.start(background=False)
        try:
            return await fn(engine)
        finally:
            await engine.stop()

    return asyncio.run(go())


def _parse_rfc3339(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _until(value: str | None) -> str:
    """``2026-05-16T10:11:51.123456Z`` → ``10:11:51Z (in 28s)`` (for tables)."""
    at = _parse_rfc3339(value)
    if at is None:
        return value or "-"
    left = (at - datetime.now(UTC)).total_seconds()
    when = f"in {left:.0f}s" if left >= 0 else f"{-left:.0f}s ago"
    return f"{at.strftime('%H:%M:%SZ')} ({when})"


def _lease_line(verb: str, lease: dict[str, Any]) -> str:
    return printable(
        f"{verb} {lease.get('resource')} for {lease.get('holder')}: lease {lease.get('lease_id')}, "
        f"fencing token {lease.get('fencing_token')}, lock key {lease.get('lock_key')}, "
        f"state {lease.get('state')}, expires {lease.get('expires_at')}"
    )


def _items(body: Any, key: str, **checks: Iterable[str]) -> list[dict[str, Any]]:
    """The list ``body[key]`` of objects, each passing :func:`writ.cli.answers.fields`'s
    ``checks`` (``maybe_names=("queues",)``); a server's answer that holds anything else there
    is :class:`~writ.Unavailable`, not a traceback in the table."""
    items = body if isinstance(body, list) else body.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise Unavailable(
            f"the server answered with a {key} list that is not a list of objects, which writ "
            f"never sends: {printable(reprlib.repr(items))}"
        )
    for item in items:
        answers.fields(item, f"the {key} list", **checks)
    return items


def _table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    wrap: Sequence[str] = (),
    drop: Sequence[str] = (),
) -> None:
    """A table fitted to the console (writ.cli.table): ``wrap`` free-text columns between words,
    leave out ``drop`` columns, least important first, when they cannot all fit."""
    from writ.cli.table import print_table

    print_table(columns, rows, wrap=wrap, drop=drop)
