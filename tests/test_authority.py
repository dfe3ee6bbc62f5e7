"""Authority (PROTOCOL.md v1.1): who may ever be a writer, on what, over HTTP on both stores.

* the model: grants parsed with their FILE:LINE, bad files refused with the line;
* the kind × route × mode matrix: each kind of principal on the lease, read, explain and
  wake routes, in open and in closed mode, answers what the grants say;
* touches within attributes, recorded changes within touches, reads filtered, 409 ``held``
  pointing agents at writ's wake route, the wake route's rate limit;
* a reload: new grants for new requests, held leases keep their term, and a queued
  request whose grant was removed meanwhile is refused when its turn comes, with a row;
* every refusal is a ``lease.refused`` row that ``writ lint`` accepts and the postmortem
  lists.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import ADMIN_TOKEN
from tests.stores_fixtures import Backend
from writ.api.app import create_app
from writ.cli import main
from writ.core.errors import Invalid, PolicyError
from writ.core.grants import Settings, decide, grant_lines, review
from writ.core.models import Principal
from writ.core.policy import load, parse
from writ.engine import Engine
from writ.evidence.lint import check_row

# The 02:17 policy in closed mode (docs/authority.md walks through it).
POLICY = """\
[authority]
mode = "closed"

# perf-agent owns prod/db; it may change capacity only
[[authority.grant]]
principals = ["perf-agent"]
write = ["prod/db"]
observe = ["prod", "routing"]
attributes = ["capacity"]

[[authority.grant]]   # cost-agent watches the DB, writes capacity reports
principals = ["cost-agent"]
write = ["capacity"]
observe = ["prod/db"]
attributes = ["capacity"]

[[authority.grant]]
vendors = ["vendor-p"]
observe = ["prod/db"]

[[authority.grant]]
kinds = ["queue"]
write = ["prod"]
"""
LINES = {"perf": 5, "cost": 11, "vendor": 17, "queue": 21}


def test_grants_carry_their_file_and_line() -> None:
    """tomllib has no positions: the grant headers are found in the text (comments after a
    header, and a header inside a multi-line string, are handled)."""
    pol = parse(POLICY, "writ.toml")
    s = pol.authority
    assert s.mode == "closed"
    assert [g.line for g in s.grants] == list(LINES.values())
    assert s.where(s.grants[1]) == "writ.toml:11"
    tricky = 'x = """\n[[authority.grant]]\n"""\n' + POLICY
    assert grant_lines(tricky) == [v + 3 for v in LINES.values()]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[authority]\nmode = "shut"\n', 1, "open"),
        ('[authority]\nmode = "closed"\n[[authority.grant]]\nwrite = ["a"]\n', 3, "whom"),
        ("[[authority.grant]]\nkinds = ['robot']\n", 1, "robot"),
        ("[[authority.grant]]\nprincipals = ['a']\nwrite = ['Bad Path']\n", 1, "invalid"),
        ("[[authority.grant]]\nprincipals = ['a']\nwrites = ['x']\n", 1, "writes"),
        ("[[authority.grant]]\nprincipals = ['a']\nattributes = []\n", 1, "attribute"),
        ("[authority]\nhow = 1\n", 1, "how"),
    ],
)
def test_bad_grants_name_their_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse("\n" + text, "p.toml")
    assert e.value.line == line + 1, e.value
    assert words in str(e.value) or words == "invalid", e.value


def test_decide_says_what_a_principal_may_do() -> None:
    s = parse(POLICY, "writ.toml").authority
    cost = decide(s, Principal("cost-agent", "agent", "vendor-b"), "prod/db")
    assert (cost.write, cost.observe, cost.rule) == (False, True, "writ.toml:11")
    assert cost.message.startswith("cost-agent may observe prod/db, not write it")
    assert "capacity" in cost.message
    perf = decide(s, Principal("perf-agent", "agent"), "prod/db/replica")
    assert (perf.write, perf.attributes, perf.rule) == (True, ["capacity"], "writ.toml:5")
    human = decide(s, Principal("jane", "human"), "prod/db")
    assert (human.write, human.observe, human.rule) == (False, True, None)
    admin = decide(s, Principal("root", "human", admin=True), "prod/db")
    assert (admin.write, admin.attributes) == (True, ["*"])
    stranger = decide(s, Principal("x", "agent"), "prod/db")
    assert (stranger.write, stranger.observe, stranger.rule) == (False, False, None)
    everything = parse('[[authority.grant]]\nkinds = ["agent"]\nobserve = [""]\n').authority
    watcher = decide(Settings("closed", everything.grants), Principal("w", "agent"), "a/b")
    assert (watcher.write, watcher.observe) == (False, True)
    assert "observe under: (everything)" in watcher.message
    opened = decide(Settings(), Principal("x", "agent"), "prod/db")
    assert (opened.write, opened.observe, opened.attributes) == (True, True, ["*"])


def test_review_warns_of_unknown_principals_and_explains_overlaps() -> None:
    s = parse(
        POLICY + '\n[[authority.grant]]\nprincipals = ["perf-agent"]\nwrite = ["x"]\n'
    ).authority
    known = {"perf-agent": Principal("perf-agent", "agent"), "q": Principal("q", "queue")}
    notes = review(s, known)
    assert any("'cost-agent' is not a registered principal" in n for n in notes), notes
    overlap = [n for n in notes if "both apply to perf-agent" in n]
    assert overlap and "write prod/db, x" in overlap[0], notes
    # an observe-only grant adds nothing to what may be touched
    extra = '\n[[authority.grant]]\nkinds = ["agent"]\nobserve = ["prod"]\n'
    notes = review(parse(POLICY + extra).authority, known)
    (both,) = [n for n in notes if ":5 and " in n and "both apply to perf-agent" in n]
    assert both.endswith("attributes capacity)"), both
    empty = review(parse('[[authority.grant]]\nkinds = ["portal"]\n').authority)
    assert any("neither write nor observe anything" in n for n in empty), empty
    assert any("mode is open" in n for n in empty), empty


# ----------------------------------------------------------------------------- HTTP world
@dataclass
class World:
    http: httpx.AsyncClient
    engine: Engine
    path: Path
    tokens: dict[str, str] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    app: Any = None

    async def add(self, name: str, kind: str, vendor: str | None = None, **kw: Any) -> None:
        r = await self.http.post(
            "/v1/principals",
            json={"name": name, "kind": kind, "vendor": vendor, **kw},
            headers=self.h("admin"),
        )
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN if who == 'admin' else self.tokens[who]}"}

    async def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.h(who))

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.h(who))

    async def lease(self, who: str, resource: str, **kw: Any) -> httpx.Response:
        return await self.post(who, "/v1/leases", {"resource": resource, "intent": "test"} | kw)

    async def rows(self, event: str | None = None) -> list[dict[str, Any]]:
        await self.engine.caller.drain()
        rows = (await self.engine.audit(0, 10_000))["rows"]
        return [r for r in rows if event is None or r["event"] == event]


@asynccontextmanager
async def world(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = POLICY
) -> AsyncIterator[World]:
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN_TOKEN)
    path = tmp_path / "writ.toml"
    path.write_text(text)
    engine = Engine(backend.open_store(), load(path))
    app = create_app(engine, start_engine=False)
    await engine.start(background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as http:
            w = World(http, engine, path, app=app)

            def on_call(request: httpx.Request) -> httpx.Response:
                w.calls.append({"url": str(request.url), **json.loads(request.content)})
                return httpx.Response(200)

            engine.caller.transport = httpx.MockTransport(on_call)
            await w.add("perf-agent", "agent", "vendor-a", wake="https://perf.example/wake")
            await w.add("cost-agent", "agent", "vendor-b")
            await w.add("stranger", "agent")
            await w.add("vendor-p-button", "portal", "vendor-p")
            await w.add("oncall-jane", "human")
            await w.add("svc-ops", "queue")
            yield w
    finally:
        await engine.stop()


OPEN_POLICY = POLICY.replace('mode = "closed"', 'mode = "open"')
CALLERS = ("perf-agent", "cost-agent", "stranger", "vendor-p-button", "oncall-jane", "svc-ops")
EVERYONE = frozenset(CALLERS) | {"admin"}
READERS = frozenset({"oncall-jane", "svc-ops", "admin"})  # humans and queues read all

# route -> (who may in closed mode). In open mode everyone may.
LEASE_PROD_DB = frozenset({"perf-agent", "svc-ops", "admin"})
LEASE_CAPACITY = frozenset({"cost-agent", "admin"})
OBSERVE_PROD_DB = READERS | {"perf-agent", "cost-agent", "vendor-p-button"}
OBSERVE_ROUTING = READERS | {"perf-agent"}


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_kind_route_mode_matrix(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Every kind (agent, portal, human, queue, admin) on the lease, read, explain and wake
    routes: in open mode everyone may; in closed mode exactly those the grants name, and
    each refusal is 403 ``forbidden`` with the rule's FILE:LINE and what the caller may do."""
    text = POLICY if mode == "closed" else OPEN_POLICY
    async with world(backend, tmp_path, monkeypatch, text) as w:
        # a held lease on prod/db/main and one on routing/edge, for the read routes
        held = (await w.lease("admin", "prod/db/main", ttl_s=300)).json()
        edge = (await w.lease("admin", "routing/edge", ttl_s=300)).json()
        routes: dict[str, tuple[frozenset[str], Any]] = {
            "lease prod/db": (LEASE_PROD_DB, lambda who: w.lease(who, f"prod/db/{who}")),
            "lease capacity": (LEASE_CAPACITY, lambda who: w.lease(who, f"capacity/{who}")),
            "lease routing": (frozenset({"admin"}), lambda who: w.lease(who, f"routing/{who}")),
            "get lease": (
                OBSERVE_PROD_DB,
                lambda who: w.get(who, f"/v1/leases/{held['lease_id']}"),
            ),
            "resource": (OBSERVE_PROD_DB, lambda who: w.get(who, "/v1/resources/prod/db/main")),
            "who": (OBSERVE_PROD_DB, lambda who: w.get(who, "/v1/who", resource="prod/db/main")),
            "fence": (
                OBSERVE_PROD_DB,
                lambda who: w.get(who, "/v1/fence", resource="prod/db/main", token=1),
            ),
            "who routing": (
                OBSERVE_ROUTING,
                lambda who: w.get(who, "/v1/who", resource="routing/edge"),
            ),
            "wake": (
                OBSERVE_PROD_DB,
                lambda who: w.post(who, f"/v1/leases/{held['lease_id']}/wake", {"reason": "hi"}),
            ),
            "wake routing": (
                OBSERVE_ROUTING,
                lambda who: w.post(who, f"/v1/leases/{edge['lease_id']}/wake", {"reason": "hi"}),
            ),
            "explain self": (
                EVERYONE,
                lambda who: w.get(who, "/v1/authority", principal=who, resource="prod/db"),
            ),
            "explain other": (
                READERS | {"svc-ops"},
                lambda who: w.get(who, "/v1/authority", principal="oncall-jane", resource="x"),
            ),
        }
        for name, (allowed, call) in routes.items():
            for who in [*CALLERS, "admin"]:
                if name == "explain other" and who == "oncall-jane":
                    continue  # asking about oneself
                r = await call(who)
                where = f"{mode} {name} by {who}: {r.status_code} {r.text[:300]}"
                if mode == "open" and name != "explain other":
                    ok = True
                else:
                    ok = who in allowed
                if ok:
                    assert r.status_code in (200, 201, 202), where
                    continue
                assert r.status_code == 403, where
                err = r.json()["error"]
                assert err["code"] == "forbidden", where
                if name.startswith("lease"):
                    assert "may" in err["message"] and "rule" in err, where
        if mode == "closed":
            refused = await w.rows("lease.refused")
            # one row per refused lease: 3 + 5 + 6 refusals (lines counted above)
            closed_refusals = sum(
                1
                for name in ("lease prod/db", "lease capacity", "lease routing")
                for who in CALLERS
                if who not in routes[name][0]
            )
            assert len(refused) == closed_refusals, refused
            cost = [r for r in refused if r["agent_id"] == "cost-agent"]
            assert any("may observe prod/db/cost-agent, not write it" in r["notes"] for r in cost)
            kinds = {p["name"]: p["kind"] for p in await w.engine.list_principals()}
            for row in refused:
                assert check_row(row, kinds=kinds).verdict == "accept", row
        else:
            assert await w.rows("lease.refused") == []


async def test_the_refusal_names_the_rule_and_comes_before_consent(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cost-agent's consolidation on prod/db, behind perf-agent's protected change, is
    refused as not its authority (403), not as consent_required: authority comes first."""
    async with world(backend, tmp_path, monkeypatch) as w:
        lease = (await w.lease("perf-agent", "prod/db", touches=["capacity"])).json()
        r = await w.post(
            "perf-agent",
            f"/v1/leases/{lease['lease_id']}/changes",
            {"attribute": "capacity", "summary": "4 -> 8"},
        )
        assert r.status_code == 201, r.text
        r = await w.lease("cost-agent", "prod/db", touches=["capacity"])
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["rule"] == f"{w.path}:{LINES['cost']}"
        assert err["message"].startswith("cost-agent may observe prod/db, not write it")
        assert err["may"]["write"] == ["capacity"]
        row = (await w.rows("lease.refused"))[-1]
        assert row["agent_id"] == "cost-agent" and row["lock_holder"] == "perf-agent"
        assert await w.rows("consent.requested") == []


async def test_touches_within_attributes_and_changes_within_touches(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        # omitted touches become the caller's attributes
        r = await w.lease("perf-agent", "prod/db")
        assert r.status_code == 201 and r.json()["touches"] == ["capacity"], r.text
        lid = r.json()["lease_id"]
        # a change to another attribute under it: 403, and a row
        r = await w.post(
            "perf-agent", f"/v1/leases/{lid}/changes", {"attribute": "labels", "summary": "x"}
        )
        assert r.status_code == 403, r.text
        assert "touches only capacity, not labels" in r.json()["error"]["message"]
        assert "refused change to labels" in (await w.rows("lease.refused"))[-1]["notes"]
        assert await w.rows("change.recorded") == []
        r = await w.post(
            "perf-agent", f"/v1/leases/{lid}/changes", {"attribute": "capacity", "summary": "x"}
        )
        assert r.status_code == 201, r.text
        await w.post("perf-agent", f"/v1/leases/{lid}/release")
        # touches outside the attributes, or "*": 403 before anything else
        for touches in (["labels"], ["*"], ["capacity", "labels"]):
            r = await w.lease("perf-agent", "prod/db", touches=touches)
            assert r.status_code == 403, (touches, r.text)
            assert "may name only capacity in touches" in r.json()["error"]["message"]
        # an admin touches anything
        r = await w.lease("admin", "prod/db", touches=["labels", "owner"])
        assert r.status_code == 201, r.text


async def test_reads_are_filtered_to_what_an_agent_may_observe(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        for res in ("prod/db", "routing/edge", "billing/x"):
            assert (await w.lease("admin", res, ttl_s=300)).status_code == 201
        seen = {
            who: {
                l["resource"]
                for l in (await w.get(who, "/v1/leases", state="held")).json()["leases"]
            }
            for who in ("perf-agent", "cost-agent", "stranger", "oncall-jane")
        }
        assert seen == {
            "perf-agent": {"prod/db", "routing/edge"},
            "cost-agent": {"prod/db"},
            "stranger": set(),
            "oncall-jane": {"prod/db", "routing/edge", "billing/x"},
        }
        status = (await w.get("cost-agent", "/v1/status")).json()["leases"]
        assert [l["resource"] for l in status] == ["prod/db"]
        for path in ("/v1/audit", "/v1/events"):
            page = (await w.get("cost-agent", path)).json()
            assert page["rows"] and {r["resource"] for r in page["rows"]} == {"prod/db"}
            everything = (await w.get("oncall-jane", path)).json()
            assert page["next_after_seq"] == everything["next_after_seq"]  # keeps its place
            assert len(everything["rows"]) > len(page["rows"])


async def test_held_shows_agents_writs_wake_route_and_humans_both(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        lease = (await w.lease("perf-agent", "prod/db", ttl_s=300)).json()
        route = f"/v1/leases/{lease['lease_id']}/wake"
        r = await w.lease("admin", "prod/db")
        assert r.status_code == 409, r.text
        holder = r.json()["error"]["holder"]
        assert holder["wake"] == "https://perf.example/wake" and holder["wake_via_writ"] == route
        await w.engine.authority.reload(None)  # no change; a reload keeps the lease
        w.path.write_text(
            POLICY.replace('write = ["prod"]', 'write = ["prod"]\n')
            + ('[[authority.grant]]\nprincipals = ["stranger"]\nwrite = ["prod/db"]\n')
        )
        await w.engine.authority.reload(None)
        r = await w.lease("stranger", "prod/db")
        assert r.status_code == 409, r.text
        holder = r.json()["error"]["holder"]
        assert holder["wake"] == route and "perf.example" not in r.text


async def test_wake_calls_the_holder_at_most_every_30_s(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        lease = (await w.lease("perf-agent", "prod/db", ttl_s=600)).json()
        path = f"/v1/leases/{lease['lease_id']}/wake"
        r = await w.post("cost-agent", path, {"reason": "p99 still over the alert"})
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["already_woken_at"] is None and first["holder"] == "perf-agent"
        r = await w.post("vendor-p-button", path, {"reason": "again"})
        assert r.status_code == 202 and r.json()["already_woken_at"] == first["woken_at"]
        assert (await w.post("stranger", path, {"reason": "x"})).status_code == 403
        assert (await w.post("cost-agent", path, {"reason": " "})).status_code == 422
        assert (
            await w.post("cost-agent", "/v1/leases/nope/wake", {"reason": "x"})
        ).status_code == 404
        await w.engine.caller.drain()
        assert [c["url"] for c in w.calls] == ["https://perf.example/wake"]
        assert w.calls[0]["by"] == "cost-agent" and w.calls[0]["to"] == "perf-agent"
        rows = await w.rows("wake.requested")
        assert [r["agent_id"] for r in rows] == ["cost-agent", "vendor-p-button"]
        assert "already woken" in rows[1]["notes"]
        assert len(await w.rows("wake.delivered")) == 1
        await backend.advance(31)
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/renew")
        r = await w.post("cost-agent", path, {"reason": "still there?"})
        assert r.status_code == 202 and r.json()["already_woken_at"] is None, r.text
        await w.engine.caller.drain()
        assert len(w.calls) == 2
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
        assert (await w.post("cost-agent", path, {"reason": "x"})).status_code == 410


async def test_no_audit_row_carries_a_wake_routes_secret(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PagerDuty routing key or a Slack webhook URL is a secret: the rows a wake writes
    (asked for, already woken, delivered) name the route redacted, as every other row does."""
    key, hook = "PAGERKEYPAGERKEYPAGERKEY5678", "https://hooks.slack.com/services/T0/B0/HOOKSECRET"
    async with world(backend, tmp_path, monkeypatch, OPEN_POLICY) as w:
        await w.add("pager-agent", "agent", "vendor-a", wake=f"pagerduty:{key}")
        await w.add("slack-agent", "agent", "vendor-a", wake=f"slack:{hook}")
        for who, where in (("pager-agent", "billing/a"), ("slack-agent", "billing/b")):
            lease = (await w.lease(who, where, ttl_s=600)).json()
            for _ in range(2):  # the second: "already woken"
                r = await w.post(
                    "cost-agent", f"/v1/leases/{lease['lease_id']}/wake", {"reason": "x"}
                )
                assert r.status_code == 202, r.text
        await w.engine.caller.drain()
        assert len(w.calls) == 2  # both were called, with their secrets
        rows = await w.rows()
        assert {"wake.requested", "wake.delivered"} <= {r["event"] for r in rows}
        for secret in (key, "HOOKSECRET"):
            assert not [r for r in rows if secret in json.dumps(r)], secret


async def test_explain_and_reload_over_http(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        r = await w.get("cost-agent", "/v1/authority", principal="cost-agent", resource="prod/db")
        assert r.json() | {"message": None, "may": None} == {
            "principal": "cost-agent",
            "resource": "prod/db",
            "mode": "closed",
            "write": False,
            "observe": True,
            "attributes": [],
            "rule": f"{w.path}:{LINES['cost']}",
            "message": None,
            "may": None,
        }
        r = await w.get("cost-agent", "/v1/authority", principal="perf-agent", resource="prod/db")
        assert r.status_code == 403 and "only about itself" in r.text
        r = await w.get("oncall-jane", "/v1/authority", principal="nobody", resource="prod/db")
        assert r.status_code == 404
        r = await w.get("oncall-jane", "/v1/authority", principal="perf-agent", resource="Bad Path")
        assert r.status_code == 422
        # reload: admin only; a bad file changes nothing and says where
        assert (await w.post("oncall-jane", "/v1/policy/reload")).status_code == 403
        w.path.write_text(POLICY + "\n[[authority.grant]]\nprincipals = ['x']\nwrite = 7\n")
        r = await w.post("admin", "/v1/policy/reload")
        assert r.status_code == 422 and f"{w.path}:" in r.json()["error"]["message"], r.text
        assert (await w.lease("cost-agent", "prod/db/x")).status_code == 403
        w.path.write_text(POLICY.replace('write = ["capacity"]', 'write = ["capacity", "prod/db"]'))
        r = await w.post("admin", "/v1/policy/reload")
        assert r.status_code == 200 and r.json()["mode"] == "closed", r.text
        assert (await w.lease("cost-agent", "prod/db/x")).status_code == 201
        reloads = await w.rows("policy.reloaded")
        assert len(reloads) == 1 and reloads[0]["agent_id"] == "admin"


async def test_a_grant_removed_while_waiting_is_refused_at_its_turn(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue hand-off re-checks authority: perf-agent holds prod/db, the queue
    svc-ops waits for it; a reload removes the queue's grant; when perf-agent releases,
    svc-ops is refused (403, a lease.refused row) instead of granted. perf-agent's own
    grant was narrowed too, but its held lease keeps its term (it renews and releases)."""
    async with world(backend, tmp_path, monkeypatch) as w:
        held = (await w.lease("perf-agent", "prod/db", ttl_s=300)).json()
        seq = (await w.engine.audit(0, 10_000))["next_after_seq"]
        waiting = asyncio.ensure_future(w.lease("svc-ops", "prod/db", wait_s=60))
        await w.engine.events("prod/db", seq, wait_s=10)  # its lease.queued row
        assert (await w.rows("lease.queued"))[-1]["agent_id"] == "svc-ops"
        w.path.write_text(
            POLICY.replace(
                'kinds = ["queue"]\nwrite = ["prod"]', 'kinds = ["queue"]\nwrite = []'
            ).replace('write = ["prod/db"]', 'write = ["prod/db/replica"]')
        )
        await w.engine.authority.reload(None)
        r = await w.post("perf-agent", f"/v1/leases/{held['lease_id']}/renew")
        assert r.status_code == 200, r.text
        r = await w.post("perf-agent", f"/v1/leases/{held['lease_id']}/release")
        assert r.status_code == 200, r.text
        r = await asyncio.wait_for(waiting, 30)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        refused = (await w.rows("lease.refused"))[-1]
        assert refused["agent_id"] == "svc-ops" and "may observe prod/db" in refused["notes"]
        assert await w.rows("lease.granted") and all(
            g["agent_id"] != "svc-ops" for g in await w.rows("lease.granted")
        )
        # new requests meet the new grants at once
        assert (await w.lease("perf-agent", "prod/db")).status_code == 403
        assert (await w.lease("perf-agent", "prod/db/replica")).status_code == 201


async def test_the_gate_check_binds_the_routes_attribute(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate route with ``attribute = "capacity"`` passes a write only when the lease's
    touches name capacity (or ``*``); otherwise ``forbidden`` and a gate.refused row."""
    async with world(backend, tmp_path, monkeypatch, OPEN_POLICY) as w:
        await w.add("the-gate", "agent")

        async def check(touches: list[str], attribute: str | None) -> dict[str, Any]:
            lease = (await w.lease("perf-agent", "prod/db", touches=touches)).json()
            body = {
                "caller_token": w.tokens["perf-agent"],
                "lease_id": lease["lease_id"],
                "fencing_token": lease["fencing_token"],
                "resource": "prod/db",
                "path": "/admin/db/scale",
                "attribute": attribute,
            }
            r = await w.post("the-gate", "/v1/gate/check", body)
            await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            return out

        assert (await check(["capacity"], "capacity"))["passed"] is True
        assert (await check(["*"], "capacity"))["passed"] is True
        assert (await check(["labels"], None))["passed"] is True
        no = await check(["labels"], "capacity")
        assert (no["passed"], no["code"]) == (False, "forbidden")
        assert "touches only labels, not capacity" in no["reason"]
        assert "not capacity" in (await w.rows("gate.refused"))[-1]["notes"]


def test_gate_routes_take_an_attribute() -> None:
    from writ.gate import parse_routes

    (route,) = parse_routes(
        '[[route]]\npath = "/admin/db/*"\nresource = "prod/db"\nattribute = "capacity"\n'
    )
    assert route.attribute == "capacity"
    with pytest.raises(Invalid, match="attribute"):
        parse_routes('[[route]]\npath = "/a"\nresource = "prod/db"\nattribute = "a b"\n')


def test_policy_check_and_explain_offline(tmp_path: Path) -> None:
    path = tmp_path / "writ.toml"
    path.write_text(POLICY)
    runner = CliRunner()
    r = runner.invoke(main, ["policy", "check", str(path)])
    assert r.exit_code == 0, r.output
    assert "authority closed: 4 grant(s)" in r.output
    r = runner.invoke(
        main,
        ["policy", "explain", "cost-agent", "prod/db", "--file", str(path), "--kind", "agent"],
    )
    assert r.exit_code == 0, r.output
    assert "cost-agent may observe prod/db, not write it" in r.output
    assert f"{path}:{LINES['cost']}" in r.output
    r = runner.invoke(
        main, ["policy", "explain", "perf-agent", "prod/db", "--file", str(path), "--json"]
    )
    assert r.exit_code == 0 and json.loads(r.output)["attributes"] == ["capacity"], r.output


async def test_the_postmortem_lists_authority_refusals(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from writ.evidence.postmortem import Query, StoreSource, collect, to_markdown

    async with world(backend, tmp_path, monkeypatch) as w:
        await w.lease("perf-agent", "prod/db", ttl_s=300)
        r = await w.lease("cost-agent", "prod/db", intent="consolidate")
        assert r.status_code == 403
        report = await collect(StoreSource(w.engine), Query(["prod"]))
        (refusal,) = report["refusals"]
        assert (refusal["kind"], refusal["agent"], refusal["intent"]) == (
            "forbidden",
            "cost-agent",
            "consolidate",
        )
        assert "may observe prod/db, not write it" in refusal["reason"]
        assert [h["holder"] for h in report["holders"]] == ["perf-agent"]
        md = to_markdown(report)
        assert "forbidden" in md and "cost-agent may observe prod/db" in md


def test_sighup_and_writ_policy_reload_apply_new_grants_without_a_restart(tmp_path: Path) -> None:
    """A real `writ serve` process: SIGHUP reloads the policy file (a policy.reloaded row
    by writ), `writ policy reload` does the same through the admin route, and `writ wake`
    asks writ to wake a holder; the server's pid never changes."""
    import os
    import signal

    from tests.server_fixtures import add_principals, server_process

    with server_process(f"sqlite:///{tmp_path / 'w.db'}", tmp_path, POLICY) as srv:
        assert srv.policy_path is not None
        (cost_token,) = asyncio.run(add_principals(srv.url, "agent", ["cost-agent"]))
        (perf_token,) = asyncio.run(add_principals(srv.url, "agent", ["perf-agent"]))
        cost = {"Authorization": f"Bearer {cost_token}"}
        body = {"resource": "prod/db/x", "intent": "consolidate"}
        with srv.client() as admin:
            assert admin.post("/v1/leases", json=body, headers=cost).status_code == 403
            head = admin.get("/v1/audit/verify").json()["rows"]
            srv.policy_path.write_text(
                POLICY.replace('write = ["capacity"]', 'write = ["capacity", "prod/db"]')
            )
            os.kill(srv.pid, signal.SIGHUP)
            rows = admin.get(
                "/v1/events", params={"resource": "policy", "after_seq": head, "wait_s": 30}
            ).json()["rows"]
            assert [r["event"] for r in rows] == ["policy.reloaded"], srv.logs()
            assert rows[0]["agent_id"] == "writ"
            r = admin.post("/v1/leases", json=body, headers=cost)
            assert r.status_code == 201, r.text
            lease = r.json()
        runner = CliRunner()
        env = {"WRIT_URL": srv.url, "WRIT_TOKEN": srv.admin_token}
        srv.policy_path.write_text(POLICY)
        out = runner.invoke(main, ["policy", "reload"], env=env)
        assert out.exit_code == 0 and "authority closed, 4 grant(s)" in out.output, out.output
        with srv.client() as admin:
            r = admin.post("/v1/leases", json={**body, "resource": "prod/db/y"}, headers=cost)
            assert r.status_code == 403, r.text  # the new (narrower) grants, at once
            # the lease granted under the old grants keeps its term
            assert admin.get(f"/v1/leases/{lease['lease_id']}").json()["state"] == "held"
        out = runner.invoke(
            main,
            ["wake", lease["lease_id"], "--reason", "still consolidating?"],
            env={"WRIT_URL": srv.url, "WRIT_TOKEN": perf_token},
        )
        assert out.exit_code == 0 and "writ is waking cost-agent" in out.output, out.output
        out = runner.invoke(
            main,
            ["policy", "explain", "cost-agent", "prod/db", "--json"],
            env={"WRIT_URL": srv.url, "WRIT_TOKEN": cost_token},
        )
        assert out.exit_code == 0 and json.loads(out.output)["write"] is False, out.output
        assert srv.proc is not None and srv.proc.poll() is None


def test_the_documented_policies_parse() -> None:
    """Every TOML block of docs/authority.md, and the README's five lines, is a policy
    writ accepts; the worked example is the demo's closed policy."""
    import re

    from writ.demo import CLOSED_POLICY

    root = Path(__file__).resolve().parent.parent
    blocks = re.findall(r"```toml\n(.*?)```", (root / "docs" / "authority.md").read_text(), re.S)
    readme = (root / "README.md").read_text()
    blocks += re.findall(r"```toml\n(\[authority\].*?)```", readme, re.S)
    assert len(blocks) >= 3
    for text in blocks:
        assert parse(text, "doc.toml").authority.mode == "closed"
    assert CLOSED_POLICY.strip() in blocks[0]


async def test_a_resources_blast_radius_shows_only_what_an_agent_may_observe(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '[blast_radius]\ndb-tier = ["prod/db", "billing/db"]\n' + POLICY
    async with world(backend, tmp_path, monkeypatch, text) as w:
        assert (await w.lease("admin", "billing/db", ttl_s=300)).status_code == 201
        mine = (await w.get("cost-agent", "/v1/resources/prod/db")).json()
        assert mine["conflicting"] == [] and mine["blast_radius"]
        theirs = (await w.get("oncall-jane", "/v1/resources/prod/db")).json()
        assert [l["resource"] for l in theirs["conflicting"]] == ["billing/db"]


async def test_the_gate_passes_a_write_only_when_touches_name_its_attribute(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real `Gate` (in-process, before a recording upstream): a route with
    ``attribute = "capacity"`` forwards the write of a lease touching capacity, and refuses
    403 ``forbidden`` that of a lease touching only labels; the upstream never sees it."""
    from writ.gate import Gate, parse_routes

    seen: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    async with world(backend, tmp_path, monkeypatch, OPEN_POLICY) as w:
        await w.add("the-gate", "portal")
        routes = parse_routes(
            '[[route]]\npath = "/admin/db/scale"\nresource = "prod/db"\nattribute = "capacity"\n'
        )
        gate = Gate(
            "http://writ",
            w.tokens["the-gate"],
            "http://upstream.test",
            routes,
            upstream_transport=httpx.MockTransport(upstream),
            writ_transport=httpx.ASGITransport(app=w.app),
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gate"
        ) as client:
            for touches, status in ((["labels"], 403), (["capacity"], 200), (["*"], 200)):
                lease = (await w.lease("perf-agent", "prod/db", touches=touches)).json()
                r = await client.post(
                    "/admin/db/scale",
                    json={"to": 8},
                    headers={
                        **w.h("perf-agent"),
                        "Writ-Lease": lease["lease_id"],
                        "Writ-Fencing-Token": str(lease["fencing_token"]),
                    },
                )
                await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
                assert r.status_code == status, (touches, r.text)
                if status == 403:
                    err = r.json()["error"]
                    assert err["code"] == "forbidden" and "touches name it" in err["message"]
                    assert seen == []
        await gate.aclose()
        assert seen == ["/admin/db/scale", "/admin/db/scale"]
