"""Stateful property test: the engine against a simple model of write authority.

Hypothesis drives random acquire / renew / release / revoke / clock moves / sweeps over a few
related resources (hierarchy plus one blast-radius group) and checks every answer against a
model that only knows "a lease holds until it ends or its ttl passes"; fencing tokens must
strictly increase, and the ledger must verify at every step.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from writ.core.clock import ManualClock
from writ.core.errors import Forbidden, Held, LeaseLost
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.sqlite import SQLiteStore

RESOURCES = ["prod", "prod/db", "prod/db/replica", "routing/db-tier", "routing/edge", "staging"]
POLICY = '[blast_radius]\ndb-tier = ["prod/db", "routing/db-tier"]\n'
AGENTS = ["a1", "a2", "a3"]


@dataclass
class M:
    lease_id: str
    resource: str
    holder: str
    expires: float
    ended: bool = False


class EngineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = ManualClock()
        self.engine = Engine(
            SQLiteStore(f"sqlite:///{self.dir.name}/m.db", clock=self.clock), parse(POLICY)
        )
        self.run(self.engine.start(background=False))
        self.p = {}
        for name in [*AGENTS, "ops"]:
            p, _ = self.run(
                self.engine.add_principal(None, name, "queue" if name == "ops" else "agent")
            )
            self.p[name] = p
        self.leases: list[M] = []
        self.last_token = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.engine.stop())
        self.loop.close()
        self.dir.cleanup()

    def live(self) -> list[M]:
        now = self.clock.now()
        return [m for m in self.leases if not m.ended and m.expires > now]

    @rule(
        agent=st.sampled_from(AGENTS), resource=st.sampled_from(RESOURCES), ttl=st.integers(1, 20)
    )
    def acquire(self, agent: str, resource: str, ttl: int) -> None:
        blocked = [m for m in self.live() if self.engine.blast.conflicts(resource, m.resource)]
        try:
            lease = self.run(
                self.engine.acquire(self.p[agent], resource=resource, intent="t", ttl_s=ttl)
            )
        except Held as e:
            assert blocked, f"refused {resource} with nothing conflicting held"
            assert e.holder["holder"] in {m.holder for m in blocked}
            return
        assert not blocked, f"granted {resource} over {[(m.resource, m.holder) for m in blocked]}"
        assert lease["fencing_token"] > self.last_token
        self.last_token = lease["fencing_token"]
        self.leases.append(M(lease["lease_id"], resource, agent, self.clock.now() + ttl))

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), by_holder=st.booleans())
    def release(self, data: st.DataObject, by_holder: bool) -> None:
        m = data.draw(st.sampled_from(self.leases))
        who = m.holder if by_holder else next(a for a in AGENTS if a != m.holder)
        alive = m in self.live()
        try:
            out = self.run(self.engine.release(self.p[who], m.lease_id))
        except Forbidden:
            assert not by_holder
            return
        except LeaseLost:
            assert by_holder and not alive
            m.ended = True
            return
        assert by_holder and alive and out["state"] == "released"
        m.ended = True

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), ttl=st.integers(1, 20))
    def renew(self, data: st.DataObject, ttl: int) -> None:
        m = data.draw(st.sampled_from(self.leases))
        alive = m in self.live()
        try:
            self.run(self.engine.renew(self.p[m.holder], m.lease_id, ttl))
        except LeaseLost:
            assert not alive
            m.ended = True
            return
        assert alive
        m.expires = self.clock.now() + ttl

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.leases))
        alive = m in self.live()
        try:
            self.run(self.engine.revoke(self.p["ops"], m.lease_id, "R-1", "oncall", "test"))
        except LeaseLost:
            assert not alive
            m.ended = True
            return
        assert alive
        m.ended = True

    @rule(seconds=st.sampled_from([0.5, 1, 5, 15]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        self.run(self.engine.sweep())
        for m in self.leases:
            if m.expires <= self.clock.now():
                m.ended = True

    @invariant()
    def held_matches_model(self) -> None:
        held = {d["lease_id"] for d in self.run(self.engine.list_leases(state="held", limit=1000))}
        assert held == {m.lease_id for m in self.live()}

    @invariant()
    def ledger_verifies(self) -> None:
        assert self.run(self.engine.verify()).ok


TestEngineVsModel = EngineVsModel.TestCase
TestEngineVsModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
