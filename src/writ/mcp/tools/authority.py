"""MCP tools. Authority: what this principal may do on a resource, and waking a lease's holder."""

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from writ.mcp.context import ToolContext
from writ.mcp.schemas import _READ, _WRITE, LeaseId, Resource


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the authority and wake tools to ``server``, in :data:`~writ.mcp.server.TOOL_NAMES` order."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_READ)
    async def explain_authority(resource: Resource) -> dict[str, Any]:
        """What you may do on a resource: write (take a lease), observe (read its leases and
        events), which attributes you may name in touches, and which line of which policy
        file says so. Ask before acquiring when unsure."""
        me = await _call(client.whoami())
        return await _call(client.authority(str(me.get("name")), resource))

    @server.tool(annotations=_WRITE)
    async def wake_holder(
        lease_id: LeaseId,
        reason: Annotated[
            str,
            Field(
                description="why the holder should look now, in a sentence its operator "
                "understands",
                examples=["p99 has been over the alert for 10 minutes; are you still on it?"],
                min_length=1,
            ),
        ],
    ) -> dict[str, Any]:
        """Ask writ to wake the holder of a lease that stands in your way (the `wake` of a
        refusal's holder). writ calls the holder at most once per 30 s per lease; a later
        call answers with already_woken_at. It does not take the lease away: wait in the
        queue (acquire_write_authority with wait_s) for it."""
        return await _call(client.wake(lease_id, reason))
