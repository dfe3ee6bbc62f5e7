"""The Python client's lease helpers with ``watch=True`` against a real server: a human's
revoke loses the lease within a couple of seconds, not at the next renewal (20 s away at a
ttl of 60); without it nothing changes; a watch that may not read the rows leaves the
renewals to tell; a release cuts the watch's long poll rather than waiting it out.

The server here lets each principal have one request waiting (``--max-waits-per-principal
1``): a probe of the agent's own is refused while the watch's long poll waits, which is how
the tests see it under way, and shows its cost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import LiveServer, serve, unique, wait_until
from writ.cli import main
from writ.client import AsyncClient, Client, Lease
from writ.core.errors import LeaseLost, Unavailable


@pytest.fixture(scope="module")
def one_wait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serve(tmp_path_factory.mktemp("watch") / "writ.db", max_waits=1) as srv:
        yield srv


def waiting(agent: Client, resource: str) -> bool:
    """Whether the agent has a request waiting on the server: its one wait is taken."""
    try:
        agent.events(resource, 0, wait_s=0.01)
    except Unavailable as exc:
        assert "waiting on this server" in exc.message, exc.message
        return True
    return False


async def awaiting(agent: AsyncClient, resource: str) -> None:
    """Until the agent has a request waiting on the server (see :func:`waiting`)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            await agent.events(resource, 0, wait_s=0.01)
        except Unavailable as exc:
            assert "waiting on this server" in exc.message, exc.message
            return
        assert time.monotonic() < deadline, "the watch never waited on the server"
        await asyncio.sleep(0.02)


def watch_threads(lease: Lease) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"writ-watch-{lease.lease_id}"]


def revoked_by(lease_id: str, srv: LiveServer, human: str) -> None:
    """A human revokes the lease as an on-call would: ``writ revoke``."""
    args = ["revoke", lease_id, "--runbook", "R-44", "--paged", "oncall", "--reason", "runaway"]
    result = CliRunner().invoke(main, args, env=srv.env(human))
    assert result.exit_code == 0, (result.stdout, result.stderr)


def test_a_watching_lease_is_lost_as_soon_as_a_human_revokes_it(one_wait: LiveServer) -> None:
    """At a ttl of 60 the next renewal is 20 s away: the watch tells the loss within a
    couple of seconds, naming who revoked it and by which runbook, once (on_lost)."""
    human_name, human = one_wait.principal("human")
    _, token = one_wait.principal("agent")
    res, told = unique("svc"), []
    with one_wait.client(token) as agent:
        lease = agent.lease(res, "long job", ttl_s=60, watch=True, on_lost=told.append).acquire()
        wait_until(lambda: waiting(agent, res))  # its long poll is under way
        revoked_at = time.monotonic()
        revoked_by(lease.lease_id, one_wait, human)
        assert lease.lost.wait(10)
        took = time.monotonic() - revoked_at
        assert took < 2.5, took
        err = lease.error
        assert err is not None and err.details["state"] == "revoked"
        assert f"revoked by {human_name}" in err.message and "runbook R-44" in err.message
        assert wait_until(lambda: told) == [err]  # on_lost runs after lost is set
        with pytest.raises(LeaseLost):
            lease.check()
        with pytest.raises(LeaseLost):
            lease.close()
        assert not watch_threads(lease)
        wait_until(lambda: not waiting(agent, res))  # nothing of it left on the server


def test_a_lease_revoked_before_its_watch_began_is_told_with_who_revoked_it(
    one_wait: LiveServer,
) -> None:
    """Revoked between the grant and the watch's first look (a watch thread slow to start
    on a loaded machine: `writ run`'s test saw it in CI), the loss still names who revoked
    it and by which runbook, from the row found behind the watch's start. Before, it said
    only 'was revoked'."""
    from writ.client._watch import steps

    human_name, human = one_wait.principal("human")
    _, token = one_wait.principal("agent")
    with one_wait.client(token) as agent:
        lease = agent.lease(unique("svc"), "long job", ttl_s=60).acquire()
        revoked_by(lease.lease_id, one_wait, human)  # before any watch looked
        watch = steps(lease)
        ask = next(watch)
        with pytest.raises(StopIteration):  # (as ThreadWatch drives it)
            for _ in range(10):
                ask = watch.send(getattr(agent, ask.method)(*ask.args))
        err = lease.error
        assert err is not None and err.details["state"] == "revoked"
        assert f"revoked by {human_name}" in err.message and "runbook R-44" in err.message
        with pytest.raises(LeaseLost):
            lease.close()


def test_without_watch_a_revoke_is_learned_at_the_renewal(one_wait: LiveServer) -> None:
    """watch defaults to False: no request waits on the server, and a revoke is told by the
    next renewal (3 s away here), as before."""
    _, human = one_wait.principal("human")
    _, token = one_wait.principal("agent")
    res = unique("svc")
    with one_wait.client(token) as agent, one_wait.client(human) as oncall:
        lease = agent.lease(res, "long job", ttl_s=60, renew_every=3).acquire()
        try:
            assert not waiting(agent, res) and not watch_threads(lease)
            revoked_at = time.monotonic()
            oncall.revoke(lease.lease_id, "R-44", "oncall", "runaway")
            assert not lease.lost.wait(1.5)  # a watch tells within one: nobody did
            assert lease.lost.wait(10)  # the renewal did
            assert time.monotonic() - revoked_at > 2
            assert lease.error is not None and lease.error.details["state"] == "revoked"
        finally:
            lease._stop_renewing()


class NoEvents(httpx.BaseTransport):
    """A proxy in front of writ that lets the agent hold leases but not watch the rows."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            self.refused.set()
            error = {"code": "forbidden", "message": "not yours to read"}
            return httpx.Response(403, json={"error": error})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_watch_that_may_not_read_the_rows_leaves_the_renewals_to_tell(
    one_wait: LiveServer,
) -> None:
    """Refused (4xx) the rows of its resource, the watch stops quietly; the lease is renewed
    as before, and a revoke is told by the next renewal."""
    _, human = one_wait.principal("human")
    _, token = one_wait.principal("agent")
    proxy = NoEvents()
    res = unique("svc")
    with Client(one_wait.url, token, transport=proxy) as agent, one_wait.client(human) as oncall:
        lease = agent.lease(res, "job", ttl_s=2, renew_every=0.2, watch=True).acquire()
        try:
            assert proxy.refused.wait(5)
            wait_until(lambda: not watch_threads(lease))  # it stopped
            for _ in range(2):  # past the ttl: renewals keep it
                renewed = lease.expires_at
                wait_until(lambda: lease.expires_at != renewed)  # noqa: B023
            assert not lease.lost.is_set()
            assert agent.get_lease(lease.lease_id)["state"] == "held"
            oncall.revoke(lease.lease_id, "R-44", "oncall", "runaway")
            assert lease.lost.wait(5)
            assert lease.error is not None and lease.error.details["state"] == "revoked"
        finally:
            lease._stop_renewing()


def test_a_release_cuts_the_watchs_long_poll(one_wait: LiveServer) -> None:
    """Leaving the block with the watch's long poll waiting (25 s) returns at once, its
    thread ended and its request gone from the server."""
    _, token = one_wait.principal("agent")
    res = unique("svc")
    with one_wait.client(token) as agent:
        with agent.lease(res, "job", ttl_s=60, watch=True) as lease:
            wait_until(lambda: waiting(agent, res))
            leaving = time.monotonic()
        took = time.monotonic() - leaving
        assert took < 1.0, took
        assert lease.data is not None and lease.data["state"] == "released"
        assert not watch_threads(lease) and not lease.lost.is_set()
        wait_until(lambda: not waiting(agent, res), timeout=2)


async def test_an_async_watching_lease_is_lost_at_a_revoke_and_released_at_once(
    one_wait: LiveServer,
) -> None:
    """AsyncClient.lease(watch=True): the same, by a task, cancelled at the release."""
    human_name, human = one_wait.principal("human")
    _, token = one_wait.principal("agent")
    res = unique("svc")
    async with (
        AsyncClient(one_wait.url, token) as agent,
        AsyncClient(one_wait.url, human) as oncall,
    ):
        with pytest.raises(LeaseLost):
            async with agent.lease(res, "long job", ttl_s=60, watch=True) as lease:
                await awaiting(agent, res)
                revoked_at = time.monotonic()
                await oncall.revoke(lease.lease_id, "R-44", "oncall", "runaway")
                await asyncio.wait_for(lease.lost.wait(), 10)
                took = time.monotonic() - revoked_at
        assert took < 2.5, took
        assert lease.error is not None and f"revoked by {human_name}" in lease.error.message

        async with agent.lease(res, "job", ttl_s=60, watch=True) as lease:
            await awaiting(agent, res)
            leaving = time.monotonic()
        assert time.monotonic() - leaving < 1.0
        assert lease.data is not None and lease.data["state"] == "released"
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no watch, no renewal left


def test_a_lease_lost_otherwise_stops_its_watch_at_once(one_wait: LiveServer) -> None:
    """Lost some other way than by its watch (here mark_lost; a refused renewal alike),
    with no row to wake its long poll: the poll is cut, its thread ends and nothing of it
    is left waiting on the server for the 25 s."""
    _, token = one_wait.principal("agent")
    res = unique("svc")
    with one_wait.client(token) as agent:
        lease = agent.lease(res, "job", ttl_s=60, watch=True).acquire()
        try:
            wait_until(lambda: waiting(agent, res))
            lease.mark_lost(LeaseLost("told by a monitor", lease_id=lease.lease_id))
            wait_until(lambda: not watch_threads(lease), timeout=1)
            wait_until(lambda: not waiting(agent, res), timeout=2)
        finally:
            lease._stop_renewing()
            agent.release(lease.lease_id)
