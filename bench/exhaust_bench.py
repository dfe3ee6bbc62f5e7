"""``python -m bench.exhaust_bench`` — one client against a ``writ serve`` process.

Measures what the connection limits (``writ.net.limits``, docs/security.md "Limits") are for:

* **oversize head**: one connection sends a 150 MiB header line as fast as it can; how much
  the server took before it answered or closed, and its peak RSS;
* **slow heads**: ``--slow`` connections each send part of a request head and then one byte
  every second; meanwhile ``/v1/health`` is asked on fresh connections: its status and
  latency, the server's open files and RSS;
* **large read**: ``GET /v1/audit?limit=100000`` on a ledger of ``--rows`` rows (built with
  ``bench.ledger_bench``) while ``/v1/health`` is asked every 10 ms: the slowest health answer.

``--baseline`` runs uvicorn as writ did before the limits (httptools, no guard) for the
before/after figures in docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.peers import free_port

BASELINE = """
import uvicorn
from writ.engine import Engine
from writ.server import MAX_HEADERS, create_app
from writ.stores import open_store
app = create_app(Engine(open_store({url!r})))
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False,
            h11_max_incomplete_event_size=MAX_HEADERS)
"""
GUARDED = """
from writ.server import run
run({url!r}, "127.0.0.1", {port}, None, log_level="warning")
"""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(url: str, baseline: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = (BASELINE if baseline else GUARDED).format(url=url, port=port)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "WRIT_ADMIN_TOKEN": "bench-admin-token-0123456789"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


async def health(port: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(r.readline(), 10)
        w.close()
        return int(line.split()[1]), time.perf_counter() - t0
    except (OSError, TimeoutError, IndexError, ValueError):
        return 0, time.perf_counter() - t0


async def oversize(port: int, pid: int) -> dict[str, Any]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk, sent, peak = b"a" * (1 << 20), 0, rss(pid)
    try:
        for _ in range(150):
            w.write(chunk)
            await asyncio.wait_for(w.drain(), 20)
            sent += len(chunk)
            peak = max(peak, rss(pid))
        w.write(b"\r\n\r\n")
        await w.drain()
        answer = await asyncio.wait_for(r.readline(), 20)
    except (OSError, TimeoutError) as exc:
        answer = f"closed ({type(exc).__name__})".encode()
    else:
        if not answer:
            answer = b"closed"
    peak = max(peak, rss(pid))
    w.close()
    return {
        "sent_mib": sent / 2**20,
        "answer": answer.decode(errors="replace").strip(),
        "peak_rss_mib": peak / 2**20,
    }


async def slow_heads(port: int, pid: int, n: int, seconds: float) -> dict[str, Any]:
    conns: list[asyncio.StreamWriter] = []
    refused = 0
    for _ in range(n):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            conns.append(w)
        except OSError:
            refused += 1
    lat: list[float] = []
    codes: dict[int, int] = {}
    peak_fds, peak_rss = fds(pid), rss(pid)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for w in conns:
            if not w.is_closing():
                try:
                    w.write(b"a")
                except OSError:
                    pass
        code, dt = await health(port)
        codes[code] = codes.get(code, 0) + 1
        lat.append(dt)
        peak_fds, peak_rss = max(peak_fds, fds(pid)), max(peak_rss, rss(pid))
        await asyncio.sleep(1.0)
    open_now = sum(1 for w in conns if not w.is_closing())
    for w in conns:
        w.close()
    lat.sort()
    return {
        "connections": n,
        "connect_failed": refused,
        "health_codes": codes,
        "health_p50_ms": lat[len(lat) // 2] * 1e3,
        "health_max_ms": lat[-1] * 1e3,
        "server_fds_peak": peak_fds,
        "server_rss_peak_mib": peak_rss / 2**20,
        "client_side_still_open": open_now,
    }


PROBE = """
import socket, sys, time
port, until = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
lat = []
while time.monotonic() < until:
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    s.recv(64)
    s.close()
    lat.append(time.perf_counter() - t0)
    time.sleep(0.01)
lat.sort()
print(len(lat), lat[len(lat) // 2] * 1e3, lat[-1] * 1e3)
"""


async def large_read(base: str, port: int, pid: int) -> dict[str, Any]:
    """The read, with /v1/health probed from a process of its own meanwhile."""
    token = "bench-admin-token-0123456789"
    before = peak = rss(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(port), "6", stdout=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(0.5)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as c:
        r = await c.get(
            base + "/v1/audit?limit=100000", headers={"Authorization": f"Bearer {token}"}
        )
        n = r.content.count(b'"seq":') if r.status_code == 200 else r.status_code
    took = time.perf_counter() - t0
    stop.set()
    await sampler
    out, _ = await probe.communicate()
    samples, p50, worst = out.split()
    return {
        "rows": n,
        "read_s": took,
        "health_samples": int(samples),
        "health_p50_ms": float(p50),
        "health_max_ms": float(worst),
        "server_rss_mib": f"{before / 2**20:.0f} -> peak {peak / 2**20:.0f}",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--slow", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--ledger", default=None, help="a SQLite store with >= 100,000 audit rows")
    args = ap.parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{args.ledger}" if args.ledger else f"sqlite:///{tmp}/w.db"
    proc, base = start(url, args.baseline)
    port = int(base.rsplit(":", 1)[1])
    try:
        print("oversize head:", asyncio.run(oversize(port, proc.pid)), flush=True)
        if args.slow:
            print(
                "slow heads:",
                asyncio.run(slow_heads(port, proc.pid, args.slow, args.seconds)),
                flush=True,
            )
        if args.ledger:
            print("large read:", asyncio.run(large_read(base, port, proc.pid)), flush=True)
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
