"""Token lifecycle and queue membership (PROTOCOL.md v1.1), over HTTP, on both stores:
rotate, disable, enable, expiry; a refused token stays refused at once — on this server,
after a hand edit of the store, and within 1 s on every server sharing a PostgreSQL store;
an existing store upgrades in place; only a key-holder queue or its members turn its key."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_fixtures import ADMIN_TOKEN, writ_servers
from tests.stores_fixtures import Backend
from writ.api.app import create_app
from writ.engine import Engine
from writ.evidence.lint import check_row

pytestmark = pytest.mark.usefixtures("no_admin_env")


class Server:
    """One engine behind its own in-process HTTP app."""

    def __init__(self, engine: Engine, http: httpx.AsyncClient) -> None:
        self.engine, self.http = engine, http

    async def call(
        self, token: str, method: str, path: str, body: Any = None, **params: Any
    ) -> httpx.Response:
        return await self.http.request(
            method,
            path,
            json=body,
            params=params or None,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def ok(self, token: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        r = await self.call(token, method, path, body)
        assert r.status_code in (200, 201), r.text
        out: dict[str, Any] = r.json()
        return out

    async def whoami(self, token: str) -> int:
        return (await self.call(token, "GET", "/v1/whoami")).status_code


@asynccontextmanager
async def server(engine: Engine) -> AsyncIterator[Server]:
    app = create_app(engine, start_engine=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as http:
        yield Server(engine, http)


@pytest.fixture
async def world(make_engine: Callable[..., Any]) -> AsyncIterator[tuple[Server, dict[str, str]]]:
    engine: Engine = await make_engine()
    tokens: dict[str, str] = {}
    for name, kind, admin in (
        ("boss", "human", True),
        ("perf-agent", "agent", False),
        ("cost-agent", "agent", False),
        ("svc-ops", "queue", False),
    ):
        _, tokens[name] = await engine.add_principal(None, name, kind, admin=admin)
    async with server(engine) as s:
        yield s, tokens


async def _rows(engine: Engine, event: str | None = None) -> list[dict[str, Any]]:
    rows = (await engine.audit(0, 100_000))["rows"]
    return [r for r in rows if event is None or r["event"] == event]


async def _until(engine: Engine, event: str, n: int) -> None:
    """Wait (on the engine's event feed, no polling) until ``n`` rows of ``event`` exist."""
    after = 0
    while len(await _rows(engine, event)) < n:
        out = await engine.events(None, after, wait_s=10)
        assert out["rows"], f"no {event} row in time"
        after = out["next_after_seq"]


async def _queued(
    s: Server, token: str, resource: str, intent: str, nth: int
) -> asyncio.Future[httpx.Response]:
    """An acquire waiting in the FIFO queue (``wait_s`` 30), returned once its
    ``lease.queued`` row — the ``nth`` of this test — is in the ledger."""
    waiting = asyncio.ensure_future(
        s.call(token, "POST", "/v1/leases", {"resource": resource, "intent": intent, "wait_s": 30})
    )
    await _until(s.engine, "lease.queued", nth)
    return waiting


async def _by_hand(s: Server, backend: Backend, statement: str) -> None:
    """Run ``statement`` on the store behind writ's back; on PostgreSQL, return once the
    server heard of it (the principals table's trigger notifies, and the server forgets
    what it remembered of every principal: milliseconds). SQLite has no cache to forget."""
    heard = s.engine.auth_cache.generation
    await backend.sql(statement)
    deadline = time.monotonic() + 5
    while backend.is_pg and s.engine.auth_cache.generation == heard:
        assert time.monotonic() < deadline, "the server never heard of the hand edit"
        await asyncio.sleep(0.005)


async def _lint_clean(engine: Engine) -> None:
    kinds = {p["name"]: p["kind"] for p in await engine.list_principals()}
    for row in await _rows(engine):
        result = check_row(row, kinds=kinds)
        assert result.verdict != "contaminated" and not result.findings, (row, result)


# ----------------------------------------------------------------------------- rotate
async def test_rotate_refuses_the_old_token_at_once(world: tuple[Server, dict[str, str]]) -> None:
    s, tok = world
    assert await s.whoami(tok["perf-agent"]) == 200  # remembered, where the store allows
    out = await s.ok(tok["boss"], "POST", "/v1/principals/perf-agent/rotate")
    assert out["name"] == "perf-agent" and out["token"] != tok["perf-agent"]
    r = await s.call(tok["perf-agent"], "GET", "/v1/whoami")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert await s.whoami(out["token"]) == 200
    # the principal itself may rotate its own token, not another's
    mine = await s.ok(out["token"], "POST", "/v1/principals/perf-agent/rotate")
    assert await s.whoami(out["token"]) == 401 and await s.whoami(mine["token"]) == 200
    r = await s.call(mine["token"], "POST", "/v1/principals/cost-agent/rotate")
    assert r.status_code == 403 and await s.whoami(tok["cost-agent"]) == 200
    r = await s.call(tok["boss"], "POST", "/v1/principals/nobody/rotate")
    assert r.status_code == 404
    rows = await _rows(s.engine, "principal.rotated")
    assert [(r["agent_id"], r["resource"]) for r in rows] == [
        ("boss", "principals/perf-agent"),
        ("perf-agent", "principals/perf-agent"),
    ]
    assert all(t not in str(rows) for t in (out["token"], mine["token"]))
    assert (await s.engine.verify()).ok
    await _lint_clean(s.engine)


async def test_admin_rotates_its_own_token_and_a_restart_does_not_bring_it_back(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """WRIT_ADMIN_TOKEN creates admin on a new store; after admin rotates, a restart with the
    old variable still set leaves the old token refused (and says so in the log)."""
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", "first-admin-token")
    engine = Engine(backend.open_store())
    await engine.start(background=False)
    async with server(engine) as s:
        out = await s.ok("first-admin-token", "POST", "/v1/principals/admin/rotate")
        assert await s.whoami("first-admin-token") == 401
    await engine.stop()
    again = Engine(backend.open_store())
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        await again.start(background=False)
    try:
        assert "WRIT_ADMIN_TOKEN is not the token of principal admin" in caplog.text
        async with server(again) as s:
            assert await s.whoami("first-admin-token") == 401
            assert (await s.ok(out["token"], "GET", "/v1/whoami"))["admin"] is True
    finally:
        await again.stop()


# ----------------------------------------------------------------------------- disable
async def test_disable_revokes_leases_drops_queued_requests_and_refuses_the_token(
    world: tuple[Server, dict[str, str]],
) -> None:
    s, tok = world
    held = await s.ok(
        tok["perf-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "scale up"}
    )
    other = await s.ok(
        tok["cost-agent"], "POST", "/v1/leases", {"resource": "prod/cache", "intent": "trim"}
    )
    # perf-agent also waits in the queue for cost-agent's resource
    waiting = await _queued(s, tok["perf-agent"], "prod/cache", "warm", 1)
    # and cost-agent waits behind perf-agent's lease
    behind = await _queued(s, tok["cost-agent"], "prod/db", "consolidate", 2)

    r = await s.call(
        tok["perf-agent"], "POST", "/v1/principals/cost-agent/disable", {"reason": "x"}
    )
    assert r.status_code == 403  # admins only
    r = await s.call(tok["boss"], "POST", "/v1/principals/perf-agent/disable", {})
    assert r.status_code == 422  # a reason is required
    out = await s.ok(
        tok["boss"], "POST", "/v1/principals/perf-agent/disable", {"reason": "key leaked"}
    )
    assert out["disabled"] is True and out["disabled_reason"] == "key leaked"
    assert out["revoked"] == [held["lease_id"]] and len(out["withdrawn"]) == 1

    r = await waiting
    assert r.status_code == 401, r.text
    assert "disabled" in r.json()["error"]["message"]
    granted = await behind  # the queue moved on to the next in line
    assert granted.status_code == 201 and granted.json()["holder"] == "cost-agent"
    assert await s.whoami(tok["perf-agent"]) == 401
    r = await s.call(tok["perf-agent"], "GET", "/v1/whoami")
    assert "disabled" in r.json()["error"]["message"]
    lease = await s.ok(tok["boss"], "GET", f"/v1/leases/{held['lease_id']}")
    assert lease["state"] == "revoked"

    revoked = (await _rows(s.engine, "lease.revoked"))[-1]
    prov = revoked["second_key_revoke_provenance"]
    assert prov["revoked_by"] == "boss" and prov["via_runbook"] == "principal.disable"
    assert (await _rows(s.engine, "principal.disabled"))[-1]["agent_id"] == "boss"
    denied = [r for r in await _rows(s.engine, "lease.denied") if r["agent_id"] == "perf-agent"]
    assert denied and "disabled" in denied[-1]["notes"]
    listed = (await s.ok(tok["boss"], "GET", "/v1/principals"))["principals"]
    assert {p["name"]: p["disabled"] for p in listed}["perf-agent"] is True

    # a second disable, yourself, the last admin: refused without a row
    count = len(await _rows(s.engine))
    for name, status in (("perf-agent", 422), ("boss", 422)):
        r = await s.call(tok["boss"], "POST", f"/v1/principals/{name}/disable", {"reason": "r"})
        assert r.status_code == status, r.text
    assert len(await _rows(s.engine)) == count

    # enable: a fresh token; the old one stays refused
    back = await s.ok(tok["boss"], "POST", "/v1/principals/perf-agent/enable")
    assert back["disabled"] is False and back["token"] not in tok.values()
    assert await s.whoami(tok["perf-agent"]) == 401 and await s.whoami(back["token"]) == 200
    assert (await _rows(s.engine, "principal.enabled"))[-1]["agent_id"] == "boss"
    r = await s.call(tok["boss"], "POST", "/v1/principals/perf-agent/enable")
    assert r.status_code == 422  # not disabled
    assert (await s.ok(tok["boss"], "GET", f"/v1/leases/{other['lease_id']}"))["state"] == "held"
    assert (await s.engine.verify()).ok
    await _lint_clean(s.engine)


async def test_a_lease_asked_for_as_its_principal_is_disabled_is_never_left_held(
    world: tuple[Server, dict[str, str]],
) -> None:
    """An acquire whose token was checked just before its principal was disabled is decided
    by the principal as the store holds it at the grant: refused (401, a lease.denied row),
    never granted a lease the disable came too early to revoke (it held for its whole ttl,
    up to an hour, with a current fencing token)."""
    from writ.core.errors import Unauthenticated

    s, tok = world
    checked = await s.engine.authenticate(tok["perf-agent"])  # its token checked, then...
    await s.ok(tok["boss"], "POST", "/v1/principals/perf-agent/disable", {"reason": "leaked"})
    with pytest.raises(Unauthenticated, match="disabled"):
        await s.engine.acquire(checked, resource="prod/db", intent="scale up", ttl_s=3600)
    denied = (await _rows(s.engine, "lease.denied"))[-1]
    assert denied["agent_id"] == "perf-agent" and "disabled" in denied["notes"]
    # the two at once over HTTP: whichever commits first, nothing is left held
    for i in range(8):
        name = f"racer-{i}"
        _, token = await s.engine.add_principal(None, name, "agent")
        assert await s.whoami(token) == 200  # its token is known (and remembered)
        body = {"resource": f"race/{i}", "intent": "scale up", "ttl_s": 3600}

        async def acquire(token: str = token, body: Any = body, pause: float = i % 4 / 2000):
            await asyncio.sleep(pause)  # the disable's request first, by 0 to 1.5 ms
            return await s.call(token, "POST", "/v1/leases", body)

        got, off = await asyncio.gather(
            acquire(),
            s.call(tok["boss"], "POST", f"/v1/principals/{name}/disable", {"reason": "r"}),
        )
        assert got.status_code in (201, 401) and off.status_code == 200, (got.text, off.text)
        held = await s.call(tok["boss"], "GET", "/v1/leases", holder=name, state="held")
        assert held.json()["leases"] == [], (i, got.text)


async def test_the_last_enabled_admin_cannot_be_disabled(
    world: tuple[Server, dict[str, str]],
) -> None:
    s, tok = world
    _, second = await s.engine.add_principal(None, "deputy", "human", admin=True)
    await s.ok(second, "POST", "/v1/principals/boss/disable", {"reason": "left the team"})
    assert await s.whoami(tok["boss"]) == 401
    r = await s.call(tok["svc-ops"], "POST", "/v1/principals/deputy/disable", {"reason": "r"})
    assert r.status_code == 403


# ----------------------------------------------------------------------------- expiry
async def _expiring(s: Server, tok: dict[str, str], name: str, seconds: int) -> dict[str, Any]:
    """An agent added by the admin with a token that expires in ``seconds``."""
    out: dict[str, Any] = await s.ok(
        tok["boss"],
        "POST",
        "/v1/principals",
        {"name": name, "kind": "agent", "expires_in_s": seconds},
    )
    return out


async def test_expires_in_s_on_create_and_rotate(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    s, tok = world
    out = await _expiring(s, tok, "ci-agent", 3600)
    assert out["token_expires_at"] is not None
    assert await s.whoami(out["token"]) == 200
    for bad in (0, -5, True, "soon", 10 * 366 * 86_400):
        r = await s.call(
            tok["boss"], "POST", "/v1/principals/ci-agent/rotate", {"expires_in_s": bad}
        )
        assert r.status_code == 422, (bad, r.text)
    # an hour passes (the stored expiry moves back: PostgreSQL's clock cannot be moved)
    await backend.sql("UPDATE principals SET token_expires_at = token_expires_at - 3601")
    r = await s.call(out["token"], "GET", "/v1/whoami")
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    rotated = await s.ok(
        tok["boss"], "POST", "/v1/principals/ci-agent/rotate", {"expires_in_s": 60}
    )
    assert rotated["token_expires_at"] and await s.whoami(rotated["token"]) == 200
    plain = await s.ok(tok["boss"], "POST", "/v1/principals/ci-agent/rotate")
    assert plain["token_expires_at"] is None and await s.whoami(plain["token"]) == 200


async def test_a_principal_rotating_itself_keeps_the_expiry_an_admin_set(
    world: tuple[Server, dict[str, str]],
) -> None:
    """A contractor's token that an admin made expire cannot be rotated into one that never
    does, nor into a later one; it may be shortened."""
    s, tok = world
    out = await _expiring(s, tok, "temp-agent", 600)
    bound = out["token_expires_at"]
    mine = await s.ok(out["token"], "POST", "/v1/principals/temp-agent/rotate", {})
    assert mine["token_expires_at"] == bound, mine
    longer = {"expires_in_s": 86_400}
    mine = await s.ok(mine["token"], "POST", "/v1/principals/temp-agent/rotate", longer)
    assert mine["token_expires_at"] == bound, mine
    shorter = await s.ok(
        mine["token"], "POST", "/v1/principals/temp-agent/rotate", {"expires_in_s": 60}
    )
    assert shorter["token_expires_at"] < bound, shorter
    # an admin may lift or move it
    lifted = await s.ok(tok["boss"], "POST", "/v1/principals/temp-agent/rotate", {})
    assert lifted["token_expires_at"] is None
    # and one that never expired may choose an expiry of its own
    free = await s.ok(lifted["token"], "POST", "/v1/principals/temp-agent/rotate", longer)
    assert free["token_expires_at"] is not None


# ----------------------------------------------------------------------------- at once
async def test_a_hand_deleted_principal_is_refused_at_once(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    """Deleted in the database by hand, behind writ's back: refused on the next request
    (SQLite is read on every request; PostgreSQL's trigger tells every server)."""
    s, tok = world
    assert await s.whoami(tok["cost-agent"]) == 200
    assert await s.whoami(tok["cost-agent"]) == 200
    await backend.sql("DELETE FROM principals WHERE name = 'cost-agent'")
    started = time.monotonic()
    while await s.whoami(tok["cost-agent"]) != 401:
        assert backend.is_pg and time.monotonic() - started < 1.0
        await asyncio.sleep(0.005)


async def test_every_server_on_a_postgresql_store_refuses_within_a_second(
    pg_backend: Backend, no_admin_env: None
) -> None:
    """Two engines (two servers) on one PostgreSQL schema: a token rotated or disabled on
    one is refused by the other within 1 s, although the other had just accepted it."""
    a, b = Engine(pg_backend.open_store()), Engine(pg_backend.open_store())
    await a.start(background=False)
    await b.start(background=False)
    try:
        _, boss = await a.add_principal(None, "boss", "human", admin=True)
        _, agent = await a.add_principal(None, "perf-agent", "agent")
        async with server(a) as sa, server(b) as sb:
            for action in ("rotate", "disable"):
                assert await sb.whoami(agent) == 200 and await sb.whoami(agent) == 200
                assert b.auth_cache.get(_hash(agent)) is not None  # b remembers it
                body = {"reason": "compromised"} if action == "disable" else None
                out = await sa.ok(boss, "POST", f"/v1/principals/perf-agent/{action}", body)
                started = time.monotonic()
                while await sb.whoami(agent) != 401:
                    assert time.monotonic() - started < 1.0, f"b still accepts after {action}"
                    await asyncio.sleep(0.005)
                if action == "rotate":
                    agent = out["token"]
                    assert await sb.whoami(agent) == 200
    finally:
        await b.stop()
        await a.stop()


def _hash(token: str) -> str:
    from writ.engine import hash_token

    return hash_token(token)


# ----------------------------------------------------------------------------- migration
# what migrations 2 (principal lifecycle) and 3 (live replica) added to a PostgreSQL store
_PG_BACK_TO_1 = (
    "DROP FUNCTION writ_batch(bigint, bigint, jsonb, jsonb, jsonb, jsonb, jsonb, bigint, text,"
    " float8, bigint, int, int, bigint, bigint, bigint, bigint, text, jsonb)",
    "DROP FUNCTION writ_rows(jsonb, jsonb, jsonb, jsonb, jsonb)",
    "DROP TRIGGER audit_head_versioned ON audit_head",
    "DROP FUNCTION writ_head_versioned()",
    "DROP FUNCTION writ_lock_head(bigint, bigint)",
    "ALTER TABLE audit_head DROP COLUMN version, DROP COLUMN wv, DROP COLUMN ov, DROP COLUMN epoch",
    "DROP INDEX leases_wseq",
    "ALTER TABLE leases DROP COLUMN wseq",
    "DROP TRIGGER principals_changed ON principals",
    "DROP FUNCTION writ_principals_changed()",
    "ALTER TABLE principals DROP COLUMN queues, DROP COLUMN disabled_at,"
    " DROP COLUMN disabled_reason, DROP COLUMN token_expires_at",
    "DELETE FROM writ_migrations WHERE version > 1",
)
_SQLITE_BACK_TO_1 = (
    "DROP TABLE audit_head",
    "DROP TRIGGER principals_changed_u",
    "DROP TRIGGER principals_changed_d",
    *(
        f"ALTER TABLE principals DROP COLUMN {c}"
        for c in ("queues", "disabled_at", "disabled_reason", "token_expires_at")
    ),
    "DELETE FROM meta WHERE key = 'principals_gen'",
    "DELETE FROM writ_migrations WHERE version > 1",
)


async def test_an_existing_store_upgrades_in_place(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, no_admin_env: None
) -> None:
    """A store made before the token lifecycle (migration 1 only) gains its columns on
    open; its principals keep their tokens and its ledger still verifies."""
    from writ.stores.postgres import _schema as pg
    from writ.stores.sqlite import _schema as sq

    module = pg if backend.is_pg else sq
    full = list(module.MIGRATIONS)
    # today's store code needs today's schema (PostgreSQL's live replica, the chain's head
    # kept beside the chain), so the rows are written with it and the schema is taken back
    # to migration 1 afterwards
    old = backend.open_store()
    await old.open()
    token = "writ_a-token-from-before-the-upgrade"
    # the principals row as the first schema kept it, and a ledger row about it
    await backend.sql(
        "INSERT INTO principals (name, kind, vendor, wake, admin, token_hash, created_at)"
        " VALUES (%s, 'agent', NULL, NULL, %s, %s, 1.0)",
        "perf-agent",
        False,
        _hash(token),
    )

    async def row(tx: Any) -> None:
        await tx.append(
            {
                "event": "principal.added",
                "agent_id": "operator",
                "resource": "principals/perf-agent",
            }
        )

    await old.transact(row)
    await old.close()
    for stmt in _PG_BACK_TO_1 if backend.is_pg else _SQLITE_BACK_TO_1:
        await backend.sql(stmt)
    cols = await backend.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'principals'"
        " AND table_schema = %s"
        if backend.is_pg
        else "SELECT name FROM pragma_table_info('principals')",
        *([backend.schema] if backend.is_pg else []),
    )
    assert "disabled_at" not in {c[0] for c in cols}

    new = Engine(backend.open_store())
    await new.start(background=False)
    try:
        versions = await backend.sql("SELECT version FROM writ_migrations ORDER BY version")
        assert [v[0] for v in versions] == list(range(1, len(full) + 1))
        p = await new.authenticate(token)
        assert p.name == "perf-agent" and p.disabled_at is None and p.queues == []
        assert (await new.verify()).ok
        out = await new.principals.rotate(None, "perf-agent")
        assert (await new.authenticate(out["token"])).name == "perf-agent"
        assert (await new.verify()).ok
    finally:
        await new.stop()


# ----------------------------------------------------------------------------- queues
async def test_queue_membership_on_create_and_change(
    world: tuple[Server, dict[str, str]],
) -> None:
    s, tok = world
    await s.ok(tok["boss"], "POST", "/v1/principals", {"name": "db-oncall", "kind": "queue"})
    out = await s.ok(
        tok["boss"],
        "POST",
        "/v1/principals",
        {"name": "jane", "kind": "human", "queues": ["svc-ops"]},
    )
    assert out["queues"] == ["svc-ops"]
    for body in (
        {"name": "x1", "kind": "agent", "queues": ["svc-ops"]},  # only humans are members
        {"name": "x2", "kind": "human", "queues": ["nope"]},  # not registered
        {"name": "x3", "kind": "human", "queues": ["perf-agent"]},  # not a queue
        {"name": "x4", "kind": "human", "queues": "svc-ops"},  # not a list
    ):
        r = await s.call(tok["boss"], "POST", "/v1/principals", body)
        assert r.status_code == 422, (body, r.text)
    out = await s.ok(
        tok["boss"],
        "POST",
        "/v1/principals/jane/queues",
        {"add": ["db-oncall"], "remove": ["svc-ops"]},
    )
    assert out["queues"] == ["db-oncall"]
    listed = {
        p["name"]: p for p in (await s.ok(tok["perf-agent"], "GET", "/v1/principals"))["principals"]
    }
    assert listed["jane"]["queues"] == ["db-oncall"] and "queues" not in listed["perf-agent"]
    r = await s.call(tok["perf-agent"], "POST", "/v1/principals/jane/queues", {"add": ["svc-ops"]})
    assert r.status_code == 403
    r = await s.call(tok["boss"], "POST", "/v1/principals/perf-agent/queues", {"add": ["svc-ops"]})
    assert r.status_code == 422
    r = await s.call(tok["boss"], "POST", "/v1/principals/jane/queues", {})
    assert r.status_code == 422
    rows = await _rows(s.engine, "principal.queues")
    assert len(rows) == 1 and "db-oncall" in rows[0]["notes"]


async def _rollback(s: Server, tok: dict[str, str]) -> dict[str, Any]:
    lease = await s.ok(
        tok["perf-agent"],
        "POST",
        "/v1/leases",
        {
            "resource": f"prod/db-{len(await _rows(s.engine))}",
            "intent": "double capacity",
            "rollback": {
                "allowed": True,
                "path": "http://127.0.0.1:9/rollback?txn=1",
                "key_holder": "svc-ops",
                "override_queue": "svc-ops",
            },
        },
    )
    return await s.ok(
        tok["cost-agent"], "POST", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "r"}
    )


async def test_only_the_key_holder_queue_or_its_members_turn_the_key(
    world: tuple[Server, dict[str, str]],
) -> None:
    s, tok = world
    _, jane = await s.engine.add_principal(None, "jane", "human", queues=["svc-ops"])
    _, bob = await s.engine.add_principal(None, "bob", "human")
    rb = await _rollback(s, tok)
    for who in (bob, tok["boss"]):  # a human not on the rotation; the admin, not a member
        r = await s.call(who, "POST", f"/v1/rollbacks/{rb['rollback_id']}/approve")
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["queue"] == "svc-ops" and "svc-ops" in err["message"]
    r = await s.call(tok["perf-agent"], "POST", f"/v1/rollbacks/{rb['rollback_id']}/deny")
    assert r.status_code == 403
    out = await s.ok(jane, "POST", f"/v1/rollbacks/{rb['rollback_id']}/approve")
    assert out["approved_by"] == "jane"
    approved = (await _rows(s.engine, "rollback.approved"))[-1]
    assert approved["approved_by"] == "jane" and "member of svc-ops" in approved["notes"]
    ran = (await _rows(s.engine, "rollback.failed"))[-1]  # nothing listens on port 9
    assert ran["approved_by"] == "jane" and "member of svc-ops" in ran["notes"]

    # the admin joins the rotation, and may then deny; the queue's own token may too
    await s.ok(tok["boss"], "POST", "/v1/principals/boss/queues", {"add": ["svc-ops"]})
    rb2 = await _rollback(s, tok)
    denied = await s.ok(tok["boss"], "POST", f"/v1/rollbacks/{rb2['rollback_id']}/deny")
    assert denied["status"] == denied["state"] == "denied", denied
    rb3 = await _rollback(s, tok)
    await s.ok(tok["svc-ops"], "POST", f"/v1/rollbacks/{rb3['rollback_id']}/deny")
    # taken off the rotation, jane may no longer
    await s.ok(tok["boss"], "POST", "/v1/principals/jane/queues", {"remove": ["svc-ops"]})
    rb4 = await _rollback(s, tok)
    r = await s.call(jane, "POST", f"/v1/rollbacks/{rb4['rollback_id']}/approve")
    assert r.status_code == 403
    await _lint_clean(s.engine)


async def test_a_principal_disabled_after_its_token_was_checked_turns_no_key(
    world: tuple[Server, dict[str, str]],
) -> None:
    """An approve and a consent answer decided after their principal was disabled (its
    token checked just before) are refused: a key turns, a consent is given, by the
    principal as it stands, and the rollback and the consent stay pending."""
    from writ.core.errors import Unauthenticated

    s, tok = world
    _, jane = await s.engine.add_principal(None, "jane", "human", queues=["svc-ops"])
    rb = await _rollback(s, tok)
    lease = await s.ok(tok["perf-agent"], "GET", f"/v1/leases/{rb['lease_id']}")
    change = await s.ok(
        tok["perf-agent"],
        "POST",
        f"/v1/leases/{lease['lease_id']}/changes",
        {"attribute": "capacity", "summary": "4 to 8"},
    )
    asked = await s.ok(
        tok["cost-agent"], "POST", "/v1/consents", {"change_id": change["change_id"], "reason": "r"}
    )
    checked = [await s.engine.authenticate(t) for t in (jane, tok["perf-agent"])]
    for name in ("jane", "perf-agent"):
        await s.ok(tok["boss"], "POST", f"/v1/principals/{name}/disable", {"reason": "gone"})
    with pytest.raises(Unauthenticated, match="disabled"):
        await s.engine.rollbacks.answer(checked[0], rb["rollback_id"], True)
    with pytest.raises(Unauthenticated, match="disabled"):
        await s.engine.consents.answer(checked[1], asked["consent_id"], True)
    got = await s.ok(tok["boss"], "GET", f"/v1/rollbacks/{rb['rollback_id']}")
    assert got["status"] == "pending"
    assert (await s.ok(tok["boss"], "GET", f"/v1/consents/{asked['consent_id']}"))[
        "status"
    ] == "pending"


async def test_an_escalated_consent_is_answered_by_its_queue_or_a_member(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    s, tok = world
    _, jane = await s.engine.add_principal(None, "jane", "human", queues=["svc-ops"])
    _, bob = await s.engine.add_principal(None, "bob", "human")
    lease = await s.ok(
        tok["perf-agent"],
        "POST",
        "/v1/leases",
        {
            "resource": "prod/db",
            "intent": "double capacity",
            "rollback": {
                "allowed": True,
                "path": "/ops/rollback?txn=1",
                "key_holder": "svc-ops",
                "override_queue": "svc-ops",
            },
        },
    )
    change = await s.ok(
        tok["perf-agent"],
        "POST",
        f"/v1/leases/{lease['lease_id']}/changes",
        {"attribute": "capacity", "summary": "4 to 8"},
    )
    await s.ok(tok["perf-agent"], "POST", f"/v1/leases/{lease['lease_id']}/release")
    asked = await s.ok(
        tok["cost-agent"], "POST", "/v1/consents", {"change_id": change["change_id"], "reason": "r"}
    )
    # nobody answers in time: it expires and escalates to svc-ops
    await backend.advance(10_000)
    await s.engine.sweep()
    await s.engine.consents.tick()
    c = await s.ok(tok["boss"], "GET", f"/v1/consents/{asked['consent_id']}")
    assert c["status"] == "expired" and c["escalated_to"] == "svc-ops"
    for who in (bob, tok["boss"]):
        r = await s.call(who, "POST", f"/v1/consents/{asked['consent_id']}/grant")
        assert r.status_code == 403 and r.json()["error"]["queue"] == "svc-ops", r.text
    out = await s.ok(jane, "POST", f"/v1/consents/{asked['consent_id']}/grant")
    assert out["approved_by"] == "jane"
    row = (await _rows(s.engine, "consent.granted"))[-1]
    assert row["approved_by"] == "jane" and "member of svc-ops" in row["notes"]


async def test_a_queued_request_is_refused_when_its_principal_was_disabled_by_hand(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    """Disabled behind writ's back (a hand UPDATE: nothing withdrew its queued request),
    the principal's request is refused when its turn comes, and the next one is served."""
    s, tok = world
    held = await s.ok(
        tok["cost-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "trim"}
    )
    waiting = await _queued(s, tok["perf-agent"], "prod/db", "scale", 1)
    await _by_hand(
        s,
        backend,
        "UPDATE principals SET disabled_at = 1.0, disabled_reason = 'by hand'"
        " WHERE name = 'perf-agent'",
    )
    await s.ok(tok["cost-agent"], "POST", f"/v1/leases/{held['lease_id']}/release")
    r = await waiting
    assert r.status_code == 401 and "disabled" in r.text, r.text
    denied = (await _rows(s.engine, "lease.denied"))[-1]
    assert denied["agent_id"] == "perf-agent" and "disabled" in denied["notes"]
    assert (await s.ok(tok["boss"], "GET", "/v1/resources/prod/db"))["lease"] is None


async def test_bad_input_is_a_4xx_and_writes_nothing(world: tuple[Server, dict[str, str]]) -> None:
    s, tok = world
    _, _ = await s.engine.add_principal(None, "jane", "human")
    before = len(await _rows(s.engine))
    h = {"Authorization": f"Bearer {tok['boss']}", "content-type": "application/json"}
    cases = [
        ("/v1/principals/perf-agent/disable", b'{"reason": "\\ud800"}'),
        ("/v1/principals/perf-agent/disable", b'{"reason": 5}'),
        ("/v1/principals/perf-agent/disable", b'{"reason": "x", "extra": 1}'),
        ("/v1/principals/jane/queues", b'{"add": ["\\ud800"]}'),
        ("/v1/principals/jane/queues", b'{"add": "svc-ops"}'),
        ("/v1/principals/jane/queues", b'{"add": [' + b'"svc-ops",' * 200 + b'"svc-ops"]}'),
        ("/v1/principals", b'{"name": "h", "kind": "human", "queues": ["\\ud800"]}'),
        # writ's own words in a vendor: the added row's notes would read two ways
        ("/v1/principals", b'{"name": "v", "kind": "agent", "vendor": "Acme) as admin"}'),
        ("/v1/principals", b'{"name": "v", "kind": "agent", "vendor": "Acme; wake /x"}'),
        ("/v1/principals/%ED%A0%80/rotate", b"{}"),
        ("/v1/principals/..%2F..%2Fleases/rotate", b"{}"),
        ("/v1/principals/perf-agent/rotate", b'{"expires_in_s": 1e308}'),
        ("/v1/principals/perf-agent/rotate", b'{"expires_in_s": NaN}'),
        ("/v1/principals/perf-agent/rotate", b'{"expires_in_s": "60"}'),
        ("/v1/principals/perf-agent/enable", b'{"expires_in_s": -1}'),
    ]
    for path, body in cases:
        r = await s.http.post(path, content=body, headers=h)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("invalid", "not_found"), r.text
    assert len(await _rows(s.engine)) == before
    assert await s.whoami(tok["perf-agent"]) == 200


async def test_two_writ_serve_processes_on_postgresql_refuse_within_a_second(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """The same as two engines, with two real ``writ serve`` processes: rotated and
    disabled tokens are refused by the other server within 1 s, and the admin token from
    WRIT_ADMIN_TOKEN, once rotated, is refused by both."""
    async with (
        writ_servers(pg_backend.url, 2, tmp_path) as (a, b),
        httpx.AsyncClient(timeout=10) as c,
    ):

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        async def status(url: str, token: str) -> int:
            return (await c.get(f"{url}/v1/whoami", headers=auth(token))).status_code

        async def refused_within_a_second(url: str, token: str) -> None:
            started = time.monotonic()
            while await status(url, token) != 401:
                assert time.monotonic() - started < 1.0, f"{url} still accepts the token"
                await asyncio.sleep(0.005)

        r = await c.post(
            f"{a}/v1/principals",
            json={"name": "perf-agent", "kind": "agent"},
            headers=auth(ADMIN_TOKEN),
        )
        agent = r.json()["token"]
        assert await status(b, agent) == 200 and await status(b, agent) == 200
        r = await c.post(f"{a}/v1/principals/perf-agent/rotate", headers=auth(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        await refused_within_a_second(b, agent)
        agent = r.json()["token"]
        assert await status(b, agent) == 200
        r = await c.post(
            f"{b}/v1/principals/perf-agent/disable",
            json={"reason": "compromised"},
            headers=auth(ADMIN_TOKEN),
        )
        assert r.status_code == 200, r.text
        await refused_within_a_second(a, agent)
        r = await c.post(f"{b}/v1/principals/admin/rotate", headers=auth(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        await refused_within_a_second(a, ADMIN_TOKEN)
        assert await status(a, r.json()["token"]) == 200


async def test_a_hand_disable_is_seen_at_a_later_turn_of_the_queue_too(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    """Once perf-agent was served from the queue (the server then knows it: PostgreSQL's
    replica keeps the principals it read), a hand UPDATE that disables it still refuses
    its next queued request: the server forgets what it knew of principals when the
    table's trigger tells it of a change."""
    s, tok = world
    held = await s.ok(
        tok["cost-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "trim"}
    )
    first = await _queued(s, tok["perf-agent"], "prod/db", "scale", 1)
    await s.ok(tok["cost-agent"], "POST", f"/v1/leases/{held['lease_id']}/release")
    served = await first
    assert served.status_code == 201, served.text
    again = await _queued(s, tok["perf-agent"], "prod/db", "scale again", 2)
    await _by_hand(
        s,
        backend,
        "UPDATE principals SET disabled_at = 1.0, disabled_reason = 'by hand'"
        " WHERE name = 'perf-agent'",
    )
    revoke = {"runbook": "R-1", "paged": "boss", "reason": "r", "waive_lock_delay": True}
    await s.ok(tok["boss"], "POST", f"/v1/leases/{served.json()['lease_id']}/revoke", revoke)
    r = await again
    assert r.status_code == 401 and "disabled" in r.text, r.text


async def test_a_queued_request_of_a_principal_deleted_by_hand_is_refused(
    world: tuple[Server, dict[str, str]], backend: Backend
) -> None:
    s, tok = world
    held = await s.ok(
        tok["cost-agent"], "POST", "/v1/leases", {"resource": "prod/db", "intent": "trim"}
    )
    waiting = await _queued(s, tok["perf-agent"], "prod/db", "scale", 1)
    await _by_hand(s, backend, "DELETE FROM principals WHERE name = 'perf-agent'")
    await s.ok(tok["cost-agent"], "POST", f"/v1/leases/{held['lease_id']}/release")
    r = await waiting
    assert r.status_code == 401 and "no longer exists" in r.text, r.text
    assert (await s.ok(tok["boss"], "GET", "/v1/resources/prod/db"))["lease"] is None


@pytest.mark.parametrize("token", ["\ud800", "writ_\udfffx", "a.b.\ud83d"])
async def test_a_token_that_is_not_text_is_refused_401(
    make_engine: Callable[..., Any], token: str
) -> None:
    """A bearer token with a lone surrogate (none comes over HTTP, whose headers are bytes;
    a relayed call or an in-process caller can send one) is refused as unknown, not an
    internal error, on the writ-token and the JWT paths alike."""
    from writ.core.errors import Unauthenticated

    engine: Engine = await make_engine()
    with pytest.raises(Unauthenticated, match="not valid text"):
        await engine.authenticate(token)
