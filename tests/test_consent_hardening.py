"""Consent at its edges: two changes on one attribute, asks about a change that protects
nothing, answers refused on the record, and a consent used only by the grant it let through.

Every test runs in open and closed authority mode (the ``world`` fixture of test_safety), on a
:class:`ManualClock`; wakes and pages go to a real HTTP server in a thread.
"""

from __future__ import annotations

from typing import Any

from tests.test_safety import World, _lint_clean, receiver, world  # noqa: F401 (fixtures)
from writ.evidence.lint import check_row
from writ.evidence.postmortem import Query, build, to_markdown

CAPACITY = {"resource": "prod/db", "intent": "consolidate instances", "touches": ["capacity"]}


async def _two_changes(w: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """perf-agent records capacity 4→6, then (a second later) 6→8, under one lease."""
    r = await w.post("perf-agent", "/v1/leases", {**CAPACITY, "intent": "scale up"})
    assert r.status_code == 201, r.text
    lease = r.json()
    path = f"/v1/leases/{lease['lease_id']}/changes"
    older = await w.post("perf-agent", path, {"attribute": "capacity", "summary": "4→6"})
    w.clock.advance(1)
    newer = await w.post("perf-agent", path, {"attribute": "capacity", "summary": "6→8"})
    assert older.status_code == newer.status_code == 201, (older.text, newer.text)
    assert (
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
    ).status_code == 200
    return older.json(), newer.json()


async def _ask(w: World, change: dict[str, Any], who: str = "cost-agent") -> dict[str, Any]:
    r = await w.post(who, "/v1/consents", {"change_id": change["change_id"], "reason": "over"})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _status(w: World, consent: dict[str, Any]) -> str:
    r = await w.get("cost-agent", f"/v1/consents/{consent['consent_id']}")
    return str(r.json()["status"])


# ------------------------------------------------------------------ two changes, one attribute
async def test_a_consent_on_the_newest_change_lets_past_the_older_ones_of_its_author(
    world: World,  # noqa: F811
) -> None:
    """Two changes of perf-agent on capacity: the refusal names the newer (the one to ask
    about); a consent on the older alone still leaves the newer in the way (and stays
    granted); a consent on the newer lets cost-agent past both, once, and is then used."""
    w = world
    older, newer = await _two_changes(w)
    r = await w.post("cost-agent", "/v1/leases", CAPACITY)
    err = r.json()["error"]
    assert err["code"] == "consent_required" and err["change"]["change_id"] == newer["change_id"]
    assert err["ask"]["body"] == {"change_id": newer["change_id"]}

    on_older = await _ask(w, older)
    assert (await w.post("perf-agent", f"/v1/consents/{on_older['consent_id']}/grant")).is_success
    r = await w.post("cost-agent", "/v1/leases", {**CAPACITY, "consent_id": on_older["consent_id"]})
    err = r.json()["error"]
    assert err["code"] == "consent_required" and err["change"]["change_id"] == newer["change_id"]
    assert await _status(w, on_older) == "granted"

    on_newer = await _ask(w, newer)
    assert (await w.post("perf-agent", f"/v1/consents/{on_newer['consent_id']}/grant")).is_success
    r = await w.post("cost-agent", "/v1/leases", {**CAPACITY, "consent_id": on_newer["consent_id"]})
    assert r.status_code == 201, r.text
    assert await _status(w, on_newer) == "used"
    assert await _status(w, on_older) == "granted"  # not relied on
    used = await w.rows("consent.used")
    assert len(used) == 1 and used[0]["notes"].startswith(f"consent {on_newer['consent_id']} ")
    await w.post("cost-agent", f"/v1/leases/{r.json()['lease_id']}/release")
    r = await w.post("cost-agent", "/v1/leases", {**CAPACITY, "consent_id": on_newer["consent_id"]})
    assert r.json()["error"]["code"] == "consent_required"  # once
    await _lint_clean(w)
    assert (await w.engine.verify()).ok


async def test_a_queue_members_grant_after_expiry_lets_past_both_changes(
    world: World,  # noqa: F811
) -> None:
    """Unanswered, the ask about the newer change expires and escalates; a human member of
    the queue grants it, and cost-agent gets past both changes with it."""
    w = world
    _older, newer = await _two_changes(w)
    consent = await _ask(w, newer)
    await w.tick(121)
    assert await _status(w, consent) == "expired"
    r = await w.post("oncall-jane", f"/v1/consents/{consent['consent_id']}/grant")
    assert r.status_code == 200 and r.json()["approved_by"] == "oncall-jane", r.text
    r = await w.post("cost-agent", "/v1/leases", {**CAPACITY, "consent_id": consent["consent_id"]})
    assert r.status_code == 201, r.text
    assert await _status(w, consent) == "used"
    assert (await w.rows("consent.used"))[-1]["approved_by"] == "oncall-jane"
    await _lint_clean(w)
    # the postmortem reads a member's answer as the answer it is, not as an expiry alone
    [c] = [
        c for c in build(await w.rows(), Query(["prod"]))["consents"] if c["status"] != "pending"
    ]
    assert c["status"] == "used" and c["answered_by"] == "oncall-jane", c


# ------------------------------------------------------------------ asks about nothing
async def test_an_ask_about_a_change_that_protects_nothing_is_refused_and_wakes_nobody(
    world: World,  # noqa: F811
) -> None:
    """A change recorded with protect_s 0, one past its window (swept or not yet) or lapsed:
    no consent is needed, so an ask is 409 ``conflict`` saying so — no row, no consent, no
    wake of the author, and nothing left to expire and page a queue."""
    w = world
    body = {**CAPACITY, "intent": "scale", "touches": ["capacity", "load"]}
    lease = (await w.post("perf-agent", "/v1/leases", body)).json()
    path = f"/v1/leases/{lease['lease_id']}/changes"
    unprotected = (
        await w.post("perf-agent", path, {"attribute": "capacity", "summary": "s", "protect_s": 0})
    ).json()
    short = (
        await w.post("perf-agent", path, {"attribute": "load", "summary": "s", "protect_s": 10})
    ).json()
    await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
    r = await w.get("cost-agent", f"/v1/changes/{unprotected['change_id']}")
    assert r.json()["state"] == "recorded"
    await w.engine.caller.drain()
    before = len(await w.rows())

    async def refused(change: dict[str, Any]) -> None:
        r = await w.post(
            "cost-agent", "/v1/consents", {"change_id": change["change_id"], "reason": "r"}
        )
        err = r.json()["error"]
        assert r.status_code == 409 and err["code"] == "conflict", r.text
        assert "no longer protected" in err["message"] and "no consent needed" in err["message"]
        assert err["change_id"] == change["change_id"]

    await refused(unprotected)
    w.clock.advance(11)  # past its window, the sweeper not run yet
    await refused(short)
    await w.tick(1)  # swept: lapsed
    assert (await w.get("cost-agent", f"/v1/changes/{short['change_id']}")).json()[
        "state"
    ] == "lapsed"
    await refused(short)
    await w.tick(300)  # whatever an ask would have left to expire and escalate
    assert (await w.rows())[before:] == []
    assert await w.engine.store.read(lambda tx: tx.list_objects("consent", None, 10)) == []
    assert not [p for p in w.rx.paths() if p.startswith(("/wake/perf", "/page/ops"))]
    assert (await w.post("cost-agent", "/v1/leases", CAPACITY)).status_code == 201


# ------------------------------------------------------------------ refused answers
async def test_a_refused_grant_or_deny_is_a_consent_refused_row(
    world: World,  # noqa: F811
) -> None:
    """The requester answering its own ask, another agent granting or denying it, the author
    once it expired: each 403, the consent untouched, and a ``consent.refused`` row naming
    who tried what — which lint accepts, the ledger verifies, and the postmortem lists in
    its timeline without taking it for an answer."""
    w = world
    _older, newer = await _two_changes(w)
    consent = await _ask(w, newer)
    cid = consent["consent_id"]
    tries = [
        ("cost-agent", "grant", "you cannot answer your own consent request"),
        ("routing-agent", "grant", "only the author (perf-agent) or a human/queue"),
        ("agent-autocleanup-7", "deny", "only the author (perf-agent) or a human/queue"),
    ]
    for who, verb, _ in tries:
        r = await w.post(who, f"/v1/consents/{cid}/{verb}")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert await _status(w, consent) == "pending"
    await w.tick(121)  # expired, escalated to svc-ops-princess: the author may not now
    tries.append(("perf-agent", "grant", "expired unanswered and was escalated"))
    r = await w.post("perf-agent", f"/v1/consents/{cid}/grant")
    assert r.status_code == 403, r.text
    assert await _status(w, consent) == "expired"

    rows = await w.rows("consent.refused")
    assert [r["agent_id"] for r in rows] == [who for who, _, _ in tries], rows
    for row, (who, verb, why) in zip(rows, tries, strict=True):
        head = (
            f"{who} may not {verb} cost-agent's request to undo capacity "
            f"(change {newer['change_id']} by perf-agent): "
        )
        assert row["notes"].startswith(head) and why in row["notes"], row["notes"]
        assert row["notes"].endswith(f"; consent {cid}"), row["notes"]
        assert row["resource"] == "prod/db" and row["lock_holder"] == "none"
        assert not row.get("approved_by")
    kinds = {p["name"]: p["kind"] for p in await w.engine.list_principals()}
    for row in rows:
        assert check_row(row, kinds=kinds).verdict == "accept", row
    await _lint_clean(w)
    assert (await w.engine.verify()).ok

    r = await w.post("svc-ops-princess", f"/v1/consents/{cid}/grant")
    assert r.status_code == 200, r.text
    rep = build(await w.rows(), Query(["prod"]))
    [c] = rep["consents"]
    assert c["status"] == "granted" and c["answered_by"] == "svc-ops-princess", c
    md = to_markdown(rep)
    assert "consent.refused" in md and "routing-agent may not grant" in md


# ------------------------------------------------------------------ used only when relied on
async def test_a_consent_is_used_only_by_a_grant_it_let_past_a_change(
    world: World,  # noqa: F811
) -> None:
    """A granted consent passed on a lease its change does not block (another resource, or
    touches that leave the attribute alone) stays granted, with no ``consent.used`` row;
    the grant it lets past the change uses it."""
    w = world
    _older, newer = await _two_changes(w)
    consent = await _ask(w, newer)
    cid = consent["consent_id"]
    assert (await w.post("perf-agent", f"/v1/consents/{cid}/grant")).is_success
    for body in (
        {"resource": "staging/x", "intent": "unrelated", "consent_id": cid},
        {"resource": "prod/db", "intent": "reroute", "touches": ["routing"], "consent_id": cid},
    ):
        r = await w.post("cost-agent", "/v1/leases", body)
        assert r.status_code == 201, r.text
        assert await _status(w, consent) == "granted"
        await w.post("cost-agent", f"/v1/leases/{r.json()['lease_id']}/release")
    assert not await w.rows("consent.used")
    r = await w.post("cost-agent", "/v1/leases", {**CAPACITY, "consent_id": cid})
    assert r.status_code == 201, r.text
    assert await _status(w, consent) == "used"
    assert len(await w.rows("consent.used")) == 1
    assert (await w.engine.verify()).ok
