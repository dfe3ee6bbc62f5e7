"""Helpers shared by the ``writ`` commands: the client, JSON and table output, offline runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from writ.client import DEFAULT_TIMEOUT, Client
from writ.core.textsafe import printable

T = TypeVar("T")


def _client(url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> Client:
    return Client(url, token or None, timeout=timeout)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give one or more names separated by commas")
    return items


def _json_or_text(value: str | None) -> Any:
    """``--before 4`` is the number 4, ``--before '{"n": 4}'`` an object, else a string."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


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


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    return list(body.get(key) or [])


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
