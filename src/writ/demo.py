"""``writ demo``: 02:17, replayed twice on a simulated clock.

The seed's incident: a DB latency alert at 02:17; a perf-agent doubles capacity, a cost-agent
sees overprovisioning and consolidates, a routing-agent reroutes traffic through the DB tier;
by 02:19 the DB is down. Every decision was correct on its own.

Both runs use the same three agents and the same simulated database (:class:`SimDB`: capacity
in instances, load in requests per second, p99 latency from utilisation, and a failure
threshold: above 100% utilisation for 40 s, it falls over).

* **Run 1, uncoordinated.** All three act on what they see. The consolidation and the reroute
  land together, the DB runs at 155% and goes down at 02:19:00.
* **Run 2, through writ** — the real engine, an embedded SQLite store in a temp folder, driven
  over the HTTP protocol in-process on a :class:`~writ.core.clock.ManualClock`, with the seed's
  policy (blast radius ``db-tier = prod/db, routing/db-tier, capacity/db``). perf holds
  ``prod/db`` and records capacity 4→8; cost's consolidation is refused (``consent_required``),
  it asks, perf does not answer, the request expires (not a denial) and escalates to
  ``svc-ops-princess``, who denies it; routing waits in the queue on the blast radius and
  reroutes only once perf is done. The DB stays up.

**Closed mode** (``writ demo --mode closed``): run 2 under the same policy plus
:data:`CLOSED_POLICY`, an ``[authority]`` section in ``closed`` mode. cost-agent may observe
``prod/db`` but write only ``capacity``: its consolidation is refused 403 ``forbidden`` — not
its authority — before consent is even asked, so nobody has to answer a consent at all.

The demo prints both timelines side by side and writes the run-2 postmortem (Markdown and
HTML) before it exits. It is deterministic: the clock is fixed (2026-05-16T02:17:00Z) and,
for the demo only, ids are drawn from a counter instead of :func:`secrets.token_urlsafe`, so
the ledger, its hashes and the postmortem are the same bytes on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from writ.core.clock import ManualClock, parse_time, rfc3339

__all__ = ["START", "SimDB", "run", "run_demo"]

START = parse_time("2026-05-16T02:17:00Z")
END = 240  # seconds of simulated time
TICK = 10
ALERT_MS = 250.0
POLICY = """
default_override_queue = "svc-ops-princess"

[blast_radius]
db-tier = ["prod/db", "routing/db-tier", "capacity/db"]

[[rules]]
prefix = "prod"
protect_s = 900
max_hold_s = 600
page_after_s = 60
lock_delay_s = 5
consent_timeout_s = 120
"""
# The 02:17 policy in closed mode (appended to POLICY): who may ever be a writer on what.
CLOSED_POLICY = """
[authority]
mode = "closed"

[[authority.grant]]           # perf-agent owns prod-write, period
principals = ["perf-agent"]
write = ["prod/db"]
observe = ["prod", "routing", "capacity"]
attributes = ["capacity"]

[[authority.grant]]           # cost-agent watches the DB; it writes capacity plans only
principals = ["cost-agent"]
write = ["capacity"]
observe = ["prod/db"]
attributes = ["capacity"]

[[authority.grant]]
principals = ["routing-agent"]
write = ["routing"]
observe = ["prod", "routing"]
attributes = ["routing"]
"""
MODES = ("open", "closed")
AGENTS = {  # name: (kind, vendor, wake route)
    "perf-agent": ("agent", "vendor-a", "https://perf-agent.vendor-a.example/wake"),
    "cost-agent": ("agent", "vendor-b", "https://cost-agent.vendor-b.example/wake"),
    "routing-agent": ("agent", "vendor-c", "https://routing-agent.vendor-c.example/wake"),
    "svc-ops-princess": ("queue", None, "https://oncall.example/page/svc-ops-princess"),
}
ROLLBACK = {
    "allowed": True,
    "path": "/internal/db/capacity/rollback?to=4",
    "key_holder": "svc-ops-princess",
    "override_queue": "svc-ops-princess",
    "denominator": "incident_minutes",
}


# ----------------------------------------------------------------------------- the DB
@dataclass
class SimDB:
    """A deterministic toy database: instances, load, p99 latency and a failure threshold."""

    instances: int = 4
    rps_per_instance: float = 100.0
    base_rps: float = 380.0
    rerouted_rps: float = 0.0
    fail_after_s: float = 40.0
    over_since: float | None = None
    down_at: float | None = None
    pending: list[tuple[float, str, float]] = field(default_factory=list)

    @property
    def load(self) -> float:
        return self.base_rps + self.rerouted_rps

    @property
    def utilization(self) -> float:
        return self.load / (self.instances * self.rps_per_instance)

    @property
    def p99_ms(self) -> float | None:
        if self.down_at is not None:
            return None
        u = self.utilization
        return 20.0 / (1.0 - u) if u < 0.99 else 2000.0

    def later(self, at: float, attr: str, value: float) -> None:
        """A change that takes effect at ``at`` (draining, route propagation)."""
        self.pending.append((at, attr, value))

    def advance(self, now: float) -> list[str]:
        """Apply due changes, then check the failure threshold; returns what happened."""
        out: list[str] = []
        for item in sorted(p for p in self.pending if p[0] <= now):
            self.pending.remove(item)
            _, attr, value = item
            if attr == "instances":
                self.instances = int(value)
                out.append(f"consolidation done: {self.instances} instances")
            else:
                self.rerouted_rps = value
                out.append(f"reroute live: {self.load:.0f} rps")
        if self.down_at is None:
            if self.utilization > 1.0:
                self.over_since = now if self.over_since is None else self.over_since
                if now - self.over_since >= self.fail_after_s:
                    self.down_at = now
                    out.append(
                        f"DB DOWN: {self.utilization:.0%} of capacity for "
                        f"{now - self.over_since:.0f} s"
                    )
            else:
                self.over_since = None
        return out

    def state(self) -> str:
        if self.down_at is not None:
            return "DOWN"
        p99 = self.p99_ms or 0.0
        return f"{self.instances}× {self.load:.0f}rps " + (
            f"{p99:.0f}ms" if self.utilization < 0.99 else ">2s"
        )


def hms(offset: float) -> str:
    return (rfc3339(START + offset) or "")[11:19]


@dataclass
class Run:
    name: str
    db: SimDB = field(default_factory=SimDB)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, text, db)

    def log(self, t: float, text: str) -> None:
        self.events.append((t, text, self.db.state()))


# ----------------------------------------------------------------------------- run 1
def run_uncoordinated() -> Run:
    """All three agents act on what they see; nothing serialises them."""
    run = Run("without writ")
    db = run.db
    for t in range(0, END + 1, TICK):
        for line in db.advance(t):
            run.log(t, line)
        if t == 0:
            run.log(t, f"ALERT: DB p99 {db.p99_ms:.0f} ms > {ALERT_MS:.0f} ms")
        elif t == 10:
            db.instances *= 2
            run.log(t, "perf-agent doubles capacity 4→8")
        elif t == 30 and (db.p99_ms or 1e9) < 100:
            db.later(t + 50, "rerouted_rps", 240)
            run.log(
                t,
                f"routing-agent sees p99 {db.p99_ms:.0f} ms: reroutes cache misses via "
                "the DB tier (+240 rps in 50 s)",
            )
        elif t == 40 and db.utilization < 0.5:
            target = math.ceil(db.load / (0.95 * db.rps_per_instance))
            db.later(t + 30, "instances", target)
            run.log(
                t,
                f"cost-agent sees {db.utilization:.0%} use: consolidates "
                f"{db.instances}→{target} (drains in 30 s)",
            )
        if db.down_at is not None:
            break
    return run


# ----------------------------------------------------------------------------- run 2
@contextlib.contextmanager
def counter_ids() -> Iterator[None]:
    """Make writ's random ids a counter for the demo (restored afterwards)."""
    n = [0]

    def new_id(prefix: str) -> str:
        n[0] += 1
        return f"{prefix}_demo{n[0]:04d}"

    mods = [
        importlib.import_module(f"writ.{m}")
        for m in (
            "core.models",
            "engine.kernel",
            "engine.queue",
            "rules.consent",
            "rules.rollbacks",
            "rules.freezes",
        )
    ]
    saved = [(m, m.new_id) for m in mods if hasattr(m, "new_id")]
    for m, _ in saved:
        m.new_id = new_id  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, fn in saved:
            m.new_id = fn  # type: ignore[attr-defined]


class World:
    """The engine behind the in-process HTTP app, and the three agents' tokens."""

    def __init__(self, engine: Any, http: httpx.AsyncClient, clock: ManualClock) -> None:
        self.engine, self.http, self.clock = engine, http, clock
        self.tokens: dict[str, str] = {}
        self.calls: list[tuple[float, str, dict[str, Any]]] = []

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(
            path, json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )

    def on_call(self, request: httpx.Request) -> httpx.Response:
        """writ's outbound wake and page calls land here (the agents' and queue's routes)."""
        self.calls.append((self.clock.t - START, str(request.url), json.loads(request.content)))
        return httpx.Response(200)


async def run_through_writ(workdir: Path, mode: str = "open") -> tuple[Run, str]:
    """Run 2: the same agents, each asking writ first. Returns the run and the engine's
    store URL (the store is closed). ``mode`` "closed" adds :data:`CLOSED_POLICY`."""
    from writ.api.app import create_app
    from writ.core.policy import parse
    from writ.engine import Engine
    from writ.stores.sqlite import SQLiteStore

    run = Run("through writ" if mode == "open" else "through writ, closed mode")
    db = run.db
    clock = ManualClock(START)
    url = f"sqlite:///{workdir / 'writ-demo.db'}"
    text = POLICY + (CLOSED_POLICY if mode == "closed" else "")
    engine = Engine(SQLiteStore(url, clock=clock), parse(text, "demo-policy.toml"))
    app = create_app(engine, start_engine=False)
    await engine.start(background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as http:
            w = World(engine, http, clock)
            engine.caller.transport = httpx.MockTransport(w.on_call)
            for name, (kind, vendor, wake) in AGENTS.items():
                _, token = await engine.add_principal(None, name, kind, vendor=vendor, wake=wake)
                w.tokens[name] = token
            await _script(w, run, db, mode)
    finally:
        await engine.stop()
    return run, url


@dataclass
class _Story:
    """What the scripted story carries from one step to the next."""

    perf_lease: dict[str, Any] = field(default_factory=dict)
    routing: asyncio.Task[httpx.Response] | None = None
    routing_lease: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    seen_calls: int = 0


async def _script(w: World, run: Run, db: SimDB, mode: str = "open") -> None:
    story = _Story()
    for t in range(0, END + 1, TICK):
        await _advance_clock(w, run, db, t)
        if t == 0:
            run.log(t, f"ALERT: DB p99 {db.p99_ms:.0f} ms > {ALERT_MS:.0f} ms")
        elif t == 10:
            await _perf_doubles_capacity(w, run, db, t, story)
        elif t == 30:
            await _routing_queues_behind_perf(w, run, t, story)
        elif t == 40:
            await _cost_asks_to_consolidate(w, run, db, t, story, mode)
        elif t == 100:
            await _perf_releases_routing_reroutes(w, run, db, t, story)
        elif t == 150:
            await _routing_releases(w, run, t, story)
        elif t == 180 and story.consent:
            await _on_call_denies_consolidation(w, run, t, story)
        await w.engine.caller.drain()  # outbound calls of this step land in this step
        _log_outbound_calls(w, run, story)
    if db.down_at is None:
        run.log(END, f"DB up: {db.state()}")


async def _advance_clock(w: World, run: Run, db: SimDB, t: int) -> None:
    """Move the clock to ``t``: writ's sweep and outbound calls, then the DB's own events."""
    w.clock.t = START + t
    await w.engine.sweep()  # expiries, consent timeouts, stuck locks
    await w.engine.caller.drain()
    for line in db.advance(t):
        run.log(t, line)


async def _perf_doubles_capacity(w: World, run: Run, db: SimDB, t: int, story: _Story) -> None:
    """02:17:10: perf-agent takes prod/db and records capacity 4→8."""
    r = await w.post(
        "perf-agent",
        "/v1/leases",
        {
            "resource": "prod/db",
            "intent": "double capacity: p99 over the alert",
            "ttl_s": 120,
            "touches": ["capacity"],
            "rollback": ROLLBACK,
        },
    )
    story.perf_lease = perf_lease = _ok(r, 201)
    _ok(
        await w.post(
            "perf-agent",
            f"/v1/leases/{perf_lease['lease_id']}/changes",
            {
                "attribute": "capacity",
                "summary": "capacity 4→8",
                "before": 4,
                "after": 8,
                "fencing_token": perf_lease["fencing_token"],
            },
        ),
        201,
    )
    db.instances = 8
    run.log(
        t,
        f"perf-agent holds prod/db (token {perf_lease['fencing_token']}), doubles capacity 4→8",
    )


async def _routing_queues_behind_perf(w: World, run: Run, t: int, story: _Story) -> None:
    """02:17:30: routing-agent asks for routing/db-tier and waits in the queue."""
    seen = (await w.engine.audit(0, 10_000))["next_after_seq"]
    story.routing = asyncio.ensure_future(
        w.post(
            "routing-agent",
            "/v1/leases",
            {
                "resource": "routing/db-tier",
                "intent": "reroute cache misses via the DB tier",
                "ttl_s": 120,
                "wait_s": 120,
                "touches": ["routing"],
            },
        )
    )
    await w.engine.events("routing/db-tier", seen, wait_s=5)  # its lease.queued row
    run.log(
        t,
        "routing-agent asks for routing/db-tier: QUEUED behind perf-agent (blast radius db-tier)",
    )


async def _cost_asks_to_consolidate(
    w: World, run: Run, db: SimDB, t: int, story: _Story, mode: str
) -> None:
    """02:17:40: cost-agent is refused; in open mode it then asks perf-agent's consent."""
    r = await w.post(
        "cost-agent",
        "/v1/leases",
        {
            "resource": "prod/db",
            "intent": "consolidate instances: overprovisioned",
            "ttl_s": 60,
            "touches": ["capacity"],
        },
    )
    err = r.json()["error"]
    if mode == "closed":
        run.log(
            t,
            f"cost-agent asks to consolidate 8→4: REFUSED {err['code']}: not its "
            f"authority ({err['rule']}: observe prod/db, write "
            f"{', '.join(err['may']['write'])}); no consent asked",
        )
        return
    run.log(
        t,
        f"cost-agent asks to consolidate 8→4: REFUSED {err['code']} "
        f"(perf-agent's change, protected until {err['protected_until'][11:19]})",
    )
    r = await w.post(
        "cost-agent",
        "/v1/consents",
        {
            "change_id": err["change"]["change_id"],
            "reason": f"8 instances at {db.utilization:.0%}: overprovisioned",
        },
    )
    story.consent = _ok(r, 201)
    run.log(t, "cost-agent asks perf-agent's consent; writ wakes perf-agent")


async def _perf_releases_routing_reroutes(
    w: World, run: Run, db: SimDB, t: int, story: _Story
) -> None:
    """02:18:40: perf-agent releases; routing-agent is granted, re-checks and reroutes."""
    _ok(await w.post("perf-agent", f"/v1/leases/{story.perf_lease['lease_id']}/release"), 200)
    assert story.routing is not None
    story.routing_lease = routing_lease = _ok(await story.routing, 201)
    run.log(
        t,
        "perf-agent releases prod/db; routing-agent GRANTED "
        f"(token {routing_lease['fencing_token']})",
    )
    db.later(t + 50, "rerouted_rps", 240)
    _ok(
        await w.post(
            "routing-agent",
            f"/v1/leases/{routing_lease['lease_id']}/changes",
            {
                "attribute": "routing",
                "summary": "cache-miss reads via the DB tier, +240 rps",
                "fencing_token": routing_lease["fencing_token"],
            },
        ),
        201,
    )
    run.log(
        t,
        f"routing-agent re-checks ({db.instances}×, {db.p99_ms:.0f} ms), reroutes "
        "(+240 rps in 50 s)",
    )


async def _routing_releases(w: World, run: Run, t: int, story: _Story) -> None:
    """02:19:30: routing-agent releases routing/db-tier."""
    _ok(
        await w.post("routing-agent", f"/v1/leases/{story.routing_lease['lease_id']}/release"),
        200,
    )
    run.log(t, "routing-agent releases routing/db-tier")


async def _on_call_denies_consolidation(w: World, run: Run, t: int, story: _Story) -> None:
    """02:20:00: the on-call human denies cost-agent's pending consent."""
    r = await w.post("svc-ops-princess", f"/v1/consents/{story.consent['consent_id']}/deny")
    _ok(r, 200)
    run.log(
        t,
        "svc-ops-princess (on call) DENIES the consolidation: not during an open incident",
    )


def _log_outbound_calls(w: World, run: Run, story: _Story) -> None:
    """Log the wake and page calls writ made since the last step (consent wakes are told
    with the request that caused them)."""
    for at, route, payload in w.calls[story.seen_calls :]:
        who = str(payload.get("to"))
        why = str(payload.get("reason"))
        if "consent unanswered" in why:
            run.log(at, f"consent EXPIRED unanswered (not a denial); writ pages {who}")
        elif route.endswith("/wake") and "consent" in why:
            continue  # told with the request above
        else:
            run.log(at, f"writ calls {who}: {why}")
    story.seen_calls = len(w.calls)


def _ok(r: httpx.Response, status: int) -> dict[str, Any]:
    if r.status_code != status:
        raise RuntimeError(
            f"demo step failed: {r.request.method} {r.request.url.path} -> {r.status_code} {r.text}"
        )
    out: dict[str, Any] = r.json()
    return out


# ----------------------------------------------------------------------------- output
@dataclass
class Result:
    uncoordinated: Run
    coordinated: Run
    files: list[Path]
    rows: int
    head: str
    verified: bool


async def run_demo(out_dir: str | Path = "writ-demo", mode: str = "open") -> Result:
    """Both runs; writes the run-2 postmortem into ``out_dir``."""
    from writ.engine import Engine
    from writ.evidence.postmortem import Query, StoreSource, collect, to_html, to_markdown
    from writ.stores.sqlite import SQLiteStore

    run1 = run_uncoordinated()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="writ-demo-") as tmp, counter_ids():
        run2, url = await run_through_writ(Path(tmp), mode)
        engine = Engine(SQLiteStore(url, clock=ManualClock(START + END)))
        await engine.start(background=False)
        try:
            v = await engine.verify()
            report = await collect(
                StoreSource(engine, label="the demo's embedded SQLite store"),
                Query(
                    ["prod", "routing", "capacity"],
                    START,
                    START + END,
                    title="02:17 DB latency incident — prod/db and its blast radius",
                ),
            )
        finally:
            await engine.stop()
    md, html = out / "postmortem.md", out / "postmortem.html"
    _write(out, {md: to_markdown(report), html: to_html(report)})
    return Result(run1, run2, [md, html], v.rows, v.head, v.ok)


def _write(folder: Path, files: dict[Path, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")


def render(result: Result, console: Any) -> None:
    """Print both timelines (side by side when the console is wide enough, else one after
    the other), then the outcome and the files written."""
    from rich.text import Text

    console.print(
        Text("writ demo — 02:17, replayed on a simulated clock (2026-05-16, UTC)", style="bold")
    )
    console.print(
        "Three agents from three vendors, one database. Same agents, same DB model, twice.\n"
    )
    a = _by_time(result.uncoordinated.events)
    b = _by_time(result.coordinated.events)
    titles = ["run 1: without writ", f"run 2: {result.coordinated.name}"]
    if console.width >= SIDE_BY_SIDE:
        console.print(_timeline_table([a, b], titles))
    else:  # too narrow for two timelines: one after the other, names never cut
        for title, events in zip(titles, (a, b), strict=True):
            console.print(_timeline_table([events], [title]))
    one, two = result.uncoordinated.db, result.coordinated.db
    if one.down_at is not None:
        console.print(
            Text(
                f"Without writ: the DB went down at {hms(one.down_at)}. Every "
                "decision was correct on its own.",
                style="bold red",
            )
        )
    if two.down_at is None:
        console.print(
            Text(
                f"With writ:    the DB stayed up: {two.state()} at {hms(END)}.", style="bold green"
            )
        )
    console.print(
        f"Audit ledger: {result.rows} rows, hash chain "
        f"{'verified' if result.verified else 'BROKEN'}, head {result.head[:16]}…"
    )
    console.print("Postmortem written before the demo exited:")
    for path in result.files:  # one a line, never broken (soft_wrap), to be copied whole
        console.print(f"  {path}", soft_wrap=True, highlight=False)


SIDE_BY_SIDE = 130  # columns from which both timelines are printed side by side


def _timeline_table(runs: list[dict[float, list[tuple[str, str]]]], titles: list[str]) -> Any:
    """One table: UTC, then each run's steps and DB state (shown only when it changes)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("UTC", style="dim", no_wrap=True)
    for title in titles:
        table.add_column(title, ratio=1, overflow="fold")
        table.add_column("DB", no_wrap=True, min_width=15)
    shown = [""] * len(runs)  # the DB state each run last showed
    for t in sorted(set().union(*runs)):
        sides = [run.get(t, []) for run in runs]
        for i in range(max(len(side) for side in sides)):
            cells: list[Any] = [hms(t) if i == 0 else ""]
            for k, side in enumerate(sides):
                text, state = side[i] if i < len(side) else ("", "")
                cells += [_style(text), _db(state if state != shown[k] else "")]
                shown[k] = state or shown[k]
            if any(cells[1:]):
                table.add_row(*cells)
    return table


def _by_time(events: list[tuple[float, str, str]]) -> dict[float, list[tuple[str, str]]]:
    out: dict[float, list[tuple[str, str]]] = {}
    for t, text, db in events:
        out.setdefault(t, []).append((text, db))
    return out


def _style(text: str) -> Any:
    from rich.text import Text

    if not text:
        return ""
    for word, style in (
        ("DOWN", "bold red"),
        ("REFUSED", "red"),
        ("ALERT", "yellow"),
        ("EXPIRED", "yellow"),
        ("DENIES", "magenta"),
        ("DB up", "bold green"),
        ("QUEUED", "cyan"),
        ("GRANTED", "green"),
    ):
        if word in text:
            return Text(text, style=style)
    return Text(text)


def _db(state: str) -> Any:
    from rich.text import Text

    if not state:
        return ""
    return Text(state, style="bold red" if state == "DOWN" else "")


def run(out_dir: str | Path = "writ-demo", console: Any = None, mode: str = "open") -> Result:
    """``writ demo``: run both, print, write the postmortem; returns the result. ``mode``
    "closed" runs run 2 with ``[authority]`` in closed mode (:data:`CLOSED_POLICY`)."""
    from rich.console import Console

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    result = asyncio.run(run_demo(out_dir, mode))
    render(result, console or Console())
    return result
