"""Where writ calls an agent's rollback route: the policy's ``rollback_hosts``.

A rollback route is an agent's choice, and writ calls it (signed with the webhook secret)
once a human approves. ``rollback_hosts`` lists the hosts such a route may name; relative
routes and the host of ``rollback_base_url`` are always allowed; a route carrying
credentials is refused (the trail shows it to every reader); a redirect is never followed.
Real HTTP receivers record what reached them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.test_safety import Receiver
from writ.api.app import create_app
from writ.core.clock import ManualClock
from writ.core.errors import PolicyError
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.sqlite import SQLiteStore


@pytest.fixture
def base() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def allowed() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def other() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class W:
    def __init__(self, engine: Engine, http: httpx.AsyncClient) -> None:
        self.engine, self.http = engine, http
        self.tokens: dict[str, str] = {}

    async def add(self, name: str, kind: str) -> None:
        _, self.tokens[name] = await self.engine.add_principal(None, name, kind)

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(
            path, json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )

    async def lease(self, path: str) -> httpx.Response:
        plan = {
            "allowed": True,
            "path": path,
            "key_holder": "ops-queue",
            "override_queue": "ops-queue",
        }
        return await self.post(
            "perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "scale", "rollback": plan}
        )

    async def approve(self, lease: dict[str, Any]) -> dict[str, Any]:
        r = await self.post(
            "cost-agent", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "latency"}
        )
        assert r.status_code == 201, r.text
        r = await self.post("ops-queue", f"/v1/rollbacks/{r.json()['rollback_id']}/approve")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def rows(self, event: str) -> list[dict[str, Any]]:
        rows = (await self.engine.audit(0, 100_000))["rows"]
        return [r for r in rows if r["event"] == event]


def _host(r: Receiver) -> str:
    return r.base.removeprefix("http://")


@contextlib.asynccontextmanager
async def _serving(tmp_path: Any, policy: str, *names: tuple[str, str]) -> AsyncIterator[W]:
    """writ on a fresh store under ``policy``, with the principals ``names`` (name, kind)."""
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=ManualClock()), parse(policy))
    await engine.start(background=False)
    app = create_app(engine, start_engine=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as http:
            w = W(engine, http)
            for name, kind in names:
                await w.add(name, kind)
            yield w
    finally:
        await engine.stop()


@pytest.fixture
async def world(tmp_path: Any, base: Receiver, allowed: Receiver) -> AsyncIterator[W]:
    policy = (
        f'rollback_base_url = "{base.base}"\n'
        f'rollback_hosts = ["{_host(allowed)}", "*.ops.example"]\n'
    )
    names = (("perf-agent", "agent"), ("cost-agent", "agent"), ("ops-queue", "queue"))
    async with _serving(tmp_path, policy, *names) as w:
        yield w


async def test_a_route_to_a_host_the_policy_does_not_list_is_refused_at_acquire(
    world: W, other: Receiver
) -> None:
    before = len(await world.rows("lease.granted"))
    for route in (
        f"{other.base}/ops/rollback",  # another port of the same address
        f"http://localhost:{other.base.rsplit(':', 1)[1]}/ops/rollback",
        "http://ops.example/rollback",  # the wildcard's domain itself is not below it
        "http://0x7f.1/rollback",  # 127.0.0.1 spelled for inet_aton: names no listed host
    ):
        r = await world.lease(route)
        assert r.status_code == 422, (route, r.text)
        err = r.json()["error"]
        assert err["field"] == "rollback.path" and "rollback_hosts" in err["message"], err
    assert len(await world.rows("lease.granted")) == before  # nothing was granted


async def test_listed_hosts_the_base_url_and_relative_routes_are_called(
    world: W, base: Receiver, allowed: Receiver
) -> None:
    for route, rx, path in (
        (f"{allowed.base}/ops/rollback?txn=1", allowed, "/ops/rollback?txn=1"),
        (f"{base.base}/ops/rollback?txn=2", base, "/ops/rollback?txn=2"),
        ("/ops/rollback?txn=3", base, "/ops/rollback?txn=3"),
    ):
        r = await world.lease(route)
        assert r.status_code == 201, r.text
        done = await world.approve(r.json())
        assert done["status"] == "executed", done
        assert rx.paths()[-1] == path
        r = await world.post("perf-agent", f"/v1/leases/{r.json()['lease_id']}/release")
        assert r.status_code == 200


async def test_a_route_carrying_credentials_is_refused(tmp_path: Any, base: Receiver) -> None:
    """Even with no rollback_hosts: the route would be written in the trail for every reader."""
    policy = f'rollback_base_url = "{base.base}"\n'
    async with _serving(tmp_path, policy, ("perf-agent", "agent"), ("ops-queue", "queue")) as w:
        host = _host(base)
        for route in (f"http://ops:s3cret@{host}/r", f"http://evil.example\\@{host}/r"):
            r = await w.lease(route)
            assert r.status_code == 422, (route, r.text)
            assert "credentials" in r.json()["error"]["message"]
            assert "s3cret" not in r.text
        r = await w.lease(f"http://{host}/r")  # any host without rollback_hosts (v1)
        assert r.status_code == 201, r.text


async def test_a_route_frozen_before_the_policy_narrowed_is_not_called(
    world: W, allowed: Receiver, other: Receiver
) -> None:
    r = await world.lease(f"{allowed.base}/ops/rollback")
    assert r.status_code == 201, r.text
    pol = world.engine.policy
    world.engine.policy = parse(
        f'rollback_base_url = "{pol.rollback_base_url}"\nrollback_hosts = ["{_host(other)}"]\n'
    )
    done = await world.approve(r.json())
    assert done["status"] == "failed" and done["response_status"] is None, done
    assert "rollback_hosts" in done["error"], done
    assert allowed.calls == []  # never called
    row = (await world.rows("rollback.failed"))[-1]
    assert "rollback_hosts" in row["notes"], row


async def test_a_redirect_is_not_followed_nor_counted_as_done(
    world: W, allowed: Receiver, other: Receiver
) -> None:
    allowed.status["/ops/moved"] = 307
    allowed.location = f"{other.base}/ops/rollback"
    r = await world.lease(f"{allowed.base}/ops/moved")
    assert r.status_code == 201, r.text
    done = await world.approve(r.json())
    assert done["status"] == "failed" and done["response_status"] == 307, done
    assert "redirect" in done["error"], done
    assert other.calls == []


@pytest.mark.parametrize(
    "value, why",
    [
        ('"ops.internal"', "must be a list"),
        ('["http://ops.internal"]', "not a host name"),
        ('["ops.internal/rollback"]', "not a host name"),
        ('["user@ops.internal"]', "not a host name"),
        ('["*"]', "not a host name"),
        ('["ops.internal:99999"]', "1 to 65535"),
        ('["ops.internal:http"]', "not a host name"),
        ("[1]", "must be a host name"),
    ],
)
def test_bad_rollback_hosts_are_a_policy_error_with_its_line(value: str, why: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(f'rollback_base_url = "http://127.0.0.1:9000"\nrollback_hosts = {value}\n')
    assert why in str(exc.value) and exc.value.line == 2, str(exc.value)


def test_rollback_hosts_are_read_as_httpx_connects() -> None:
    pol = parse('rollback_hosts = ["OPS.Internal", "[::1]:8443", "*.ops.example", "пример.рф"]\n')
    assert pol.to_dict()["rollback_hosts"] == [
        "ops.internal",
        "[::1]:8443",
        "*.ops.example",
        "xn--e1afmkfd.xn--p1ai",
    ]
    assert parse("").rollback_hosts is None and parse("rollback_hosts = []\n").rollback_hosts == ()
