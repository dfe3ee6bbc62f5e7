"""``python -m bench.store_bench`` — the store alone: where a batch's time goes, one server
against several.

No HTTP and no loader process: each of ``--servers`` processes opens the same PostgreSQL
store (schema ``bench_store``, made afresh and dropped after) with an
:class:`~writ.engine.Engine` of its own and runs ``--clients`` ÷ servers in-process clients,
each looping acquire → release on a resource of its own
(the ``d16`` scenario of ``bench.run`` with the HTTP layer taken out). Every process then
reports its pairs, its CPU time and its store's counters, and the table shows, per
configuration:

* pairs/s over the measured window (one window for all: the servers start together, after
  they have all opened the store, and warm up for a second), and the servers' CPU in it;
* transactions per committed batch, and the share of batches decided before the head lock
  (optimistic: one round trip each);
* the mean milliseconds a batch spends in each phase (``PostgresStore.phase_s``, exported
  as ``writ_store_batch_seconds_total``): **lock** — waiting for the head lock and catching
  up; **decide** — its transactions, under the lock when it waited for it; **commit** — its
  last round trip (and what is decided ahead meanwhile).

With one server, the head lock is taken inside the commit and batches are decided while the
one before commits; with several, each batch waits for the lock, decides under it, and
commits under it, so the servers' batches alternate and ``decide + commit`` is the time the
cluster's one serialization point is held per batch (docs/scaling.md).

    python -m bench.store_bench                        # 1 server × 16, then 2 × 8
    python -m bench.store_bench --servers 1,2,3 --clients 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import queue
import sys
import time
from typing import Any

SCHEMA = "bench_store"


def _server(url: str, idx: int, clients: int, seconds: float, ready: Any, out: Any) -> None:
    import uvloop

    from writ.engine import Engine
    from writ.stores import open_store

    async def main() -> None:
        store = open_store(url)
        engine = Engine(store, None)
        await store.open()
        me, _ = await engine.add_principal(None, f"bench-{idx}", "agent")
        ready.wait()  # every server is open: start together
        start = time.perf_counter() + 1.0  # the warm-up ends
        stop = start + seconds
        pairs = 0

        async def client(c: int) -> None:
            nonlocal pairs
            resource = f"bench/s{idx}c{c}"
            while (now := time.perf_counter()) < stop:
                lease = await engine.acquire(me, resource=resource, intent="bench")
                await engine.release(me, lease["lease_id"])
                pairs += now >= start

        async def cpu_window() -> float:  # this process's CPU seconds in the window
            await asyncio.sleep(max(start - time.perf_counter(), 0.0))
            cpu0 = time.process_time()
            await asyncio.sleep(max(stop - time.perf_counter(), 0.0))
            return time.process_time() - cpu0

        cpu, *_ = await asyncio.gather(cpu_window(), *(client(c) for c in range(clients)))
        # the counters over the whole run (warm-up included): ratios, not rates
        phases = dict(store.phase_s)
        batches, done, optimistic = (
            getattr(store, k, 0) for k in ("batches", "transactions", "optimistic_batches")
        )
        await store.close()
        out.put((pairs, cpu, batches, done, optimistic, phases))

    uvloop.run(main())


def _store_url(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={SCHEMA}"


def run(url: str, servers: int, clients: int, seconds: float) -> dict[str, Any]:
    """``servers`` processes of ``clients`` each on a fresh schema; the table row."""
    import psycopg

    from writ.stores import open_store

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    async def migrate() -> None:  # once, before the servers race to open it
        s = open_store(_store_url(url))
        await s.open()
        await s.close()

    drop()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(servers), ctx.Queue()
    procs = [
        ctx.Process(target=_server, args=(_store_url(url), i, clients, seconds, ready, out))
        for i in range(servers)
    ]
    try:
        asyncio.run(migrate())
        for p in procs:
            p.start()
        got: list[Any] = []
        give_up = time.monotonic() + seconds + 120
        for _ in procs:
            while True:
                try:
                    got.append(out.get(timeout=1.0))
                    break
                except queue.Empty:
                    if time.monotonic() > give_up:
                        raise RuntimeError("the servers did not finish in time") from None
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError("a server process failed (its error is above)") from None
    finally:
        for p in procs:
            if p.pid is not None:  # started
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
        drop()
    batches = sum(g[2] for g in got) or 1
    phases = {k: sum(g[5].get(k, 0.0) for g in got) for k in ("lock", "decide", "commit")}
    return {
        "servers": servers,
        "clients": clients * servers,
        "pairs_s": sum(g[0] for g in got) / seconds,
        "cpu": sum(g[1] for g in got) / seconds,
        "per_batch": sum(g[3] for g in got) / batches,
        "optimistic": sum(g[4] for g in got) / batches,
        **{f"{k}_ms": 1e3 * v / batches for k, v in phases.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL URL (libpq options in its query are kept)",
    )
    ap.add_argument("--servers", default="1,2", help="comma-separated server counts")
    ap.add_argument(
        "--clients", type=int, default=16, help="clients in all, split over the servers"
    )
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.servers.split(",")):
        print(f"{n} server(s) × {args.clients // n} clients ...", file=sys.stderr, flush=True)
        rows.append(run(args.url, n, max(args.clients // n, 1), args.seconds))
    one = rows[0]["pairs_s"] or 1
    print(
        "| servers | clients | pairs/s | ÷ first row | server CPU | tx/batch | optimistic "
        "| lock ms | decide ms | commit ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['servers']} | {r['clients']} | {r['pairs_s']:,.0f} | {r['pairs_s'] / one:.2f}× "
            f"| {r['cpu']:.2f} | {r['per_batch']:.1f} | {r['optimistic']:.0%} "
            f"| {r['lock_ms']:.2f} | {r['decide_ms']:.2f} | {r['commit_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
