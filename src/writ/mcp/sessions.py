"""The MCP sessions of ``writ mcp --transport http``: how many may be open, for how long one
may sit idle, and each client's share of them.

A client on a protocol with the ``initialize`` handshake (2025-06-18 and earlier) opens a
session, and the SDK keeps it (a task and its streams) until the client ends it (``DELETE``)
or it sits idle ``idle_s``. Its own defaults were 10,000 sessions and 30 minutes: one holder
of the HTTP token opened them all with 10,000 initialize calls (the server's memory from 80
to 456 MiB), and every other such client was refused ("Too many open sessions") for half an
hour. So the server has at most ``max_sessions``, and each client — its address, as each
client's connections are counted (:func:`writ.net.caps.client_key`) — at most
``per_client`` of them: one more is answered ``429`` before a session is made.

A client on the newer protocol (2026-07-28) opens none: each of its requests stands alone.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from mcp_types import INTERNAL_ERROR
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ.core.textsafe import counted
from writ.net.caps import PerKey, client_key

__all__ = ["SessionLimits", "SessionShares", "in_a_session"]

SESSION_ID = b"mcp-session-id"
PROTOCOL_VERSION = b"mcp-protocol-version"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The sessions one server allows (``--max-sessions``, ``--max-sessions-per-client``,
    ``--session-idle-s``)."""

    max_sessions: int = 100
    per_client: int | None = None  # None: a quarter of max_sessions; 0: no share kept
    idle_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.per_client is not None and self.per_client < 0:
            raise ValueError("per_client must be 0 (no share kept) or more")
        if not (math.isfinite(self.idle_s) and self.idle_s > 0):
            raise ValueError("idle_s must be a finite number of seconds above 0")

    @property
    def client_share(self) -> int:
        """The sessions one client may have open (0: any number, up to the server's)."""
        if self.per_client is None:
            return max(1, self.max_sessions // 4)
        return self.per_client


def in_a_session(protocol_version: str | None) -> bool:
    """Whether the SDK serves a request that names ``protocol_version`` (its
    ``Mcp-Protocol-Version``) in a session: none named, or a handshake one. Any other goes
    to the newer protocol's entry, where an ``Mcp-Session-Id`` is only a header the client
    wrote, never checked."""
    return protocol_version is None or protocol_version in HANDSHAKE_PROTOCOL_VERSIONS


def _header(headers: Any, name: bytes) -> str | None:
    """The first ``name`` among raw ASGI ``headers``, as the SDK reads it."""
    return next((v.decode("latin-1") for k, v in headers if k == name), None)


@dataclass(slots=True)
class _Session:
    client: str
    in_flight: int = 0
    idle_since: float = 0.0


class SessionShares:
    """ASGI middleware: each client may have at most ``share`` sessions open.

    It sees every request of a session, so it knows each one's end as the SDK does: a
    ``DELETE`` answered, a 404 (the SDK no longer knows the id), or ``idle_s`` with no
    request in flight, counted from the end of the last one (as the SDK counts it, a moment
    earlier: a session is never thought gone before the SDK has let it go)."""

    def __init__(self, app: ASGIApp, share: int, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s
        self.shares = PerKey(share)
        self._open: dict[str, _Session] = {}  # by session id: the sessions it saw opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers") or []
        if scope["type"] != "http" or not in_a_session(_header(headers, PROTOCOL_VERSION)):
            await self.app(scope, receive, send)
            return
        sid = _header(headers, SESSION_ID)
        if sid is None:  # the SDK opens a session for it, if it is an initialize
            await self._opening(scope, receive, send)
        else:
            await self._within(sid, scope, receive, send)

    async def _opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        client = client_key(str(peer[0]) if peer else "")
        self._expire()
        if not self.shares.take(client):
            await _refuse(self.shares.held(client), self.idle_s, send)
            return
        opened: list[str] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                sid = _header(message.get("headers") or [], SESSION_ID)
                if sid is not None:
                    opened.append(sid)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if opened:
                self._open[opened[0]] = _Session(client, idle_since=time.monotonic())
            else:  # refused, failed or not an initialize: the SDK kept no session
                self.shares.give(client)

    async def _within(self, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._open.get(sid)
        if session is None:  # not one it opened: the SDK answers (404)
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        session.in_flight += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            session.in_flight -= 1
            session.idle_since = time.monotonic()
            ended = scope["method"] == "DELETE" and bool(status) and status[0] < 400
            if ended or status == [404]:
                self._end(sid)

    def _expire(self) -> None:
        """Forget the sessions the SDK has closed for sitting idle."""
        now = time.monotonic()
        for sid, s in list(self._open.items()):
            if not s.in_flight and now - s.idle_since >= self.idle_s:
                self._end(sid)

    def _end(self, sid: str) -> None:
        session = self._open.pop(sid, None)
        if session is not None:
            self.shares.give(session.client)


async def _refuse(held: int, idle_s: float, send: Send) -> None:
    """429 and a JSON-RPC error (as the SDK answers its own cap), no session made."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": INTERNAL_ERROR,
                "message": f"This client already has {counted(held, 'MCP session')} open on this "
                "writ mcp, the most one client may have (--max-sessions-per-client). End one "
                f"(DELETE) or reuse one; an idle one closes after {idle_s:g} s.",
            },
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(math.ceil(idle_s)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
