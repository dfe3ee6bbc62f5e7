"""MCP resources: a resource's state, the held leases and whoami, as JSON documents."""

import json
from collections.abc import Awaitable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from writ.mcp.context import ToolContext


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the ``writ://`` resources to ``server``."""
    client, _call = ctx.client, ctx.call

    async def _read(aw: Awaitable[Any]) -> str:
        try:
            return json.dumps(await _call(aw), indent=2)
        except ToolError as err:
            raise ResourceError(str(err)) from err

    @server.resource(
        "writ://resources/{+path}",
        name="resource",
        mime_type="application/json",
        description="A resource's current lease, queue, protected changes and "
        "freeze, e.g. writ://resources/prod/db",
    )
    async def resource_state(path: str) -> str:
        return await _read(client.resource(path))

    @server.resource(
        "writ://leases",
        name="held-leases",
        mime_type="application/json",
        description="Every lease held right now",
    )
    async def held_leases() -> str:
        return await _read(client.status())

    @server.resource(
        "writ://whoami",
        name="whoami",
        mime_type="application/json",
        description="The principal this server acts as",
    )
    async def me() -> str:
        return await _read(client.whoami())
