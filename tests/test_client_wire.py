"""What a hostile or broken server can do to the Python client (writ.client._wire): a call
ends by its timeout however the answer trickles in, an answer is read up to a cap, an answer
that is no JSON object or a redirect is :class:`~writ.Unavailable`, and a lease's renewals
survive answers that are no lease. Real sockets where the test is about the wire."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import Handler, hostile, wait_until
from writ.cli import main
from writ.client import AsyncClient, Client, _wire
from writ.client import _pages as _pages_module
from writ.core.errors import Held, Unavailable, error_from_body


def _trickle_head(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.1):
        conn.sendall(b"x")  # a header line that never ends, a byte each 0.1 s


def _trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 999\r\n\r\n"
    )
    while not stop.wait(0.1):
        conn.sendall(b" ")


def _call(url: str, mode: str, timeout: float = 10) -> Any:
    if mode == "sync":
        with Client(url, "t", timeout=timeout) as client:
            return client.health()

    async def go() -> Any:
        async with AsyncClient(url, "t", timeout=timeout) as client:
            return await client.health()

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("trickle", [_trickle_head, _trickle_body], ids=["head", "body"])
def test_an_answer_trickled_a_byte_at_a_time_ends_at_the_timeout(
    mode: str, trickle: Handler
) -> None:
    """httpx's timeout is for each read: a byte every 0.1 s kept a 0.5 s call waiting for as
    long as the server went on. The timeout is the whole exchange's."""
    with hostile(trickle) as url:
        started = time.monotonic()
        with pytest.raises(Unavailable) as exc:
            _call(url, mode, timeout=0.5)
        assert time.monotonic() - started < 3
    assert "no whole answer within 0.5s" in exc.value.message


def test_a_proxy_the_environment_names_is_used_and_bounded_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY is honoured as httpx honours it, and a call through it still ends by its
    timeout however the proxy trickles the answer."""
    asked: list[bool] = []

    def proxy(conn: socket.socket, stop: threading.Event) -> None:
        asked.append(True)
        _trickle_body(conn, stop)

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with hostile(proxy) as url:
        monkeypatch.setenv("HTTP_PROXY", url)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"no whole answer within 0\.5s"):
            _call("http://writ.invalid:7411", "sync", timeout=0.5)
        assert time.monotonic() - started < 3
    assert asked


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_answer_past_the_cap_is_dropped(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endless answer is read up to MAX_ANSWER_BYTES (here 1 MiB), then refused."""
    monkeypatch.setattr(_wire, "MAX_ANSWER_BYTES", 1 << 20)
    sent: list[int] = []

    def endless(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        conn.sendall(b"transfer-encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        for _ in range(256):  # 16 MiB at most, should the client read on
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent.append(len(chunk))
        conn.sendall(b"0\r\n\r\n")

    with hostile(endless) as url, pytest.raises(Unavailable) as exc:
        _call(url, mode)
    assert "longer than 1 MiB" in exc.value.message


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_answer_that_does_not_decode_is_unavailable(mode: str) -> None:
    """A body that is not the gzip its Content-Encoding says was httpx's DecodingError, out of
    every call (not a TransportError): a traceback in the CLI, and in a held lease's renewal
    thread the end of its renewals, the lease never called lost."""

    def bad_gzip(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            b"content-length: 8\r\n\r\nnot gzip"
        )

    with hostile(bad_gzip) as url, pytest.raises(Unavailable, match="does not decode"):
        _call(url, mode)


def _mock(answer: httpx.Response) -> tuple[Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer

    return Client("http://writ.test", "t", transport=httpx.MockTransport(handler)), sent


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'"ok"', b"3", b"NaN", b"<html>maintenance</html>", b"[" * 100_000, b"\xff\xfe"],
    ids=["list", "string", "number", "nan", "html", "deep", "not-utf8"],
)
def test_a_success_that_is_no_json_object_is_unavailable(body: bytes) -> None:
    """Every writ answer is a JSON object: anything else (a proxy's page, a WRIT_URL naming
    another service) is Unavailable naming what came back, where callers tripped on it
    (``'list' object has no attribute 'get'``, a RecursionError)."""
    client, _ = _mock(httpx.Response(200, content=body, headers={"content-type": "text/html"}))
    with pytest.raises(Unavailable) as exc:
        client.status()
    assert "not a JSON object" in exc.value.message
    assert "GET /v1/status" in exc.value.message


def test_an_error_nested_past_the_parser_is_still_an_error() -> None:
    client, _ = _mock(httpx.Response(500, content=b"[" * 100_000))
    with pytest.raises(Exception) as exc:
        client.status()
    assert type(exc.value).__module__.startswith("writ"), exc.value
    assert exc.value.message.startswith("HTTP 500: [[[")  # type: ignore[attr-defined]


def test_a_redirect_is_never_followed_and_names_where_it_pointed() -> None:
    """The token would go with a followed redirect; a misconfigured URL (http:// answered
    with a redirect to https://) is told as such."""
    client, sent = _mock(
        httpx.Response(307, headers={"location": "https://elsewhere.example/v1/leases"})
    )
    with pytest.raises(Unavailable) as exc:
        client.acquire("a/b", "x")
    assert len(sent) == 1
    assert "a redirect to https://elsewhere.example/v1/leases" in exc.value.message
    assert "never follows" in exc.value.message


def test_an_error_body_with_any_detail_names_is_the_typed_error() -> None:
    """A detail named ``self`` was a TypeError inside error_from_body."""
    err = error_from_body(409, {"error": {"code": "held", "message": "m", "self": 1}})
    assert isinstance(err, Held) and err.details["self"] == 1


@pytest.mark.parametrize(
    ("ctype", "body", "said"),
    [
        (b"text/html", b"<html>sign in to the hotel wifi</html>", "not a JSON object"),
        (b"application/json", b'{"leases": [1, 2]}', "not a list of objects"),
    ],
    ids=["page", "list-of-numbers"],
)
def test_the_cli_says_what_came_back_without_a_traceback(
    ctype: bytes, body: bytes, said: str
) -> None:
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (ctype, len(body), body)
        )

    with hostile(answer) as url:
        result = CliRunner().invoke(main, ["status", "--url", url, "--token", "t"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "writ: unavailable:" in result.output and said in result.output


# ----------------------------------------------------------------------------- held leases
LEASE = {"lease_id": "ls_1", "lock_key": "a/b#7", "fencing_token": 7, "ttl_s": 1, "resource": "a/b"}


def _held_until_lost(mode: str, handler: Callable[[httpx.Request], httpx.Response]) -> Any:
    """A lease held through ``handler`` (renewed every 0.1 s) by the sync or the async
    client, once it is lost (within 5 s), its renewals stopped."""
    if mode == "sync":
        client = Client("http://writ.test", "t", transport=httpx.MockTransport(handler))
        lease = client.lease("a/b", "x", ttl_s=1, renew_every=0.1).acquire()
        assert lease.lost.wait(5)
        lease._stop_renewing()
        return lease

    async def go() -> Any:
        aclient = AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
        alease = await aclient.lease("a/b", "x", ttl_s=1, renew_every=0.1).acquire()
        await asyncio.wait_for(alease.lost.wait(), 5)
        await alease._stop_renewing()
        return alease

    return asyncio.run(go())


@pytest.mark.parametrize(
    "renewal",
    [
        b"<html>",
        json.dumps({**LEASE, "ttl_s": "30"}).encode(),
        b'{"lease_id": "ls_1", "lock_key": "a/b#7", "fencing_token": 7, "ttl_s": NaN}',
        json.dumps({**LEASE, "ttl_s": 1e308}).encode(),
        json.dumps({**LEASE, "fencing_token": "7"}).encode(),
        json.dumps({**LEASE, "lock_key": "a/b\u0000"}).encode(),
    ],
    ids=["html", "string-ttl", "nan-ttl", "huge-ttl", "string-token", "nul-lock-key"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_renewals_answered_with_no_lease_end_in_lost(mode: str, renewal: bytes) -> None:
    """A renewal answered with something that is no lease is a failed renewal: retried, and
    the lease is lost at its expiry. (An HTML page or a string ttl stopped the renewal thread
    for good, the lease never lost while the server let it expire; a NaN ttl renewed in a
    busy loop and never expired; 1e308 overflowed the thread's wait.)"""
    renewals: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/leases":
            return httpx.Response(201, json=LEASE)
        renewals.append(request)
        return httpx.Response(200, content=renewal)

    lease = _held_until_lost(mode, handler)
    assert lease.error is not None and lease.error.details["state"] == "unknown"
    assert "the server answered with a lease that has" in lease.error.message or (
        "not a JSON object" in lease.error.message
    )
    assert 2 <= len(renewals) < 40  # retried at its pace, not in a busy loop


# ----------------------------------------------------------------------------- pages of the ledger
def _pages(answer: Callable[[httpx.Request], dict[str, Any]]) -> tuple[Client, list[float]]:
    """A client whose every audit or events read is answered by ``answer``; the moments
    (monotonic) the requests came."""
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        assert len(times) < 500, "the client asks without end"
        return httpx.Response(200, json=answer(request))

    return Client("http://writ.test", "t", transport=httpx.MockTransport(handler)), times


def test_a_server_with_rows_after_every_seq_ends_the_head_search() -> None:
    """last_seq doubles its probe while the server says there are rows after it: one that
    always says so was asked forever. A seq is a BIGINT: past 2**63 the answer is broken."""

    def always(request: httpx.Request) -> dict[str, Any]:
        after = int(request.url.params["after_seq"])
        return {"rows": [{"seq": after + 1}]}

    client, times = _pages(always)
    with pytest.raises(Unavailable) as exc:
        client.last_seq()
    assert "rows after every seq a store can hold" in exc.value.message
    assert len(times) <= 65


@pytest.mark.parametrize(
    "answer",
    [
        {"rows": [], "next_after_seq": "5"},
        {"rows": [], "next_after_seq": 1e300},
        {"rows": [], "next_after_seq": True},
        {"rows": [], "next_after_seq": 2**80},
        {"rows": [1, 2], "next_after_seq": 2},
        {"rows": [{"event": "x"}], "next_after_seq": 2},
        {"rows": "rows", "next_after_seq": 2},
    ],
    ids=["string", "float", "bool", "past-bigint", "numbers", "no-seq", "not-a-list"],
)
def test_a_page_that_is_not_one_is_unavailable(answer: dict[str, Any]) -> None:
    """iter_audit and watch took int() of next_after_seq (ValueError on "5", nan or inf) and
    handed on rows that were no rows (AttributeError in writ watch and audit export)."""
    client, _ = _pages(lambda r: answer)
    with pytest.raises(Unavailable, match="which writ never sends"):
        list(client.iter_audit())
    with pytest.raises(Unavailable, match="which writ never sends"):
        next(client.watch(after_seq=0))


async def test_watch_events_says_a_broken_page_is_a_tool_error() -> None:
    from mcp.server.mcpserver.exceptions import ToolError

    from writ.mcp import create_server

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/whoami":
            return httpx.Response(200, json={"name": "a", "kind": "agent", "admin": False})
        return httpx.Response(200, json={"rows": [{"seq": "1"}], "next_after_seq": 1})

    server = create_server(
        AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
    )
    with pytest.raises(ToolError, match="which writ never sends"):
        await server.call_tool("watch_events", {"after_seq": 0, "wait_s": 0})


def test_rows_given_again_are_a_broken_page() -> None:
    """A page whose rows are at or before the seq it was asked after (writ never sends them)
    is Unavailable: a watch given the same rows again took them as news each time, and asked
    again at once, in a busy loop."""
    client, times = _pages(lambda r: {"rows": [{"seq": 7}], "next_after_seq": 7})
    rows = client.watch(after_seq=6)
    assert next(rows)["seq"] == 7
    with pytest.raises(Unavailable, match="rows at or before seq 7"):
        next(rows)
    assert len(times) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_watch_does_not_poll_in_a_busy_loop_when_answers_bring_nothing(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a proxy) answering each long poll at once with no rows was asked again
    at once, as fast as the network went. Polls that bring nothing are QUIET_POLL_S apart."""
    monkeypatch.setattr(_pages_module, "QUIET_POLL_S", 0.2)

    def answer(request: httpx.Request) -> dict[str, Any]:
        rows = [{"seq": 9, "event": "lease.granted"}] if len(times) == 5 else []
        return {"rows": rows, "next_after_seq": 9 if rows else 0}

    client, times = _pages(answer)
    if mode == "sync":
        assert next(client.watch(after_seq=0))["seq"] == 9
    else:

        async def first() -> Any:
            async with AsyncClient("http://writ.test", "t", transport=client._transport) as aclient:
                return await anext(aclient.watch(after_seq=0))

        assert asyncio.run(first())["seq"] == 9
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 4 and min(gaps) >= 0.19, gaps


def test_consent_ask_wait_does_not_poll_in_a_busy_loop() -> None:
    """``writ consent ask --wait`` asked again at once while a server answered each long
    poll at once with pending: as fast as the network went, for the whole wait."""
    asked: list[float] = []

    def pending(conn: socket.socket, stop: threading.Event) -> None:
        asked.append(time.monotonic())
        body = b'{"consent_id": "cns_1", "change_id": "chg_1", "status": "pending"}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )

    with hostile(pending) as url:
        args = ["consent", "ask", "chg_1", "--reason", "r", "--wait", "1.5", "--url", url]
        result = CliRunner().invoke(main, [*args, "--token", "t"])
    assert result.exit_code == 3, result.output  # nobody answered in time
    assert len(asked) <= 4, f"{len(asked)} requests in 1.5 s"


def test_writ_run_never_starts_command_under_a_lease_that_is_none(tmp_path: Any) -> None:
    """A grant whose lock_key holds a NUL went into COMMAND's environment: a ValueError
    traceback (embedded null byte), the lease left held. Now it is refused before COMMAND."""
    marker = tmp_path / "ran"
    body = json.dumps({**LEASE, "lock_key": "a/b\u0000", "ttl_s": 30}).encode()

    def grant(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )

    with hostile(grant) as url:
        args = ["run", "a/b", "--intent", "x", "--wait", "0", "--url", url, "--token", "t"]
        result = CliRunner().invoke(main, [*args, "--", "touch", str(marker)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "writ: unavailable:" in result.output and "lock_key" in result.output
    assert not marker.exists()


async def test_writ_postmortem_reads_pages_as_the_client_does() -> None:
    """writ postmortem --url read rows with .get and row["seq"]: a page that is none was a
    traceback; a principals list of anything else too."""
    from writ.evidence.postmortem.sources import HttpSource

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/principals":
            return httpx.Response(200, json={"principals": [1, {"name": "a", "kind": "agent"}]})
        return httpx.Response(200, json={"rows": [{"event": "x"}], "next_after_seq": 1})

    source = HttpSource(
        AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
    )
    with pytest.raises(Unavailable, match="which writ never sends"):
        await source.rows(None, None, None, 0, 10)
    assert await source.kinds() == {"a": "agent"}


def test_saying_what_came_back_never_recurses_past_the_stack() -> None:
    """A lease or a page that is none is named with a bounded repr: repr() of an answer nested
    deep (json.loads takes ~1,000 levels) was a RecursionError, in a renewal thread the end
    of the renewals."""
    from writ.client._leases import _checked_lease

    deep: dict[str, Any] = {}
    for _ in range(5_000):
        deep = {"a": deep}
    with pytest.raises(Unavailable, match="no lease_id"):
        _checked_lease(deep)
    with pytest.raises(Unavailable, match="rows that are not rows"):
        _pages_module.page({"rows": [deep]}, 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_renewal_failing_unforeseen_is_a_failed_renewal(mode: str) -> None:
    """Whatever a renewal raises, the lease is lost at its expiry: an exception that was no
    WritError (DecodingError, a RecursionError, a bug) ended the renewals for good with the
    lease never called lost, while the server let it expire."""
    renewals: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/leases":
            return httpx.Response(201, json=LEASE)
        renewals.append(request)
        raise RuntimeError("something nobody foresaw")

    lease = _held_until_lost(mode, handler)
    assert lease.error is not None and "something nobody foresaw" in lease.error.message
    assert 2 <= len(renewals) < 40


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_leases_watch_does_not_poll_in_a_busy_loop_when_answers_bring_nothing(mode: str) -> None:
    """A lease's watch (writ run's, client.lease(watch=True)) long-polls /v1/events; a server
    (or proxy) answering each poll at once with no rows was asked again at once, as fast as
    the network went. Polls that bring nothing are now a second apart."""
    polls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/leases":
            return httpx.Response(201, json={**LEASE, "ttl_s": 3600, "state": "held"})
        if request.url.path.startswith("/v1/leases/ls_1"):
            return httpx.Response(200, json={**LEASE, "state": "held"})
        if request.url.path == "/v1/events":
            polls.append(time.monotonic())
        return httpx.Response(200, json={"rows": [], "next_after_seq": 0})

    def two_polls() -> bool:
        return len(polls) >= 2  # the first poll, and the one after the pause

    if mode == "sync":
        client = Client("http://writ.test", "t", transport=httpx.MockTransport(handler))
        with client.lease("a/b", "x", ttl_s=3600, watch=True) as lease:
            wait_until(two_polls)
    else:

        async def go() -> Any:
            aclient = AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
            async with aclient.lease("a/b", "x", ttl_s=3600, watch=True) as alease:
                deadline = time.monotonic() + 10
                while not two_polls():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
            return alease

        lease = asyncio.run(go())
    assert polls[1] - polls[0] >= 0.9, polls
    assert not lease.lost.is_set()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_leases_watch_takes_odd_answers_in_its_stride(mode: str) -> None:
    """A lease's watch answered pages that are none, a lease whose state is no text and a
    revoke row whose provenance is no text: nothing crashes, failed polls are a second apart,
    and the lease is lost once the server says revoked."""
    odd = [
        {"rows": "nope"},
        {"rows": [{"seq": "1"}]},
        {"rows": [], "next_after_seq": -1},
        {
            "rows": [
                {
                    "seq": 5,
                    "event": "lease.revoked",
                    "lock_key": LEASE["lock_key"],
                    "second_key_revoke_provenance": {"revoked_by": {"not": "text"}},
                }
            ],
            "next_after_seq": 5,
        },
    ]
    polls: list[float] = []
    asked = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/leases":
            return httpx.Response(201, json={**LEASE, "ttl_s": 3600, "state": "held"})
        if path == "/v1/leases/ls_1":
            state: Any = {"no": "text"} if next(asked) < 2 else "revoked"
            return httpx.Response(200, json={**LEASE, "state": state})
        if path == "/v1/events":
            polls.append(time.monotonic())
            page = odd[min(len(polls) - 1, len(odd) - 1)]
            if page["rows"] and page["rows"] != "nope" and page.get("next_after_seq"):
                seq = len(polls)  # a revoke row after each cursor (rows given again are broken)
                page = {"rows": [{**page["rows"][0], "seq": seq}], "next_after_seq": seq}
            return httpx.Response(200, json=page)
        return httpx.Response(200, json={"rows": [], "next_after_seq": 0})

    started = time.monotonic()
    if mode == "sync":
        client = Client("http://writ.test", "t", transport=httpx.MockTransport(handler))
        lease: Any = client.lease("a/b", "x", ttl_s=3600, watch=True).acquire()
        assert lease.lost.wait(15)
        lease._stop_renewing()
    else:

        async def go() -> Any:
            aclient = AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
            alease = await aclient.lease("a/b", "x", ttl_s=3600, watch=True).acquire()
            await asyncio.wait_for(alease.lost.wait(), 15)
            await alease._stop_renewing()
            return alease

        lease = asyncio.run(go())
    # the three failed polls a second apart; those bringing the revoke row at once
    assert len(polls) <= time.monotonic() - started + 3, polls
    assert lease.error.details["state"] == "revoked"
    assert "revoked by {'not': 'text'}" in lease.error.message
