"""A lease a client holds is judged by its own clock, never later than the server's. Before:
after a wait in the queue the client started the ttl at the answer, so a pause between the
grant and reading it (a stopped process, a GC or VM pause) entered the ``with`` block on a
lease already expired and given to another; ``check()`` and ``headers()`` looked only at
what renewals had said, so a holder that woke from a pause passed them on an expired lease;
``writ run`` began stopping COMMAND only at the estimated expiry, so it wrote for ``--grace``
into the next holder's term; and a release refused for now (429) escaped as a traceback."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.server_fixtures import LiveServer, unique
from writ.core.errors import LeaseLost, Unavailable, WritError


def test_a_pause_between_the_grant_and_its_reading_is_not_a_held_lease(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is read 1.5 s after the server granted a 1-s lease: the client renews at
    once, finds it lost, and never enters the block."""
    _, token = live_server.principal("agent", unique("paused"))
    resource = f"{unique('p')}/db"
    with live_server.client(token) as c:
        real = c.acquire

        def paused(*a: Any, **kw: Any) -> Any:
            out = real(*a, **kw)
            time.sleep(1.5)  # the process stopped after the answer came, before reading it
            return out

        monkeypatch.setattr(c, "acquire", paused)
        with pytest.raises(LeaseLost), c.lease(resource, "scale up", ttl_s=1, wait_s=5):
            pytest.fail("entered the block on an expired lease")


def test_a_fresh_answer_starts_no_extra_renewal(live_server: LiveServer) -> None:
    """An answer read within a renewal's period is trusted from the acquire's send: no
    renewal row right after the grant (after a late one, there is: the test above)."""
    _, token = live_server.principal("agent", unique("quick"))
    resource = f"{unique('q')}/db"
    with live_server.client(token) as c, c.lease(resource, "x", ttl_s=30) as lease:
        rows = c.audit(resource=resource)["rows"]
        assert [r["event"] for r in rows] == ["lease.granted"], rows
        assert rows[0]["lock_key"] == lease.lock_key


def test_check_and_headers_read_the_clock(live_server: LiveServer) -> None:
    """Past the time by which it had to be renewed and was not (its renewals held up), a
    lease is lost to ``check()`` and ``headers()`` at once, not when a renewal next runs."""
    _, token = live_server.principal("agent", unique("clock"))
    with live_server.client(token) as c:
        lease = c.lease(f"{unique('k')}/db", "x", ttl_s=30).acquire()
        try:
            lease.check()
            lease._deadline = time.monotonic() - 0.01  # a pause the renewals slept through
            with pytest.raises(LeaseLost, match="treat it as lost"):
                lease.headers()
            assert lease.lost.is_set()
        finally:
            lease._stop_renewing()


def test_a_margin_counts_the_lease_lost_before_the_server_would(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals failing, a lease with ``margin_s`` (``writ run``'s ``--grace``) is lost that
    long before its expiry: what it stops is stopped while the lease is still its own."""
    _, token = live_server.principal("agent", unique("margin"))
    resource = f"{unique('m')}/db"
    with live_server.client(token) as c:
        lease = c.lease(resource, "x", ttl_s=3, renew_every=0.2)
        lease.margin_s = 1.5
        lease.acquire()
        began = time.monotonic()

        def unreachable(*a: Any, **kw: Any) -> Any:
            raise Unavailable("writ server not reachable")

        monkeypatch.setattr(c, "_send", unreachable)
        assert lease.lost.wait(5)
        assert time.monotonic() - began < 3  # before the server's expiry
        monkeypatch.undo()
        now = c.get_lease(lease.lease_id)
        assert now["state"] == "held"  # the server would still hold it a while
        lease._stop_renewing()


def test_a_release_refused_for_now_is_a_warning_not_a_traceback(
    live_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, token = live_server.principal("agent", unique("busy"))
    with live_server.client(token) as c:
        busy = WritError("too many requests from your address", code="too_many_requests")
        busy.status = 429

        def refused(*a: Any, **kw: Any) -> Any:
            raise busy

        with caplog.at_level(logging.WARNING), c.lease(f"{unique('b')}/db", "x", ttl_s=30):
            monkeypatch.setattr(c, "release", refused)
        assert any("could not release" in r.getMessage() for r in caplog.records)
