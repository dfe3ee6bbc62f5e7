"""MCP tools. Reads about writ itself: wait for audit events, and whoami."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from writ.client._pages import page
from writ.mcp.context import MAX_EVENTS, ToolContext
from writ.mcp.schemas import _READ, NUMBER


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the event and identity tools to ``server``, in :data:`~writ.mcp.server.TOOL_NAMES` order."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_READ)
    async def watch_events(
        resource: Annotated[
            str | None,
            Field(
                description="only events on this resource path prefix; default all",
            ),
        ] = None,
        after_seq: Annotated[
            int | None,
            Field(
                description="return events after this seq (next_after_seq of your previous call); "
                "default: only events from now on",
                ge=0,
            ),
            NUMBER,
        ] = None,
        wait_s: Annotated[
            float,
            Field(
                description="wait up to this many seconds for the first new event",
                ge=0,
                le=120,
            ),
            NUMBER,
        ] = 20,
        limit: Annotated[
            int, Field(description="at most this many events", ge=1, le=MAX_EVENTS), NUMBER
        ] = 50,
        request: Context[Any, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for audit events (grants, releases, expiries, changes, consents, rollbacks)
        under a resource. Returns {rows, next_after_seq}: pass next_after_seq back to continue
        where you left off."""

        async def read(start: int) -> dict[str, Any]:  # a page that is none is a tool error too
            rows, nxt = page(await client.events(resource, start, wait_s), start)
            return {"rows": rows, "next_after_seq": nxt}

        with ctx.waiting(request, wait_s):  # before any call: refused, it sent nothing
            cursor = await _call(client.last_seq()) if after_seq is None else {"result": after_seq}
            out = await _call(read(int(cursor["result"])))
        rows = out["rows"][:limit]
        return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else out["next_after_seq"]}

    @server.tool(annotations=_READ)
    async def whoami() -> dict[str, Any]:
        """The principal this server acts as (fixed when it was started)."""
        return await _call(client.whoami())
