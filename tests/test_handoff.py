"""The connection hand-off (writ.api.handoff): a server relaying to the host's writer hands
it each new connection, placed by its first request. In-process over a real Unix socket and
real TCP connections, then real ``writ serve`` processes on a real PostgreSQL database (the
history checker over handed load is in tests/test_multiserver.py, ``handed``; a writer
that dies, in tests/test_relay.py)."""

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

import httpx
import pytest

from tests.server_fixtures import (
    ADMIN_TOKEN,
    add_principals,
    verify,
    writ_servers,
    writ_workers,
)
from tests.stores_fixtures import Backend
from tests.test_relay import _acquire, _log, _metric, _roles, _rows_written
from writ.api import handoff as handoff_module
from writ.api.handoff import CREDIT, MAX_FIRST, SOCKET, Handoff, away

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LEASE = b"POST /v1/leases HTTP/1.1\r\nhost: x\r\n"


@pytest.mark.parametrize(
    ("first", "placed"),
    [
        (LEASE, True),
        (b"GET /v1/who?resource=db HTTP/1.1\r\n", True),
        (b"GET /metrics HTTP/1.1\r\n", False),  # each server's own
        (b"GET /readyz?x=1 HTTP/1.1\r\n", False),
        (b"GET /livez HTTP/1.1\r\n", False),
        (b"GET /livez#x HTTP/1.1\r\n", False),  # a fragment, as the app reads the path
        (b"GET /metricsx HTTP/1.1\r\n", True),
        (b"GET /%6Detrics HTTP/1.1\r\n", False),  # percent-encoded, as the app decodes it
        (b"GET /%2Fmetrics HTTP/1.1\r\n", True),  # '//metrics': no probe
        (b"GET /metr", None),  # not read far enough to say
        (b"POS", None),
        (b"", None),
        (b"GET /" + b"a" * 80, True),  # longer than any ops route
        (b"\x16\x03\x01\x02\x00" + b"\x01" * 40, False),  # TLS, no HTTP: answered here
        (b"GARBAGE\r\n", False),
        (b"GET http://writ.example:7411/livez HTTP/1.1\r\n", False),  # absolute form
        (b"GET HTTPS://writ.example/metrics?x HTTP/1.1\r\n", False),
        (b"GET http://writ.example/v1/who HTTP/1.1\r\n", True),
        (b"GET http://writ.example HTTP/1.1\r\n", True),  # the root
        (b"GET http://writ.exa", None),
    ],
)
def test_a_connection_is_placed_by_its_first_request(first: bytes, placed: bool | None) -> None:
    assert away(first) is placed


class _Transport:
    """What the listener's protocol gives :meth:`Handoff.offer`: the accepted socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


@contextlib.asynccontextmanager
async def _pair(
    tmp_path: Path, writer_settings: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Handoff, Handoff, list[tuple[socket.socket, bytes]]]]:
    """A writer's hand-off listening in ``tmp_path`` and a relaying server's, connected;
    what the writer adopted (each socket and the bytes read from it before)."""
    adopted: list[tuple[socket.socket, bytes]] = []
    writer = Handoff(str(tmp_path), "writ test", writer_settings or {"a": 1})
    writer.attach(lambda s, first, late: adopted.append((s, first)), lambda: 0, 4096, {})
    relaying = Handoff(str(tmp_path), "writ test", {"a": 1})
    relaying.attach(lambda s, first, late: None, lambda: 0, 100, {})
    await writer.listen()
    try:
        await relaying.connect()
        yield writer, relaying, adopted
    finally:
        relaying.disconnect()
        writer.stop_listening()
        for sock, _ in adopted:
            sock.close()


@contextlib.contextmanager
def _tcp() -> Any:
    """A connected TCP pair: the server's end (what a listener accepted), the client's."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        accepted, _ = listening.accept()
    with client, accepted:
        yield accepted, client


async def _until(check: Any, what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_handed_connection_is_the_writers_with_what_was_read(tmp_path: Path) -> None:
    """The writer serves the very connection (its client's bytes reach the writer's socket
    and its answers reach the client) and is given first what the relaying server read."""
    async with _pair(tmp_path) as (writer, relaying, adopted):
        with _tcp() as (accepted, client):
            assert relaying.offer(_Transport(accepted), LEASE) is True
            accepted.close()  # the relaying server lets its descriptor go
            await _until(lambda: adopted, "the writer adopted nothing")
            ((sock, first),) = adopted
            assert first == LEASE
            assert sock.getpeername() == client.getsockname()
            client.sendall(b"more")
            sock.setblocking(True)
            assert sock.recv(16) == b"more"
            sock.sendall(b"answer")
            assert client.recv(16) == b"answer"
        assert relaying.counts["handed"] == writer.counts["adopted"] == 1


async def test_an_ops_route_an_unready_or_a_large_request_is_kept(tmp_path: Path) -> None:
    """A first read larger than a hand-off carries (a body sent with its head) is served
    where it was read: nothing of it is lost."""
    async with _pair(tmp_path) as (_writer, relaying, adopted):
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), b"GET /metrics HTTP/1.1\r\n") is False
            assert relaying.offer(_Transport(accepted), b"POST /v1/lea") is None
            large = LEASE + b"x" * MAX_FIRST
            assert relaying.offer(_Transport(accepted), large) is False
        await asyncio.sleep(0.05)
        assert not adopted and relaying.counts["handed"] == 0


async def test_a_writer_of_other_settings_is_handed_nothing(tmp_path: Path) -> None:
    """Another store, policy, listener or environment: the writer says ``x`` and the
    relaying server keeps its connections (relaying their lease writes), asking again only
    on its next link to a writer."""
    async with _pair(tmp_path, {"a": 2}) as (_writer, relaying, adopted):
        assert relaying.refused and relaying.linked()
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE) is False
        relaying.disconnect()
        assert not relaying.linked()  # the next link asks again
    assert not adopted


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _heard(sock: socket.socket) -> bytes:
    """What ``sock`` (non-blocking) reads next, without blocking the writer's loop."""
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 8), 5)


async def _raw_peer(tmp_path: Path, writer: Handoff, credits: int | None = None) -> socket.socket:
    """A process linked to the writer's hand-off socket as a relaying server is, given
    ``credits`` (some, if None)."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.setblocking(False)
    peer.connect(str(tmp_path / SOCKET))
    peer.sendall(writer.digest.encode())
    said = await _heard(peer)
    assert said[:1] == b"+"
    given = struct.unpack("!I", said[1:])[0]
    assert given == credits if credits is not None else 0 < given <= CREDIT
    return peer


@pytest.mark.parametrize("what", ["pipe", "unix", "listening", "two", "none"])
async def test_the_writer_serves_only_one_connected_tcp_socket(tmp_path: Path, what: str) -> None:
    """A same-user process that sends anything but one connected TCP socket (a pipe, a Unix
    socket, a listening socket, two descriptors in one message, a message without one) gets
    nothing served, its descriptors closed (none kept open in the writer), and its hand-off
    socket closed."""
    async with _pair(tmp_path) as (writer, _relaying, adopted):
        peer = await _raw_peer(tmp_path, writer)
        with contextlib.ExitStack() as stack:
            if what == "pipe":
                r, w = os.pipe()
                stack.callback(os.close, r)
                stack.callback(os.close, w)
                fds = [r]
            elif what == "unix":
                a, b = socket.socketpair()
                stack.enter_context(a)
                stack.enter_context(b)
                fds = [a.fileno()]
            elif what == "listening":
                fds = [stack.enter_context(socket.create_server(("127.0.0.1", 0))).fileno()]
            elif what == "two":
                accepted, _client = stack.enter_context(_tcp())
                fds = [accepted.fileno(), accepted.fileno()]
            else:
                fds = []
            before = _open_fds()
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], fds)
            assert await _heard(peer) == b""  # the writer closed it
            assert _open_fds() <= before  # what it was sent, closed
        peer.close()
        assert not adopted
        assert writer.counts["refused"] == 1
        assert len(writer._peers) == 1  # the relaying server's own, still heard


@pytest.mark.parametrize("late", [float("nan"), float("inf"), -1.0, 1e300])
async def test_a_wait_so_far_that_is_no_number_of_seconds_counts_as_none(
    tmp_path: Path, late: float
) -> None:
    """A peer's message says how long the connection was open before (a double): one that
    is not a time a connection waits (not a number, infinite, negative, past an hour) takes
    nothing off the head's deadline, and the connection is served."""
    async with _pair(tmp_path) as (writer, _relaying, _adopted):
        got: list[float] = []
        writer.attach(lambda s, first, at: (got.append(at), s.close()), lambda: 0, 4096, {})
        peer = await _raw_peer(tmp_path, writer)
        with peer, _tcp() as (accepted, _client):
            socket.send_fds(peer, [b"c", struct.pack("!dI", late, 1), LEASE], [accepted.fileno()])
            await _until(lambda: got, "the connection was not served")
        assert got == [0.0]


async def test_a_connection_its_client_reset_does_not_end_the_hand_off(tmp_path: Path) -> None:
    """A client that resets its connection once handed (before the writer reads it) costs
    nothing else: its descriptor is closed, and the hand-off socket, with the connections
    queued behind it, stays (before, the writer took it for a relaying server's fault and
    closed the link: the connection queued behind it was closed unanswered)."""
    async with _pair(tmp_path) as (writer, relaying, adopted):
        with _tcp() as (gone, gone_client), _tcp() as (accepted, client):
            assert relaying.offer(_Transport(gone), LEASE) is True
            gone_client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone_client.close()  # a reset
            assert relaying.offer(_Transport(accepted), LEASE) is True
            gone.close()
            accepted.close()
            await _until(lambda: adopted, "the connection behind the reset one was lost")
            ((sock, first),) = adopted
            assert sock.getpeername() == client.getsockname() and first == LEASE
        assert relaying.linked() and relaying._taken and writer.counts["refused"] == 0


async def test_a_peer_that_says_no_hello_is_closed(tmp_path: Path) -> None:
    """A same-user process that connects and says nothing holds none of the writer's
    places for relaying servers for long."""
    async with _pair(tmp_path) as (writer, _relaying, _adopted):
        writer.hello_wait_s = 0.05
        writer.stop_listening()  # listen again: the wait is read as each peer connects
        await writer.listen()
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with peer:
            peer.setblocking(False)
            peer.connect(str(tmp_path / SOCKET))
            assert await _heard(peer) == b""  # closed, unheard
        assert not writer._peers


def test_the_digest_is_of_what_shapes_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that differ in their log settings or environment still hand to each other;
    in the store, policy, version, listener or app settings, not."""
    from writ.api.handoff import digest

    base = digest("writ 1 store policy", {"max_waits": 8, "listener": {"limits": "L"}})
    monkeypatch.setenv("WRIT_LOG_LEVEL", "debug")
    monkeypatch.setenv("WRIT_SHUTDOWN_TIMEOUT", "30")
    assert digest("writ 1 store policy", {"max_waits": 8, "listener": {"limits": "L"}}) == base
    assert digest("writ 1 store other", {"max_waits": 8, "listener": {"limits": "L"}}) != base
    assert digest("writ 1 store policy", {"max_waits": 9, "listener": {"limits": "L"}}) != base
    assert digest("writ 1 store policy", {"max_waits": 8, "listener": {"limits": "M"}}) != base


async def test_a_descriptor_before_the_hello_is_closed(tmp_path: Path) -> None:
    async with _pair(tmp_path) as (writer, _relaying, adopted):
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with peer, _tcp() as (accepted, client):
            peer.setblocking(False)
            peer.connect(str(tmp_path / SOCKET))
            socket.send_fds(peer, [writer.digest.encode()], [accepted.fileno()])
            assert await _heard(peer) == b"x"  # no writ server sends one with its hello
            accepted.close()
            client.setblocking(False)
            assert await _heard(client) == b""  # the writer kept no copy: it closed
        assert not adopted
        assert writer.counts["refused"] == 1  # as docs/security.md says


async def test_a_busy_writer_says_so_and_is_handed_nothing_until_it_has_room(
    tmp_path: Path,
) -> None:
    """The writer samples its own CPU: past BUSY_OFF of a core it says ``-`` and the
    relaying server keeps its connections; under BUSY_ON, ``+`` again."""
    async with _pair(tmp_path) as (writer, relaying, adopted):
        assert writer.has_room(0.79) and not writer.has_room(0.81)
        writer.say(False)
        await _until(lambda: not relaying._taken, "the relaying server did not hear '-'")
        assert not writer.has_room(0.7) and writer.has_room(0.59)  # hysteresis
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE) is False
            writer.say(True)
            await _until(lambda: relaying._taken, "the relaying server did not hear '+'")
            assert relaying.offer(_Transport(accepted), LEASE) is True
        await _until(lambda: adopted, "the writer adopted nothing")


@contextlib.asynccontextmanager
async def _room(
    tmp_path: Path, held: list[int], servers: int = 1
) -> AsyncIterator[tuple[Handoff, list[Handoff], list[tuple[socket.socket, bytes]]]]:
    """A writer holding ``held[0]`` connections of at most 100 (each one it adopts adds
    one), no CPU sample running, and ``servers`` relaying servers linked to it in turn."""
    adopted: list[tuple[socket.socket, bytes]] = []

    def adopt(sock: socket.socket, first: bytes, late: float) -> None:
        adopted.append((sock, first))
        held[0] += 1

    writer = Handoff(str(tmp_path), "writ test", {"a": 1})
    writer.attach(adopt, lambda: held[0], 100, {})
    relaying = [Handoff(str(tmp_path), "writ test", {"a": 1}) for _ in range(servers)]
    await writer.listen()
    assert writer._sampler is not None
    writer._sampler.cancel()  # the test says when room is counted again
    try:
        for r in relaying:
            r.attach(lambda s, first, late: None, lambda: 0, 100, {})
            await r.connect()
        yield writer, relaying, adopted
    finally:
        for r in relaying:
            r.disconnect()
        writer.stop_listening()
        for sock, _ in adopted:
            sock.close()


async def test_servers_handing_at_the_same_moment_never_overfill_the_writer(
    tmp_path: Path,
) -> None:
    """Two relaying servers offering connections at once, before the writer has read any,
    hand it no more than ROOM of its limit allows (90 of 100, of which it holds 86): each
    spends credits the writer gave out of its room, and keeps the rest of its connections
    (before, the writer said ``-`` only as the connection that filled it was adopted, and
    those in flight by then overfilled its listener, which closed idle ones to make room)."""
    async with _room(tmp_path, [86], servers=2) as (writer, (one, two), adopted):
        assert one.credit == 4 and two.credit == 0 and two._taken  # what was left for it
        with contextlib.ExitStack() as stack:
            pairs = [stack.enter_context(_tcp()) for _ in range(6)]
            placed = [r.offer(_Transport(a), LEASE) for r in (one, two) for a, _ in pairs[:3]]
            assert placed == [True, True, True, False, False, False]
            assert one.offer(_Transport(pairs[3][0]), LEASE) is True
            assert one.offer(_Transport(pairs[4][0]), LEASE) is False  # no credit left
            await _until(lambda: len(adopted) == 4, "the writer did not adopt the four")
        assert writer.free() == 0 and one.credit == two.credit == 0
        assert writer.counts["refused"] == 0


async def test_credits_come_again_as_connections_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that spent half its credits is given more with the adoption, out of the room
    the writer has left; one whose credits ran out at a full writer is given more at the
    next sample, once connections closed there."""
    monkeypatch.setattr(handoff_module, "CREDIT", 4)
    held = [0]
    async with _room(tmp_path, held) as (writer, (relaying,), adopted):
        assert relaying.credit == 4
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                accepted, _client = stack.enter_context(_tcp())
                assert relaying.offer(_Transport(accepted), LEASE) is True
            await _until(lambda: len(adopted) == 2, "the writer did not adopt two")
            await _until(lambda: relaying.credit == 4, "spent half, given none")
            assert writer.free() == 90 - 2 - 4
            held[0] = 86  # its own listener took connections meanwhile: none left to give
            placed = []
            for _ in range(5):
                accepted, _client = stack.enter_context(_tcp())
                placed.append(relaying.offer(_Transport(accepted), LEASE))
                await _until(lambda: len(adopted) == sum(placed) + 2, "not adopted")
            assert placed == [True, True, True, True, False]  # what it was given, no more
            assert held[0] == 90 and relaying.credit == 0 and writer.free() == 0
            held[0] = 50  # closed meanwhile
            writer.sample_s, writer.cpu = 0.01, lambda: 0.0  # (idle: the test's CPU aside)
            writer._sampler = asyncio.ensure_future(writer._sample())
            await _until(lambda: relaying.credit == 4, "no credits after connections closed")


async def test_credits_the_relaying_server_was_never_told_of_are_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A top-up that cannot be said (the relaying server reads no more) is not counted as
    given: counted, it would hold the writer's room for good."""
    monkeypatch.setattr(handoff_module, "CREDIT", 2)
    async with _room(tmp_path, [0], servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer, 2)
        with peer, _tcp() as (accepted, _client):
            peer.shutdown(socket.SHUT_RD)  # what the writer says next cannot reach it
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [accepted.fileno()])
            await _until(lambda: adopted, "the writer adopted nothing")
            (mine,) = writer._peers.values()
            assert mine.credit == 1  # the one left, not the top-up it could not say
            assert writer.free() == 90 - 1 - 1


async def test_a_server_linked_later_is_given_its_share_of_the_room(tmp_path: Path) -> None:
    """The first server to link is given all the writer's room (90 of 100); once a second
    links, the writer asks the first for what it holds past an even share, at its next
    sample, and gives it to the second: an idle server does not keep the room from the
    others (what it handed meanwhile is counted first: the two ends stay exact)."""
    async with _room(tmp_path, [0], servers=2) as (writer, (one, two), adopted):
        assert one.credit == 90 and two.credit == 0 and writer.share() == 45
        with _tcp() as (accepted, _client):
            assert one.offer(_Transport(accepted), LEASE) is True  # in flight as it is asked
        writer.sample_s, writer.cpu = 0.01, lambda: 0.0  # (idle: the test's CPU aside)
        writer._sampler = asyncio.ensure_future(writer._sample())
        # the first keeps 45 and gives back 44 (it handed one); the second is given what is
        # left of the room, the handed connection held: 90 - 1 - 45
        await _until(lambda: two.credit == 44, "the second server was given no share")
        assert one.credit == 45 and len(adopted) == 1
        assert sorted(p.credit for p in writer._peers.values()) == [44, 45]
        assert writer.free() == 0


async def test_a_server_that_gives_back_what_it_was_not_given_is_heard_no_more(
    tmp_path: Path,
) -> None:
    async with _room(tmp_path, [0], servers=0) as (writer, _, _adopted):
        peer = await _raw_peer(tmp_path, writer, 90)
        with peer:
            (theirs,) = writer._peers.values()
            theirs.asked = True
            peer.send(b"r" + struct.pack("!I", 91))
            assert await _heard(peer) == b""  # closed
        assert writer.counts["refused"] == 1 and not writer._peers


async def test_a_connection_dropped_for_want_of_descriptors_ends_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer out of file descriptors gets a hand-off whose descriptor the kernel dropped
    (``MSG_CTRUNC``, none received): that connection is lost (counted, logged) but it is
    no fault of the relaying server's, whose link — and what is queued behind — stays."""
    real = socket.recv_fds

    def full(sock: socket.socket, size: int, most: int) -> Any:
        data, fds, flags, addr = real(sock, size, most)
        if fds and data[:1] == b"c":
            for fd in fds:
                os.close(fd)
            return data, [], flags | socket.MSG_CTRUNC, addr
        return data, fds, flags, addr

    async with _room(tmp_path, [0], servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer, 90)
        with peer, _tcp() as (accepted, _client):
            monkeypatch.setattr(socket, "recv_fds", full)
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [accepted.fileno()])
            await _until(lambda: writer.counts["refused"] == 1, "the loss was not counted")
            monkeypatch.setattr(socket, "recv_fds", real)
            socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [accepted.fileno()])
            await _until(lambda: adopted, "the link did not outlive the loss")
            (theirs,) = writer._peers.values()
            assert theirs.credit == 88  # both spent


async def test_the_writer_takes_a_burst_of_hand_offs_in_one_turn(tmp_path: Path) -> None:
    """Twenty connections handed at once are adopted in one turn of the writer's loop, not
    one a turn (each turn also serves every connection's reads and writes)."""
    async with _room(tmp_path, [0], servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer, 90)
        (theirs,) = writer._peers.values()
        asyncio.get_running_loop().remove_reader(theirs.fileno)  # the test turns the loop
        with peer, contextlib.ExitStack() as stack:
            for _ in range(20):
                accepted, _client = stack.enter_context(_tcp())
                socket.send_fds(peer, [b"c", struct.pack("!dI", 0, 1), LEASE], [accepted.fileno()])
            theirs.heard()
            assert len(adopted) == 20


async def test_a_server_that_hands_past_its_credits_is_heard_no_more(tmp_path: Path) -> None:
    async with _room(tmp_path, [88], servers=0) as (writer, _, adopted):  # room for two
        peer = await _raw_peer(tmp_path, writer, 2)
        with peer, _tcp() as (accepted, _client):
            for n in (1, 2, 3):
                socket.send_fds(peer, [b"c", struct.pack("!dI", 0, n), LEASE], [accepted.fileno()])
            assert await _heard(peer) == b"a" + struct.pack("!I", 1)  # taken
            assert await _heard(peer) == b"a" + struct.pack("!I", 2)
            assert await _heard(peer) == b""  # closed after the third, not taken
            await _until(lambda: writer.counts["refused"] == 1, "the third was not refused")
        assert len(adopted) == 2


async def test_the_writer_samples_its_cpu(tmp_path: Path) -> None:
    """Measured, not assumed: a writer whose CPU clock runs as fast as the wall clock says
    ``-``, and ``+`` once it stops."""
    async with _pair(tmp_path) as (writer, relaying, _adopted):
        writer.sample_s = 0.02
        started = time.monotonic()
        busy = [True]
        writer.cpu = lambda: time.monotonic() - started if busy[0] else 0.0
        writer.stop_listening()
        relaying.disconnect()
        await writer.listen()
        await relaying.connect()
        await _until(lambda: not relaying._taken, "a busy writer still took connections")
        busy[0] = False
        writer.cpu = lambda: 0.0
        await _until(lambda: relaying._taken, "an idle writer took none")


async def test_a_writer_that_stops_listening_is_handed_nothing(tmp_path: Path) -> None:
    """The relaying server sees the writer go (and tells its relay, which then relays no
    call it would never answer); one it lets go itself is no news of the writer."""
    async with _pair(tmp_path) as (writer, relaying, _adopted):
        gone: list[bool] = []
        relaying.on_gone = lambda: gone.append(True)
        assert relaying.linked() and relaying._taken
        writer.stop_listening()
        await _until(lambda: not relaying.linked(), "the relaying server did not see it go")
        assert gone == [True]
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE) is False
        assert not (tmp_path / SOCKET).exists()
        await writer.listen()
        await relaying.connect()
        relaying.disconnect()
        assert gone == [True]


async def test_a_writer_that_stops_listening_serves_what_it_was_handed_already(
    tmp_path: Path,
) -> None:
    """A connection handed over but not yet read when the writer stops listening (its
    graceful shutdown begins) is served, not closed unanswered with the hand-off socket;
    one offered after that is kept by the relaying server."""
    async with _pair(tmp_path) as (writer, relaying, adopted):
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE) is True
        writer.stop_listening()  # before the writer's loop read the hand-off
        assert [first for _, first in adopted] == [LEASE]
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE) is False
        assert writer.counts["adopted"] == 1


class _App:
    """An app ``writ serve`` would run, as DrainingServer reads it: its draining event and
    its relay's hand-off; it answers 200 to anything."""

    def __init__(self, handoff: Handoff) -> None:
        self.draining = asyncio.Event()
        self.relay = type("Relay", (), {"handoff": handoff})()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _serving(
    app: _App, sock: socket.socket | None = None, **limits: Any
) -> AsyncIterator[Any]:
    """A started :class:`DrainingServer` of ``app`` within ``limits`` (on ``sock``, if
    given), shut down after unless the test did."""
    import uvicorn

    from writ.api.lifecycle import DrainingServer
    from writ.net.limits import Limits

    config = uvicorn.Config(
        app,
        port=0,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=20,
        **Limits(**limits).uvicorn_options(),
    )
    config.load()
    server = DrainingServer(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock] if sock is not None else None)
    try:
        yield server
    finally:
        if any(listener.is_serving() for listener in server.servers):
            await server.shutdown()


async def test_a_connection_handed_as_the_writer_shuts_down_is_answered_and_closed(
    tmp_path: Path,
) -> None:
    """Handed (unread) as the writer's graceful shutdown begins, a keep-alive connection is
    one of those uvicorn shuts down: answered and closed, so the drain does not wait on it (it did, until its keep-alive timeout or the shutdown bound,
    when it was adopted after uvicorn had shut its connections down)."""
    writer = Handoff(str(tmp_path), "writ test", {})
    relaying = Handoff(str(tmp_path), "writ test", {})
    async with _serving(_App(writer), keepalive_timeout=30.0) as server:
        relaying.attach(lambda s, first, late: None, lambda: 0, 100, {})
        relaying.digest = writer.digest  # the same listener's
        await writer.listen()
        await relaying.connect()
        with _tcp() as (accepted, client):
            request = b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n"
            assert relaying.offer(_Transport(accepted), request) is True
            accepted.close()
            started = time.monotonic()
            await asyncio.wait_for(server.shutdown(), 25)
            took = time.monotonic() - started
            assert took < 5, f"the drain waited {took:.1f}s on a handed connection"
            client.settimeout(5)
            answer = b"".join(iter(lambda: client.recv(4096), b""))  # to its close
            assert answer.startswith(b"HTTP/1.1 200"), answer
        relaying.disconnect()
        writer.stop_listening()


async def test_a_handed_connection_keeps_what_is_left_of_its_heads_deadline(
    tmp_path: Path,
) -> None:
    """The time a connection spent on the relaying server before it was handed is gone
    from its head's deadline on the writer (before, the writer gave it the whole deadline
    again: a client sending its head slowly had up to twice --header-timeout)."""
    async with _pair(tmp_path) as (writer, relaying, _adopted):
        got: list[tuple[socket.socket, float]] = []
        writer.attach(lambda s, first, late: got.append((s, late)), lambda: 0, 100, {})
        with _tcp() as (accepted, _client):
            assert relaying.offer(_Transport(accepted), LEASE, 1.25) is True
        await _until(lambda: got, "the writer adopted nothing")
        ((sock, late),) = got
        sock.close()
        assert late == 1.25
    async with _serving(
        _App(Handoff(str(tmp_path), "writ test", {})), header_timeout=2.0
    ) as server:
        with _tcp() as (accepted, client):
            started = time.monotonic()
            server._adopt(socket.socket(fileno=os.dup(accepted.fileno())), b"GET /x", 1.5)
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            answer = await asyncio.wait_for(loop.sock_recv(client, 64), 5)
            took = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert took < 1.5, f"the head's deadline ran {took:.2f}s more on the writer"


async def test_a_client_that_never_finishes_its_first_line_is_answered_where_it_is(
    tmp_path: Path,
) -> None:
    """A connection not yet placed (its target never comes: ``POS`` and silence) is held to
    the listener's head deadline like any other: answered 408 by the server it reached,
    never handed, never kept past it."""
    placed: list[bytes] = []

    def undecided(_transport: Any, first: bytes, _late: float, _settle: Any) -> None:
        placed.append(first)
        return None  # never enough to say

    with socket.create_server(("127.0.0.1", 0)) as listening:
        app = _App(Handoff(str(tmp_path), "writ test", {}))
        async with _serving(app, listening, header_timeout=0.5) as server:
            server.config.http_protocol_class.OFFER = undecided
            reader, writer = await asyncio.open_connection(*listening.getsockname())
            writer.write(b"POS")
            await writer.drain()
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), 5)  # to its close
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    assert placed == [b"POS"]


# -- real servers ----------------------------------------------------------------------


async def _handed(c: httpx.AsyncClient, url: str) -> float:
    return await _metric(c, url, 'writ_relay_connections_total{how="handed"}')


async def test_a_relaying_servers_connections_are_served_by_the_writer(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """Through the relaying server's port: grants and refusals as ever, a request whose
    first bytes come in pieces served whole, the writer doing every write; ``/metrics``
    asked first stays with the server asked; the ledger verifies."""
    relay = tmp_path / "relay"
    async with writ_servers(pg_backend.url, 2, tmp_path, relay=relay, log_level="info") as urls:
        w, (f,) = await _roles(tmp_path, 2)
        assert "hands its connections to the writer" in _log(tmp_path, f)
        (a, b) = await add_principals(urls[w], "agent", ["agent-a", "agent-b"])
        async with httpx.AsyncClient(timeout=10) as c:  # /metrics first: each server's own
            before = await _handed(c, urls[f])
        rows = _rows_written(tmp_path, f)
        async with httpx.AsyncClient(timeout=10) as c:
            lease = f"{urls[f]}/v1/leases"
            r = await c.post(lease, json=_acquire("db/h"), headers=_bearer(a))
            assert r.status_code == 201, r.text
            r = await c.post(lease, json=_acquire("db/h"), headers=_bearer(b))
            assert r.status_code == 409 and r.json()["error"]["holder"]["holder"] == "agent-a"
        # a request in pieces: the relaying server reads up to its target, then hands over
        port = int(urls[f].rsplit(":", 1)[1])
        body = b'{"resource":"db/pieces","intent":"t","ttl_s":30}'
        head = (
            b"POST /v1/lea",
            b"ses HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + a.encode() + b"\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body,
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head[0])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(head[1])
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status.startswith(b"HTTP/1.1 201"), status
        async with httpx.AsyncClient(timeout=10) as c:
            assert await _handed(c, urls[f]) == before + 2
            adopted = 'writ_relay_connections_total{how="adopted"}'
            assert await _metric(c, urls[w], adopted) == before + 2
            assert await _metric(c, urls[f], 'writ_relay_role{role="relaying"}') == 1
            assert await _metric(c, urls[f], 'writ_relay_calls_total{outcome="relayed"}') == 0
            assert _rows_written(tmp_path, f) == rows  # the writer wrote every row
        assert (await verify(urls[f]))["ok"] is True


async def test_workers_answer_a_waiting_request_503_when_they_stop(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """``writ serve --workers 2`` serves each worker with writ's own server: on SIGTERM a
    queued acquire, whichever worker holds its connection, is answered 503 at once (not
    cut off at the shutdown bound) and leaves the queue with a row of its own."""
    deadline = time.monotonic() + 30
    more = ("--shutdown-timeout", "60")
    async with writ_workers(pg_backend.url, 2, tmp_path / "serve.log", *more) as (base, proc):
        a, b = await add_principals(base, "agent", ["agent-a", "agent-b"])
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            r = await c.post("/v1/leases", json=_acquire("db/w"), headers=_bearer(a))
            assert r.status_code == 201, r.text
            waiting = asyncio.ensure_future(
                c.post("/v1/leases", json=_acquire("db/w", wait_s=50), headers=_bearer(b))
            )
            async with httpx.AsyncClient(base_url=base, timeout=10) as q:
                while not (await q.get("/v1/resources/db/w", headers=ADMIN)).json().get("queue"):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            started = time.monotonic()
            proc.terminate()
            r = await asyncio.wait_for(waiting, 30)
            assert r.status_code == 503, r.text
            assert time.monotonic() - started < 20  # drained, not cut off at the 60 s bound
        await asyncio.wait_for(proc.wait(), 60)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_burst_past_the_writers_room_is_shared_and_every_client_answered(
    pg_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """38 connections open at once on the relaying server, each placed by its first line
    and still sending its head, where the writer has room for 36 (90 % of 40): it is handed
    no more than that, across the processes (fewer when its credits come back after the
    burst: the fixture's own connections closing), the relaying server keeps the rest, and
    every client is answered once its head is whole (before the credits, all 38 were
    handed)."""
    monkeypatch.setenv("WRIT_MAX_CONNECTIONS", "40")
    monkeypatch.setenv("WRIT_MAX_CONNECTIONS_PER_CLIENT", "0")
    relay = tmp_path / "relay"
    async with writ_servers(pg_backend.url, 2, tmp_path, relay=relay, log_level="info") as urls:
        w, (f,) = await _roles(tmp_path, 2)
        port = int(urls[f].rsplit(":", 1)[1])
        async with httpx.AsyncClient(timeout=10) as c:  # (the fixture's /v1/health: handed)
            before = await _handed(c, urls[f])
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(38)]
        for _reader, writer in opened:  # placed by this line: the target is read
            writer.write(b"GET /v1/leases HTTP/1.1\r\n")
        async with httpx.AsyncClient(timeout=10) as c:  # the burst placed, and adopted
            deadline = time.monotonic() + 10
            adopted = 'writ_relay_connections_total{how="adopted"}'
            while (handed := await _handed(c, urls[f])) < before + 30 or handed != await _metric(
                c, urls[w], adopted
            ):
                assert time.monotonic() < deadline, f"the relaying server handed {handed}"
                await asyncio.sleep(0.05)
        for _reader, writer in opened:
            writer.write(f"host: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode())
        answers = [await asyncio.wait_for(reader.readline(), 10) for reader, _ in opened]
        for _reader, writer in opened:
            writer.close()
        assert answers == [b"HTTP/1.1 200 OK\r\n"] * 38
        async with httpx.AsyncClient(timeout=10) as c:
            assert await _handed(c, urls[f]) == handed <= before + 36
            assert await _metric(c, urls[w], adopted) == handed


def _pending(sock: socket.socket) -> list[bytes]:
    """Every message ``sock`` (non-blocking) has queued, to the end (b"" once closed)."""
    said: list[bytes] = []
    while True:
        try:
            said.append(sock.recv(64))
        except BlockingIOError:
            return said
        if not said[-1]:
            return said


async def test_a_server_that_reads_nothing_the_writer_says_is_not_given_credits_unsaid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relaying server that reads nothing the writer says fills its hand-off socket: what
    the writer then cannot send is not counted as said — no credit it was never told of
    held against the writer's room for good, no ``+`` lost that leaves it not handing
    while it holds credits — it is cut off once what it sent was served (it links again
    afresh). Before, a grant the writer could not send was counted as given: that room was
    the writer's no more, and the server, short of it, was never given more."""
    monkeypatch.setattr(handoff_module, "CREDIT", 4)
    held = [0]
    async with _room(tmp_path, held, servers=0) as (writer, _, adopted):
        peer = await _raw_peer(tmp_path, writer)  # given 4
        with peer, _tcp() as (accepted, _client):
            (theirs,) = writer._peers.values()
            theirs.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # full soon
            for _ in range(64):  # busy, idle again, ...: it reads none of it
                writer.say(False)
                writer.say(True)
            for n in (1, 2, 3):  # it spends 3 of its 4; the writer cannot say it took them
                socket.send_fds(peer, [b"c", struct.pack("!dI", 0, n), LEASE], [accepted.fileno()])
            await _until(lambda: not writer._peers, "it was not cut off")
            said = _pending(peer)
        told = 4 + sum(struct.unpack("!I", m[1:])[0] for m in said if m[:1] == b"+")
        counted = sum(p.credit for p in writer._peers.values())
        assert counted <= told - 3, f"the writer counts {counted} credits, it told {told - 3}"
        assert said[-1] == b"" and not writer._peers  # cut off: it links again afresh
        # and none adopted that the writer could not say "a" of: the relaying server, its
        # link ended, serves its own copies
        assert not adopted and not any(m[:1] == b"a" for m in said)
        assert writer.free() == 90 - held[0] == 90


async def test_a_relaying_server_reads_all_the_writer_said_at_once(tmp_path: Path) -> None:
    """A relaying server reads everything the writer said since it last looked, not one
    message a turn of its loop: told more than once a turn (a grant with each adoption, a
    ``-`` and a ``+``), it fell behind for good, and once its socket was full the writer
    cut it off."""
    async with _pair(tmp_path) as (writer, relaying, _adopted):
        assert writer._sampler is not None
        writer._sampler.cancel()  # the test says when the writer is busy
        for _ in range(400):
            writer.say(False)
            writer.say(True)
            await asyncio.sleep(0)  # a turn of the loop
        await _until(lambda: relaying._taken, "the relaying server did not hear the last '+'")
        assert relaying.linked() and len(writer._peers) == 1
        assert not any(p.cut for p in writer._peers.values())


async def test_a_give_back_that_cannot_be_said_ends_the_hand_off_not_the_relay(
    tmp_path: Path,
) -> None:
    """Asked for credits back while its socket to the writer is full (its hand-offs not read
    yet), a relaying server cannot say its ``r``: it ends its hand-off (and links again
    afresh), but the writer did not end it and is no less alive: the relay is not told the
    writer is gone (which retires its link, every call then written beside the writer)."""
    relaying = Handoff(str(tmp_path), "writ test", {"a": 1})
    relaying.attach(lambda s, first, late: None, lambda: 0, 100, {})
    gone: list[int] = []
    relaying.on_gone = lambda: gone.append(1)
    ours, writers = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, writers:
        ours.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the writer reads nothing of it yet
                ours.send(b"c" * 1024)
        relaying._out, relaying._taken, relaying.credit = ours, True, 90
        asyncio.get_running_loop().add_reader(ours.fileno(), relaying._heard)
        writers.send(b"s" + struct.pack("!I", 45))
        await _until(lambda: relaying._out is None, "the hand-off did not end")
        assert relaying.credit == 0 and not relaying.linked()
        assert gone == []


async def test_a_writer_that_cannot_listen_says_so_once_and_listens_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that cannot listen for hand-offs (here something else holds the socket's
    path; in life, no descriptor to spare at the moment it was elected) says so once, not at
    each of its keeper's retries, and listens once it can: the relaying servers then hand
    it their connections. Before, it tried once, at its election."""
    writer = Handoff(str(tmp_path), "writ test", {"a": 1})
    writer.attach(lambda s, first, late: s.close(), lambda: 0, 100, {})
    (tmp_path / SOCKET).mkdir()  # not a socket, and not to be unlinked as one
    with caplog.at_level("INFO", logger="writ.relay"):
        for _ in range(3):
            await writer.listen()
        assert writer.unlistened and writer._listening is None
        (tmp_path / SOCKET).rmdir()
        await writer.listen()
    try:
        said = [r.getMessage() for r in caplog.records]
        assert sum("cannot listen" in m for m in said) == 1, said
        assert any("listens for connections again" in m for m in said), said
        relaying = Handoff(str(tmp_path), "writ test", {"a": 1})
        relaying.attach(lambda s, first, late: None, lambda: 0, 100, {})
        await relaying.connect()
        assert relaying._out is not None and not writer.unlistened
        relaying.disconnect()
    finally:
        writer.stop_listening()


async def test_the_writers_keeper_listens_for_hand_offs_once_it_can(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """Real servers: the writer elected while it cannot listen for hand-offs (something
    holds the socket's path) writes as the writer, its relaying server keeping its
    connections; once the path is free the writer's keeper listens, and the relaying server
    hands it its connections."""
    relay = tmp_path / "relay"
    relay.mkdir(mode=0o700)
    (relay / SOCKET).mkdir()
    async with writ_servers(pg_backend.url, 2, tmp_path, relay=relay, log_level="info") as urls:
        w, (f,) = await _roles(tmp_path, 2)
        assert "hand-off: cannot listen" in _log(tmp_path, w)
        assert "hands its connections to the writer" not in _log(tmp_path, f)
        (relay / SOCKET).rmdir()
        deadline = time.monotonic() + 10
        while "hands its connections to the writer" not in _log(tmp_path, f):
            assert time.monotonic() < deadline, _log(tmp_path, f)[-2000:]
            await asyncio.sleep(0.05)
        assert "listens for connections again" in _log(tmp_path, w)
        async with httpx.AsyncClient(timeout=10) as c:  # (its /metrics: placed, stays here)
            before = await _handed(c, urls[f])
            async with httpx.AsyncClient(timeout=10) as other:  # a connection of its own
                r = await other.get(f"{urls[f]}/v1/leases", headers=_bearer(ADMIN_TOKEN))
            assert r.status_code == 200, r.text
            assert await _handed(c, urls[f]) == before + 1


async def test_a_relaying_server_with_no_descriptor_to_spare_links_when_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relaying server whose keeper asks to link to the writer while it has no descriptor
    to spare stays unlinked, and links at a later round. Before, the hand-off socket was
    made outside the try: the keeper's call raised EMFILE, which ended the keeper itself (no
    election again when the writer went, no hand-off again)."""
    writer = Handoff(str(tmp_path), "writ test", {"a": 1})
    writer.attach(lambda s, first, late: s.close(), lambda: 0, 100, {})
    await writer.listen()
    relaying = Handoff(str(tmp_path), "writ test", {"a": 1})
    relaying.attach(lambda s, first, late: None, lambda: 0, 100, {})

    def no_descriptor(*_args: Any, **_kwargs: Any) -> socket.socket:
        raise OSError(24, "Too many open files")

    try:
        with monkeypatch.context() as m:
            m.setattr(handoff_module.socket, "socket", no_descriptor)
            await relaying.connect()
        assert not relaying.linked()
        await relaying.connect()
        assert relaying.linked() and relaying._out is not None
        relaying.disconnect()
    finally:
        writer.stop_listening()
