"""What every MCP tool shares: the client (one principal), the check that its token is not a
human's, and the call that turns a refusal into a tool error with guidance."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from writ.client import AsyncClient
from writ.core.errors import WritError
from writ.mcp.refusals import guidance

HUMAN_KINDS = ("human", "queue")
MAX_EVENTS = 200


def _discard(aw: Awaitable[Any]) -> None:
    if inspect.iscoroutine(aw):
        aw.close()


class ToolContext:
    """The client the tools call writ with, and whose token it is (checked once)."""

    def __init__(self, client: AsyncClient, allow_human: bool = False) -> None:
        self.client = client
        self.allow_human = allow_human
        self.identity: dict[str, Any] = {}

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
        return dict(result) if isinstance(result, dict) else {"result": result}
