"""How a listener frames a request body, strictly (docs/security.md, "Limits").

httptools (llhttp) already refuses the ambiguous framings a proxy must never guess at: two
``Content-Length`` headers (even equal), a list in one, ``Content-Length`` with
``Transfer-Encoding``, ``chunked`` twice or not last, obs-fold, a space before the colon, a
bare LF, a NUL. Two doors it leaves open are closed here, in the listener's protocol
(:func:`writ.net.limits.guarded_protocol`), before the app sees the request:

* **transfer codings.** A request's ``Transfer-Encoding`` must be ``chunked`` alone, in an
  HTTP/1.1 request. ``gzip, chunked`` was de-chunked and handed on as if plain: ``writ gate``
  forwarded the still-compressed bytes without saying so, and an upstream read other bytes
  than the client meant. Any other coding is answered ``501``, as nginx does; one in an
  HTTP/1.0 request, whose framing cannot be trusted (RFC 9112, 6.1), ``400``.
* **trailers.** uvicorn appended the trailer fields after a chunked body to the request's own
  header list, the very list the app reads: sent with the body in one segment, a trailer
  became a header (``writ gate`` read it, and forwarded it to the upstream as one), and
  nothing counted them, so one request could grow the server by hundreds of megabytes a
  second. Trailers are now read and dropped, never merged (RFC 9112, 7.1.2, lets the recipient
  that removes the chunked coding discard them), and counted against ``max_header_bytes``:
  beyond, ``413`` if no answer has started, and the connection is closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["Trailers", "canned", "coding_refusal"]

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def canned(status: int, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete ``Connection: close`` answer in writ's error shape, written raw."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_OTHER_CODING = canned(
    501,
    "invalid",
    "Transfer-Encoding must be chunked alone: other transfer codings are not decoded here, "
    "and would be handed on as if the body were plain",
)
_OLD_VERSION = canned(
    400,
    "invalid",
    "Transfer-Encoding in an HTTP/1.0 request: its framing cannot be trusted (RFC 9112, 6.1)",
)


def coding_refusal(headers: list[tuple[bytes, bytes]], http_version: str) -> bytes | None:
    """The answer to a request whose ``Transfer-Encoding`` is anything but ``chunked`` alone
    in HTTP/1.1 (``headers`` as uvicorn keeps them: names in lower case), or None."""
    codings = [
        c.strip().lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for c in value.split(b",")
    ]
    if not codings:
        return None
    if http_version != "1.1":
        return _OLD_VERSION
    return None if codings == [b"chunked"] else _OTHER_CODING


class Trailers:
    """The trailer fields of a chunked request, for the listener's protocol: dropped, never
    merged into the request's headers, and counted, at most ``max_header_bytes`` of them.

    httptools reports a trailer as it reports a header (``on_header``), after the body's
    last chunk, and buffers a field until it ends; so the bytes are counted as they arrive.
    After a chunk's size line (``on_chunk_header``) and before its data (``on_body``) or its
    end (``on_chunk_complete``), every byte read is a trailer's: a chunk with data has its
    first byte at the start of the next read; only the last one, of size 0, is followed by
    trailers. The bytes of the read that holds the size line itself are not counted: at most
    one read beyond the limit is ever held, as for a head."""

    _in_head: bool
    _refused: bool
    _trailer_bytes = 0
    _after_size_line = False  # a chunk's size line read, and none of its data yet
    TRAILER_LIMIT: ClassVar[int]  # the listener's max_header_bytes
    TRAILER_ANSWER: ClassVar[bytes]  # its 413
    transport: Any
    cycle: Any
    _disarm: Callable[[], None]  # the listener's deadlines (writ.net.limits._Deadlines)

    def data_received(self, data: bytes) -> None:
        during = self._after_size_line
        super().data_received(data)  # type: ignore[misc]
        if during and self._after_size_line:  # all of it was trailers
            self._trailer_bytes += len(data)
        if self._trailer_bytes > self.TRAILER_LIMIT and not self._refused:
            self._too_many_trailers()

    def _too_many_trailers(self) -> None:
        """Answer 413 unless a response has started (the body may have gone on to an
        upstream, and its answer with it), and close."""
        self._disarm()
        self._refused = True  # what it sends from now on is dropped
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(self.TRAILER_ANSWER)
        transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)  # type: ignore[misc]
        else:  # a trailer: after the body, never one of the request's headers
            self._trailer_bytes += len(name) + len(value) + 4

    def on_chunk_header(self) -> None:
        self._after_size_line = True

    def on_chunk_complete(self) -> None:
        self._after_size_line = False

    def on_body(self, body: bytes) -> None:
        self._after_size_line = False
        super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._trailer_bytes = 0
        self._after_size_line = False
        super().on_message_complete()  # type: ignore[misc]
