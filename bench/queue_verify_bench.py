"""What verify's check of the wait queue costs (:mod:`writ.stores.queued`).

Queues N requests on R resources as the engine does (a waiter and its ``lease.queued`` row,
in one transaction each, the row's notes naming the waiter and its request), then times
the check of the whole queue, best of three, and asking waiter by waiter (the default
:meth:`~writ.stores.base.Tx.waiter_lives`) beside it on a server store.

    python -m bench.queue_verify_bench --store sqlite:///tmp/q.db --waiters 1000
    python -m bench.queue_verify_bench --store 'postgresql://.../db?schema=qbench' --waiters 1000
    python -m bench.queue_verify_bench --store sqlite:///tmp/q.db --waiters 1000 --between 10

The store must be empty (a fresh file, a new schema).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from typing import Any

from writ.core.models import Waiter, new_id, queued_as, waited_as
from writ.stores import open_store, queued
from writ.stores.base import Store, Tx


async def fill(store: Store, waiters: int, resources: int, between: int = 0) -> None:
    """``waiters`` requests queued on ``resources`` resources in turn, each followed by
    ``between`` rows of other queued requests refused on its resource (rows naming a
    waiter, among which the end of its wait is looked for)."""

    async def one(tx: Tx, i: int) -> None:
        now = tx.now()
        res = f"prod/r{i % resources}"
        request = {
            "resource": res,
            "intent": f"job {i}",
            "ttl_s": 30.0,
            "wait_s": 120.0,
            "touches": [res],
            "consent_id": None,
            "rollback": None,
        }
        w = await tx.insert_waiter(
            Waiter(new_id("wt"), 0, res, f"agent-{i % 50}", request, now, now + 120.0)
        )
        await tx.append(
            {
                "event": "lease.queued",
                "agent_id": w.principal,
                "resource": res,
                "notes": f"queued at position {i // resources + 1} for up to 120s: {res} is "
                "held by holder" + queued_as(w),
            }
        )
        for _ in range(between):
            await tx.append(
                {
                    "event": "lease.denied",
                    "agent_id": "agent-x",
                    "resource": res,
                    "notes": f"refused 'x': {res} is held by holder" + waited_as(new_id("wt")),
                }
            )

    for i in range(waiters):
        await store.transact(functools.partial(one, i=i))


async def main(url: str, waiters: int, resources: int, between: int) -> None:
    store = open_store(url)
    await store.open()
    try:
        await fill(store, waiters, resources, between)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            found = await queued.waiters_disagree(store)
            best = min(best, time.perf_counter() - t)
            assert found is None, found
        print(
            f"{waiters} waiters on {resources} resources, {between} rows after each: "
            f"{best * 1000:.0f} ms (best of 3)"
        )
        if url.startswith("postgres"):

            async def slow(tx: Any) -> int:
                return len(await Tx.waiter_lives(tx, -1, 1 << 62))

            t = time.perf_counter()
            n = await store.read(slow)
            print(
                f"  waiter by waiter (the default), one snapshot: "
                f"{(time.perf_counter() - t) * 1000:.0f} ms for {n}"
            )
    finally:
        await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--waiters", type=int, default=1000)
    ap.add_argument("--resources", type=int, default=20)
    ap.add_argument("--between", type=int, default=0, help="rows on its resource after each")
    a = ap.parse_args()
    asyncio.run(main(a.store, a.waiters, a.resources, a.between))
