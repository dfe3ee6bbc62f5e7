"""``writ mcp``: writ's protocol as MCP tools and resources, for any MCP-speaking agent.

One server process speaks for one principal: it calls writ with the token it was started
with (``--token`` / ``WRIT_TOKEN``), so an agent can never act as somebody else, and no tool
takes a token or a principal name. It is stateless: lease ids and fencing tokens are
returned by one tool and passed as arguments to the next, never kept in a session.

There is deliberately no tool to approve or deny a rollback, revoke a lease, freeze a
prefix or add a principal: those belong to humans and their queues (and writ refuses an
agent's token for them anyway).

Refusals come back as tool errors (``isError``) whose text says what happened and what to
do next: who holds the resource and until when, whose consent is needed and how to ask,
that only the human queue can approve a rollback.

Transports: stdio (the default; the client starts ``writ mcp``) and streamable HTTP
(``--transport http``, endpoint ``/mcp``).
"""

from writ.mcp.http import serve as serve
from writ.mcp.refusals import guidance as guidance
from writ.mcp.server import DEFAULT_HTTP_PORT as DEFAULT_HTTP_PORT
from writ.mcp.server import INSTRUCTIONS as INSTRUCTIONS
from writ.mcp.server import TOOL_NAMES as TOOL_NAMES
from writ.mcp.server import create_server as create_server
from writ.mcp.sessions import SessionLimits as SessionLimits

__all__ = [
    "DEFAULT_HTTP_PORT",
    "INSTRUCTIONS",
    "TOOL_NAMES",
    "SessionLimits",
    "create_server",
    "guidance",
    "serve",
]
