"""An MCP client session driving writ's tools, the way an MCP-speaking agent would.

    python examples/mcp_session.py

Starts two ``writ mcp`` servers over stdio (one per agent, each with its own token), then:
routing-agent takes write authority; perf-agent is refused with the holder named in the tool
error; routing-agent records a change and releases; perf-agent asks consent, gets it, takes
the lease; and requests a rollback, which only the human queue can approve.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from typing import Any

from _setup import URL, register, resource
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def connect(stack: AsyncExitStack, token: str) -> ClientSession:
    """What an MCP client does with {"command": "writ", "args": ["mcp"], "env": {...}}."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "writ.cli", "mcp"],
        env={**os.environ, "WRIT_URL": URL, "WRIT_TOKEN": token},
    )
    read, write = await stack.enter_async_context(stdio_client(params))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def tool(session: ClientSession, name: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(name, args)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        print(f"  {name} -> tool error:\n    " + text.replace("\n", "\n    "))
        return {}
    out = result.structured_content or {}
    print(f"  {name} -> {json.dumps(out)[:120]}...")
    if out.get("next"):
        print(f"    next: {out['next']}")
    return out


async def main() -> None:
    db = resource("db")
    routing, routing_token = register("routing-agent")
    perf, perf_token = register("perf-agent")
    queue, _ = register("svc-ops", kind="queue")
    async with AsyncExitStack() as stack:
        a = await connect(stack, routing_token)
        b = await connect(stack, perf_token)
        print(f"tools: {', '.join(t.name for t in (await a.list_tools()).tools)}\n")

        print(f"{routing}:")
        lease = await tool(
            a,
            "acquire_write_authority",
            resource=db,
            intent="reroute traffic through the DB tier",
            ttl_s=120,
            touches=["routing"],
            rollback={
                "allowed": True,
                "path": "/internal/routing/rollback",
                "key_holder": queue,
                "override_queue": queue,
            },
        )
        print(f"{perf}:")
        await tool(b, "acquire_write_authority", resource=db, intent="double capacity")

        print(f"{routing}:")
        change = await tool(
            a,
            "record_change",
            lease_id=lease["lease_id"],
            attribute="routing",
            summary="route 30% of reads via db-tier",
        )
        await tool(a, "release_lease", lease_id=lease["lease_id"])

        print(f"{perf}:")
        await tool(
            b,
            "acquire_write_authority",
            resource=db,
            intent="undo the reroute",
            touches=["routing"],
        )
        consent = await tool(
            b, "ask_consent", change_id=change["change_id"], reason="the DB tier is saturated"
        )
        print(f"{routing}:")
        await tool(a, "answer_consent", consent_id=consent["consent_id"], decision="grant")
        print(f"{perf}:")
        mine = await tool(
            b,
            "acquire_write_authority",
            resource=db,
            intent="undo the reroute",
            touches=["routing"],
            consent_id=consent["consent_id"],
        )
        await tool(
            b,
            "request_rollback",
            lease_id=lease["lease_id"],
            reason="the reroute saturated the DB tier",
        )
        await tool(b, "release_lease", lease_id=mine["lease_id"])
        state = await b.read_resource(f"writ://resources/{db}")
        print(f"\nwrit://resources/{db}:\n{state.contents[0].text[:300]}")  # type: ignore[union-attr]


asyncio.run(main())
