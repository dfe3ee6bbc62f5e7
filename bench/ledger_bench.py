"""``python -m bench.ledger_bench`` — the evidence commands on a 1,000,000-row ledger.

Builds a SQLite store whose ledger holds ``--rows`` sealed audit rows (default 1,000,000:
leases granted, renewed, changed, refused and released on ``--resources`` resources, one row
every 0.25 s of simulated time, plus their lease records), by bulk-inserting rows sealed with
:func:`writ.core.ledger.seal` straight into the store file. Then it times, each in a fresh
process as a user would run it:

* ``writ audit verify --store`` — the whole chain (target: >= 200,000 rows/s);
* ``writ postmortem --resource RESOURCE --store`` — one resource's whole history (< 1 s);
* ``writ who RESOURCE --at T`` and ``writ postmortem --url`` against ``writ serve`` on the
  same store (< 1 s);
* one client's fence checks against that server, alone and while eight callers ask it for a
  whole-ledger verify at once (they share runs: docs/security.md, "Limits");

and the same three calls in-process (without interpreter start-up). Each time is the best of
three runs. Prints a table.
The ledger is kept under ``--dir`` (default: a temp folder) and reused when it exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.peers import free_port
from writ.core.clock import parse_time, rfc3339
from writ.core.ledger import GENESIS, seal

START = parse_time("2026-05-01T00:00:00Z")
STEP = 0.25  # seconds of simulated time between rows
TARGET = "prod/db"  # the resource the who/postmortem probes ask about
HOLDERS = ("perf-agent", "cost-agent", "routing-agent", "deploy-bot", "batch-runner")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(path: Path, rows: int, n_resources: int) -> dict[str, Any]:
    """Write a store with ``rows`` audit rows at ``path``; returns facts for the probes."""
    from writ.stores.sqlite import SQLiteStore

    url = f"sqlite:///{path}"
    store = SQLiteStore(url)

    async def init() -> None:
        await store.open()
        await store.close()

    asyncio.run(init())
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = OFF")
    c.execute("PRAGMA cache_size = -200000")
    c.execute("BEGIN")
    names = [TARGET] + [f"fleet/svc-{i:04d}/db" for i in range(n_resources - 1)]
    # per resource: the open lease (token, holder, acquired_at, renewals left)
    open_: dict[str, tuple[int, str, float, int]] = {}
    prev, token, seq, t = GENESIS, 0, 0, START
    audit: list[tuple[Any, ...]] = []
    leases: list[tuple[Any, ...]] = []
    probe: dict[str, Any] = {}
    until: dict[int, float] = {}  # each lease's expiry (its grant's or last renewal's)
    rb = {
        "rollback_allowed": True,
        "rollback_path": "/internal/db/rollback",
        "rollback_key_holder": "svc-ops-princess",
        "human_override_queue": "svc-ops-princess",
        "rollback_denominator": "incident_minutes",
    }
    i = 0
    while seq < rows:
        # about one row in n_resources is on TARGET; the rest spread over the fleet
        res = TARGET if i % n_resources == 0 else names[1 + (i * 7919) % (len(names) - 1)]
        i += 1
        t += STEP
        cur = open_.get(res)
        if cur is None:
            token += 1
            holder = HOLDERS[(token * 7) % len(HOLDERS)]
            acq = rfc3339(t)
            fields = {
                "event": "lease.granted",
                "agent_id": holder,
                "resource": res,
                "lock_holder": holder,
                "lock_key": f"{res}/{token}",
                "lock_acquired_at": acq,
                "fencing_token": token,
                **rb,
                "notes": f"granted ls_bench{token} for 'tune {res}', ttl 30s, touches *",
            }
            open_[res] = (token, holder, t, 1 + token % 4)
            until[token] = t + 30
            leases.append(
                (
                    f"ls_bench{token}",
                    res,
                    holder,
                    f"tune {res}",
                    token,
                    t,
                    t + 30,
                    30.0,
                    '["*"]',
                    "released",
                    None,
                    None,
                    None,
                )
            )
        else:
            tok, holder, acq_t, left = cur
            base = {
                "agent_id": holder,
                "resource": res,
                "lock_holder": holder,
                "lock_key": f"{res}/{tok}",
                "lock_acquired_at": rfc3339(acq_t),
                "fencing_token": tok,
                **rb,
            }
            if left > 0:
                kind = (tok + left) % 3
                if kind == 0:
                    fields = {
                        **base,
                        "event": "change.recorded",
                        "notes": f"capacity: capacity {left}->{left * 2}; protected until "
                        f"{rfc3339(t + 900)}",
                    }
                elif kind == 1:
                    other = HOLDERS[(tok + 1) % len(HOLDERS)]
                    fields = {
                        **base,
                        "event": "lease.denied",
                        "agent_id": other,
                        "rollback_allowed": False,
                        "rollback_path": None,
                        "rollback_key_holder": None,
                        "rollback_denominator": None,
                        "notes": f"refused 'consolidate': {res} is held by {holder}",
                    }
                else:
                    fields = {
                        **base,
                        "event": "lease.renewed",
                        "notes": f"renewed until {rfc3339(t + 30)}",
                    }
                    until[tok] = t + 30
                open_[res] = (tok, holder, acq_t, left - 1)
            else:
                fields = {**base, "event": "lease.released", "notes": "released by its holder"}
                del open_[res]
                if res == TARGET and seq > rows // 2 and "who_at" not in probe:
                    probe["who_at"] = rfc3339((acq_t + t) / 2)
                    probe["who_holder"] = holder
        seq += 1
        s = seal(seq, prev, t, fields)
        prev = s.hash
        audit.append((s.seq, s.timestamp, s.event, s.resource, s.lock_key, s.body, s.hash))
        if len(audit) >= 50_000:
            c.executemany(
                "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash)"
                " VALUES (?,?,?,?,?,?,?)",
                audit,
            )
            c.executemany(
                "INSERT INTO leases (lease_id, resource, holder, intent, fencing_token,"
                " acquired_at, expires_at, ttl_s, touches, state, rollback, ended_at,"
                " request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                leases,
            )
            audit.clear()
            leases.clear()
            log(f"  {seq:,} rows")
    if audit:
        c.executemany(
            "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash)"
            " VALUES (?,?,?,?,?,?,?)",
            audit,
        )
    if leases:
        c.executemany(
            "INSERT INTO leases (lease_id, resource, holder, intent, fencing_token,"
            " acquired_at, expires_at, ttl_s, touches, state, rollback, ended_at,"
            " request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            leases,
        )
    # the leases still open at the end are held, as writ keeps them (verify checks each
    # against the rows of its life)
    plan = {
        "allowed": True,
        "path": rb["rollback_path"],
        "key_holder": rb["rollback_key_holder"],
        "override_queue": rb["human_override_queue"],
        "denominator": rb["rollback_denominator"],
    }
    c.executemany(
        "UPDATE leases SET state = 'held', expires_at = ?, rollback = ? WHERE fencing_token = ?",
        [(until[tok], json.dumps(plan), tok) for tok, *_ in open_.values()],
    )
    c.execute("UPDATE meta SET value = ? WHERE key = 'fencing_token'", (token,))
    # the head the store keeps beside the chain: verify checks the chain reaches it, and the
    # next row is numbered after it
    c.execute(
        "UPDATE audit_head SET (seq, hash) = (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1)"
    )
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n_target = c.execute("SELECT count(*) FROM audit WHERE resource = ?", (TARGET,)).fetchone()[0]
    c.close()
    return {"rows": seq, "target_rows": n_target, **probe}


def facts(path: Path) -> dict[str, Any]:
    """Recover the probe facts of an existing bench ledger."""
    c = sqlite3.connect(path)
    rows = c.execute("SELECT max(seq) FROM audit").fetchone()[0] or 0
    n_target = c.execute("SELECT count(*) FROM audit WHERE resource = ?", (TARGET,)).fetchone()[0]
    mid = c.execute(
        "SELECT ts FROM audit WHERE resource = ? AND event = 'lease.granted' AND"
        " seq > ? ORDER BY seq LIMIT 1",
        (TARGET, rows // 2),
    ).fetchone()
    c.close()
    return {
        "rows": rows,
        "target_rows": n_target,
        "who_at": rfc3339(mid[0] + STEP) if mid else rfc3339(START),
    }


@contextlib.contextmanager
def serving(url: str) -> Iterator[tuple[str, str]]:
    """``writ serve`` on the bench store, and the token of a principal made for this run."""
    port = free_port()
    token = asyncio.run(_reader(url))
    env = {k: v for k, v in os.environ.items() if k != "WRIT_ADMIN_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "writ.cli",
            "serve",
            "--store",
            url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield base, token
    finally:
        proc.terminate()
        proc.wait(10)


async def _reader(url: str) -> str:
    from writ.engine import Engine
    from writ.stores import open_store

    engine = Engine(open_store(url))
    await engine.store.open()
    try:
        _, token = await engine.add_principal(None, f"bench-{secrets.token_hex(4)}", "human")
        return token
    finally:
        await engine.store.close()


async def _fences_during(base: str, token: str, verifies: int) -> tuple[float, float, float]:
    """One client's fence checks, one after another, while ``verifies`` callers ask for a
    whole-ledger verify at once (or for 2 s): checks/s, their p50, the verifies' time."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as c:
        t0 = time.perf_counter()
        asked = asyncio.gather(*[c.get("/v1/audit/verify") for _ in range(verifies)])
        crowd = asyncio.ensure_future(asked)
        lat: list[float] = []
        while not crowd.done() if verifies else time.perf_counter() - t0 < 2:
            t = time.perf_counter()
            r = await c.get("/v1/fence", params={"resource": "probe/x", "token": 1})
            r.raise_for_status()
            lat.append(time.perf_counter() - t)
        await crowd
        took = time.perf_counter() - t0
    lat.sort()
    return len(lat) / took, lat[len(lat) // 2], took


def timed(cmd: list[str], repeat: int = 3) -> tuple[float, str]:
    """Best of ``repeat`` wall-clock runs of a command (a shared machine is noisy)."""
    best, line = float("inf"), ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        best, line = min(best, dt), (p.stdout.strip().splitlines() or [""])[0][:90]
    return best, line


async def in_process(url: str, at: str) -> dict[str, float]:
    from writ.engine import Engine
    from writ.evidence.postmortem import Query, StoreSource, collect
    from writ.stores import open_store

    engine = Engine(open_store(url))
    await engine.start(background=False)
    try:
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        v = await engine.verify()
        out["verify"] = time.perf_counter() - t0
        out["verify_rows"] = float(v.rows)
        t0 = time.perf_counter()
        await engine.who(TARGET, parse_time(at))
        out["who"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = await collect(StoreSource(engine), Query([TARGET]))
        out["postmortem"] = time.perf_counter() - t0
        out["postmortem_rows"] = float(report["source"]["rows"])
        return out
    finally:
        await engine.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ledger_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="keep the ledger here (reused when present)")
    args = ap.parse_args(argv)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="writ-ledger-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ledger-{args.rows}.db"
    if path.exists():
        log(f"reusing {path}")
        info = facts(path)
    else:
        log(f"building {args.rows:,} rows in {path} ...")
        t0 = time.perf_counter()
        info = build(path, args.rows, args.resources)
        log(f"built in {time.perf_counter() - t0:.1f}s ({os.path.getsize(path) / 1e6:.0f} MB)")
    url = f"sqlite:///{path}"
    at = info.get("who_at") or rfc3339(START)
    writ = [sys.executable, "-m", "writ.cli"]
    results: list[tuple[str, str, str, str]] = []

    dt, line = timed([*writ, "audit", "verify", "--store", url])
    results.append(
        ("writ audit verify --store", f"{dt:.2f} s", f"{info['rows'] / dt:,.0f} rows/s", line)
    )
    out = folder / "postmortem.html"
    dt, line = timed(
        [
            *writ,
            "postmortem",
            "--resource",
            TARGET,
            "--store",
            url,
            "--format",
            "html",
            "--out",
            str(out),
        ]
    )
    results.append(
        (
            f"writ postmortem --resource {TARGET} --store",
            f"{dt:.3f} s",
            f"{info['target_rows']:,} rows",
            line,
        )
    )
    with serving(url) as (base, token):
        api = ["--url", base, "--token", token]
        dt, line = timed([*writ, "who", TARGET, "--at", at, *api])
        results.append((f"writ who {TARGET} --at T (server)", f"{dt:.3f} s", "", line))
        dt, line = timed(
            [
                *writ,
                "postmortem",
                "--resource",
                TARGET,
                *api,
                "--format",
                "html",
                "--out",
                str(folder / "postmortem-http.html"),
            ]
        )
        results.append(
            (
                f"writ postmortem --resource {TARGET} --url",
                f"{dt:.3f} s",
                f"{info['target_rows']:,} rows",
                line,
            )
        )
        for verifies in (0, 8):
            rate, p50, took = asyncio.run(_fences_during(base, token, verifies))
            results.append(
                (
                    f"fence checks while {verifies} verifies run (server)",
                    f"p50 {p50 * 1000:.1f} ms",
                    f"{rate:,.0f} checks/s",
                    f"the verifies took {took:.1f} s" if verifies else "",
                )
            )
    inproc = asyncio.run(in_process(url, at))
    results.append(
        (
            "  in-process engine.verify()",
            f"{inproc['verify']:.2f} s",
            f"{inproc['verify_rows'] / inproc['verify']:,.0f} rows/s",
            "",
        )
    )
    results.append(("  in-process engine.who()", f"{inproc['who'] * 1000:.1f} ms", "", ""))
    results.append(
        (
            "  in-process postmortem collect()",
            f"{inproc['postmortem'] * 1000:.0f} ms",
            f"{inproc['postmortem_rows']:,.0f} rows",
            "",
        )
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"writ evidence on a {info['rows']:,}-row ledger "
        f"({info['target_rows']:,} rows on {TARGET})"
    )
    for col in ("command", "time", "rate / size", "output"):
        table.add_column(col)
    for r in results:
        table.add_row(*r)
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
