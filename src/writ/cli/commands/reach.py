"""The ``writ gate`` and ``writ mcp`` commands (registered on the ``writ`` group by writ.cli.group).

Thin click shells over :mod:`writ.gate` and :mod:`writ.mcp`, imported only when the
command runs (the MCP server needs the ``mcp`` extra).
"""

from __future__ import annotations

import logging
from typing import Any

import click

from writ.cli.options import log_level_option, url_option, warn_of_flags
from writ.core.errors import WritError
from writ.net.limits import GATE_LIMITS
from writ.net.options import from_options, limit_options

__all__ = ["gate_command", "mcp_command"]


_url_option = url_option("writ server URL (or WRIT_URL).")
_allow_down = click.option(
    "--allow-server-down",
    is_flag=True,
    help="Start even if writ cannot be reached (requests are refused until it answers); "
    "by default the command exits 1 with the reason.",
)


def _preflight(url: str, token: str, what: str, allow_human: bool, allow_down: bool) -> None:
    """Check the token and the server before listening (see writ.cli.preflight); exit 1 if wrong."""
    from writ.cli.preflight import PreflightFailed, check_token

    try:
        line = check_token(url, token, what, allow_human=allow_human, allow_down=allow_down)
    except PreflightFailed as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(line, err=True)


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(f"expected 'Name: value', not {value!r}")
    return name.strip(), val.strip()


def _headers_file(path: str) -> list[tuple[str, str]]:
    """The ``Name: value`` lines of ``path`` (blank lines and ``#`` comments skipped), refused
    when other users may read it or it is over 64 KiB. A line that is not a header is named
    by its number, never quoted: it may hold a credential."""
    import os

    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o004:
                raise click.BadParameter(
                    f"{path}: other users may read it (mode {mode & 0o777:o}), and it holds the "
                    f"upstream's credentials: chmod 600 {path}",
                    param_hint="--upstream-headers-file",
                )
            data = f.read(65537)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or exc}", param_hint="--upstream-headers-file"
        ) from None
    if len(data) > 65536:
        raise click.BadParameter(f"{path}: over 64 KiB", param_hint="--upstream-headers-file")
    headers = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or not all(" " <= c <= "~" or c == "\t" for c in line):
            raise click.BadParameter(
                f"{path}, line {number}: expected 'Name: value' in printable ASCII",
                param_hint="--upstream-headers-file",
            )
        headers.append((name.strip(), value.strip()))
    return headers


@click.command("gate")
@_url_option
@click.option(
    "--token",
    envvar=["WRIT_GATE_TOKEN", "WRIT_TOKEN"],
    required=True,
    help="The gate's own writ token (or WRIT_GATE_TOKEN, then WRIT_TOKEN; the flag is warned "
    "of: every user of the host reads a command line).",
)
@click.option(
    "--upstream",
    required=True,
    metavar="URL",
    help="Base URL of the API behind the gate, e.g. http://127.0.0.1:9000. One carrying "
    "credentials (user:password@) is refused: give them in --upstream-headers-file.",
)
@click.option(
    "--listen",
    default="127.0.0.1:7412",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the gate listens (port 0 picks a free one; the address is printed).",
)
@click.option(
    "--routes",
    "routes_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML file of [[route]] path/methods/resource entries.",
)
@click.option(
    "--upstream-header",
    "upstream_headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Header set on every forwarded request. Repeatable. The upstream's own "
    "credentials go in --upstream-headers-file: a command line is readable by every user "
    "of the host.",
)
@click.option(
    "--upstream-headers-file",
    envvar="WRIT_GATE_UPSTREAM_HEADERS_FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="File of 'Name: value' lines set on every forwarded request: the upstream's own "
    "credentials, so that only the gate can write. Refused if other users may read it "
    "(or WRIT_GATE_UPSTREAM_HEADERS_FILE).",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the upstream (connect, and each read).",
)
@click.option(
    "--writ-timeout",
    default=5.0,
    show_default=True,
    help="Seconds to wait for writ's decision before refusing with 503.",
)
@click.option(
    "--trust-forwarded-for",
    "trust_forwarded_for",
    multiple=True,
    metavar="ADDRESS|CIDR",
    help="Client addresses (or networks) whose own X-Forwarded-For is kept and extended; "
    "repeatable. Default: none (the gate sets X-Forwarded-For from the connection alone).",
)
@click.option(
    "--upstream-connections",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Connections to the upstream at most, pooled (passed writes have a pool of their own).",
)
@click.option(
    "--max-requests-per-client",
    type=click.IntRange(1),
    default=None,
    help="Requests one client (its address; behind a --trust-forwarded-for proxy, the "
    "address the proxy saw) may have in flight at once; one more is answered 429 with "
    "Retry-After. Default: a quarter of --upstream-connections.",
)
@click.option("--check", is_flag=True, help="Only load and print the routes, then exit.")
@_allow_down
@click.option(
    "--allow-human-token",
    is_flag=True,
    help="Let the gate run with a human's, a queue's or an admin's token (refused by "
    "default: the gate needs no special rights).",
)
@log_level_option
@limit_options(GATE_LIMITS)
def gate_command(
    url: str,
    token: str,
    upstream: str,
    listen: str,
    routes_path: str,
    upstream_headers: tuple[str, ...],
    upstream_headers_file: str | None,
    timeout: float,
    writ_timeout: float,
    trust_forwarded_for: tuple[str, ...],
    upstream_connections: int,
    max_requests_per_client: int | None,
    check: bool,
    allow_server_down: bool,
    allow_human_token: bool,
    log_level: str,
    **limits: Any,
) -> None:
    """Reverse proxy that lets a mutating request through only with the current lease.

    Reads and unmapped routes pass through. A write on a mapped route needs the caller's
    writ token (Authorization: Bearer), Writ-Lease and Writ-Fencing-Token of a lease held
    right now on the route's resource; otherwise 423 and the upstream never sees it.
    The upstream receives Writ-Fencing-Token and Writ-Holder, never the writ token.
    Every checked request is an audit row (gate.passed / gate.refused). If writ cannot
    be reached, writes are refused with 503.
    """
    from writ.gate import Gate, describe, load_routes, parse_listen, serve
    from writ.telemetry.logs import scrub_root

    warn_of_flags("writ gate", [("token", "its token", "WRIT_GATE_TOKEN")])

    credentials = _headers_file(upstream_headers_file) if upstream_headers_file else []
    try:
        routes = load_routes(routes_path)
        parse_listen(listen)
        if check:
            click.echo(describe(routes))
            return
        gate = Gate(
            url,
            token,
            upstream,
            routes,
            timeout=timeout,
            writ_timeout=writ_timeout,
            upstream_headers=dict([_header(h) for h in upstream_headers] + credentials),
            trust_forwarded_for=trust_forwarded_for,
            max_connections=upstream_connections,
            max_per_client=max_requests_per_client,
        )
    except WritError as exc:
        raise click.UsageError(exc.message) from exc
    _preflight(url, token, "writ gate", allow_human_token, allow_server_down)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    scrub_root([token, *(v for _, v in credentials)])  # its lines never carry them
    try:
        serve(gate, listen, log_level=log_level, limits=from_options(limits, GATE_LIMITS))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from exc


@click.command("mcp")
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio (the MCP client starts this command) or streamable HTTP.",
)
@_url_option
@click.option(
    "--token",
    envvar="WRIT_TOKEN",
    required=True,
    help="The agent's writ token (or WRIT_TOKEN; the flag is warned of): every tool acts as "
    "this principal.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option(
    "--port",
    default=7413,
    show_default=True,
    help="HTTP: port (0 picks a free one; the address is printed).",
)
@click.option("--path", default="/mcp", show_default=True, help="HTTP: endpoint path.")
@click.option(
    "--http-token",
    envvar="WRIT_MCP_HTTP_TOKEN",
    default=None,
    help="HTTP (required there, 16 characters or more): the 'Authorization: Bearer <this>' MCP "
    "clients must send (or WRIT_MCP_HTTP_TOKEN; the flag is warned of: every user of the host "
    "reads a command line).",
)
@click.option(
    "--allow-human-token",
    is_flag=True,
    help="Let the tools act with a human's, a queue's or an admin's token (refused by "
    "default: a model must not answer consents with human authority).",
)
@click.option(
    "--max-waits-per-session",
    type=click.IntRange(1),
    default=25,
    show_default=True,
    help="Tool calls that wait (wait_s > 0, watch_events) one MCP session may have at once; "
    "one more is a tool error, nothing done. The sessions share one client and one "
    "principal's waits on writ.",
)
@click.option(
    "--max-waits",
    type=click.IntRange(1, 90),
    default=75,
    show_default=True,
    help="Tool calls that wait all the sessions together may have at once (sessions cost "
    "nothing to open); one more is a tool error at once, nothing done, where over the "
    "client's 100 connections for waiting calls it failed after 12 s as unreachable.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="HTTP: MCP sessions (clients on a protocol with the initialize handshake) open at "
    "once; one more is refused (503) until one ends or idles out. The SDK's own 10,000 let one "
    "holder of the HTTP token take them all.",
)
@click.option(
    "--max-sessions-per-client",
    type=click.IntRange(0),
    default=None,
    help="HTTP: MCP sessions one client (its address; an IPv6 client its /64) may have open; "
    "one more is 429, no session made. Default: a quarter of --max-sessions; 0: no such cap.",
)
@click.option(
    "--session-idle-s",
    type=click.FloatRange(1, 86400),
    default=600,
    show_default=True,
    help="HTTP: an MCP session with no request in flight for this many seconds is closed (its "
    "client starts a new one); the SDK's own was 30 minutes.",
)
@_allow_down
@log_level_option
@limit_options()
def mcp_command(
    transport: str,
    url: str,
    token: str,
    host: str,
    port: int,
    path: str,
    http_token: str | None,
    allow_human_token: bool,
    max_waits_per_session: int,
    max_waits: int,
    max_sessions: int,
    max_sessions_per_client: int | None,
    session_idle_s: float,
    allow_server_down: bool,
    log_level: str,
    **limits: Any,
) -> None:
    """MCP server exposing writ as tools, for any MCP-speaking agent.

    Tools: acquire_write_authority, renew_lease, release_lease, who_holds, resource_status,
    record_change, ask_consent, answer_consent, request_rollback, watch_events and more;
    resources writ://resources/{path}. One process acts for one principal (its token,
    which must be an agent's unless --allow-human-token); no tool approves rollbacks or acts
    as anyone else.
    """
    try:
        import anyio

        from writ.client import AsyncClient
        from writ.mcp import SessionLimits, serve
    except ImportError as exc:  # pragma: no cover - needs the extra
        raise click.ClickException(
            f"writ mcp needs the MCP SDK: pip install 'writ[mcp]' ({exc})"
        ) from exc
    warn_of_flags(
        "writ mcp",
        [
            ("token", "its token", "WRIT_TOKEN"),
            ("http_token", "--http-token", "WRIT_MCP_HTTP_TOKEN"),
        ],
    )
    if transport == "http" and len(http_token or "") < 16:
        # loopback is no boundary between the users of a host: without a token, any
        # process on it acted as the agent, with its writ token's rights
        raise click.UsageError(
            "--transport http needs --http-token (or WRIT_MCP_HTTP_TOKEN), 16 characters or "
            "more: without one, every process of this host, any user's, acts as the agent "
            "through the endpoint (openssl rand -hex 24 makes one)"
        )
    _preflight(url, token, "writ mcp", allow_human_token, allow_server_down)
    client = AsyncClient(url, token)
    try:
        anyio.run(
            lambda: serve(
                client,
                transport,  # type: ignore[arg-type]
                host,
                port,
                path,
                http_token,
                log_level,
                allow_human_token,
                from_options(limits),
                max_waits_per_session,
                max_waits,
                SessionLimits(max_sessions, max_sessions_per_client, session_idle_s),
            )
        )
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


if __name__ == "__main__":  # pragma: no cover
    import sys

    commands = {"gate": gate_command, "mcp": mcp_command}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: python -m writ.cli.commands.reach gate|mcp [OPTIONS]")
    commands[sys.argv.pop(1)]()
