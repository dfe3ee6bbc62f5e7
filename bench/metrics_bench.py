"""``python -m bench.metrics_bench`` — what metrics (and JSON logs) cost per grant.

Three apps side by side in this process, each with its own engine and SQLite store in a
temp folder: ``off`` (``create_app(metrics=False)``, logs off), ``on`` (metrics on, the
default) and ``on+logs`` (metrics on, plus ``writ.access``/``writ.decision`` JSON lines at
INFO, written to /dev/null). Each is driven the way uvicorn drives it — ASGI calls of
``POST /v1/leases`` and ``POST /v1/leases/{id}/release`` with a bearer token, the lean hot
path — with no HTTP client in the measured process, so the figure is the server's own CPU
per acquire+release pair (``time.process_time``, which includes SQLite's commit thread).
``--store memory`` takes the disk out: the base cost shrinks, so the ratio is a worst case.

Rounds are interleaved (off, on, on+logs, off, ...) so drift and other processes' load hit
every mode alike; the result is the median of per-round CPU per pair, and the ratio of
medians against ``off``. Under a loaded machine the absolute figures move; the ratios are
what to read. Prints a table and writes ``bench/results/metrics-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MODES = ("off", "on", "on+logs")


class Driver:
    """One app, called directly over ASGI."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.auth = (b"authorization", f"Bearer {token}".encode())

    async def call(self, path: str, body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"writ"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                self.auth,
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 7411),
        }
        sent = False
        out: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never: nobody disconnects
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                out["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                out["body"] = out.get("body", b"") + msg.get("body", b"")

        await self.app(scope, receive, send)
        return out["status"], out["body"]

    async def pair(self, resource: str) -> None:
        status, body = await self.call(
            "/v1/leases", json.dumps({"resource": resource, "intent": "bench"}).encode()
        )
        assert status == 201, body
        lease_id = json.loads(body)["lease_id"]
        status, body = await self.call(f"/v1/leases/{lease_id}/release", b"")
        assert status == 200, body


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from writ.api.app import create_app
    from writ.engine import Engine
    from writ.stores import open_store
    from writ.telemetry import logs

    tmp = Path(tempfile.mkdtemp(prefix="writ-metrics-bench-"))
    handler = logging.StreamHandler(args.devnull)
    handler.setFormatter(logs.Scrubbed(logs.JsonFormatter(), logs.Scrub(["bench-secret"])))
    logs.lean_records()  # as logs.setup does in writ serve
    drivers: dict[str, Driver] = {}
    engines: list[Engine] = []
    for mode in MODES:
        url = (
            "sqlite:///:memory:"
            if args.store == "memory"
            else f"sqlite:///{tmp}/{mode.replace('+', '-')}.db"
        )
        engine = Engine(open_store(url))
        await engine.start(background=False)
        engines.append(engine)
        if mode == "on+logs":
            logs.log_decisions(engine)
        _, token = await engine.add_principal(None, f"bench-{len(engines)}", "agent")
        app = create_app(engine, start_engine=False, metrics=mode != "off")
        drivers[mode] = Driver(app, token)

    def logging_for(mode: str) -> None:
        lg = logging.getLogger("writ")
        if mode == "on+logs":
            lg.handlers[:] = [handler]
            lg.setLevel(logging.INFO)
            lg.propagate = False
        else:
            lg.handlers[:] = []
            lg.setLevel(logging.WARNING)

    per_pair: dict[str, list[float]] = {m: [] for m in MODES}
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    for mode in MODES:  # warm-up
        logging_for(mode)
        for i in range(50):
            await drivers[mode].pair(f"warm/{i % 8}")
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            logging_for(mode)
            d = drivers[mode]
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(args.pairs):
                await d.pair(f"bench/{i % 16}")
            per_pair[mode].append((time.process_time() - c0) / args.pairs * 1e6)
            wall[mode].append((time.perf_counter() - w0) / args.pairs * 1e6)
        log(
            f"round {r + 1}/{args.rounds}: "
            + "  ".join(f"{m} {per_pair[m][-1]:.0f} µs CPU/pair" for m in MODES)
        )
    logging_for("off")
    for e in engines:
        await e.stop()
    med = {m: statistics.median(per_pair[m]) for m in MODES}
    # per-round ratio (same round, adjacent in time) is less noisy than the ratio of medians
    round_ratio = {
        m: statistics.median(a / b for a, b in zip(per_pair[m], per_pair["off"], strict=True))
        for m in MODES
    }
    return {
        "bench": "metrics",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "rounds": args.rounds,
        "store": args.store,
        "pairs_per_round": args.pairs,
        "cpu_us_per_pair_median": med,
        "wall_us_per_pair_median": {m: statistics.median(wall[m]) for m in MODES},
        "ratio_vs_off_of_medians": {m: med[m] / med["off"] for m in MODES},
        "ratio_vs_off_per_round_median": round_ratio,
        "cpu_us_per_pair_rounds": per_pair,
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument(
        "--pairs", type=int, default=300, help="acquire+release pairs per round and mode"
    )
    p.add_argument(
        "--store",
        choices=["file", "memory"],
        default="file",
        help="file: SQLite in a temp folder (fsync'd, as served); memory: no disk, so the "
        "fixed costs measured here are a larger share (a worst case for the ratio)",
    )
    args = p.parse_args()
    with open(os.devnull, "w") as args.devnull:
        out = asyncio.run(main(args))
    print(
        "| mode | CPU µs per pair (median) | wall µs per pair | vs off (median of per-round ratios) |"
    )
    print("| --- | ---: | ---: | ---: |")
    for m in MODES:
        print(
            f"| {m} | {out['cpu_us_per_pair_median'][m]:.0f} | "
            f"{out['wall_us_per_pair_median'][m]:.0f} | "
            f"{out['ratio_vs_off_per_round_median'][m]:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    log(f"wrote {path}")


if __name__ == "__main__":
    cli()
