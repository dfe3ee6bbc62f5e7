"""The HTTP client the loader uses for writ and etcd — the same one for both.

Two interchangeable implementations, picked with ``--http``:

* ``httpx`` — ``httpx.AsyncClient`` with a keep-alive pool.
* ``lean`` (default) — a small HTTP/1.1 keep-alive client on ``asyncio.Protocol``: a pool of
  persistent connections, one request in flight per connection, TCP_NODELAY, Content-Length
  and chunked bodies. It exists because httpx costs the loader about 0.8 ms of CPU per
  request on a 2-core machine, so the loader, not the server, set the ceiling (see
  bench/README.md); the lean client is in the same cost class as redis-py and psycopg,
  which the other peers use.

Both expose ``await request(method, path, obj=None, headers=None) -> (status, body)`` where
``obj`` is sent as JSON and ``body`` is the raw response bytes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
from typing import Any


class HTTPError(Exception):
    pass


class _Conn(asyncio.Protocol):
    __slots__ = ("buf", "closed", "fut", "transport", "uses")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(HTTPError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.fut is not None:
            self._parse()

    def _parse(self) -> None:
        buf = self.buf
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            return
        lines = bytes(buf[:i]).split(b"\r\n")
        status = int(lines[0][9:12])
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == b"connection":
                close = b"close" in v.lower()
        start = i + 4
        if chunked:
            body = bytearray()
            pos = start
            while True:
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    return
                size = int(bytes(buf[pos:j]).split(b";")[0], 16)
                if size == 0:
                    end = buf.find(b"\r\n\r\n", j)
                    if end < 0:
                        if len(buf) >= j + 4 and buf[j + 2 : j + 4] == b"\r\n":
                            end = j
                        else:
                            return
                    del buf[: end + 4]
                    break
                if len(buf) < j + 2 + size + 2:
                    return
                body += buf[j + 2 : j + 2 + size]
                pos = j + 2 + size + 2
            out = bytes(body)
        else:
            n = length or 0
            if len(buf) < start + n:
                return
            out = bytes(buf[start : start + n])
            del buf[: start + n]
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result((status, out, close))


class LeanHTTP:
    """A keep-alive HTTP/1.1 pool of at most ``max_conns`` connections to one host."""

    def __init__(self, base_url: str, max_conns: int = 64) -> None:
        hostport = base_url.split("://", 1)[1].rstrip("/")
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.hosthdr = f"Host: {hostport}\r\n".encode()
        self.max = max_conns
        self.idle: list[_Conn] = []
        self.count = 0
        self.waiters: collections.deque[asyncio.Future[_Conn]] = collections.deque()
        self.loop = asyncio.get_event_loop()

    async def _get(self) -> _Conn:
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                return c
            self.count -= 1
        if self.count < self.max:
            self.count += 1
            try:
                _, c = await self.loop.create_connection(_Conn, self.host, self.port)
            except BaseException:
                self.count -= 1
                raise
            return c
        fut: asyncio.Future[_Conn] = self.loop.create_future()
        self.waiters.append(fut)
        return await fut

    def _put(self, c: _Conn, reuse: bool) -> None:
        if not reuse or c.closed:
            if c.transport is not None:
                c.transport.close()
            self.count -= 1
            if self.waiters and self.count < self.max:  # let a waiter open a fresh one
                w = self.waiters.popleft()
                self.count += 1

                async def fresh() -> None:
                    try:
                        _, nc = await self.loop.create_connection(_Conn, self.host, self.port)
                        w.set_result(nc)
                    except BaseException as exc:
                        self.count -= 1
                        w.set_exception(exc)

                self.loop.create_task(fresh())
            return
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(c)
                return
        self.idle.append(c)

    async def request(
        self, method: str, path: str, obj: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        body = b"" if obj is None else json.dumps(obj, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self.hosthdr]
        if headers:
            head += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
        if obj is not None:
            head.append(b"Content-Type: application/json\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n".encode())
        for attempt in (0, 1):
            c = await self._get()
            reused = c.uses > 0
            c.uses += 1
            fut = self.loop.create_future()
            c.fut = fut
            try:
                c.transport.write(b"".join(head) + body)  # type: ignore[union-attr]
                status, out, close = await fut
            except HTTPError:
                self._put(c, False)
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: retry once
                raise
            except BaseException:
                self._put(c, False)
                raise
            self._put(c, not close)
            return status, out
        raise HTTPError("unreachable")

    async def aclose(self) -> None:
        for c in self.idle:
            if c.transport is not None:
                c.transport.close()
        self.idle.clear()
        self.count = 0


class HttpxHTTP:
    """The same interface over ``httpx.AsyncClient``."""

    def __init__(self, base_url: str, max_conns: int = 64) -> None:
        import httpx

        self.c = httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(
                max_connections=max_conns, max_keepalive_connections=max_conns, keepalive_expiry=60
            ),
            timeout=httpx.Timeout(120.0),
            trust_env=False,
        )

    async def request(
        self, method: str, path: str, obj: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        r = await self.c.request(method, path, json=obj, headers=headers)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.c.aclose()


KINDS: dict[str, type[LeanHTTP] | type[HttpxHTTP]] = {"lean": LeanHTTP, "httpx": HttpxHTTP}


def client(kind: str, base_url: str, max_conns: int) -> LeanHTTP | HttpxHTTP:
    return KINDS[kind](base_url, max_conns)
