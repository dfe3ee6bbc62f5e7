"""How ``writ gate`` frames what it forwards: chunked trailers, transfer codings and header
spellings that could make the gate and the upstream read one request as two (writ.net.framing).

A real gate process in front of a raw upstream that records the very bytes it receives.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_fixtures import LiveServer, unique
from tests.test_limits import Proc, _rss, answer, connect, writ


class RawUpstream:
    """An upstream that records every byte each connection sends it and answers each
    request ``200 ok`` (``/trailers``: a chunked answer with trailer fields)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received: list[bytearray] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def seen(self) -> bytes:
        with self.arrived:
            return b"".join(bytes(r) for r in self.received)

    def wait_for(self, marker: bytes, timeout: float = 10) -> None:
        with self.arrived:
            assert self.arrived.wait_for(
                lambda: any(marker in r for r in self.received), timeout
            ), marker

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            record = bytearray()
            with self.arrived:
                self.received.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _read(self, conn: socket.socket, record: bytearray) -> bytes:
        data = conn.recv(65536)
        with self.arrived:
            record.extend(data)
            self.arrived.notify_all()
        return data

    def _serve(self, conn: socket.socket, record: bytearray) -> None:
        buf = b""
        with contextlib.suppress(OSError), conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    if not (data := self._read(conn, record)):
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                if b"transfer-encoding: chunked" in lines:
                    while b"0\r\n\r\n" not in buf:
                        if not (data := self._read(conn, record)):
                            return
                        buf += data
                    buf = buf.partition(b"0\r\n\r\n")[2]
                for line in lines:
                    if line.startswith(b"content-length:"):
                        size = int(line.split(b":")[1])
                        while len(buf) < size:
                            if not (data := self._read(conn, record)):
                                return
                            buf += data
                        buf = buf[size:]
                if b" /trailers " in lines[0]:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Secret\r\n"
                        b"\r\n5\r\nhello\r\n0\r\nX-Secret: from-the-trailer\r\n"
                        b"Set-Cookie: trailer=1\r\n\r\n"
                    )
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()


class Rig:
    def __init__(self, gate: Proc, upstream: RawUpstream, live: LiveServer, res: str) -> None:
        self.gate, self.upstream, self.live, self.res = gate, upstream, live, res

    def send(self, request: bytes) -> bytes:
        """Send ``request`` in one segment; the gate's whole answer."""
        with connect(self.gate.port) as s:
            s.settimeout(5)
            s.sendall(request)
            return answer(s)

    def settled(self) -> bytes:
        """What reached the upstream, once a request sent after this test's has arrived
        (then a moment for any straggler of the refused one)."""
        marker = f"/pub/marker-{uuid.uuid4().hex}".encode()
        out = self.send(b"GET " + marker + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 "), out
        self.upstream.wait_for(marker)
        time.sleep(0.2)
        return self.upstream.seen()


@pytest.fixture(scope="module")
def rig(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("framing")
    res = unique("framing")
    routes = tmp / "routes.toml"
    routes.write_text(f'[[route]]\npath = "/admin/db/*"\nresource = "{res}/db"\n')
    _, gate_token = live_server.principal("portal", unique("gate"))
    upstream = RawUpstream()
    args = ("gate", "--url", live_server.url, "--token", gate_token, "--upstream", upstream.url)
    args += ("--routes", str(routes), "--max-header-bytes", "4096", "--log-level", "warning")
    try:
        with writ(Path(tmp), *args, ready="/pub/ready") as gate:
            yield Rig(gate, upstream, live_server, res)
            assert "Traceback" not in gate.logs()
    finally:
        upstream.close()


def _chunked(path: str, trailers: bytes, head: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + head
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        + trailers
        + b"\r\n"
    )


# ----------------------------------------------------------------------------- trailers
def test_a_trailer_never_reaches_the_upstream_as_a_header(rig: Rig) -> None:
    """Sent with the body in one segment, a trailer field became one of the request's
    headers (uvicorn added it to the list the app reads) and the gate forwarded it as a
    header. It is dropped: the body arrives whole, the trailer nowhere."""
    path = f"/pub/{uuid.uuid4().hex}"
    out = rig.send(
        _chunked(path, b"X-Injected: from-a-trailer\r\nContent-Type: text/from-a-trailer\r\n")
    )
    assert out.startswith(b"HTTP/1.1 200 "), out
    seen = rig.settled()
    request = seen[seen.index(path.encode()) :]
    assert b"hello" in request
    assert b"from-a-trailer" not in seen


def test_credentials_in_trailers_are_not_read_as_headers(rig: Rig) -> None:
    """A write whose writ token, lease and fencing token come only as trailers was judged
    on them (they had become headers) and passed; trailers are not headers: it is refused
    like a write with no credentials, and the upstream never sees it."""
    path = f"/admin/db/{uuid.uuid4().hex}"
    _, token = rig.live.principal("agent")
    with rig.live.client(token) as c:
        lease = c.acquire(f"{rig.res}/db", "trailers")
    trailers = (
        f"Authorization: Bearer {token}\r\nWrit-Lease: {lease['lease_id']}\r\n"
        f"Writ-Fencing-Token: {lease['fencing_token']}\r\n"
    ).encode()
    out = rig.send(_chunked(path, trailers))
    assert out.startswith(b"HTTP/1.1 423 "), out
    assert b'"unauthenticated"' in out
    assert path.encode() not in rig.settled()


def test_trailers_are_counted_against_the_header_limit(rig: Rig) -> None:
    """Nothing counted trailer fields: one request sending them without end grew the gate by
    hundreds of MiB a second. They count against --max-header-bytes (4096 here): the
    connection is cut at once, and the gate's memory stays flat."""
    before = _rss(rig.gate.pid)
    line = b"X-Flood: " + b"a" * 1000 + b"\r\n"
    sent = 0
    with connect(rig.gate.port) as s:
        s.sendall(
            b"POST /pub/flood HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n"
        )
        with contextlib.suppress(OSError):
            while sent < 64 << 20:
                s.sendall(line * 64)
                sent += len(line) * 64
    assert sent < 16 << 20, sent
    assert _rss(rig.gate.pid) - before < 16 << 20


# ----------------------------------------------------------------------------- framing
@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n", 501),
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n", 501),
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501),
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n", 501),
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: gzip\r\n", 501),
        (b"POST {path} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n", 400),
    ],
)
def test_a_transfer_coding_other_than_chunked_alone_is_refused(
    rig: Rig, head: bytes, status: int
) -> None:
    """``gzip, chunked`` was de-chunked and forwarded as a plain body, still compressed and
    no longer saying so; an unknown coding had its head forwarded before the parser gave
    up on its body. Refused before anything is forwarded: 501 (as nginx does), and 400 for
    a Transfer-Encoding in an HTTP/1.0 request (RFC 9112, 6.1)."""
    path = f"/pub/{uuid.uuid4().hex}"
    request = head.replace(b"{path}", path.encode()) + b"Host: x\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    out = rig.send(request)
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    assert b"Transfer-Encoding" in out
    assert path.encode() not in rig.settled()


_AMBIGUOUS = {
    "two Content-Length": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two equal Content-Length": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "a Content-Length list": b"Content-Length: 5, 5\r\n\r\nhello",
    "a signed Content-Length": b"Content-Length: +5\r\n\r\nhello",
    "Content-Length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked, identity": b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
    "obs-fold in Transfer-Encoding": b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "a space before the colon": b"Content-Length : 5\r\n\r\nhello",
    "Transfer-Encoding with a space before the colon": (
        b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "a vertical tab in Transfer-Encoding": b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "a NUL in a header": b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "a bare LF": b"Content-Length: 5\n\nhello",
}


@pytest.mark.parametrize("rest", list(_AMBIGUOUS.values()), ids=list(_AMBIGUOUS))
def test_ambiguous_framing_is_refused_and_never_forwarded(rig: Rig, rest: bytes) -> None:
    """Pinned: every spelling of a body's length that two parsers could read two ways is
    400 from the gate's own parser (llhttp, strict), and nothing of it is forwarded. The
    gate never forwards the caller's framing either: Transfer-Encoding is hop-by-hop, and
    the forwarded request is framed anew."""
    path = f"/pub/{uuid.uuid4().hex}"
    out = rig.send(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + rest)
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert path.encode() not in rig.settled()


@pytest.mark.parametrize(
    "body",
    [
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",  # a chunk size that overflows
        b"5\nhello\n0\n\n",  # bare LFs
        b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",  # a Content-Length trailer
    ],
)
def test_a_body_found_malformed_midway_is_never_completed_upstream(rig: Rig, body: bytes) -> None:
    """Pinned: a chunked body is forwarded as it arrives, so its head may go ahead before
    the parser finds the body malformed. The caller gets 400, and the forwarded request is
    cut off there: the upstream never gets its body, nor an end to it to read a next
    request after."""
    path = f"/pub/{uuid.uuid4().hex}"
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = rig.send(request.encode() + body)
    assert out.startswith(b"HTTP/1.1 400 "), out
    seen = rig.settled()
    if path.encode() in seen:
        forwarded = seen[seen.index(path.encode()) :].split(b"\r\n\r\n", 1)[1]
        assert not forwarded.startswith((b"5", b"0\r\n")), forwarded


def test_header_names_in_any_case_frame_the_same() -> None:
    """Pinned, without a process: names are compared in lower case (what the gate forwards
    is framed anew in any case); ``chunked`` in any case is chunked."""
    from writ.net.framing import coding_refusal

    assert coding_refusal([(b"transfer-encoding", b"ChUnKeD")], "1.1") is None
    assert coding_refusal([(b"transfer-encoding", b"\tchunked ")], "1.1") is None
    assert coding_refusal([(b"content-length", b"5")], "1.0") is None


def test_response_trailers_are_dropped(rig: Rig) -> None:
    """Pinned: a chunked answer's trailer fields stay behind (httpx reads and drops them;
    its Trailer header is hop-by-hop): the caller gets the body and no field of them."""
    with connect(rig.gate.port) as s:
        s.sendall(b"GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = answer(s)
    assert out.startswith(b"HTTP/1.1 200 "), out
    assert b"hello" in out
    low = out.lower()
    assert b"x-secret" not in low and b"trailer" not in low
