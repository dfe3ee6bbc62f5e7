"""One client cannot starve everyone else of ``writ gate``: each client's requests in flight
are capped (``--max-requests-per-client``), against real processes.

The gate's listener already caps connections and makes room by closing those held up by
their own client, but only once all of them (4,096) are open: a hundred requests held up by
one client — a body sent slowly, answers never read — took every connection of the gate's
pool to the upstream, and every other client's request waited for one until it failed 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from tests.server_fixtures import run_writ, serve_asgi

OTHER = "127.0.0.2"  # another client: a second loopback address


async def _endless() -> AsyncIterator[bytes]:
    """64 MiB, more than an unread answer ever takes: the gate stops reading long before."""
    for _ in range(1024):
        yield b"x" * 65536
        await asyncio.sleep(0)  # once the gate has gone, sending does not wait: let others run


async def _upstream(request: Request) -> Response:
    if request.url.path == "/big":
        return StreamingResponse(_endless())
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


@contextlib.contextmanager
def gate(tmp: Path, *flags: str) -> Iterator[str]:
    """``writ gate`` (writ itself down: only unmapped paths are used) before a toy upstream."""
    routes = tmp / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "prod/db"\n')
    app = Starlette(routes=[StarletteRoute("/{p:path}", _upstream, methods=["GET", "POST"])])
    args = ("--listen", "127.0.0.1:0", "--routes", str(routes), "--allow-server-down")
    with serve_asgi(app) as upstream:
        writ_down = ("--url", "http://127.0.0.1:9", "--token", "t")
        with run_writ(
            ["gate", *writ_down, "--upstream", upstream, *args, "--timeout", "3", *flags]
        ) as url:
            yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _slow_body(port: int) -> socket.socket:
    """A request whose body never finishes (its head is in, and the first byte)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /pub/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    return s


def _unread(port: int) -> socket.socket:
    """A request for an endless answer, never read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def _statuses(socks: list[socket.socket], within: float = 5) -> list[bytes]:
    """The status line of the first answer on each of ``socks`` (b"" if none comes)."""
    deadline, out = time.monotonic() + within, []
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(s.recv(12))
        except OSError:
            out.append(b"")
    return out


@pytest.mark.parametrize("held_up", [_slow_body, _unread])
def test_one_client_cannot_take_every_connection_to_the_upstream(
    tmp_path: Path, held_up: Callable[[int], socket.socket]
) -> None:
    """A hundred requests of one client held up by itself took the gate's whole pool of
    upstream connections (100): another client's read got 504 after --timeout. Now the
    client's 26th request on is 429 with Retry-After at once (a quarter of the pool by
    default) and the other client is served as ever; once one of the 25 ends, the client
    may send another."""
    with gate(tmp_path) as url:
        port = _port(url)
        held = [held_up(port) for _ in range(100)]
        try:
            assert _statuses(held[25:]) == [b"HTTP/1.1 429"] * 75
            with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER)) as other:
                t0 = time.monotonic()
                r = other.get(f"{url}/pub/read", timeout=10)
                assert r.status_code == 200 and time.monotonic() - t0 < 2, r.text
            r = httpx.get(f"{url}/pub/read", timeout=10)  # the first client, at its cap
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "too_many_requests"
            assert "127.0.0.1 already has 25 requests in flight" in r.json()["error"]["message"]
            held.pop(0).close()
            deadline = time.monotonic() + 10
            while (r := httpx.get(f"{url}/pub/read", timeout=10)).status_code != 200:
                assert r.status_code == 429 and time.monotonic() < deadline, r.text
            metrics = httpx.get(f"{url}/metrics").text
            assert 'writ_gate_refused_total{code="too_many_requests"}' in metrics
        finally:
            for s in held:
                s.close()


def test_behind_a_trusted_proxy_each_client_is_the_address_the_proxy_saw(
    tmp_path: Path,
) -> None:
    """From a --trust-forwarded-for proxy, the client is the last untrusted address of
    X-Forwarded-For (what a client writes itself comes before the proxy's): one client
    at its cap (--max-requests-per-client 1) leaves the others behind the same proxy
    served, however it spells its own header."""
    flags = ("--trust-forwarded-for", "127.0.0.1", "--max-requests-per-client", "1")
    with gate(tmp_path, *flags) as url:
        port = _port(url)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(
            b"POST /pub/upload HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        try:
            deadline = time.monotonic() + 10
            spoofed = {"X-Forwarded-For": "10.0.0.9, 10.0.0.1"}  # 10.0.0.1 writes its own
            while (r := httpx.get(f"{url}/pub/x", headers=spoofed)).status_code != 429:
                assert r.status_code == 200 and time.monotonic() < deadline
            assert "10.0.0.1 already has 1 request in flight" in r.json()["error"]["message"]
            r = httpx.get(f"{url}/pub/x", headers={"X-Forwarded-For": "10.0.0.1, 10.0.0.2"})
            assert r.status_code == 200
            assert httpx.get(f"{url}/pub/x").status_code == 200  # the proxy's own
        finally:
            s.close()


def test_a_trusted_proxys_forwarded_for_is_read_however_its_name_is_spelled() -> None:
    """The gate reads header names as WSGI upstreams do (``X_Forwarded_For`` is
    ``X-Forwarded-For``): a trusted proxy's chain names the client, and is kept and extended,
    in any spelling; an untrusted peer's is not read at all."""
    from writ.gate.forwarded import Forwarded

    forwarded = Forwarded(["127.0.0.1"])
    for name in (b"x-forwarded-for", b"X_Forwarded_For", b"x_forwarded-FOR"):
        scope = {"client": ("127.0.0.1", 5000), "headers": [(name, b"10.0.0.7")]}
        assert forwarded.client_of(scope) == "10.0.0.7", name
        assert forwarded.chain(scope) == "10.0.0.7, 127.0.0.1", name
    untrusted = {"client": ("10.0.0.9", 5000), "headers": [(b"X_Forwarded_For", b"1.2.3.4")]}
    assert forwarded.client_of(untrusted) == "10.0.0.9"
    assert forwarded.chain(untrusted) == "10.0.0.9"


def test_an_ipv6_client_of_the_gate_is_its_slash_64() -> None:
    """Each client's share of the gate counted one IPv6 address: a host with a /64 may send
    from 2**64 of them, each with a share of its own. Its /64 is one client now, whether the
    gate sees it or a trusted proxy names it; another /64 is another client."""
    from writ.gate.forwarded import Forwarded

    forwarded = Forwarded(["10.0.0.1"])
    for near in ("2001:db8::1", "2001:db8::abcd:1"):
        direct = {"client": (near, 5000), "headers": []}
        behind = {"client": ("10.0.0.1", 5000), "headers": [(b"x-forwarded-for", near.encode())]}
        assert forwarded.client_of(direct) == forwarded.client_of(behind) == "2001:db8::/64"
    other = {"client": ("2001:db8:0:1::1", 5000), "headers": []}
    assert forwarded.client_of(other) == "2001:db8:0:1::/64"
