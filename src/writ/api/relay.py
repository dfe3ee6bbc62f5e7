"""The write relay: servers on one host send their hot lease writes to one of them.

Several ``writ serve`` processes on one PostgreSQL database agree through the database's
chain head, and a batch holds that lock while it decides and commits: two servers writing
side by side take turns at it and write less than one (docs/scaling.md). So the servers of
one host (``writ serve --workers N``, or servers given the same ``--relay DIR``) elect a
*writer* — the process holding an exclusive ``flock`` on ``DIR/writer.lock`` — and the others
relay ``POST /v1/leases`` and ``POST /v1/leases/{id}/release`` to it over the Unix socket
``DIR/writer.sock``. Each server keeps its own HTTP, its reads and every other route; the
writer's store batches every server's writes as its own (one writer: optimistic batches, one
round trip each). etcd's and ZooKeeper's followers forward proposals to their leader the same
way, with one difference: here the writer is a choice of speed, not of correctness. The
database still decides every write, so a server that cannot reach a writer (none yet, or it
just went away) writes itself, correctly, at the shared rate.

What crosses the socket is what crossed HTTP: the caller's bearer token (the writer
authenticates it) and the request body, so a relayed request is answered exactly as the
writer answers its own, byte for byte. The directory must belong to this user and be closed
to others (it carries bearer tokens), and each end checks the other's user id
(``SO_PEERCRED``) before it trusts a frame.

Frames, both ways: ``>II`` (the JSON header's length, the body's length), the header (a
JSON array), the body. A server first says ``[0, "hello", identity, instance]``
(:func:`identity_of`: the store, the policy, writ's version; ``instance``: its store's id
among the processes sharing it) and the writer answers ``[0, "welcome", its own]`` or
``[0, "refused", its own]`` and closes. Then a call is ``[id, "acquire" | "release", token,
lease id or null, request id or null]`` with the HTTP body; ``[id, "cancel", "hangup" |
"drain"]`` ends a wait early (its caller hung up, or its server is shutting down), and the
call is still answered, with what the writer did. An answer is ``[id, status, retry-after,
principal, what the access log names]`` with the answer's bytes; status 0 (:data:`NOT_RUN`)
says the writer, going away, did not run it: its server writes it itself.

The writer also sends each server its store's notes — the grants to queued requests, the
new chain head — as ``[0, "notes"]`` with the notes as a JSON array, after each commit,
instead of a PostgreSQL ``NOTIFY`` that costs every commit (docs/scaling.md): its store
counts the servers linked to it (``store.note_peers``) as hearing its notes, and notifies
only while it hears from another process too. A server whose link breaks looks up what it
may have missed (``store.notes_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from writ.api.handoff import SOCKET as HANDOFF_SOCKET
from writ.api.handoff import Handoff
from writ.api.middleware import _INTERNAL_ERROR
from writ.api.relay_wire import (
    _COMPACT,
    _SIZES,
    DEADLINE_S,
    GOING_WAIT_S,
    MAX_BODY,
    MAX_INSTANCE,
    MAX_TRACEPARENT,
    NOT_RUN,
    QUEUED,
    WIRE,
    Answer,
    _frame,
    _Frames,
    _Link,
    _peer_pid,
)
from writ.core.errors import Invalid, Unavailable
from writ.stores.base import Note, Store, shrink_note

log = logging.getLogger("writ.relay")

__all__ = ["Relay", "Relayed", "check_directory", "identity_of"]

NOTES_CUT_AT = 64 << 10  # a commit's notes past this are cut short, note by note,
NOTE_MAX = 4 << 10  # each to its short fields when over this (writ.stores.base.shrink_note)
MAX_UNREAD = 16 << 20  # notes the writer sent a server that it has not read: past
# this, the server is not reading (stopped, or stuck) and its connection is closed, not
# left to grow with every commit
LOCK, SOCKET = "writer.lock", "writer.sock"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with its terminating NUL (Linux)
# While this many of a server's calls that do not wait are in the air at the writer, it
# writes the next itself: at 256 clients on two servers the writer's one core falls behind
# (relaying everything measured 0.79-0.89x of one server, writing side by side 0.99-1.13x,
# spilling at 16 0.94-1.10x); at 16 clients it never triggers (bench/RESULTS.md).
SPILL = 16
MAX_REFUSED = 64  # identities a writer logs refusing, each once
HELLO_WAIT_S = 2.0  # how long a server waits for the writer's welcome
STOP_WAIT_S = 10.0  # how long a writer that stops waits for the calls it started
# calls of one link in progress at the writer: a server sends no more (past it, it writes the
# next itself), and the writer answers one more *not run* (a call its server gave up on, its
# caller told it was lost, may still run there)
MAX_CALLS = 4096
_INTERNAL = json.dumps(_INTERNAL_ERROR, separators=(",", ":")).encode()
_TOO_LARGE = (
    b'{"error":{"code":"internal","message":"the answer was too large to relay: the request '
    b'may or may not have taken effect; read the lease back before retrying"}}'
)


# what the writer runs for a relayed call: (op, token, lease id, body, request id, hung up,
# draining, traceparent)
Relayed = Callable[
    [str, str, "str | None", bytes, "str | None", "asyncio.Event", "asyncio.Event", "str | None"],
    Awaitable[Answer],
]
# what is done with an answer that reaches no caller (its status, and the lease it names):
# a grant is given back (``FastLeases.unheard``)
Unheard = Callable[[int, dict[str, Any]], Awaitable[None]]


def identity_of(engine: Any) -> str:
    """What servers must share to relay to each other, said in their hello: writ's version
    and the shape of its frames (``WIRE``), the store (host, port, database and schema;
    never a credential) and a digest of the policy. Two spellings of one store differ here,
    and then the servers do not relay: each writes itself, which is always right — as do
    two builds whose frames differ, during a rolling upgrade."""
    from writ._version import __version__

    store = engine.store
    url = str(getattr(store, "url", "") or type(store).__name__)
    parts = urlsplit(url)
    where = f"{parts.hostname or ''}:{parts.port or ''}{parts.path}"
    schema = getattr(store, "schema", None) or ""
    policy = {k: v for k, v in engine.policy.to_dict().items() if k != "source"}
    digest = hashlib.sha256(json.dumps(policy, sort_keys=True, default=str).encode()).hexdigest()[
        :12
    ]
    return f"writ {__version__} wire={WIRE} {where} schema={schema} policy={digest}"


def check_directory(path: str) -> str:
    """``path`` made (mode 0700) if missing, and refused unless it is a directory of this
    user that no one else may write to or read: it holds the socket bearer tokens cross."""
    path = os.path.abspath(path)
    longest = max(SOCKET, HANDOFF_SOCKET, key=len)  # both sockets are made in it
    if len(os.fsencode(os.path.join(path, longest))) > MAX_SOCKET_PATH:
        raise Invalid(
            f"--relay {path}: too long for a Unix socket path (at most "
            f"{MAX_SOCKET_PATH - len(longest) - 1} bytes): choose a shorter directory"
        )
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise Invalid(f"--relay {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise Invalid(f"--relay {path}: not a directory (a symlink is refused too)")
    if st.st_uid != os.getuid():
        raise Invalid(f"--relay {path}: owned by another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        raise Invalid(
            f"--relay {path}: open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"it carries bearer tokens: chmod 700 {path}"
        )
    return path


class Relay:
    """One server's end of the relay: the writer (it holds the lock and listens), or one that
    relays to it (:meth:`link`), or, between the two, neither (:meth:`link` is then None:
    write here). :meth:`start` begins electing, :meth:`stop` lets go. ``identity`` names what
    the servers must share to relay to each other (the store, the policy, writ's version):
    a writer refuses a server that says another."""

    def __init__(
        self,
        directory: str,
        draining: asyncio.Event | None = None,
        identity: str = "",
        retry_s: float = 0.5,
        store: Store | None = None,
    ) -> None:
        self.directory = directory
        self.identity = identity
        # the store whose notes the writer hands to the servers relaying to it, and that
        # takes them when this server relays (see the module docstring)
        self.store = store
        self.retry_s = retry_s
        self.spill = SPILL
        self.deadline_s = DEADLINE_S
        self.stop_wait_s = STOP_WAIT_S
        self.max_calls = MAX_CALLS
        self.max_unread = MAX_UNREAD
        self.run: Relayed | None = None  # set by the app before start()
        self.unheard: Unheard | None = None  # set by the app: gives back a grant told nobody
        # the connections' hand-off to the writer (writ.api.handoff), set by the app
        self.handoff: Handoff | None = None
        # set when this server begins its graceful shutdown (the app's event)
        self.draining = draining if draining is not None else asyncio.Event()
        self.writer = False
        # calls this server relayed, wrote itself while the writer had SPILL of them, lost
        # with the link, and (as the writer) answered for others: writ_relay_calls_total
        self.counts = dict.fromkeys(("relayed", "spilled", "lost", "served"), 0)
        # commits whose notes this server sent (as the writer) or took over the relay
        self.notes = dict.fromkeys(("sent", "taken"), 0)
        self._lock_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._conns: set[_Serving] = set()
        self._tasks: set[asyncio.Future[None]] = set()  # the relayed calls in progress here
        self._stopped = asyncio.Event()
        self._refused_by: str | None = None  # the last writer that said another identity
        self._refused: set[str] = set()  # as the writer, the identities it refused (logged)

    # -- electing ---------------------------------------------------------------------
    async def start(self) -> None:
        check_directory(self.directory)  # again: this process may not be the one that made it
        try:
            await self._elect()
        except Exception:  # serve anyway: this server writes itself, and tries again
            log.exception("relay: electing failed; this server writes itself meanwhile")
        self._task = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        """While this server relays or writes itself, look again now and then: the writer
        may be gone (its lock is then free) or back. When this server begins to drain, the
        waits relayed to it end (503, as its own do) and it stops electing."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), self.retry_s)
            if self._stopped.is_set() or self.draining.is_set():
                self._drain_calls()  # (the server stopped the hand-off as it began to drain)
                return
            handoff = self.handoff
            link = self._link
            if handoff is not None and not self.writer and handoff.stalled():
                # a writer that settles nothing it is handed (a stopped process): the link
                # goes, and what it never took is let go after LEAVE_WAIT_S (:class:`_Leaving`)
                log.warning(
                    "relay: the writer settled no connection handed to it in %gs; this server "
                    "serves its own",
                    handoff.settle_s,
                )
                handoff.disconnect(stalled=True)
            if link is not None and link.retired and link.idle() and not link.closed:
                link.close()  # its calls answered: link again (or write, or be the writer)
            if not self.writer and (self._link is None or self._link.closed):
                if handoff is not None:
                    handoff.disconnect()
                try:
                    await self._elect()
                except Exception:  # never let the keeper die: write here meanwhile
                    log.exception("relay: electing failed; this server writes itself")
            elif handoff is not None and not self.writer and not handoff.linked():
                await handoff.connect()  # the writer was not listening for them yet
                if link is not None and link is self._link and link.retired:
                    self._unretire(link, handoff)
            elif handoff is not None and self.writer and handoff.unlistened:
                await handoff.listen()  # it could not (out of descriptors, say): again

    async def _elect(self) -> None:
        loop = asyncio.get_running_loop()
        path = os.path.join(self.directory, SOCKET)
        if self._take_lock():
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # a writer before this one left it; the lock is ours
                self._server = await loop.create_unix_server(lambda: _Serving(self), path)
                os.chmod(path, 0o600)
            except BaseException:
                self._let_go()  # another server may do better
                raise
            self.writer = True
            if self.store is not None:
                self.store.note_sink = self._notes_out
            if self.handoff is not None and not self.draining.is_set():  # (drains: none)
                await self.handoff.listen()
            log.info("relay: this server is the writer for %s", self.directory)
            return
        try:
            _, link = await loop.create_unix_connection(
                lambda: _Link(
                    self.identity, self.deadline_s, self.store, self.notes, self.give_back
                ),
                path,
            )
        except OSError:
            return  # no writer listening (yet, or any more): write here meanwhile
        if link.transport is not None:  # past this, paused: its calls are written here
            link.transport.set_write_buffer_limits(high=QUEUED)
        try:
            welcome = await asyncio.wait_for(asyncio.shield(link.welcome), HELLO_WAIT_S)
        except (TimeoutError, Unavailable):
            welcome = None
        if not welcome or link.closed:  # refused, silent, or gone
            link.close()
            if welcome is False and link.theirs and link.theirs != self._refused_by:
                self._refused_by = link.theirs  # said once per writer, not every retry
                log.warning(
                    "relay: the writer in %s serves another store, policy or writ version "
                    "(%s, this server %s): not relaying to it; this server writes itself",
                    self.directory,
                    link.theirs,
                    self.identity,
                )
            return
        self._link = link
        log.info("relay: this server relays lease writes to the writer")
        if self.handoff is not None:
            await self.handoff.connect()

    def writer_gone(self) -> None:
        """The writer ended this server's hand-off link (it died, or drains): send it no new
        call, which a dead writer would never answer (a client's call would fail 503 where
        this server can write it); those in the air keep the link for their answers (a
        draining writer gives them), and the keeper links again once they have them."""
        link = self._link
        if link is not None and not link.closed and not link.retired:
            log.info("relay: the writer ended the hand-off; this server writes new calls")
            link.retired = True

    def _unretire(self, link: _Link, handoff: Handoff) -> None:
        """Relay on ``link`` again if the hand-off just linked again to the writer at its
        other end: that writer lives and does not drain (it listens for hand-offs), so it
        ended the last only to cut this server off (it left what it was told unread, or
        could not say a give-back). Another writer (the one of ``link`` died) leaves it
        retired: the keeper links again once it is closed."""
        theirs = _peer_pid(link.transport.get_extra_info("socket") if link.transport else None)
        if theirs is not None and theirs == handoff.writer_pid():
            log.info("relay: the writer took this server's hand-off again; relaying again")
            link.retired = False

    def give_back(self, status: int, lease: dict[str, Any]) -> None:
        """An answer no caller will read (its call was reported lost, or its link ended
        before it could be sent): a grant is given back (:attr:`unheard`), as one whose
        client hung up is, rather than held by nobody for its whole ttl."""
        if status != 201 or self.unheard is None:
            return
        task = asyncio.ensure_future(self.unheard(status, lease))
        self._tasks.add(task)  # (stop waits for it too)
        task.add_done_callback(self._tasks.discard)

    def _take_lock(self) -> bool:
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _notes_out(self, notes: Sequence[Note]) -> None:
        """The store's notes of one commit, to every server linked here that hears them
        this way (the store counted it in ``note_peers``: it did not NOTIFY for it)."""
        store = self.store
        if store is None or not store.note_peers:
            return
        body = _COMPACT.encode(notes).encode()
        if len(body) > NOTES_CUT_AT:  # large notes (a grant carries its lease, whatever
            # its caller put in it): the other server reads the database anyway
            small = [
                (k, shrink_note(p) if len(_COMPACT.encode(p)) > NOTE_MAX else p) for k, p in notes
            ]
            body = _COMPACT.encode(small).encode()
        if len(body) > MAX_BODY:  # not even cut: the servers read what they missed
            log.warning("relay: a commit's notes are too large to relay, even cut short")
            for conn in list(self._conns):
                if conn.instance and conn.transport is not None:
                    conn.transport.abort()
            return
        frame = _frame([0, "notes"], body)
        for conn in list(self._conns):
            if not conn.instance or conn.transport is None or conn.closed:
                continue
            conn.put(frame)
            unread = conn.unread()
            if unread > self.max_unread:
                log.warning(
                    "relay: cut off a server that does not read what it is sent (%d bytes "
                    "unread); it writes itself until it links again",
                    unread,
                )
                conn.transport.abort()  # now: what it did not read is dropped with it
        self.notes["sent"] += 1

    def _peer_gone(self, conn: _Serving) -> None:
        self._conns.discard(conn)
        store, instance = self.store, conn.instance
        if store is not None and instance and not any(c.instance == instance for c in self._conns):
            store.note_peers.discard(instance)  # NOTIFY again from the next batch

    def _let_go(self) -> None:
        if self.handoff is not None:
            self.handoff.stop_listening()
            self.handoff.disconnect()
        if self.store is not None and self.writer:
            self.store.note_sink = None
            self.store.note_peers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # frees the flock: the next writer may start now
            self._lock_fd = None

    def _drain_calls(self) -> None:
        for conn in self._conns:
            for call in conn.calls.values():
                call.drain.set()

    async def stop(self) -> None:
        """Stop listening and let the lock go (another server takes over); end the waits
        relayed here (503, as this server's own), answer every call in progress — a call
        that arrives meanwhile is answered *not run*, and its server writes it itself —
        then close each connection."""
        self._stopped.set()
        self.draining.set()
        for conn in list(self._conns):  # send no new call: write them yourselves
            conn.send([0, "going"])
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._drain_calls()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, SOCKET))
        self._let_go()

        # every call started here, its connection open or not (new ones are answered not run)
        if self._tasks:
            _done, stuck = await asyncio.wait(set(self._tasks), timeout=self.stop_wait_s)
            for task in stuck:  # a call that does not end holds no shutdown up for long
                task.cancel()
        # each server closes its link once it has its answers and has read "going"; what it
        # sent before it read that is answered not run meanwhile, never reset unread
        for _ in range(int(GOING_WAIT_S / 0.01)):
            if not self._conns:
                break
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.close()
        self.writer = False
        if self._link is not None:
            self._link.close()

    def link(self) -> _Link | None:
        """The live link to the writer, or None: this server writes itself — also while
        ``spill`` calls of this server that do not wait are in the air at the writer, or
        :data:`QUEUED` bytes of its calls wait for the writer to read them (it is falling
        behind: this server's own core helps, and the database decides either way), or
        ``max_calls`` are in progress there (the writer takes no more on one link)."""
        link = self._link
        if link is None or link.closed or link.retired:
            return None
        if (
            len(link.quick) >= self.spill
            or link.paused
            or link.held >= QUEUED
            or len(link._open) >= self.max_calls
        ):
            self.counts["spilled"] += 1
            return None
        return link

    def role(self) -> str:
        """``writer``, ``relaying`` (to a writer), or ``alone`` (writing itself: no writer
        reachable, between two, or its link retired)."""
        if self.writer:
            return "writer"
        link = self._link
        return "relaying" if link is not None and not (link.closed or link.retired) else "alone"


@dataclass(slots=True)
class _Call:
    """A relayed call in progress at the writer: its caller hung up, or its wait must end
    because a server is shutting down."""

    hung_up: asyncio.Event
    drain: asyncio.Event
    task: asyncio.Future[None] | None = None


class _Serving(_Frames):
    """The writer's end of one relaying server's connection: its hello, then its calls,
    run and answered.

    It stops reading while its own writes back up (the relaying server reads every answer
    as it comes, so it is stuck or slow): it holds no more answers than the calls it took.
    A grant whose answer it never wrote (the connection ended first) is given back
    (``Relay.give_back``): nobody was told of it."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        self.greeted = False
        self.instance = ""  # the relaying server's store instance, once greeted
        self.calls: dict[int, _Call] = {}

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def unsent(self, frames: list[bytes]) -> None:
        """Answers never written: a grant's is given back, the lease named by what its
        frame names for the access log (its id and fencing token)."""
        for frame in frames:
            n_head = _SIZES.unpack_from(frame)[0]
            header = json.loads(frame[_SIZES.size : _SIZES.size + n_head])
            if len(header) == 5 and header[0] and header[1] == 201:
                self.relay.give_back(201, header[4])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.relay._conns.add(self)

    def frame(self, header: list[Any], body: bytes) -> bool:
        """Take the hello, start the call ``header`` asks, or cancel the one it names;
        False for a frame no writ server sends."""
        call_id = header[0]
        if not self.greeted:
            if (
                len(header) != 4
                or header[1] != "hello"
                or type(header[2]) is not str
                or type(header[3]) is not str
                or len(header[3]) > MAX_INSTANCE
            ):
                return False
            if header[2] != self.relay.identity:
                theirs = header[2][:200]
                refused = self.relay._refused
                # once each (it tries again and again), for so many at most: a process that
                # invents identities is refused as often as it likes, logged and kept no more
                if theirs not in refused and len(refused) < MAX_REFUSED:
                    refused.add(theirs)
                    log.warning(
                        "relay: refused a server of another store, policy or writ version "
                        "(%s, this writer %s)",
                        theirs,
                        self.relay.identity,
                    )
                self.send([0, "refused", self.relay.identity])
                self.close()
                return True
            self.greeted = True
            store = self.relay.store
            if header[3] and store is not None and store.instance:
                self.instance = header[3]
                store.note_peers.add(self.instance)  # its notes go over this connection
            self.send([0, "welcome", self.relay.identity])
            return True
        if len(header) == 3 and header[1] == "cancel":
            call = self.calls.get(call_id)
            if call is not None:
                (call.drain if header[2] == "drain" else call.hung_up).set()
            return True
        run = self.relay.run
        if (
            len(header) != 6
            or header[1] not in ("acquire", "release")
            or call_id in self.calls
            or type(header[2]) is not str
            or (header[3] is not None and type(header[3]) is not str)
            or (header[4] is not None and type(header[4]) is not str)
            or not (
                header[5] is None or (type(header[5]) is str and len(header[5]) <= MAX_TRACEPARENT)
            )
            or run is None
        ):
            return False
        # this writer is going, or has as many of this server's calls as it takes (one its
        # server forgot may still run here): its server writes it
        if self.relay._stopped.is_set() or len(self.calls) >= self.relay.max_calls:
            self.send([call_id, NOT_RUN, None, None, {}])
            return True
        call = _Call(asyncio.Event(), asyncio.Event())
        if self.relay.draining.is_set():
            call.drain.set()
        self.calls[call_id] = call
        work = run(
            header[1], header[2], header[3], body, header[4], call.hung_up, call.drain, header[5]
        )
        call.task = task = asyncio.ensure_future(self._answer(call_id, work))
        self.relay._tasks.add(task)
        task.add_done_callback(self.relay._tasks.discard)
        return True

    async def _answer(self, call_id: int, work: Awaitable[Answer]) -> None:
        try:
            try:
                a = await work
            except Exception:  # answered as the app answers the unexpected: 500
                log.exception("relay: a relayed call failed")
                a = Answer(500, _INTERNAL)
            logged = {k: _clip(v) for k, v in a.log.items() if type(v) in (str, int)}
            principal = _clip(a.principal) if a.principal is not None else None
            header = [call_id, a.status, a.retry, principal, logged]
            body = a.body
            if len(body) > MAX_BODY:  # no writ answer is; never send what is refused
                header[1], header[2], body = 500, None, _TOO_LARGE
            self.send(header, body)  # (a grant never written is given back: unsent)
            self.relay.counts["served"] += 1
        finally:
            self.calls.pop(call_id, None)

    def lost(self) -> None:
        for call in self.calls.values():
            call.hung_up.set()  # the server that asked is gone: as its caller hanging up
        self.relay._peer_gone(self)


def _clip(value: Any) -> Any:
    """What the access log names, cut short: an answer's frame stays small whatever a
    caller sent (a refused resource of 70,000 characters is named by its first 256)."""
    return value[:256] if type(value) is str else value
