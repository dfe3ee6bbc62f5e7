"""The one loader: N asyncio clients in this process, each looping acquire → release on its
resource for a fixed window, timed with one clock (``time.perf_counter``).

Per pair it records: ``t0`` (acquire sent), ``t1`` (grant received; the release is sent at
once), ``t2`` (release answered), the fencing token (writ) and the attempts (spin-retries).
From these:

* pairs/s — pairs whose release was answered inside the measured window (after a warm-up);
* p50/p99 of the pair (``t2 - t0``);
* contended only: the handoff — release sent by one holder → grant received by the next
  (``t1[k] - t1[k-1]`` over grants sorted by ``t1``) — and arrival order: a grant *overtook*
  when a request sent earlier (smaller ``t0``) was granted later. For writ the audit ledger
  is checked as well: every grant out of the queue must go to the head of the queue, in
  the order the server wrote the ``lease.queued`` rows, with strictly increasing tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

from bench.peers import Peer, Writ, cpu_seconds, machine_cpu


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int
    contended: bool = False

    def resource(self, i: int, tag: str) -> str:
        return f"bench/{tag}/one" if self.contended else f"bench/{tag}/r{i}"


SCENARIOS = [
    Scenario("c1", "1 client", 1),
    Scenario("d16", "16 clients, distinct resources", 16),
    Scenario("one16", "16 clients, one resource", 16, contended=True),
    Scenario("d256", "256 clients, distinct resources", 256),
]


def pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


async def run_scenario(
    peer: Peer, sc: Scenario, duration: float, warmup: float, conns: int, tag: str
) -> dict[str, Any]:
    """Run one scenario against a started peer; return its figures."""
    await peer.open(sc.clients, min(conns, sc.clients))
    samples: list[tuple[int, float, float, float, int | None, int]] = []
    errors: list[str] = []
    loop_start = time.perf_counter()
    t_from = loop_start + warmup
    t_end = t_from + duration

    async def worker(i: int) -> None:
        res = sc.resource(i, tag)
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                g = await peer.acquire(i, res, sc.contended)
                t1 = time.perf_counter()
                await peer.release(i, g)
                t2 = time.perf_counter()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.01)
                continue
            samples.append((i, t0, t1, t2, g.token, g.attempts))

    cpu: dict[str, float] = {}
    server: dict[str, float | None] = {}  # None: no server process of its own to meter

    async def meter() -> None:
        await asyncio.sleep(max(0.0, t_from - time.perf_counter()))
        cpu["loader0"], server["cpu0"] = time.process_time(), cpu_seconds(peer.server_pids())
        server["db0"] = cpu_seconds(peer.db_pids())
        cpu["machine0"], cpu["steal0"] = machine_cpu()
        cpu["wall0"] = time.perf_counter()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu["loader1"], server["cpu1"] = time.process_time(), cpu_seconds(peer.server_pids())
        server["db1"] = cpu_seconds(peer.db_pids())
        cpu["machine1"], cpu["steal1"] = machine_cpu()
        cpu["wall1"] = time.perf_counter()

    m = asyncio.ensure_future(meter())
    tasks = [asyncio.ensure_future(worker(i)) for i in range(sc.clients)]
    _done, pending = await asyncio.wait(tasks, timeout=duration + warmup + 120)
    for t in pending:
        t.cancel()
    await m
    if pending:
        errors.append(f"{len(pending)} client(s) still stuck 120s after the window; cancelled")

    window = [s for s in samples if t_from <= s[3] <= t_end]
    lat = sorted(s[3] - s[1] for s in window)
    acq = sorted(s[2] - s[1] for s in window)
    wall = cpu["wall1"] - cpu["wall0"]
    server0, server1 = server["cpu0"], server["cpu1"]
    out: dict[str, Any] = {
        "scenario": sc.key,
        "title": sc.title,
        "clients": sc.clients,
        "connections": min(conns, sc.clients),
        "duration_s": round(wall, 3),
        "pairs": len(window),
        "pairs_per_s": round(len(window) / wall, 1) if wall > 0 else None,
        "pair_p50_ms": _ms(pct(lat, 0.50)),
        "pair_p99_ms": _ms(pct(lat, 0.99)),
        "pair_mean_ms": _ms(sum(lat) / len(lat)) if lat else None,
        "acquire_p50_ms": _ms(pct(acq, 0.50)),
        "acquire_p99_ms": _ms(pct(acq, 0.99)),
        "attempts_per_grant": round(sum(s[5] for s in window) / len(window), 2) if window else None,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "loader_cpu": round((cpu["loader1"] - cpu["loader0"]) / wall, 2) if wall > 0 else None,
        "server_cpu": (
            round((server1 - server0) / wall, 2)
            if wall > 0 and server0 is not None and server1 is not None
            else None
        ),
    }
    db0, db1 = server["db0"], server["db1"]
    # the database the server stands on (writ-postgres: PostgreSQL's processes), or None
    out["db_cpu"] = (
        round((db1 - db0) / wall, 2) if wall > 0 and db0 is not None and db1 is not None else None
    )
    if out["server_cpu"] is not None and out["pairs_per_s"]:
        out["server_cpu_ms_per_pair"] = round(1000 * out["server_cpu"] / out["pairs_per_s"], 3)
    if out["db_cpu"] is not None and out["pairs_per_s"]:
        out["db_cpu_ms_per_pair"] = round(1000 * out["db_cpu"] / out["pairs_per_s"], 3)
    # drift inside the window: first vs last quarter (a store that slows as history grows)
    q = (t_end - t_from) / 4
    if q > 0:
        first = sum(1 for s in window if s[3] < t_from + q)
        last = sum(1 for s in window if s[3] >= t_end - q)
        out["pairs_per_s_first_quarter"] = round(first / q, 1)
        out["pairs_per_s_last_quarter"] = round(last / q, 1)
    # everything else the machine did meanwhile (other processes; steal = the hypervisor's)
    if wall > 0:
        busy = (cpu["machine1"] - cpu["machine0"]) / wall
        own = (out["loader_cpu"] or 0) + (out["server_cpu"] or 0) + (out["db_cpu"] or 0)
        out["other_cpu"] = round(max(0.0, busy - own), 2)
        out["steal_cpu"] = round((cpu["steal1"] - cpu["steal0"]) / wall, 2)
    if sc.contended:
        out.update(order_figures(samples, t_from, t_end))
        if isinstance(peer, Writ):
            rows = await peer.audit(sc.resource(0, tag))
            out["writ_audit"] = audit_order(rows)
    return out


def order_figures(
    samples: list[tuple[int, float, float, float, int | None, int]], t_from: float, t_end: float
) -> dict[str, Any]:
    """Handoff latency and arrival order, by the loader's clock, over grants in the window."""
    grants = sorted(samples, key=lambda s: s[2])
    # handoff: the previous holder sent its release at its t1 (at once after its grant)
    hand = sorted(b[2] - a[2] for a, b in itertools.pairwise(grants) if t_from <= b[2] <= t_end)
    # overtakes: a grant whose request was sent after one still waiting (granted later)
    n = len(grants)
    suffix_min = [float("inf")] * (n + 1)
    for k in range(n - 1, -1, -1):
        suffix_min[k] = min(suffix_min[k + 1], grants[k][1])
    counted = over = 0
    worst_wait = 0.0
    for k, g in enumerate(grants):
        if not t_from <= g[2] <= t_end:
            continue
        counted += 1
        worst_wait = max(worst_wait, g[2] - g[1])
        if suffix_min[k + 1] < g[1]:
            over += 1
    return {
        "handoff_p50_ms": _ms(pct(hand, 0.50)),
        "handoff_p99_ms": _ms(pct(hand, 0.99)),
        "grants": counted,
        "overtaking_grants": over,
        "in_arrival_order_pct": round(100 * (1 - over / counted), 2) if counted else None,
        "longest_wait_ms": _ms(worst_wait),
    }


def audit_order(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Check writ's own record: grants out of the queue go to its head, in queue order, and
    fencing tokens rise strictly with the ledger's sequence."""
    queue: list[str] = []
    grants = from_queue = out_of_order = jumped_queue = denied = 0
    last_token = 0
    token_ok = True
    for r in rows:
        ev = r["event"]
        if ev == "lease.queued":
            queue.append(r["agent_id"])
        elif ev == "lease.granted":
            grants += 1
            tok = r.get("fencing_token") or 0
            if tok <= last_token:
                token_ok = False
            last_token = tok
            who = r["agent_id"]
            if who in queue:
                from_queue += 1
                if queue[0] != who:
                    out_of_order += 1
                queue.remove(who)
            elif queue:
                jumped_queue += 1  # granted at once while others were queued
        elif ev == "lease.denied" and r["agent_id"] in queue:
            denied += 1
            queue.remove(r["agent_id"])
    return {
        "rows": len(rows),
        "grants": grants,
        "grants_from_queue": from_queue,
        "grants_not_to_queue_head": out_of_order,
        "grants_past_a_queue": jumped_queue,
        "waits_timed_out": denied,
        "tokens_strictly_increasing": token_ok,
        "fifo": out_of_order == 0 and jumped_queue == 0,
    }


async def fill_held(peer: Writ, n: int, tag: str, concurrency: int = 64) -> dict[str, Any]:
    """Acquire ``n`` long leases on distinct resources and keep them; acquire-only rates of
    the first and the last tenth tell whether the held count slows grants."""
    await peer.open(16, concurrency)
    stamps: list[float] = []
    nxt = 0
    errors = 0

    async def worker(w: int) -> None:
        nonlocal nxt, errors
        while nxt < n:
            k = nxt
            nxt += 1
            try:
                await peer.acquire(w % 16, f"bench/{tag}/held/{k}", False, ttl_s=3600)
            except Exception:
                errors += 1
                continue
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    total = time.perf_counter() - t0
    tenth = max(1, len(stamps) // 10)

    def rate(part: list[float]) -> float | None:
        return (
            round((len(part) - 1) / (part[-1] - part[0]), 1)
            if len(part) > 1 and part[-1] > part[0]
            else None
        )

    return {
        "held": len(stamps),
        "errors": errors,
        "fill_s": round(total, 1),
        "acquire_per_s_first_tenth": rate(stamps[:tenth]),
        "acquire_per_s_last_tenth": rate(stamps[-tenth:]),
        "acquire_per_s_overall": round(len(stamps) / total, 1) if total else None,
    }
