"""Serving the MCP server: stdio, or streamable HTTP behind an optional bearer token."""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from writ.client import AsyncClient
from writ.mcp.context import WAITS_IN_ALL, WAITS_PER_SESSION
from writ.mcp.server import DEFAULT_HTTP_PORT, create_server
from writ.mcp.sessions import SessionLimits, SessionShares
from writ.net.credentials import Twice, sole
from writ.net.limits import Limits
from writ.net.listen import bind, listening_url


class RequireBearer:
    """Refuse HTTP requests without ``Authorization: Bearer <token>`` (``--http-token``)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:  # one credential, or none (writ.net.credentials)
                auth = sole(scope.get("headers") or []) or b""
            except Twice:
                auth = b""
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                body = json.dumps(
                    {
                        "error": {
                            "code": "unauthenticated",
                            "message": "this writ MCP endpoint needs 'Authorization: Bearer <token>' "
                            "(its --http-token)",
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def rebinding_guard(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection for a loopback bind, whatever its spelling (all of
    127.0.0.0/8, ``::1`` written out, ``localhost``): only ``Host`` and ``Origin`` naming a
    loopback address (and the bound one) are let in. The MCP SDK turns it on by itself for
    ``127.0.0.1``, ``localhost`` and ``::1`` only. None for any other bind."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    if not loopback:
        return None
    names = dict.fromkeys(["127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host])
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:*" for n in names],
        allowed_origins=[f"http://{n}:*" for n in names],
    )


def http_app(
    server: MCPServer[Any],
    host: str,
    path: str,
    http_token: str | None,
    sessions: SessionLimits,
) -> ASGIApp:
    """``server`` as streamable HTTP at ``path``: its sessions within ``sessions`` (the SDK's
    own defaults let one client hold 10,000 for 30 minutes), each client's share of them
    kept, behind the bearer token when there is one."""
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=path,
        host=host,
        transport_security=rebinding_guard(host),
        max_sessions=sessions.max_sessions,
        session_idle_timeout=sessions.idle_s,
    )
    if sessions.client_share:
        app = SessionShares(app, sessions.client_share, sessions.idle_s)
    if http_token:
        app = RequireBearer(app, http_token)
    return app


async def serve(
    client: AsyncClient,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    path: str = "/mcp",
    http_token: str | None = None,
    log_level: str = "warning",
    allow_human: bool = False,
    limits: Limits | None = None,
    waits_per_session: int = WAITS_PER_SESSION,
    waits_in_all: int = WAITS_IN_ALL,
    sessions: SessionLimits | None = None,
) -> None:
    """Run the MCP server until its client goes away (stdio) or it is interrupted (http);
    each HTTP connection within ``limits``, the HTTP sessions within ``sessions``, each
    session with at most ``waits_per_session`` tool calls waiting, and all of them with at
    most ``waits_in_all``."""
    server = create_server(
        client,
        allow_human=allow_human,
        waits_per_session=waits_per_session,
        waits_in_all=waits_in_all,
    )
    try:
        if transport == "stdio":
            await server.run_stdio_async()
            return
        import uvicorn

        app = http_app(server, host, path, http_token, sessions or SessionLimits())
        sock = bind(host, port)
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=3,
            **(limits or Limits()).uvicorn_options(),
        )
        print(
            f"writ mcp: listening on {listening_url(sock)}{path} (writ at {client.url})",
            file=sys.stderr,
            flush=True,
        )
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await client.aclose()
