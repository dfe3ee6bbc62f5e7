"""Operations (issue 14): /metrics after a scripted story, /livez and /readyz with the store
up and down, Retry-After on 409 ``held`` and 503 — on each store of the contract suite."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from writ.api.app import create_app
from writ.engine import Engine

ADMIN = "ops-admin-token"


@asynccontextmanager
async def client(engine: Engine, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    await engine.bootstrap_admin(ADMIN)
    app = create_app(engine, start_engine=False, **kw)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as c:
        yield c


async def agent(c: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await c.post(
        "/v1/principals",
        json={"name": name, "kind": "agent"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (name, labels), parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_a_story_count_what_happened(engine: Engine) -> None:
    """One grant, one refusal (held), one release: the families say exactly that, with
    route templates as labels and never a lease id."""
    async with client(engine) as c:
        a, b = await agent(c, "ops-a"), await agent(c, "ops-b")
        r = await c.post("/v1/leases", json={"resource": "prod/db", "intent": "x"}, headers=a)
        assert r.status_code == 201
        lease = r.json()
        refused = await c.post(
            "/v1/leases", json={"resource": "prod/db/replica", "intent": "y"}, headers=b
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "held"
        # the blocker expires in 30 s: Retry-After says so, in whole seconds
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        # the same through FastAPI's own stack (a field the lean path does not take)
        full = await c.post(
            "/v1/leases",
            json={"resource": "prod/db", "intent": "y", "consent_id": None},
            headers=b,
        )
        assert full.status_code == 409 and 1 <= int(full.headers["retry-after"]) <= 30
        mid = samples((await c.get("/metrics")).text)
        assert value(mid, "writ_leases_held") == 1
        assert (await c.get(f"/v1/leases/{lease['lease_id']}", headers=a)).status_code == 200
        # the fencing check, on the lean path and (an extra parameter) through FastAPI
        token = {"resource": "prod/db", "token": lease["fencing_token"]}
        for params in (token, {**token, "x": "1"}):
            assert (await c.get("/v1/fence", params=params, headers=b)).json()["current"]
        r = await c.post(f"/v1/leases/{lease['lease_id']}/release", headers=a)
        assert r.status_code == 200

        m = await c.get("/metrics")
        assert m.status_code == 200
        assert m.headers["content-type"].startswith("text/plain")
        found = samples(m.text)
    assert value(found, "writ_refusals_total", code="held") == 2
    assert value(found, "writ_grants_total") == 1
    assert value(found, "writ_leases_held") == 0
    assert value(found, "writ_waiters") == 0
    assert value(found, "writ_store_up") == 1
    assert value(found, "writ_lease_hold_seconds_count") == 1
    assert value(found, "writ_lease_acquire_wait_seconds_count") == 1
    assert value(found, "writ_store_commit_seconds_count") >= 5  # 2 principals, 2 leases, 1 end
    # granted, two denied, released, and the two principals' rows
    assert value(found, "writ_audit_rows_total") == 6
    # where the store's batches spent their time: the PostgreSQL store says (lock, decide,
    # commit), SQLite has no such phases and shows none
    phases = {
        dict(ls)["phase"]: v for (n, ls), v in found.items() if n.startswith("writ_store_batch")
    }
    assert phases == engine.store.phase_s
    if phases:  # (that they add up to the batches' time: test_pg_scaleout)
        assert set(phases) == {"lock", "decide", "commit"} and phases["commit"] > 0
    http = "writ_http_request_duration_seconds_count"
    assert value(found, http, method="POST", route="/v1/leases", status="201") == 1
    assert value(found, http, method="POST", route="/v1/leases", status="409") == 2
    assert value(found, http, method="GET", route="/v1/leases/{lease_id}", status="200") == 1
    assert value(found, http, method="GET", route="/v1/fence", status="200") == 2
    assert (
        value(found, http, method="POST", route="/v1/leases/{lease_id}/release", status="200") == 1
    )
    assert any(name == "writ_build_info" and v == 1 for (name, _), v in found.items())
    labels = {v for (_, ls) in found for _, v in ls}
    assert lease["lease_id"] not in str(labels) and "prod/db" not in labels


async def test_consent_and_rollback_outcomes_are_counted(engine: Engine) -> None:
    async with client(engine) as c:
        a, b = await agent(c, "ops-author"), await agent(c, "ops-other")
        lease = (
            await c.post("/v1/leases", json={"resource": "svc/x", "intent": "x"}, headers=a)
        ).json()
        change = (
            await c.post(
                f"/v1/leases/{lease['lease_id']}/changes",
                json={"attribute": "capacity", "summary": "4->8"},
                headers=a,
            )
        ).json()
        ask = await c.post(
            "/v1/consents", json={"change_id": change["change_id"], "reason": "r"}, headers=b
        )
        assert ask.status_code == 201, ask.text
        ok = await c.post(f"/v1/consents/{ask.json()['consent_id']}/grant", headers=a)
        assert ok.status_code == 200, ok.text
        found = samples((await c.get("/metrics")).text)
    assert value(found, "writ_consents_total", outcome="requested") == 1
    assert value(found, "writ_consents_total", outcome="granted") == 1


async def test_unknown_routes_share_one_label(engine: Engine) -> None:
    """Raw paths and invented methods never become label values (a client cannot grow
    /metrics without bound)."""
    async with client(engine) as c:
        for i in range(3):
            assert (await c.get(f"/nope/{i}")).status_code == 404
            await c.request(f"BREW{i}", "/v1/leases")
        found = samples((await c.get("/metrics")).text)
    http = "writ_http_request_duration_seconds_count"
    assert value(found, http, method="GET", route="unmatched", status="404") == 3
    methods = {dict(ls).get("method") for (name, ls) in found if name == http}
    assert methods <= {"GET", "POST", "other"}, methods
    assert not any("BREW" in str(ls) or "nope" in str(ls) for (_, ls) in found)
    assert value(found, "writ_refusals_total", code="not_found") == 3


async def test_livez_and_readyz_with_the_store_up_and_down(engine: Engine) -> None:
    """livez needs nothing; readyz answers 503 with the reason (and Retry-After) once the
    store is out of reach, on each store."""
    async with client(engine) as c:
        assert (await c.get("/livez")).json() == {"ok": True}
        assert (await c.get("/readyz")).status_code == 200
        await engine.store.close()
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["ok"] is False and "closed" in r.json()["reason"]
        assert r.headers["retry-after"] == "5"
        assert (await c.get("/livez")).status_code == 200
        # /metrics still answers, and says the store is down
        found = samples((await c.get("/metrics")).text)
        assert value(found, "writ_store_up") == 0
        # a request that needs the store: 503 with Retry-After
        r = await c.get("/v1/leases", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        await engine.store.open()
        assert (await c.get("/readyz")).status_code == 200


async def test_readyz_needs_the_schema_this_writ_expects(engine: Engine, tmp_path: Any) -> None:
    """A store migrated by a newer writ (a migration this one does not know) is not ready."""
    if not engine.store.url.startswith("sqlite"):
        pytest.skip("SQLite: the raw write below")
    import sqlite3

    async with client(engine) as c:
        assert (await c.get("/readyz")).status_code == 200
        path = engine.store.path  # type: ignore[attr-defined]
        with sqlite3.connect(path) as raw:
            raw.execute(
                "INSERT INTO writ_migrations (version, name, applied_at) VALUES (99, 'future', 'x')"
            )
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert "migration 99" in r.json()["reason"]


@pytest.mark.postgres
async def test_readyz_needs_the_postgres_listener(engine: Engine) -> None:
    if not engine.store.url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    async with client(engine) as c:
        assert (await c.get("/readyz")).status_code == 200
        engine.store._listening.clear()  # type: ignore[attr-defined]
        r = await c.get("/readyz")
        assert r.status_code == 503 and "LISTEN" in r.json()["reason"]
        engine.store._listening.set()  # type: ignore[attr-defined]


async def test_metrics_token_and_metrics_off(engine: Engine) -> None:
    async with client(engine, metrics_token="scrape-secret") as c:
        assert (await c.get("/metrics")).status_code == 401
        bad = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "scrape-secret" not in bad.text
        ok = await c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "writ_grants_total" in ok.text
        # two Authorization headers, the right one among them: refused, not guessed
        for pair in (
            ("Bearer scrape-secret", "Bearer nope"),
            ("Bearer nope", "Bearer scrape-secret"),
        ):
            twice = await c.get("/metrics", headers=[("Authorization", v) for v in pair])
            assert twice.status_code == 401, twice.text
        assert (await c.get("/livez")).status_code == 200  # probes need no token


async def test_metrics_off_answers_404(engine: Engine) -> None:
    async with client(engine, metrics=False) as c:
        assert (await c.get("/metrics")).status_code == 404
        assert (await c.get("/readyz")).status_code == 200


async def test_the_decision_log_observes_transactions_only_while_its_level_is_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision log (``writ.decision`` at info) sees every committed row with the
    request that caused it; below info no transaction is wrapped for it at all (it cost a
    server 4 % of its CPU at 16 clients for lines nobody wrote), and once it is on again the
    next grant's row reaches it."""
    from writ.telemetry import observe
    from writ.telemetry.logs import DECISION, log_decisions

    wrapped = 0
    noting = observe._noting

    async def counted(*args: Any) -> Any:
        nonlocal wrapped
        wrapped += 1
        return await noting(*args)

    monkeypatch.setattr(observe, "_noting", counted)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    level = DECISION.level
    DECISION.addHandler(handler)
    try:
        log_decisions(engine)
        DECISION.setLevel(logging.WARNING)
        p, _ = await engine.add_principal(None, "obs-agent", "agent")
        await engine.acquire(p, resource="obs/a", intent="quiet")
        assert wrapped == 0 and records == []
        DECISION.setLevel(logging.INFO)
        await engine.acquire(p, resource="obs/b", intent="heard")
        assert wrapped >= 1
        assert [r.getMessage() for r in records] == ["lease.granted"]
        assert records[0].writ["resource"] == "obs/b"  # type: ignore[attr-defined]
    finally:
        DECISION.removeHandler(handler)
        DECISION.setLevel(level)
