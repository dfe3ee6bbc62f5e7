"""``python -m bench.gate_bench`` — what ``writ gate`` adds to a write, measured.

Starts three processes on this machine: ``writ serve`` (SQLite store in a temp folder), a toy
upstream (a Starlette app under uvicorn that answers every request with a small JSON body)
and ``writ gate`` in front of it. Then, from this process, one client with keep-alive sends
the same small JSON POST

* ``direct``      straight to the upstream;
* ``gate-read``   through the gate on an unmapped path (proxying only, no check);
* ``gate-write``  through the gate on a mapped path with the current lease: writ's decision
                  (``POST /v1/gate/check``, one audited, fsync'd row) plus the proxying;
* ``gate-refuse`` through the gate on a mapped path without a lease (the 423 path);

interleaved in rounds so drift hits every mode alike, and prints median / p90 / p99 per mode
and the latency the gate adds to a write (``gate-write - direct``). With ``--concurrency N``
it also runs N clients at once on gate-write, gate-read and direct and reports requests/s.
Figures go to stdout and to ``bench/results/gate-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.peers import free_port

ADMIN = "bench-admin-token"
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes
def upstream_main(port: int) -> None:
    """The toy upstream (run in its own process)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def handle(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {"ok": True, "size": len(body), "token": request.headers.get("writ-fencing-token")}
        )

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def process(
    args: list[str],
    env: dict[str, str] | None = None,
    ready: str | None = None,
    url: str | None = None,
) -> Iterator[str]:
    """Run a child until it prints ``ready`` (a regex; group 1 is the URL) or ``url`` answers."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    found: list[str] = []
    seen = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(ready, line) if ready else None
            if m and not seen.is_set():
                found.append(m.group(1))
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[2:4]} exited: {''.join(lines)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[2:4]} did not start: {''.join(lines)}")
            if ready and seen.wait(0.05):
                break
            if url:
                try:
                    httpx.get(url, timeout=1)
                    found.append(url)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
        yield found[0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- measuring
def pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(vals: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in vals]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(pct(ms, 0.90), 3),
        "p99_ms": round(pct(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def sequential(
    modes: dict[str, tuple[httpx.Client, str, dict[str, str], int]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    body = json.dumps({"to": 8, "reason": "bench"}).encode()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, (client, path, headers, status) in modes.items():
            out = times[mode]
            for _ in range(per_round):
                t0 = time.perf_counter()
                r = client.post(path, content=body, headers=headers)
                out.append(time.perf_counter() - t0)
                if r.status_code != status:
                    raise RuntimeError(f"{mode}: {r.status_code} {r.text[:200]}")
    return times


async def concurrent(
    url: str, path: str, headers: dict[str, str], clients: int, duration: float
) -> dict[str, Any]:
    done: list[float] = []
    stop = time.perf_counter() + duration

    async def one() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await c.post(path, content=b'{"to": 8}')
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
                done.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "writes_per_s": round(len(done) / elapsed, 1),
        **summary(done),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16, help="0 to skip")
    ap.add_argument("--duration", type=float, default=5.0, help="concurrent run, seconds")
    ap.add_argument("--upstream-only", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream_only:
        upstream_main(args.upstream_only)
        return

    py = sys.executable
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        writ_port, up_port = free_port(), free_port()
        writ_url = stack.enter_context(
            process(
                [
                    py,
                    "-m",
                    "writ.cli",
                    "serve",
                    "--store",
                    f"sqlite:///{tmp / 'writ.db'}",
                    "--port",
                    str(writ_port),
                    "--log-level",
                    "warning",
                ],
                env={"WRIT_ADMIN_TOKEN": ADMIN},
                url=f"http://127.0.0.1:{writ_port}/v1/health",
            )
        )
        writ_url = writ_url.removesuffix("/v1/health")
        up_url = stack.enter_context(
            process(
                [py, "-m", "bench.gate_bench", "--upstream-only", str(up_port)],
                url=f"http://127.0.0.1:{up_port}/health",
            )
        )
        up_url = up_url.removesuffix("/health")

        admin = httpx.Client(base_url=writ_url, headers={"Authorization": f"Bearer {ADMIN}"})
        tokens = {}
        for name, kind in (("bench-gate", "portal"), ("bench-agent", "agent")):
            r = admin.post("/v1/principals", json={"name": name, "kind": kind})
            r.raise_for_status()
            tokens[name] = r.json()["token"]
        routes = tmp / "routes.toml"
        routes.write_text('[[route]]\npath = "/admin/db/*"\nresource = "prod/db"\n')
        gate_url = stack.enter_context(
            process(
                [
                    py,
                    "-m",
                    "writ.cli",
                    "gate",
                    "--url",
                    writ_url,
                    "--token",
                    tokens["bench-gate"],
                    "--upstream",
                    up_url,
                    "--listen",
                    "127.0.0.1:0",
                    "--routes",
                    str(routes),
                ],
                ready=r"listening on (http://\S+)",
            )
        )

        agent = httpx.Client(
            base_url=writ_url, headers={"Authorization": f"Bearer {tokens['bench-agent']}"}
        )
        lease = agent.post(
            "/v1/leases", json={"resource": "prod/db", "intent": "bench", "ttl_s": 3600}
        ).json()
        lease_headers = {
            "Authorization": f"Bearer {tokens['bench-agent']}",
            "Writ-Lease": lease["lease_id"],
            "Writ-Fencing-Token": str(lease["fencing_token"]),
            "Content-Type": "application/json",
        }
        plain = {"Content-Type": "application/json"}
        direct = stack.enter_context(httpx.Client(base_url=up_url))
        gated = stack.enter_context(httpx.Client(base_url=gate_url))
        modes = {
            "direct": (direct, "/admin/db/scale", plain, 200),
            "gate-read": (gated, "/public/scale", plain, 200),
            "gate-write": (gated, "/admin/db/scale", lease_headers, 200),
            "gate-refuse": (gated, "/admin/db/scale", plain, 423),
        }
        log(f"warming up ({args.warmup} per mode)")
        sequential(modes, 1, args.warmup)
        log(f"measuring {args.rounds} rounds x {args.per_round} requests per mode")
        times = sequential(modes, args.rounds, args.per_round)
        result: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "sequential": {m: summary(v) for m, v in times.items()},
        }
        seq = result["sequential"]
        result["added_by_gate_ms"] = {
            "write_median": round(seq["gate-write"]["median_ms"] - seq["direct"]["median_ms"], 3),
            "write_p99": round(seq["gate-write"]["p99_ms"] - seq["direct"]["p99_ms"], 3),
            "proxy_only_median": round(
                seq["gate-read"]["median_ms"] - seq["direct"]["median_ms"], 3
            ),
        }
        if args.concurrency:
            log(f"{args.concurrency} concurrent clients through the gate for {args.duration}s")
            result["concurrent_gate_write"] = asyncio.run(
                concurrent(
                    gate_url, "/admin/db/scale", lease_headers, args.concurrency, args.duration
                )
            )
            result["concurrent_gate_read"] = asyncio.run(
                concurrent(gate_url, "/public/scale", plain, args.concurrency, args.duration)
            )
            result["concurrent_direct"] = asyncio.run(
                concurrent(up_url, "/admin/db/scale", plain, args.concurrency, args.duration)
            )
        agent.post(f"/v1/leases/{lease['lease_id']}/release")
        audit = admin.get("/v1/audit/verify").json()
        result["audit"] = audit
        admin.close()
        agent.close()

    print(f"{'mode':<12} {'n':>6} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8}")
    for mode, s in result["sequential"].items():
        print(
            f"{mode:<12} {s['n']:>6} {s['median_ms']:>10.3f} {s['p90_ms']:>8.3f} "
            f"{s['p99_ms']:>8.3f}"
        )
    a = result["added_by_gate_ms"]
    print(
        f"gate adds to a write: median {a['write_median']:.3f} ms, p99 {a['write_p99']:.3f} ms "
        f"(proxying alone: median {a['proxy_only_median']:.3f} ms)"
    )
    for key in ("concurrent_gate_write", "concurrent_gate_read", "concurrent_direct"):
        if key in result:
            c = result[key]
            print(
                f"{key}: {c['clients']} clients, {c['writes_per_s']} req/s, "
                f"median {c['median_ms']} ms, p99 {c['p99_ms']} ms"
            )
    print(f"audit chain ok: {result['audit']['ok']} ({result['audit']['rows']} rows)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
