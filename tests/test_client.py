"""The Python client against a real server: routes, typed errors, held leases.

Sync tests talk to the session's ``live_server`` (uvicorn in a thread); one async test runs
the app in-process through ``httpx.ASGITransport``. Each test names its own resources.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner

import writ
from tests.server_fixtures import LiveServer, free_port, in_background, serve, unique
from writ.cli import main
from writ.client import DEFAULT_URL, AsyncClient, Client


@pytest.fixture
def agent(live_server: LiveServer) -> Iterator[Client]:
    _, token = live_server.principal("agent")
    with live_server.client(token) as c:
        yield c


@pytest.fixture
def human(live_server: LiveServer) -> Iterator[Client]:
    _, token = live_server.principal("human")
    with live_server.client(token) as c:
        yield c


def wait_for_rows(client: Client, resource: str, event: str, count: int, after: int = 0) -> None:
    """Long-poll the event stream until ``count`` rows of ``event`` appeared (no sleeps)."""
    seen, deadline = 0, time.monotonic() + 10
    while seen < count:
        assert time.monotonic() < deadline, f"only {seen} {event} rows"
        out = client.events(resource, after, wait_s=2)
        seen += sum(1 for r in out["rows"] if r["event"] == event)
        after = out["next_after_seq"]


# ----------------------------------------------------------------------------- settings
def test_url_and_token_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """WRIT_URL and WRIT_TOKEN are the defaults; without them, 127.0.0.1:7411 and no token."""
    monkeypatch.delenv("WRIT_URL", raising=False)
    monkeypatch.delenv("WRIT_TOKEN", raising=False)
    with Client() as c:
        assert c.url == DEFAULT_URL and c.token is None
    monkeypatch.setenv("WRIT_URL", "http://example.invalid:9/")
    monkeypatch.setenv("WRIT_TOKEN", "tok")
    with Client() as c:
        assert c.url == "http://example.invalid:9" and c.token == "tok"
    with Client("127.0.0.1:1", "other") as c:
        assert c.url == "http://127.0.0.1:1" and c.token == "other"


@pytest.mark.parametrize("bad", ["\r", "\n", " ", "\u00e9"])
def test_a_token_no_header_can_carry_is_refused_and_never_echoed(
    live_server: LiveServer, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read with its line end (a CRLF env file) made the HTTP library refuse the
    header, and its message — the whole token — went into the error: the CLI printed it,
    and MCP tool results carried it. It is refused before any request, without the token."""
    secret = "writ_" + unique("secret")
    for make in (
        lambda: Client(live_server.url, secret + bad),
        lambda: AsyncClient(live_server.url, secret + bad),
    ):
        with pytest.raises(writ.Invalid) as refused:
            make()
        assert secret not in str(refused.value) and secret not in repr(refused.value)
        assert refused.value.details["field"] == "token"
    monkeypatch.setenv("WRIT_TOKEN", secret + bad)
    result = CliRunner().invoke(main, ["status", "--url", live_server.url])
    assert result.exit_code != 0 and secret not in result.output, result.output
    assert "characters a bearer token cannot have" in result.output, result.output


async def test_waiting_requests_never_take_the_connections_a_renewal_needs(
    live_server: LiveServer,
) -> None:
    """A hundred waiting requests (queued acquires; long polls alike) on one client took
    every connection of its pool, and the lease's renewal waited behind them until it
    failed "not reachable": the lease was lost. Requests that wait have a pool of their
    own; the renewal goes at once."""
    _, holder = live_server.principal("agent")
    _, token = live_server.principal("agent")
    busy = f"{unique('busy')}/db"
    with Client(live_server.url, holder) as h:
        h.acquire(busy, "hold it", ttl_s=60)

    def waiters() -> float:
        text = httpx.get(f"{live_server.url}/metrics").text
        return float(re.search(r"^writ_waiters (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    before = waiters()
    async with AsyncClient(live_server.url, token, timeout=5) as c:
        lease = await c.acquire(f"{unique('mine')}/db", "x", ttl_s=30)
        queued = [asyncio.ensure_future(c.acquire(busy, "x", wait_s=30)) for _ in range(100)]
        try:
            deadline = time.monotonic() + 20
            while waiters() < before + 100:  # until the server holds all of them
                assert time.monotonic() < deadline and not any(q.done() for q in queued)
                await asyncio.sleep(0.02)
            renewed = await c.renew(lease["lease_id"])
            assert renewed["lease_id"] == lease["lease_id"]
        finally:
            for q in queued:
                q.cancel()
            await asyncio.gather(*queued, return_exceptions=True)


def test_client_is_exported_lazily() -> None:
    assert writ.Client is Client and writ.AsyncClient is AsyncClient


def test_unreachable_server_is_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t", timeout=2) as c, pytest.raises(writ.Unavailable) as exc:
        c.health()
    assert url in str(exc.value) and "not reachable" in str(exc.value)


# ----------------------------------------------------------------------------- errors
def test_health_needs_no_token(live_server: LiveServer) -> None:
    with Client(live_server.url, "") as c:
        assert c.health()["ok"] is True


def test_missing_token_is_unauthenticated_with_a_hint(live_server: LiveServer) -> None:
    with Client(live_server.url, "") as c, pytest.raises(writ.Unauthenticated) as exc:
        c.leases()
    assert "WRIT_TOKEN" in str(exc.value)
    with Client(live_server.url, "wrong") as c, pytest.raises(writ.Unauthenticated):
        c.leases()


def test_refusals_are_typed_errors_with_details(live_server: LiveServer, agent: Client) -> None:
    """409 held names the holder and queue position; 403, 404, 410 and 422 have classes."""
    res = f"{unique('r')}/db"
    lease = agent.acquire(res, "first", ttl_s=30)
    _, other_token = live_server.principal("agent")
    with live_server.client(other_token) as other:
        with pytest.raises(writ.Held) as held:
            other.acquire(res, "second")
        assert held.value.holder["holder"] == lease["holder"]
        assert held.value.queue_position == 1
        assert isinstance(held.value, writ.WritError) and held.value.status == 409
        with pytest.raises(writ.Forbidden):
            other.release(lease["lease_id"])
    with pytest.raises(writ.NotFound):
        agent.get_lease("ls_nope")
    with pytest.raises(writ.Invalid) as invalid:
        agent.acquire("Not A Path", "x")
    assert "segment" in str(invalid.value)
    agent.release(lease["lease_id"])
    with pytest.raises(writ.LeaseLost):
        agent.renew(lease["lease_id"])


def test_lease_routes_round_trip(live_server: LiveServer, agent: Client) -> None:
    res = f"{unique('r')}/db"
    lease = agent.acquire(res, "resize", ttl_s=20, touches=["capacity"])
    assert lease["lock_key"] == f"{res}/{lease['fencing_token']}"
    assert agent.renew(lease["lease_id"], ttl_s=25)["ttl_s"] == 25
    assert agent.get_lease(lease["lease_id"])["state"] == "held"
    assert [l["lease_id"] for l in agent.leases(res, "held")["leases"]] == [lease["lease_id"]]
    assert agent.status(res)["leases"][0]["waiters"] == 0
    assert agent.resource(res)["lease"]["lease_id"] == lease["lease_id"]
    assert agent.who(res)["lock_holder"] == lease["holder"]
    assert agent.fence(res, lease["fencing_token"])["current"] is True
    assert agent.fence(res, lease["fencing_token"] - 1)["current"] is False
    assert agent.whoami()["name"] == lease["holder"]
    assert agent.release(lease["lease_id"])["state"] == "released"
    assert agent.who(res)["lock_holder"] == "none"


def test_principals_and_revoke(live_server: LiveServer, agent: Client, human: Client) -> None:
    name = unique("queue")
    with live_server.client() as admin:
        out = admin.add_principal(name, "queue", wake="https://pager.example/wake")
        assert out["token"].startswith("writ_")
        assert name in [p["name"] for p in admin.principals()["principals"]]
    lease = agent.acquire(unique("r"), "x")
    with pytest.raises(writ.Forbidden):
        agent.revoke(lease["lease_id"], "R-1", "oncall", "stuck")
    revoked = human.revoke(lease["lease_id"], "R-1", "oncall", "stuck", waive_lock_delay=True)
    assert revoked["state"] == "revoked"


def test_audit_paging_last_seq_and_verify(live_server: LiveServer, agent: Client) -> None:
    res = unique("r")
    for _ in range(3):
        agent.release(agent.acquire(res, "x")["lease_id"])
    rows = list(agent.iter_audit(resource=res, page=2))
    assert [r["event"] for r in rows] == ["lease.granted", "lease.released"] * 3
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert agent.last_seq() >= rows[-1]["seq"]
    everything = list(agent.iter_audit(page=50))
    assert [r["seq"] for r in everything] == list(range(1, len(everything) + 1))
    assert agent.last_seq() >= len(everything)
    assert agent.verify()["ok"] is True


def test_watch_sees_a_grant_made_elsewhere(live_server: LiveServer, agent: Client) -> None:
    res = unique("r")
    stream = agent.watch(res, after_seq=agent.last_seq())
    with in_background(lambda: agent.acquire(res, "watched", ttl_s=5), delay=0.1):
        row = next(stream)  # the long poll answers when the grant commits
    assert row["event"] == "lease.granted" and row["resource"] == res


# ----------------------------------------------------------------------------- held leases
def test_lease_renews_in_the_background(live_server: LiveServer, agent: Client) -> None:
    """A ttl=1 lease outlives its ttl several times over while the block runs."""
    res = unique("r")
    start = agent.last_seq()
    with agent.lease(res, intent="long job", ttl_s=1) as lease:
        wait_for_rows(agent, res, "lease.renewed", 5, after=start)  # ~1.7 s > ttl
        lease.check()
        assert agent.get_lease(lease.lease_id)["state"] == "held"
        assert lease.headers() == {
            "Writ-Lease": lease.lease_id,
            "Writ-Fencing-Token": str(lease.fencing_token),
        }
        assert lease.lock_key == f"{res}/{lease.fencing_token}"
        assert not lease.lost.is_set()
    assert agent.get_lease(lease.lease_id)["state"] == "released"


def test_revoked_lease_raises_lease_lost(
    live_server: LiveServer, agent: Client, human: Client
) -> None:
    """A human revokes the lease mid-block: check() raises, and so does leaving the block."""
    lost: list[writ.LeaseLost] = []
    with pytest.raises(writ.LeaseLost) as exc:
        with agent.lease(unique("r"), intent="job", ttl_s=1, on_lost=lost.append) as lease:
            human.revoke(lease.lease_id, "R-7", "oncall", "stuck holder")
            assert lease.lost.wait(5)
            with pytest.raises(writ.LeaseLost):
                lease.check()
            with pytest.raises(writ.LeaseLost):
                lease.headers()
    assert "revoked" in str(exc.value)
    assert lost and lost[0] is exc.value


def test_a_renewal_asked_by_hand_and_refused_loses_the_lease(
    live_server: LiveServer, agent: Client, human: Client
) -> None:
    """``lease.renew()`` refused after a revoke raises LeaseLost and loses the lease as a
    background renewal would: ``lost`` set, ``on_lost`` called once, ``check()`` raising
    (it raised to the caller alone, and the lease still passed its checks)."""
    lost: list[writ.LeaseLost] = []
    with pytest.raises(writ.LeaseLost):
        with agent.lease(unique("r"), intent="job", ttl_s=600, on_lost=lost.append) as lease:
            human.revoke(lease.lease_id, "R-7", "oncall", "stuck holder")
            with pytest.raises(writ.LeaseLost) as exc:
                lease.renew()
            assert lease.lost.is_set() and lost == [exc.value]
            with pytest.raises(writ.LeaseLost):
                lease.check()


def test_body_exception_wins_over_lease_lost(
    live_server: LiveServer, agent: Client, human: Client
) -> None:
    with pytest.raises(KeyError), agent.lease(unique("r"), intent="job", ttl_s=1) as lease:
        human.revoke(lease.lease_id, "R-7", "oncall", "stuck holder")
        assert lease.lost.wait(5)  # the loss is known: leaving the block would raise it
        raise KeyError("mine")


def test_unrenewable_lease_is_lost_at_its_expiry(tmp_path: Path) -> None:
    """With the server gone, the lease counts as lost once its ttl has run out."""
    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent")
        client = srv.client(token, timeout=0.5)
        lease = client.lease("prod/db", intent="job", ttl_s=1).acquire()
    started = time.monotonic()
    assert lease.lost.wait(5)
    assert time.monotonic() - started < 1.5
    assert isinstance(lease.error, writ.LeaseLost)
    assert "could not be renewed before it expired" in str(lease.error)
    with pytest.raises(writ.LeaseLost):
        lease.close()
    client.close()


def test_lease_fields_need_a_grant(agent: Client) -> None:
    lease = agent.lease("prod/db", intent="x")
    with pytest.raises(RuntimeError, match="not acquired"):
        _ = lease.lease_id


# ----------------------------------------------------------------------------- safety
def test_consent_flow(live_server: LiveServer) -> None:
    """A protected change refuses another agent until its author consents, once."""
    res = f"{unique('r')}/db"
    _, perf_token = live_server.principal("agent")
    _, cost_token = live_server.principal("agent")
    with live_server.client(perf_token) as perf, live_server.client(cost_token) as cost:
        lease = perf.acquire(res, "double capacity", touches=["capacity"])
        change = perf.change(lease["lease_id"], "capacity", "capacity 4→8", 4, 8, protect_s=600)
        assert change["attribute"] == "capacity" and change["protected_until"]
        assert perf.get_change(change["change_id"])["change_id"] == change["change_id"]
        perf.release(lease["lease_id"])
        with pytest.raises(writ.ConsentRequired):
            cost.acquire(res, "consolidate", touches=["capacity"])
        asked = cost.ask_consent(change["change_id"], "overprovisioned")
        assert asked["status"] == "pending"
        assert cost.consent(asked["consent_id"])["status"] == "pending"
        with in_background(lambda: perf.grant_consent(asked["consent_id"]), delay=0.1):
            assert cost.consent(asked["consent_id"], wait_s=5)["status"] == "granted"
        ok = cost.acquire(res, "consolidate", touches=["capacity"], consent_id=asked["consent_id"])
        cost.release(ok["lease_id"])
        with pytest.raises(writ.ConsentRequired):
            cost.acquire(res, "again", touches=["capacity"])
        denied = cost.ask_consent(change["change_id"], "once more")
        assert perf.deny_consent(denied["consent_id"])["status"] == "denied"


class _Receiver(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        _Receiver.calls.append({"path": self.path, "body": json.loads(body or b"{}")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_rollback_flow(live_server: LiveServer) -> None:
    """Anyone requests; the agent cannot approve; the key-holder queue runs the route once."""
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        queue, queue_token = live_server.principal("queue")
        _, agent_token = live_server.principal("agent")
        route = f"http://127.0.0.1:{receiver.server_port}/ops/rollback?txn=1"
        plan = {"allowed": True, "path": route, "key_holder": queue, "override_queue": queue}
        with live_server.client(agent_token) as agent, live_server.client(queue_token) as q:
            lease = agent.acquire(unique("r"), "resize", rollback=plan)
            assert lease["rollback"]["key_holder"] == queue
            rb = agent.request_rollback("made it worse", lease_id=lease["lease_id"])
            assert rb["status"] == "pending" and rb["path"] == route
            with pytest.raises(writ.Forbidden, match="only the human queue holds the key"):
                agent.approve_rollback(rb["rollback_id"])
            done = q.approve_rollback(rb["rollback_id"])
            assert done["status"] == "executed" and done["approved_by"] == queue
            assert q.get_rollback(rb["rollback_id"])["status"] == "executed"
            executed = q.rollbacks("executed")["rollbacks"]
            assert rb["rollback_id"] in [r["rollback_id"] for r in executed]
            assert q.rollback_defect(rb["rollback_id"], "took the cache down")["defect"] is True
            with pytest.raises(writ.Invalid):
                agent.request_rollback("x")
        assert [c["path"] for c in _Receiver.calls] == ["/ops/rollback?txn=1"]
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_freeze_flow(live_server: LiveServer, human: Client) -> None:
    prefix = unique("r")
    allowed_name, allowed_token = live_server.principal("agent")
    _, agent_token = live_server.principal("agent")
    f = human.freeze(prefix, "incident 4411", until="30m", allow=[allowed_name])
    assert f["freeze_id"] in [x["freeze_id"] for x in human.freezes()["freezes"]]
    with live_server.client(agent_token) as agent, live_server.client(allowed_token) as allowed:
        with pytest.raises(writ.Frozen):
            agent.acquire(f"{prefix}/db", "x")
        allowed.release(allowed.acquire(f"{prefix}/db", "allowed in")["lease_id"])
        with pytest.raises(writ.Forbidden):
            agent.freeze(prefix, "agents may not")
        human.lift_freeze(f["freeze_id"])
        agent.release(agent.acquire(f"{prefix}/db", "after the lift")["lease_id"])
    assert f["freeze_id"] in [x["freeze_id"] for x in human.freezes(include_lifted=True)["freezes"]]


# ----------------------------------------------------------------------------- async
async def test_async_client_in_process(tmp_path: Path) -> None:
    """AsyncClient over ASGITransport: routes, errors, and ``async with client.lease``."""
    from writ.api.app import create_app
    from writ.engine import Engine
    from writ.stores import open_store

    engine = Engine(open_store(f"sqlite:///{tmp_path / 'w.db'}"))
    await engine.start()
    try:
        await engine.bootstrap_admin("async-admin")
        transport = httpx.ASGITransport(app=create_app(engine, start_engine=False))
        async with AsyncClient("http://writ.test", "async-admin", transport=transport) as admin:
            assert (await admin.health())["ok"] is True
            agent_token = (await admin.add_principal("async-agent", "agent"))["token"]
            await admin.add_principal("async-human", "human")
            async with AsyncClient("http://writ.test", agent_token, transport=transport) as agent:
                async with agent.lease("prod/db", intent="job", ttl_s=1) as lease:
                    renewed, after = 0, 0
                    while renewed < 4:  # ~1.3 s, past the ttl: only renewals keep it
                        out = await agent.events("prod/db", after, wait_s=2)
                        renewed += sum(r["event"] == "lease.renewed" for r in out["rows"])
                        after = out["next_after_seq"]
                    lease.check()
                    assert (await agent.get_lease(lease.lease_id))["state"] == "held"
                    with pytest.raises(writ.Held):
                        await admin.acquire("prod/db", "second")
                assert (await agent.get_lease(lease.lease_id))["state"] == "released"

                with pytest.raises(writ.LeaseLost):
                    async with agent.lease("prod/db", intent="job", ttl_s=1) as lease:
                        await admin.revoke(lease.lease_id, "R-1", "oncall", "stuck")
                        await asyncio.wait_for(lease.lost.wait(), 5)
                        with pytest.raises(writ.LeaseLost):
                            lease.check()
                rows = [r async for r in agent.iter_audit(resource="prod", page=2)]
                assert rows[-1]["event"] == "lease.revoked"
                assert await agent.last_seq() >= rows[-1]["seq"]
    finally:
        await engine.stop()
