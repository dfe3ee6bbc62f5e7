"""``writ postmortem``: the incident report, drafted from the ledger alone.

One scripted incident on a manual clock exercises every section: grants and a handoff, a
change, a consent refusal answered and used, a queued wait, a rollback approved by the
key-holder queue and executed, a revocation with provenance, a stuck lock woken and paged,
and a freeze. The report must name each with its exact second and cite its row.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from writ.cli import main
from writ.core.clock import ManualClock, parse_time
from writ.core.errors import ConsentRequired
from writ.core.ledger import seal
from writ.core.models import Principal
from writ.core.policy import parse
from writ.demo import POLICY as SEED_POLICY
from writ.engine import Engine
from writ.evidence.postmortem import (
    HttpSource,
    Query,
    StoreSource,
    build,
    collect,
    timeline_svg,
    to_html,
    to_json,
    to_markdown,
)
from writ.stores.sqlite import SQLiteStore

T0 = parse_time("2026-05-16T10:00:00Z")
# the seed's policy (max_hold_s 600 and page_after_s 60 under prod time the stuck lock below)
POLICY = 'rollback_base_url = "http://rollback.test"\n' + SEED_POLICY
PLAN = {
    "allowed": True,
    "path": "/internal/db/rollback?txn=8841",
    "key_holder": "svc-ops-princess",
    "override_queue": "svc-ops-princess",
    "denominator": "incident_minutes",
}


class Incident:
    def __init__(self, engine: Engine, clock: ManualClock, path: Path) -> None:
        self.engine, self.clock, self.path = engine, clock, path
        self.p: dict[str, Principal] = {}

    async def at(self, offset: float) -> None:
        self.clock.t = T0 + offset
        await self.engine.sweep()
        await self.engine.caller.drain()

    async def lease(self, who: str, resource: str, **kw: Any) -> dict[str, Any]:
        return await self.engine.acquire(self.p[who], resource=resource, **kw)


async def _script(x: Incident) -> None:
    e, p = x.engine, x.p
    await x.at(0)
    perf = await x.lease(
        "perf-agent",
        "prod/db",
        intent="double capacity",
        ttl_s=300,
        touches=["capacity"],
        rollback=PLAN,
    )
    change = await e.consents.record_change(
        p["perf-agent"], perf["lease_id"], "capacity", "capacity 4→8", 4, 8
    )
    await x.at(5)
    with pytest.raises(ConsentRequired):
        await x.lease("cost-agent", "prod/db", intent="consolidate", touches=["capacity"])
    await x.at(6)
    consent = await e.consents.ask(p["cost-agent"], change["change_id"], "overprovisioned")
    await x.at(10)
    await e.consents.answer(p["perf-agent"], consent["consent_id"], True)
    await x.at(12)
    await e.release(p["perf-agent"], perf["lease_id"])
    await x.at(13)
    cost = await x.lease(
        "cost-agent",
        "prod/db",
        intent="consolidate",
        touches=["capacity"],
        consent_id=consent["consent_id"],
        ttl_s=60,
    )
    await x.at(20)
    await e.release(p["cost-agent"], cost["lease_id"])
    await x.at(30)
    routing = await x.lease(
        "routing-agent", "routing/db-tier", intent="reroute", ttl_s=300, touches=["routing"]
    )
    await x.at(31)
    seen = (await e.audit(0, 10_000))["next_after_seq"]
    waiting = asyncio.ensure_future(
        x.lease("perf-agent", "prod/db", intent="scale again", ttl_s=300, wait_s=60, rollback=PLAN)
    )
    queued = (await e.events("prod/db", seen, wait_s=5))["rows"]
    assert [r["event"] for r in queued] == ["lease.queued"]
    await x.at(40)
    await e.release(p["routing-agent"], routing["lease_id"])
    perf2 = await asyncio.wait_for(waiting, 5)
    await x.at(50)
    rb = await e.rollbacks.request(
        p["cost-agent"], lease_id=perf2["lease_id"], reason="latency still high"
    )
    await x.at(55)
    await e.rollbacks.answer(p["svc-ops-princess"], rb["rollback_id"], True)
    await x.at(60)
    await e.revoke(
        p["oncall-jane"], perf2["lease_id"], "R-44", "oncall-jane", "stuck after rollback"
    )
    await x.at(100)
    await x.lease("batch-agent", "prod/cache", intent="reindex", ttl_s=3600)
    await x.at(701)  # past max_hold_s: stuck, woken
    await x.at(762)  # still held a minute later: paged
    await x.at(800)
    fz = await e.freezes.freeze(p["svc-ops-princess"], "prod", "incident 4411")
    await x.at(810)
    await e.freezes.lift(p["svc-ops-princess"], fz["freeze_id"])


async def _play(path: Path, wakes: bool) -> Incident:
    """The scripted incident played into a new store at ``path`` (the engine left running);
    with ``wakes``, each principal has a wake route (answered 200)."""
    clock = ManualClock(T0 - 60)
    engine = Engine(SQLiteStore(f"sqlite:///{path}", clock=clock), parse(POLICY))
    engine.caller.transport = httpx.MockTransport(lambda r: httpx.Response(200))
    engine.caller.backoff = 0.001
    await engine.start(background=False)
    x = Incident(engine, clock, path)
    for name, kind in (
        ("perf-agent", "agent"),
        ("cost-agent", "agent"),
        ("routing-agent", "agent"),
        ("batch-agent", "agent"),
        ("svc-ops-princess", "queue"),
        ("oncall-jane", "human"),
    ):
        wake = f"http://wake.test/{name}" if wakes else None
        x.p[name] = (await engine.add_principal(None, name, kind, wake=wake))[0]
    await _script(x)
    return x


@pytest.fixture
async def incident(tmp_path: Path) -> AsyncIterator[Incident]:
    x = await _play(tmp_path / "w.db", wakes=True)
    yield x
    await x.engine.stop()


async def _report(x: Incident, query: Query | None = None) -> dict[str, Any]:
    return await collect(
        StoreSource(x.engine, label="test store"), query or Query(["prod", "routing"], T0, T0 + 900)
    )


async def test_every_section_names_its_rows_with_exact_seconds(incident: Incident) -> None:
    rep = await _report(incident)
    md = to_markdown(rep)
    # holders, including the handoff at 10:00:40 and the revocation at 10:01:00
    holders = [
        (h["resource"], h["holder"], h["from"][11:19], (h["to"] or "-")[11:19] or "-", h["ended"])
        for h in rep["holders"]
    ]
    assert holders == [
        ("prod/db", "perf-agent", "10:00:00", "10:00:12", "released"),
        ("prod/db", "cost-agent", "10:00:13", "10:00:20", "released"),
        ("routing/db-tier", "routing-agent", "10:00:30", "10:00:40", "released"),
        ("prod/db", "perf-agent", "10:00:40", "10:01:00", "revoked"),
        ("prod/cache", "batch-agent", "10:01:40", "-", "held"),
    ]
    # the refusal, with why, and the holder at that moment
    (ref,) = rep["refusals"]
    assert ref["kind"] == "consent_required" and ref["at"][11:19] == "10:00:05"
    assert ref["holder"] == "perf-agent" and "protected until" in ref["reason"]
    # the wait in the queue on the blast radius, and how it ended
    (wait,) = rep["waits"]
    assert (wait["agent"], wait["at"][11:19], wait["outcome"], wait["until"][11:19]) == (
        "perf-agent",
        "10:00:31",
        "granted",
        "10:00:40",
    )
    # consent: asked, granted by the author, used
    (c,) = rep["consents"]
    assert (c["requester"], c["author"], c["status"], c["answered_by"]) == (
        "cost-agent",
        "perf-agent",
        "used",
        "perf-agent",
    )
    assert (c["at"][11:19], c["answered_at"][11:19], c["used_at"][11:19]) == (
        "10:00:06",
        "10:00:10",
        "10:00:13",
    )
    # rollback: asked by an agent, approved by the key-holder queue, executed
    (rb,) = rep["rollbacks"]
    assert (rb["requested_by"], rb["key_holder"], rb["status"], rb["decided_by"]) == (
        "cost-agent",
        "svc-ops-princess",
        "executed",
        "svc-ops-princess",
    )
    assert rb["decided_at"][11:19] == "10:00:55" and "-> 200" in rb["result"]
    # revocation with its provenance
    (rv,) = rep["revocations"]
    assert rv["provenance"]["revoked_by"] == "oncall-jane"
    assert rv["provenance"]["via_runbook"] == "R-44"
    assert rv["provenance"]["after_paging"] == "oncall-jane"
    # stuck lock: woken at 10:11:41, paged at 10:12:42
    steps = [(s["event"], s["at"][11:19]) for s in rep["stuck"] if s["resource"] == "prod/cache"]
    assert ("lease.stuck", "10:11:41") in steps and ("lease.paged", "10:12:42") in steps
    assert any(e.startswith("page.") for e, _ in steps)
    assert [f["event"] for f in rep["freezes"]] == ["freeze.created", "freeze.lifted"]
    # the markdown says all of it, citing rows
    for needle in (
        "## Summary",
        "## Impact window",
        "## Timeline",
        "## Who held write authority when",
        "## Changes made",
        "## What writ refused, and why",
        "## Consents and their answers",
        "## Rollbacks and who approved them",
        "## Stuck locks, wakes and pages",
        "## Revocations (with provenance)",
        "## Contaminated or suspicious rows (lint)",
        "## Chain verification",
        "| 10:00:05 |",
        "consent_required",
        "executed by svc-ops-princess at 10:00:55",
        "| R-44 |",
        "capacity 4→8",
    ):
        assert needle in md, needle
    assert f"[{rb['decision_seq']}]" in md


async def test_chain_of_the_rows_used_is_verified_honestly(incident: Incident) -> None:
    rep = await _report(incident, Query(["prod/db"], T0, T0 + 900))
    v = rep["verification"]
    assert v["ok"] and v["rows_ok"] == v["rows"] > 0
    # a filtered subset: the seq range between its rows was re-verified from the store
    assert v["segment"]["contiguous"] is False and v["segment"]["ok"]
    assert v["segment"]["rows"] == v["last_seq"] - v["first_seq"] + 1
    text = to_markdown(rep)
    assert "re-verified link by link" in text and "Not proven here" in text
    # tamper with a row inside the window: the report says which
    row = next(r for r in rep["timeline"] if r["event"] == "change.recorded")
    c = sqlite3.connect(incident.path, isolation_level=None)
    c.execute("DROP TRIGGER audit_no_update")
    body = c.execute("SELECT body FROM audit WHERE seq = ?", (row["seq"],)).fetchone()[0]
    c.execute(
        "UPDATE audit SET body = ? WHERE seq = ?",
        (body.replace("capacity 4→8", "capacity 4→4"), row["seq"]),
    )
    c.close()
    bad = (await _report(incident, Query(["prod/db"], T0, T0 + 900)))["verification"]
    assert not bad["ok"]
    assert any(b["seq"] == row["seq"] for b in bad["bad"])
    assert f"row {row['seq']}" in bad["segment"]["reason"]


async def test_window_opening_mid_lease_shows_the_holder_from_before(incident: Incident) -> None:
    """A lease granted before --since is still drawn, from its grant, marked as such."""
    rep = await _report(incident, Query(["prod/cache"], T0 + 300, T0 + 900))
    (h,) = rep["holders"]
    assert h["holder"] == "batch-agent" and h["before_window"]
    assert h["from"][11:19] == "10:01:40" and h["to"] is None
    assert "(before window)" in to_markdown(rep)


async def test_around_and_window(incident: Incident) -> None:
    q = Query.around("2026-05-16T10:00:45Z", 5.0, ["prod"])
    rep = await _report(incident, q)
    assert rep["window"]["from"].startswith("2026-05-16T10:00:40")
    assert rep["window"]["to"].startswith("2026-05-16T10:00:50")
    assert rep["timeline"]  # the checks below hold for an empty one too
    assert {r["event"] for r in rep["timeline"]} <= {
        "lease.granted",
        "lease.released",
        "rollback.requested",
    }
    assert all("10:00:40" <= r["at"][11:19] <= "10:00:50" for r in rep["timeline"])


async def test_html_is_self_contained_with_a_drawn_chart(incident: Incident) -> None:
    rep = await _report(incident)
    html = to_html(rep)
    _keep(html)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<script" not in html and not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(https?:|//)", html)
    svg = timeline_svg(rep)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    # one lane per resource, a labelled bar per holder, a legend, marks and an axis
    for lane in ("prod/db", "routing/db-tier", "prod/cache"):
        assert f">{lane}</text>" in svg
    assert svg.count("<rect x=") >= len(rep["holders"])
    for word in (
        "perf-agent",
        "routing-agent",
        "batch-agent",
        "refused",
        "change recorded",
        "revoked",
        "rollback",
        ">10:04</text>",
    ):
        assert word in svg, word
    assert "batch-agent · token" in svg  # a wide bar carries the holder and its token


async def test_json_and_http_source_agree(incident: Incident) -> None:
    """The report from a server (paging GET /v1/audit) equals the offline one."""
    from writ.api.app import create_app
    from writ.client import AsyncClient

    _, token = await incident.engine.add_principal(None, "auditor", "human")
    q = Query(["prod", "routing"], T0, T0 + 900)
    offline = await _report(incident, q)
    app = create_app(incident.engine, start_engine=False)
    async with AsyncClient("http://writ", token, transport=httpx.ASGITransport(app=app)) as client:
        online = await collect(HttpSource(client, label="test store"), q)
    assert json.loads(to_json(online)) == json.loads(to_json(offline))


def _keep(html: str) -> None:
    """WRIT_KEEP_HTML=FILE keeps the page, to look at it in a (headless) browser."""
    if os.environ.get("WRIT_KEEP_HTML"):
        Path(os.environ["WRIT_KEEP_HTML"]).write_text(html)


def test_lint_section_flags_contaminated_rows() -> None:
    """Rows from elsewhere (no lock holder, an agent holding the rollback key) are named."""
    prev, rows = "0" * 64, []
    fields = [
        {
            "event": "lease.granted",
            "agent_id": "perf-agent",
            "resource": "prod/db",
            "lock_holder": "perf-agent",
            "lock_key": "prod/db/1",
            "fencing_token": 1,
            "notes": "granted ls_1 for 'x', ttl 30s, touches *",
        },
        {
            "event": "rollback.requested",
            "agent_id": "cost-agent",
            "resource": "prod/db",
            "lock_holder": "perf-agent",
            "lock_key": "prod/db/1",
            "rollback_allowed": True,
            "rollback_path": "/ops/rollback?txn=1",
            "rollback_key_holder": "agent-autocleanup-7",
            "human_override_queue": "svc-ops-princess",
            "notes": "x",
        },
    ]
    for i, f in enumerate(fields, start=1):
        s = seal(i, prev, T0 + i, f)
        rows.append(s.row())
        prev = s.hash
    rows[0]["lock_holder"] = ""  # contaminated evidence (and no longer matches its hash)
    rep = build(
        rows,
        Query(),
        kinds={"svc-ops-princess": "queue", "perf-agent": "agent", "cost-agent": "agent"},
    )
    flagged = {f["seq"]: f["verdict"] for f in rep["lint"]["rows"]}
    assert flagged == {1: "contaminated", 2: "suspicious"}
    assert rep["lint"]["rows"][0]["verdict"] == "contaminated"  # worst first
    md = to_markdown(rep)
    assert "contaminated" in md and "agent-autocleanup-7" in md


def test_cli_writes_each_format(tmp_path: Path, incident_db: Path) -> None:
    url = f"sqlite:///{incident_db}"
    r = CliRunner()
    for fmt, head in (("md", "# "), ("html", "<!doctype html>"), ("json", "{")):
        out = tmp_path / f"pm.{fmt}"
        res = r.invoke(
            main,
            [
                "postmortem",
                "--store",
                url,
                "--resource",
                "prod",
                "--since",
                "2026-05-16T10:00:00Z",
                "--until",
                "2026-05-16T10:15:00Z",
                "--out",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        assert out.read_text().startswith(head)
        assert ", 1 refusal, " in res.output  # (one: no plural)
    res = r.invoke(
        main, ["postmortem", "--store", url, "--around", "2026-05-16T10:00:05Z", "--window", "10s"]
    )
    assert res.exit_code == 0 and "| 10:00:05 |" in res.output
    res = r.invoke(main, ["postmortem", "--store", url, "--around", "x", "--since", "y"])
    assert res.exit_code == 2
    res = r.invoke(main, ["postmortem", "--store", f"sqlite:///{tmp_path}/nope.db"])
    assert res.exit_code == 1 and "no store" in res.output


@pytest.fixture
def incident_db(tmp_path: Path) -> Path:
    """The scripted incident's store file, closed (for the CLI)."""

    async def make() -> Path:
        x = await _play(tmp_path / "incident.db", wakes=False)
        await x.engine.stop()
        return x.path

    return asyncio.run(make())


async def test_reads_by_index_never_a_full_scan(incident: Incident) -> None:
    """Every audit query the report makes searches an index (resource or time)."""
    store = incident.engine.store
    assert isinstance(store, SQLiteStore) and store._r is not None
    seen: list[str] = []
    store._r.set_trace_callback(seen.append)
    try:
        await _report(incident, Query(["prod/db"], T0, T0 + 900))
        await _report(incident, Query(["prod"]))
        await _report(incident, Query([], T0, T0 + 60))
    finally:
        store._r.set_trace_callback(None)
    c = sqlite3.connect(incident.path)
    checked = 0
    for sql in seen:
        if "FROM audit" in sql and "seq >" in sql and "LIMIT" in sql:
            plan = " | ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN audit" not in plan, (sql, plan)
            assert "INDEX" in plan, (sql, plan)
            checked += 1
    c.close()
    assert checked >= 3


async def test_report_on_every_backend(make_engine: Any) -> None:
    """The same story reads the same from SQLite and PostgreSQL (indexed reads, probes)."""
    e = await make_engine(SEED_POLICY)
    p = {
        n: (await e.add_principal(None, n, k))[0]
        for n, k in (("perf-agent", "agent"), ("cost-agent", "agent"))
    }
    lease = await e.acquire(
        p["perf-agent"],
        resource="prod/db",
        intent="double capacity",
        touches=["capacity"],
        ttl_s=300,
    )
    await e.consents.record_change(p["perf-agent"], lease["lease_id"], "capacity", "4→8")
    with pytest.raises(ConsentRequired):
        await e.acquire(
            p["cost-agent"], resource="prod/db", intent="consolidate", touches=["capacity"]
        )
    await e.release(p["perf-agent"], lease["lease_id"])
    rep = await collect(StoreSource(e), Query(["prod"]))
    assert [(h["holder"], h["ended"]) for h in rep["holders"]] == [("perf-agent", "released")]
    assert [r["kind"] for r in rep["refusals"]] == ["consent_required"]
    assert rep["refusals"][0]["holder"] == "perf-agent"
    assert rep["changes"][0]["summary"] == "4→8"
    assert rep["verification"]["ok"] and rep["verification"]["segment"]["ok"]
    since = parse_time(rep["window"]["from"])
    again = await collect(StoreSource(e), Query(["prod/db"], since, since + 3600))
    assert again["holders"][0]["lock_key"] == rep["holders"][0]["lock_key"]


def test_cli_reads_a_server(tmp_path: Path) -> None:
    """`writ postmortem --url --token` pages GET /v1/audit of a running server."""
    from tests.server_fixtures import serve

    with serve(tmp_path / "w.db") as srv:
        name, token = srv.principal("agent")
        with srv.client(token) as c:
            lease = c.acquire("prod/db", "double capacity", ttl_s=60)
            c.release(lease["lease_id"])
        res = CliRunner().invoke(
            main, ["postmortem", "--resource", "prod", "--format", "json"], env=srv.env()
        )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert [(h["holder"], h["ended"]) for h in rep["holders"]] == [(name, "released")]
    assert rep["lint"]["registry"] is True and rep["verification"]["ok"]


async def test_a_lease_that_expired_while_others_waited_shows_once(
    make_engine: Any, backend: Any
) -> None:
    """The lease.stuck row written after an expiry with waiters does not reopen the expired
    lease: it shows once (ended at its expiry), the summary counts two holders, and the
    report agrees with `who` that nobody but the successor holds it."""
    e = await make_engine()
    a = (await e.add_principal(None, "exp-a", "agent"))[0]
    b = (await e.add_principal(None, "exp-b", "agent"))[0]
    first = await e.acquire(a, resource="exp/db", intent="first", ttl_s=2)
    waiter = asyncio.create_task(e.acquire(b, resource="exp/db", intent="second", wait_s=60))
    after, queued = 0, False
    while not queued:  # the long poll answers with the waiter's lease.queued row
        got = await e.events("exp", after, wait_s=10)
        queued = "lease.queued" in [r["event"] for r in got["rows"]]
        after = got["next_after_seq"]
    await backend.advance(3)
    await e.sweep()
    second = await asyncio.wait_for(waiter, 30)
    rep = await collect(StoreSource(e), Query(["exp"]))
    assert "lease.stuck" in [r["event"] for r in rep["timeline"]]  # the row that reopened it
    got = [(h["holder"], h["lock_key"], h["ended"]) for h in rep["holders"]]
    assert got == [
        ("exp-a", first["lock_key"], "expired"),
        ("exp-b", second["lock_key"], "held"),
    ]
    md = to_markdown(rep)
    assert "granted or held 2 times" in md
    held = md.split("## Who held write authority when")[1].split("\n## ")[0]
    assert [line for line in held.splitlines() if "still held" in line] == [
        line for line in held.splitlines() if "exp-b" in line
    ]
    assert held.count(first["lock_key"]) == 1
