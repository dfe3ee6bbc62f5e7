"""What the token lifecycle costs and how fast a refusal spreads (docs/security.md#tokens).

    .venv/bin/python -m bench.auth_bench                       # SQLite only
    .venv/bin/python -m bench.auth_bench --postgres postgresql://postgres@127.0.0.1:5432/test

* ``authenticate``: microseconds per call for a known token on a SQLite store (each call reads
  the store's count of principal changes; a changed count means the token is looked up
  again), and, for comparison, the same lookup done on every call.
* with ``--postgres``: two engines on one fresh schema; how long after a rotation on one, or
  a hand ``DELETE`` in another connection, the other refuses the old token (it had just
  accepted it). The schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from writ.core.errors import Unauthenticated
from writ.engine import Engine
from writ.engine.principals import AuthCache
from writ.stores import open_store


async def _sqlite(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        e = Engine(open_store(f"sqlite:///{d}/w.db"))
        await e.start(background=False)
        try:
            _, tok = await e.add_principal(None, "a", "agent")
            for _ in range(1000):
                await e.authenticate(tok)
            t0 = time.perf_counter()
            for _ in range(n):
                await e.authenticate(tok)
            cached = (time.perf_counter() - t0) / n * 1e6
            e.auth_cache = AuthCache(False)  # every call looks the token up
            t0 = time.perf_counter()
            for _ in range(n):
                await e.authenticate(tok)
            lookup = (time.perf_counter() - t0) / n * 1e6
        finally:
            await e.stop()
    print(f"sqlite authenticate: {cached:.1f} us/call remembered, {lookup:.1f} us/call looked up")


async def _until_refused(engine: Engine, token: str) -> float:
    t0 = time.perf_counter()
    while True:
        try:
            await engine.authenticate(token)
        except Unauthenticated:
            return time.perf_counter() - t0
        await asyncio.sleep(0.0005)


async def _postgres(base: str, rounds: int) -> None:
    import psycopg

    schema = "writ_bench_auth_" + secrets.token_hex(4)
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    a, b = Engine(open_store(url)), Engine(open_store(url))
    await a.start(background=False)
    await b.start(background=False)
    try:
        _, tok = await a.add_principal(None, "perf-agent", "agent")
        rotated: list[float] = []
        for _ in range(rounds):
            await b.authenticate(tok)
            out = await a.principals.rotate(None, "perf-agent")
            rotated.append(await _until_refused(b, tok))
            tok = out["token"]
        deleted: list[float] = []
        for i in range(max(rounds // 3, 1)):
            _, t = await a.add_principal(None, f"hand-{i}", "agent")
            await b.authenticate(t)
            async with await psycopg.AsyncConnection.connect(base, autocommit=True) as c:
                await c.execute(f'SET search_path TO "{schema}"')
                await c.execute("DELETE FROM principals WHERE name = %s", (f"hand-{i}",))
            deleted.append(await _until_refused(b, t))
    finally:
        await b.stop()
        await a.stop()
        async with await psycopg.AsyncConnection.connect(base, autocommit=True) as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def show(xs: list[float]) -> str:
        return (
            f"median {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms "
            f"(n={len(xs)})"
        )

    print(f"postgres, rotated on A -> refused on B: {show(rotated)}")
    print(f"postgres, hand DELETE  -> refused on B: {show(deleted)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--postgres", metavar="URL", default=None)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    os.environ.pop("WRIT_ADMIN_TOKEN", None)
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = [lambda: _sqlite(args.calls)]
    if args.postgres:
        jobs.append(lambda: _postgres(args.postgres, args.rounds))
    for job in jobs:
        asyncio.run(job())


if __name__ == "__main__":
    main()
