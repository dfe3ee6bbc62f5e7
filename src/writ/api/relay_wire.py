"""The write relay's wire (:mod:`writ.api.relay`): frames, the check of the process at the
other end, and the relaying server's end of a connection (:class:`_Link`): its hello, its
calls multiplexed by id with a deadline each, the answers, and the writer's notes.

Frames, both ways: ``>II`` (the JSON header's length, the body's length), the header (a
JSON array), the body. What each end says is in :mod:`writ.api.relay`'s docstring. A frame
that is not one (too large, not JSON, not an array, not a call, an answer or notes this end
expects) closes its connection, and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from writ.core.errors import Unavailable
from writ.stores.base import Store

log = logging.getLogger("writ.relay")

__all__ = ["CANCEL_WAIT_S", "DEADLINE_S", "GOING_WAIT_S", "LOST", "NOT_RUN", "QUEUED", "Answer"]

_SIZES = struct.Struct(">II")
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
MAX_HEADER = 64 << 10
MAX_BODY = 8 << 20  # a request's body is at most 1 MiB (LimitBody); an answer is small
MAX_INSTANCE = 64  # a store's instance id (PostgreSQL's: 12 hex digits)
MAX_TRACEPARENT = 64  # W3C's traceparent is 55 characters
# the frames' shape, named in a server's identity: servers whose frames differ never relay
# to each other (2: a call carries its traceparent; 3: a writer says "going")
WIRE = 3
CANCEL_WAIT_S = 10.0  # after a cancel, how long a server waits for the writer's last word
# a call that does not wait is answered within the store's own bounds (a pool checkout,
# a statement: seconds); one unanswered after this long means the writer is stuck
DEADLINE_S = 30.0
#: bytes of calls a relaying server holds for the writer to read (its link's buffer, and the
#: calls of this step of the loop, each): past either, its next lease write is written there
QUEUED = 1 << 20
NOT_RUN = 0  # an answer's status: the writer did not run the call (it is going): write it
#: a writer that is going said so (``[0, "going"]``): how long it waits for its servers to
#: close their links, answering *not run* to what they sent before they read it
GOING_WAIT_S = 1.0
LOST = (
    "the writer server this one relays lease writes to went away before answering: the "
    "request may or may not have taken effect; read the lease back (GET /v1/leases) before "
    "retrying"
)


@dataclass(slots=True)
class Answer:
    """A relayed call's answer: the HTTP status, the answer's bytes, ``Retry-After`` and
    what the access log names (the principal, the lease's resource, id and token)."""

    status: int
    body: bytes
    retry: int | None = None
    principal: str | None = None
    log: dict[str, Any] = field(default_factory=dict)


def _peercred(sock: socket.socket) -> tuple[int, int, int] | None:
    """The process at the other end of a Unix socket, ``(pid, uid, gid)``; None where the
    system does not say (not Linux)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("iII"))
    pid, uid, gid = struct.unpack("iII", creds)  # struct ucred: pid_t, uid_t, gid_t
    return pid, uid, gid


def _same_user(sock: socket.socket | None) -> bool:
    """Whether the process at the other end of a Unix socket runs as this user."""
    if sock is None:
        return False
    creds = _peercred(sock)
    return creds is None or creds[1] == os.getuid()  # (not Linux: the directory's mode)


def _shut(fd: int) -> None:
    """Shut the connection of descriptor ``fd`` down both ways: every copy of it (one sent
    to another process, say) sees its end, and so does its client."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()


# a TCP connection's states (tcpi_state) in which this end has not shut its sending side:
# ESTABLISHED, and CLOSE_WAIT (its client shut its own after sending its request)
_ANSWERABLE = frozenset({1, 8})


def _answerable(sock: socket.socket) -> bool:
    """Whether a TCP connection may still be answered: connected, and not shut down by
    :func:`_shut` (a relaying server that let a stalled writer's hand-offs go shut them,
    its clients saw their end; the writer, back, must not run their requests). Told by the
    connection's state (``TCP_INFO``), not its bytes: a client may have shut its sending
    side after its request, or sent more. Elsewhere than Linux: whether it is connected."""
    try:
        if not hasattr(socket, "TCP_INFO"):
            sock.getpeername()
            return True
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in _ANSWERABLE
    except OSError:
        return False


def _peer_pid(sock: Any) -> int | None:
    """The id of the process at the other end of a Unix socket, or None (not Linux, or the
    socket is closed): two sockets whose ends are one process's lead to one writer."""
    if sock is None:
        return None
    try:
        creds = _peercred(sock)
    except OSError:
        return None
    return (creds[0] or None) if creds is not None else None


def _frame(header: list[Any], body: bytes = b"") -> bytes:
    head = _COMPACT.encode(header).encode()
    return _SIZES.pack(len(head), len(body)) + head + body


class _Frames(asyncio.Protocol):
    """One end of a relay connection: frames in (:meth:`frame`), frames out (:meth:`send`).
    A frame that is not one (too large, not JSON, not a call or an answer) closes the
    connection; so does a peer of another user.

    The frames of one step of the event loop leave together, in one ``send`` at the next
    (a batch's answers and its notes; the calls of the requests that arrived together): one
    system call and one wake-up of the other end for all of them."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not _same_user(transport.get_extra_info("socket")):
            log.warning("relay: refused a connection with a process of another user")
            self.closed = True  # at once: nothing is sent on it, not even before it closes
            transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= _SIZES.size and not self.closed:
            n_head, n_body = _SIZES.unpack_from(buf)
            if n_head > MAX_HEADER or n_body > MAX_BODY:
                self._broken(f"a frame of {n_head} + {n_body} bytes")
                return
            end = _SIZES.size + n_head + n_body
            if len(buf) < end:
                return
            try:
                header = json.loads(buf[_SIZES.size : _SIZES.size + n_head])
            except (ValueError, RecursionError):
                header = None
            body = bytes(buf[_SIZES.size + n_head : end])
            del buf[:end]
            if (
                type(header) is not list
                or not header
                or type(header[0]) is not int
                or not self.frame(header, body)
            ):
                self._broken("a frame no writ server sends")
                return

    def _broken(self, what: str) -> None:
        log.warning("relay: closed a connection that sent %s", what)
        self.closed = True  # no call is sent on it from now
        self.buf.clear()
        if self.transport is not None:
            self.transport.abort()  # (a peer that sent that may read nothing either)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost()

    def send(self, header: list[Any], body: bytes = b"") -> None:
        self.put(_frame(header, body))

    def put(self, frame: bytes) -> None:
        """Send ``frame`` with the others of this step of the loop."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, []
        if not out:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))
            if not transport.is_closing():  # (a write that failed at once sent nothing)
                self.sent()
                return
        self.unsent(out)

    def sent(self) -> None:
        """What :meth:`flush` wrote is on its way (a link counts its calls sent)."""

    def unsent(self, frames: list[bytes]) -> None:
        """What :meth:`flush` took was never sent: the connection ended first (the writer
        gives back the grants nobody was told of)."""

    def unread(self) -> int:
        """Bytes sent that the other end has not read yet (or not yet sent at all)."""
        held = sum(len(f) for f in self._out)
        return held + (self.transport.get_write_buffer_size() if self.transport else 0)

    def close(self) -> None:
        self.flush()  # what was sent before, a refusal say, goes first
        self.closed = True  # nothing more is read from it or sent on it
        if self.transport is not None:
            self.transport.close()

    def frame(self, header: list[Any], body: bytes) -> bool:
        raise NotImplementedError

    def lost(self) -> None:
        pass


def _bounded(waits: Any) -> float:
    """A caller's ``wait_s`` as seconds to allow for, 0 to an hour (the engine refuses what
    it does not take; a number that is no number allows the hour)."""
    try:
        more = float(waits)
    except (OverflowError, TypeError, ValueError):
        return 3600.0
    return 3600.0 if more != more else min(max(more, 0.0), 3600.0)


class _Link(_Frames):
    """A server's connection to the writer: its hello, then calls multiplexed by id; a call
    unanswered after its deadline, or a broken connection, fails every call still open
    (:data:`LOST`) and ends the link (the server writes itself, then links again).

    It always reads: what it is sent is the answers to its own open calls (and the writer's
    notes, which the writer bounds), so it never stops reading because the writer reads its
    calls slowly — two ends that each stopped reading while their writes backed up waited
    for each other until the deadline. What it bounds instead is the calls it holds for the
    writer (:data:`QUEUED`: :attr:`paused`, :attr:`held`; ``Relay.link``). An answer to a
    call it no longer waits for (reported lost) that is a grant is handed to ``unheard``:
    nobody was told of it, so it is given back."""

    def __init__(
        self,
        identity: str,
        deadline_s: float = DEADLINE_S,
        store: Store | None = None,
        notes: dict[str, int] | None = None,
        unheard: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.unheard = unheard  # takes a late answer's status and what it names (a grant's)
        self.identity = identity
        self.deadline_s = deadline_s
        self.store = store  # takes the writer's notes
        self._told = False  # it said its store's instance in its hello
        self.notes = notes if notes is not None else {"taken": 0}  # counts those it took
        self.theirs: str | None = None  # the writer's identity, once it said it
        self.welcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ids = itertools.count(1)
        self._open: dict[int, asyncio.Future[Answer]] = {}
        self.quick: set[int] = set()  # the open calls that do not wait (see Relay.link)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # calls whose frames wait in this step's output: never sent, if the link ends first
        self._unsent: list[int] = []
        # the writer ended the hand-off (it died, or drains): no new call is sent on this
        # link; those in the air still get their answers (Relay.writer_gone)
        self.retired = False
        self.paused = False  # its buffer holds QUEUED bytes (Relay._elect sets the limit)
        self.held = 0  # bytes of the calls of this step of the loop, not written yet

    def sent(self) -> None:
        self._unsent.clear()
        self.held = 0

    def unsent(self, frames: list[bytes]) -> None:
        self.held = 0  # (the link has ended: lost() answers those calls not run)

    def pause_writing(self) -> None:
        self.paused = True  # (reading goes on: see the class docstring)

    def resume_writing(self) -> None:
        self.paused = False

    def idle(self) -> bool:
        """Whether no call on it waits for its answer."""
        return not self._open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        instance = self.store.instance if self.store is not None else ""
        self.send([0, "hello", self.identity, instance])
        # from its hello on, the writer may count this server as told over the relay (even
        # before its welcome arrives): when the link ends, it looks up what it missed
        self._told = bool(instance) and not self.closed

    def frame(self, header: list[Any], body: bytes) -> bool:
        if len(header) == 3 and header[0] == 0 and header[1] in ("welcome", "refused"):
            self.theirs = str(header[2])[:200]
            if header[1] == "refused":
                self._told = False  # the writer never counted it: no notes to have missed
            if not self.welcome.done():
                self.welcome.set_result(header[1] == "welcome")
            return True
        if header == [0, "notes"]:
            return self._notes(body)
        if header == [0, "going"]:  # the writer shuts down: no new call on this link
            if not self.retired:
                log.info("relay: the writer is going; this server writes new calls")
            self.retired = True
            return True
        if len(header) != 5:
            return False
        call_id, status, retry, principal, meta = header
        if (
            type(status) is not int
            or (retry is not None and type(retry) is not int)
            or (principal is not None and type(principal) is not str)
            or type(meta) is not dict
        ):
            return False
        fut = self._open.pop(call_id, None)
        self._done(call_id)
        if fut is not None and not fut.done():
            fut.set_result(Answer(status, body, retry, principal, meta))
        elif self.unheard is not None:  # its caller was told it was lost: nobody holds it
            self.unheard(status, meta)
        return True

    def _notes(self, body: bytes) -> bool:
        """The writer's notes of one commit (see the module docstring)."""
        try:
            notes = json.loads(body)
        except (ValueError, RecursionError):
            return False
        if type(notes) is not list or not all(
            type(n) is list and len(n) == 2 and type(n[0]) is str and type(n[1]) is dict
            for n in notes
        ):
            return False
        if self.store is not None and self.welcome.done() and self.welcome.result():
            self.store.take_notes([(k, p) for k, p in notes])
            self.notes["taken"] += 1
        return True

    def lost(self) -> None:
        if self._told and self.store is not None:
            self._told = False  # once: a deadline and the close after it both end the link
            self.store.notes_lost()  # what the writer's notes said meanwhile may be lost
        if not self.welcome.done():
            self.welcome.set_result(False)
        unsent = set(self._unsent)
        for call_id, fut in self._open.items():
            if fut.done():
                continue
            if call_id in unsent:  # never reached the writer: this server writes it
                fut.set_result(Answer(NOT_RUN, b"", None, None, {}))
            else:
                fut.set_exception(Unavailable(LOST))
        self._open.clear()
        for call_id in list(self._timers):
            self._done(call_id)

    def _done(self, call_id: int) -> None:
        self.quick.discard(call_id)
        timer = self._timers.pop(call_id, None)
        if timer is not None:
            timer.cancel()

    def call(
        self,
        op: str,
        token: str,
        lease: str | None,
        body: bytes,
        request_id: str | None = None,
        waits: Any = 0,
        traceparent: str | None = None,
    ) -> tuple[int, asyncio.Future[Answer]] | None:
        """Send one call; its id (for :meth:`cancel`) and the future of its answer — or
        None for one too large to send (the server writes it itself). A call that waits
        (``waits`` seconds at most, as its caller asked) is given that much more than the
        deadline; ``traceparent`` (tracing on) makes the writer's work on it part of the
        caller's trace."""
        if self.closed:
            raise Unavailable(LOST)
        call_id = next(self._ids)
        if len(body) > MAX_BODY:
            return None
        frame = _frame([call_id, op, token, lease, request_id, traceparent], body)
        if len(frame) - _SIZES.size - len(body) > MAX_HEADER:
            return None
        self.held += len(frame)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        self._open[call_id] = fut
        if not waits:
            self.quick.add(call_id)
        self._timers[call_id] = loop.call_later(
            self.deadline_s + _bounded(waits), self._expire, call_id
        )
        self.put(frame)
        self._unsent.append(call_id)
        return call_id, fut

    def _expire(self, call_id: int) -> None:
        """No answer in time: the writer is stuck (stopped, or its loop blocked). Its link
        ends, and every call still open on it fails; the server writes itself."""
        self._timers.pop(call_id, None)
        if call_id in self._open:
            log.warning("relay: the writer did not answer a call in time: writing here")
            self.closed = True
            if self.transport is not None:  # at once: a close waits to send what the
                self.transport.abort()  # writer does not read, and never ends
            self.lost()

    def cancel(self, call_id: int, why: str) -> None:
        """Ask the writer to end call ``call_id``'s wait (``why``: "hangup" or "drain"); its
        answer still comes, with what the writer did."""
        if call_id in self._open:
            self.send([call_id, "cancel", why])

    def forget(self, call_id: int) -> None:
        self._open.pop(call_id, None)
        self._done(call_id)
