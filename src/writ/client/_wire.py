"""What a client takes from the wire, whoever answers at its URL (a writ server, a proxy's
error page, a man in the middle on plain HTTP, a WRIT_URL naming something else):

- every request has its timeout for the whole exchange, not for each read: httpx's timeouts
  are per read, so a server sending a byte every few seconds held a call (and an agent's
  ``writ run``, a renewal, an MCP tool) for as long as it liked. The async client bounds a
  request with :func:`asyncio.timeout`; the sync one reads through :class:`_Backend`, whose
  every read and write waits at most until the request's :data:`deadline`.
- an answer is read up to :data:`MAX_ANSWER_BYTES`, then refused (a server sending gigabytes
  grew the client's memory by as much);
- the answer of a call that went through is a JSON object, as every route of PROTOCOL.md
  answers: anything else (not JSON, a list, a number, nested past the parser) is
  :class:`~writ.Unavailable` naming what came back, never a traceback;
- a redirect is never followed (the token would go with it): a 3xx is
  :class:`~writ.Unavailable` naming where it pointed;
- a sync pool made with a :class:`Cancel` (a lease's watch, :mod:`writ.client._watch`) has
  its request ended from another thread at once: the long poll under way is not waited out.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from writ.core.errors import Unavailable
from writ.core.textsafe import printable

__all__ = ["MAX_ANSWER_BYTES", "Cancel", "bounded", "deadline", "object_of", "too_large"]

#: The most a client reads of one answer. The largest a writ server sends are lists at their
#: ``limit`` cap (100,000 leases or audit rows): tens of MB.
MAX_ANSWER_BYTES = 256 << 20

#: When the sync request under way in this thread (or task) must be over, monotonic seconds.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "writ_deadline", default=None
)


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    at = deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise late("the request's time ran out")
    return left if timeout is None else min(timeout, left)


class Cancel:
    """Ends, from any thread, the requests of the pools made with it (:func:`bounded`): once
    called, each of their connections is shut down (a read blocked on one returns at once)
    and every read, write or connect after is refused, so a request under way or about to
    start fails as a connection closed (:class:`~writ.Unavailable`). One-way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: weakref.WeakSet[httpcore.NetworkStream] = weakref.WeakSet()
        self.cancelled = False

    def __call__(self) -> None:
        with self._lock:
            self.cancelled = True
            streams = list(self._streams)
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if isinstance(sock, socket.socket):  # the base class's: an SSLSocket's would
                with contextlib.suppress(OSError):  # drop its TLS state under the reader
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def check(self, late: type[Exception]) -> None:
        if self.cancelled:
            raise late("the request was cancelled")

    def add(self, stream: httpcore.NetworkStream) -> None:
        with self._lock:
            if not self.cancelled:
                self._streams.add(stream)
                return
        stream.close()
        raise httpcore.ConnectError("the request was cancelled")


class _Stream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the request's :data:`deadline`, or when
    its pool's :class:`Cancel` is called."""

    def __init__(self, inner: httpcore.NetworkStream, cancel: Cancel | None = None) -> None:
        self._inner = inner
        self._cancel = cancel
        if cancel is not None:
            cancel.add(inner)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._cancel is not None:
            self._cancel.check(httpcore.ReadError)
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._cancel is not None:
            self._cancel.check(httpcore.WriteError)
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left), self._cancel)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's sync backend, its connections :class:`_Stream`\\ s."""

    def __init__(self, inner: httpcore.NetworkBackend, cancel: Cancel | None = None) -> None:
        self._inner = inner
        self._cancel = cancel

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, left, local_address, socket_options)
        return _Stream(stream, self._cancel)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, left, socket_options), self._cancel)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bounded(client: httpx.Client, cancel: Cancel | None = None) -> httpx.Client:
    """``client`` with its connections read through :class:`_Backend`: those of the transport
    httpx made, and of those it made for the proxies the environment names (``HTTPS_PROXY``;
    httpx honours them only when it makes the transport itself). httpx takes no network
    backend, so each pool's is wrapped: ``_transport``, ``_mounts``, ``_pool`` and
    ``_network_backend`` have been where they are since httpx 0.18 and httpcore 0.13.
    With ``cancel``, calling it ends the client's requests (:class:`Cancel`)."""
    for transport in (client._transport, *client._mounts.values()):
        if isinstance(transport, httpx.HTTPTransport):
            pool = transport._pool
            pool._network_backend = _Backend(pool._network_backend, cancel)
    return client


def too_large(url: str, what: str) -> Unavailable:
    return Unavailable(
        f"writ server at {url} sent an answer to {what} longer than {MAX_ANSWER_BYTES >> 20} MiB, "
        "the most the client reads: it was dropped (ask for fewer rows with limit)",
        url=url,
    )


def capped(chunks: Iterator[bytes], url: str, what: str) -> bytes:
    """The answer's bytes, refused past :data:`MAX_ANSWER_BYTES`."""
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > MAX_ANSWER_BYTES:
            raise too_large(url, what)
    return bytes(out)


def _shown(content: bytes) -> str:
    text = content[:80].decode("utf-8", "replace")
    return printable(repr(text) + ("…" if len(content) > 80 else ""))


def object_of(response: httpx.Response, content: bytes, url: str, what: str) -> Any:
    """The answer's body: a JSON value, or its text when it is not JSON. A 2xx must be a JSON
    object (or empty: ``{}``), and a 3xx is never followed; both refused as
    :class:`~writ.Unavailable` otherwise."""
    status = response.status_code
    if 300 <= status < 400:
        where = printable(response.headers.get("location", "nowhere")[:200])
        raise Unavailable(
            f"writ server at {url} answered {what} with {status}, a redirect to {where}, which "
            "the client never follows (the token would go with it): set WRIT_URL or --url to "
            "the URL writ serves",
            url=url,
        )
    body: Any
    try:
        body = json.loads(content) if content else {}
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        body = None
    if 200 <= status < 300 and not isinstance(body, dict):
        ctype = printable(response.headers.get("content-type", "no content type")[:80])
        raise Unavailable(
            f"writ server at {url} answered {what} with {status} ({ctype}) and a body that is "
            f"not a JSON object, which every writ answer is: {_shown(content)}; is {url} a writ "
            "server? (set WRIT_URL or --url)",
            url=url,
        )
    return content.decode("utf-8", "replace") if body is None else body
