"""A ``[blast_radius]`` change applied by a restart while leases are held.

Before, alice held ``svc/a`` (token 1) and bob ``svc/b`` (token 2) when ``writ serve`` came
back with both in one group: nothing was logged, the fence named alice's token 1 current on
``svc/b`` while ``who`` named bob (and bob on ``svc/a``), and the gate passed alice's write
on ``svc/b`` and refused bob's — the token going backwards on ``svc/b``. Now the start logs
the pair and records it in the ledger, and every read names the lease of the highest token
granted over the resource while it is held, nobody after: the current token only goes up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from writ.core.errors import Held
from writ.core.models import Principal
from writ.core.policy import parse
from writ.engine import Engine

BEFORE = 'default_override_queue = "ops-q"\n'
AFTER = BEFORE + '[blast_radius]\nsvc-tier = ["svc/a", "svc/b"]\n'

Start = Callable[[str], Coroutine[Any, Any, Engine]]


@pytest.fixture
async def start(backend: Backend, no_admin_env: None) -> AsyncIterator[Start]:
    """``await start(policy)``: a server (engine) started on the test's store; the one
    started before it is stopped first, as a restart does."""
    running: list[Engine] = []

    async def go(policy: str) -> Engine:
        while running:
            await running.pop().stop()
        engine = Engine(backend.open_store(), parse(policy))
        await engine.start(background=False)
        running.append(engine)
        return engine

    yield go
    while running:
        await running.pop().stop()


class Two:
    """alice's lease on svc/a (token 1) and bob's on svc/b (token 2), granted under BEFORE."""

    def __init__(self) -> None:
        self.p: dict[str, tuple[Principal, str]] = {}
        self.lease: dict[str, dict[str, Any]] = {}

    async def grant(self, engine: Engine) -> None:
        for name, kind in (("alice", "agent"), ("bob", "agent"), ("carol", "agent")):
            self.p[name] = await engine.add_principal(None, name, kind)
        await engine.add_principal(None, "ops-q", "queue")
        self.p["gate1"] = await engine.add_principal(None, "gate1", "agent")
        for name, resource in (("alice", "svc/a"), ("bob", "svc/b")):
            self.lease[name] = await engine.acquire(
                self.p[name][0], resource=resource, intent="work", ttl_s=900
            )
        assert [self.lease[n]["fencing_token"] for n in ("alice", "bob")] == [1, 2]

    async def gate(self, engine: Engine, name: str, resource: str) -> dict[str, Any]:
        lease = self.lease[name]
        return await engine.gate_check(
            self.p["gate1"][0],
            self.p[name][1],
            lease["lease_id"],
            lease["fencing_token"],
            resource,
            "POST",
            f"/{resource}/x",
        )


@pytest.fixture
async def held(start: Start) -> Two:
    h = Two()
    await h.grant(await start(BEFORE))
    return h


async def _rows(engine: Engine, event: str) -> list[dict[str, Any]]:
    return [r for r in (await engine.audit(0, 1000))["rows"] if r["event"] == event]


async def test_the_start_logs_each_overlapping_pair_and_records_it_once(
    held: Two, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = held.lease["alice"], held.lease["bob"]
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        engine = await start(AFTER)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert alice["lease_id"] in errors[0] and bob["lease_id"] in errors[0]
    assert "alice on svc/a (token 1)" in errors[0] and "bob on svc/b (token 2)" in errors[0]
    (row,) = await _rows(engine, "lease.overlapped")
    assert row["resource"] == "svc/a" and row["lock_key"] == alice["lock_key"]
    assert row["agent_id"] == "writ" and bob["lease_id"] in row["notes"]
    # another restart (or another server) with the same groups: logged again, written once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        engine = await start(AFTER)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    assert len(await _rows(engine, "lease.overlapped")) == 1
    assert (await engine.verify()).ok


async def test_fence_gate_and_who_name_the_higher_token_on_every_member(
    held: Two, start: Start
) -> None:
    engine = await start(AFTER)
    for resource in ("svc/a", "svc/b"):
        fence = await engine.fence(resource, 2)
        assert (fence["current"], fence["current_token"], fence["holder"]) == (True, 2, "bob")
        assert not (await engine.fence(resource, 1))["current"]
        assert (await engine.who(resource))["lock_holder"] == "bob"
    assert (await held.gate(engine, "bob", "svc/b"))["passed"]
    for resource in ("svc/a", "svc/b"):
        refused = await held.gate(engine, "alice", resource)
        assert not refused["passed"] and refused["holder"]["holder"] == "bob"
        assert "a higher fencing token was granted over it" in refused["reason"], refused


async def test_once_the_higher_token_ends_the_lower_writes_nothing_it_covered(
    held: Two, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await start(AFTER)
    carol = held.p["carol"][0]
    with pytest.raises(Held):  # both hold the group: no third holder
        await engine.acquire(carol, resource="svc/b", intent="x", wait_s=0)
    await engine.release(held.p["bob"][0], held.lease["bob"]["lease_id"])
    for resource in ("svc/a", "svc/b"):
        fence = await engine.fence(resource, 1)
        assert (fence["current"], fence["current_token"], fence["holder"]) == (False, None, None)
        assert (await engine.who(resource))["lock_holder"] == "none"
        assert not (await held.gate(engine, "alice", resource))["passed"]
    with pytest.raises(Held):  # alice's lease still keeps the group
        await engine.acquire(carol, resource="svc/b", intent="x", wait_s=0)
    await engine.release(held.p["alice"][0], held.lease["alice"]["lease_id"])
    lease = await engine.acquire(carol, resource="svc/b", intent="x", wait_s=0)
    assert lease["fencing_token"] > 2
    assert (await engine.fence("svc/a", lease["fencing_token"]))["current"]
    # a lease granted under the groups in force overlaps nothing at the next start
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        engine = await start(AFTER)
    assert not caplog.records
    assert len(await _rows(engine, "lease.overlapped")) == 1  # the first start's
    assert (await engine.fence("svc/b", lease["fencing_token"]))["current"]


async def test_a_grant_that_ended_before_the_restart_still_outranks_a_lower_token(
    held: Two, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """bob's token 2 on svc/b ended before the restart: alice's token 1, which now covers
    svc/b, is not current there (nor on svc/a, in the same group), and the start says so."""
    engine = await start(BEFORE)
    await engine.release(held.p["bob"][0], held.lease["bob"]["lease_id"])
    assert (await engine.fence("svc/b", 2))["current_token"] is None
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        engine = await start(AFTER)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "writ.engine"]
    assert held.lease["alice"]["lease_id"] in warning and "token 2 was granted on svc/b" in warning
    for resource in ("svc/a", "svc/b"):
        fence = await engine.fence(resource, 1)
        assert (fence["current"], fence["current_token"]) == (False, None)
        assert (await engine.who(resource))["lock_holder"] == "none"
    assert not await _rows(engine, "lease.overlapped")  # one holder: no pair to record
