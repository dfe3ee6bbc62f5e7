"""Summarise a py-spy raw profile of the writ server (``python -m bench.run --profile``).

    python -m bench.profile bench/results/profile-writ-sqlite-<time>.txt [--top 25]

Prints (1) self time by component — each sample charged to the innermost frame that
belongs to a known layer (HTTP parsing, Starlette, FastAPI, pydantic, JSON, engine, ledger,
SQLite statements, the commit thread, the event loop) — and (2) inclusive time of the
functions that matter for the hot path, and (3) the top self-time frames. Startup samples
(module imports) are left out.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

# (component, pattern on "function (file:line)"), first match from the leaf wins
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    (
        "SQLite COMMIT (fsync, commit thread)",
        re.compile(r"concurrent/futures/thread\.py|threading\.py"),
    ),
    ("JSON encode/decode (stdlib json)", re.compile(r"\(json/")),
    ("ledger seal (canonical JSON + sha256)", re.compile(r"writ/core/ledger\.py")),
    ("SQLite store (stores/sqlite)", re.compile(r"writ/stores/sqlite/")),
    ("PostgreSQL store (stores/postgres)", re.compile(r"writ/stores/postgres/")),
    ("psycopg + pool (driver)", re.compile(r"\(psycopg(_pool)?/")),
    ("writ models/clock (to_dict, rfc3339)", re.compile(r"writ/core/(models|clock)\.py")),
    (
        "writ resources/policy/validate",
        re.compile(r"writ/core/(resources|policy|validate)\.py"),
    ),
    ("writ engine + rules", re.compile(r"writ/(engine|rules)/")),
    ("writ api (routes, lean path, middleware)", re.compile(r"writ/api/|writ/net/")),
    ("writ other", re.compile(r"writ/")),
    ("FastAPI jsonable_encoder", re.compile(r"fastapi/encoders\.py")),
    ("pydantic (validation, serialization)", re.compile(r"pydantic|fastapi/_compat")),
    ("FastAPI routing + dependencies", re.compile(r"\(fastapi/")),
    ("Starlette (routing, middleware, Request/Response)", re.compile(r"starlette/")),
    ("uvicorn + httptools (HTTP parsing, ASGI glue)", re.compile(r"uvicorn/|httptools")),
    ("event loop (asyncio/uvloop)", re.compile(r"asyncio/|uvloop")),
    ("secrets/hashlib/uuid", re.compile(r"secrets\.py|hashlib|uuid|random\.py|base64")),
    (
        "typing/enum/abc/copy (library glue)",
        re.compile(r"typing\.py|enum\.py|_collections_abc|abc\.py|copy\.py|dataclasses"),
    ),
]

# Inclusive shares. With asyncio, py-spy shows a coroutine's stack only from the task that
# runs it: the store's batches run in the drain task, not under the request that waits.
INCLUSIVE = [
    ("uvicorn request cycle (run_asgi)", r"run_asgi \(uvicorn"),
    ("writ ASGI front (writ/api) and below", r"__call__ \(writ/api/"),
    ("FastAPI request_response handler", r"app \(fastapi/routing\.py|app \(starlette/routing\.py"),
    ("  auth: authenticate", r"authenticate \(writ/engine"),
    ("  pydantic body validation", r"request_body_to_args|validate_python"),
    ("engine.acquire (request side)", r"\.acquire \(writ/engine"),
    ("engine.release (request side)", r"\.release \(writ/engine"),
    ("store: drain task (the batches)", r"_drain \(writ/stores"),
    ("  transaction bodies (engine decisions)", r"_acquire_tx|<locals>\.fn \(writ/engine"),
    ("  ledger seal", r"seal \(writ/core/ledger"),
    ("  PostgreSQL: decide + commit (_attempt)", r"_attempt \(writ/stores/postgres"),
    ("    its round trips (_simple, alone)", r"(_simple|alone) \(writ/stores/postgres"),
    ("  COMMIT in worker thread (SQLite)", r"concurrent/futures/thread\.py"),
    ("PostgreSQL LISTEN (notifications)", r"_listen \(writ/stores/postgres"),
    ("Lease.to_dict", r"to_dict \(writ/core/models"),
    ("rfc3339", r"rfc3339 \(writ/core/clock"),
]


def parse(path: str) -> list[tuple[list[str], int]]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            if any("importlib._bootstrap" in fr for fr in frames):
                continue  # startup
            if frames[0].startswith("thread ("):  # py-spy --threads: "thread (tid): name"
                name = frames[0].partition(": ")[2] or "MainThread"
                frames = [f"thread {name}", *frames[1:]]
            out.append((frames, int(n)))
    return out


def component(frames: list[str]) -> str:
    for fr in reversed(frames):
        for name, pat in LAYERS:
            if pat.search(fr):
                return name
    return "other (" + re.sub(r" \(.*", "", frames[-1]) + ")"


def summarise(path: str, top: int = 25) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    lines = [f"{path}: {total} samples (startup excluded)"]
    threads: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        if frames[0].startswith("thread "):
            threads[frames[0][7:]] += n
    if threads:
        lines.append(
            "wall-clock share of samples by thread: "
            + ", ".join(f"{t} {100 * c / total:.1f}%" for t, c in threads.most_common())
        )
        main = [(f, n) for f, n in stacks if f[0] == "thread MainThread"]
        if main:  # the event loop thread is what limits throughput: break it down alone
            stacks = main
            total = sum(n for _, n in stacks) or 1
            lines.append(f"below: the MainThread (event loop) only, {total} samples = 100%")
    lines += ["", "self time by component:"]
    by: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        by[component(frames)] += n
    for name, n in by.most_common():
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "inclusive time:"]
    for label, pat in INCLUSIVE:
        rx = re.compile(pat)
        n = sum(c for frames, c in stacks if any(rx.search(fr) for fr in frames))
        lines.append(f"  {100 * n / total:5.1f}%  {label}")
    lines += ["", f"top {top} self-time frames:"]
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaf[frames[-1]] += n
    for fr, n in leaf.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {fr}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    print(summarise(a.file, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
