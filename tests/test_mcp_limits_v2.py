"""``writ mcp``'s limits, driven by the real MCP client (and by plain requests, to open many
sessions): how many HTTP sessions it keeps and for how long, each client's share of them, the
waits of a client on the newer (sessionless) protocol, every number argument's schema, and an
ask for consent at the wait cap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.server_fixtures import LiveServer, in_background, run_writ, serve, serve_asgi, unique
from tests.test_mcp import HTTP_TOKEN, People, agent_session, call, refused
from writ.client import AsyncClient
from writ.core.errors import Unavailable
from writ.mcp import SessionLimits, create_server
from writ.mcp.http import http_app

HEADERS = {"Authorization": f"Bearer {HTTP_TOKEN}", "Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ANOTHER_ADDRESS = "127.0.0.2"  # a second client of the loopback


@pytest.fixture
def people(live_server: LiveServer) -> People:
    return People(live_server)


@contextmanager
def mcp_at(writ: LiveServer, token: str, sessions: SessionLimits) -> Iterator[str]:
    """The app `writ mcp --transport http` serves, acting with ``token``, its sessions within
    ``sessions``, served in this process: its URL."""
    server = create_server(AsyncClient(writ.url, token))
    with serve_asgi(http_app(server, "127.0.0.1", "/mcp", HTTP_TOKEN, sessions)) as base:
        yield f"{base}/mcp"


def raw(local_address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A plain HTTP client from ``local_address``."""
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    return httpx.AsyncClient(transport=transport, headers=HEADERS, timeout=30)


async def until(predicate: Any) -> Any:
    """Await ``predicate()`` until it is truthy, for up to 10 s (polls: for what no event
    announces)."""
    deadline = time.monotonic() + 10
    while not (got := await predicate()):
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.02)
    return got


# ----------------------------------------------------------------------------- sessions
async def test_each_client_has_its_share_of_the_sessions(
    live_server: LiveServer, people: People
) -> None:
    """One client once held all 10,000 sessions the SDK allows: now one more than its share
    is 429 (no session made), another client still opens its own, and ending one gives the
    share back."""
    with mcp_at(live_server, people.a_token, SessionLimits(8, per_client=2)) as url:
        async with raw() as a, raw(ANOTHER_ADDRESS) as b:
            opened = [await a.post(url, json=INITIALIZE) for _ in range(2)]
            assert [r.status_code for r in opened] == [200, 200], [r.text for r in opened]
            over = await a.post(url, json=INITIALIZE)
            assert over.status_code == 429, over.text
            assert "already has 2 MCP sessions open" in over.json()["error"]["message"]
            assert (await b.post(url, json=INITIALIZE)).status_code == 200
            sid = opened[0].headers["mcp-session-id"]
            ended = await a.delete(
                url, headers={"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            )
            assert ended.status_code == 200, ended.text
            assert (await a.post(url, json=INITIALIZE)).status_code == 200


async def test_the_server_keeps_so_many_sessions_for_so_long(
    live_server: LiveServer, people: People
) -> None:
    """The server's own cap is --max-sessions (the SDK's 10,000 unless told), and a session
    idle --session-idle-s is closed (the SDK's 30 minutes unless told), making room."""
    with mcp_at(live_server, people.a_token, SessionLimits(3, per_client=0, idle_s=1)) as url:
        async with raw() as a:
            opened = [await a.post(url, json=INITIALIZE) for _ in range(3)]
            assert all(r.status_code == 200 for r in opened), [r.text for r in opened]
            full = await a.post(url, json=INITIALIZE)
            assert full.status_code == 503 and "Too many open sessions" in full.text

            async def room() -> bool:
                return (await a.post(url, json=INITIALIZE)).status_code == 200

            await until(room)  # once the first ones have been idle 1 s
            old = {"mcp-session-id": opened[0].headers["mcp-session-id"]}
            gone = await a.post(
                url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=old
            )
            assert gone.status_code == 404, gone.text


async def test_a_clients_share_comes_back_as_its_sessions_idle_out(
    live_server: LiveServer, people: People
) -> None:
    """A session with a request in flight holds its client's share past the idle time, as
    the SDK keeps it open; once idle that long, the SDK closes it and the share comes back."""
    sessions = SessionLimits(8, per_client=1, idle_s=1)
    with mcp_at(live_server, people.a_token, sessions) as url:
        async with raw() as a:
            opened = await a.post(url, json=INITIALIZE)
            session = {
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            }
            ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await a.post(url, json=ready, headers=session)).status_code == 202
            ask = {"resource": people.resource, "after_seq": 0, "wait_s": 60}  # none yet: waits
            body = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "watch_events", "arguments": ask},
            }
            waiting = asyncio.ensure_future(a.post(url, json=body, headers=session))
            await asyncio.sleep(1.5)  # past the idle time: nothing announces "nothing"
            busy = await a.post(url, json=INITIALIZE)
            assert busy.status_code == 429, busy.text
            with live_server.client(people.b_token) as c:  # the event the call waits for
                c.release(c.acquire(people.resource, "x", ttl_s=30)["lease_id"])
            answered = await waiting  # on its session, which was still open
            assert answered.status_code == 200 and "lease.granted" in answered.text

            async def room() -> bool:
                return (await a.post(url, json=INITIALIZE)).status_code == 200

            await until(room)  # idle 1 s since: closed, its share back


# ----------------------------------------------------------------------------- sessionless waits
MODERN = "2026-07-28"


async def test_a_client_without_sessions_has_one_share_of_the_waits(
    live_server: LiveServer, people: People
) -> None:
    """On the newer protocol each request stands alone, and each was a share of the waits of
    its own: the SDK's own client had 5 waiting under a cap of 1. Its requests now count
    against its client (its address), whatever Mcp-Session-Id it writes; another client has
    its own share."""
    env = {"WRIT_URL": live_server.url, "WRIT_TOKEN": people.a_token}
    args = ["mcp", "--transport", "http", "--port", "0", "--http-token", HTTP_TOKEN]
    with run_writ([*args, "--max-waits-per-session", "1"], env) as url:
        async with _modern(url) as a, _modern(url, ANOTHER_ADDRESS) as b, raw() as forged:
            assert a.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS, a.protocol_version
            ask = {"resource": people.resource, "after_seq": 0, "wait_s": 60}  # none yet: waits
            calls = [asyncio.ensure_future(a.call_tool("watch_events", ask)) for _ in range(3)]
            calls.append(asyncio.ensure_future(b.call_tool("watch_events", ask)))
            done: set[asyncio.Future[Any]] = set()
            waiting = set(calls)
            while len(done) < 2:  # the two over a's share answer at once
                more, waiting = await asyncio.wait(
                    waiting, timeout=20, return_when=asyncio.FIRST_COMPLETED
                )
                assert more, "nothing was refused: each request had a share of its own"
                done |= more
            refusals = [" ".join(getattr(c, "text", "") for c in d.result().content) for d in done]
            assert len(done) == 2 and all("client already has 1 tool call" in t for t in refusals)
            text = await _forged_session_call(forged, url, ask)
            assert "client already has 1 tool call" in text, text
            with live_server.client(people.b_token) as writer:  # the event they wait for
                lease = writer.acquire(people.resource, "x", ttl_s=30)
                results = await asyncio.gather(*waiting)
                writer.release(lease["lease_id"])
            assert len(results) == 2 and not any(r.is_error for r in results)


@asynccontextmanager
async def _modern(url: str, local_address: str | None = None) -> AsyncIterator[Client]:
    """The SDK's own client (it negotiates the newest protocol), from ``local_address``."""
    transport = httpx2.AsyncHTTPTransport(local_address=local_address)
    async with (
        httpx2.AsyncClient(
            transport=transport,
            headers={"Authorization": f"Bearer {HTTP_TOKEN}"},
            timeout=httpx2.Timeout(30, read=300),
        ) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def _forged_session_call(c: httpx.AsyncClient, url: str, arguments: dict[str, Any]) -> str:
    """A newer-protocol watch_events that writes an Mcp-Session-Id of its own: its text."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"_meta": meta, "name": "watch_events", "arguments": arguments},
    }
    headers = {
        "Mcp-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "watch_events",
        "Mcp-Session-Id": unique("forged"),
        "Content-Type": "application/json",
    }
    r = await c.post(url, content=json.dumps(body), headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["result"]["content"][0]["text"])


# ----------------------------------------------------------------------------- numbers
BOUNDS = ("ge", "le", "gt", "lt")


def _keywords(schema: Any) -> Iterator[str]:
    """Every keyword of a JSON schema, nested ones too (not the names of properties)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    yield from _keywords(sub)
                continue
            yield key
            yield from _keywords(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)


def _numbers(prop: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """A property's number schemas, and whether it takes null."""
    options = prop.get("anyOf", [prop])
    numbers = [o for o in options if o.get("type") in ("number", "integer")]
    return numbers, any(o.get("type") == "null" for o in options)


async def test_every_number_publishes_its_range_and_takes_null_when_optional(
    live_server: LiveServer, people: People
) -> None:
    """Placed before its Field, the number check hid the type from the constraints: the
    schema said "ge"/"le" (no client reads them) and an explicit null for an optional number
    failed as an opaque "Error executing tool". Every number of every tool now publishes
    minimum/maximum, takes null where its schema does (and refuses it with a message where
    not), and still refuses true and "30"."""
    async with agent_session(live_server, people.a_token, "stdio") as a:
        lease = await call(a, "acquire_write_authority", resource=people.resource, intent="x")
        valid = {
            "resource": people.resource,
            "intent": "x",
            "lease_id": lease["lease_id"],
            "attribute": "capacity",
            "summary": "s",
            "change_id": "ch_none",
            "reason": "r",
            "consent_id": "cn_none",
            "decision": "deny",
            "rollback_id": "rb_none",
        }
        checked = []
        for tool in (await a.list_tools()).tools:
            schema = tool.input_schema
            assert not set(_keywords(schema)) & set(BOUNDS), (tool.name, schema)
            props = schema.get("properties", {})
            base = {k: valid[k] for k in schema.get("required", [])}
            if "wait_s" in props:
                base["wait_s"] = 0
            for name, prop in props.items():
                numbers, nullable = _numbers(prop)
                if not numbers:
                    continue
                assert all("minimum" in n for n in numbers), (tool.name, name, prop)
                result = await a.call_tool(tool.name, {**base, name: None})
                text = " ".join(getattr(c, "text", "") for c in result.content)
                if nullable:  # taken: answered, or refused by writ (not by the arguments)
                    assert not result.is_error or "Details: {" in text, (tool.name, name, text)
                else:  # refused, saying why
                    assert result.is_error and "validation error" in text, (tool.name, name, text)
                    assert name in text, (tool.name, name, text)
                for not_a_number in (True, "30"):
                    text = await refused(a, tool.name, **{**base, name: not_a_number})
                    assert "a number is required" in text, (tool.name, name, text)
                checked.append(f"{tool.name}.{name}{'?' if nullable else ''}")
        assert {"renew_lease.ttl_s?", "record_change.protect_s?", "watch_events.after_seq?"} <= set(
            checked
        ), checked
        await call(a, "release_lease", lease_id=lease["lease_id"])


# ----------------------------------------------------------------------------- consent at the cap
async def _change(writ: LiveServer, token: str, resource: str) -> str:
    """A protected change by ``token``'s principal on ``resource``: its id."""
    with writ.client(token) as c:
        lease = c.acquire(resource, "bump", ttl_s=60, touches=["capacity"])
        change = c.change(lease["lease_id"], "capacity", "4 -> 8", protect_s=600)
        c.release(lease["lease_id"])
    return str(change["change_id"])


async def _consents_asked(writ: LiveServer, resource: str) -> list[dict[str, Any]]:
    with writ.client() as admin:
        rows = admin.audit(resource=resource, limit=100)["rows"]
    return [r for r in rows if r["event"] == "consent.requested"]


async def _holding_the_only_wait(session: ClientSession, resource: str) -> asyncio.Future[Any]:
    """A call of ``session`` that waits for the first event under ``resource`` (none yet), once
    it holds the session's one wait: a probe that asks nothing is refused for it."""
    ask = {"resource": resource, "after_seq": 0, "wait_s": 60}
    holder = asyncio.ensure_future(session.call_tool("watch_events", ask))
    deadline = time.monotonic() + 10
    while True:
        probe = await session.call_tool("get_consent", {"consent_id": "cn_none", "wait_s": 1})
        if "already has 1 tool call waiting" in str(probe.content):
            return holder
        assert time.monotonic() < deadline, "the holder never held the wait"
        if holder.done():  # refused: the probe held the wait then
            holder = asyncio.ensure_future(session.call_tool("watch_events", ask))


async def test_ask_consent_at_the_wait_cap_asks_nothing(
    live_server: LiveServer, people: People
) -> None:
    """ask_consent with wait_s asked first and counted its wait after: at the cap it said
    "Nothing was done" though the author had been asked, and the model never got the
    consent_id (asking again asked again). It now counts the wait before it asks."""
    change_id = await _change(live_server, people.a_token, people.resource)
    elsewhere = f"{unique('mcp')}/other"
    async with agent_session(
        live_server, people.b_token, "stdio", None, "--max-waits-per-session", "1"
    ) as b:
        holder = await _holding_the_only_wait(b, elsewhere)
        text = await refused(
            b, "ask_consent", change_id=change_id, reason="need to scale down", wait_s=10
        )
        assert "Nothing was done" in text, text
        assert await _consents_asked(live_server, people.resource) == []
        with live_server.client(people.a_token) as c:  # the event the holder waits for
            c.release(c.acquire(elsewhere, "x", ttl_s=30)["lease_id"])
        assert not (await holder).is_error


async def test_ask_consent_whose_wait_fails_still_hands_back_the_consent(
    tmp_path: Path,
) -> None:
    """When the consent was asked but waiting for its answer fails (here: writ refuses the
    principal's second wait), the tool returns the pending consent and says to wait with
    get_consent, not to ask again: a tool error lost the consent_id."""
    with serve(tmp_path / "w.db", max_waits=1) as srv:
        _, author = srv.principal("agent")
        _, asker = srv.principal("agent")
        resource = f"{unique('mcp')}/db"
        change_id = await _change(srv, author, resource)
        elsewhere = f"{unique('mcp')}/other"
        # nothing under `elsewhere` yet: a long poll of it waits for the first event
        with srv.client(asker) as holder, in_background(lambda: holder.events(elsewhere, 0, 30)):
            with srv.client(asker) as probe:

                async def held() -> bool:  # the asker's one wait on writ is taken
                    try:
                        probe.events(elsewhere, 0, 0.05)
                    except Unavailable:
                        return True
                    return False

                await until(held)
            async with agent_session(srv, asker, "stdio") as b:
                consent = await call(
                    b, "ask_consent", change_id=change_id, reason="scale down", wait_s=10
                )
            assert consent["status"] == "pending" and consent["consent_id"]
            assert "Do not ask again" in consent["next"] and "get_consent" in consent["next"]
            with srv.client(author) as c:  # the event the holder waits for
                c.release(c.acquire(elsewhere, "x", ttl_s=30)["lease_id"])
        assert len(await _consents_asked(srv, resource)) == 1
