"""The shortest way into the lean path (``WritApp.writ_direct``, the listener's hook
``writ.net.limits.direct_answer``): a plain request for a hot route skips the ASGI layers
in front of it (OpsFront, LimitBody, TextURL) and uvicorn's ASGI messages, and is measured
as the layers would measure it. Its answers and its metrics must be the layers' own,
anything the layers would refuse or log must still go through them, and the connection must
behave as uvicorn's own (kept alive, closed when asked, pipelined requests answered in
order, a hung-up waiter leaving the queue). Over real HTTP, through the protocol
``writ serve`` runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn

from tests.server_fixtures import free_port
from tests.stores_fixtures import Backend
from tests.test_authority import World, world
from tests.test_operate import samples
from writ.api.fast import FastLeases, _plain
from writ.api.middleware import MAX_BODY, MAX_HEADERS
from writ.api.ops import FENCE, LEASES, RELEASE
from writ.api.serve import uvicorn_options
from writ.net.limits import Limits, direct_answer
from writ.telemetry import tracing


@pytest.fixture(autouse=True)
def as_served(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `writ serve` at its bench's level runs: no access log to write, no tracing (each
    would send the request through the layers), whatever tests before left behind."""
    caplog.set_level(logging.WARNING, logger="writ.access")
    monkeypatch.setattr(tracing, "_tracer", None)


@contextlib.asynccontextmanager
async def served(w: World, limits: Limits | None = None) -> AsyncIterator[int]:
    """``w``'s app on a real port, under uvicorn with the protocol ``writ serve`` runs
    (within ``limits``, by default its own); ``w.http`` talks to it there until the block
    ends. Yields the port."""
    port = free_port()
    options = uvicorn_options("127.0.0.1", port, "warning", limits)
    config = uvicorn.Config(w.app, lifespan="off", **options)  # the world started its engine
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    in_process, w.http = w.http, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    try:
        yield port
    finally:
        await w.http.aclose()
        w.http = in_process
        server.should_exit = True
        await task


def _spy_front(app: Any) -> list[str]:
    """The paths of the requests that go through the layers (``app.front``), from now."""
    front, seen = app.front, []

    async def spied(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await front(scope, receive, send)

    app.front = spied
    return seen


def _shape(r: httpx.Response) -> tuple[Any, ...]:
    """What an answer says, without the ids and times that differ from run to run."""
    body = r.json()
    if "error" in body:
        kept: Any = (body["error"]["code"], body["error"].get("field"))
    else:
        kept = tuple(sorted(body))
    return (
        r.status_code,
        r.headers.get("content-type"),
        r.headers.get("content-length") == str(len(r.content)),
        "retry-after" in r.headers,
        kept,
    )


_COUNTED = (
    "writ_http_request_duration_seconds_count",
    "writ_refusals_total",
    "writ_lease_acquire_wait_seconds_count",
)


async def _counts(w: World) -> dict[Any, float]:
    found = samples((await w.http.get("/metrics")).text)
    return {k: v for k, v in found.items() if k[0] in _COUNTED}


async def _story(w: World, n: int) -> tuple[list[tuple[Any, ...]], dict[Any, float]]:
    """Grants, refusals of every kind, fencing checks, releases, and two acquires the lean
    path does not take (a string for a number, a field it does not know): every answer's
    shape, and what the
    metrics counted meanwhile."""
    counted = await _counts(w)
    main = f"prod/db/main{n}"
    first = await w.lease("perf-agent", main, ttl_s=300)
    lease = first.json()
    bad = {"Authorization": "Bearer wrt_not-a-token", "content-type": "application/json"}
    answers = [
        first,
        await w.lease("admin", main),  # held: 409 with Retry-After
        await w.lease("cost-agent", "prod/db"),  # closed policy: 403
        await w.http.post("/v1/leases", content=b'{"resource":"a","intent":"b"}', headers=bad),
        await w.lease("perf-agent", main, ttl_s="30"),  # FastAPI's strict 422
        await w.get("perf-agent", FENCE, resource=main, token=lease["fencing_token"]),
        await w.get("perf-agent", FENCE, resource=main, token=1),
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release"),
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release"),
        await w.post("perf-agent", "/v1/leases/ls_not-a-lease/release"),
        # a field the lean path does not take: FastAPI answers, once measured
        await w.post(
            "admin", LEASES, {"resource": f"billing/{n}", "intent": "x", "consent_id": None}
        ),
    ]
    after = await _counts(w)
    return [_shape(r) for r in answers], {k: v - counted.get(k, 0) for k, v in after.items()}


async def test_plain_hot_requests_skip_the_layers_and_answer_and_count_as_they_did(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w, served(w):
        ops, w.app.ops = w.app.ops, None  # as before the shortest way in: all through the layers
        layered = _spy_front(w.app)
        before, before_metrics = await _story(w, 1)
        assert len(layered) == len(before) + 2  # and /metrics, twice
        w.app.ops = ops
        layered.clear()
        now, now_metrics = await _story(w, 2)
        # only the two acquires the lean path does not take, and /metrics, went through them
        assert layered == ["/metrics", LEASES, LEASES, "/metrics"], layered
    assert now == before
    assert now_metrics == before_metrics
    statuses = [s[0] for s in now]
    assert statuses == [201, 409, 403, 401, 422, 200, 200, 200, 410, 404, 201], statuses
    http = {
        (dict(labels)["route"], dict(labels)["status"]): n
        for (name, labels), n in now_metrics.items()
        if name == "writ_http_request_duration_seconds_count"
    }
    assert http[(LEASES, "201")] == 2 and http[(RELEASE, "404")] == 1, http
    assert http[(FENCE, "200")] == 2 and http[(LEASES, "409")] == 1, http


async def test_what_the_layers_log_or_refuse_still_goes_through_them(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """An access log to write, a second Authorization header, a path that is not text, a
    chunked body: the layers see each of them, and answer as they always did."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w):
        layered = _spy_front(w.app)
        h = w.h("perf-agent")
        with caplog.at_level("INFO", logger="writ.access"):
            r = await w.lease("perf-agent", "prod/db/a")
        assert r.status_code == 201 and r.headers.get("x-request-id"), r.headers
        assert any(rec.name == "writ.access" for rec in caplog.records)
        assert layered == [LEASES]
        twice = [("authorization", h["Authorization"])] * 2
        r = await w.http.post(f"/v1/leases/{r.json()['lease_id']}/release", headers=twice)
        assert r.status_code == 422 and "one Authorization header" in r.text, r.text
        r = await w.http.post("/v1/leases/ls_%01/release", headers=h)
        assert r.status_code == 422 and r.json()["error"]["field"] == "path", r.text

        async def chunks() -> Any:
            yield b'{"resource": "prod/db/b",'
            yield b' "intent": "x"}'

        ctype = {"content-type": "application/json"}
        r = await w.http.post("/v1/leases", content=chunks(), headers=h | ctype)
        assert r.status_code == 201, r.text
        assert len(layered) == 4, layered


async def test_a_release_path_that_only_begins_like_leases_is_not_a_release(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/v1/leasesX/{id}/release`` is no route: 404, and the lease stays held (the lean
    path once took any path that began with ``/v1/leases`` and had five segments)."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w):
        lease = (await w.lease("perf-agent", "prod/db/main", ttl_s=300)).json()
        for prefix in ("/v1/leasesX", "/v1/leases-old", "/v1/leases."):
            r = await w.post("perf-agent", f"{prefix}/{lease['lease_id']}/release")
            assert r.status_code == 404, (prefix, r.text)
        got = await w.get("perf-agent", f"/v1/leases/{lease['lease_id']}")
        assert got.json()["state"] == "held", got.text


async def test_the_python_clients_acquire_and_release_take_the_lean_path(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writ's own client (``writ release``, ``writ run``, ``client.lease``) asks the hot
    routes as plainly as a bench does: its release once carried a ``{}`` body, which the
    lean path leaves to the layers, so none of its releases took the short way, nor were
    relayed to a host's writer (operations.md: the others send it their releases)."""
    from writ.client import AsyncClient

    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        layered = _spy_front(w.app)
        async with AsyncClient(f"http://127.0.0.1:{port}", w.tokens["perf-agent"]) as client:
            lease = await client.acquire("prod/db/lean", intent="x", ttl_s=30)
            released = await client.release(lease["lease_id"])
        assert released["state"] == "released", released
        assert layered == [], layered
        # another's client may send a body with its release ('{}', anything): no route
        # reads one, and the release takes the short way all the same
        h = {"Authorization": f"Bearer {w.tokens['perf-agent']}"}
        for n, body in enumerate(({"json": {}}, {"content": b"not json"})):
            lease = (await w.lease("perf-agent", f"prod/db/body{n}")).json()
            r = await w.http.post(f"/v1/leases/{lease['lease_id']}/release", headers=h, **body)
            assert r.status_code == 200 and r.json()["state"] == "released", r.text
        assert layered == [], layered


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> Any:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
    }


def test_the_hot_routes_are_exactly_three() -> None:
    leases = FastLeases(app=None, engine=None)  # type: ignore[arg-type]
    taken = {
        ("POST", "/v1/leases"): LEASES,
        ("POST", "/v1/leases/ls_1/release"): RELEASE,
        ("GET", "/v1/fence"): FENCE,
    }
    for (method, path), route in taken.items():
        assert leases.route(_scope(method, path, [])) == route
    for method, path in [
        ("GET", "/v1/leases"),
        ("PUT", "/v1/leases"),
        ("POST", "/v1/fence"),
        ("POST", "/v1/leases/"),
        ("POST", "/v1/leases/ls_1"),
        ("POST", "/v1/leases//release"),
        ("POST", "/v1/leases/ls_1/release/"),
        ("POST", "/v1/leases/ls_1/renew"),
        ("POST", "/v1/leasesX/ls_1/release"),
        ("POST", "/v1/leases-x"),
        ("GET", "/v1/fence/"),
    ]:
        assert leases.route(_scope(method, path, [])) is None, (method, path)


def test_plain_is_what_the_layers_would_pass_on_untouched() -> None:
    auth = (b"authorization", b"Bearer wrt_x")
    json_ = (b"content-type", b"application/json")
    ok = [
        [],
        [auth, json_, (b"content-length", b"12")],
        [auth, (b"content-length", str(MAX_BODY).encode())],
        [auth, (b"content-length", b"0"), (b"x-other", b"y" * 100)],
    ]
    for headers in ok:
        assert _plain(_scope("POST", LEASES, headers), MAX_HEADERS), headers
    assert _plain(_scope("GET", FENCE, [auth], b"resource=a%2Fb&token=1"), MAX_HEADERS)
    refused = [
        [auth, auth],
        [auth, (b"content-length", b"1"), (b"content-length", b"1")],
        [auth, (b"content-length", str(MAX_BODY + 1).encode())],
        [auth, (b"content-length", b"00000001")],  # longer than MAX_BODY's digits
        [auth, (b"content-length", b"9" * 5000)],  # more digits than int() reads
        [auth, (b"content-length", b"+1")],
        [auth, (b"content-length", b"1_0")],
        [auth, (b"transfer-encoding", b"chunked")],
        [auth, (b"x-big", b"y" * MAX_HEADERS)],
    ]
    for headers in refused:
        assert not _plain(_scope("POST", LEASES, headers), MAX_HEADERS), headers[-1][:2]
    assert not _plain(_scope("POST", "/v1/leases/ls_\x01/release", [auth]), MAX_HEADERS)
    assert not _plain(_scope("GET", FENCE, [auth], b"resource=a%00&token=1"), MAX_HEADERS)


def _request(method: str, path: str, token: str, body: bytes = b"", *extra: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: writ", f"authorization: Bearer {token}"]
    if body:
        head += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join([*head, *extra, "", ""])).encode() + body


async def _answers(reader: asyncio.StreamReader, n: int) -> list[tuple[int, dict[str, str], Any]]:
    """The next ``n`` answers on a connection: status, headers, JSON body."""
    out = []
    for _ in range(n):
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        out.append((status, headers, json.loads(body)))
    return out


async def test_the_connection_behaves_as_uvicorns_own(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelined requests are answered in the order sent, direct or not; a kept connection
    serves the next request; ``Connection: close`` and HTTP/1.0 are answered and closed."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        layered = _spy_front(w.app)
        token = w.tokens["perf-agent"]
        acquire = json.dumps({"resource": "prod/db/pipe", "intent": "x"}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            _request("POST", LEASES, token, acquire)
            + _request("GET", "/v1/leases", token)  # FastAPI's, between two direct ones
            + _request("POST", "/v1/leases/ls_none/release", token)
            + _request("POST", LEASES, token, acquire)
        )
        got = await _answers(reader, 4)
        assert [a[0] for a in got] == [201, 200, 404, 409], got
        lease = got[0][2]
        assert got[1][2]["leases"][0]["lease_id"] == lease["lease_id"]
        assert got[3][1]["retry-after"] and "date" in got[0][1], got
        assert layered == ["/v1/leases"]  # only the GET
        release = f"/v1/leases/{lease['lease_id']}/release"
        writer.write(_request("POST", release, token, b"", "connection: close"))
        ((status, headers, _),) = await _answers(reader, 1)
        assert (status, headers.get("connection")) == (200, "close")
        assert await reader.read() == b""  # closed
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("POST", LEASES, token, acquire).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        ((status, headers, _),) = await _answers(reader, 1)
        assert (status, headers.get("connection")) == (201, "close")
        assert await reader.read() == b""
        writer.close()
        assert layered == ["/v1/leases"]


async def test_a_waiter_that_hangs_up_leaves_the_queue(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct acquire that waits (``wait_s``) and whose caller hangs up gives up its place
    (its ``lease.denied`` row says so): the holder's release grants nothing to it."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        held = (await w.lease("admin", "prod/db/q", ttl_s=300)).json()
        wait = json.dumps({"resource": "prod/db/q", "intent": "x", "wait_s": 30}).encode()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("POST", LEASES, w.tokens["perf-agent"], wait))
        await writer.drain()
        after = await _next_row(w, "lease.queued", 0)
        assert len((await w.engine.resource_status("prod/db/q"))["queue"]) == 1
        writer.close()
        await _next_row(w, "lease.denied", after)
        assert (await w.engine.resource_status("prod/db/q"))["queue"] == []
        r = await w.post("admin", f"/v1/leases/{held['lease_id']}/release")
        assert r.status_code == 200
        granted = [x for x in await w.rows("lease.granted") if x["resource"] == "prod/db/q"]
        assert len(granted) == 1, granted  # the admin's own, nothing after the release


async def _next_row(w: World, event: str, after: int) -> int:
    """Wait, on the engine's event feed (no polling), for the next ``event`` row after
    ``after``; the feed's position past it."""
    while True:
        out = await w.engine.events(None, after, wait_s=10)
        assert out["rows"], f"no {event} row in time"
        after = out["next_after_seq"]
        if any(row["event"] == event for row in out["rows"]):
            return int(after)


class _Flow:
    """uvicorn's flow control, as far as an answer reads it."""

    def __init__(self) -> None:
        self.write_paused = True
        self.writable = asyncio.Event()

    async def drain(self) -> None:
        await self.writable.wait()


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


async def test_a_direct_answer_waits_while_the_client_does_not_read() -> None:
    """A client that pipelines requests and never reads the answers fills the server's
    write buffer: past its high-water mark the next answer waits, as uvicorn's own ``send``
    does, so the connection stalls instead of the server's memory growing without bound."""
    completed: list[bool] = []
    cycle = SimpleNamespace(
        flow=_Flow(),
        transport=_Transport(),
        disconnected=False,
        response_started=False,
        response_complete=False,
        waiting_for_100_continue=False,
        default_headers=[(b"date", b"Sat, 05 Dec 2026 18:00:00 GMT")],
        keep_alive=False,
        message_event=asyncio.Event(),
        on_response=lambda: completed.append(True),
    )
    answer = asyncio.create_task(direct_answer(cycle, 404, b'{"error":{}}', [(b"x-a", b"1")]))
    for _ in range(5):  # turns of the loop: the answer is still held
        await asyncio.sleep(0)
    assert not answer.done() and cycle.transport.written == [] and not completed
    cycle.flow.write_paused = False
    cycle.flow.writable.set()  # the client read: the transport is writable again
    await answer
    (written,) = cycle.transport.written
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 404 Not Found",
        b"date: Sat, 05 Dec 2026 18:00:00 GMT",
        b"x-a: 1",
        b"content-length: 12",
        b"connection: close",
    ]
    assert body == b'{"error":{}}'
    assert cycle.response_complete and cycle.message_event.is_set() and completed == [True]
    assert cycle.transport.closed  # not kept alive: closed once answered


async def test_a_hook_that_fails_costs_the_request_nothing(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should the hook itself raise (a bug), the request is the app's to answer, as if
    there were no hook, and the log says so."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w):
        layered = _spy_front(w.app)

        def broken(cycle: Any) -> Any:
            raise RuntimeError("a bug in the hook")

        monkeypatch.setattr(w.app, "writ_direct", broken)
        r = await w.lease("perf-agent", "prod/db/h")
        assert r.status_code == 201, r.text
        assert layered == [LEASES]
        assert "the direct answer's hook failed" in caplog.text


async def test_a_100_continue_goes_before_the_answer(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Expect: 100-continue`` with the body sent at once: the interim answer uvicorn
    writes when the body is read leaves before the final one, even when the final one is
    ready without a turn of the loop (a refusal with the token already known) — and the
    connection serves the next request."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        layered = _spy_front(w.app)
        token = w.tokens["perf-agent"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        warm = json.dumps({"resource": "prod/db/c0", "intent": "x"}).encode()
        writer.write(_request("POST", LEASES, token, warm))  # the token is known after this
        ((status, _, _),) = await _answers(reader, 1)
        assert status == 201
        refused = json.dumps({"resource": 5, "intent": "x"}).encode()
        writer.write(_request("POST", LEASES, token, refused, "expect: 100-continue"))
        assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
        ((status, _, body),) = await _answers(reader, 1)
        assert status == 422 and body["error"]["field"] == "resource", body
        writer.write(_request("POST", "/v1/leases/ls_none/release", token))
        ((status, _, _),) = await _answers(reader, 1)
        assert status == 404
        writer.close()
        assert layered == []


def test_servers_whose_frames_differ_never_relay_to_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The frames' shape is part of a server's identity: during a rolling upgrade, a build
    whose calls the other would refuse is refused at its hello, and each writes itself."""
    from writ.api import relay

    engine = SimpleNamespace(
        store=SimpleNamespace(url="postgresql://db:5432/writ", schema="s"),
        policy=SimpleNamespace(to_dict=lambda: {"mode": "open"}),
    )
    now = relay.identity_of(engine)
    monkeypatch.setattr(relay, "WIRE", relay.WIRE + 1)
    assert relay.identity_of(engine) != now
    assert f"wire={relay.WIRE - 1}" in now


async def test_the_hook_skips_exactly_the_layers_it_knows(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``writ_direct`` stands in for OpsFront, LimitBody and TextURL, and only for them: a
    layer added to the chain later would be skipped on the hot routes too, so the chain is
    named here, and adding one means deciding whether the hot routes may go around it."""
    async with world(backend, tmp_path, monkeypatch) as w:
        chain, front = [], w.app.front
        while not isinstance(front, FastLeases):
            chain.append(type(front).__name__)
            front = front.app
        assert chain == ["OpsFront", "LimitBody", "TextURL"], chain
        assert front is w.app.leases and w.app.ops is w.app.front


_DEEP = b"[" * 1000 + b"]" * 1000
_JSON_CT = "content-type: application/json"
# (path, header lines after Host, body); "LEN" stands for a Content-Length of the body
_HOSTILE: list[tuple[str, list[str], bytes]] = [
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a\\ud800","intent":"x"}'),
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a","intent":"a\\u0000b"}'),
    (
        LEASES,
        ["AUTH", _JSON_CT, "LEN"],
        b'{"resource":"prod/db/a","intent":"x","touches":' + _DEEP + b"}",
    ),
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a","intent":"x","ttl_s":true}'),
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a","intent":"x","ttl_s":"30"}'),
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a","intent":"x","wait_s":true}'),
    (LEASES, ["AUTH", _JSON_CT, "LEN"], b"[]"),
    (LEASES, ["AUTH", "LEN"], b'{"resource":"prod/db/a","intent":"x"}'),  # no content type
    (LEASES, ["AUTH", "content-type: text/plain", _JSON_CT, "LEN"], b'{"resource":"prod/db/a"}'),
    (LEASES, ["authorization_: Bearer TOKEN", _JSON_CT, "LEN"], b'{"resource":"prod/db/a"}'),
    (LEASES, ["AUTH", _JSON_CT, "content_length: 30"], b'{"resource":"prod/db/a"}'),
    (LEASES, ["AUTH", _JSON_CT, "content-length: +24"], b'{"resource":"prod/db/a"}'),
    (LEASES, ["authorization: Bearer t\xf6k", _JSON_CT, "LEN"], b'{"resource":"prod/db/a"}'),
    (LEASES + "?x=%01", ["AUTH", _JSON_CT, "LEN"], b'{"resource":"prod/db/a","intent":"x"}'),
    ("/v1/leases/ls_%2e%2e/release", ["AUTH"], b""),
    ("/v1/leases/a%2Fb/release", ["AUTH"], b""),
    ("/v1/leases/ls_%00/release", ["AUTH"], b""),
    ("/v1/leases/ls_%F0%9F%94%92/release", ["AUTH"], b""),
    (FENCE + "?resource=prod%2Fdb&token=1&token=2", ["AUTH"], b""),
    (FENCE + "?resource=prod/db%00&token=1", ["AUTH"], b""),
]


async def _once(port: int, token: str, path: str, lines: list[str], body: bytes) -> Any:
    """One hostile request on a connection of its own: what its (first) answer says."""
    method = "GET" if path.startswith(FENCE) else "POST"
    head = [f"{method} {path} HTTP/1.1", "host: writ", "connection: close"]
    for line in lines:
        head.append(
            f"authorization: Bearer {token}"
            if line == "AUTH"
            else f"content-length: {len(body)}"
            if line == "LEN"
            else line.replace("TOKEN", token)
        )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write("\r\n".join([*head, "", ""]).encode("latin-1") + body)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    try:
        err = json.loads(payload)["error"]
        said: Any = (err["code"], err.get("field"))
    except (ValueError, KeyError, TypeError):  # uvicorn's own 400, or not an error
        said = payload[:80]
    return int(status_line.split()[1]), said


async def test_hostile_requests_are_answered_the_same_either_way(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that is not text, JSON a thousand deep, booleans and strings where numbers go,
    a header spelled with an underscore, a signed or missing length, a token that is not
    ASCII, encoded paths (dots, a slash, a NUL, an emoji), a repeated or non-text query:
    each gets the same status and error from the shortest way as from the layers, never a
    5xx; every acquire and release among them is refused, and nothing is granted."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        token = w.tokens["perf-agent"]
        ops, w.app.ops = w.app.ops, None
        layered = [await _once(port, token, *case) for case in _HOSTILE]
        w.app.ops = ops
        through_layers = _spy_front(w.app)
        direct = [await _once(port, token, *case) for case in _HOSTILE]
        # the plain ones among them (bad values in a plain request) took the shortest way
        assert 5 <= len(_HOSTILE) - len(through_layers) < len(_HOSTILE), through_layers
        assert direct == layered, list(zip(_HOSTILE, direct, layered, strict=True))
        assert all(status < 500 for status, _ in direct), direct
        # every acquire and release here is refused (a repeated fencing token is answered)
        posts = [d for c, d in zip(_HOSTILE, direct, strict=True) if not c[0].startswith(FENCE)]
        assert all(400 <= status < 500 for status, _ in posts), posts
        assert [r for r in await w.rows("lease.granted") if r["resource"] == "prod/db/a"] == []


async def _measured_as_gone(w: World) -> None:
    """One acquire measured with status 499 (its client gone before an answer), and no
    refusal counted for it."""
    found = samples((await w.http.get("/metrics")).text)
    key = (
        "writ_http_request_duration_seconds_count",
        frozenset({"method": "POST", "route": LEASES, "status": "499"}.items()),
    )
    assert found.get(key) == 1, {k: v for k, v in found.items() if "duration" in k[0]}
    codes = {dict(k[1]).get("code") for k in found if k[0] == "writ_refusals_total"}
    assert not codes & {"http_499", "hung_up"}, codes


async def test_a_client_that_never_finishes_its_body_is_cut_off(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain acquire whose body stops short of its Content-Length: the listener's body
    deadline answers 408 and closes, the direct way's task ends (counted as OpsFront counts
    a client gone before its answer: 499, never a 500 an alert would page on, nor a refusal),
    and the server serves the next request."""
    quick = Limits(max_header_bytes=MAX_HEADERS, body_timeout=0.3)
    async with world(backend, tmp_path, monkeypatch) as w, served(w, quick) as port:
        token = w.tokens["perf-agent"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = _request("POST", LEASES, token, b'{"resource":"prod/db/slow","intent":"x"}')
        writer.write(head[:-10])  # all but the body's last ten bytes
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        rest = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closed it
        assert rest.endswith(b"}") and b'"error"' in rest, rest
        writer.close()
        r = await w.lease("perf-agent", "prod/db/after")
        assert r.status_code == 201, r.text
        await _measured_as_gone(w)
        assert [r for r in await w.rows("lease.granted") if r["resource"] == "prod/db/slow"] == []


async def test_a_client_gone_before_its_answer_is_logged_as_gone_not_as_a_500(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """With the access log on (the layers' way), a client that hangs up halfway through its
    body is logged and measured as 499 with the outcome ``hung_up``: before, as a 500 whose
    outcome said ``ok``, for an alert on server errors to page someone about."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        with caplog.at_level("INFO", logger="writ.access"):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = _request(
                "POST", LEASES, w.tokens["perf-agent"], b'{"resource":"a","intent":"x"}'
            )
            writer.write(head[:-10])
            await writer.drain()
            writer.close()  # gone before its body's end
            deadline = time.monotonic() + 10
            while not (lines := [r for r in caplog.records if r.name == "writ.access"]):
                assert time.monotonic() < deadline, "no access line"
                await asyncio.sleep(0.01)
        [line] = lines
        assert (line.writ["status"], line.writ["outcome"]) == (499, "hung_up"), line.writ
        await _measured_as_gone(w)


async def test_a_request_handed_to_the_layers_counts_from_its_start(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An acquire the lean path reads and then hands to the layers (a field it does not
    take) is timed from its start, as the layers time any request: its slow upload counts."""
    gap = 0.3
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        layered = _spy_front(w.app)
        key = (
            "writ_http_request_duration_seconds_sum",
            frozenset({"method": "POST", "route": LEASES, "status": "201"}.items()),
        )
        before = samples((await w.http.get("/metrics")).text).get(key, 0.0)
        body = b'{"resource":"prod/db/upload","intent":"x","consent_id":null}'
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = _request("POST", LEASES, w.tokens["perf-agent"], body)
        writer.write(head[:-10])  # the headers and most of the body
        await writer.drain()
        await asyncio.sleep(gap)  # a slow client: the body's end comes later
        writer.write(head[-10:])
        [(status, _, lease)] = await _answers(reader, 1)
        writer.close()
        assert status == 201, lease
        assert LEASES in layered  # it went through the layers, which measured it
        found = samples((await w.http.get("/metrics")).text)
        took = found.get(key, 0.0) - before
        assert took >= gap, took


def test_a_direct_answers_status_line_is_uvicorns() -> None:
    """The status lines a direct answer writes are the ones uvicorn's ``send`` writes."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    from writ.net.limits import _STATUS_LINES

    assert _STATUS_LINES == STATUS_LINE
