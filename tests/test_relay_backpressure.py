"""The write relay under pressure (writ.api.relay, writ.api.relay_wire): large calls one way
and large answers the other at once, a writer that reads slowly or not at all, more waiting
calls than a link takes, answers that reach no caller — and a hand-off the relaying server
shut while the writer was stalled (writ.api.handoff). Both ends in this process, over the
real Unix sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.test_engine import adds, rows
from tests.test_handoff import LEASE, _tcp, _Transport, _until
from tests.test_handoff import _pair as _handoff_pair
from tests.test_relay import _never, _pair, _send
from writ.api.relay_wire import NOT_RUN, QUEUED, Answer
from writ.engine import Engine


def _serving(writer: Any) -> Any:
    """The writer's end of the one link in the pair."""
    (conn,) = writer._conns
    return conn


async def test_large_calls_and_large_answers_at_once_leave_the_link_working(
    tmp_path: Path,
) -> None:
    """150 waiting calls granted at once with large answers (16 KiB each), while 16 calls of
    1 MiB go the other way: the relaying server reads its answers whatever its own writes
    do, so the writer's writes drain, it reads again, and every call is answered. Before,
    each end stopped reading while its writes backed up: both waited for the other until
    the relaying server's deadline, and every call failed 503 "outcome unknown" (the
    granted ones too)."""
    granted = asyncio.Event()

    async def run(op: str, token: str, lease: Any, body: bytes, *_: Any) -> Answer:
        if body.startswith(b'{"wait"'):
            await granted.wait()
            return Answer(201, b"g" * (16 << 10), None, "p1", {"lease_id": "ls_1"})
        return Answer(422, b'{"error":{}}')

    async with _pair(tmp_path, run) as (_writer, relaying):
        link, _, _ = _send(relaying, body=b'{"wait":0}', waits=60)
        link.deadline_s = 2.0  # (a link that stopped ends after this: the test fails fast)
        waits = [_send(relaying, body=b'{"wait":1}', waits=60)[2] for _ in range(149)]
        await asyncio.sleep(0.05)  # the writer runs them all
        large = []
        for _ in range(16):  # sent as they come (bypassing the bound that spills them)
            sent = link.call("acquire", "tok", None, b"{" + b" " * (1 << 20) + b"}")
            assert sent is not None
            large.append(sent[1])
        granted.set()  # and every wait granted in the same step
        answers = await asyncio.wait_for(asyncio.gather(*waits, *large), 15)
        assert [a.status for a in answers] == [201] * 149 + [422] * 16
        assert not link.closed


async def test_a_relaying_server_writes_here_while_its_calls_wait_for_the_writer(
    tmp_path: Path,
) -> None:
    """A writer that reads slowly (its own writes backed up, or its core busy) leaves the
    relaying server's calls queued there: past :data:`QUEUED` bytes of them — in the link's
    buffer, or in the calls of one step — the server writes its next lease write itself
    (``spilled``), and relays again once the writer has read them."""
    async with _pair(tmp_path, _never, stop_wait_s=0.1) as (writer, relaying):
        conn = _serving(writer)
        conn.transport.pause_reading()  # a writer that reads nothing for now
        link = relaying.link()
        assert link is not None and link.transport is not None
        sock = link.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        body = b"{" + b" " * (QUEUED * 3 // 4) + b"}"
        _send(relaying, body=body)
        _send(relaying, body=body)
        assert link.held >= QUEUED
        assert relaying.link() is None  # the calls of this step: enough
        assert relaying.counts["spilled"] == 1
        await asyncio.sleep(0.05)  # flushed: the writer has read none of it
        assert link.held == 0 and link.paused
        assert relaying.link() is None and relaying.counts["spilled"] == 2
        conn.transport.resume_reading()
        await _until(lambda: not link.paused, "the writer read what it was sent")
        assert relaying.link() is link


async def test_a_link_left_for_want_of_answers_ends_at_once(tmp_path: Path) -> None:
    """A writer that answers nothing in time and reads nothing (a stopped process) is left:
    the link is torn down at once, with what the writer did not read dropped. Before, it was
    closed: a close waits to send what is queued, so the dead link stayed open, holding its
    queued bytes both ways, for as long as the writer did."""
    from writ.core.errors import Unavailable

    async with _pair(tmp_path, _never, stop_wait_s=0.1) as (writer, relaying):
        _serving(writer).transport.pause_reading()
        link = relaying.link()
        assert link is not None and link.transport is not None
        link.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10
        )
        ended = asyncio.Event()
        lost = link.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            ended.set()
            lost(exc)

        link.connection_lost = connection_lost
        link.deadline_s = 0.1
        _, _, answer = _send(relaying, body=b"{" + b" " * (1 << 20) + b"}")
        try:
            await asyncio.wait_for(answer, 5)
        except Unavailable:
            pass
        await asyncio.wait_for(ended.wait(), 2)  # its socket closed, the unsent dropped


async def test_a_grant_whose_call_was_reported_lost_is_given_back(tmp_path: Path) -> None:
    """A waiting call cancelled (its caller hung up) that the writer does not answer within
    the cancel's wait is reported lost to its caller; the writer's answer, a grant, arrives
    after: nobody holds it, so the relaying server gives it back. Before, it was dropped,
    and the lease held by nobody for its whole ttl."""
    grant = asyncio.Event()
    lease = {"resource": "db/x", "lease_id": "ls_late", "fencing_token": 7}

    async def run(op: str, token: str, _lease: Any, body: bytes, *_: Any) -> Answer:
        await grant.wait()
        return Answer(201, b"{}", None, "p1", lease)

    given: list[tuple[int, dict[str, Any]]] = []

    async def unheard(status: int, what: dict[str, Any]) -> None:
        given.append((status, what))

    async with _pair(tmp_path, run) as (_writer, relaying):
        relaying.unheard = unheard
        link, call_id, _answer = _send(relaying, waits=60)
        link.cancel(call_id, "hangup")  # (the writer's run ignores it: slow to end)
        link.forget(call_id)  # CANCEL_WAIT_S passed: its caller was told 503, outcome unknown
        grant.set()
        await _until(lambda: given, "the grant told to nobody was not given back")
        assert given == [(201, lease)]


async def test_a_grant_the_writer_cannot_send_is_given_back(tmp_path: Path) -> None:
    """The relaying server left the link (the writer answered nothing in time); the writer,
    back, grants a call of that link: no one can be told, so it gives the grant back
    itself. An answer it could send is not given back, nor one that grants nothing."""
    grant = asyncio.Event()
    lease = {"resource": "db/x", "lease_id": "ls_gone", "fencing_token": 9}

    async def run(op: str, token: str, _lease: Any, body: bytes, *_: Any) -> Answer:
        if body == b"{}":
            return Answer(201, b"{}", None, "p1", {"lease_id": "ls_sent", "fencing_token": 1})
        if body == b"[]":
            await grant.wait()
            return Answer(409, b"{}")
        await grant.wait()
        return Answer(201, b"{}", None, "p1", lease)

    given: list[tuple[int, dict[str, Any]]] = []

    async def unheard(status: int, what: dict[str, Any]) -> None:
        given.append((status, what))

    async with _pair(tmp_path, run, stop_wait_s=1.0) as (writer, relaying):
        writer.unheard = unheard
        link, _, sent = _send(relaying, body=b"{}")
        assert (await asyncio.wait_for(sent, 5)).status == 201
        conn = _serving(writer)
        link.deadline_s = 0.1
        _send(relaying, body=b'{"x":1}')
        _send(relaying, body=b"[]")
        await _until(lambda: conn.closed, "the writer never saw its link end")
        grant.set()
        await _until(lambda: given, "the grant sent to nobody was not given back")
        await asyncio.sleep(0.05)
        assert given == [(201, lease)]


@pytest.mark.parametrize("ended_by", ["writer", "relaying"])
async def test_a_grant_whose_answer_fails_to_be_written_is_given_back(
    tmp_path: Path, ended_by: str
) -> None:
    """The link ends between the writer's grant and the write of its answer (in the same
    turn of the loop): ended by the writer (its end closing), or by the relaying server (the
    writer's write fails at once, EPIPE), nothing of it was sent, so the writer gives it
    back."""
    grant = asyncio.Event()
    lease = {"resource": "db/x", "lease_id": "ls_unwritten", "fencing_token": 3}

    async def run(*_: Any) -> Answer:
        await grant.wait()
        return Answer(201, b"{}", None, "p1", lease)

    given: list[tuple[int, dict[str, Any]]] = []

    async def unheard(status: int, what: dict[str, Any]) -> None:
        given.append((status, what))

    async with _pair(tmp_path, run) as (writer, relaying):
        writer.unheard = unheard
        link, _, _ = _send(relaying, waits=60)
        conn = _serving(writer)
        await _until(lambda: conn.calls, "the writer never took the call")
        grant.set()  # its answer is put for the next step's write...
        (conn if ended_by == "writer" else link).transport.abort()  # ...after the end
        await _until(lambda: given, "the unwritten grant was not given back")
        assert given == [(201, lease)]


@pytest.mark.usefixtures("no_admin_env")
async def test_a_grant_the_relay_gives_back_is_released_in_the_store(
    engine: Engine, tmp_path: Path
) -> None:
    """What either end of the relay gives back goes to the engine as a grant whose client
    hung up does (the app wires it): the lease is released, with the row that says so; an
    answer that granted nothing gives nothing back."""
    from writ.api.app import create_app

    (agent,) = await adds(engine, "agent-a")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale", ttl_s=600)
    app = create_app(engine, start_engine=False, relay_dir=str(tmp_path / "relay"))
    relay = app.relay  # type: ignore[attr-defined]
    relay.give_back(409, {"lease_id": lease["lease_id"]})
    relay.give_back(201, {k: lease[k] for k in ("resource", "lease_id", "fencing_token")})
    await asyncio.gather(*relay._tasks)
    assert await engine.store.read(lambda tx: tx.held_leases()) == []
    (back,) = await rows(engine, "lease.released")
    assert "before the grant reached it" in back["notes"]


async def test_past_max_calls_a_server_writes_here_and_the_writer_answers_not_run(
    tmp_path: Path,
) -> None:
    """A relaying server sends no more than ``max_calls`` calls on a link (waiting ones
    too): the next is written there (``spilled``). And a writer that has ``max_calls`` of a
    link's calls in progress (one its server forgot may still run) answers one more *not
    run* — its server writes it — and serves the link on. Before, it closed the link: every
    waiting caller of that server failed 503 "outcome unknown" and lost its queue place."""
    async with _pair(tmp_path, _never, stop_wait_s=0.1, max_calls=2) as (writer, relaying):
        relaying.max_calls = 3
        link = relaying.link()
        assert link is not None
        waits = [_send(relaying, waits=60)[2] for _ in range(3)]
        assert relaying.link() is None and relaying.counts["spilled"] == 1
        third = waits[2]  # past the writer's own two: not run, the link stays
        assert (await asyncio.wait_for(third, 5)).status == NOT_RUN
        assert not link.closed and not waits[0].done() and not waits[1].done()
        assert len(_serving(writer).calls) == 2


async def test_a_connection_shut_while_the_writer_stalled_is_not_served_when_it_is_back(
    tmp_path: Path,
) -> None:
    """A writer that stalls (a stopped process) with a connection handed to it unsettled:
    the relaying server lets the link go and shuts the connection (its client sees its end).
    The writer, back, reads the hand-off: it does not run that request, whose answer no one
    could read (a grant held by nobody). A client that merely shut its own sending side
    after its request is served as before."""
    async with _handoff_pair(tmp_path) as (writer, relaying, adopted):
        ((peer_fd, peer),) = writer._peers.items()
        loop = asyncio.get_running_loop()
        loop.remove_reader(peer_fd)  # the writer stalls
        with _tcp() as (shut, shut_client), _tcp() as (half, half_client):
            assert relaying.offer(_Transport(shut), LEASE) is True
            relaying.disconnect(stalled=True)
            shut_client.settimeout(5)
            assert shut_client.recv(16) == b""  # its client sees its end at once
            loop.add_reader(peer_fd, peer.heard)  # the writer is back
            await _until(lambda: not writer._peers, "the writer never read the link's end")
            assert not adopted and writer.counts["adopted"] == 0
            half_client.shutdown(socket.SHUT_WR)  # its request sent, nothing more to send
            await relaying.connect()
            assert relaying.offer(_Transport(half), LEASE) is True
            await _until(lambda: adopted, "a half-closed client's request was dropped")
