"""The hand-off is acknowledged (writ.api.handoff): a relaying server keeps its copy of a
handed connection, reading nothing, until the writer says it took it (``a``) or not (``n``);
a link that ends settles the rest after reading all the writer said, so a connection handed
as the writer dies is served where it was accepted, and none is ever served twice.

The relaying server here is a real listener (DrainingServer, real HTTP); the writer is a raw
socket on the hand-off path, saying exactly what each test needs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_handoff import _App, _serving, _until
from writ.api.handoff import SOCKET, Handoff

REQUEST = b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
WRITERS = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nwriter"


class _Writer:
    """The writer's end of one relaying server's link, as raw as a test needs it."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    async def handed(self) -> tuple[int, int]:
        """The next hand-off (waited for as the socket turns readable): its number and the
        descriptor."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(self.conn.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, 5)
        finally:
            loop.remove_reader(self.conn.fileno())
        data, fds, _flags, _addr = socket.recv_fds(self.conn, 70000, 2)
        assert data[:1] == b"c" and len(fds) == 1, (data, fds)
        return struct.unpack_from("!dI", data, 1)[1], fds[0]

    async def closed_by_them(self) -> None:
        """Read to the relaying server's end of its sends (its SHUT_WR)."""
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.sock_recv(self.conn, 64), 5) == b""

    def say(self, what: bytes, number: int) -> None:
        self.conn.send(what + struct.pack("!I", number))


@contextlib.asynccontextmanager
async def _linked(
    tmp_path: Path, **limits: Any
) -> AsyncIterator[tuple[Handoff, Any, _Writer, int]]:
    """A relaying server (its hand-off, its DrainingServer, its port) linked to a raw
    writer that gave it 8 credits."""
    relaying = Handoff(str(tmp_path), "writ test", {})
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listening:
        listening.setblocking(False)
        listening.bind(str(tmp_path / SOCKET))
        listening.listen()
        async with _serving(_App(relaying), **limits) as server:
            connecting = asyncio.ensure_future(relaying.connect())
            conn, _ = await asyncio.wait_for(loop.sock_accept(listening), 5)
            with conn:
                await asyncio.wait_for(loop.sock_recv(conn, 128), 5)  # its digest
                await loop.sock_sendall(conn, b"+" + struct.pack("!I", 8))
                await connecting
                assert relaying.linked() and relaying.credit == 8
                port = server.servers[0].sockets[0].getsockname()[1]
                try:
                    yield relaying, server, _Writer(conn), port
                finally:
                    relaying.disconnect()


async def _ask(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    return reader, writer


def _served_here(answer: bytes) -> bool:
    """The relaying server's own answer (its app's 200 "ok"), and nothing else."""
    return answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n2\r\nok\r\n0\r\n\r\n")


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the client is sent, to the connection's close."""
    return await asyncio.wait_for(reader.read(), 5)


async def test_a_connection_the_writer_dies_holding_unread_is_served_where_it_was_accepted(
    tmp_path: Path,
) -> None:
    """The writer goes (its end closes) with a hand-off it never said ``a`` of: the
    relaying server answers that client itself. Before, it had let its copy go once sent,
    and the client's connection closed unanswered with the writer."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        reader, client = await _ask(port)
        _number, fd = await writer.handed()
        os.close(fd)
        writer.conn.close()  # as a SIGKILL does
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer
        assert relaying.counts["handed"] == relaying.counts["returned"] == 1
        assert not relaying.linked()


async def test_a_connection_the_writer_took_is_answered_by_the_writer_alone(
    tmp_path: Path,
) -> None:
    """Said ``a``, the connection is the writer's: the relaying server lets its copy go
    (the client sees the writer's answer, then the close once the writer closes its own) —
    even if the link then ends, and even after the head's deadline here has passed."""
    async with _linked(tmp_path, header_timeout=0.3) as (relaying, _server, writer, port):
        reader, client = await _ask(port)
        number, fd = await writer.handed()
        await asyncio.sleep(0.6)  # past the relaying server's head deadline: parked, none runs
        writer.say(b"a", number)
        await _until(lambda: not relaying._parked, "the 'a' was not heard")
        writer.conn.close()
        with socket.socket(fileno=fd) as theirs:
            theirs.setblocking(True)
            theirs.sendall(WRITERS)
        answer = await _answer(reader)
        client.close()
        assert answer == WRITERS, answer  # no 408 before it, no 200 of the relaying server's
        assert relaying.counts["returned"] == 0


async def test_a_connection_the_writer_says_n_of_is_served_here(tmp_path: Path) -> None:
    """``n`` (the writer could not take it: out of descriptors): served where it was
    accepted, and the link stays."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        reader, client = await _ask(port)
        number, fd = await writer.handed()
        os.close(fd)
        writer.say(b"n", number)
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer
        assert relaying.counts["returned"] == 1 and relaying.linked()


async def test_what_the_writer_said_before_it_went_is_read_before_the_rest_is_served(
    tmp_path: Path,
) -> None:
    """The writer said ``a`` of one hand-off and went with a second unread on its socket
    (the relaying server's next read fails, ECONNRESET, with the ``a`` still queued behind
    the error): the first is the writer's alone, the second served here. Reading the
    error as the end would serve the first twice."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        reader1, client1 = await _ask(port)
        first, fd1 = await writer.handed()
        reader2, client2 = await _ask(port)
        await _until(lambda: relaying.counts["handed"] == 2, "the second was not handed")
        writer.say(b"a", first)  # and, in the same turn, gone with the second unread:
        writer.conn.close()  # the relaying server's next read fails, the "a" behind it
        with socket.socket(fileno=fd1) as theirs:
            theirs.setblocking(True)
            theirs.sendall(WRITERS)
        assert await _answer(reader1) == WRITERS
        second = await _answer(reader2)
        assert _served_here(second), second
        client1.close()
        client2.close()
        assert relaying.counts["returned"] == 1


async def test_a_link_the_relaying_server_lets_go_is_read_to_the_writers_close(
    tmp_path: Path,
) -> None:
    """A relaying server that ends its link itself with a hand-off unsettled stops its
    sends and reads on: the writer reads what was sent (here it takes nothing) and closes,
    and the connection is served where it was accepted."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        reader, client = await _ask(port)
        _number, fd = await writer.handed()
        relaying.disconnect()
        await writer.closed_by_them()  # SHUT_WR: all it sent is read
        os.close(fd)
        writer.conn.close()
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer
        assert relaying.counts["returned"] == 1


async def test_a_writer_that_never_closes_a_link_let_go_keeps_what_it_may_take(
    tmp_path: Path,
) -> None:
    """If the writer does not close within the wait, the relaying server cannot tell what
    it may still take: it lets its copies go rather than serve one the writer might."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        relaying.leave_wait_s = 0.2
        reader, client = await _ask(port)
        _number, fd = await writer.handed()
        relaying.disconnect()
        await _until(lambda: not relaying._leaving, "the link let go was never closed")
        with socket.socket(fileno=fd) as theirs:
            theirs.setblocking(True)
            theirs.sendall(WRITERS)
        assert await _answer(reader) == WRITERS
        client.close()
        assert relaying.counts["returned"] == 0


async def test_hand_offs_queued_behind_a_reset_are_taken_by_the_writer(tmp_path: Path) -> None:
    """A relaying server that goes (SIGKILL, or its process ends) with something the writer
    said unread resets its link: the writer's next read fails (ECONNRESET) with the
    hand-offs it sent before still queued behind the error. Its copies went with it, so the
    writer's are those connections' last: it takes them. Reading the error as the end of
    the link closed them unanswered."""
    from tests.test_handoff import LEASE, _raw_peer, _room, _tcp

    async with _room(tmp_path, [0], servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer, 90)
        with _tcp() as (one, _client1), _tcp() as (two, _client2):
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [one.fileno()])
            await _until(lambda: adopted, "the first was not adopted")  # its "a", unread
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 2), LEASE], [two.fileno()])
            peer.close()  # as its process ends: the "a" unread, the second queued
            await _until(lambda: not writer._peers, "the link did not end")
            assert len(adopted) == 2, "a hand-off queued behind the reset was dropped"


async def test_an_a_that_could_not_be_said_is_no_hand_off_taken(tmp_path: Path) -> None:
    """The writer's ``a`` fails for want of memory (ENOBUFS; the relaying server still has
    its end open): not said, the relaying server keeps its copy parked and serves it once
    the link ends, so the writer must not serve it too. Only a relaying end closed whole
    (EPIPE, ECONNRESET) lets the writer take what it could not say ``a`` of."""
    import errno

    from tests.test_handoff import LEASE, _raw_peer, _room, _tcp

    class _NoRoom:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def send(self, said: bytes) -> int:
            if said[:1] == b"a":
                raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
            return self.sock.send(said)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sock, name)

    async with _room(tmp_path, [0], servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer, 90)
        (theirs,) = writer._peers.values()
        theirs.conn = _NoRoom(theirs.conn)  # type: ignore[assignment]
        with peer, _tcp() as (accepted, _client):
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [accepted.fileno()])
            await _until(lambda: not writer._peers, "the link was not ended")
            assert not adopted, "taken without an 'a' said: served by both servers"


async def test_a_connection_parked_as_its_server_shuts_down_is_settled_first(
    tmp_path: Path,
) -> None:
    """The relaying server begins its graceful shutdown with a hand-off unsettled, then the
    writer goes without having taken it: the connection is answered where it was accepted
    (and closed after). Closed as an idle one at the shutdown, it was lost with the writer:
    its client had sent its request and got nothing."""
    async with _linked(tmp_path) as (_relaying, server, writer, port):
        reader, client = await _ask(port)
        _number, fd = await writer.handed()
        os.close(fd)
        stopping = asyncio.ensure_future(server.shutdown())
        await _until(lambda: not server.servers[0].is_serving(), "no shutdown began")
        writer.conn.close()  # as a SIGKILL does
        answer = await _answer(reader)
        await asyncio.wait_for(stopping, 5)
        client.close()
        assert _served_here(answer), answer


async def test_a_connection_parked_as_its_server_shuts_down_is_the_writers_once_taken(
    tmp_path: Path,
) -> None:
    """And one the writer takes meanwhile is the writer's alone: the shutdown lets the
    relaying server's copy go, not answered there."""
    async with _linked(tmp_path) as (_relaying, server, writer, port):
        reader, client = await _ask(port)
        number, fd = await writer.handed()
        stopping = asyncio.ensure_future(server.shutdown())
        await _until(lambda: not server.servers[0].is_serving(), "no shutdown began")
        writer.say(b"a", number)
        await asyncio.wait_for(stopping, 5)
        with socket.socket(fileno=fd) as theirs:
            theirs.setblocking(True)
            theirs.sendall(WRITERS)
        assert await _answer(reader) == WRITERS
        client.close()


async def test_a_writer_that_settles_nothing_holds_no_more_than_a_share_parked(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A writer that gives credits without end and never says ``a`` or ``n`` (one stuck,
    or a same-user process posing as one) keeps what it is handed parked in the relaying
    server: at most :data:`CREDIT` of them; the rest are served where they were accepted.
    Unbounded, it held every one of the relaying server's connection slots (a parked one is
    never idle, so never closed for room), where before it held none of them."""
    from writ.api import handoff as handoff_module

    monkeypatch.setattr(handoff_module, "CREDIT", 2)
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        held = [await _ask(port) for _ in range(2)]
        for _ in range(2):
            _number, fd = await writer.handed()
            os.close(fd)
        reader, client = await _ask(port)
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer
        assert len(relaying._parked) == 2
        for _reader, held_client in held:
            held_client.close()


class _Clock:
    """``time`` as writ.net.placed reads it, moved on by hand (``ahead``)."""

    ahead = 0.0

    @classmethod
    def monotonic(cls) -> float:
        return time.monotonic() + cls.ahead


async def test_the_time_a_connection_waits_parked_is_not_its_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served here after all, a connection's head has what its deadline had left when it
    was handed: the wait for the writer's word was this server's, not the client's (it had
    none left once parked longer than the deadline, and was answered 408 before the rest
    of its head could come)."""
    monkeypatch.setattr("writ.net.placed.time", _Clock)
    async with _linked(tmp_path, header_timeout=0.5) as (relaying, _server, writer, port):
        reader, client = await asyncio.open_connection("127.0.0.1", port)
        client.write(REQUEST[:10])  # its target: enough to hand it over
        await client.drain()
        number, fd = await writer.handed()
        os.close(fd)
        monkeypatch.setattr(_Clock, "ahead", 0.8)  # parked past the deadline, no fault of its
        writer.say(b"n", number)
        await _until(lambda: relaying.counts["returned"] == 1, "the 'n' was not heard")
        client.write(REQUEST[10:])  # the rest of its head, at once
        await client.drain()
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer


async def test_what_a_writer_says_of_no_hand_off_is_nothing_and_a_garbled_word_ends_the_link(
    tmp_path: Path,
) -> None:
    """An ``a`` of a number never handed (or settled already) settles nothing: the
    connection stays parked. A word no writer says (an ``a`` cut short) ends the link: the
    relaying server stops its sends and, once the writer has read them and closed, serves
    what it never took where it was accepted."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        reader, client = await _ask(port)
        number, fd = await writer.handed()
        os.close(fd)
        writer.say(b"a", number + 1000)  # no hand-off of this link
        writer.say(b"n", number + 1000)
        writer.conn.send(b"a\x00")  # garbled: not a word of the hand-off
        await writer.closed_by_them()  # the relaying server let the link go
        assert relaying._parked == {} and relaying._leaving  # (still its to settle)
        writer.conn.close()
        answer = await _answer(reader)
        client.close()
        assert _served_here(answer), answer
        assert relaying.counts["handed"] == relaying.counts["returned"] == 1
        assert not relaying.linked()


async def test_hand_offs_a_silent_writer_leaves_unsettled_say_it_is_stalled(
    tmp_path: Path,
) -> None:
    """A writer that takes hand-offs and says nothing of them (a stopped process) is
    ``stalled`` once the oldest has waited ``settle_s`` with no word from it; a word from it
    (an ``a``) makes it not."""
    async with _linked(tmp_path) as (relaying, _server, writer, port):
        relaying.settle_s = 0.2
        assert not relaying.stalled()  # nothing handed
        reader, client = await _ask(port)
        number, fd = await writer.handed()
        assert not relaying.stalled()
        await _until(relaying.stalled, "a silent writer was never found stalled")
        writer.say(b"a", number)
        await _until(lambda: not relaying._parked, "the writer's a was never read")
        assert not relaying.stalled()
        with socket.socket(fileno=fd) as theirs:
            theirs.setblocking(True)
            theirs.sendall(WRITERS)
        assert await _answer(reader) == WRITERS
        client.close()
