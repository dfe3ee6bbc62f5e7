"""Authority, a third look: in closed mode an agent that calls writ about something it may not
observe, by id, learns nothing of it from the refusal — renew, release (lean path and FastAPI
alike), a change, a gate check with another's lease, an answer to a consent or a rollback —
nor from the rows it reads (their lock columns blank a lease it may not observe)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.stores_fixtures import Backend
from tests.test_authority import world
from tests.test_authority_reads import BLAST, GATE, SECRET, _billing_change
from writ.client import AsyncClient


async def test_another_principals_lease_by_id_is_refused_without_naming_its_holder(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf-agent may not observe billing/db: renewing, releasing (by the lean path and by
    FastAPI) or recording a change under admin's lease there is 403 without naming admin,
    and so is a gate check that shows it; cost-agent, who may observe prod/db, is told who
    holds a lease there, as before. The refusal rows are written all the same."""
    async with world(backend, tmp_path, monkeypatch, BLAST + GATE) as w:
        await w.add("the-gate", "portal")
        hidden = (await w.lease("admin", "billing/db", ttl_s=300, intent=SECRET)).json()
        lid = hidden["lease_id"]
        change = {"attribute": "capacity", "summary": "x"}
        answers = [
            await w.post("perf-agent", f"/v1/leases/{lid}/renew", {}),
            await w.post("perf-agent", f"/v1/leases/{lid}/release"),  # the lean path
            await w.http.post(  # a body: FastAPI answers it
                f"/v1/leases/{lid}/release", json={}, headers=w.h("perf-agent")
            ),
            await w.post("perf-agent", f"/v1/leases/{lid}/changes", change),
        ]
        for r in answers:
            assert r.status_code == 403, r.text
            assert "admin" not in r.text and "billing" not in r.text, r.text
        assert answers[1].content == answers[2].content
        gate = await w.post(
            "the-gate",
            "/v1/gate/check",
            {
                "caller_token": w.tokens["perf-agent"],
                "resource": "prod/db",
                "path": "/x",
                "lease_id": lid,
                "fencing_token": hidden["fencing_token"],
            },
        )
        assert gate.status_code == 200 and gate.json()["passed"] is False, gate.text
        assert "admin" not in gate.text and "billing" not in gate.text, gate.text
        rows = (await w.get("perf-agent", "/v1/audit", resource="prod/db")).json()["rows"]
        assert rows and all("admin" not in x["notes"] for x in rows), rows
        refused = [r for r in await w.rows("lease.refused") if r["agent_id"] == "perf-agent"]
        assert len(refused) == 4 and all(r["lock_holder"] == "admin" for r in refused)
        # one who may observe the lease's resource is told whose it is
        await w.post("admin", f"/v1/leases/{lid}/release")
        seen = (await w.lease("admin", "prod/db/main", ttl_s=300)).json()
        r = await w.post("cost-agent", f"/v1/leases/{seen['lease_id']}/renew", {})
        assert r.status_code == 403 and r.json()["error"]["holder"] == "admin", r.text


async def test_a_consent_the_caller_may_not_observe_is_answered_403_naming_nobody(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Granting or denying a consent about billing/db is 403 for an agent who may not observe
    it, without its author, its state or its queue; the author itself still answers."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        _, change_id = await _billing_change(w)
        asked = await w.post("oncall-jane", "/v1/consents", {"change_id": change_id, "reason": "x"})
        cid = asked.json()["consent_id"]
        for verb in ("grant", "deny"):
            r = await w.post("perf-agent", f"/v1/consents/{cid}/{verb}")
            assert r.status_code == 403, r.text
            assert "admin" not in r.text and "billing" not in r.text, r.text
        assert (await w.get("oncall-jane", f"/v1/consents/{cid}")).json()["status"] == "pending"
        r = await w.post("admin", f"/v1/consents/{cid}/deny")  # its author
        assert r.status_code == 200 and r.json()["status"] == "denied", r.text
        r = await w.post("perf-agent", f"/v1/consents/{cid}/grant")
        assert r.status_code == 403 and "denied" not in r.text, r.text


async def test_a_rollback_the_caller_may_not_observe_is_refused_naming_no_key_holder(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent may never turn a rollback's key; one who may not observe the rollback's
    resource is not told who holds the key (one who may is, as before). Both refusals are
    ``rollback.refused`` rows."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        for rid, resource in (("rb_hidden", "billing/db"), ("rb_seen", "prod/db")):
            rb = {
                "rollback_id": rid,
                "resource": resource,
                "key_holder": "svc-ops",
                "requested_by": "admin",
                "lock_key": f"{resource}/1",
                "path": "/rollback",
                "override_queue": "svc-ops",
                "reason": SECRET,
            }
            await w.engine.store.transact(
                lambda tx, rid=rid, resource=resource, rb=rb: tx.put_object(
                    "rollback", rid, resource, "pending", rb
                )
            )
        for verb in ("approve", "deny"):
            r = await w.post("perf-agent", f"/v1/rollbacks/rb_hidden/{verb}")
            assert r.status_code == 403, r.text
            assert "svc-ops" not in r.text and "billing" not in r.text, r.text
            r = await w.post("perf-agent", f"/v1/rollbacks/rb_seen/{verb}")
            assert r.status_code == 403 and r.json()["error"]["key_holder"] == "svc-ops", r.text
        assert len(await w.rows("rollback.refused")) == 4


async def test_rows_the_caller_reads_do_not_name_a_neighbour_it_may_not_observe(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """admin holds billing/db (prod/db's blast radius). perf-agent's refused acquires, its
    queued one, its refused freeze and a gate check of its write to prod/db are rows about
    prod/db, which it reads: their lock columns name nobody (``hidden``), in /v1/audit and
    /v1/events alike, while a human reads them as written."""
    async with world(backend, tmp_path, monkeypatch, BLAST + GATE) as w:
        await w.add("the-gate", "portal")
        await w.lease("admin", "billing/db", ttl_s=300, intent=SECRET)
        await w.lease("perf-agent", "prod/db")
        await w.lease("perf-agent", "prod/db", wait_s=0.01)
        await w.post("perf-agent", "/v1/freezes", {"prefix": "prod/db", "reason": "x"})
        body = {"caller_token": w.tokens["perf-agent"], "resource": "prod/db", "path": "/x"}
        assert (await w.post("the-gate", "/v1/gate/check", body)).status_code == 200
        events = {"lease.denied", "lease.queued", "freeze.refused", "gate.refused"}
        for route in ("/v1/audit", "/v1/events"):
            rows = (await w.get("perf-agent", route, resource="prod/db")).json()["rows"]
            assert {x["event"] for x in rows} == events, rows
            for x in rows:
                shown = json.dumps({k: v for k, v in x.items() if "hash" not in k})
                assert "admin" not in shown and "billing" not in shown, x
                assert x["lock_holder"] is None and x["hidden"] is True, x
            rows = (await w.get("oncall-jane", route, resource="prod/db")).json()["rows"]
            assert {x["lock_holder"] for x in rows} == {"admin"}, rows
            assert all("hidden" not in x for x in rows), rows


async def test_consent_and_freeze_rows_name_a_neighbour_only_to_who_may_observe_it(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consent's and a freeze's rows about prod/db name the lease holding it now — here
    billing-agent's on billing/db, its blast-radius neighbour — with its lock key, so that
    perf-agent, who may not observe billing/db, reads them with the lock columns null."""
    billing = '\n[[authority.grant]]\nprincipals = ["billing-agent"]\nwrite = ["billing"]\n'
    async with world(backend, tmp_path, monkeypatch, BLAST + billing) as w:
        await w.add("billing-agent", "agent")
        lease = (await w.lease("admin", "prod/db", ttl_s=300, touches=["capacity"])).json()
        r = await w.post(
            "admin",
            f"/v1/leases/{lease['lease_id']}/changes",
            {"attribute": "capacity", "summary": "doubled"},
        )
        change_id = r.json()["change_id"]
        await w.post("admin", f"/v1/leases/{lease['lease_id']}/release")
        r = await w.lease("billing-agent", "billing/db", ttl_s=300, touches=["labels"])
        assert r.status_code == 201, r.text
        r = await w.post("perf-agent", "/v1/consents", {"change_id": change_id, "reason": "x"})
        assert r.status_code == 201, r.text
        await w.post("admin", f"/v1/consents/{r.json()['consent_id']}/deny")
        r = await w.post("oncall-jane", "/v1/freezes", {"prefix": "prod/db", "reason": "x"})
        await w.post("oncall-jane", f"/v1/freezes/{r.json()['freeze_id']}/lift")
        events = {"consent.requested", "consent.denied", "freeze.created", "freeze.lifted"}
        rows = (await w.get("perf-agent", "/v1/audit", resource="prod/db")).json()["rows"]
        rows = [x for x in rows if x["event"] in events]
        assert {x["event"] for x in rows} == events, rows
        for x in rows:
            assert "billing" not in json.dumps(x), x
            assert x["lock_holder"] is None and x["hidden"] is True, x
        rows = (await w.get("oncall-jane", "/v1/audit", resource="prod/db")).json()["rows"]
        rows = [x for x in rows if x["event"] in events]
        assert {(x["lock_holder"], x["lock_key"]) for x in rows} == {
            ("billing-agent", "billing/db/2")
        }, rows


async def test_rows_about_principals_and_the_policy_are_for_humans_and_queues(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that may observe everything ("") — or prefixes named like those rows'
    ``resource`` — still reads no row about a principal (which names its wake URL), the
    policy, or a refused lift; a human reads them all."""
    watch = '\n[[authority.grant]]\nprincipals = ["watcher"]\nobserve = ["", "principals"]\n'
    async with world(backend, tmp_path, monkeypatch, BLAST + watch) as w:
        await w.add("watcher", "agent")
        await w.post("stranger", "/v1/principals/perf-agent/rotate")
        await w.post("stranger", "/v1/policy/reload")
        await w.post("stranger", "/v1/freezes/frz_x/lift")
        await w.post("admin", "/v1/policy/reload")
        await w.lease("perf-agent", "prod/db")
        for route in ("/v1/audit", "/v1/events"):
            rows = (await w.get("watcher", route)).json()["rows"]
            assert [x["event"] for x in rows] == ["lease.granted"], rows
            assert "perf.example" not in json.dumps(rows), rows
            rows = (await w.get("oncall-jane", route)).json()["rows"]
            seen = {x["event"] for x in rows}
            assert {"principal.added", "principal.refused", "policy.refused"} <= seen, seen
            assert {"policy.reloaded", "freeze.refused"} <= seen, seen


async def test_rows_an_agent_reads_show_no_wake_url(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cost-agent may observe prod/db, and wakes perf-agent there through writ, then asks
    its consent to undo a change: the ``wake.requested`` and ``wake.delivered`` rows it reads
    do not show perf-agent's wake URL (``GET /v1/principals`` does not either); a human's
    do."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        lease = (await w.lease("perf-agent", "prod/db", ttl_s=300)).json()
        lid = lease["lease_id"]
        assert (await w.post("cost-agent", f"/v1/leases/{lid}/wake", {"reason": "hi"})).is_success
        change = {"attribute": "capacity", "summary": "doubled"}
        change_id = (await w.post("perf-agent", f"/v1/leases/{lid}/changes", change)).json()
        body = {"change_id": change_id["change_id"], "reason": "x"}
        assert (await w.post("cost-agent", "/v1/consents", body)).status_code == 201
        await w.engine.caller.drain()
        assert len(w.calls) == 2, w.calls
        for route in ("/v1/audit", "/v1/events"):
            rows = (await w.get("cost-agent", route, resource="prod/db")).json()["rows"]
            events = [x["event"] for x in rows]
            assert events.count("wake.requested") == 1 and events.count("wake.delivered") == 2
            assert "perf.example" not in json.dumps(rows), rows
            rows = (await w.get("oncall-jane", route, resource="prod/db")).json()["rows"]
            assert sum("https://perf.example/wake" in x["notes"] for x in rows) == 3, rows


async def test_a_rollback_asked_by_change_names_not_the_lease_of_the_change(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback of a change the caller may not observe is 403 naming the change it asked
    about, not the lease the change was made under (nor its resource)."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        lease, change_id = await _billing_change(w)
        r = await w.post("perf-agent", "/v1/rollbacks", {"change_id": change_id, "reason": "x"})
        assert r.status_code == 403 and change_id in r.text, r.text
        assert lease["lease_id"] not in r.text and "billing" not in r.text, r.text


async def test_the_clients_last_seq_counts_rows_the_agent_may_not_read(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last_seq`` (where ``watch`` and MCP's ``watch_events`` start) finds the ledger's
    head for an agent whose newest rows are all ones it may not read: it took 0, so a
    watch began with the agent's whole history as if it were new."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        await w.lease("perf-agent", "prod/db")
        for i in range(20):
            await w.lease("admin", f"capacity/x{i}")
        head = (await w.engine.audit(0, 10_000))["rows"][-1]["seq"]
        transport = httpx.ASGITransport(app=w.app)
        async with AsyncClient("http://writ", w.tokens["perf-agent"], transport=transport) as c:
            assert await c.last_seq() == head
