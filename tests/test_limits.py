"""One client cannot take a listener down: the connection limits of ``writ serve``,
``writ gate`` and ``writ mcp --transport http`` (writ.net.limits), against real processes.

Bounded: each test runs in seconds, with limits set low through the command-line flags.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_fixtures import ADMIN_TOKEN, free_port, raise_fd_limit


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def writ(tmp: Path, *args: str, ready: str = "/v1/health") -> Iterator[Proc]:
    """``writ ARGS --port P`` as a child process, until it answers ``ready``."""
    port = free_port()
    log = tmp / f"writ-{port}.log"
    where = ["--listen", f"127.0.0.1:{port}"] if args[0] == "gate" else ["--port", str(port)]
    env = {**os.environ, "WRIT_ADMIN_TOKEN": ADMIN_TOKEN}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from writ.cli import main; main()", *args, *where],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_fd_limit,
        )
    p = Proc(proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, p.logs()
            try:
                httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, p.logs()
                time.sleep(0.05)
        yield p
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
            proc.kill()
            proc.wait(5)


def serve_args(tmp: Path, *limits: str) -> tuple[str, ...]:
    return ("serve", "--store", f"sqlite:///{tmp / 'w.db'}", "--log-level", "warning", *limits)


def connect(port: int, timeout: float = 10, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the listener from ``source`` (any 127.x.y.z is this host's)."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (or the socket times out)."""
    out = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def one_response(s: socket.socket) -> bytes:
    """One complete response (head and its content-length body) off a kept-alive socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def health(port: int, source: str = "127.0.0.1") -> tuple[int, float]:
    t0 = time.monotonic()
    with connect(port, source=source) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = int(answer(s).split(b" ", 2)[1])
    return status, time.monotonic() - t0


def send_until_closed(s: socket.socket, total: int) -> int:
    """Send up to ``total`` bytes of header value; how many went before the server shut
    the connection."""
    chunk, sent = b"a" * 65536, 0
    with contextlib.suppress(OSError):
        while sent < total:
            s.sendall(chunk)
            sent += len(chunk)
    return sent


# ----------------------------------------------------------------------------- writ serve
def test_an_oversize_head_is_refused_while_read_with_memory_bounded(tmp_path: Path) -> None:
    """A 64 MiB header line is cut off at the limit (413), not buffered: the server's
    memory stays flat and it keeps answering."""
    with writ(tmp_path, *serve_args(tmp_path, "--max-header-bytes", "8192")) as srv:
        before = _rss(srv.pid)
        with connect(srv.port) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16384)
            assert answer(s).startswith(b"HTTP/1.1 413 ")
        with connect(srv.port) as s:  # a request line has its own limit (64 KiB)
            s.sendall(b"GET /v1/resources/" + b"a" * (80 << 10))
            assert answer(s).startswith(b"HTTP/1.1 413 ")
        with connect(srv.port) as s:
            sent = send_until_closed(s, 64 << 20)
        growth = (_rss(srv.pid) - before) / 2**20
        assert sent < 64 << 20, "the server read a 64 MiB head to the end"
        assert growth < 16, f"server RSS grew by {growth:.0f} MiB"
        assert health(srv.port)[0] == 200
        # a head just under the limit still passes, with a body in the same packet
        body = b'{"x": "' + b"b" * 30000 + b'"}'
        with connect(srv.port) as s:
            s.sendall(
                b"POST /v1/principals HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
                + b"X-Pad: "
                + b"p" * 7000
                + b"\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert answer(s).split(b" ", 2)[1] == b"422"  # judged by the app, not cut off


def test_slow_heads_time_out_and_many_connections_leave_health_prompt(tmp_path: Path) -> None:
    """600 connections sending a head byte by byte against a cap of 200: the oldest idle
    ones make room, so /v1/health on a fresh connection answers 200 at once; open files
    stay under the cap; a slow head gets 408 at its deadline; an idle keep-alive closes."""
    raise_fd_limit(4096)
    args = serve_args(
        tmp_path,
        "--max-connections",
        "200",
        "--max-connections-per-client",  # the whole listener, from one address
        "0",
        "--header-timeout",
        "2",
        "--keepalive-timeout",
        "1",
    )
    with writ(tmp_path, *args) as srv:
        before = _rss(srv.pid)
        slow: list[socket.socket] = []
        try:
            for _ in range(600):
                s = connect(srv.port)
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: a")
                slow.append(s)
            for _ in range(5):
                status, took = health(srv.port)
                assert status == 200 and took < 2.0, (status, took)
            assert _fds(srv.pid) < 200 + 64, _fds(srv.pid)
            assert (_rss(srv.pid) - before) / 2**20 < 32
            # the newest slow connection is still open, and gets 408 at its deadline
            last = slow[-1]
            last.settimeout(10)
            t0 = time.monotonic()
            assert answer(last).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - t0 < 5
        finally:
            for s in slow:
                s.close()
        # a slow head on a kept-alive connection gets its 408 too
        with connect(srv.port) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert one_response(s).startswith(b"HTTP/1.1 200 ")
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
            assert answer(s).startswith(b"HTTP/1.1 408 ")
        # an idle keep-alive connection is closed after --keepalive-timeout
        with connect(srv.port) as s:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert one_response(s).startswith(b"HTTP/1.1 200 ")
            s.settimeout(5)  # closed well before this (a timeout raises)
            assert s.recv(1) == b""


def test_a_body_left_unread_is_not_counted_as_the_next_head(tmp_path: Path) -> None:
    """The app answers 413 before reading a 2 MiB body; the body still arrives on the
    kept-alive connection and the next request on it is served, not cut off as a head."""
    with writ(tmp_path, *serve_args(tmp_path)) as srv, connect(srv.port) as s:
        body = b"x" * (2 << 20)
        s.sendall(
            b"POST /v1/principals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert one_response(s).startswith(b"HTTP/1.1 413 ")
        s.sendall(body + b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert one_response(s).startswith(b"HTTP/1.1 200 ")


def test_a_slow_body_times_out(tmp_path: Path) -> None:
    """A body that stops arriving is answered 408 at --body-timeout."""
    with writ(tmp_path, *serve_args(tmp_path, "--body-timeout", "1")) as srv:
        with connect(srv.port) as s:
            s.sendall(
                b"POST /v1/principals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
                + b"Content-Length: 100\r\n\r\n{"
            )
            t0 = time.monotonic()
            out = answer(s)
            assert out.startswith(b"HTTP/1.1 408 "), out[:200]
            assert time.monotonic() - t0 < 5
        assert health(srv.port)[0] == 200


def test_when_every_connection_is_busy_a_newcomer_gets_a_fast_503(tmp_path: Path) -> None:
    """Connections busy with a request (long-polls) are never evicted: past the cap a new
    connection is answered 503 with Retry-After at once, and served again once they end.
    (One principal's waits are capped below the connections by default: lifted here.)"""
    limits = ("--max-connections", "8", "--max-waits-per-principal", "8")
    limits += ("--max-connections-per-client", "0")  # the whole listener, from one address
    with writ(tmp_path, *serve_args(tmp_path, *limits)) as srv:
        polls = []
        try:
            for _ in range(8):
                s = connect(srv.port, timeout=30)
                s.sendall(
                    b"GET /v1/events?resource=nobody&wait_s=20 HTTP/1.1\r\nHost: x\r\n"
                    + f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
                )
                polls.append(s)
            deadline = time.monotonic() + 10
            while (got := health(srv.port))[0] == 200:  # until the server has seen them all
                assert time.monotonic() < deadline
            status, took = got
            assert status == 503 and took < 1.0
            with connect(srv.port) as s:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                out = answer(s)
            assert b"retry-after: 1" in out.lower() and b'"code": "unavailable"' in out
        finally:
            for s in polls:
                s.close()
        deadline = time.monotonic() + 10
        while health(srv.port)[0] != 200:
            assert time.monotonic() < deadline


def test_one_client_has_at_most_its_share_of_the_connections(tmp_path: Path) -> None:
    """One address could open every connection the listener has: idle ones made room for
    it, and it made room for itself by closing everyone else's. Each client now has at
    most --max-connections-per-client open (by default a quarter of --max-connections):
    one more is 429 at once with Retry-After, and nobody else's connection is touched.
    Another address is served as before; once one of its connections closes, the client
    is served again."""
    with writ(tmp_path, *serve_args(tmp_path, "--max-connections", "16")) as srv:
        mine = [connect(srv.port) for _ in range(4)]  # a quarter of 16: its whole share
        try:
            with connect(srv.port) as s:  # accepted after those four, in order
                out = answer(s)
            assert out.startswith(b"HTTP/1.1 429 "), out[:200]
            assert b"retry-after: 1" in out.lower() and b'"too_many_requests"' in out
            assert health(srv.port, source="127.0.0.2")[0] == 200  # another client
            for s in mine:  # its own four are untouched, and each still serves it
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert one_response(s).startswith(b"HTTP/1.1 200 ")
            mine.pop().close()
            deadline = time.monotonic() + 10  # once the server has seen it close
            while (status := health(srv.port)[0]) == 429:
                assert time.monotonic() < deadline
            assert status == 200
        finally:
            for s in mine:
                s.close()


def test_who_a_client_is_by_its_address() -> None:
    """An IPv6 client is its /64: whoever holds one may send from any of its 2**64
    addresses, so a share per address would be no share. An IPv4-mapped address is the
    IPv4 client; IPv4 addresses and loopback are themselves."""
    from writ.net.caps import client_key

    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("fe80::1%eth0") == client_key("fe80::2")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") != client_key("192.0.2.8")
    assert client_key("::1") == "::1"
    assert client_key("not an address") == "not an address"


def _waiting(port: int, token: str, request: bytes) -> socket.socket:
    """A request of ``token``'s that waits (its head and body sent, its answer not read)."""
    s = connect(port, timeout=30)
    s.sendall(request.replace(b"TOKEN", token.encode()))
    return s


def test_one_principal_cannot_wait_on_every_connection(tmp_path: Path) -> None:
    """A principal with a valid token opening waits on every connection turned every other
    caller away with 503 until they ended (up to five minutes each). Its waits are capped,
    by default at a quarter of the connections: one more — a queued acquire on the lean
    path or on FastAPI's, a long poll — is 503 at once, with nothing done; waiting less or
    not at all, and everyone else, still get through; once one ends it may wait again."""
    acquire = (
        b"POST /v1/leases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer TOKEN\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    )

    def acquire_of(body: bytes) -> bytes:
        return acquire % (len(body), body)

    queued = acquire_of(b'{"resource":"db","intent":"scale","wait_s":30}')
    poll = b"GET /v1/events?resource=db&after_seq=999999&wait_s=30 HTTP/1.1\r\nHost: x\r\n"
    poll += b"Authorization: Bearer TOKEN\r\n\r\n"
    one = ("--max-connections-per-client", "0")  # the whole listener, from one address
    with writ(tmp_path, *serve_args(tmp_path, "--max-connections", "8", *one)) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        tokens = {}
        for name in ("greedy", "other"):
            r = httpx.post(
                f"{url}/v1/principals", json={"name": name, "kind": "agent"}, headers=admin
            )
            tokens[name] = r.json()["token"]
        held = httpx.post(
            f"{url}/v1/leases",
            json={"resource": "db", "intent": "hold"},
            headers={"Authorization": f"Bearer {tokens['other']}"},
        )
        assert held.status_code == 201
        greedy = {"Authorization": f"Bearer {tokens['greedy']}"}
        waits = [
            _waiting(srv.port, tokens["greedy"], queued),
            _waiting(srv.port, tokens["greedy"], poll),
        ]
        try:
            deadline = time.monotonic() + 10  # until the server counts both
            for more in (
                {"resource": "db", "intent": "scale", "wait_s": 5},  # the lean path
                {"resource": "db", "intent": "scale", "wait_s": 5, "consent_id": None},  # FastAPI's
            ):
                while (
                    r := httpx.post(f"{url}/v1/leases", json=more, headers=greedy)
                ).status_code != 503:
                    assert r.status_code == 409 and time.monotonic() < deadline, r.text
                assert "already has 2 requests waiting" in r.json()["error"]["message"]
                assert r.headers["retry-after"] == "1"
            r = httpx.get(f"{url}/v1/events", params={"wait_s": 5}, headers=greedy)
            assert r.status_code == 503
            # not waiting: answered as ever
            r = httpx.post(
                f"{url}/v1/leases", json={"resource": "db", "intent": "x"}, headers=greedy
            )
            assert r.status_code == 409
            # another principal waits as ever
            other = {"Authorization": f"Bearer {tokens['other']}"}
            r = httpx.get(
                f"{url}/v1/events", params={"resource": "nothing", "wait_s": 0.2}, headers=other
            )
            assert r.status_code == 200
            assert health(srv.port)[0] == 200
            waits.pop().close()  # one ends: it may wait again
            deadline = time.monotonic() + 10
            while (
                r := httpx.get(
                    f"{url}/v1/events", params={"resource": "x", "wait_s": 0.2}, headers=greedy
                )
            ).status_code != 200:
                assert r.status_code == 503 and time.monotonic() < deadline
            rows = httpx.get(f"{url}/v1/audit", params={"resource": "db"}, headers=admin).json()
            assert [row["event"] for row in rows["rows"]].count("lease.granted") == 1
        finally:
            for s in waits:
                s.close()


def _held_up_by_a_body(port: int) -> socket.socket:
    """A connection whose request's body never finishes (no token needed), once its head
    is in (the server asked for the body: ``100 Continue``)."""
    s = connect(port)
    s.sendall(
        b"POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
    )
    assert s.recv(100).startswith(b"HTTP/1.1 100 ")
    s.sendall(b"{")
    return s


def _held_up_by_not_reading(port: int) -> socket.socket:
    """A connection that asks for answers (83 KiB each) and never reads them."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 40)  # (--max-pipelined 64)
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")  # its first head is in: busy
    return s


@pytest.mark.parametrize("held_up", [_held_up_by_a_body, _held_up_by_not_reading])
def test_a_client_holding_up_every_connection_makes_room_for_a_newcomer(
    tmp_path: Path, held_up: Callable[[int], socket.socket]
) -> None:
    """Every connection taken by requests their client holds up — a body never finished,
    answers never read — no longer turns everyone else away with 503: a newcomer takes the
    place of the one held up longest. A slow body is told why (408); an unread answer is
    reset, since it would never drain."""
    one = ("--max-connections-per-client", "0")  # the whole listener, from one address
    args = serve_args(tmp_path, "--max-connections", "8", "--max-pipelined", "64", *one)
    with writ(tmp_path, *args) as srv:
        socks = [held_up(srv.port) for _ in range(8)]
        try:
            deadline = time.monotonic() + 10  # until the unread answers have filled up
            while (status := health(srv.port)[0]) != 200:
                assert status == 503 and time.monotonic() < deadline, status
            assert health(srv.port)[0] == 200
            out = answer(socks[0])  # the oldest went first
            if held_up is _held_up_by_a_body:
                assert out.startswith(b"HTTP/1.1 408 ") and b"slowest to arrive" in out, out
            else:
                assert len(out) < 39 * 83_000  # cut off before its answers were read
            assert "Traceback" not in srv.logs()
        finally:
            for s in socks:
                s.close()


def _reset(s: socket.socket) -> bool:
    """Whether the server has reset ``s``, read off the socket's TCP state without reading
    (what the client has not read stays queued before the reset's error)."""
    tcp_close = 7  # <netinet/tcp.h> TCP_CLOSE: where a reset leaves the socket
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == tcp_close


def test_a_client_that_never_reads_its_answers_is_reset_after_the_send_timeout(
    tmp_path: Path,
) -> None:
    """A connection whose client stops reading held its slot for as long as it stayed (and,
    through a gate, a connection to the upstream): with the listener far from full, nothing
    made room. Now one that reads nothing of its answer for --send-timeout seconds is reset,
    and one that reads goes on."""
    args = serve_args(tmp_path, "--send-timeout", "1", "--max-pipelined", "64")
    with writ(tmp_path, *args) as srv:
        stuck = _held_up_by_not_reading(srv.port)  # its first answer's head read, no more
        reading = _held_up_by_not_reading(srv.port)
        try:
            got = 0
            deadline = time.monotonic() + 20
            while not _reset(stuck):
                assert time.monotonic() < deadline, "never reset"
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    reading.settimeout(0.05)
                    got += len(reading.recv(65536))  # this one keeps reading
            assert got > 0
            assert not _reset(reading)
            assert health(srv.port)[0] == 200
            assert "Traceback" not in srv.logs()
        finally:
            stuck.close()
            reading.close()


# ----------------------------------------------------------------------- gate and MCP HTTP
@pytest.mark.parametrize("command", ["gate", "mcp"])
def test_gate_and_mcp_http_take_the_same_limits(tmp_path: Path, command: str) -> None:
    """`writ gate` and `writ mcp --transport http` refuse an oversize head (413), a slow one
    (408) and a client's connection beyond its share (429) with the same flags."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "prod/db"\n')
    if command == "gate":
        args: tuple[str, ...] = (
            "gate",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "gate-token",
            "--upstream",
            "http://127.0.0.1:9",
            "--routes",
            str(routes),
            "--allow-server-down",
        )
    else:
        args = ("mcp", "--transport", "http", "--url", "http://127.0.0.1:9", "--token", "t")
        args += ("--allow-server-down", "--http-token", "an-endpoint-token-0123")
    limits = ("--max-header-bytes", "4096", "--header-timeout", "1")
    limits += ("--max-connections-per-client", "2")
    with writ(tmp_path, *args, *limits, ready="/") as p:
        with connect(p.port) as first, connect(p.port), connect(p.port) as third:
            assert answer(third).startswith(b"HTTP/1.1 429 ")
            first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
            assert answer(first).startswith(b"HTTP/1.1 413 ")
        deadline = time.monotonic() + 10  # until the listener has seen both close
        while health(p.port)[0] == 429:
            assert time.monotonic() < deadline
        with connect(p.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
            assert answer(s).startswith(b"HTTP/1.1 413 ")
        with connect(p.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            assert answer(s).startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - t0 < 5


def test_the_guarded_protocol_pickles_for_worker_processes() -> None:
    """`writ serve --workers` starts its processes with spawn, which pickles uvicorn's
    configuration, the protocol class included: it comes back as a class with the same
    limits (a local class would fail to pickle, and the workers would never start)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from writ.net.limits import Limits

    limits = Limits(max_connections=64, header_timeout=2.5)
    cls = limits.uvicorn_options()["http"]
    again = pickle.loads(ForkingPickler.dumps(cls))
    assert again.LIMITS == limits.effective() and again.__name__ == cls.__name__


class _Wire:
    """A transport that records what the protocol sends, one entry per ``write``."""

    def __init__(self) -> None:
        import asyncio

        self.writes: list[bytes] = []
        self.closed = self.eof = False
        self.wrote, self.gone = asyncio.Event(), asyncio.Event()

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "written after close or EOF"
        self.writes.append(bytes(data))
        self.wrote.set()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True
        self.gone.set()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 7411), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _connected(app: object, **limits: Any) -> tuple[Any, _Wire]:
    """writ's guarded protocol (uvicorn's, with ``limits``) for ``app``, connected to a
    :class:`_Wire`."""
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from writ.net.limits import Limits

    config = Config(app, log_level="warning", **Limits(**limits).uvicorn_options())  # type: ignore[arg-type]
    config.load()
    protocol = config.http_protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    wire = _Wire()
    protocol.connection_made(wire)
    return protocol, wire


async def _respond(app: object, request: bytes, until: Callable[[_Wire], bool]) -> _Wire:
    """``request`` through writ's guarded protocol (uvicorn's, with the limits) to ``app``,
    until ``until(wire)``; what went out, write by write."""
    import asyncio

    protocol, wire = _connected(app)
    protocol.data_received(request)
    async with asyncio.timeout(10):
        while not until(wire):
            wire.wrote.clear()
            await wire.wrote.wait()
    for _ in range(3):  # anything more it would write at once (a body held back) comes now
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return wire


async def test_a_response_leaves_in_one_write_head_and_body_together() -> None:
    """uvicorn writes a response's head and its body apart: two sends, two segments, two
    wake-ups of the client for every answer (measured in three rounds: +1.5 to +4.9 %
    pairs/s at one client, +6 to +11 % at 16, when they go as one). The head is held for its body's first write; a head whose
    body does not follow at once (a stream) still leaves by itself at the next step."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    go = asyncio.Event()
    app = FastAPI()

    @app.get("/one")
    async def one() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            await go.wait()
            yield b"late"

        return StreamingResponse(chunks(), media_type="text/plain")

    wire = await _respond(app, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n", lambda w: bool(w.writes))
    assert len(wire.writes) == 1, wire.writes
    assert wire.writes[0].startswith(b"HTTP/1.1 200 ") and wire.writes[0].endswith(b'{"ok":"yes"}')

    def head_out(w: _Wire) -> bool:
        return bool(w.writes) and b"\r\n\r\n" in w.writes[0]

    # a HEAD's answer has no body to wait for: its head goes as it comes, alone
    wire = await _respond(app, b"HEAD /one HTTP/1.1\r\nHost: x\r\n\r\n", lambda w: bool(w.writes))
    assert len(wire.writes) == 1 and wire.writes[0].endswith(b"\r\n\r\n"), wire.writes

    wire = await _respond(app, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", head_out)
    assert head_out(wire) and not go.is_set(), "a stream's head waited for its body"
    assert b"late" not in b"".join(wire.writes)
    go.set()


async def test_a_refused_head_is_closed_in_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head refused while it arrives is answered, then the connection is half-closed (a
    FIN), and what the client still sends is read and dropped — a reset would destroy the
    answer before the client reads it — until ``LINGER_BYTES`` more came or ``LINGER_S``
    passed; then it is closed."""
    import asyncio

    from writ.net import limits

    monkeypatch.setattr(limits, "LINGER_S", 0.05)
    protocol, wire = _connected(object(), max_header_bytes=1024)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2048)
    assert wire.writes[0].startswith(b"HTTP/1.1 413 ") and wire.eof and not wire.closed
    protocol.data_received(b"a" * 65536)  # still sending: dropped, the answer stays
    assert len(wire.writes) == 1 and not wire.closed
    async with asyncio.timeout(5):
        await wire.gone.wait()  # LINGER_S later

    protocol, wire = _connected(object(), max_header_bytes=1024)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2048)
    protocol.data_received(b"a" * (limits.LINGER_BYTES + 1))  # past the courtesy: closed now
    assert wire.closed and len(wire.writes) == 1


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that answers every request 200 ``ok``."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_connection_queues_at_most_max_pipelined_requests() -> None:
    """Pipelined requests past the queue a connection may hold are not parsed into memory:
    they are dropped, the ones queued are answered in order, and the last answer closes the
    connection. Within the queue, a pipelining client is answered whole and kept."""
    import asyncio

    request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    protocol, wire = _connected(_ok, max_pipelined=4)
    begun = 0
    real_begin = protocol.on_message_begin

    def counted() -> None:
        nonlocal begun
        begun += 1
        real_begin()

    protocol.on_message_begin = counted
    protocol.parser = type(protocol.parser)(protocol)  # its callbacks are read when it is made
    protocol.data_received(request * 10_000)  # one read's worth, and far more
    assert len(protocol.pipeline) == 4
    assert begun == 6  # the one in progress, four queued, the one past: the rest unparsed
    protocol.data_received(request * 10_000)  # more after: dropped too
    async with asyncio.timeout(10):
        await wire.gone.wait()
    answers = b"".join(wire.writes).split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 5, len(answers)  # the one in progress and the four queued
    assert all(a.startswith(b"200 ") and a.endswith(b"ok") for a in answers)
    assert b"connection: close" in answers[-1] and b"connection: close" not in answers[-2]

    protocol, wire = _connected(_ok, max_pipelined=4)
    protocol.data_received(request * 5)
    async with asyncio.timeout(10):
        while b"".join(wire.writes).count(b"HTTP/1.1 200 ") < 5:
            wire.wrote.clear()
            await wire.wrote.wait()
    assert not wire.closed and b"connection: close" not in b"".join(wire.writes)
    protocol.connection_lost(None)


def test_a_client_pipelining_without_end_is_cut_off_with_memory_bounded(tmp_path: Path) -> None:
    """A real server (default limits): one connection sends 120,000 pipelined requests in
    one go; it gets at most 33 answers, the server's memory stays flat, and another client
    is answered meanwhile."""
    with writ(tmp_path, *serve_args(tmp_path)) as srv:
        before = _rss(srv.pid)
        with connect(srv.port) as s:
            with contextlib.suppress(OSError):  # closed while still sending: its own doing
                s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 120_000)
            got = answer(s)
        assert 1 <= got.count(b"HTTP/1.1 200 ") <= 33, got.count(b"HTTP/1.1 200 ")
        growth = (_rss(srv.pid) - before) / 2**20
        assert growth < 24, f"server RSS grew by {growth:.0f} MiB"
        status, took = health(srv.port)
        assert status == 200 and took < 5
        assert "Invalid HTTP request" not in srv.logs()  # a parse writ stopped: no such line


async def test_a_closing_connection_whose_answer_is_never_read_is_reset_too() -> None:
    """An answer that closes its connection (``Connection: close``) still held in the
    server's buffer because the client reads nothing: the send deadline resets it all the
    same, where a plain close would wait for the client for ever."""
    import asyncio

    class Stuck(_Wire):
        aborted = False

        def get_write_buffer_size(self) -> int:
            return 1 << 20  # a megabyte of answer the client has not read

        def abort(self) -> None:
            self.aborted = True
            self.gone.set()

    protocol, _ = _connected(_ok, send_timeout=0.05)
    wire = Stuck()
    protocol.connection_made(wire)
    wire.closed = True  # closing: what is buffered goes first, then the close
    protocol.pause_writing()
    async with asyncio.timeout(5):
        await wire.gone.wait()
    assert wire.aborted


def test_a_client_past_its_pipeline_reading_slowly_gets_every_answer_then_eof(
    tmp_path: Path,
) -> None:
    """A connection past --max-pipelined that goes on sending and reads slowly: what it sent
    after is read and dropped, so the close after its last answer is a FIN, not a reset that
    destroys answers it has not read yet (to requests that ran)."""
    with writ(tmp_path, *serve_args(tmp_path)) as srv:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(20)
        s.connect(("127.0.0.1", srv.port))
        with s:
            s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n" * 9000)  # ~300 KB more
            got = b""
            while chunk := s.recv(65536):  # a reset raises here
                got += chunk
        assert got.count(b"HTTP/1.1 200 ") == 33
        assert got.endswith(b"}")  # the last answer whole, then the end
