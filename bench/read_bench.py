"""``python -m bench.read_bench`` — reads: what a resource, a dashboard or a gate asks writ
while agents hold leases, on each store, one server against two.

Each client holds a lease on a resource of its own (``bench/read/r<i>``) and then, for
``--seconds``, asks one read about it again and again:

* ``fence`` — ``GET /v1/fence?resource=R&token=N``, the check a resource makes before each
  write (the lean path; on PostgreSQL one round trip: a single read, see ``Store.read``);
* ``lease`` — ``GET /v1/leases/{id}`` (a single read too, through FastAPI);
* ``who`` — ``GET /v1/who?resource=R`` (from the ledger, a snapshot);
* ``resource`` — ``GET /v1/resources/{R}`` (lease, queue, protected changes, freezes);
* ``list`` — ``GET /v1/leases?resource=R&state=held`` (the held leases under a prefix).

The peers are ``bench.run``'s writ peers (``writ-sqlite``, ``writ-postgres``,
``writ-postgres-x2``: two servers on one database, client ``i`` on server ``i % 2``); the
table shows reads per second (p50 ms) and, below it, the servers' CPU per read. Reads change
nothing, so servers add read capacity where they take write capacity away
(docs/scaling.md).

    python -m bench.read_bench
    python -m bench.read_bench --peers writ-postgres --reads fence --clients 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench import peers

READS = {
    "fence": lambda r, g: f"/v1/fence?resource={r}&token={g.token}",
    "lease": lambda r, g: f"/v1/leases/{g.key}",
    "who": lambda r, g: f"/v1/who?resource={r}",
    "resource": lambda r, g: f"/v1/resources/{r}",
    "list": lambda r, g: f"/v1/leases?resource={r}&state=held",
}


async def _measure(
    peer: peers.Writ, kind: str, resources: list[str], grants: list[peers.Grant], seconds: float
) -> tuple[float, float, float | None]:
    """One kind of read by every client at once: (reads/s, p50 ms, server CPU ms per read)."""
    clients = len(resources)
    count = 0
    lat: list[float] = []
    start = time.perf_counter() + 0.5  # the warm-up ends
    stop = start + seconds

    async def client(i: int) -> None:
        nonlocal count
        path = READS[kind](resources[i], grants[i])
        http, headers = peer.client(i), peer.headers[i]
        while (t0 := time.perf_counter()) < stop:
            status, body = await http.request("GET", path, None, headers)
            if status != 200:
                raise RuntimeError(f"{kind}: {status} {body[:200]!r}")
            if t0 >= start:
                count += 1
                lat.append(time.perf_counter() - t0)

    async def cpu_window() -> float | None:
        await asyncio.sleep(max(start - time.perf_counter(), 0.0))
        c0 = peers.cpu_seconds(peer.server_pids())
        await asyncio.sleep(max(stop - time.perf_counter(), 0.0))
        c1 = peers.cpu_seconds(peer.server_pids())
        return None if c0 is None or c1 is None else c1 - c0

    cpu, *_ = await asyncio.gather(cpu_window(), *(client(i) for i in range(clients)))
    lat.sort()
    rate = count / seconds
    per_read = cpu / count * 1000 if cpu is not None and count else None
    return (rate, lat[len(lat) // 2] * 1000 if lat else 0.0, per_read)


async def _one_peer(
    name: str, reads: list[str], clients: int, seconds: float, pg_url: str, src: str | None
) -> dict[str, tuple[float, float, float | None]]:
    peer = peers.make(name)
    if not isinstance(peer, peers.Writ):  # main() lets only writ peers through
        raise TypeError(f"{name} is not a writ peer")
    peer.pg_url = pg_url
    peer.src = src
    out: dict[str, tuple[float, float, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="writ-read-bench-") as tmp:
        await peer.start(Path(tmp))
        try:
            await peer.open(clients, clients)
            resources = [f"bench/read/r{i}" for i in range(clients)]
            grants = [await peer.acquire(i, resources[i], False, 3600) for i in range(clients)]
            for kind in reads:
                out[kind] = await _measure(peer, kind, resources, grants, seconds)
                rate = out[kind][0]
                print(f"  {name} {kind}: {rate:,.0f} reads/s", file=sys.stderr, flush=True)
        finally:
            await peer.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="writ-sqlite,writ-postgres,writ-postgres-x2")
    ap.add_argument("--reads", default=",".join(READS), help=f"of {', '.join(READS)}")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--pg-url", default=peers.DEFAULT_PG_URL)
    ap.add_argument("--writ-src", default=None, help="a src/ folder to import writ from")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args(argv)
    names = [p for p in a.peers.split(",") if p]
    reads = [r for r in a.reads.split(",") if r]
    unknown = [r for r in reads if r not in READS] + [p for p in names if not p.startswith("writ")]
    if unknown:
        ap.error(f"unknown reads or non-writ peers: {', '.join(unknown)}")
    results: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    for name in names:
        try:
            results[name] = asyncio.run(
                _one_peer(name, reads, a.clients, a.seconds, a.pg_url, a.writ_src)
            )
        except peers.Skip as why:
            print(f"  {name}: skipped ({why})", file=sys.stderr)
    shown = list(results)
    print(f"### {a.clients} clients, each reading about its own held resource: reads/s (p50 ms)")
    print("| read | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for kind in reads:
        cells = [f"{results[n][kind][0]:,.0f} ({results[n][kind][1]:.2f})" for n in shown]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\nservers' CPU per read, ms:")
    print("| read | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for kind in reads:
        cells = []
        for n in shown:
            per = results[n][kind][2]
            cells.append("—" if per is None else f"{per:.3f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
