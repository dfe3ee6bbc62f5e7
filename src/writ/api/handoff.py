"""Connection hand-off: a server that relays to the host's writer gives it each new client
connection whole, while the writer has room.

The write relay (:mod:`writ.api.relay`) sends a server's lease writes to the writer, but a
relayed pair costs the host's cores more than a pair one server answers alone (1.75× at 16
clients, docs/scaling.md). So a relaying server hands the writer each connection it
accepts, once it has read the first request's target: the descriptor crosses a Unix socket
(``SCM_RIGHTS``) with the bytes read so far, and the writer serves it as one it accepted
itself, with its own limits, logs and metrics. The client sees one server. (Vault's
standby nodes forward requests to the active one; here the connection itself moves.) A
connection whose first request is for ``/livez``, ``/readyz`` or ``/metrics`` stays: those
say how *this* process is, and a scraper of every server must not count the writer's
traffic twice. A connection is placed by its first request, once.

On ``DIR/handoff.sock`` (``SOCK_SEQPACKET``: one message at a time; each end checks that
the other runs as this user) the relaying server first says its :func:`digest` — the relay's
identity and every setting that shapes an answer, so a writer configured otherwise is never
handed a connection — and the writer answers ``+`` (hand me connections), ``-`` (not now)
or ``x`` (other settings; it closes). Then each connection is one message, ``c``, the
seconds it has been open (a double: what its head's deadline has left runs on), its number
on this link and the bytes read from it, with its descriptor; the writer says ``+`` or ``-``
again whenever it changes its mind.

A hand-off is acknowledged: the relaying server keeps its copy of the descriptor, unread,
until the writer says ``a`` and its number (taken: said *before* it reads a byte; nothing is
adopted that was not, unless the relaying server's end is closed whole) or ``n`` (serve it
here). When the link ends, all the writer said is read first; what it never said ``a`` of it
never read, so the relaying server serves those itself: a connection handed in the instant
the writer dies is not lost with it, and none is served twice (:class:`_Leaving`).

Room: the writer takes connections while its process used under :data:`BUSY_OFF` of a core
over the last :data:`SAMPLE_S` (past it, ``-``; ``+`` again under :data:`BUSY_ON`). And it
is never handed more than :data:`ROOM` of its listener's connection limit, however many
servers hand it connections at the same moment: each ``+`` carries credits (a count of
connections that server may hand over; at most :data:`CREDIT` outstanding, or an even share
of the room when more servers are linked than that fills), a relaying server hands a
connection only with a credit to spend, and the writer gives credits only out of the room it
has, counting those it gave that were not spent yet as taken (what its own listener accepts
after that is its limit's to handle, as on a lone server). A server holding more than its
share (given before others linked) is asked, ``s`` and the share, for the rest back, and
answers ``r`` and how many, after what it handed meanwhile. A credit counts as given once
said: a relaying server that leaves its socket full of what it was told is cut off, once
what it sent is served, and links again afresh. A connection a relaying server keeps is
served as before: its lease writes relayed, the rest answered there. So on a host with cores
to spare the relaying servers share the HTTP work once the writer is busy, and on a host
without, the host's servers cost what one does.

What the writer is sent must be one TCP socket; anything else is closed, counted
(``refused``) and ends that server's hand-off socket. A writer that goes away takes the
connections it adopted with it, as a lone server that dies does; one that begins its
graceful shutdown takes no more and serves, as it drains, those handed to it already.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from writ.api.handoff_first import OPS, away
from writ.api.relay_wire import _answerable, _peer_pid, _same_user, _shut
from writ.core.textsafe import counted

log = logging.getLogger("writ.relay")

__all__ = [
    "BUSY_OFF",
    "BUSY_ON",
    "CREDIT",
    "LEAVE_WAIT_S",
    "OPS",
    "ROOM",
    "SOCKET",
    "Handoff",
    "away",
    "digest",
]

SOCKET = "handoff.sock"
MAX_FIRST = 64 << 10  # of a connection's first bytes, what a hand-off carries at most
BUSY_OFF = 0.8  # of a core, over the last SAMPLE_S: the writer takes no more connections
BUSY_ON = 0.6  # and takes them again under this
ROOM = 0.9  # of the writer's connection limit it fills with handed connections at most
CREDIT = 256  # connections one relaying server may have been allowed and not yet handed
SAMPLE_S = 1.0
HELLO_WAIT_S = 2.0
MAX_SERVERS = 256  # relaying servers connected at once (as --workers: at most 256)
_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_HAND = struct.Struct("!dI")  # after "c": the seconds it was open before, and its number
_ID = struct.Struct("!I")  # after "a" (the writer took it) or "n" (it did not): the number
LEAVE_WAIT_S = 5.0  # a link let go with hand-offs unsettled: how long the writer has to close
#: hand-offs unsettled this long, the writer silent meanwhile: it is not answering (a stopped
#: process), and its relaying servers let the link go (the relay's keeper, :meth:`stalled`)
SETTLE_S = 3.0
# hand-offs not settled yet: each one's number and what settles it (True: the writer took it)
_Parked = dict[int, Callable[[bool], None] | None]
_GRANT = struct.Struct("!I")  # after "+": the credits given (connections it may hand over)
_HEARD_AT_ONCE = 1024  # of the writer's messages, what a relaying server reads in one turn
_TAKEN_AT_ONCE = 64  # of a relaying server's hand-offs, what the writer adopts in one turn


def digest(identity: str, settings: Mapping[str, Any]) -> str:
    """What two servers must share for one to hand the other its connections, as a digest:
    the relay's ``identity`` (store, policy, writ's version, the frames' shape) and every
    ``settings`` that shapes an answer (the listener's limits, the metrics and their token,
    the waits per principal). How each logs, where it listens and what it does on its own
    (its outbound calls, its standing verify) need not agree: a handed connection is logged
    and answered as the writer's."""
    said = json.dumps([identity, dict(settings)], sort_keys=True, default=repr)
    return hashlib.sha256(said.encode()).hexdigest()


class Handoff:
    """One server's end of the hand-off: as the writer, :meth:`listen` (and
    :meth:`stop_listening`); as a relaying server, :meth:`connect` (and :meth:`disconnect`)
    and :meth:`offer`. The HTTP server lends it how to serve a socket (:meth:`attach`);
    without that (an app run by something else than ``writ serve``) it does nothing."""

    def __init__(self, directory: str, identity: str, settings: Mapping[str, Any]) -> None:
        self.directory = directory
        self.identity, self.settings = identity, dict(settings)
        self.digest = digest(identity, settings)
        # writ_relay_connections_total: handed to the writer, taken from a relaying server,
        # sent (to the writer) not one TCP socket, handed and not taken (served here)
        self.counts = dict.fromkeys(("handed", "adopted", "refused", "returned"), 0)
        self.busy_off, self.busy_on, self.room = BUSY_OFF, BUSY_ON, ROOM
        self.sample_s, self.hello_wait_s = SAMPLE_S, HELLO_WAIT_S
        self.cpu: Callable[[], float] = time.process_time
        self._adopt: Callable[[socket.socket, bytes, float], None] | None = None
        self._connections: Callable[[], int] = lambda: 0
        self._max_connections = 0
        # the writer's side
        self._listening: socket.socket | None = None
        self.unlistened = False  # it could not listen: its keeper tries again
        self._peers: dict[int, _Peer] = {}
        self._open = True  # the writer has room (what it last said)
        self._sampler: asyncio.Task[None] | None = None
        # the relaying server's side
        self._out: socket.socket | None = None
        self._taken = False  # the writer said "+" last
        self.credit = 0  # connections the writer allowed this server to hand, not handed yet
        self.refused = False  # the writer said "x": not asked again while this link lasts
        self._parked: _Parked = {}  # handed on this link, not said "a" or "n" of yet
        self._socks: dict[int, int] = {}  # their descriptors, by number
        self._numbers = itertools.count(1)
        self.leave_wait_s = LEAVE_WAIT_S
        self.settle_s = SETTLE_S
        # time.monotonic() the writer last said something, or the first hand-off it has not
        # settled since was made
        self._waited_since = 0.0
        self._leaving: set[_Leaving] = set()  # links ended, read to the writer's close
        # called when the writer ends the link (it died, or is going): the relay then stops
        # relaying at once, rather than send the writer a call it will never answer
        self.on_gone: Callable[[], None] | None = None

    def attach(
        self,
        adopt: Callable[[socket.socket, bytes, float], None],
        connections: Callable[[], int],
        max_connections: int,
        listener: Mapping[str, Any],
    ) -> None:
        """How this process's HTTP server serves a socket handed to it with the bytes
        already read from it and the seconds it was connected there (``adopt``), how many
        connections it holds (``connections``) of at most ``max_connections``, and its
        ``listener``'s settings (in the :func:`digest`)."""
        self._adopt, self._connections, self._max_connections = adopt, connections, max_connections
        self.digest = digest(self.identity, {**self.settings, "listener": dict(listener)})

    # -- the writer -------------------------------------------------------------------
    async def listen(self) -> None:
        """As the writer: take the connections relaying servers hand over (the relay's keeper
        calls it again while it could not: out of descriptors, say)."""
        if self._adopt is None or self._listening is not None:
            return
        path, sock = os.path.join(self.directory, SOCKET), None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a writer before this one left it; the relay's lock is ours
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.setblocking(False)
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(64)
        except OSError as exc:
            if sock is not None:
                sock.close()
            if not self.unlistened:  # (said once, not at every retry)
                log.warning("hand-off: cannot listen (%s); the relaying servers keep theirs", exc)
            self.unlistened = True
            return
        if self.unlistened:
            log.info("hand-off: the writer listens for connections again")
        self._listening, self.unlistened = sock, False
        self._open = True
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        self._sampler = asyncio.ensure_future(self._sample())

    def stop_listening(self) -> None:
        """No more connections: this server is no longer the writer, or is going. Those
        already sent are served (:meth:`_Peer.drain`): closing a hand-off socket with them
        unread would close their clients' connections unanswered."""
        sock, self._listening = self._listening, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, SOCKET))
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        for peer in list(self._peers.values()):
            peer.drain()

    def _accept(self) -> None:
        if self._listening is None:
            return
        try:
            conn, _ = self._listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors: the relaying servers keep theirs
            log.warning("hand-off: cannot accept a relaying server: %s", exc)
            return
        if len(self._peers) >= MAX_SERVERS or not _same_user(conn):
            conn.close()
            return
        conn.setblocking(False)
        peer = _Peer(self, conn)
        self._peers[peer.fileno] = peer
        loop = asyncio.get_running_loop()
        loop.add_reader(peer.fileno, peer.heard)
        # one that says nothing holds a place of MAX_SERVERS: not for long
        peer.unheard = loop.call_later(self.hello_wait_s, peer.close)

    def has_room(self, busy: float) -> bool:
        """Whether the writer takes connections, having used ``busy`` of a core lately (how
        many it may still be handed is :meth:`free`)."""
        return busy < (self.busy_off if self._open else self.busy_on)

    def free(self) -> int:
        """Connections the writer may still be handed: :data:`ROOM` of its limit, less those
        it holds and the credits it gave that were not spent yet (in flight, or to come)."""
        if not self._max_connections:
            return CREDIT * MAX_SERVERS
        given = sum(peer.credit for peer in self._peers.values())
        return int(self.room * self._max_connections) - self._connections() - given

    def share(self) -> int:
        """The credits one relaying server may hold: :data:`CREDIT`, or less when the
        servers linked here would fill :data:`ROOM` of the writer's limit with that much
        (then each its even part of it)."""
        if not self._max_connections:
            return CREDIT
        linked = sum(peer.greeted for peer in self._peers.values()) or 1
        return max(1, min(CREDIT, int(self.room * self._max_connections) // linked))

    def top_up(self, peer: _Peer, said: bool = False) -> None:
        """Give ``peer`` credits up to :meth:`share` out of :meth:`free`, once it has spent
        half of them; ``said``: say ``+`` even with none to give (the writer takes
        connections again)."""
        if not self._open or not peer.greeted or peer.cut or self._listening is None:
            return
        give = 0
        share = self.share()
        if peer.credit <= share // 2:
            give = max(min(share - peer.credit, self.free()), 0)
        if (give or said) and peer.send(b"+" + _GRANT.pack(give)):
            peer.credit += give  # counted once said: one not said is the writer's room still

    async def _sample(self) -> None:
        cpu, at = self.cpu(), time.monotonic()
        while True:
            await asyncio.sleep(self.sample_s)
            cpu_now, now = self.cpu(), time.monotonic()
            busy = (cpu_now - cpu) / max(now - at, 1e-6)
            cpu, at = cpu_now, now
            self.say(self.has_room(busy))
            share = self.share()
            for peer in list(self._peers.values()):  # what closed since is room again
                if peer.credit > share and peer.greeted and not (peer.asked or peer.cut):
                    # given while fewer servers were linked: the rest back, for the others
                    peer.asked = peer.send(b"s" + _GRANT.pack(share))
                self.top_up(peer)

    def say(self, room: bool) -> None:
        """Tell every relaying server whether to hand connections over, when that changes."""
        if room == self._open:
            return
        self._open = room
        log.info("hand-off: the writer %s connections", "takes" if room else "takes no more")
        for peer in list(self._peers.values()):
            if not room and peer.greeted:
                peer.send(b"-")  # its credits stay given: some may be in flight
            self.top_up(peer, said=True)

    def adopt(
        self,
        fd: int,
        first: bytes,
        late: float = 0.0,
        took: Callable[[], bool] | None = None,
    ) -> bool:
        """Serve the connection ``fd`` a relaying server handed over, as if ``first`` had
        just been read from it, ``late`` seconds after it connected (its head's deadline
        runs from then), once ``took`` (tell the relaying server so) says it may; False (and
        ``fd`` closed) if it is not a TCP connection. One ``took`` could not be said of is
        closed (the relaying server serves its own copy), and so is one that cannot be
        answered: its client reset it after the hand-off, or the relaying server shut it
        (this writer stalled, :meth:`disconnect`: its client saw its end, so its request must
        not run now; checked once ``took`` is said, which stops a relaying server that reads
        it from shutting it). Both True: no fault of the relaying server's, whose hand-off
        socket (and the connections queued on it) must not end."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            self.counts["refused"] += 1
            return False
        try:
            ok = sock.type == socket.SOCK_STREAM and sock.family in _FAMILIES
            ok = ok and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            ok = False
        if not ok or self._adopt is None:
            sock.close()
            self.counts["refused"] += 1
            return False
        if (took is not None and not took()) or not _answerable(sock):
            sock.close()
            return True
        sock.setblocking(False)
        self.counts["adopted"] += 1
        self._adopt(sock, first, late)
        return True

    # -- a relaying server ------------------------------------------------------------
    async def connect(self) -> None:
        """As a relaying server, linked to the writer: say this server's digest, and hand
        connections over while the writer says it has room."""
        if self._adopt is None or self._out is not None:
            return
        loop, sock = asyncio.get_running_loop(), None
        try:  # (out of descriptors too: its keeper tries again)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.setblocking(False)
            await loop.sock_connect(sock, os.path.join(self.directory, SOCKET))
            if not _same_user(sock):
                raise OSError("the writer's hand-off socket is another user's")
            await loop.sock_sendall(sock, self.digest.encode())
            said = await asyncio.wait_for(loop.sock_recv(sock, 64), self.hello_wait_s)
        except (OSError, TimeoutError):
            if sock is not None:
                sock.close()
            return
        if not self._said(said):
            sock.close()
            if said == b"x":
                self.refused = True
                log.warning(
                    "hand-off: the writer runs with other settings than this server; this "
                    "server keeps its connections (and relays their lease writes)"
                )
            return
        self._out = sock
        loop.add_reader(sock.fileno(), self._heard)
        log.info("hand-off: this server hands its connections to the writer")

    def _heard(self) -> None:
        """Take all the writer said since this server last looked (a few hundred messages
        fill the socket, and the writer cuts off a server that lets it fill; it may say
        several things a turn of this server's loop)."""
        for _ in range(_HEARD_AT_ONCE):
            sock = self._out
            if sock is None:
                return
            try:
                said = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # its end closed with hand-offs unread: read on (_Leaving)
                said = b""
            if not self._said(said):
                self._gone()
                return

    def _said(self, said: bytes) -> bool:
        """Take what the writer said: ``+`` and the credits it adds, or ``-``; False for
        anything else (it went, or refused this server)."""
        self._waited_since = time.monotonic()
        if said[:1] == b"+" and len(said) == 1 + _GRANT.size:
            self._taken = True
            self.credit += _GRANT.unpack_from(said, 1)[0]
        elif said == b"-":
            self._taken = False
        elif said[:1] in (b"a", b"n") and len(said) == 1 + _ID.size:
            self._settled(self._parked, said)
        elif said[:1] == b"s" and len(said) == 1 + _GRANT.size and self._out is not None:
            # keep that many: the rest back (after what this server handed, in order)
            back = max(self.credit - _GRANT.unpack_from(said, 1)[0], 0)
            self.credit -= back
            try:
                self._out.send(b"r" + _GRANT.pack(back))
            except BlockingIOError:  # its socket is full of hand-offs the writer will read:
                self.disconnect()  # not said, the ends would count apart; it links again
            except OSError:  # the writer reads no more: it is going
                return False
        else:
            return False
        return True

    def linked(self) -> bool:
        """Whether this server is connected to the writer's hand-off socket, or was refused
        on this link (then it does not ask again until the next), or cannot hand off."""
        return self._out is not None or self.refused or self._adopt is None

    def stalled(self) -> bool:
        """Whether hand-offs wait to be settled past :attr:`settle_s`, the writer silent."""
        return bool(self._parked) and time.monotonic() - self._waited_since > self.settle_s

    def writer_pid(self) -> int | None:
        """The process id of the writer this server's hand-off is linked to, or None."""
        return _peer_pid(self._out)

    def disconnect(self, stalled: bool = False) -> None:
        """Keep every connection from now on: the link to the writer is gone (those handed
        on it that the writer has not settled are settled as it closes: :class:`_Leaving`;
        ``stalled``, a writer that settles nothing: they are shut down now, its copies too,
        and a writer that comes back drops them unserved: :meth:`adopt`)."""
        for number in self._parked if stalled else ():
            with contextlib.suppress(OSError, KeyError):
                _shut(self._socks[number])  # the client sees its end
        sock, self._out, self._socks = self._out, None, {}
        self._taken = self.refused = False
        self.credit = 0
        parked, self._parked = self._parked, {}
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            _Leaving(self, sock, parked) if parked else sock.close()

    def _settled(self, parked: _Parked, said: bytes) -> None:
        """The writer said ``a`` (it took the connection of that number) or ``n``."""
        number = _ID.unpack_from(said, 1)[0]
        self._socks.pop(number, None)
        if number not in parked:  # (none of this link's, or settled already)
            return
        settle = parked.pop(number)
        taken = said[:1] == b"a"
        if not taken:
            self.counts["returned"] += 1
        if settle is not None:
            settle(taken)

    def _gone(self) -> None:
        self.disconnect()
        if self.on_gone is not None:
            self.on_gone()

    def offer(
        self,
        transport: Any,
        first: bytes,
        late: float = 0.0,
        settle: Callable[[bool], None] | None = None,
    ) -> bool | None:
        """Place a connection of which ``first`` was read and nothing answered, ``late``
        seconds after it connected (what the writer takes off its head's deadline): True once
        handed (then ``settle(True)`` when the writer took it: let this copy go; or
        ``settle(False)``: serve it here), False to serve it here, None to read more first."""
        sock = self._out
        if sock is None or not self._taken or self.credit <= 0 or len(self._parked) >= CREDIT:
            return False  # (that many unsettled: the writer is not answering; serve here)
        if len(first) > MAX_FIRST:  # more than a hand-off carries: served here
            return False
        placed = away(first)
        if not placed:
            return placed
        conn = transport.get_extra_info("socket")
        if conn is None:
            return False
        number = next(self._numbers) & 0xFFFFFFFF
        if not self._parked:
            self._waited_since = time.monotonic()
        try:
            socket.send_fds(sock, [b"c", _HAND.pack(late, number), first], [conn.fileno()])
        except (BlockingIOError, InterruptedError):
            return False  # the writer is not reading: serve it here
        except OSError:
            self._gone()
            return False
        self._parked[number], self._socks[number] = settle, conn.fileno()
        self.counts["handed"] += 1
        self.credit -= 1
        return True


class _Leaving:
    """A relaying server's hand-off link that ended (the writer closed it, or died), or that
    it let go of, with hand-offs unsettled: its sends stopped (``SHUT_WR``), it is read to the
    writer's close; what is left then the writer never read, and is served here. If the
    writer does not close within :data:`LEAVE_WAIT_S`, what is left is let go (the writer's
    copy, if it takes one, is that connection's last)."""

    def __init__(
        self,
        handoff: Handoff,
        sock: socket.socket,
        parked: _Parked,
    ) -> None:
        self.handoff, self.sock, self.parked = handoff, sock, parked
        self.errors = 0
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self.heard)
        self.timer = loop.call_later(handoff.leave_wait_s, self.end, True)
        handoff._leaving.add(self)

    def heard(self) -> None:
        for _ in range(_HEARD_AT_ONCE):  # (as Handoff._heard)
            try:
                said = self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # (once: its end closed with hand-offs unread; read on)
                self.errors += 1
                if self.errors > 1:  # what it said cannot be read: none served twice
                    self.end(True)
                    return
                continue
            if not said:  # its close: all it said is read
                self.end(False)
                return
            if said[:1] in (b"a", b"n") and len(said) == 1 + _ID.size:
                self.handoff._settled(self.parked, said)
            if not self.parked:
                self.end(False)
                return

    def end(self, let_go: bool) -> None:
        """Close; what is left unsettled is served here, or (``let_go``) let go."""
        if self not in self.handoff._leaving:
            return
        self.handoff._leaving.discard(self)
        self.timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        parked, self.parked = self.parked, {}
        if parked and let_go:
            log.warning(
                "hand-off: the writer did not close its end in %gs; letting go of %s it "
                "may still take",
                self.handoff.leave_wait_s,
                counted(len(parked), "connection"),
            )
        for settle in parked.values():
            self.handoff.counts["returned"] += not let_go
            if settle is not None:
                settle(let_go)


class _Peer:
    """The writer's end of one relaying server's hand-off socket."""

    def __init__(self, handoff: Handoff, conn: socket.socket) -> None:
        self.handoff = handoff
        self.conn = conn
        self.fileno = conn.fileno()
        self.greeted = False
        self.credit = 0  # connections it may still hand over (Handoff.top_up)
        self.asked = False  # to give back what it holds past its share (Handoff._sample)
        self.cut = False  # it read nothing of what it was told for long: going (send)
        self.unheard: asyncio.TimerHandle | None = None  # closes it unless it says hello

    def heard(self) -> None:
        """Take what the relaying server sent, up to :data:`_TAKEN_AT_ONCE` messages a turn
        of the loop (a burst of hand-offs is not served one a turn)."""
        for _ in range(_TAKEN_AT_ONCE):
            if self.handoff._peers.get(self.fileno) is not self or not self.readable():
                return

    def readable(self) -> bool:
        """Take the relaying server's next message; False if there was none to read."""
        try:
            data, fds, flags, _addr = socket.recv_fds(self.conn, MAX_FIRST + 64, 2)
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionResetError:  # it went with what it was told unread: what it sent
            return True  # before is queued behind the error, and its copies went with it
        except OSError:
            data, fds, flags = b"", [], 0
        whole = not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        dropped = flags & socket.MSG_CTRUNC and not flags & socket.MSG_TRUNC and not fds
        if dropped and self.greeted and data[:1] == b"c" and len(data) > _HAND.size:
            # its descriptor was dropped on the way in: this process has no room for one
            # more (no fault of the relaying server's, whose link stays); the relaying
            # server serves that connection itself
            log.warning("hand-off: a handed connection was not taken: out of file descriptors")
            self.handoff.counts["refused"] += 1
            self.credit = max(self.credit - 1, 0)
            self.send(b"n" + data[1 + 8 : 1 + _HAND.size])
            return True
        ok = self.greeted and whole and len(fds) == 1 and len(data) > _HAND.size
        if ok and data[:1] == b"c" and self.credit > 0:  # (past its credits: refused)
            self.credit -= 1
            late, number = _HAND.unpack_from(data, 1)
            late = late if 0.0 <= late < 3600.0 else 0.0  # (not a number: none)
            took = b"a" + _ID.pack(number)
            if not self.handoff.adopt(
                fds[0], data[1 + _HAND.size :], late, lambda: self.told(took)
            ):
                self.close()  # not what a writ server sends: it is heard no more
            else:
                self.handoff.top_up(self)
            return True
        for fd in fds:  # nothing else a writ server sends carries a descriptor
            os.close(fd)
        back = -1  # credits it gives back, asked to ("r" and how many)
        if data[:1] == b"r" and len(data) == 1 + _GRANT.size and whole and not fds:
            back = _GRANT.unpack_from(data, 1)[0]
        if not data:  # the relaying server went
            self.close()
        elif self.greeted and self.asked and 0 <= back <= self.credit:
            self.credit -= back
            self.asked = False
        elif not self.greeted and whole and not fds and data == self.handoff.digest.encode():
            self.greeted = True
            if self.unheard is not None:
                self.unheard.cancel()
            if self.handoff._open:
                self.handoff.top_up(self, said=True)
            else:
                self.send(b"-")
        else:
            if self.greeted or fds:  # a descriptor (or a message) no writ server sends
                self.handoff.counts["refused"] += 1
            if not self.greeted:
                self.send(b"x")
            self.close()
        return True

    def drain(self) -> None:
        """Close, serving first what the relaying server sent: once this end reads no more
        (``SHUT_RD``) its next hand-off fails (it serves that connection itself), and what
        it sent before is read to the end of the queue."""
        if self.handoff._peers.get(self.fileno) is not self:  # closed meanwhile
            return
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RD)
        while self.handoff._peers.get(self.fileno) is self and self.readable():
            pass
        self.close()

    def told(self, took: bytes) -> bool:
        """Say ``took`` (the writer takes a connection) before it reads a byte of it: True
        once said, or when the relaying server's end is closed whole (it died, or let go of
        its copy: the writer's is the connection's last); False when it could not be said
        otherwise (its socket full, no memory): it serves its own copy once the link ends."""
        try:
            self.conn.send(took)
        except (BrokenPipeError, ConnectionResetError):
            return True
        except OSError:
            self._cut()
            return False
        return True

    def send(self, said: bytes) -> bool:
        """Say ``said``; False if it was not said. A relaying server that left so much of
        what it was told unread that its socket is full is cut off, once what it sent is
        served (:meth:`drain`): what it was not told — credits, ``+`` — would leave the two
        ends counting apart for good. It links again afresh, as after a writer that went."""
        try:
            self.conn.send(said)
        except BlockingIOError:
            self._cut()
            return False
        except OSError:  # it went: read to its end (readable)
            return False
        return True

    def _cut(self) -> None:
        if not self.cut and self.handoff._peers.get(self.fileno) is self:
            self.cut = True
            log.warning("hand-off: cut off a relaying server that reads nothing it is told")
            asyncio.get_running_loop().call_soon(self.drain)

    def close(self) -> None:
        if self.unheard is not None:
            self.unheard.cancel()
        if self.handoff._peers.get(self.fileno) is self:  # (not a later peer on its number)
            del self.handoff._peers[self.fileno]
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.fileno)
        self.conn.close()
