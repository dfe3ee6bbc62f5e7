"""MCP tools. Rollbacks: request one (only a human queue approves it) and follow it."""

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from writ.mcp.context import ToolContext
from writ.mcp.schemas import _READ, _WRITE, ID_PATTERN


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the rollback tools to ``server``, in :data:`~writ.mcp.server.TOOL_NAMES` order."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_WRITE)
    async def request_rollback(
        reason: Annotated[str, Field(description="why it should be rolled back", min_length=1)],
        lease_id: Annotated[
            str | None,
            Field(
                description="the lease whose change to roll back (give this or change_id)",
                pattern=ID_PATTERN,
            ),
        ] = None,
        change_id: Annotated[
            str | None,
            Field(
                description="the recorded change to roll back (give this or lease_id)",
                pattern=ID_PATTERN,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Ask for a rollback of a lease's change, by the rollback route it declared. Anyone
        may ask; only the human queue holding the key (key_holder) can approve it, never you.
        Follow it with get_rollback."""
        if (lease_id is None) == (change_id is None):
            raise ToolError("Give exactly one of lease_id or change_id.")
        rb = await _call(client.request_rollback(reason, lease_id=lease_id, change_id=change_id))
        rb["next"] = (
            f"Rollback {rb.get('rollback_id')} is {rb.get('status')}. Only {rb.get('key_holder')} "
            "(the human queue holding the key) can approve it; agents cannot. Follow it with "
            "get_rollback."
        )
        return rb

    @server.tool(annotations=_READ)
    async def get_rollback(
        rollback_id: Annotated[
            str, Field(description="the rollback_id from request_rollback", pattern=ID_PATTERN)
        ],
    ) -> dict[str, Any]:
        """A rollback request and its outcome: pending, approved, denied, executed or failed."""
        return await _call(client.get_rollback(rollback_id))
