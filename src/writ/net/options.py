"""The click options that set a listener's :class:`~writ.net.limits.Limits` (``writ serve``,
``writ gate``, ``writ mcp``), and :class:`Seconds`, the number of seconds they and ``writ
run`` take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from writ.net.limits import Limits

__all__ = ["Seconds", "from_options", "limit_options"]

F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.FloatRange):
    """A number of seconds in a range, never nan: every range check lets nan through (it
    compares false both ways), and a listener's timer or ``writ run``'s grace then fails far
    from the flag that set it."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if out != out:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return out


# The listener options: flag (its Limits field, with _ for -), click type, help.
_OPTIONS: tuple[tuple[str, click.ParamType[Any], str], ...] = (
    (
        "--max-connections",
        click.IntRange(1),
        "Open connections at most; beyond, an idle one is closed to make room, "
        "or the newcomer gets 503 (also kept below the open-file limit).",
    ),
    (
        "--max-connections-per-client",
        click.IntRange(0),
        "Open connections one client (its address; an IPv6 client its /64) may have; "
        "one more gets 429. Default: a quarter of --max-connections; 0: no such cap "
        "(behind a proxy whose connections all come from one address).",
    ),
    (
        "--max-header-bytes",
        click.IntRange(256),
        "Largest block of request headers; more is 413, refused while read.",
    ),
    (
        "--max-pipelined",
        click.IntRange(1),
        "Requests one connection may have queued behind the one being answered "
        "(HTTP/1.1 pipelining); past it the rest is dropped and the connection closes "
        "once those are answered.",
    ),
    (
        "--header-timeout",
        Seconds(0, min_open=True),
        "Seconds a client has to send a request's line and headers (408 after).",
    ),
    (
        "--body-timeout",
        Seconds(0, min_open=True),
        "Seconds a client has to send a request's body once its headers are in.",
    ),
    (
        "--keepalive-timeout",
        Seconds(0, min_open=True),
        "Seconds an idle keep-alive connection stays open.",
    ),
    (
        "--send-timeout",
        Seconds(0, min_open=True),
        "Seconds a client may go without reading the answer it was sent before its "
        "connection is reset.",
    ),
)


def limit_options(
    defaults: Limits | None = None, env_prefix: str | None = None
) -> Callable[[F], F]:
    """The click options that set a listener's :class:`Limits` (passed as ``limits``);
    with ``env_prefix``, each may also be set by ``PREFIX_FLAG_NAME`` (``WRIT_MAX_CONNECTIONS``)."""
    d = defaults or Limits()

    def env(flag: str) -> dict[str, Any]:
        if env_prefix is None:
            return {}
        name = env_prefix + flag.lstrip("-").replace("-", "_").upper()
        return {"envvar": name, "show_envvar": True}

    def decorate(fn: F) -> F:
        options = [
            click.option(
                flag,
                **env(flag),
                type=kind,
                default=getattr(d, flag.lstrip("-").replace("-", "_")),
                show_default=True,
                help=text,
            )
            for flag, kind, text in _OPTIONS
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def from_options(options: dict[str, Any], base: Limits | None = None) -> Limits:
    """Pop the :func:`limit_options` values out of a command's keyword arguments, onto
    ``base`` (the listener's defaults)."""
    return replace(
        base or Limits(),
        max_header_bytes=options.pop("max_header_bytes"),
        max_pipelined=options.pop("max_pipelined"),
        header_timeout=options.pop("header_timeout"),
        body_timeout=options.pop("body_timeout"),
        keepalive_timeout=options.pop("keepalive_timeout"),
        send_timeout=options.pop("send_timeout"),
        max_connections=options.pop("max_connections"),
        max_connections_per_client=options.pop("max_connections_per_client"),
    )
