"""How quickly a credential stops working, on both stores.

- A long poll (``/v1/events``, a consent) opened before its principal is disabled or
  rotated, or before its token expires, is answered 401 — as a fresh request with that
  token is — never with rows written since: at once when the change commits on its server,
  and when it would answer otherwise (a change made by hand, or on another server).
- A rotate takes the principal's queued requests out of the queue, as a disable does.
- A rotate, and an enable, cut off every JWT issued for the principal until then (``iat``);
  a JWT without ``iat`` is refused once there is a cut-off.
- A JWT signed with a key writ knows is answered from the last good key set while a slow
  refresh of a stale one runs; it never waits on the identity provider.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stores_fixtures import Backend
from tests.test_identity import RSA_ISS, Clock, Jwks, Key
from tests.test_principals import Server
from writ.api.app import create_app
from writ.core import identity
from writ.core.identity import JWKS_LIFESPAN_S
from writ.core.policy import parse
from writ.engine import Engine
from writ.engine.cutoff import cut_off_at
from writ.stores.base import Tx

pytestmark = pytest.mark.usefixtures("no_admin_env")

SECRET = {"resource": "prod/secret-db", "intent": "rotate the root password", "ttl_s": 5}


class Srv(Server):
    """One engine behind its own in-process HTTP app (``app``: to reach its relay, waits)."""

    def __init__(self, engine: Engine, app: Any, http: httpx.AsyncClient) -> None:
        super().__init__(engine, http)
        self.app = app

    async def head(self, token: str) -> int:
        """Where the ledger ends now (an events cursor)."""
        return int((await self.ok(token, "GET", "/v1/events"))["next_after_seq"])

    async def polling(
        self, token: str, who: str, path: str, **params: Any
    ) -> asyncio.Future[httpx.Response]:
        """A long poll (``wait_s`` 30) of ``who``, returned once its token was checked and it
        waits (counted among ``who``'s waiting requests)."""
        poll = asyncio.ensure_future(self.call(token, "GET", path, wait_s=30, **params))
        deadline = time.monotonic() + 5
        while self.app.waits.held(who) == 0:
            assert not poll.done(), poll.result().text
            assert time.monotonic() < deadline, "the poll never began to wait"
            await asyncio.sleep(0.001)
        return poll


@asynccontextmanager
async def serving(engine: Engine) -> AsyncIterator[Srv]:
    app = create_app(engine, start_engine=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as http:
        yield Srv(engine, app, http)


@pytest.fixture
async def world(make_engine: Callable[..., Any]) -> AsyncIterator[tuple[Srv, dict[str, str]]]:
    engine: Engine = await make_engine()
    tokens: dict[str, str] = {}
    for name, kind, admin in (
        ("boss", "human", True),
        ("perf-agent", "agent", False),
        ("cost-agent", "agent", False),
    ):
        _, tokens[name] = await engine.add_principal(None, name, kind, admin=admin)
    async with serving(engine) as s:
        yield s, tokens


def _refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "unauthenticated", err
    for w in words:
        assert w in err["message"], err["message"]


async def _by_hand(s: Srv, backend: Backend, statement: str) -> None:
    """Run ``statement`` on the store behind writ's back; on PostgreSQL, return once the
    server heard of it (the principals table's trigger notifies)."""
    heard = s.engine.auth_cache.generation
    await backend.sql(statement)
    deadline = time.monotonic() + 5
    while backend.is_pg and s.engine.auth_cache.generation == heard:
        assert time.monotonic() < deadline, "the server never heard of the hand edit"
        await asyncio.sleep(0.005)


async def _until(engine: Engine, event: str) -> None:
    """Wait (on the engine's event feed, no polling) until a row of ``event`` exists."""
    after = 0
    while True:
        out = await engine.events(None, after, wait_s=10)
        assert out["rows"], f"no {event} row in time"
        if any(r["event"] == event for r in out["rows"]):
            return
        after = out["next_after_seq"]


async def _store_now(engine: Engine) -> float:
    async def now(tx: Tx) -> float:
        return tx.now()

    return await engine.store.read(now)


async def _cut(engine: Engine, name: str) -> float:
    async def at(tx: Tx) -> float | None:
        return await cut_off_at(tx, name)

    found = await engine.store.read(at)
    assert found is not None, f"{name} has no cut-off"
    return found


# ----------------------------------------------------------------------- waits, this server
@pytest.mark.parametrize("action", ["disable", "rotate"])
async def test_an_events_long_poll_ends_401_at_once_when_its_principal_changes(
    world: tuple[Srv, dict[str, str]], action: str
) -> None:
    """The poll was checked when it arrived; the disable (or rotate) commits on its server
    while it waits: it is answered 401 then — with the error a fresh request with its token
    gets — not at wait_s, and never with a row written since."""
    s, tok = world
    after = await s.head(tok["perf-agent"])
    poll = await s.polling(
        tok["perf-agent"], "perf-agent", "/v1/events", resource="prod", after_seq=after
    )
    body = {"reason": "token leaked"} if action == "disable" else None
    await s.ok(tok["boss"], "POST", f"/v1/principals/perf-agent/{action}", body)
    r = await asyncio.wait_for(poll, 10)  # not at its wait_s (30 s)
    _refused(r, "disabled" if action == "disable" else "unknown token")
    fresh = await s.call(tok["perf-agent"], "GET", "/v1/whoami")
    assert r.json() == fresh.json()
    assert s.app.waits.held("perf-agent") == 0
    # and after it, the row a poll of it would have been answered with
    await s.ok(tok["boss"], "POST", "/v1/leases", SECRET)
    _refused(await s.call(tok["perf-agent"], "GET", "/v1/events", resource="prod"))


async def test_a_consent_long_poll_ends_401_at_once_when_its_asker_is_disabled(
    world: tuple[Srv, dict[str, str]],
) -> None:
    s, tok = world
    lease = await s.ok(
        tok["perf-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "scale"}
    )
    change = await s.ok(
        tok["perf-agent"],
        "POST",
        f"/v1/leases/{lease['lease_id']}/changes",
        {"attribute": "capacity", "summary": "4 to 6"},
    )
    ask = await s.ok(
        tok["cost-agent"], "POST", "/v1/consents", {"change_id": change["change_id"], "reason": "r"}
    )
    path = f"/v1/consents/{ask['consent_id']}"
    poll = await s.polling(tok["cost-agent"], "cost-agent", path)
    await s.ok(tok["boss"], "POST", "/v1/principals/cost-agent/disable", {"reason": "leaked"})
    _refused(await asyncio.wait_for(poll, 10), "disabled")
    # the answer it waited for comes later, and reaches nobody
    await s.ok(tok["perf-agent"], "POST", f"{path}/deny")
    _refused(await s.call(tok["cost-agent"], "GET", path))


async def test_a_rotate_takes_its_principals_queued_requests_out_of_the_queue(
    world: tuple[Srv, dict[str, str]],
) -> None:
    """As a disable does: the queued acquire was asked with the old token, now refused (its
    caller gets 401, a lease.denied row says why), and is never granted later."""
    s, tok = world
    held = await s.ok(
        tok["cost-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "a"}
    )
    waiting = asyncio.ensure_future(
        s.call(
            tok["perf-agent"],
            "POST",
            "/v1/leases",
            {"resource": "prod/db", "intent": "b", "wait_s": 30},
        )
    )
    await _until(s.engine, "lease.queued")
    out = await s.ok(tok["boss"], "POST", "/v1/principals/perf-agent/rotate")
    assert len(out["withdrawn"]) == 1
    _refused(await asyncio.wait_for(waiting, 10), "rotated")
    rows = (await s.engine.audit(0, 10_000))["rows"]
    denied = [r for r in rows if r["event"] == "lease.denied" and r["agent_id"] == "perf-agent"]
    assert len(denied) == 1 and "rotated" in denied[0]["notes"], denied
    await s.ok(tok["cost-agent"], "POST", f"/v1/leases/{held['lease_id']}/release")
    r = await s.call(tok["boss"], "GET", "/v1/leases", holder="perf-agent", state="held")
    assert r.json()["leases"] == []
    assert (await s.engine.verify()).ok


# ------------------------------------------------------------- waits, a change made elsewhere
@pytest.mark.parametrize("change", ["disabled by hand", "expired"])
async def test_a_long_poll_answers_401_not_the_rows_written_after_a_change_made_elsewhere(
    world: tuple[Srv, dict[str, str]], backend: Backend, change: str
) -> None:
    """A change this server made no commit of (a hand edit of the store; a token that
    expired meanwhile) wakes no poll: the poll is checked again when it would answer, and
    answers 401 rather than the lease.granted row written after the change."""
    s, tok = world
    who, token = "perf-agent", tok["perf-agent"]
    if change == "expired":
        who = "short-lived"
        _, token = await s.engine.add_principal(None, who, "agent", expires_in_s=60)
    poll = await s.polling(token, who, "/v1/events", resource="prod", after_seq=await s.head(token))
    if change == "expired" and not backend.is_pg:
        await backend.advance(120)
    elif change == "expired":  # the database's clock cannot be moved: the expiry is moved
        await _by_hand(
            s, backend, f"UPDATE principals SET token_expires_at = 1 WHERE name = '{who}'"
        )
    else:
        await _by_hand(
            s,
            backend,
            f"UPDATE principals SET disabled_at = 1, disabled_reason = 'x' WHERE name = '{who}'",
        )
    await s.ok(tok["boss"], "POST", "/v1/leases", SECRET)
    _refused(await asyncio.wait_for(poll, 10), "expired" if change == "expired" else "disabled")


async def test_a_long_poll_on_another_server_answers_401_not_the_rows_written_since(
    pg_backend: Backend, no_admin_env: None
) -> None:
    """Two servers on one PostgreSQL store: the poll waits on b, the rotate commits on a,
    a row is written on a; b answers the poll 401 (it heard of the rotate), not the row."""
    a, b = Engine(pg_backend.open_store()), Engine(pg_backend.open_store())
    await a.start(background=False)
    await b.start(background=False)
    try:
        _, boss = await a.add_principal(None, "boss", "human", admin=True)
        _, agent = await a.add_principal(None, "perf-agent", "agent")
        async with serving(a) as sa, serving(b) as sb:
            after = await sb.head(agent)
            poll = await sb.polling(
                agent, "perf-agent", "/v1/events", resource="prod", after_seq=after
            )
            heard = b.auth_cache.generation
            await sa.ok(boss, "POST", "/v1/principals/perf-agent/rotate")
            deadline = time.monotonic() + 5
            while b.auth_cache.generation == heard:
                assert time.monotonic() < deadline, "b never heard of the rotate"
                await asyncio.sleep(0.005)
            await sa.ok(boss, "POST", "/v1/leases", SECRET)
            _refused(await asyncio.wait_for(poll, 10), "unknown token")
    finally:
        await b.stop()
        await a.stop()


# ----------------------------------------------------------------------------------- JWTs
@pytest.fixture
def jwks() -> Iterator[Jwks]:
    """A JWKS endpoint on loopback (test_identity's), which a test may slow down."""
    j = Jwks()
    yield j
    j.close()


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return Key("rsa")


@pytest.fixture
async def signed_in(
    make_engine: Callable[..., Any], jwks: Jwks, rsa_key: Key, tmp_path: Path
) -> AsyncIterator[tuple[Srv, str]]:
    """An issuer on a real JWKS server on loopback; agents perf-agent and cost-agent; the
    admin's writ token."""
    jwks.keys = [rsa_key.jwk]
    policy = f"""
[[identity.jwt]]
issuer = "{RSA_ISS}"
audience = "writ"
jwks_url = "{jwks.url}"
kinds = ["agent"]
"""
    engine: Engine = await make_engine(parse(policy))
    _, admin = await engine.add_principal(None, "boss", "human", admin=True)
    await engine.add_principal(None, "perf-agent", "agent")
    await engine.add_principal(None, "cost-agent", "agent")
    async with serving(engine) as s:
        yield s, admin


async def test_a_rotate_cuts_off_the_jwts_issued_before_it(
    signed_in: tuple[Srv, str], rsa_key: Key
) -> None:
    s, admin = signed_in
    now = await _store_now(s.engine)
    leaked = rsa_key.sign(RSA_ISS, "perf-agent", iat=math.floor(now) - 10)
    bare = rsa_key.sign(RSA_ISS, "perf-agent", iat=None)  # says nothing of when
    assert (await s.call(leaked, "GET", "/v1/whoami")).status_code == 200
    assert (await s.call(bare, "GET", "/v1/whoami")).status_code == 200  # no cut-off yet

    await s.ok(admin, "POST", "/v1/principals/perf-agent/rotate")
    cut = await _cut(s.engine, "perf-agent")
    _refused(await s.call(leaked, "GET", "/v1/whoami"), "cut off", "rotated")
    _refused(await s.call(bare, "GET", "/v1/whoami"), "no iat")
    # iat is whole seconds: one issued in the second of the cut-off may be from before it
    same_second = rsa_key.sign(RSA_ISS, "perf-agent", iat=math.floor(cut))
    _refused(await s.call(same_second, "GET", "/v1/whoami"), "cut off")
    fresh = rsa_key.sign(RSA_ISS, "perf-agent", iat=math.floor(cut) + 1)
    assert (await s.call(fresh, "GET", "/v1/whoami")).json()["name"] == "perf-agent"
    # another principal's JWTs are not cut off
    other = rsa_key.sign(RSA_ISS, "cost-agent", iat=None)
    assert (await s.call(other, "GET", "/v1/whoami")).json()["name"] == "cost-agent"


async def test_disable_and_enable_do_not_bring_a_leaked_jwt_back(
    signed_in: tuple[Srv, str], rsa_key: Key
) -> None:
    s, admin = signed_in
    now = await _store_now(s.engine)
    leaked = rsa_key.sign(
        RSA_ISS, "perf-agent", iat=math.floor(now) - 10, exp=int(time.time()) + 3600
    )
    assert (await s.call(leaked, "GET", "/v1/whoami")).status_code == 200
    await s.ok(admin, "POST", "/v1/principals/perf-agent/disable", {"reason": "JWT leaked"})
    _refused(await s.call(leaked, "GET", "/v1/whoami"), "disabled")
    await s.ok(admin, "POST", "/v1/principals/perf-agent/enable")
    _refused(await s.call(leaked, "GET", "/v1/whoami"), "cut off", "enabled")
    cut = await _cut(s.engine, "perf-agent")
    fresh = rsa_key.sign(RSA_ISS, "perf-agent", iat=math.floor(cut) + 1)
    assert (await s.call(fresh, "GET", "/v1/whoami")).status_code == 200
    assert (await s.engine.verify()).ok


async def test_a_jwts_long_poll_ends_401_at_a_rotate(
    signed_in: tuple[Srv, str], rsa_key: Key
) -> None:
    s, admin = signed_in
    now = await _store_now(s.engine)
    jwt_ = rsa_key.sign(RSA_ISS, "perf-agent", iat=math.floor(now) - 10)
    poll = await s.polling(
        jwt_, "perf-agent", "/v1/events", resource="prod", after_seq=await s.head(admin)
    )
    await s.ok(admin, "POST", "/v1/principals/perf-agent/rotate")
    _refused(await asyncio.wait_for(poll, 10), "cut off")


# ------------------------------------------------------------------------ a slow key refresh
async def test_a_known_key_is_answered_while_a_slow_refresh_of_a_stale_set_runs(
    signed_in: tuple[Srv, str], rsa_key: Key, jwks: Jwks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key set is older than its lifespan and the identity provider holds the refresh
    (a real HTTP server that answers only once told to): a JWT signed with a key writ
    knows is answered from the last good set at once, while the refresh runs."""
    monkeypatch.setattr(identity, "FETCH_TIMEOUT_S", 60.0)  # the held fetch is not given up
    s, _ = signed_in
    keys = s.engine.identity.keys[RSA_ISS]
    keys.clock = clock = Clock()
    assert (await s.call(rsa_key.sign(RSA_ISS, "perf-agent"), "GET", "/v1/whoami")).is_success
    assert jwks.fetches == 1
    clock.t += JWKS_LIFESPAN_S + 1
    jwks.hold, jwks.asked = threading.Event(), threading.Event()
    try:
        for name in ("perf-agent", "cost-agent", "perf-agent"):
            r = await asyncio.wait_for(s.call(rsa_key.sign(RSA_ISS, name), "GET", "/v1/whoami"), 10)
            assert r.status_code == 200, r.text
        assert await asyncio.to_thread(jwks.asked.wait, 10)  # the refresh is asked for...
        assert not jwks.hold.is_set()  # ...and still held: the answers did not wait on it
        assert keys.refreshing is not None and not keys.refreshing.done()
    finally:
        jwks.hold.set()
    assert keys.refreshing is not None
    await asyncio.wait_for(keys.refreshing, 10)
    assert jwks.fetches == 2 and keys.fetches == 2  # one refresh for all of them
