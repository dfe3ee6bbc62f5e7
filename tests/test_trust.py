"""Issue 11 ("Trust"), classes 1 and 6: one bad string never poisons a resource; names,
numbers and bodies mean one thing.

Raw HTTP over each store of the contract suite (``writ`` from ``test_http``: a response hook
fails any test that receives a 500), bodies written by hand so that JSON escapes such as a
lone surrogate reach the server exactly as an attacker would send them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.server_fixtures import LiveServer, gone_within, unique
from tests.stores_fixtures import Backend
from tests.test_http import ADMIN, Writ, admin_env, error, serve, writ  # noqa: F401
from writ.api.middleware import _INTERNAL_ERROR
from writ.core import validate
from writ.core.errors import Invalid
from writ.engine import RESERVED_NAMES

LONE = "\\ud800"  # a high surrogate with no low one, as a JSON escape
NUL = "\\u0000"
BAD = {"surrogate": LONE, "nul": NUL, "escape": "\\u001b[2J"}


async def post(w: Writ, path: str, body: str, token: str = ADMIN, **headers: str) -> httpx.Response:
    """POST a hand-written JSON body."""
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
    return await w.c.post(path, content=body.encode(), headers=h)


async def row_count(w: Writ) -> int:
    return len(await w.audit())


@pytest.fixture
async def cast(writ: Writ) -> dict[str, Any]:  # noqa: F811
    """An agent holding a lease with a recorded change, a human, a queue."""
    agent = await writ.principal("agent-a")
    other = await writ.principal("agent-b")
    human = await writ.principal("human-h", "human")
    await writ.principal("ops-queue", "queue")
    lease = await writ.grant(agent, "shop/db", ttl_s=600)
    r = await post(
        writ,
        f"/v1/leases/{lease['lease_id']}/changes",
        '{"attribute": "capacity", "summary": "4 to 8", "before": 4, "after": 8}',
        agent,
    )
    assert r.status_code == 201, r.text
    return {"agent": agent, "other": other, "human": human, "lease": lease, "change": r.json()}


# ----------------------------------------------------------------------------- class 1
def _text_fields(c: dict[str, Any], bad: str) -> list[tuple[str, str, str, str, str]]:
    """(who, path, body, field named) for every text field of every body route, with
    ``bad`` (a JSON string's inside) in that field."""
    lid, chg = c["lease"]["lease_id"], c["change"]["change_id"]
    q = f'"x{bad}y"'
    return [
        # the lean path (POST /v1/leases with only its common fields) ...
        ("agent", "/v1/leases", f'{{"resource": "a/b", "intent": {q}}}', "intent"),
        (
            "agent",
            "/v1/leases",
            f'{{"resource": "a/b", "intent": "i", "touches": [{q}]}}',
            "touches[0]",
        ),
        ("agent", "/v1/leases", f'{{"resource": {q}, "intent": "i"}}', "resource"),
        # ... and FastAPI's
        (
            "agent",
            "/v1/leases",
            f'{{"resource": "a/b", "intent": {q}, "consent_id": null}}',
            "intent",
        ),
        (
            "agent",
            "/v1/leases",
            f'{{"resource": "a/b", "intent": "i", "consent_id": {q}}}',
            "consent_id",
        ),
        (
            "agent",
            "/v1/leases",
            f'{{"resource": "a/b", "intent": "i", "rollback": {{"allowed": false, "path": {q}}}}}',
            "rollback.path",
        ),
        (
            "agent",
            f"/v1/leases/{lid}/changes",
            f'{{"attribute": {q}, "summary": "s"}}',
            "attribute",
        ),
        ("agent", f"/v1/leases/{lid}/changes", f'{{"attribute": "a", "summary": {q}}}', "summary"),
        (
            "agent",
            f"/v1/leases/{lid}/changes",
            f'{{"attribute": "a", "summary": "s", "before": {q}}}',
            "before",
        ),
        (
            "agent",
            f"/v1/leases/{lid}/changes",
            f'{{"attribute": "a", "summary": "s", "after": {{"k": [1, {q}]}}}}',
            "after.k[1]",
        ),
        (
            "agent",
            f"/v1/leases/{lid}/changes",
            f'{{"attribute": "a", "summary": "s", "after": {{{q}: 1}}}}',
            "after key",
        ),
        ("other", "/v1/consents", f'{{"change_id": "{chg}", "reason": {q}}}', "reason"),
        ("other", "/v1/consents", f'{{"change_id": {q}, "reason": "r"}}', "change_id"),
        ("other", "/v1/rollbacks", f'{{"lease_id": {q}, "reason": "r"}}', "lease_id"),
        ("other", "/v1/rollbacks", f'{{"lease_id": "{lid}", "reason": {q}}}', "reason"),
        (
            "human",
            f"/v1/leases/{lid}/revoke",
            f'{{"runbook": {q}, "paged": "p", "reason": "r"}}',
            "runbook",
        ),
        ("human", "/v1/freezes", f'{{"prefix": "shop", "reason": {q}}}', "reason"),
        (
            "human",
            "/v1/freezes",
            f'{{"prefix": "shop", "reason": "r", "allow": [{q}]}}',
            "allow[0]",
        ),
        ("human", "/v1/freezes", f'{{"prefix": "shop", "reason": "r", "until": {q}}}', "until"),
        ("admin", "/v1/principals", f'{{"name": "x1", "kind": "agent", "vendor": {q}}}', "vendor"),
        ("admin", "/v1/principals", f'{{"name": "x1", "kind": "agent", "wake": {q}}}', "wake"),
        ("admin", "/v1/principals", f'{{"name": {q}, "kind": "agent"}}', "name"),
        ("admin", "/v1/gate/check", f'{{"resource": "shop/db", "method": {q}}}', "method"),
        ("admin", "/v1/gate/check", f'{{"resource": "shop/db", "path": {q}}}', "path"),
        ("admin", "/v1/gate/check", f'{{"resource": "shop/db", "lease_id": {q}}}', "lease_id"),
        (
            "admin",
            "/v1/gate/check",
            f'{{"resource": "shop/db", "caller_token": {q}}}',
            "caller_token",
        ),
    ]


@pytest.mark.parametrize("kind", sorted(BAD))
async def test_non_text_strings_are_refused_naming_the_field_and_change_nothing(
    writ: Writ,  # noqa: F811
    cast: dict[str, Any],
    kind: str,
) -> None:
    """A lone surrogate, a NUL or another control character in any text field of any body
    route — the lean path included — is 422 ``invalid`` naming the field (today: a 500, or
    committed and then a 500 on every read); nothing is written."""
    tokens = {"agent": cast["agent"], "other": cast["other"], "human": cast["human"]}
    tokens["admin"] = ADMIN
    before = await row_count(writ)
    for who, path, body, field in _text_fields(cast, BAD[kind]):
        r = await post(writ, path, body, tokens[who])
        err = error(r, 422, "invalid")
        assert err["field"].startswith(field), (path, body, err)
        assert "not valid text" in err["message"], err
    assert await row_count(writ) == before
    assert (await writ.c.get("/v1/audit/verify", headers=writ.admin)).json()["ok"]


async def test_tab_newline_and_any_real_character_are_text(writ: Writ) -> None:  # noqa: F811
    """What is refused is only what is not text: tabs, newlines, accents, emoji (a valid
    surrogate pair in JSON) pass, and come back as sent."""
    agent = await writ.principal("agent-a")
    intent = "line one\n\tline two: caf\u00e9 \U0001f680"
    body = json.dumps({"resource": "a/b", "intent": intent})  # ASCII: the emoji as a pair
    assert "\\ud83d\\ude80" in body
    r = await post(writ, "/v1/leases", body, agent)
    assert r.status_code == 201, r.text
    assert r.json()["intent"] == intent


async def test_free_form_values_are_bounded_in_depth_and_size(
    writ: Writ,  # noqa: F811
    cast: dict[str, Any],
) -> None:
    """A change's before/after nests at most 32 levels and holds at most 64 KiB of JSON;
    a body nested 100,000 levels is a 422, not a 500."""
    path = f"/v1/leases/{cast['lease']['lease_id']}/changes"
    ok = "[" * validate.MAX_DEPTH + "]" * validate.MAX_DEPTH
    r = await post(
        writ, path, f'{{"attribute": "a", "summary": "s", "before": {ok}}}', cast["agent"]
    )
    assert r.status_code == 201, r.text
    deep = "[" + ok + "]"
    err = error(
        await post(
            writ, path, f'{{"attribute": "a", "summary": "s", "after": {deep}}}', cast["agent"]
        ),
        422,
        "invalid",
    )
    assert err["field"] == "after" and "32 levels" in err["message"]
    big = json.dumps({"attribute": "a", "summary": "s", "before": "x" * validate.MAX_VALUE})
    err = error(await post(writ, path, big, cast["agent"]), 422, "invalid")
    assert err["field"] == "before"
    for route in (path, "/v1/leases"):
        abyss = (
            '{"attribute": "a", "summary": "s", "before": ' + "[" * 100_000 + "]" * 100_000 + "}"
        )
        error(await post(writ, route, abyss, cast["agent"]), 422, "invalid")


async def test_a_stored_bad_value_never_fails_a_read_or_a_grant(
    writ: Writ,  # noqa: F811
    cast: dict[str, Any],
    backend: Backend,
) -> None:
    """A store that already holds strings that are not text (written before writ refused
    them, or by hand) still answers every read and grant touching them: the bad character
    reads as U+FFFD; the ledger still verifies."""
    lease, change = cast["lease"], cast["change"]
    bad = {**change, "summary": "4 to 8\ud800", "before": {"k\udfff": ["\ud800"]}}
    bad.pop("state", None)
    await backend.sql(
        "UPDATE objects SET data = %s WHERE id = %s", json.dumps(bad), change["change_id"]
    )
    await backend.sql(
        "UPDATE leases SET touches = %s WHERE lease_id = %s",
        '["capacity", "x\\ud800"]',
        lease["lease_id"],
    )
    agent, other = cast["agent"], cast["other"]
    r = await writ.c.get(f"/v1/changes/{change['change_id']}", headers=writ.auth(other))
    assert r.status_code == 200, r.text
    assert r.json()["summary"] == "4 to 8\ufffd"
    assert r.json()["before"] == {"k\ufffd": ["\ufffd"]}
    for url in (
        "/v1/resources/shop/db",
        f"/v1/leases/{lease['lease_id']}",
        "/v1/leases?resource=shop",
        "/v1/status",
        "/v1/who?resource=shop/db",
    ):
        r = await writ.c.get(url, headers=writ.auth(other))
        assert r.status_code == 200, (url, r.text)
    assert (
        "x\ufffd"
        in (await writ.c.get(f"/v1/leases/{lease['lease_id']}", headers=writ.admin)).json()[
            "touches"
        ]
    )
    # a grant that must be refused because of the change names it (409), and one that
    # goes through after the holder releases
    held = error(await writ.acquire(other, "shop/db/replica", touches=["labels"]), 409, "held")
    assert held["holder"]["holder"] == "agent-a"
    assert (await writ.release(agent, lease["lease_id"])).status_code == 200
    refused = error(
        await writ.acquire(other, "shop/db", touches=["capacity"]), 409, "consent_required"
    )
    assert refused["change"]["summary"] == "4 to 8\ufffd"
    r = await post(
        writ, "/v1/consents", json.dumps({"change_id": change["change_id"], "reason": "r"}), other
    )
    assert r.status_code == 201, r.text
    await writ.grant(other, "shop/db", touches=["labels"])
    assert (await writ.c.get("/v1/audit/verify", headers=writ.admin)).json()["ok"]
    # an audit body edited by hand to hold one: every read of the ledger answers, and
    # verify names the edited row (its bytes changed) instead of failing
    rows = await writ.audit()
    victim = rows[2]
    body = {k: v for k, v in victim.items() if k != "hash"}
    body["notes"] = "edited \ud800"
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))  # escapes the surrogate
    assert "\\ud800" in text
    await backend.tamper(victim["seq"], text)
    rows = await writ.audit()
    assert rows[2]["notes"] == "edited \ufffd"
    for url in ("/v1/events?resource=shop", "/v1/who?resource=shop/db", "/v1/audit?resource=shop"):
        assert (await writ.c.get(url, headers=writ.admin)).status_code == 200, url
    verdict = (await writ.c.get("/v1/audit/verify", headers=writ.admin)).json()
    assert verdict["ok"] is False and verdict["first_bad_seq"] == victim["seq"], verdict


def test_the_internal_error_body_claims_nothing_it_cannot_know() -> None:
    """A 500 may come after a commit (the answer failed, not the change): its body must
    not say nothing was changed."""
    message = _INTERNAL_ERROR["error"]["message"]
    assert "nothing was changed" not in message
    assert "may or may not have taken effect" in message


async def test_an_internal_error_after_the_commit_says_to_read_back(
    tmp_path: Any,
    admin_env: None,  # noqa: F811
) -> None:
    """Provoked for real on the lean path and on FastAPI's: the body says to read back."""
    async with serve(tmp_path / "w.db") as w:
        agent = await w.principal("agent-a")
        lease = await w.grant(agent, "a/b")

        async def boom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("after the commit")

        w.engine.release = boom  # type: ignore[method-assign]
        w.engine.get_lease = boom  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=w.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://writ.test") as c:
            for r in (
                await c.post(f"/v1/leases/{lease['lease_id']}/release", headers=w.auth(agent)),
                await c.get(f"/v1/leases/{lease['lease_id']}", headers=w.auth(agent)),
            ):
                assert r.status_code == 500
                assert r.json() == _INTERNAL_ERROR


# ----------------------------------------------------------------------------- class 6
async def test_dot_segments_are_refused_wherever_a_resource_is_taken(writ: Writ) -> None:  # noqa: F811
    """``dot/./db`` and ``dot/db`` are one resource written two ways: every route taking a
    resource or prefix refuses ``.`` and ``..`` segments (today both were granted at once)."""
    a = await writ.principal("agent-a")
    human = await writ.principal("human-h", "human")
    await writ.grant(a, "dot/db")
    for resource in ("dot/./db", "dot/../dot/db", ".", "..", "dot/.", "../dot"):
        err = error(await writ.acquire(a, resource), 422, "invalid")  # lean path
        assert err["field"] == "resource", err
        err = error(await writ.acquire(a, resource, consent_id=None), 422, "invalid")  # FastAPI
        assert err["field"] == "resource", err
        for url, params in (
            ("/v1/who", {"resource": resource}),
            ("/v1/fence", {"resource": resource, "token": 1}),
            ("/v1/leases", {"resource": resource}),
            ("/v1/status", {"resource": resource}),
            ("/v1/audit", {"resource": resource}),
            ("/v1/events", {"resource": resource}),
        ):
            r = await writ.c.get(url, params=params, headers=writ.admin)
            error(r, 422, "invalid")
        r = await post(writ, "/v1/freezes", json.dumps({"prefix": resource, "reason": "r"}), human)
        error(r, 422, "invalid")
        r = await post(writ, "/v1/gate/check", json.dumps({"resource": resource}))
        error(r, 422, "invalid")
    r = await writ.c.get("/v1/resources/dot/%2E/db", headers=writ.admin)
    error(r, 422, "invalid")


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
async def test_names_writ_writes_into_rows_are_not_principals(writ: Writ, name: str) -> None:  # noqa: F811
    """``writ`` (rows writ writes itself), ``none`` (lock_holder when nobody holds),
    ``operator`` (offline store work) and ``unknown`` (a gate refusal's tokenless caller)
    cannot be principal names: a principal so named would be confused with the marker."""
    r = await post(writ, "/v1/principals", json.dumps({"name": name, "kind": "agent"}))
    err = error(r, 422, "invalid")
    assert err["field"] == "name" and "reserved" in err["message"]
    names = [
        p["name"]
        for p in (await writ.c.get("/v1/principals", headers=writ.admin)).json()["principals"]
    ]
    assert name not in names


@pytest.mark.parametrize("name", [".", "..", "..."])
async def test_a_name_of_dots_is_not_a_principal(writ: Writ, name: str) -> None:  # noqa: F811
    """/v1/principals/../rotate would be another route to a client building the URL."""
    r = await post(writ, "/v1/principals", json.dumps({"name": name, "kind": "agent"}))
    err = error(r, 422, "invalid")
    assert err["field"] == "name" and "only dots" in err["message"], err
    ok = await post(writ, "/v1/principals", json.dumps({"name": "a.b", "kind": "agent"}))
    assert ok.status_code in (201, 409), ok.text  # dots inside a name are fine


async def test_booleans_and_strings_are_not_numbers(
    writ: Writ,  # noqa: F811
    cast: dict[str, Any],
) -> None:
    """``true`` is not 1 and ``"30"`` is not 30, on every numeric body field, the lean
    path included (today ``ttl_s: true`` granted a 1-second lease)."""
    agent, lid = cast["agent"], cast["lease"]["lease_id"]
    for value in ("true", "false", '"30"'):
        for body, field in (
            (f'{{"resource": "n/a", "intent": "i", "ttl_s": {value}}}', "ttl_s"),
            (f'{{"resource": "n/a", "intent": "i", "wait_s": {value}}}', "wait_s"),
            (
                f'{{"resource": "n/a", "intent": "i", "ttl_s": {value}, "consent_id": null}}',
                "ttl_s",
            ),
        ):
            err = error(await post(writ, "/v1/leases", body, agent), 422, "invalid")
            assert err["field"] == field, err
        for path, body, field in (
            (f"/v1/leases/{lid}/renew", f'{{"ttl_s": {value}}}', "ttl_s"),
            (
                f"/v1/leases/{lid}/changes",
                f'{{"attribute": "a", "summary": "s", "protect_s": {value}}}',
                "protect_s",
            ),
            (
                f"/v1/leases/{lid}/changes",
                f'{{"attribute": "a", "summary": "s", "fencing_token": {value}}}',
                "fencing_token",
            ),
        ):
            err = error(await post(writ, path, body, agent), 422, "invalid")
            assert err["field"] == field, err
    for value in ("true", "false"):
        r = await post(
            writ, "/v1/gate/check", f'{{"resource": "shop/db", "fencing_token": {value}}}'
        )
        assert error(r, 422, "invalid")["field"].startswith("fencing_token")
    assert (await writ.c.get("/v1/leases?resource=n", headers=writ.admin)).json()["leases"] == []


async def test_engine_refuses_booleans_for_numbers(writ: Writ) -> None:  # noqa: F811
    """The engine's own check (used by every caller, not only HTTP): a bool is no number."""
    with pytest.raises(Invalid) as exc:
        validate.number(True, "ttl_s", 1, 3600)
    assert exc.value.details["field"] == "ttl_s"
    assert validate.number(30, "ttl_s", 1, 3600) == 30.0


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/jsonx",
    ],
)
async def test_the_lean_path_takes_only_json_bodies(writ: Writ, content_type: str | None) -> None:  # noqa: F811
    """``POST /v1/leases`` answers a body that is not declared JSON as every other route
    does (422), though the bytes are a valid acquire (today: granted)."""
    agent = await writ.principal("agent-a")
    body = b'{"resource": "ct/db", "intent": "i"}'
    headers = {"Authorization": f"Bearer {agent}"}
    if content_type:
        headers["Content-Type"] = content_type
    r = await writ.c.post("/v1/leases", content=body, headers=headers)
    error(r, 422, "invalid")
    r = await writ.c.post(
        "/v1/principals",
        content=b'{"name": "p1", "kind": "agent"}',
        headers={**headers, **writ.admin},
    )
    error(r, 422, "invalid")  # the same answer on a FastAPI route
    assert (await writ.c.get("/v1/leases?resource=ct", headers=writ.admin)).json()["leases"] == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_content_types_still_take_the_lean_path(writ: Writ, content_type: str) -> None:  # noqa: F811
    agent = await writ.principal("agent-a")
    r = await writ.c.post(
        "/v1/leases",
        content=b'{"resource": "ct/db", "intent": "i"}',
        headers={"Authorization": f"Bearer {agent}", "Content-Type": content_type},
    )
    assert r.status_code == 201, r.text


# ----------------------------------------------------------------------------- class 7
DASHBOARD_PAGES = [
    "https://grafana.example.com/d/aB3xQ9z/db-latency?orgId=1",
    "/grafana/d-solo/aB3xQ9z/db?panelId=4",
    "https://acme.grafana.net/explore?left=%7B%7D",
    "https://kibana.internal:5601/app/kibana#/discover",
    "/s/ops/app/discover?_g=()",
    "https://logs.example.com/app/dashboards",
    "https://splunk.example.com:8000/en-US/app/search/orders_overview",
    "https://app.datadoghq.com/monitors/123456",
    "https://app.datadoghq.eu/notebook/99",
    "/dash/12345/orders",
    "https://one.newrelic.com/nr1-core?account=1",
    "https://rpm.newrelic.com/accounts/1/applications/2",
    "https://us-east-1.console.aws.amazon.com/rds/home?region=us-east-1",
    "https://console.cloud.google.com/sql/instances/prod-db/overview?project=p",
    "https://portal.azure.com/#@tenant/resource/subscriptions/x/overview",
    "https://ui.honeycomb.io/acme/environments/prod",
    "https://tableau.example.com/t/ops/views/Orders/Sheet1",
    "https://metabase.example.com/question/42",
    "https://ops.example.com/#/rollback",
]
LITERAL_ROUTES = [
    "/internal/db/rollback?txn=8841",
    "https://ops.example.com/api/v1/deploys/842/rollback",
    "https://api.datadoghq.com/api/v1/events",
    "https://api.newrelic.com/v2/applications/2/deployments.json",
    "/app/orders/rollback",
    "/data/d1/rollback",
]


@pytest.mark.parametrize("route", DASHBOARD_PAGES)
def test_a_dashboard_products_page_is_no_rollback_route(route: str) -> None:
    """A page of Grafana, Kibana, Datadog, New Relic, Splunk, a cloud console, ... is a
    dashboard though the word is not in it: ``writ lint`` rejects it as rollback_path
    (the same detector refuses it at acquire, below)."""
    from writ.core.routes import route_problem
    from writ.evidence.lint import check_row

    assert route_problem(route) is not None
    result = check_row({"rollback_path": route}, fragment=True)
    assert result.verdict == "reject", result
    assert any(f.field == "rollback_path" for f in result.findings)


@pytest.mark.parametrize("route", LITERAL_ROUTES)
def test_literal_routes_and_product_apis_still_pass(route: str) -> None:
    from writ.core.routes import route_problem

    assert route_problem(route) is None


async def test_a_dashboard_page_is_refused_at_acquire(writ: Writ) -> None:  # noqa: F811
    """At acquire, a rollback plan whose path is a product's page is 422 naming
    ``rollback.path`` — the same detector as ``writ lint``."""
    agent = await writ.principal("agent-a")
    await writ.principal("ops-queue", "queue")
    plan = {"allowed": True, "key_holder": "ops-queue", "override_queue": "ops-queue"}
    for route in ("https://grafana.example.com/d/aB3xQ9z/db-latency", "/app/kibana"):
        err = error(
            await writ.acquire(agent, "dash/db", rollback={**plan, "path": route}), 422, "invalid"
        )
        assert err["field"] == "rollback.path", err
        assert "page" in err["message"]
    await writ.grant(agent, "dash/db", rollback={**plan, "path": "/internal/db/rollback?txn=1"})


async def test_a_route_too_long_to_be_one_is_refused_before_it_is_read(
    writ: Writ,  # noqa: F811
) -> None:
    """A 140 KB rollback path of "/graph?" held the event loop 8 s while the dashboard
    detector read it (a pattern in the square of its length), and a 100 KB one ending in a
    space 32 s: any agent could stall the server. A route over 4,096 characters is now
    refused as such, and the message shows only its start."""
    agent = await writ.principal("agent-b")
    await writ.principal("ops-queue-b", "queue")
    plan = {"allowed": True, "key_holder": "ops-queue-b", "override_queue": "ops-queue-b"}
    for route in ("/x?" + "/graph?" * 20_000, "http://" + "a" * 100_000 + " x"):
        r = await writ.acquire(agent, "long/db", rollback={**plan, "path": route})
        err = error(r, 422, "invalid")
        assert err["field"] == "rollback.path" and "longer than 4096" in err["message"], err
        assert len(r.text) < 1_000, len(r.text)


def test_the_route_checks_judge_as_their_one_pattern_did() -> None:
    """The literal-route and Prometheus-UI checks, rewritten to run in linear time, give
    the answers of the patterns they replace on every shape they tell apart."""
    import re

    from writ.core.routes import route_problem

    old_route = re.compile(r"^(/|https?://[^\s/]+)\S*$")
    old_prometheus = re.compile(r"(^|/)(graph|alerts)\?(g\d|.*expr=)", re.I)
    routes = [
        "/graph?g0.expr=up",
        "/alerts?x=1&EXPR=up",
        "/prom/graph?x&expr=rate(x)",
        "/graphx?expr=1",
        "/x/graph?q=1",
        "http://prom:9090/graph?g0.range_input=1h",
        "/api/v1/query?expr=up",
        "/graph?x/alerts?expr=1",
        "/a/alerts?g",
        "http:///x",
        "https://h",
        "/a b",
        "http://h/x y",
        "https://h/x\ty",
        "ftp://h/x",
        "/",
        "https://ops.example.com/api/v1/deploys/842/rollback",
    ]
    for route in routes:
        literal = bool(old_route.match(route))
        prometheus = literal and bool(old_prometheus.search(route))
        problem = route_problem(route) or ""
        assert ("not a literal route" in problem) == (not literal), route
        assert ("Prometheus" in problem) == prometheus, (route, problem)


def _read_line(stream: Any, timeout: float) -> str:
    """One line from a pipe, waiting at most ``timeout`` seconds for it."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line in time"
    return str(stream.readline().decode())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_run_sigkilled_takes_its_command_with_it(live_server: LiveServer) -> None:
    """``kill -9`` on ``writ run`` ends its command too (today the command ran on without a
    lease): a real process tree — the test, ``writ run``, the command."""
    _, token = live_server.principal("agent")
    script = "import os, sys, time\nprint(os.getpid(), flush=True)\nwhile True: time.sleep(1)"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "writ.cli",
            "run",
            unique("run"),
            "--intent",
            "x",
            "--",
            sys.executable,
            "-c",
            script,
        ],
        env={**os.environ, **live_server.env(token)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    child = 0
    try:
        assert run.stdout is not None
        child = int(_read_line(run.stdout, 30).strip())
        assert not gone_within(child, 0), "the command should be running"
        run.kill()  # SIGKILL: writ run can do nothing about it
        run.wait(10)
        assert gone_within(child, 10), "the command outlived writ run"
    finally:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait()


def test_a_command_started_after_writ_run_died_never_runs() -> None:
    """The race the parent-death signal cannot close alone: the child checks, after asking
    for it, that its parent is still the one that started it, and exits 126 if not."""
    from writ.cli import spawn

    if spawn._PRCTL is None:
        pytest.skip("no prctl here")
    proc = subprocess.Popen(
        [sys.executable, "-c", "print('ran')"],
        stdout=subprocess.PIPE,
        preexec_fn=spawn._tie_to(os.getpid() + 999_999, spawn._PRCTL),  # a parent long gone
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 126 and out == b""


# ----------------------------------------------------------------------------- request line
async def test_path_and_query_parameters_must_be_text(writ: Writ) -> None:  # noqa: F811
    """An id, resource, name or time in the path or query is text too: a percent-encoded
    NUL or control character is 422 naming it (on PostgreSQL a NUL was a 503)."""
    agent = await writ.principal("agent-a")
    lease = await writ.grant(agent, "q/db")
    lid = lease["lease_id"]
    for method, url in (
        ("GET", f"/v1/leases/{lid}%00"),
        ("POST", f"/v1/leases/{lid}%00/release"),
        ("POST", f"/v1/leases/{lid}%00/renew"),
        ("GET", "/v1/changes/chg_%00"),
        ("GET", "/v1/consents/cns_%1b"),
        ("POST", "/v1/consents/cns_%00/grant"),
        ("GET", "/v1/rollbacks/rb_%00"),
        ("POST", "/v1/freezes/frz_%00/lift"),
    ):
        err = error(await writ.c.request(method, url, headers=writ.auth(agent)), 422, "invalid")
        assert err["field"] == "path", err
    for params, field in (
        ({"holder": "a\x00"}, "holder"),
        ({"resource": "q/db", "at": "\x00"}, "at"),
        ({"since": "2026\x1b"}, "since"),
    ):
        url = "/v1/who" if "at" in params else ("/v1/audit" if "since" in params else "/v1/leases")
        err = error(await writ.c.get(url, params=params, headers=writ.auth(agent)), 422, "invalid")
        assert err["field"] == field, err
    assert (await writ.c.get(f"/v1/leases/{lid}", headers=writ.auth(agent))).status_code == 200


# ----------------------------------------------------------------------------- client, MCP, CLI
def _recording_client() -> tuple[Any, list[httpx.Request]]:
    from writ.client import Client

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "none here"}})

    return Client("http://writ.test", "t", transport=httpx.MockTransport(handler)), sent


def test_the_client_never_resolves_a_resource_or_an_id_into_another_path() -> None:
    """``prod/../secrets`` is refused before anything is sent (httpx would have asked about
    ``secrets``); ids are one escaped segment, ``..`` included."""
    from writ.core.errors import NotFound

    client, sent = _recording_client()
    for resource in ("prod/../secrets", "prod/./db", "..", "prod/.."):
        with pytest.raises(Invalid) as exc:
            client.resource(resource)
        assert exc.value.details["field"] == "resource"
    assert sent == []
    for lease_id, raw in (
        ("..", "/v1/leases/%2E%2E"),
        (".", "/v1/leases/%2E"),
        ("../principals", "/v1/leases/..%2Fprincipals"),
        ("a?b#c", "/v1/leases/a%3Fb%23c"),
        ("a%2F", "/v1/leases/a%252F"),
    ):
        with pytest.raises(NotFound):
            client.get_lease(lease_id)
        assert sent[-1].url.raw_path.decode() == raw, sent[-1].url
    with pytest.raises(NotFound):
        client.resource("prod/db")
    assert sent[-1].url.raw_path.decode() == "/v1/resources/prod/db"


def test_the_client_refuses_non_text_before_sending() -> None:
    client, sent = _recording_client()
    with pytest.raises(Invalid) as exc:
        client.acquire("a/b", "x\udcff")
    assert exc.value.details["field"] == "intent"
    with pytest.raises(Invalid):
        client.status("a\x00")
    with pytest.raises(Invalid):
        client.release("ls_\ud800")
    assert sent == []


async def test_mcp_tools_take_ids_only_as_ids() -> None:
    """An MCP tool argument that is a lease/change/consent/rollback id must look like one:
    ``../``, ``/``, ``?``, ``#``, ``%`` never reach a URL (nor writ)."""
    from mcp.server.mcpserver.exceptions import ToolError

    from writ.client import AsyncClient
    from writ.mcp import create_server

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/v1/whoami":
            return httpx.Response(200, json={"name": "a", "kind": "agent", "admin": False})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such"}})

    client = AsyncClient("http://writ.test", "t", transport=httpx.MockTransport(handler))
    server = create_server(client)
    for tool, args in (
        ("release_lease", {"lease_id": "../principals"}),
        ("get_lease", {"lease_id": "ls_1/release"}),
        ("renew_lease", {"lease_id": "ls_1?x=1"}),
        ("get_consent", {"consent_id": "cns_1#"}),
        ("answer_consent", {"consent_id": "..", "decision": "grant"}),
        ("get_rollback", {"rollback_id": "rb_%2E%2E"}),
        ("ask_consent", {"change_id": "chg/1", "reason": "r"}),
        ("request_rollback", {"lease_id": "ls 1", "reason": "r"}),
    ):
        with pytest.raises(ToolError):
            await server.call_tool(tool, args)
    for tool, args, field in (
        ("acquire_write_authority", {"resource": "a/b", "intent": "x\ud800"}, "intent"),
        (
            "acquire_write_authority",
            {"resource": "a/b", "intent": "x", "touches": ["\x00"]},
            "touches",
        ),
        ("ask_consent", {"change_id": "chg_1", "reason": "\x1b[2J"}, "reason"),
        ("acquire_write_authority", {"resource": "a/b", "intent": "x", "ttl_s": True}, "ttl_s"),
        ("acquire_write_authority", {"resource": "a/b", "intent": "x", "wait_s": False}, "wait_s"),
        ("renew_lease", {"lease_id": "ls_1", "ttl_s": True}, "ttl_s"),
    ):
        with pytest.raises(ToolError) as exc:  # by the tool's schema, or by writ's own check
            await server.call_tool(tool, args)
        assert field in str(exc.value), exc.value
    assert not [r for r in sent if r.url.path != "/v1/whoami"], sent
    with pytest.raises(ToolError) as exc:
        await server.call_tool("get_lease", {"lease_id": "ls_AbC-12_x"})  # an id: asked
    assert "no such" in str(exc.value)
    await client.aclose()


def test_cli_arguments_that_are_not_text_are_refused_naming_the_field(tmp_path: Any) -> None:
    """Arguments that become data — a resource, an intent, an id, a vendor — pass the same
    check (a byte that is not UTF-8 reaches Python as a lone surrogate): exit 2 (a bad value) naming
    the field, nothing sent, nothing stored."""
    from click.testing import CliRunner

    from writ.cli import main

    env = {"WRIT_URL": "http://127.0.0.1:9", "WRIT_TOKEN": "t"}  # nothing listens there
    store = f"sqlite:///{tmp_path / 'w.db'}"
    for args, field in (
        (["acquire", "a/b", "--intent", "x\udcff"], "intent"),
        (["status", "a\udcffb"], "resource"),
        (["who", "a/b/\x1b"], "resource"),
        (["release", "ls_\udcff"], "id"),
        (
            ["change", "ls_1", "--attribute", "a", "--summary", "s", "--before", '"\\ud800"'],
            "before",
        ),
        (
            ["principal", "add", "x1", "--kind", "agent", "--vendor", "v\udcff", "--store", store],
            "vendor",
        ),
    ):
        r = CliRunner().invoke(main, args, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert f"invalid: {field} is not valid text" in r.stderr, r.stderr


async def test_sqlite_text_that_is_not_utf8_is_read_leniently(
    writ: Writ,  # noqa: F811
    backend: Backend,
) -> None:
    """SQLite stores bytes as written: a column edited by hand to hold bytes that are not
    UTF-8 (PostgreSQL refuses them) no longer fails every read of it with a 503 — the
    lease reads with U+FFFD, grants go on, and verify names a row edited that way."""
    if backend.is_pg:
        pytest.skip("PostgreSQL never holds text that is not UTF-8")
    agent = await writ.principal("agent-a")
    other = await writ.principal("agent-b")
    lease = await writ.grant(agent, "raw/db", ttl_s=600)
    await backend.sql(
        "UPDATE leases SET intent = CAST(X'78eda080' AS TEXT) WHERE lease_id = ?", lease["lease_id"]
    )
    r = await writ.c.get(f"/v1/leases/{lease['lease_id']}", headers=writ.auth(agent))
    assert r.status_code == 200, r.text
    assert r.json()["intent"].startswith("x\ufffd")
    err = error(await writ.acquire(other, "raw/db/x"), 409, "held")
    assert err["holder"]["intent"].startswith("x\ufffd")
    assert (await writ.release(agent, lease["lease_id"])).status_code == 200
    await writ.grant(other, "raw/db")
    seq = (await writ.audit())[-1]["seq"]
    await backend.tamper(seq, "placeholder")
    await backend.sql("UPDATE audit SET body = CAST(X'7bed' AS TEXT) WHERE seq = ?", seq)
    verdict = (await writ.c.get("/v1/audit/verify", headers=writ.admin)).json()
    assert verdict["ok"] is False and verdict["first_bad_seq"] == seq, verdict


# ----------------------------------------------------------------------------- the engine
async def test_the_engine_applies_the_same_checks_to_every_caller(engine: Any) -> None:
    """Not only HTTP: a caller of the engine itself (the CLI's offline commands, an
    embedding program) meets the same refusals, on each store."""
    from writ.engine import Engine

    assert isinstance(engine, Engine)
    a, _ = await engine.add_principal(None, "agent-a", "agent")
    h, _ = await engine.add_principal(None, "human-h", "human")
    for kwargs, field in (
        ({"resource": "a/b", "intent": "x\ud800"}, "intent"),
        ({"resource": "a/\x00", "intent": "x"}, "resource"),
        ({"resource": "a/./b", "intent": "x"}, "resource"),
        ({"resource": "a/b", "intent": "x", "touches": ["ok", "\x07"]}, "touches[1]"),
        ({"resource": "a/b", "intent": "x", "ttl_s": True}, "ttl_s"),
        ({"resource": "a/b", "intent": "x", "consent_id": "c\ud800"}, "consent_id"),
        ({"resource": "a/b", "intent": "x", "rollback": {"path": "/r\x00"}}, "rollback.path"),
    ):
        with pytest.raises(Invalid) as exc:
            await engine.acquire(a, **kwargs)
        assert exc.value.details["field"] == field, (kwargs, exc.value)
    lease = await engine.acquire(a, resource="a/b", intent="x", ttl_s=60)
    lid = lease["lease_id"]
    deep: Any = []
    for _ in range(validate.MAX_DEPTH):
        deep = [deep]
    for before, field in (
        ("\udfff", "before"),
        (deep, "before"),
        ("x" * (validate.MAX_VALUE + 1), "before"),
    ):
        with pytest.raises(Invalid) as exc:
            await engine.consents.record_change(a, lid, "capacity", "s", before, None)
        assert exc.value.details["field"] == field
    with pytest.raises(Invalid) as exc:
        await engine.revoke(h, lid, "R-1\x00", "oncall", "stuck")
    assert exc.value.details["field"] == "runbook"
    for name in sorted(RESERVED_NAMES):
        with pytest.raises(Invalid):
            await engine.add_principal(None, name, "agent")
    with pytest.raises(Invalid) as exc:
        await engine.add_principal(None, "x1", "agent", vendor="v\udcff")
    assert exc.value.details["field"] == "vendor"
    assert (await engine.get_lease(lid))["state"] == "held"
