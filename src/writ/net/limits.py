"""Connection limits for writ's HTTP listeners: ``writ serve``, ``writ gate`` and
``writ mcp --transport http`` (docs/security.md, "Limits").

One client must not be able to take a listener down. uvicorn (with httptools) on its own
buffers a request head of any size, waits for a slow head or body forever, and accepts
every connection: one loopback client holding thousands of half-sent requests exhausts
file descriptors and memory. :class:`Limits` closes each of those doors, in the protocol
(before the ASGI app, before anything is buffered):

* request headers larger than ``max_header_bytes`` (or a request line over
  ``max_request_line``) are answered
  ``413`` (``too_large``) and the connection closed *while* it is being read — counted per chunk received,
  so at most one socket read (256 KiB) is ever held beyond the limit;
* a head that is not complete ``header_timeout`` seconds after the connection opened (or
  after the first byte of the next request on a kept-alive connection) is answered ``408``; a body not complete ``body_timeout`` seconds
  after its head is answered ``408`` (the app sees the client go away);
* a keep-alive connection idle for ``keepalive_timeout`` seconds is closed;
* a connection whose client has not read what it was sent (the answer's buffer held above
  its high-water mark) for ``send_timeout`` seconds is reset, as nginx's ``send_timeout``:
  what it would not read would never drain, and it held its slot (and, through ``writ
  gate``, a connection to the upstream) for as long as it stayed;
* the trailer fields after a chunked body are dropped, never merged into the request's
  headers, and counted against ``max_header_bytes``; a ``Transfer-Encoding`` other than
  ``chunked`` alone is refused (:mod:`writ.net.framing`);
* each client (its address; an IPv6 client its /64: :func:`writ.net.caps.client_key`) has at
  most ``max_connections_per_client`` connections open, by default a quarter of
  ``max_connections`` (0: no such cap): one more is answered ``429`` with ``Retry-After``
  and closed at once, so one client can neither fill the listener nor, once it is full,
  make room for itself by closing everyone else's idle connections;
* at most ``max_connections`` connections are open. A new one beyond that first takes the
  place of the connection that has waited longest without a request in progress (idle or
  still sending its head, as a slow client does); failing that, of the one held up longest
  by its own client — still sending its body, or not reading its answer — which is cut
  off; only when every connection is busy with a request the server is working on or
  waiting in is the newcomer answered ``503`` with ``Retry-After`` and closed at once. (A
  request that waits — a queued acquire, a long poll — is capped per principal by the
  app: :mod:`writ.api.waits`.)

The mechanism was chosen by measurement (docs/security.md): uvicorn's own
``limit_concurrency`` answers 503 only once a head is complete (a slow head never is), and
``h11_max_incomplete_event_size`` applies only to the slower h11 parser.
"""

from __future__ import annotations

import contextlib
import copyreg
import logging
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any, ClassVar, cast

from writ.core.textsafe import counted
from writ.net.caps import PerKey, client_key
from writ.net.framing import Trailers, coding_refusal
from writ.net.framing import canned as _canned
from writ.net.placed import Placed

__all__ = ["GATE_LIMITS", "Limits", "direct_answer"]

log = logging.getLogger("writ.limits")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one listener allows each connection (defaults: ``writ serve``'s)."""

    max_header_bytes: int = 16 << 10
    max_request_line: int = 64 << 10  # the request line (method, target, version) apart
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_client: int | None = None  # None: a quarter of max_connections
    origin_form_only: bool = False  # refuse absolute-form targets (GET http://host/path)
    # requests one connection may have queued behind the one being answered (pipelined):
    # past this the rest it sends is dropped and it is closed once the queue is answered
    max_pipelined: int = 32

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_request_line", "max_connections", "max_pipelined"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_connections_per_client is not None and self.max_connections_per_client < 0:
            raise ValueError("max_connections_per_client must be 0 (no cap) or more")
        for name in ("header_timeout", "body_timeout", "keepalive_timeout", "send_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be more than 0 seconds")

    @property
    def per_client(self) -> int:
        """The connections one client may have open (0: any number, up to the listener's)."""
        if self.max_connections_per_client is None:
            return max(1, self.max_connections // 4)
        return self.max_connections_per_client

    def effective(self) -> Limits:
        """These limits with ``max_connections`` kept below the process's file limit
        (``RLIMIT_NOFILE``, less room for the store, logs and the listening sockets)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or self.max_connections <= soft - 64:
            return self
        cap = max(1, soft - 64)
        log.warning(
            "max connections %d lowered to %d: the open-file limit is %d (raise it with ulimit -n)",
            self.max_connections,
            cap,
            soft,
        )
        return replace(self, max_connections=cap)

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` that enforce these limits."""
        limits = self.effective()
        return {
            "http": guarded_protocol(limits),
            "timeout_keep_alive": limits.keepalive_timeout,
            # only read by the h11 parser; kept in step for a uvicorn that falls back to it
            "h11_max_incomplete_event_size": limits.max_header_bytes,
        }


GATE_LIMITS = Limits(body_timeout=60.0, origin_form_only=True)
"""``writ gate``'s defaults: a body streams on to the upstream as it comes, so more time;
a request names its target as a path only (an absolute-form target may name another host
than the Host header the upstream reads)."""


class _Guarded(type):
    """The metaclass of :func:`guarded_protocol`'s classes: such a class is pickled as the
    call that makes it again, for ``writ serve --workers`` (uvicorn starts its workers
    with the spawn method, which pickles the server's configuration)."""

    LIMITS: Limits


def _remade(cls: _Guarded) -> tuple[Callable[..., _Guarded], tuple[Limits]]:
    return cast("Callable[..., _Guarded]", guarded_protocol), (cls.LIMITS,)


copyreg.pickle(_Guarded, _remade)


@dataclass(frozen=True, slots=True)
class _Answers:
    """The canned answers one listener writes raw (:func:`_canned`), made once per
    :class:`Limits`."""

    too_large: bytes
    head_slow: bytes
    body_slow: bytes
    absolute: bytes
    busy: bytes
    crowded: bytes
    cut_off: bytes
    trailers: bytes


def _answers(limits: Limits) -> _Answers:
    return _Answers(
        too_large=_canned(
            413,  # writ's too_large (errors.TooLarge), for headers as for bodies
            "too_large",
            f"request headers exceed {limits.max_header_bytes} bytes, or the request line "
            f"{limits.max_request_line}",
        ),
        head_slow=_canned(
            408,
            "timeout",
            f"request line and headers not received within {limits.header_timeout:g} s",
        ),
        body_slow=_canned(
            408, "timeout", f"request body not received within {limits.body_timeout:g} s"
        ),
        absolute=_canned(
            400,
            "invalid",
            "the request target must be a path (/path?query), not an absolute URL",
        ),
        busy=_canned(
            503,
            "unavailable",
            f"too many open connections (at most {limits.max_connections}, each busy with a "
            "request): retry shortly",
            retry_after=1,
        ),
        crowded=_canned(
            429,
            "too_many_requests",
            f"this client already has {counted(limits.per_client, 'connection')} open, the most one "
            "client may have: send on one of them, or retry once one has closed",
            retry_after=1,
        ),
        cut_off=_canned(
            408,
            "timeout",
            f"every connection was in use (at most {limits.max_connections}) and this request's "
            "body was the slowest to arrive: the connection was closed to make room",
        ),
        trailers=_canned(
            413,
            "too_large",
            f"the trailer fields after the chunked body exceed {limits.max_header_bytes} bytes",
        ),
    )


def _evict(protocol: Any, idle: dict[Any, None], stalled: dict[Any, None], cut_off: bytes) -> bool:
    """Close a connection to make room for ``protocol``'s: the one that has waited longest
    without a request in progress, else the one its client has held up longest — sending
    its body (answered ``cut_off`` first) or not reading its answer (reset: what it has not
    read would never drain). False when every connection is busy with a request the
    server is working on or waiting in. O(1): each kind is kept in the order it began."""
    while idle:
        oldest = next(iter(idle))
        del idle[oldest]
        if oldest.transport is not None and not oldest.transport.is_closing():
            oldest.transport.close()
            protocol.connections.discard(oldest)
            return True
    while stalled:
        oldest = next(iter(stalled))
        del stalled[oldest]
        transport = oldest.transport
        if transport is None or transport.is_closing():
            continue
        if oldest.flow.write_paused:
            _reset(transport)
        else:
            oldest._disarm()
            _expired(oldest, cut_off)
        protocol.connections.discard(oldest)
        return True
    return False


class _Shares:
    """Each client's open connections on one listener, at most ``cap`` each (0: none
    counted). A client is :func:`client_key` of the connection's address; a connection
    with none (a Unix socket's) is not counted."""

    def __init__(self, cap: int) -> None:
        self.count = PerKey(cap) if cap else None

    def take(self, protocol: Any, transport: Any) -> bool:
        """Count a new connection against its client: False, counting nothing, when that
        client has its share open already."""
        peer = transport.get_extra_info("peername")
        if self.count is None or not (isinstance(peer, tuple) and peer and peer[0]):
            return True
        client = client_key(str(peer[0]))
        if not self.count.take(client):
            return False
        protocol._client = client
        return True

    def give(self, protocol: Any) -> None:
        """The connection is no longer one of its client's (closed, or turned away)."""
        if protocol._client is not None and self.count is not None:
            self.count.give(protocol._client)
            protocol._client = None


def _admitted(
    protocol: Any,
    transport: Any,
    shares: _Shares,
    idle: dict[Any, None],
    stalled: dict[Any, None],
    answers: _Answers,
) -> bool:
    """Whether a new connection becomes one of the listener's: not if its client has its
    share open already (429, before it may close anyone else's), nor if the listener is
    full and no connection can make room (503)."""
    if not shares.take(protocol, transport):
        _turn_away(protocol, transport, answers.crowded)
        return False
    if len(protocol.connections) >= protocol.LIMITS.max_connections and not _evict(
        protocol, idle, stalled, answers.cut_off
    ):
        shares.give(protocol)
        _turn_away(protocol, transport, answers.busy)
        return False
    return True


def _turn_away(protocol: Any, transport: Any, answer: bytes) -> None:
    """Answer a new connection ``answer`` and close it: it never becomes one of the
    listener's connections."""
    protocol._refused = protocol._rejected = True
    protocol.transport = transport
    transport.write(answer)
    transport.close()


def _reset(transport: Any) -> None:
    """Close a connection whose client does not read, with a reset: a plain close would leave
    the kernel holding what was written, and the connection, until the client read it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unread(protocol: Any) -> None:
    """The send deadline passed: the client read nothing of its answer for that long."""
    protocol._send_deadline = None
    transport = protocol.transport
    # a connection closing once its answers are out (Connection: close) that its client
    # will not read waits for ever all the same: reset it too
    if transport is not None and (
        not transport.is_closing() or transport.get_write_buffer_size() > 0
    ):
        log.info("reset a connection whose client read none of its answer in time")
        _reset(transport)


def _expired(protocol: Any, answer: bytes) -> None:
    """A head or body deadline passed: answer (unless a response is under way) and close."""
    protocol._deadline = None
    if protocol.transport is None or protocol.transport.is_closing():
        return
    cycle = protocol.cycle  # the request before, or the one whose body is late
    if cycle is None or cycle.response_complete or not cycle.response_started:
        protocol.transport.write(answer)
    protocol.transport.close()


def _count_head(protocol: Any, data: bytes, limits: Limits) -> bool:
    """Count the request line and the headers as they arrive (up to the blank line that
    ends them); False once either is over its limit."""
    p = protocol
    if not p._line_done:
        buf = p._tail + data
        i = buf.find(b"\r\n")
        if i < 0:
            p._line_bytes += len(data)
            p._tail = buf[-1:]
            return bool(p._line_bytes <= limits.max_request_line)
        p._line_bytes += max(0, i - len(p._tail))
        p._line_done = True
        data = data[max(0, i + 2 - len(p._tail)) :]
        p._tail = b"\r\n"  # a head with no headers ends right here
        if p._line_bytes > limits.max_request_line:
            return False
    buf = p._tail + data
    end = buf.find(b"\r\n\r\n")
    p._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(p._tail))
    p._tail = buf[-3:]
    return bool(p._head_bytes <= limits.max_header_bytes)


class _OneSend:
    """The transport a response is written through: its head is held until its body's
    first write, so a response with a body leaves in one ``send`` — one segment, one
    wake-up of the client — instead of two (uvicorn writes them apart). A head whose body
    does not follow in the same step of the event loop (a stream's) leaves on its own at the
    next one; a ``HEAD``'s answer, which has no body, is not held. Anything else is passed to
    the connection's transport."""

    __slots__ = ("_handle", "_head", "_loop", "transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self.transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._handle: Any = None

    def write(self, data: bytes) -> None:
        if self._head is None and self._handle is None:  # the first write: the head
            self._head = data
            self._handle = self._loop.call_soon(self.flush)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        # uvicorn writes on once the client stops holding it up, even when that was by
        # going away (its send awaits the drain, then writes): a closed transport refuses
        if not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def direct_answer(
    cycle: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> bool:
    """Answer ``cycle``'s request (uvicorn's ``RequestResponseCycle``) with ``status``,
    ``headers`` and ``body`` in one write, as the two ``send`` calls of the ASGI messages
    would (the server's default headers, ``Content-Length``, ``Connection: close`` when the
    connection is not kept), and complete it as they do: the connection goes on to its next
    request, or closes. Like them it first waits while the client is not reading what was
    written (the transport's buffer over its high-water mark): a client that pipelines
    requests and never reads the answers stalls its own connection, not the server's memory.
    For an app's ``writ_direct(cycle)``: given that hook, this protocol runs the coroutine it
    returns in place of the app for that request (None: the app as usual), inside
    ``cycle.run_asgi`` so a failure is answered and logged as the app's would be.
    ``headers`` are the app's own, never the client's: they are not checked again. False
    when nothing was written: its client was gone (or an answer had begun)."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected or cycle.response_started:
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    head = [_STATUS_LINES[status]]
    for name, value in (*cycle.default_headers, *headers):
        head += (name, b": ", value, b"\r\n")
    head += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head += (b"\r\n", body)
    transport = cycle.transport
    if isinstance(transport, _OneSend):  # what it holds (a 100 Continue) leaves first
        transport.flush()
        transport = transport.transport
    transport.write(b"".join(head))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
    return True


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


# each status's line as uvicorn writes it (its table, built the same way; the listener's
# module does not import uvicorn until it serves)
_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def _started_direct(protocol: Any, cycle: Any, app: Any) -> bool:
    """Start the task of the coroutine ``app``'s ``writ_direct`` hook gives for ``cycle``
    (see :func:`direct_answer`), as uvicorn starts an app's; False when it gives none."""
    direct = getattr(app, "writ_direct", None)
    if direct is None or getattr(protocol.config, "reset_contextvars", False):
        return False
    try:
        work = direct(cycle)
    except Exception:  # a bug in the hook must not cost the request: the app's way
        log.exception("the direct answer's hook failed; the app answers instead")
        return False
    if work is None:
        return False
    task = protocol.loop.create_task(work)
    task.add_done_callback(protocol.tasks.discard)
    protocol.tasks.add(task)
    return True


def _flush_head(protocol: Any) -> None:
    """Before the connection writes on its own: the head a response holds goes first."""
    cycle = protocol.cycle
    if cycle is not None and isinstance(cycle.transport, _OneSend):
        cycle.transport.flush()


LINGER_S = 2.0  # how long a refused connection's sender has to read its answer,
LINGER_BYTES = 4 << 20  # and how much more it may send meanwhile (read and dropped)


def _refuse(protocol: Any, answer: bytes) -> None:
    """Answer ``answer`` and close, with no deadline left to fire. The close is staged
    (RFC 9112, 9.6): the answer and a FIN first, then what the client still sends is read
    and dropped for up to ``LINGER_S`` and ``LINGER_BYTES``. Closing at once with its bytes
    unread would send a reset, which can destroy the answer before the client reads it (a
    client still sending a megabyte of headers did not always see its 413)."""
    protocol._disarm()
    protocol._refused = True  # what it sends from now on is dropped
    _flush_head(protocol)
    transport = protocol.transport
    transport.write(answer)
    if transport.can_write_eof():
        transport.write_eof()
        protocol.loop.call_later(LINGER_S, transport.close)
    else:
        transport.close()


class _Overflow(Exception):
    """Raised from the parser's callback to stop it mid-read: a read of 256 KiB holds some
    8,000 pipelined requests, and parsing the rest of it cost a reconnecting client's
    every connection 10-20 ms of the loop."""


# uvicorn logs a parse stopped by a callback as an invalid request: not this one
_DROPPED = logging.getLogger("writ.limits.overflow")
_DROPPED.disabled = True


def _overflowed(protocol: Any) -> None:
    """A request beyond the queue a connection may pipeline: it and all the connection sent
    after are dropped unparsed, and it closes once what it queued is
    answered (its last answer says ``Connection: close``). A client may retry the unanswered
    ones on a new connection, as HTTP/1.1 lets it (RFC 9112, 9.3.2)."""
    if protocol._refused:  # dropped as the rest
        return
    protocol._disarm()
    protocol._refused = True  # what it sends from now on is dropped
    protocol.pipeline[0][0].keep_alive = False  # the newest queued: its answer closes
    # what it sends from now on is still read, and dropped unparsed (up to LINGER_BYTES):
    # left unread, the close after the last answer would be a reset that destroys answers
    # the client has not read yet, to requests that ran
    protocol.logger = _DROPPED
    log.info(
        "%s pipelined more than %d requests on one connection: the rest it sent is dropped "
        "and the connection closes once those are answered",
        protocol._client or "a client",
        len(protocol.pipeline),
    )
    raise _Overflow


class _Deadlines:
    """A connection's one deadline (its head's or its body's): when it passes, the
    connection is answered and closed (:func:`_expired`); and, while its client reads
    nothing of what it was sent, the send deadline: then it is reset (:func:`_unread`)."""

    _deadline: Any  # asyncio.TimerHandle, or None
    _send_deadline: Any = None
    loop: Any
    LIMITS: ClassVar[Limits]

    def pause_writing(self) -> None:  # the client is not reading what it was sent
        super().pause_writing()  # type: ignore[misc]
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.LIMITS.send_timeout, _unread, self)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._read_in_time()

    def _read_in_time(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _arm(self, seconds: float, answer: bytes) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, _expired, self, answer)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _head_refusal(protocol: Any, limits: Limits, answers: _Answers) -> bytes | None:
    """The answer to a complete head the listener refuses, or None: an absolute-form target
    where only paths are taken, a transfer coding it would hand on undecoded."""
    if limits.origin_form_only and not protocol.url.startswith((b"/", b"*")):
        return answers.absolute
    return coding_refusal(protocol.headers, protocol.parser.get_http_version())


def guarded_protocol(limits: Limits) -> type[Any]:
    """uvicorn's httptools protocol, with ``limits`` enforced (see the module docstring)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    answers = _answers(limits)
    shares = _Shares(limits.per_client)  # each client's open connections
    idle: dict[Any, None] = {}  # its connections with no request in progress, oldest first
    # and those held up by their client (sending a body, not reading an answer), oldest first
    stalled: dict[Any, None] = {}

    class GuardedHttpTools(_Deadlines, Placed, Trailers, HttpToolsProtocol, metaclass=_Guarded):
        LIMITS: ClassVar[Limits] = limits
        IDLE, HEAD_SLOW = idle, answers.head_slow  # (Placed)
        TRAILER_LIMIT, TRAILER_ANSWER = limits.max_header_bytes, answers.trailers

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: Any = None  # asyncio.TimerHandle of the head or body deadline
            self._in_head = True  # the parser is between requests, or reading a head
            self._head_bytes = self._line_bytes = 0
            self._line_done, self._tail = False, b""
            # answered and closing: ignore anything more it sends (and count it: _lingered)
            self._refused, self._lingered = False, 0
            self._rejected = False  # turned away at connect: never one of the connections
            self._client: str | None = None  # the client it is counted against (_Shares)

        def connection_made(self, transport: Any) -> None:
            if not _admitted(self, transport, shares, idle, stalled, answers):
                return
            super().connection_made(transport)
            idle[self] = None
            self._arm(max(limits.header_timeout - self._late, 0.0), answers.head_slow)
            self._place()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._read_in_time()
            idle.pop(self, None)
            stalled.pop(self, None)
            shares.give(self)
            if not self._rejected:
                super().connection_lost(exc)

        # -- data ---------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._first is not None and not (data := self._placed(data)):
                return
            if self._refused:  # answered: read and dropped while the close lingers
                self._lingered += len(data)
                if self._lingered > LINGER_BYTES and self.transport is not None:
                    self.transport.close()  # it keeps sending: no more courtesy
                return
            if self._in_head and not _count_head(self, data, limits):
                _refuse(self, answers.too_large)
                return
            super().data_received(data)  # trailers counted as they come (Trailers)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._deadline is None:
                self._arm(limits.header_timeout, answers.head_slow)

        def on_headers_complete(self) -> None:
            if self._refused or len(self.pipeline) >= limits.max_pipelined:
                return _overflowed(self)  # past its queue (or refused): dropped
            if (refusal := _head_refusal(self, limits, answers)) is not None:
                _refuse(self, refusal)
                return
            self._in_head = False
            idle.pop(self, None)  # busy with a request until its response is complete
            stalled[self] = None  # and its body is the client's to send, until complete
            self._head_bytes = self._line_bytes = 0
            self._line_done, self._tail = False, b""
            self._arm(limits.body_timeout, answers.body_slow)
            super().on_headers_complete()
            # a HEAD's answer has no body to wait for: its head is written as it comes
            if self.cycle is not None and self.scope["method"] != "HEAD":
                self.cycle.transport = _OneSend(self.transport, self.loop)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if not _started_direct(self, cycle, app):
                super()._start_asgi_task(cycle, app)

        def send_400_response(self, msg: str) -> None:
            if self._refused:  # answered already: the parser found more wrong after
                return
            _flush_head(self)  # a bad request after a good one: the good one's answer first
            super().send_400_response(msg)

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            if not self.flow.write_paused:
                stalled.pop(self, None)
            self._in_head = True  # what comes next is the next request's head
            if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
                idle[self] = None  # answered before its body was all in: idle now
            if not self._refused:
                super().on_message_complete()

        def pause_writing(self) -> None:  # the client is not reading what it was sent
            super().pause_writing()  # (and the send deadline: _Deadlines)
            stalled[self] = None

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._in_head:  # and no body of its own still to send
                stalled.pop(self, None)

        def on_response_complete(self) -> None:
            idle.pop(self, None)
            if not self.pipeline and self._in_head:  # nothing queued, no body arriving
                idle[self] = None  # the newest idle one
            super().on_response_complete()

    return GuardedHttpTools
