"""Authority, reads filtered to a resource: in closed mode an agent filters the ledger
(``/v1/audit``, ``/v1/events``) to what it observes or stands above, never to a resource it
may not observe, whose rows the page's cursor told of even with the rows left out (when, and
how many: ``next_after_seq`` moved to each hidden row); and ``/v1/audit/verify`` tells it
whether the ledger verifies and where, not the reason, which names a lease it may not see."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stores_fixtures import Backend
from tests.test_authority import world
from tests.test_authority_reads import BLAST, SECRET


async def test_a_filter_to_a_resource_the_caller_may_not_observe_is_403(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf-agent observes prod and routing: billing/db (admin's lease there, in prod/db's
    blast radius) is 403 as who is, in the audit and in events; prod (above what it
    observes) and prod/db read as before; a human reads billing/db."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        await w.lease("admin", "billing/db", ttl_s=300, intent=SECRET)
        assert (await w.get("perf-agent", "/v1/who", resource="billing/db")).status_code == 403
        for path, params in (
            ("/v1/audit", {"resource": "billing/db", "limit": 1}),
            ("/v1/audit", {"resource": "billing", "since": "2000-01-01T00:00:00Z"}),
            ("/v1/events", {"resource": "billing/db"}),
            ("/v1/audit", {"resource": "principals/admin"}),
        ):
            r = await w.get("perf-agent", path, **params)
            assert r.status_code == 403, (path, params, r.text)
            assert "next_after_seq" not in r.text and SECRET not in r.text
        for prefix in ("prod", "prod/db", "routing/x"):
            for path in ("/v1/audit", "/v1/events"):
                r = await w.get("perf-agent", path, resource=prefix)
                assert r.status_code == 200, (path, prefix, r.text)
        r = await w.get("admin", "/v1/audit", resource="billing/db")
        assert r.status_code == 200 and r.json()["rows"], r.text


async def test_verify_tells_an_agent_where_the_ledger_breaks_not_what_it_names(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held lease on billing/db edited by hand: a human is told which lease and why; an
    agent that may not observe it is told ok false, the rows, the head and the first bad
    seq only."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        lease = (await w.lease("admin", "billing/db", ttl_s=300, intent=SECRET)).json()
        await backend.sql(
            "UPDATE leases SET intent = 'tampered' WHERE lease_id = %s", lease["lease_id"]
        )
        human = (await w.get("admin", "/v1/audit/verify")).json()
        assert human["ok"] is False and lease["lease_id"] in human["reason"], human
        agent = (await w.get("perf-agent", "/v1/audit/verify")).json()
        assert agent["ok"] is False and set(agent) <= {"ok", "rows", "head", "first_bad_seq"}
        assert lease["lease_id"] not in str(agent) and SECRET not in str(agent)
