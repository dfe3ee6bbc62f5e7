"""A lease's rollback plan names the humans behind it — its ``override_queue`` is paged for a
stuck lock and takes the consents its changes leave unanswered — so every field it gives is
checked whether or not it allows a rollback. Before, ``"allowed": false`` skipped the checks:
an agent named itself (or an accomplice, or nobody registered) as its override queue, answered
its own escalated consents, shut the humans out of them, and had stuck-lock pages go to its
own wake route. Plans stored before the check are read with the policy's queue instead."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_safety import World, receiver, world  # noqa: F401 (fixtures)
from writ.core.models import Principal
from writ.engine.principals import member_of
from writ.rules.rollbacks import Rollbacks

BASE = {"resource": "prod/db", "intent": "double capacity", "touches": ["capacity"]}


@pytest.mark.parametrize(
    "plan, word",
    [
        ({"override_queue": "perf-agent"}, "agent"),  # itself
        ({"override_queue": "cost-agent"}, "agent"),  # an accomplice
        ({"override_queue": "vendor-portal-button"}, "portal"),
        ({"override_queue": "nobody-at-all"}, "not a registered principal"),
        ({"key_holder": "perf-agent"}, "agent"),
        ({"path": "click Rollback in the vendor console"}, "route"),
        ({"path": "https://admin:hunter2@ops.internal/rollback"}, "credentials"),
    ],
)
async def test_a_plan_that_allows_no_rollback_is_checked_all_the_same(
    world: World,  # noqa: F811
    plan: dict[str, Any],
    word: str,
) -> None:
    w = world
    r = await w.post("perf-agent", "/v1/leases", {**BASE, "rollback": {"allowed": False, **plan}})
    assert r.status_code == 422, r.text
    assert word in r.json()["error"]["message"]
    assert not await w.rows("lease.granted")


async def test_a_plan_that_allows_no_rollback_may_name_a_human_queue(
    world: World,  # noqa: F811
) -> None:
    w = world
    plans = [{"allowed": False}, {"allowed": False, "override_queue": "svc-ops-princess"}]
    for plan in plans:
        r = await w.post("perf-agent", "/v1/leases", {**BASE, "rollback": plan})
        assert r.status_code == 201, r.text
        assert (await w.post("perf-agent", f"/v1/leases/{r.json()['lease_id']}/release")).is_success
    granted = await w.rows("lease.granted")
    assert [g["human_override_queue"] for g in granted] == ["svc-ops-princess"] * 2


@pytest.fixture
def unchecked_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans taken as given, as writ took one that allowed no rollback before the check."""

    async def as_given(self: Rollbacks, plan: dict[str, Any]) -> dict[str, Any]:
        return dict(plan)

    monkeypatch.setattr(Rollbacks, "check_plan", as_given)


async def test_a_stored_plan_naming_an_agent_escalates_to_the_policys_queue(
    world: World,  # noqa: F811
    unchecked_plans: None,
) -> None:
    """perf-agent's change stored under a plan naming cost-agent as its queue: cost-agent's
    own ask expires unanswered; the escalation goes to the policy's queue, which may answer;
    the agent the plan named may not."""
    w = world
    plan = {"allowed": False, "override_queue": "cost-agent"}
    r = await w.post("perf-agent", "/v1/leases", {**BASE, "rollback": plan})
    assert r.status_code == 201 and r.json()["rollback"]["override_queue"] == "cost-agent"
    lease = r.json()
    body = {"attribute": "capacity", "summary": "capacity 4→8", "before": 4, "after": 8}
    body["fencing_token"] = lease["fencing_token"]
    r = await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/changes", body)
    assert r.status_code == 201, r.text
    change = r.json()
    assert change["override_queue"] == "svc-ops-princess"
    recorded = (await w.rows("change.recorded"))[-1]
    assert recorded["human_override_queue"] == "svc-ops-princess"  # what verify reads it by
    await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
    ask = {"change_id": change["change_id"], "reason": "overprovisioned"}
    r = await w.post("routing-agent", "/v1/consents", ask)
    assert r.status_code == 201, r.text
    consent = r.json()
    await w.tick(121)
    r = await w.get("routing-agent", f"/v1/consents/{consent['consent_id']}")
    assert r.json()["status"] == "expired" and r.json()["escalated_to"] == "svc-ops-princess"
    url = f"/v1/consents/{consent['consent_id']}/grant"
    assert (await w.post("cost-agent", url)).status_code == 403
    r = await w.post("oncall-jane", url)  # a human member of the policy's queue
    assert r.status_code == 200 and r.json()["status"] == "granted"
    assert (await w.engine.verify()).ok


async def test_a_stored_plan_naming_an_agent_or_a_ghost_pages_the_policys_queue(
    world: World,  # noqa: F811
    unchecked_plans: None,
) -> None:
    """A stuck lock whose stored plan names an agent (or nobody registered) pages the policy's
    queue, not the agent's wake route."""
    w = world
    for i, queue in enumerate(("perf-agent", "nobody-at-all")):
        plan = {"allowed": False, "override_queue": queue}
        body = {"resource": f"prod/q{i}", "intent": "hold", "ttl_s": 900, "rollback": plan}
        assert (await w.post("perf-agent", "/v1/leases", body)).status_code == 201
    await w.tick(601)  # past max_hold_s: woken
    await w.tick(61)  # past page_after_s: paged
    paged = await w.rows("lease.paged")
    assert len(paged) == 2 and all("paging svc-ops-princess" in p["notes"] for p in paged)
    assert w.rx.paths().count("/page/ops") == 2


def test_an_agent_or_portal_named_as_a_queue_is_no_member_of_it() -> None:
    def who(name: str, kind: str, queues: tuple[str, ...] = ()) -> Principal:
        return Principal(name=name, kind=kind, queues=list(queues))

    assert not member_of(who("cost-agent", "agent"), "cost-agent")
    assert not member_of(who("vendor-portal", "portal"), "vendor-portal")
    assert member_of(who("ops", "queue"), "ops") and member_of(who("jane", "human"), "jane")
    assert member_of(who("jane", "human", ("ops",)), "ops")
    assert not member_of(who("bot", "agent", ("ops",)), "ops")
