"""MCP tools. Protected changes and consent: record a change, ask, read and answer a consent."""

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from writ.mcp.context import ToolContext
from writ.mcp.schemas import _READ, _WRITE, ID_PATTERN, NUMBER, LeaseId


def register(server: MCPServer[Any], ctx: ToolContext) -> None:
    """Add the change and consent tools to ``server``, in :data:`~writ.mcp.server.TOOL_NAMES` order."""
    client, _call = ctx.client, ctx.call

    @server.tool(annotations=_WRITE)
    async def record_change(
        lease_id: LeaseId,
        attribute: Annotated[
            str,
            Field(
                description="what you changed, as one word other agents would use in `touches`",
                examples=["capacity"],
                min_length=1,
            ),
        ],
        summary: Annotated[
            str,
            Field(
                description="the change in a few words",
                examples=["capacity 4 -> 8"],
                min_length=1,
            ),
        ],
        before: Annotated[Any, Field(description="the value before (any JSON)")] = None,
        after: Annotated[Any, Field(description="the value after (any JSON)")] = None,
        protect_s: Annotated[
            float | None,
            Field(
                description="how long other agents need your consent to undo it (default: policy)",
                ge=0,
                le=86400,
            ),
            NUMBER,
        ] = None,
    ) -> dict[str, Any]:
        """Record a change you made under your lease. For a while (protect_s) another agent
        whose lease would touch this attribute must first get your (or a human's) consent."""
        return await _call(client.change(lease_id, attribute, summary, before, after, protect_s))

    @server.tool(annotations=_WRITE)
    async def ask_consent(
        change_id: Annotated[
            str,
            Field(
                description="the protected change you need to touch (from the consent_required "
                "refusal, or resource_status)",
                min_length=1,
                pattern=ID_PATTERN,
            ),
        ],
        reason: Annotated[
            str,
            Field(
                description="why you must touch it, for its author or the human who answers",
                min_length=1,
            ),
        ],
        wait_s: Annotated[
            float,
            Field(
                description="wait up to this many seconds for an answer before returning",
                ge=0,
                le=300,
            ),
            NUMBER,
        ] = 0,
        request: Context[Any, Any] | None = None,
    ) -> dict[str, Any]:
        """Ask the author of a protected change (or a human) to let you touch it. Returns the
        consent with its status (pending, granted, denied, expired); when granted, pass its
        consent_id to acquire_write_authority. It is single-use."""
        with ctx.waiting(request, wait_s):  # before the ask: refused, it asked nothing
            consent = await _call(client.ask_consent(change_id, reason))
            if wait_s and consent.get("status") == "pending":
                try:
                    consent = await _call(client.consent(consent["consent_id"], wait_s))
                except ToolError as err:  # asked all the same: its id is the model's to keep
                    asked, why = consent["consent_id"], str(err).splitlines()[0]
                    consent["next"] = (
                        f"Your consent request {asked} was made and is pending, but waiting for "
                        f"its answer failed ({why}). Do not ask again: wait with "
                        f"get_consent(consent_id={asked!r}, wait_s=...)."
                    )
        return consent

    @server.tool(annotations=_READ)
    async def get_consent(
        consent_id: Annotated[
            str, Field(description="the consent_id from ask_consent", pattern=ID_PATTERN)
        ],
        wait_s: Annotated[
            float,
            Field(
                description="wait up to this many seconds while it is still pending",
                ge=0,
                le=300,
            ),
            NUMBER,
        ] = 0,
        request: Context[Any, Any] | None = None,
    ) -> dict[str, Any]:
        """A consent request and its status: pending, granted, denied, expired (nobody
        answered in time: escalated to a human, not a denial) or used."""
        with ctx.waiting(request, wait_s):
            return await _call(client.consent(consent_id, wait_s))

    @server.tool(annotations=_WRITE)
    async def answer_consent(
        consent_id: Annotated[str, Field(description="a consent asked of you", pattern=ID_PATTERN)],
        decision: Annotated[
            Literal["grant", "deny"],
            Field(
                description="grant lets the requester touch your change once; deny refuses",
            ),
        ],
    ) -> dict[str, Any]:
        """Answer a consent request about a change you authored."""
        if decision == "grant":
            return await _call(client.grant_consent(consent_id))
        return await _call(client.deny_consent(consent_id))
