"""``python -m bench.objects_bench`` — what verify's check of the policy objects costs.

Writes ``--objects`` policy objects through the engine into a store (by default a new SQLite
file; ``--url`` names another, e.g. a PostgreSQL schema): four in ten protected changes,
three in ten freezes, three in ten granted consents — the kinds and states
:mod:`writ.stores.policy_objects` reads; with ``--delays``, that many lock delays besides (a
lease revoked on a resource of its own, each delay standing an hour), which
:mod:`writ.stores.lock_delays` reads. With ``--ledger-rows`` (SQLite only), the store
first holds a ledger of that many rows built as ``bench.ledger_bench`` builds its own, so
each probe searches an index of that size. Then it times, best of three, in process: the
objects check alone (``objects_disagree``), the delays' (``delays_disagree``), the check that each change and freeze the rows say
stands is still in the table (``objects_gone``, after a walk), and the whole
``verify_store`` (the chain, the held leases, the principals and the objects). Prints one
line each.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from writ.core.policy import parse
from writ.engine import Engine
from writ.stores import open_store
from writ.stores.accounted import Opened
from writ.stores.lock_delays import delays_disagree
from writ.stores.migrate import verify_store
from writ.stores.open_objects import objects_gone
from writ.stores.policy_objects import objects_disagree

T = TypeVar("T")


async def fill(engine: Engine, n: int) -> None:
    add = engine.add_principal
    perf, _ = await add(None, "bench-perf", "agent")
    cost, _ = await add(None, "bench-cost", "agent")
    jane, _ = await add(None, "bench-jane", "human")
    lease = await engine.acquire(perf, resource="bench/db", intent="bench", ttl_s=3600)
    changes = [
        await engine.consents.record_change(perf, lease["lease_id"], f"attr-{i}", "x")
        for i in range(n * 4 // 10)
    ]
    for i in range(n * 3 // 10):
        await engine.freezes.freeze(jane, f"bench/frozen-{i}", "bench")
    for i in range(n - len(changes) - n * 3 // 10):
        asked = await engine.consents.ask(cost, changes[i % len(changes)]["change_id"], "b")
        await engine.consents.answer(perf, asked["consent_id"], True)


DELAYED = """
[[rules]]
prefix = "bench/delayed"
lock_delay_s = 3600
"""


async def fill_delays(engine: Engine, n: int) -> None:
    """``n`` lock delays: a lease on a resource of its own each, revoked."""
    perf, _ = await engine.add_principal(None, "bench-holder", "agent")
    ops, _ = await engine.add_principal(None, "bench-ops", "human")
    for i in range(n):
        lease = await engine.acquire(perf, resource=f"bench/delayed/{i}", intent="bench")
        await engine.revoke(ops, lease["lease_id"], "bench", "nobody", "bench")


async def best(fn: Callable[[], Awaitable[T]], runs: int = 3) -> tuple[float, T]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = await fn()
        times.append(time.perf_counter() - t)
    return min(times), out


async def run(url: str, n: int, delays: int = 0) -> None:
    engine = Engine(open_store(url), parse(DELAYED))
    await engine.start(background=False)
    try:
        t = time.perf_counter()
        await fill(engine, n)
        await fill_delays(engine, delays)
        print(f"wrote {n:,} objects and {delays:,} delays in {time.perf_counter() - t:.1f}s")
        dt, found = await best(lambda: objects_disagree(engine.store))
        assert found is None, found
        print(f"objects check: {dt * 1000:.0f} ms ({dt / n * 1e6:.0f} us an object)")
        if delays:
            dt, found = await best(lambda: delays_disagree(engine.store))
            assert found is None, found
            print(f"delays check: {dt * 1000:.0f} ms ({dt / delays * 1e6:.0f} us a delay)")
        opened = Opened()
        async for chunk in engine.store.audit_records():
            opened.feed(chunk)
        standing = len(opened.objects.objects)
        dt, found = await best(lambda: objects_gone(engine.store, opened.objects))
        assert found is None, found
        print(
            f"deletion check: {dt * 1000:.0f} ms ({standing:,} standing, "
            f"{dt / max(standing, 1) * 1e6:.0f} us each)"
        )
        dt2, v = await best(lambda: verify_store(engine.store))
        print(f"whole verify_store: {dt2:.2f} s ({v.rows:,} rows, ok={v.ok})")
    finally:
        await engine.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.objects_bench", description=__doc__)
    ap.add_argument("--url", default=None, help="the store (default: a new SQLite file)")
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--delays", type=int, default=0, help="lock delays besides the objects")
    ap.add_argument("--ledger-rows", type=int, default=0, help="SQLite: a ledger this long first")
    args = ap.parse_args(argv)
    if args.url is not None:
        asyncio.run(run(args.url, args.objects, args.delays))
        return
    with tempfile.TemporaryDirectory(prefix="writ-objects-bench-") as folder:
        path = Path(folder) / "writ.db"
        if args.ledger_rows:
            from bench.ledger_bench import build

            t = time.perf_counter()
            build(path, args.ledger_rows, 1000)
            print(f"built {args.ledger_rows:,} rows in {time.perf_counter() - t:.1f}s")
        asyncio.run(run(f"sqlite:///{path}", args.objects, args.delays))


if __name__ == "__main__":
    main()
