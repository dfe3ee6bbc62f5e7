"""What every MCP tool shares: the client (one principal), the check that its token is not a
human's, the call that turns a refusal into a tool error with guidance, and each session's
share of the calls that wait."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Iterator
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from writ.client import AsyncClient
from writ.core.errors import WritError
from writ.core.textsafe import counted, inert
from writ.mcp.refusals import guidance
from writ.mcp.sessions import in_a_session
from writ.net.caps import PerKey, client_key

HUMAN_KINDS = ("human", "queue")
MAX_EVENTS = 200
#: Tool calls one MCP session may have waiting at once (wait_s > 0, watch_events): a quarter
#: of the 100 connections the client keeps for requests that wait, which every session of
#: this server shares (as writ serve caps each principal's waits at a quarter of its own).
WAITS_PER_SESSION = 25
#: Tool calls all the sessions of one server may have waiting at once: sessions cost nothing
#: to open, so four of 25 each took all 100 connections, and a fifth session's calls failed
#: as "writ cannot be reached". Under the 100, one more is told so at once.
WAITS_IN_ALL = 75


def _discard(aw: Awaitable[Any]) -> None:
    if inspect.iscoroutine(aw):
        aw.close()


def _session_of(request: Context[Any, Any]) -> str:
    """Whose share of the waits a tool call counts against: over stdio, the one session of
    the process; over HTTP, its session (its ``Mcp-Session-Id``, which the SDK refuses
    unless it issued it), or, on the newer protocol, which has no sessions, its client (its
    address, as its connections and sessions are counted): each such call on its own was a
    share of its own, so one client had as many waiting as it sent."""
    http = request.request_context.request
    if http is None:
        return "stdio"
    headers = getattr(http, "headers", {})
    sid = headers.get("mcp-session-id")
    if sid and in_a_session(headers.get("mcp-protocol-version")):
        return f"session {sid}"
    peer = getattr(http, "client", None)
    return f"client {client_key(str(peer.host) if peer else '')}"


class ToolContext:
    """The client the tools call writ with, and whose token it is (checked once)."""

    def __init__(
        self,
        client: AsyncClient,
        allow_human: bool = False,
        waits: int = WAITS_PER_SESSION,
        waits_in_all: int = WAITS_IN_ALL,
    ) -> None:
        self.client = client
        self.allow_human = allow_human
        self.identity: dict[str, Any] = {}
        self.waits = PerKey(waits)  # each session's tool calls that wait, by session
        self.all_waits = PerKey(waits_in_all)  # the server's, all under one key

    @contextlib.contextmanager
    def waiting(self, request: Context[Any, Any] | None, wait_s: float) -> Iterator[None]:
        """Count one tool call that may wait (``wait_s`` > 0) against ``request``'s session,
        or its client when it has none (:func:`_session_of`), while the block runs;
        :class:`ToolError`, nothing done, when that one has as many as it may already: the
        sessions of one server share its client and its principal's waits on writ, so one
        session must not take them all. Enter it before anything is sent to writ, so that
        "nothing was done" holds."""
        if not wait_s or request is None:  # (None: called without the SDK, in no session)
            yield
            return
        share = _session_of(request)
        who = "client" if share.startswith("client ") else "session"
        with (
            self.all_waits.hold(
                "all",
                lambda held: ToolError(
                    f"This MCP server already has {counted(held, 'tool call')} waiting on writ, "
                    "across all its sessions: the most it lets wait, under the connections its "
                    "client keeps for them. Nothing was done. Call again with wait_s=0 (it "
                    "answers at once, held or not), or once a waiting call has returned."
                ),
            ),
            self.waits.hold(
                share,
                lambda held: ToolError(
                    f"This {who} already has {counted(held, 'tool call')} waiting on writ, the most "
                    f"one {who} may have, so that it cannot hold every connection this MCP server "
                    "shares with its other sessions. Nothing was done. Call again once one of "
                    "them has returned, or with wait_s=0."
                ),
            ),
        ):
            yield

    async def guard(self) -> None:
        """Check once whose token this server holds (refusing human authority)."""
        if self.allow_human or self.identity.get("name"):
            return
        if "refusal" not in self.identity:
            me = await self.client.whoami()
            if me.get("kind") not in HUMAN_KINDS and not me.get("admin"):
                self.identity.update(me)
                return
            self.identity["refusal"] = (
                f"This MCP server holds the token of {me.get('name')}, a"
                f"{'n admin' if me.get('admin') else ' ' + str(me.get('kind'))}: a model must "
                "not act with a human's authority (answering consents, human-only routes). "
                "Nothing was done. The operator must start `writ mcp` with an agent's own token "
                "(or pass --allow-human-token deliberately)."
            )
        raise ToolError(self.identity["refusal"])

    async def call(self, aw: Awaitable[Any]) -> dict[str, Any]:
        """Await one client call as a tool: a refusal becomes a tool error with guidance."""
        try:
            try:
                await self.guard()
            except BaseException:
                _discard(aw)
                raise
            result = await aw
        except WritError as err:
            raise ToolError(guidance(err)) from err
        # what an agent wrote reaches the model with its invisible characters shown
        shown: dict[str, Any] = inert(
            dict(result) if isinstance(result, dict) else {"result": result}
        )
        return shown
