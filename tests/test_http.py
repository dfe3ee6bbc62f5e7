"""The HTTP API in-process, checked the way an outside client sees it (issue 2, "Done means").

Every test talks raw HTTP (httpx over ``ASGITransport``) to ``create_app`` over each store
of the contract suite (a real SQLite file, and PostgreSQL when ``WRIT_TEST_POSTGRES_URL`` is set), with the app's lifespan running (the engine's sweeper included). A response
hook fails any test that ever receives a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from writ.api.app import create_app
from writ.core.clock import ManualClock
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores import open_store

ADMIN = "test-admin-token"
POLICY_TEXT = '[blast_radius]\ndb-tier = ["prod/db", "routing/db-tier", "capacity/db"]\n'
AUDIT_FIELDS = (
    "seq, timestamp, event, agent_id, resource, lock_holder, lock_key, lock_acquired_at, "
    "fencing_token, rollback_allowed, rollback_path, rollback_key_holder, approved_by, "
    "human_override_queue, rollback_denominator, rollback_denominator_is_defect, "
    "second_key_revoke_provenance, notes, prev_hash, hash"
).split(", ")
HOLDER_FIELDS = {"holder", "resource", "intent", "acquired_at", "expires_at", "wake"}
GENESIS = "0" * 64


# ----------------------------------------------------------------------------- harness
class Writ:
    """One running app and a raw HTTP client to it."""

    def __init__(self, client: httpx.AsyncClient, engine: Engine) -> None:
        self.c = client
        self.engine = engine
        self.app: Any = None
        self.admin = {"Authorization": f"Bearer {ADMIN}"}

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def principal(self, name: str, kind: str = "agent", wake: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "kind": kind}
        if wake:
            body["wake"] = wake
        r = await self.c.post("/v1/principals", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        assert r.json()["token"]
        return str(r.json()["token"])

    async def acquire(self, token: str, resource: str, **kw: Any) -> httpx.Response:
        body = {"resource": resource, "intent": kw.pop("intent", f"change {resource}"), **kw}
        return await self.c.post("/v1/leases", json=body, headers=self.auth(token))

    async def grant(self, token: str, resource: str, **kw: Any) -> dict[str, Any]:
        r = await self.acquire(token, resource, **kw)
        assert r.status_code == 201, r.text
        lease: dict[str, Any] = r.json()
        assert lease["state"] == "held"
        return lease

    async def release(self, token: str, lease_id: str) -> httpx.Response:
        return await self.c.post(f"/v1/leases/{lease_id}/release", headers=self.auth(token))

    async def audit(self, resource: str | None = None, after_seq: int = 0) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"after_seq": after_seq, "limit": 1000}
            if resource:
                params["resource"] = resource
            r = await self.c.get("/v1/audit", params=params, headers=self.admin)
            assert r.status_code == 200, r.text
            page = r.json()
            rows += page["rows"]
            if not page["rows"]:
                return rows
            after_seq = page["next_after_seq"]

    async def wait_for_event(
        self, event: str, resource: str, agent: str | None = None, after_seq: int = 0
    ) -> dict[str, Any]:
        """Long-poll /v1/events until a row of ``event`` (by ``agent``) under ``resource``."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = await self.c.get(
                "/v1/events",
                params={"resource": resource, "after_seq": after_seq, "wait_s": 2},
                headers=self.admin,
            )
            assert r.status_code == 200, r.text
            for row in r.json()["rows"]:
                if row["event"] == event and (agent is None or row["agent_id"] == agent):
                    return row  # type: ignore[no-any-return]
            after_seq = r.json()["next_after_seq"]
        raise AssertionError(f"no {event} row for {agent} under {resource}")


async def _no_500(response: httpx.Response) -> None:
    assert response.status_code < 500, (
        f"{response.request.method} {response.request.url} -> {response.status_code}: "
        f"{(await response.aread())[:500]!r}"
    )


@asynccontextmanager
async def serve(db: Path | str, clock: ManualClock | None = None) -> AsyncIterator[Writ]:
    """A fresh app and engine over the SQLite file ``db`` (or a store URL), lifespan running."""
    options = {"clock": clock} if clock is not None else {}
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    engine = Engine(open_store(url, **options), parse(POLICY_TEXT))
    app = create_app(engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://writ.test",
            event_hooks={"response": [_no_500]},
        ) as client:
            w = Writ(client, engine)
            w.app = app
            yield w


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN)


@pytest.fixture
async def writ(store_url: str, admin_env: None) -> AsyncIterator[Writ]:
    """The app over each store of the contract suite (SQLite, and PostgreSQL when given)."""
    async with serve(store_url) as w:
        yield w


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the PROTOCOL.md error shape; return the inner error object."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and len(err["message"]) > 10, err
    return err


# ----------------------------------------------------------------------------- exclusion
async def test_held_names_the_holder_on_same_descendant_ancestor_and_blast_radius(
    writ: Writ,
) -> None:
    """A second agent is refused 409 ``held`` on the same resource, a descendant, an
    ancestor and a member of the same blast-radius group; the error names the holder
    (holder, resource, intent, acquired_at, expires_at, wake) and a queue position."""
    a = await writ.principal("agent-a", wake="https://agents.example/agent-a/wake")
    b = await writ.principal("agent-b")
    lease = await writ.grant(a, "prod/db", intent="double capacity", ttl_s=60)

    # same, descendant, ancestor, group members, a group member's descendant, and an
    # ancestor of a group member (authority on "capacity" covers "capacity/db")
    for target in (
        "prod/db",
        "prod/db/replica-1",
        "prod",
        "routing/db-tier",
        "capacity/db",
        "capacity/db/shard-3",
        "capacity",
    ):
        err = error(await writ.acquire(b, target), 409, "held")
        holder = err["holder"]
        assert HOLDER_FIELDS <= set(holder), holder
        assert holder["holder"] == "agent-a"
        assert holder["resource"] == "prod/db"
        assert holder["intent"] == "double capacity"
        assert holder["acquired_at"] == lease["acquired_at"]
        assert holder["expires_at"] == lease["expires_at"]
        assert holder["wake"] == "https://agents.example/agent-a/wake"
        assert err["queue_position"] == 1
        assert "agent-a" in err["message"], err["message"]

    # the holder itself is also refused a second, conflicting lease: authority is per lease
    error(await writ.acquire(a, "capacity/db"), 409, "held")


async def test_unrelated_resources_are_granted(writ: Writ) -> None:
    """Siblings, look-alike prefixes and other trees do not conflict with a held lease."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    held = await writ.grant(a, "prod/db")
    tokens = [held["fencing_token"]]
    for target in (
        "prod/cache",
        "prod/db-replica",
        "prod/dbx",
        "routing/web",
        "capacity/cpu",
        "staging/db",
    ):
        lease = await writ.grant(b, target)
        assert lease["holder"] == "agent-b"
        assert lease["lock_key"] == f"{target}/{lease['fencing_token']}"
        tokens.append(lease["fencing_token"])
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_held_row_and_denied_row_in_audit(writ: Writ) -> None:
    """A refusal writes one ``lease.denied`` row naming the holder as ``lock_holder``."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    lease = await writ.grant(a, "orders/checkout-write")
    error(await writ.acquire(b, "orders/checkout-write/x"), 409, "held")
    rows = [r for r in await writ.audit("orders") if r["event"] == "lease.denied"]
    assert len(rows) == 1
    assert rows[0]["agent_id"] == "agent-b"
    assert rows[0]["lock_holder"] == "agent-a"
    assert rows[0]["lock_key"] == lease["lock_key"]


# ----------------------------------------------------------------------------- fencing
async def test_fencing_tokens_strictly_increase_across_release_expiry_revoke_and_restart(
    tmp_path: Path, admin_env: None
) -> None:
    """Every grant's fencing token is higher than every earlier one in the store: after a
    release, an expiry, a revoke, and a restart (new app and engine on the same file)."""
    db = tmp_path / "writ.db"
    clock = ManualClock()
    tokens: list[int] = []
    async with serve(db, clock) as w:
        a = await w.principal("agent-a")
        human = await w.principal("jane", kind="human")
        lease = await w.grant(a, "prod/db", ttl_s=5)
        tokens.append(lease["fencing_token"])
        assert (await w.release(a, lease["lease_id"])).status_code == 200
        # released -> next grant is higher
        lease = await w.grant(a, "prod/db", ttl_s=1)
        tokens.append(lease["fencing_token"])
        clock.advance(2)  # not renewed: expired on the store clock
        lease = await w.grant(a, "prod/db", ttl_s=60)
        tokens.append(lease["fencing_token"])
        r = await w.c.post(
            f"/v1/leases/{lease['lease_id']}/revoke",
            json={"runbook": "R-1", "paged": "oncall", "reason": "test"},
            headers=w.auth(human),
        )
        assert r.status_code == 200, r.text
        lease = await w.grant(a, "prod/db", ttl_s=60)
        tokens.append(lease["fencing_token"])
        held_id = lease["lease_id"]
    async with serve(db, clock) as w:
        # the lease survived the restart, with its token
        r = await w.c.get(f"/v1/leases/{held_id}", headers=w.auth(a))
        assert r.status_code == 200 and r.json()["fencing_token"] == tokens[-1]
        assert (await w.release(a, held_id)).status_code == 200
        tokens.append((await w.grant(a, "prod/db"))["fencing_token"])
        tokens.append((await w.grant(a, "unrelated/thing"))["fencing_token"])
    async with serve(db, clock) as w:
        tokens.append((await w.grant(a, "other/thing"))["fencing_token"])
    assert all(x < y for x, y in itertools.pairwise(tokens)), tokens


async def test_fence_route_reports_the_current_token(writ: Writ) -> None:
    """``GET /v1/fence`` says whether a token is the current holder's, so a resource can
    refuse a stale writer."""
    a = await writ.principal("agent-a")
    old = await writ.grant(a, "prod/db")
    await writ.release(a, old["lease_id"])
    new = await writ.grant(a, "prod/db")
    r = await writ.c.get(
        "/v1/fence",
        params={"resource": "prod/db", "token": new["fencing_token"]},
        headers=writ.auth(a),
    )
    assert r.json()["current"] is True and r.json()["current_token"] == new["fencing_token"]
    r = await writ.c.get(
        "/v1/fence",
        params={"resource": "prod/db", "token": old["fencing_token"]},
        headers=writ.auth(a),
    )
    assert r.json()["current"] is False and r.json()["current_token"] == new["fencing_token"]


# ----------------------------------------------------------------------------- waiting
async def test_waiter_is_granted_in_the_release_transaction(writ: Writ) -> None:
    """A waiter with ``wait_s`` gets the lease as part of the release itself: its grant row's
    seq immediately follows the release row (one transaction), so no polling interval
    stands between them; the waiter's response arrives well within a second."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    held = await writ.grant(a, "prod/db", ttl_s=120)
    start = (await writ.audit())[-1]["seq"]

    waiter = asyncio.create_task(writ.acquire(b, "capacity/db", wait_s=60, ttl_s=30))
    queued = await writ.wait_for_event("lease.queued", "capacity/db", "agent-b", start)
    assert queued["lock_holder"] == "agent-a"
    assert queued["lock_key"] == held["lock_key"]
    assert not waiter.done()

    t0 = time.monotonic()
    r = await writ.release(a, held["lease_id"])
    assert r.status_code == 200 and r.json()["state"] == "released"
    got = await asyncio.wait_for(waiter, 10)
    latency = time.monotonic() - t0
    assert got.status_code == 201, got.text
    lease = got.json()
    assert lease["holder"] == "agent-b" and lease["resource"] == "capacity/db"
    assert lease["fencing_token"] > held["fencing_token"]

    rows = await writ.audit(after_seq=queued["seq"])
    released = next(x for x in rows if x["event"] == "lease.released")
    granted = next(x for x in rows if x["event"] == "lease.granted")
    assert released["lock_key"] == held["lock_key"]
    assert granted["seq"] == released["seq"] + 1, (released, granted)
    assert granted["lock_holder"] == "agent-b"
    assert granted["fencing_token"] == lease["fencing_token"]
    assert latency < 1.0, latency


async def test_waiters_are_served_in_arrival_order(writ: Writ) -> None:
    """Five waiters queued in a known order are granted in that order, one per release; a
    later request on a conflicting resource (the ancestor, or a sibling under a queued
    ancestor) never overtakes an earlier waiter, and a non-waiting request is refused with
    its queue position."""
    h = await writ.principal("holder")
    names = [f"waiter-{i}" for i in range(1, 6)]
    toks = {n: await writ.principal(n) for n in names}
    late = await writ.principal("late-ancestor")
    impatient = await writ.principal("impatient")
    held = await writ.grant(h, "fifo/r", ttl_s=120)
    seq = (await writ.audit())[-1]["seq"]

    tasks: dict[str, asyncio.Task[httpx.Response]] = {}
    for n in names:
        tasks[n] = asyncio.create_task(writ.acquire(toks[n], "fifo/r", wait_s=60, ttl_s=60))
        seq = (await writ.wait_for_event("lease.queued", "fifo", n, seq))["seq"]
    # a later request on the ancestor queues behind all five
    tasks["late-ancestor"] = asyncio.create_task(writ.acquire(late, "fifo", wait_s=60, ttl_s=60))
    seq = (await writ.wait_for_event("lease.queued", "fifo", "late-ancestor", seq))["seq"]

    r = await writ.c.get("/v1/resources/fifo/r", headers=writ.auth(h))
    assert [q["principal"] for q in r.json()["queue"]] == [*names, "late-ancestor"]
    err = error(await writ.acquire(impatient, "fifo/r/x"), 409, "held")
    assert err["queue_position"] == 7
    assert err["holder"]["holder"] == "holder"

    order: list[str] = []
    current = held | {"_token": h}
    for expected in [*names, "late-ancestor"]:
        r = await writ.release(current["_token"], current["lease_id"])
        assert r.status_code == 200, r.text
        got = await asyncio.wait_for(tasks[expected], 10)
        assert got.status_code == 201, got.text
        lease = got.json()
        order.append(lease["holder"])
        assert lease["fencing_token"] > current["fencing_token"]
        # exactly one lease held under fifo; everyone behind is still waiting
        r = await writ.c.get(
            "/v1/leases", params={"resource": "fifo", "state": "held"}, headers=writ.auth(h)
        )
        assert [x["holder"] for x in r.json()["leases"]] == [expected]
        assert not any(t.done() for n, t in tasks.items() if n not in order)
        current = lease | {"_token": toks.get(expected, late)}
    assert order == [*names, "late-ancestor"]
    await writ.release(late, current["lease_id"])


async def test_sibling_does_not_overtake_a_queued_ancestor(writ: Writ) -> None:
    """A waiter on ``q`` (blocked by a lease on ``q/a``) is not overtaken by a later request on
    ``q/b``, although ``q/b`` itself is free: the later request is refused, or queued behind."""
    h = await writ.principal("holder")
    w = await writ.principal("waiter")
    x = await writ.principal("later")
    held = await writ.grant(h, "q/a", ttl_s=120)
    seq = (await writ.audit())[-1]["seq"]
    waiter = asyncio.create_task(writ.acquire(w, "q", wait_s=60))
    await writ.wait_for_event("lease.queued", "q", "waiter", seq)

    err = error(await writ.acquire(x, "q/b"), 409, "held")
    assert err["queue_position"] == 2
    later = asyncio.create_task(writ.acquire(x, "q/b", wait_s=60))
    await writ.wait_for_event("lease.queued", "q", "later", seq)

    await writ.release(h, held["lease_id"])
    got = await asyncio.wait_for(waiter, 10)
    assert got.status_code == 201 and got.json()["holder"] == "waiter"
    assert not later.done()
    await writ.release(w, got.json()["lease_id"])
    got2 = await asyncio.wait_for(later, 10)
    assert got2.status_code == 201 and got2.json()["holder"] == "later"
    assert got2.json()["fencing_token"] > got.json()["fencing_token"]


async def test_waiter_times_out_with_held_and_leaves_the_queue(writ: Writ) -> None:
    """A waiter whose ``wait_s`` runs out gets 409 ``held`` naming the holder, and is no longer
    in the queue."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    await writ.grant(a, "prod/db", ttl_s=60)
    err = error(await writ.acquire(b, "prod/db", wait_s=0.2), 409, "held")
    assert err["holder"]["holder"] == "agent-a"
    r = await writ.c.get("/v1/resources/prod/db", headers=writ.auth(a))
    assert r.json()["queue"] == []


async def test_concurrent_conflicting_requests_grant_at_most_one(writ: Writ) -> None:
    """Many agents asking at once for one resource, its ancestors, descendants and blast-
    radius partners: the leases granted never conflict, every loser is told who won, and
    every fencing token is distinct."""
    names = [f"racer-{i}" for i in range(12)]
    toks = [await writ.principal(n) for n in names]
    targets = ["prod/db", "prod", "prod/db/a", "capacity/db", "routing/db-tier", "prod/db/b"]
    rs = await asyncio.gather(
        *(writ.acquire(t, targets[i % len(targets)], ttl_s=60) for i, t in enumerate(toks))
    )
    won = [r.json() for r in rs if r.status_code == 201]
    assert len(won) == 1, [r.text for r in rs]
    winner = won[0]
    for r in rs:
        if r.status_code != 201:
            assert error(r, 409, "held")["holder"]["holder"] == winner["holder"]
    # and on unrelated resources all win, each with its own token
    rs = await asyncio.gather(*(writ.acquire(t, f"solo/{i}") for i, t in enumerate(toks)))
    assert all(r.status_code == 201 for r in rs)
    tokens = [winner["fencing_token"], *(r.json()["fencing_token"] for r in rs)]
    assert len(set(tokens)) == len(tokens)


async def test_a_cancelled_waiter_gives_up_its_place(writ: Writ) -> None:
    """A waiting caller that goes away leaves the queue (a ``lease.denied`` row ends its
    ``lease.queued`` one): the next waiter is served on release, and the one that left never
    holds the lease."""
    h = await writ.principal("holder")
    gone = await writ.principal("gone")
    nxt = await writ.principal("next")
    held = await writ.grant(h, "cancel/r", ttl_s=60)
    first = asyncio.create_task(writ.acquire(gone, "cancel/r", wait_s=60))
    await writ.wait_for_event("lease.queued", "cancel", "gone")
    second = asyncio.create_task(writ.acquire(nxt, "cancel/r", wait_s=60))
    await writ.wait_for_event("lease.queued", "cancel", "next")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # the engine takes it out of the queue as the request is torn down, in the transaction
    # that writes its lease.denied row
    await writ.wait_for_event("lease.denied", "cancel", "gone")
    r = await writ.c.get("/v1/resources/cancel/r", headers=writ.auth(h))
    assert [q["principal"] for q in r.json()["queue"]] == ["next"]
    rows = [x for x in await writ.audit("cancel") if x["agent_id"] == "gone"]
    assert [x["event"] for x in rows] == ["lease.queued", "lease.denied"]
    assert rows[1]["lock_holder"] == "holder" and "disconnected" in rows[1]["notes"]
    await writ.release(h, held["lease_id"])
    got = await asyncio.wait_for(second, 10)
    assert got.status_code == 201 and got.json()["holder"] == "next"
    r = await writ.c.get("/v1/leases", params={"resource": "cancel"}, headers=writ.auth(h))
    assert "gone" not in {x["holder"] for x in r.json()["leases"]}


async def test_a_timed_out_waiter_does_not_hold_up_those_behind(writ: Writ) -> None:
    """When the head of the queue gives up (its wait_s ran out), the waiters behind it keep
    their order and are served on the next release."""
    h = await writ.principal("holder")
    quick = await writ.principal("quick")
    patient = await writ.principal("patient")
    held = await writ.grant(h, "tmo/r", ttl_s=60)
    first = asyncio.create_task(writ.acquire(quick, "tmo/r", wait_s=0.3))
    await writ.wait_for_event("lease.queued", "tmo", "quick")
    second = asyncio.create_task(writ.acquire(patient, "tmo/r", wait_s=30))
    error(await first, 409, "held")
    assert not second.done()
    await writ.release(h, held["lease_id"])
    got = await asyncio.wait_for(second, 10)
    assert got.status_code == 201 and got.json()["holder"] == "patient"


# ----------------------------------------------------------------------------- expiry
async def test_unrenewed_lease_expires_and_a_late_release_never_frees_the_successor(
    writ: Writ,
) -> None:
    """A lease with ``ttl_s=1`` that is not renewed expires on its own (a waiter gets it);
    the old holder's renew and release then get 410 ``lease_lost``, and the late release
    leaves the successor's lease held."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    old = await writ.grant(a, "prod/db", ttl_s=1)
    t0 = time.monotonic()
    got = await writ.acquire(b, "prod/db", wait_s=10, ttl_s=60)
    assert got.status_code == 201, got.text
    assert time.monotonic() - t0 < 5
    new = got.json()
    assert new["fencing_token"] > old["fencing_token"]

    r = await writ.c.get(f"/v1/leases/{old['lease_id']}", headers=writ.auth(a))
    assert r.json()["state"] == "expired"
    lost = error(
        await writ.c.post(f"/v1/leases/{old['lease_id']}/renew", json={}, headers=writ.auth(a)),
        410,
        "lease_lost",
    )
    assert "expired" in lost["message"]
    error(
        await writ.c.post(f"/v1/leases/{old['lease_id']}/renew", headers=writ.auth(a)),
        410,
        "lease_lost",
    )
    error(await writ.release(a, old["lease_id"]), 410, "lease_lost")

    r = await writ.c.get(f"/v1/leases/{new['lease_id']}", headers=writ.auth(b))
    assert r.json()["state"] == "held"
    r = await writ.c.get("/v1/resources/prod/db", headers=writ.auth(b))
    assert r.json()["lease"]["lease_id"] == new["lease_id"]
    r = await writ.c.get(
        "/v1/fence",
        params={"resource": "prod/db", "token": new["fencing_token"]},
        headers=writ.auth(b),
    )
    assert r.json()["current"] is True
    rows = await writ.audit("prod/db")
    expired = [x for x in rows if x["event"] == "lease.expired"]
    assert [x["lock_key"] for x in expired] == [old["lock_key"]]
    assert expired[0]["lock_holder"] == "agent-a"


async def test_expired_lease_does_not_block_a_new_request(tmp_path: Path, admin_env: None) -> None:
    """Once a lease's ttl has passed on the store clock, a request without ``wait_s`` is
    granted at once, even if no sweep has run yet; the dead holder then gets 410."""
    clock = ManualClock()
    async with serve(tmp_path / "writ.db", clock) as w:
        a = await w.principal("agent-a")
        b = await w.principal("agent-b")
        old = await w.grant(a, "prod/db", ttl_s=1)
        clock.advance(1.5)
        new = await w.grant(b, "capacity/db")
        assert new["fencing_token"] > old["fencing_token"]
        error(await w.release(a, old["lease_id"]), 410, "lease_lost")
        r = await w.c.get(f"/v1/leases/{new['lease_id']}", headers=w.auth(b))
        assert r.json()["state"] == "held"


async def test_renew_extends_and_keeps_the_token(tmp_path: Path, admin_env: None) -> None:
    """A renewed lease outlives its first ttl and keeps its fencing token."""
    clock = ManualClock()
    async with serve(tmp_path / "writ.db", clock) as w:
        a = await w.principal("agent-a")
        b = await w.principal("agent-b")
        lease = await w.grant(a, "prod/db", ttl_s=10)
        clock.advance(8)
        r = await w.c.post(
            f"/v1/leases/{lease['lease_id']}/renew", json={"ttl_s": 10}, headers=w.auth(a)
        )
        assert r.status_code == 200, r.text
        assert r.json()["fencing_token"] == lease["fencing_token"]
        assert r.json()["expires_at"] > lease["expires_at"]
        clock.advance(8)  # 16s after the grant: alive only thanks to the renew
        error(await w.acquire(b, "prod/db"), 409, "held")
        error(
            await w.c.post(f"/v1/leases/{lease['lease_id']}/renew", headers=w.auth(b)),
            403,
            "forbidden",
        )


# ----------------------------------------------------------------------------- release, revoke
async def test_non_holder_release_is_forbidden(writ: Writ) -> None:
    """Only the holder may release its lease: anyone else gets 403 and the lease stays."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    lease = await writ.grant(a, "prod/db")
    err = error(await writ.release(b, lease["lease_id"]), 403, "forbidden")
    assert "agent-a" in err["message"]
    error(await writ.release(ADMIN, lease["lease_id"]), 403, "forbidden")
    r = await writ.c.get(f"/v1/leases/{lease['lease_id']}", headers=writ.auth(a))
    assert r.json()["state"] == "held"


async def test_revoke_needs_a_human_and_full_provenance(writ: Writ) -> None:
    """An agent's (or portal's) revoke gets 403; a human's revoke without runbook/paged gets
    422; a complete one revokes (200, state ``revoked``) and its audit row records
    ``second_key_revoke_provenance`` {revoked_by, via_runbook, at, after_paging}."""
    a = await writ.principal("agent-a")
    other = await writ.principal("agent-b")
    portal = await writ.principal("vendor-ui", kind="portal")
    jane = await writ.principal("jane", kind="human")
    lease = await writ.grant(a, "prod/db")
    url = f"/v1/leases/{lease['lease_id']}/revoke"
    full = {"runbook": "R-44", "paged": "oncall-jane", "reason": "holder stuck after 02:17 alert"}

    for tok in (a, other, portal):
        error(await writ.c.post(url, json=full, headers=writ.auth(tok)), 403, "forbidden")
    for missing in ("runbook", "paged", "reason"):
        body = {k: v for k, v in full.items() if k != missing}
        err = error(await writ.c.post(url, json=body, headers=writ.auth(jane)), 422, "invalid")
        assert missing in err["message"], err
    err = error(
        await writ.c.post(url, json={**full, "runbook": "  "}, headers=writ.auth(jane)),
        422,
        "invalid",
    )
    assert "runbook" in err["message"]
    error(await writ.c.post(url, headers=writ.auth(jane)), 422, "invalid")
    r = await writ.c.get(f"/v1/leases/{lease['lease_id']}", headers=writ.auth(a))
    assert r.json()["state"] == "held"

    r = await writ.c.post(url, json=full, headers=writ.auth(jane))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "revoked"
    row = next(x for x in await writ.audit("prod/db") if x["event"] == "lease.revoked")
    prov = row["second_key_revoke_provenance"]
    assert set(prov) == {"revoked_by", "via_runbook", "at", "after_paging"}
    assert prov["revoked_by"] == "jane"
    assert prov["via_runbook"] == "R-44"
    assert prov["after_paging"] == "oncall-jane"
    assert prov["at"] == row["timestamp"]
    assert row["lock_holder"] == "agent-a" and row["lock_key"] == lease["lock_key"]

    # the holder has lost it; a second revoke is 410 too
    error(await writ.release(a, lease["lease_id"]), 410, "lease_lost")
    error(await writ.c.post(url, json=full, headers=writ.auth(jane)), 410, "lease_lost")
    nxt = await writ.grant(other, "prod/db")
    assert nxt["fencing_token"] > lease["fencing_token"]


async def test_queue_kind_may_revoke(writ: Writ) -> None:
    """A human on-call queue holds the second key as well as a human does."""
    a = await writ.principal("agent-a")
    q = await writ.principal("svc-ops", kind="queue")
    lease = await writ.grant(a, "prod/db")
    r = await writ.c.post(
        f"/v1/leases/{lease['lease_id']}/revoke",
        json={"runbook": "R-1", "paged": "svc-ops", "reason": "stuck"},
        headers=writ.auth(q),
    )
    assert r.status_code == 200 and r.json()["state"] == "revoked"


async def test_the_same_app_serves_again_after_its_lifespan_ended(
    tmp_path: Path, admin_env: None
) -> None:
    """An app whose lifespan ran and ended can be started again (test clients and reloaders
    do this): writes still commit, and the sweeper expires an unrenewed lease by itself."""
    engine = Engine(open_store(f"sqlite:///{tmp_path / 'writ.db'}"), parse(POLICY_TEXT))
    app = create_app(engine)
    for round_ in range(2):
        async with asyncio.timeout(10), app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://writ.test",
                event_hooks={"response": [_no_500]},
            ) as client:
                w = Writ(client, engine)
                tok = await w.principal(f"agent-{round_}")
                if round_ == 0:
                    await w.grant(tok, "again/first")
                    continue
                lease = await w.grant(tok, "again/second", ttl_s=1)
                row = await w.wait_for_event("lease.expired", "again/second")
                assert row["lock_key"] == lease["lock_key"] and row["agent_id"] == "writ"


# ----------------------------------------------------------------------------- auth
def _routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        path = route.path_format
        for name in route.param_convertors:
            path = path.replace("{" + name + "}", "x")
        for method in sorted(route.methods or ()):
            out.append((method, path))
    return out


async def test_every_route_but_health_needs_a_valid_token(writ: Writ) -> None:
    """Every route except ``/v1/health`` answers 401 ``unauthenticated`` without a token, with
    an unknown token, and with a non-bearer scheme; health answers without one."""
    routes = _routes(writ.app)
    assert ("GET", "/v1/health") in routes
    assert len(routes) >= 15, routes
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer not-a-real-token"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": ADMIN},
    ]
    for method, path in routes:
        if path == "/v1/health":
            continue
        for headers in bad_headers:
            r = await writ.c.request(method, path, headers=headers)
            error(r, 401, "unauthenticated")
        # a body does not get an unauthenticated call further
        if method == "POST":
            r = await writ.c.request(method, path, json={}, headers={"Authorization": "Bearer x"})
            error(r, 401, "unauthenticated")
    r = await writ.c.get("/v1/health")
    assert r.status_code == 200 and r.json()["ok"] is True


async def test_only_admins_add_principals_and_tokens_are_never_listed(writ: Writ) -> None:
    """A non-admin adding a principal gets 403; the principal list shows no tokens."""
    a = await writ.principal("agent-a")
    r = await writ.c.post(
        "/v1/principals", json={"name": "x", "kind": "agent"}, headers=writ.auth(a)
    )
    error(r, 403, "forbidden")
    r = await writ.c.get("/v1/principals", headers=writ.auth(a))
    assert r.status_code == 200
    text = r.text
    assert a not in text and ADMIN not in text
    assert all("token" not in p for p in r.json()["principals"])
    # a name that exists already is refused, not a 500
    r = await writ.c.post(
        "/v1/principals", json={"name": "agent-a", "kind": "agent"}, headers=writ.admin
    )
    assert r.status_code == 409, r.text


# ----------------------------------------------------------------------------- bad input
async def test_malformed_json_is_422_with_a_message(writ: Writ) -> None:
    """A body that is not JSON (sent as application/json) is 422 ``invalid`` saying so."""
    a = await writ.principal("agent-a")
    for body in (b"{not json", b"", b"[1,2", b'{"resource": "prod/db",}', b"\xff\xfe"):
        r = await writ.c.post(
            "/v1/leases",
            content=body,
            headers={**writ.auth(a), "content-type": "application/json"},
        )
        err = error(r, 422, "invalid")
        assert "json" in err["message"].lower() or "required" in err["message"], err
    r = await writ.c.post(
        "/v1/leases", content=b"[]", headers={**writ.auth(a), "content-type": "application/json"}
    )
    error(r, 422, "invalid")
    r = await writ.c.post(
        "/v1/leases",
        content=b"resource=prod/db",
        headers={**writ.auth(a), "content-type": "text/plain"},
    )
    error(r, 422, "invalid")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"resource": 5, "intent": "x"}, "resource"),
        ({"resource": ["prod"], "intent": "x"}, "resource"),
        ({"resource": "prod/db", "intent": 7}, "intent"),
        ({"resource": "prod/db", "intent": None}, "intent"),
        ({"resource": "prod/db"}, "intent"),
        ({"intent": "x"}, "resource"),
        ({"resource": "prod/db", "intent": "   "}, "intent"),
        ({"resource": "prod/db", "intent": "x", "ttl_s": "soon"}, "ttl_s"),
        ({"resource": "prod/db", "intent": "x", "ttl_s": 0}, "ttl_s"),
        ({"resource": "prod/db", "intent": "x", "ttl_s": 0.5}, "ttl_s"),
        ({"resource": "prod/db", "intent": "x", "ttl_s": 3601}, "ttl_s"),
        ({"resource": "prod/db", "intent": "x", "ttl_s": -1}, "ttl_s"),
        ({"resource": "prod/db", "intent": "x", "wait_s": 301}, "wait_s"),
        ({"resource": "prod/db", "intent": "x", "wait_s": -1}, "wait_s"),
        ({"resource": "prod/db", "intent": "x", "touches": "capacity"}, "touches"),
        ({"resource": "prod/db", "intent": "x", "touches": []}, "touches"),
        ({"resource": "prod/db", "intent": "x", "holder": "someone-else"}, "holder"),
        ({"resource": "Prod/db", "intent": "x"}, "resource"),
        ({"resource": "prod//db", "intent": "x"}, "resource"),
        ({"resource": "/prod/db", "intent": "x"}, "resource"),
        ({"resource": "prod/db/", "intent": "x"}, "resource"),
        ({"resource": "", "intent": "x"}, "resource"),
        ({"resource": "prod db", "intent": "x"}, "resource"),
        ({"resource": "/".join("s" * 17), "intent": "x"}, "resource"),
        ({"resource": "a" * 257, "intent": "x"}, "resource"),
        ({"resource": "prod/db", "intent": "x", "rollback": {"allowed": True}}, "rollback"),
        ({"resource": "prod/db", "intent": "x", "rollback": "yes"}, "rollback"),
    ],
)
async def test_bad_acquire_bodies_are_422_naming_the_field(
    writ: Writ, body: dict[str, Any], needle: str
) -> None:
    """Wrong types, missing fields, bad resource paths and out-of-range numbers are 422
    ``invalid`` with a message that names what was wrong; nothing is granted."""
    a = await writ.principal("agent-a")
    err = error(await writ.c.post("/v1/leases", json=body, headers=writ.auth(a)), 422, "invalid")
    assert needle in err["message"], err
    r = await writ.c.get("/v1/leases", headers=writ.auth(a))
    assert r.json()["leases"] == []


async def test_resource_path_limits_are_exact(writ: Writ) -> None:
    """16 segments and 256 characters are accepted; one more of either is refused."""
    a = await writ.principal("agent-a")
    await writ.grant(a, "/".join("s" * 16))
    await writ.grant(a, "b" * 256)
    err = error(await writ.acquire(a, "/".join("t" * 17)), 422, "invalid")
    assert "17" in err["message"] and "16" in err["message"]
    err = error(await writ.acquire(a, "c" * 257), 422, "invalid")
    assert "256" in err["message"]
    err = error(await writ.acquire(a, "prod/DB"), 422, "invalid")
    assert "DB" in err["message"]
    err = error(await writ.acquire(a, "prod//db"), 422, "invalid")
    assert "empty" in err["message"]


async def test_unknown_lease_is_404(writ: Writ) -> None:
    """Renew, release, revoke and read of a lease id that does not exist are 404."""
    a = await writ.principal("agent-a")
    jane = await writ.principal("jane", kind="human")
    error(await writ.c.get("/v1/leases/ls_nope", headers=writ.auth(a)), 404, "not_found")
    error(await writ.c.post("/v1/leases/ls_nope/renew", headers=writ.auth(a)), 404, "not_found")
    error(await writ.release(a, "ls_nope"), 404, "not_found")
    error(
        await writ.c.post(
            "/v1/leases/ls_nope/revoke",
            json={"runbook": "r", "paged": "p", "reason": "x"},
            headers=writ.auth(jane),
        ),
        404,
        "not_found",
    )
    error(await writ.c.get("/v1/no-such-route", headers=writ.auth(a)), 404, "not_found")


async def test_oversized_body_is_413(writ: Writ) -> None:
    """A body over 1 MiB is 413 ``too_large``, declared or streamed without a length."""
    a = await writ.principal("agent-a")
    big = json.dumps({"resource": "prod/db", "intent": "x" * (2 << 20)}).encode()
    r = await writ.c.post(
        "/v1/leases", content=big, headers={**writ.auth(a), "content-type": "application/json"}
    )
    error(r, 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * (64 << 10)

    r = await writ.c.post(
        "/v1/leases", content=chunks(), headers={**writ.auth(a), "content-type": "application/json"}
    )
    error(r, 413, "too_large")
    r = await writ.c.get("/v1/leases", headers=writ.auth(a))
    assert r.json()["leases"] == []


async def test_bad_query_parameters_are_422(writ: Writ) -> None:
    """Bad query values (types, ranges, resource paths, times) are 422, never 500."""
    a = await writ.principal("agent-a")
    h = writ.auth(a)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/v1/leases", {"limit": 0}),
        ("/v1/leases", {"limit": 100_001}),
        ("/v1/leases", {"limit": "many"}),
        ("/v1/leases", {"state": "gone"}),
        ("/v1/leases", {"resource": "Bad/Path"}),
        ("/v1/audit", {"after_seq": -1}),
        ("/v1/audit", {"since": "yesterday-ish"}),
        ("/v1/audit", {"resource": "a//b"}),
        ("/v1/who", {}),
        ("/v1/who", {"resource": "prod/db", "at": "not a time"}),
        ("/v1/who", {"resource": "prod/db", "at": "1e300"}),
        ("/v1/who", {"resource": "prod/db", "at": "nan"}),
        ("/v1/who", {"resource": "prod/db", "at": "-99999999999999d"}),
        ("/v1/audit", {"until": "inf"}),
        ("/v1/who", {"resource": "PROD"}),
        ("/v1/fence", {"resource": "prod/db"}),
        ("/v1/fence", {"resource": "prod/db", "token": "abc"}),
        ("/v1/events", {"wait_s": 301}),
        ("/v1/events", {"wait_s": "nan"}),
        ("/v1/resources/Prod", {}),
    ]
    for path, params in cases:
        r = await writ.c.get(path, params=params, headers=h)
        error(r, 422, "invalid")


# ----------------------------------------------------------------------------- audit
async def test_audit_rows_have_exactly_the_protocol_fields_and_verify(writ: Writ) -> None:
    """After every kind of lease event, each audit row carries exactly the PROTOCOL.md
    fields, ``lock_holder`` is always a name or ``"none"``, the chain recomputes from the
    wire rows (sha256(prev_hash + canonical JSON without hash)), and verify is ok."""
    a = await writ.principal("agent-a")
    b = await writ.principal("agent-b")
    jane = await writ.principal("jane", kind="human")
    l1 = await writ.grant(a, "prod/db", ttl_s=60)
    error(await writ.acquire(b, "prod/db"), 409, "held")
    await writ.c.post(
        f"/v1/leases/{l1['lease_id']}/renew", json={"ttl_s": 30}, headers=writ.auth(a)
    )
    waiter = asyncio.create_task(writ.acquire(b, "prod/db", wait_s=30))
    await writ.wait_for_event("lease.queued", "prod/db", "agent-b")
    await writ.release(a, l1["lease_id"])
    l2 = (await waiter).json()
    await writ.c.post(
        f"/v1/leases/{l2['lease_id']}/revoke",
        json={"runbook": "R", "paged": "p", "reason": "r"},
        headers=writ.auth(jane),
    )
    await writ.grant(a, "solo/x", intent="naïve ünïcode ✓")

    rows = await writ.audit()
    events = {r["event"] for r in rows}
    assert {
        "principal.added",
        "lease.granted",
        "lease.denied",
        "lease.renewed",
        "lease.queued",
        "lease.released",
        "lease.revoked",
    } <= events, events
    prev = GENESIS
    for i, row in enumerate(rows, start=1):
        assert list(row) == AUDIT_FIELDS, list(row)
        assert row["seq"] == i
        assert isinstance(row["lock_holder"], str) and row["lock_holder"], row
        assert row["timestamp"].endswith("Z")
        assert row["prev_hash"] == prev
        body = {k: v for k, v in row.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((prev + canonical).encode()).hexdigest() == row["hash"], row
        prev = row["hash"]
    for row in rows:
        if row["event"].startswith("lease.") and row["event"] != "lease.denied":
            assert row["lock_holder"] != "none", row
        if row["event"].startswith("principal."):
            assert row["lock_holder"] == "none"

    r = await writ.c.get("/v1/audit/verify", headers=writ.auth(a))
    assert r.status_code == 200
    assert r.json() == {"ok": True, "rows": len(rows), "head": prev, "first_bad_seq": None}


async def test_audit_pages_and_filters(writ: Writ) -> None:
    """``/v1/audit`` pages with ``after_seq``/``limit`` and filters by resource prefix."""
    a = await writ.principal("agent-a")
    for r in ("p/one", "p/two", "other/three"):
        await writ.grant(a, r)
    r = await writ.c.get("/v1/audit", params={"limit": 2}, headers=writ.auth(a))
    page = r.json()
    assert [x["seq"] for x in page["rows"]] == [1, 2] and page["next_after_seq"] == 2
    r = await writ.c.get("/v1/audit", params={"resource": "p"}, headers=writ.auth(a))
    assert [x["resource"] for x in r.json()["rows"]] == ["p/one", "p/two"]


async def test_who_answers_from_the_ledger(writ: Writ) -> None:
    """``/v1/who`` names the holder now, ``"none"`` for a free resource."""
    a = await writ.principal("agent-a")
    lease = await writ.grant(a, "prod/db")
    r = await writ.c.get("/v1/who", params={"resource": "prod/db/x"}, headers=writ.auth(a))
    assert r.json()["lock_holder"] == "agent-a"
    assert r.json()["lease"]["lease_id"] == lease["lease_id"]
    await writ.release(a, lease["lease_id"])
    r = await writ.c.get("/v1/who", params={"resource": "prod/db"}, headers=writ.auth(a))
    assert r.json()["lock_holder"] == "none" and r.json()["lease"] is None
    r = await writ.c.get(
        "/v1/who", params={"resource": "prod/db", "at": lease["acquired_at"]}, headers=writ.auth(a)
    )
    assert r.json()["lock_holder"] == "agent-a"


@pytest.mark.parametrize(
    "body",
    [
        {"resource": "eq/{n}", "intent": "x"},
        {"resource": "eq/{n}", "intent": "x", "ttl_s": 5, "wait_s": 0, "touches": ["capacity"]},
        {"resource": "eq/{n}", "intent": "x", "ttl_s": "7"},
        {"resource": "eq/{n}", "intent": ""},
        {"resource": "Eq/{n}", "intent": "x"},
        {"resource": "eq/{n}", "intent": "x", "ttl_s": 0},
        {"resource": "eq/{n}", "intent": "x", "ttl_s": "abc"},
        {"resource": "eq/{n}", "intent": "x", "wait_s": 301},
        {"resource": "eq/{n}", "intent": "x", "touches": []},
        {"resource": "eq/{n}", "intent": 5},
        {"resource": 7, "intent": "x"},
        {"intent": "x"},
    ],
)
async def test_lean_acquire_path_answers_like_the_full_one(
    writ: Writ, body: dict[str, Any]
) -> None:
    """The lean handler of POST /v1/leases (plain bodies) and the FastAPI route (any body with
    another field, here a null consent_id) give the same status and error code."""
    token = await writ.principal("eq-agent")
    answers = []
    for n, extra in enumerate(({}, {"consent_id": None})):
        b = {
            k: (v.format(n=n) if isinstance(v, str) and "{n}" in v else v) for k, v in body.items()
        }
        r = await writ.c.post("/v1/leases", json={**b, **extra}, headers=writ.auth(token))
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
        answers.append((r.status_code, code))
        if r.status_code == 201:
            assert r.json()["ttl_s"] == float(b.get("ttl_s", 30))
    assert answers[0] == answers[1], answers


async def test_lean_acquire_path_writes_the_same_bytes_as_the_full_one(writ: Writ) -> None:
    """Both paths write the lease as FastAPI does: compact UTF-8, not ``\\u`` escapes."""
    token = await writ.principal("utf-agent")
    for n, extra in enumerate(({}, {"consent_id": None})):
        body = {"resource": f"utf/{n}", "intent": "capacity 4→8", **extra}
        r = await writ.c.post("/v1/leases", json=body, headers=writ.auth(token))
        assert r.status_code == 201, r.text
        assert '"intent":"capacity 4→8",'.encode() in r.content, r.content
