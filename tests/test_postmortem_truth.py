"""The postmortem says what the rows say, on every store: each answer, outcome and end of a
wait is given to the request whose id it names (not to the first one like it), agent text
with newlines, spaces and quotes is read as the text it is, and a refusal's kind comes from
writ's own words, never from an agent's quoted intent."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from writ.core.errors import Held
from writ.demo import POLICY as SEED_POLICY
from writ.engine import Engine
from writ.evidence.postmortem import Query, StoreSource, build, collect, to_markdown

POLICY = 'rollback_base_url = "http://rollback.test"\n' + SEED_POLICY
# no override queue anywhere: an unanswered consent escalates to nobody
NO_QUEUE_POLICY = '[[rules]]\nprefix = "prod"\nprotect_s = 900\nconsent_timeout_s = 120\n'
PLAN = {
    "allowed": True,
    "path": "/internal/db/rollback?txn=8841",
    "key_holder": "svc-ops-princess",
    "override_queue": "svc-ops-princess",
}


async def _engine(make_engine: Any, policy: str = POLICY) -> tuple[Engine, dict[str, Any]]:
    e: Engine = await make_engine(policy)
    e.caller.transport = httpx.MockTransport(lambda r: httpx.Response(200))
    names = (("perf-agent", "agent"), ("cost-agent", "agent"), ("evil-agent", "agent"))
    p = {n: (await e.add_principal(None, n, k))[0] for n, k in names}
    if "svc-ops-princess" in policy:
        p["svc-ops-princess"] = (await e.add_principal(None, "svc-ops-princess", "queue"))[0]
    return e, p


async def _report(e: Engine) -> dict[str, Any]:
    return await collect(StoreSource(e), Query(["prod"]))


async def test_an_approval_goes_to_the_rollback_it_names(make_engine: Any) -> None:
    """Two agents ask to roll one lease back; the key holder approves the second. The
    report shows the second approved and run, and the first still pending (not the first
    on the lock key approved with the second's answer)."""
    e, p = await _engine(make_engine)
    lease = await e.acquire(
        p["perf-agent"], resource="prod/db", intent="scale up", ttl_s=600, rollback=PLAN
    )
    await e.rollbacks.request(p["evil-agent"], lease_id=lease["lease_id"], reason="evil")
    second = await e.rollbacks.request(p["cost-agent"], lease_id=lease["lease_id"], reason="cost")
    await e.rollbacks.answer(p["svc-ops-princess"], second["rollback_id"], True)
    rep = await _report(e)
    got = {r["requested_by"]: (r["status"], r["decided_by"], r["reason"]) for r in rep["rollbacks"]}
    assert got == {
        "evil-agent": ("pending", None, "evil"),
        "cost-agent": ("executed", "svc-ops-princess", "cost"),
    }


async def test_a_defect_goes_to_the_rollback_it_names(make_engine: Any) -> None:
    """Two rollbacks of one lease run, one after the other; a human marks the first a
    defect. The report shows the first's defect (not the last one that ran on the key)."""
    e, p = await _engine(make_engine)
    lease = await e.acquire(
        p["perf-agent"], resource="prod/db", intent="scale up", ttl_s=600, rollback=PLAN
    )
    ran = []
    for who in ("cost-agent", "evil-agent"):
        rb = await e.rollbacks.request(p[who], lease_id=lease["lease_id"], reason=who)
        await e.rollbacks.answer(p["svc-ops-princess"], rb["rollback_id"], True)
        ran.append(rb["rollback_id"])
    await e.rollbacks.defect(p["svc-ops-princess"], ran[0], "made it worse")
    rep = await _report(e)
    got = {r["rollback_id"]: (r["status"], bool(r["defect"])) for r in rep["rollbacks"]}
    assert got == {ran[0]: ("executed", True), ran[1]: ("executed", False)}


async def test_an_answer_or_expiry_goes_to_the_consent_it_names(
    make_engine: Any, backend: Any
) -> None:
    """evil-agent asks about two changes to one attribute; perf-agent grants the second ask:
    the report shows that one granted and the first unanswered. cost-agent asks about x, then
    y; x's ask is granted; it asks about x again; y's ask expires: the report shows y's
    expired, not the later ask about x."""
    e, p = await _engine(make_engine)
    perf, cost, evil = p["perf-agent"], p["cost-agent"], p["evil-agent"]
    lease = await e.acquire(
        perf, resource="prod/api", intent="tune", ttl_s=600, touches=["capacity", "x", "y"]
    )
    lid = lease["lease_id"]
    c1 = await e.consents.record_change(perf, lid, "capacity", "capacity 4->8")
    c2 = await e.consents.record_change(perf, lid, "capacity", "capacity 8->16")
    cx = await e.consents.record_change(perf, lid, "x", "x on")
    cy = await e.consents.record_change(perf, lid, "y", "y on")
    await e.release(perf, lid)
    a1 = await e.consents.ask(evil, c1["change_id"], "about change 1")
    a2 = await e.consents.ask(evil, c2["change_id"], "about change 2")
    await e.consents.answer(perf, a2["consent_id"], True)

    ax = await e.consents.ask(cost, cx["change_id"], "x first")
    await backend.advance(1)
    ay = await e.consents.ask(cost, cy["change_id"], "y")
    await e.consents.answer(perf, ax["consent_id"], True)
    await backend.advance(1)
    ax2 = await e.consents.ask(cost, cx["change_id"], "x again")
    await backend.advance(119.5)  # past y's answer-by time, before the second x ask's
    await e.sweep()
    assert (await e.consents.get(ay["consent_id"]))["status"] == "expired"
    assert (await e.consents.get(ax2["consent_id"]))["status"] == "pending"
    assert (await e.consents.get(a1["consent_id"]))["status"] == "expired"

    rep = await _report(e)
    got = [(c["requester"], c["reason"], c["status"]) for c in rep["consents"]]
    assert got == [
        ("evil-agent", "about change 1", "expired"),  # unanswered, swept with y's ask
        ("evil-agent", "about change 2", "granted"),
        ("cost-agent", "x first", "granted"),
        ("cost-agent", "y", "expired"),
        ("cost-agent", "x again", "pending"),
    ]
    assert rep["consents"][1]["change_id"] == c2["change_id"]


async def test_agent_text_with_newlines_spaces_and_quotes_reads_as_it_is(
    make_engine: Any, backend: Any
) -> None:
    """An attribute with a space, a summary with quotes, a newline and ``): `` in it, and a
    reason over two lines: the change, the ask and its answer and use are read as they were
    given and paired; an ask that expires with no queue says it escalated to nobody; and a
    row worded otherwise reads as unknown, never as None."""
    e, p = await _engine(make_engine, NO_QUEUE_POLICY)
    perf, cost = p["perf-agent"], p["cost-agent"]
    attr, summary = "max replicas", 'it\'s "4" (was 2): now 8\nand more'
    reason = "cost spike.\nSee ticket 4411."
    lease = await e.acquire(
        perf, resource="prod/api", intent="tune", ttl_s=600, touches=[attr, "load"]
    )
    change = await e.consents.record_change(perf, lease["lease_id"], attr, summary)
    other = await e.consents.record_change(perf, lease["lease_id"], "load", "low")
    await e.release(perf, lease["lease_id"])
    asked = await e.consents.ask(cost, change["change_id"], reason)
    await e.consents.answer(perf, asked["consent_id"], True)
    await e.acquire(
        cost, resource="prod/api", intent="undo", touches=[attr], consent_id=asked["consent_id"]
    )
    await e.consents.ask(cost, other["change_id"], "load: too low")
    await backend.advance(121)
    await e.sweep()

    rep = await _report(e)
    assert [(c["attribute"], c["summary"]) for c in rep["changes"]] == [
        (attr, summary),
        ("load", "low"),
    ]
    used, expired = rep["consents"]
    assert (used["requester"], used["author"], used["attribute"]) == (
        "cost-agent",
        "perf-agent",
        attr,
    )
    assert (used["change"], used["reason"], used["status"]) == (summary, reason, "used")
    assert (expired["attribute"], expired["reason"], expired["status"]) == (
        "load",
        "load: too low",
        "expired",
    )
    assert expired["escalated_to"] == "nobody (no override queue)"
    said = " ".join(rep["summary"])
    assert "escalated to nobody (no override queue)" in said and "None" not in said

    row = {"seq": 1, "timestamp": "2026-05-16T10:00:00.000000Z", "resource": "prod/api"}
    odd = build(
        [{**row, "event": "consent.requested", "agent_id": "cost-agent", "notes": "undo"}],
        Query(["prod"]),
    )
    [c] = odd["consents"]
    assert (c["requester"], c["author"], c["reason"]) == ("cost-agent", "(unknown)", "undo")
    assert "None" not in " ".join(odd["summary"]) and "None" not in to_markdown(odd)


async def test_a_refusal_is_classified_by_writs_words_not_an_agents(make_engine: Any) -> None:
    """A holder whose intent says "prod/h is frozen by jane", and an asker whose intent
    holds both quotes and ``': prod/g is frozen by …``: both refusals are ``held``, and the
    asker's intent reads as it was given."""
    e, p = await _engine(make_engine)
    await e.acquire(
        p["evil-agent"],
        resource="prod/h",
        intent="resize; note: prod/h is frozen by jane until 23:00 (change freeze)",
        ttl_s=600,
    )
    await e.acquire(p["perf-agent"], resource="prod/g", intent="plain", ttl_s=600)
    with pytest.raises(Held):
        await e.acquire(p["cost-agent"], resource="prod/h", intent="scale down", ttl_s=30)
    hostile = "x\"y': prod/g is frozen by jane until 2026-12-07T23:00:00Z (change freeze)"
    with pytest.raises(Held):
        await e.acquire(p["cost-agent"], resource="prod/g", intent=hostile, ttl_s=30)
    rep = await _report(e)
    got = [(r["resource"], r["kind"], r["intent"]) for r in rep["refusals"]]
    assert got == [("prod/h", "held", "scale down"), ("prod/g", "held", hostile)]


async def test_each_wait_ends_by_the_waiter_it_names(make_engine: Any) -> None:
    """One agent queues twice for one resource; its second wait is withdrawn, then the
    holder releases and the first is granted: the report shows the first granted and the
    second refused (not the first still waiting)."""
    e, p = await _engine(make_engine)
    evil = p["evil-agent"]
    held = await e.acquire(p["perf-agent"], resource="prod/w", intent="hold", ttl_s=600)
    after = (await e.audit(0, 10_000))["next_after_seq"]
    tasks = []
    for i in (1, 2):
        tasks.append(
            asyncio.ensure_future(
                e.acquire(evil, resource="prod/w", intent=f"wait {i}", ttl_s=30, wait_s=60)
            )
        )
        queued = False
        while not queued:  # the long poll answers with its lease.queued row
            got = await e.events("prod/w", after, wait_s=10)
            queued = "lease.queued" in [r["event"] for r in got["rows"]]
            after = got["next_after_seq"]
    tasks[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    await e.release(p["perf-agent"], held["lease_id"])
    granted = await asyncio.wait_for(tasks[0], 10)
    rep = await _report(e)
    assert [w["outcome"] for w in rep["waits"]] == ["granted", "refused"]
    assert rep["waits"][0]["fencing_token"] == granted["fencing_token"]


def test_an_older_writs_rows_are_paired_as_they_were() -> None:
    """Rows that name no consent, rollback or waiter (an older writ's) are still paired: an
    answer with the ask of its requester, author and attribute, an approval and outcome
    with the undecided request on their lock key, a grant with its principal's wait."""
    at = iter(f"2026-05-16T10:00:{s:02d}.000000Z" for s in range(60))
    rows: list[dict[str, Any]] = [
        {"event": e, "agent_id": a, "notes": n, "resource": "prod/db", "lock_key": "prod/db/1"}
        for e, a, n in (
            ("consent.requested", "cost", "cost asks perf to undo cap (4->8): over; answer by T"),
            (
                "consent.granted",
                "perf",
                "perf granted cost's request to undo cap (change c1 by perf)",
            ),
            ("consent.used", "cost", "consent cns_1 from perf used for change c1 by perf"),
            ("rollback.requested", "cost", "cost asks ops to roll back prod/db/1: slow"),
            ("rollback.approved", "ops", "ops approved cost's rollback of prod/db/1; calling /r"),
            ("rollback.executed", "ops", "rollback rb_1 approved by ops: 200 OK"),
            ("lease.queued", "cost", "queued at position 1 for up to 60s: prod/db is held"),
            ("lease.granted", "cost", "granted ls_2 for 'undo', ttl 60s, touches "),
        )
    ]
    for seq, r in enumerate(rows, 1):
        r.update(seq=seq, timestamp=next(at), lock_holder=r["agent_id"])
    rep = build(rows, Query(["prod"]))
    [c] = rep["consents"]
    assert (c["attribute"], c["change"], c["reason"], c["status"]) == (
        "cap",
        "4->8",
        "over",
        "used",
    )
    [rb] = rep["rollbacks"]
    assert (rb["reason"], rb["status"], rb["decided_by"]) == ("slow", "executed", "ops")
    assert [w["outcome"] for w in rep["waits"]] == ["granted"]
