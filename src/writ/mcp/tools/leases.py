"""MCP tools. Leases: acquire, renew, release and read write authority."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from writ.mcp.context import ToolContext
from writ.mcp.schemas import _READ, _WRITE, ID_PATTERN, NUMBER, LeaseId, Resource, RollbackPlan


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the lease tools to ``server``, in :data:`~writ.mcp.server.TOOL_NAMES` order."""
    _take_and_give_back(server, ctx)
    _read_leases(server, ctx)


def _take_and_give_back(server: MCPServer[Any], ctx: ToolContext) -> None:
    """acquire_write_authority, renew_lease, release_lease."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_WRITE)
    async def acquire_write_authority(
        resource: Resource,
        intent: Annotated[
            str,
            Field(
                description="what you are about to do, in a sentence a human on call understands",
                examples=["double capacity after the 02:17 latency alert"],
                min_length=1,
            ),
        ],
        ttl_s: Annotated[
            float,
            Field(
                description="lease time-to-live in seconds; renew before it runs out (renew_lease) "
                "or you lose write authority. Pick more than your slowest step.",
                ge=1,
                le=3600,
            ),
            NUMBER,
        ] = 300,
        wait_s: Annotated[
            float,
            Field(
                description="if someone else holds it, wait up to this many seconds in the FIFO "
                "queue instead of being refused at once",
                ge=0,
                le=300,
            ),
            NUMBER,
        ] = 0,
        touches: Annotated[
            list[str] | None,
            Field(
                description="attributes you may change, e.g. ['capacity']; default ['*'] "
                "(everything). Used to protect other agents' recent changes.",
            ),
        ] = None,
        consent_id: Annotated[
            str | None,
            Field(
                description="a granted consent (from ask_consent) when a protected change by "
                "another agent stands in the way",
                pattern=ID_PATTERN,
            ),
        ] = None,
        rollback: Annotated[
            RollbackPlan | None,
            Field(
                description="how your change can be undone and which human queue holds the key",
            ),
        ] = None,
        request: Context[Any, Any] | None = None,
    ) -> dict[str, Any]:
        """Acquire write authority (a lease) on a resource before changing it.

        Returns the lease: keep lease_id and fencing_token and pass them to the other
        tools; send the fencing token with every write (header Writ-Fencing-Token, plus
        Writ-Lease: <lease_id> through a writ gate). Write authority on a resource also
        covers its sub-paths and excludes its ancestors and blast-radius group. Refused
        with the holder's name and expiry if another agent holds it.
        """
        with ctx.waiting(request, wait_s):
            lease = await _call(
                client.acquire(
                    resource,
                    intent,
                    ttl_s,
                    wait_s,
                    touches,
                    consent_id,
                    rollback.model_dump(exclude_none=True) if rollback else None,
                )
            )
        lease["next"] = (
            f"You hold write authority on {lease['resource']} until {lease['expires_at']}. "
            f"Renew with renew_lease(lease_id={lease['lease_id']!r}) before then, send "
            f"Writ-Fencing-Token: {lease['fencing_token']} with your writes, record each change "
            "with record_change, and release_lease as soon as you are done."
        )
        return lease

    @server.tool(annotations=_WRITE)
    async def renew_lease(
        lease_id: LeaseId,
        ttl_s: Annotated[
            float | None,
            Field(
                description="new time-to-live from now, in seconds (default: the lease's own)",
                ge=1,
                le=3600,
            ),
            NUMBER,
        ] = None,
    ) -> dict[str, Any]:
        """Extend your lease (same fencing token). Fails with lease_lost if it already expired
        or was revoked: then stop writing and acquire again."""
        return await _call(client.renew(lease_id, ttl_s))

    @server.tool(annotations=_WRITE)
    async def release_lease(lease_id: LeaseId) -> dict[str, Any]:
        """Give write authority back as soon as you are done, so the next agent in line gets
        it. A lease that was already lost cannot be released (and never frees a successor's)."""
        return await _call(client.release(lease_id))


def _read_leases(server: MCPServer[Any], ctx: ToolContext) -> None:
    """get_lease, who_holds, resource_status, list_held_leases."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_READ)
    async def get_lease(lease_id: LeaseId) -> dict[str, Any]:
        """One lease in any state (held, released, expired, revoked), with its expiry."""
        return await _call(client.get_lease(lease_id))

    @server.tool(annotations=_READ)
    async def who_holds(
        resource: Resource,
        at: Annotated[
            str | None,
            Field(
                description="an RFC 3339 time in the past; default now",
                examples=["2026-05-16T02:17:00Z"],
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Who holds (or held, at a past time) write authority on a resource, from the audit log.
        lock_holder is a principal name or "none"."""
        return await _call(client.who(resource, at))

    @server.tool(annotations=_READ)
    async def resource_status(resource: Resource) -> dict[str, Any]:
        """A resource right now: its lease (or null), the queue of waiters, changes still
        protected from being undone, and whether a human froze it."""
        return await _call(client.resource(resource))

    @server.tool(annotations=_READ)
    async def list_held_leases(
        resource: Annotated[
            str | None,
            Field(
                description="only leases on this resource path prefix; default all",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Every lease held right now (under a prefix), each with its holder, intent, expiry
        and number of waiters."""
        return await _call(client.status(resource))
