"""An agent cannot make writ page or wake without bound, nor starve a page of a connection.

A repeated rollback request, or a repeated consent ask, by the same principal while its first
is pending is that first one again: the same answer, no row, no page, no wake. Other
principals' requests are distinct, up to a cap per lease (per change), past which a request
is 409 ``conflict`` and writes nothing. Outbound calls run in lanes (``writ.engine.wake.LANES``):
wakes to a route that accepts and never answers hold neither a page's connection nor another
host's wake. Every call goes to a real HTTP server in a thread.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.test_http import ADMIN, Writ, serve
from writ.engine import Engine
from writ.engine import wake as outbound
from writ.rules import consent as consent_rule
from writ.rules import rollbacks as rollback_rule
from writ.stores.sqlite import SQLiteStore


class Receiver:
    """A real HTTP endpoint: records each POST's path, answers 200, and sets ``got``."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.paths.append(self.path)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                outer.got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> int:
        return sum(p == path for p in self.paths)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rx() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
async def writ(
    backend: Backend, rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Writ]:
    """The app over each store; perf-agent and the queue ops-queue wake at ``rx``."""
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN)
    async with serve(backend.url, clock=backend.clock) as w:
        yield w


async def _rows(w: Writ, event: str) -> list[dict[str, Any]]:
    return [r for r in await w.audit() if r["event"] == event]


async def test_a_repeated_rollback_request_is_the_pending_one(
    writ: Writ, rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked again while pending: the same request (201, the same body), no row, no page.
    Another principal's request is its own, up to PENDING_PER_LEASE; one more is 409
    ``conflict`` naming the pending ones, and writes nothing. Decided, it may be asked again."""
    monkeypatch.setattr(rollback_rule, "PENDING_PER_LEASE", 2)
    w = writ
    perf = await w.principal("perf-agent")
    queue = await w.principal("ops-queue", "queue", wake=f"{rx.base}/page/ops")
    nosy, other, third = [await w.principal(n) for n in ("nosy-agent", "other", "third")]
    plan = {
        "allowed": True,
        "path": "/ops/rollback?txn=1",
        "key_holder": "ops-queue",
        "override_queue": "ops-queue",
    }
    lease = await w.grant(perf, "prod/db", rollback=plan)
    ask = {"lease_id": lease["lease_id"], "reason": "db latency"}

    async def request(token: str, **body: Any) -> Any:
        return await w.c.post("/v1/rollbacks", json=body or ask, headers=w.auth(token))

    answers = await asyncio.gather(*(request(nosy) for _ in range(5)))  # at once, too
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert all(r.json() == answers[0].json() for r in answers), [r.json() for r in answers]
    await w.engine.caller.drain()
    assert len(await _rows(w, "rollback.requested")) == 1
    assert rx.to("/page/ops") == 1
    # another principal: a distinct request, paged; then the cap
    second = await request(other)
    assert (
        second.status_code == 201
        and second.json()["rollback_id"] != answers[0].json()["rollback_id"]
    )
    await w.engine.caller.drain()
    seq = (await w.audit())[-1]["seq"]
    refused = await request(third)
    assert refused.status_code == 409, refused.text
    err = refused.json()["error"]
    assert err["code"] == "conflict" and set(err["pending"]) == {
        answers[0].json()["rollback_id"],
        second.json()["rollback_id"],
    }
    await w.engine.caller.drain()
    assert (await w.audit())[-1]["seq"] == seq  # the refusal wrote nothing
    assert rx.to("/page/ops") == 2
    # decided: asking again is a new request, and pages again
    r = await w.c.post(
        f"/v1/rollbacks/{answers[0].json()['rollback_id']}/deny", headers=w.auth(queue)
    )
    assert r.status_code == 200, r.text
    again = await request(nosy)
    assert again.status_code == 201 and again.json()["rollback_id"] not in err["pending"]
    await w.engine.caller.drain()
    assert len(await _rows(w, "rollback.requested")) == 3
    assert rx.to("/page/ops") == 3
    assert (await w.engine.verify()).ok


async def test_a_repeated_consent_ask_is_the_pending_one(
    writ: Writ, backend: Backend, rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked again while pending: the same ask, no row, no wake of the author; up to
    PENDING_PER_CHANGE asks of others, then 409 ``conflict`` writing nothing. Past its
    deadline an ask no longer stands in the way: the same requester may ask anew."""
    monkeypatch.setattr(consent_rule, "PENDING_PER_CHANGE", 2)
    w = writ
    perf = await w.principal("perf-agent", wake=f"{rx.base}/wake/perf")
    cost, other, third = [await w.principal(n) for n in ("cost-agent", "other", "third")]
    lease = await w.grant(perf, "prod/db")
    r = await w.c.post(
        f"/v1/leases/{lease['lease_id']}/changes",
        json={"attribute": "capacity", "summary": "4->8"},
        headers=w.auth(perf),
    )
    assert r.status_code == 201, r.text
    ask = {"change_id": r.json()["change_id"], "reason": "cost"}

    async def request(token: str) -> Any:
        return await w.c.post("/v1/consents", json=ask, headers=w.auth(token))

    answers = await asyncio.gather(*(request(cost) for _ in range(10)))  # at once, too
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert all(r.json() == answers[0].json() for r in answers)
    assert answers[0].json()["status"] == "pending"
    await w.engine.caller.drain()
    assert len(await _rows(w, "consent.requested")) == 1
    assert rx.to("/wake/perf") == 1
    assert (await request(other)).status_code == 201
    await w.engine.caller.drain()
    seq = (await w.audit())[-1]["seq"]
    refused = await request(third)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    await w.engine.caller.drain()
    assert (await w.audit())[-1]["seq"] == seq and rx.to("/wake/perf") == 2
    # past the deadline (consent_timeout_s, 120 s by default): a new ask
    await backend.advance(121)
    fresh = await request(cost)
    assert fresh.status_code == 201
    assert fresh.json()["consent_id"] != answers[0].json()["consent_id"]


# ----------------------------------------------------------------------------- lanes
def _hanging_route() -> tuple[str, threading.Event, threading.Event, socketserver.TCPServer]:
    """A route that reads a request's head and never answers: its URL, an event set at its
    first request, and one that lets every connection go."""
    first, stop = threading.Event(), threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536) or b"\r\n\r\n"
            first.set()
            stop.wait()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/wake", first, stop, server


@pytest.fixture
async def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Engine]:
    """An engine whose outbound lanes are small: 2 pages, 1 rollback, 2 wakes (1 per host);
    a pool of 5 connections."""
    monkeypatch.setattr(outbound, "LANES", {"page": (2, 2), "rollback": (1, 1), "wake": (2, 1)})
    e = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db"))
    await e.start(background=False)
    e.caller.timeout = 20.0  # a hanging call holds its connection for the whole test
    yield e
    await e.stop()


async def test_a_hanging_wake_route_delays_no_page_and_no_other_wake(
    engine: Engine, rx: Receiver
) -> None:
    """Ten wakes to a route that never answers (more than the pool's connections) and then
    a page: the page is delivered at once, and so is a wake to another host; the hanging
    host holds only its share of the wake lane."""
    url, first, stop, server = _hanging_route()
    row = {"agent_id": "writ", "resource": "prod/db", "lock_holder": "none"}
    try:
        for _ in range(10):
            engine.caller.call("wake", url, {"to": "hostile", "reason": "x"}, row)
        assert await asyncio.to_thread(first.wait, 5)
        engine.caller.call("page", f"{rx.base}/page/ops", {"to": "ops", "reason": "p"}, row)
        assert await asyncio.to_thread(rx.got.wait, 5), "the page waited behind the wakes"
        rx.got.clear()
        engine.caller.call("wake", f"{rx.base}/wake/perf", {"to": "perf", "reason": "w"}, row)
        assert await asyncio.to_thread(rx.got.wait, 5), "a wake waited behind another host's"
        assert rx.paths == ["/page/ops", "/wake/perf"]
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


async def test_wakes_filling_their_lane_delay_no_page_and_no_rollback(
    engine: Engine, rx: Receiver
) -> None:
    """Wakes to two hosts that never answer fill the wake lane (and more than the pool):
    a page and an approved rollback's call still go at once, each in its own lane."""
    hanging = [_hanging_route(), _hanging_route()]
    row = {"agent_id": "writ", "resource": "prod/db", "lock_holder": "none"}
    try:
        for url, *_ in hanging:
            for _ in range(10):
                engine.caller.call("wake", url, {"to": "hostile", "reason": "x"}, row)
        for _, first, *_ in hanging:
            assert await asyncio.to_thread(first.wait, 5)
        engine.caller.call("page", f"{rx.base}/page/ops", {"to": "ops", "reason": "p"}, row)
        assert await asyncio.to_thread(rx.got.wait, 5), "the page waited behind the wakes"
        call = engine.caller.post(f"{rx.base}/ops/rollback", {"rollback": {}}, attempts=1)
        try:
            result = await asyncio.wait_for(call, 5)
        except TimeoutError:
            pytest.fail("the rollback's call waited behind the wakes")
        assert result.ok, result.describe()
        assert rx.paths == ["/page/ops", "/ops/rollback"]
    finally:
        for _, _, stop, server in hanging:
            stop.set()
            server.shutdown()
            server.server_close()
