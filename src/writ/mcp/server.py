"""The MCP server: its instructions, its tools in order, and :func:`create_server`, which adds
each tool module's tools and then the resources."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from writ._version import __version__
from writ.client import AsyncClient
from writ.mcp import resources
from writ.mcp.context import WAITS_IN_ALL, WAITS_PER_SESSION, ToolContext
from writ.mcp.tools import authority, consent, leases, reads, rollbacks

DEFAULT_HTTP_PORT = 7413

INSTRUCTIONS = """\
writ decides which agent holds write authority on a production resource right now.
Before you change a resource (a path like `prod/db` or `orders/checkout-write`), call
acquire_write_authority and keep the returned lease_id and fencing_token: pass them to
renew_lease, record_change and release_lease, and send the fencing token with your writes
(HTTP header `Writ-Fencing-Token`, with `Writ-Lease: <lease_id>` through a writ gate).
If you are refused, read the error: it names who holds the resource and until when, or whose
consent you need. Do not write to a resource you do not hold. Renew before expires_at;
release as soon as you are done. Record each change you make (record_change) so nobody
silently undoes it. Undoing another agent's recent change needs its consent (ask_consent).
You may request a rollback, but only the human queue that holds the key can approve it.
"""

# The tools this server offers, in the order it registers them.
TOOL_NAMES = (
    "acquire_write_authority",
    "renew_lease",
    "release_lease",
    "get_lease",
    "who_holds",
    "resource_status",
    "list_held_leases",
    "record_change",
    "ask_consent",
    "get_consent",
    "answer_consent",
    "request_rollback",
    "get_rollback",
    "watch_events",
    "whoami",
    "explain_authority",
    "wake_holder",
)


def create_server(
    client: AsyncClient,
    name: str = "writ",
    allow_human: bool = False,
    waits_per_session: int = WAITS_PER_SESSION,
    waits_in_all: int = WAITS_IN_ALL,
) -> MCPServer[Any]:
    """An :class:`MCPServer` whose tools call writ through ``client`` (one principal).

    Unless ``allow_human``, the tools refuse to work when the token belongs to a human, a
    queue or an admin: a model must never answer consents or act with a human's authority.
    """
    server: MCPServer[Any] = MCPServer(
        name,
        title="writ write authority",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
    )
    ctx = ToolContext(client, allow_human, waits_per_session, waits_in_all)
    for module in (leases, consent, rollbacks, reads, authority):  # the order of TOOL_NAMES
        module.register(server, ctx)
    resources.register(server, ctx)
    return server
