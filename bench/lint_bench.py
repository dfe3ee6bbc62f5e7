"""Benchmark ``writ lint --format jsonl`` over a generated audit log (default 1,000,000 rows).

    python -m bench.lint_bench [--rows N] [--skip-subprocess] [--keep]

Writes a JSONL file in a temporary directory — mostly clean rows shaped like writ's own
ledger, with the seed's bad cases mixed in (agent and portal key holders, missing
lock_holder, dashboard rollback paths, defect denominators, bare revocation booleans) — then
times:

* ``parse only``: ``writ.lint.iter_rows`` alone (the floor set by the JSON reader);
* ``in-process``: ``writ.cli_lint.run`` (read, judge, write JSONL to /dev/null);
* ``subprocess``: ``python -m writ.cli_lint --format jsonl FILE > /dev/null``, the real CLI.

and prints rows/s and peak RSS (``resource.getrusage``: this process for the in-process runs,
the child for the subprocess). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from writ.cli.commands.lint import run
from writ.evidence.lint import Linter, iter_rows

AGENTS = [f"{k}-agent" for k in ("perf", "cost", "routing", "checkout", "billing")] + [
    "checkout-refund-runner",
    "nightly-cron",
    "agent-4",
]
QUEUES = ["svc-ops-princess", "db-oncall", "platform-sre", "payments-team"]


def make_row(i: int, rnd: random.Random) -> dict[str, object]:
    agent = rnd.choice(AGENTS)
    queue = rnd.choice(QUEUES)
    row: dict[str, object] = {
        "seq": i,
        "timestamp": f"2026-05-16T02:{(i // 60) % 60:02d}:{i % 60:02d}.000000Z",
        "event": rnd.choice(["lease.granted", "lease.released", "change.recorded"]),
        "agent_id": agent,
        "resource": rnd.choice(["prod/db", "routing/db-tier", "capacity/db"]),
        "lock_holder": agent,
        "lock_key": f"prod/db/{i}",
        "lock_acquired_at": "2026-05-16T02:17:00Z",
        "fencing_token": i,
        "rollback_allowed": True,
        "rollback_path": f"/internal/db/rollback?txn={i}",
        "rollback_key_holder": queue,
        "approved_by": None,
        "human_override_queue": queue,
        "rollback_denominator": None,
        "rollback_denominator_is_defect": False,
        "second_key_revoke_provenance": None,
        "notes": "granted for 'double capacity', ttl 30s",
        "prev_hash": "0" * 64,
        "hash": "f" * 64,
    }
    r = rnd.random()
    if r < 0.03:
        row["rollback_key_holder"] = "agent-autocleanup-7"
    elif r < 0.05:
        row["rollback_key_holder"] = "vendor-portal-button"
    elif r < 0.06:
        del row["lock_holder"]
    elif r < 0.07:
        row["rollback_path"] = "Vendor Console > Rollback button"
    elif r < 0.08:
        row["rollback_denominator"] = "incident_minutes"
        row["rollback_denominator_is_defect"] = True
    elif r < 0.09:
        row["second_key_revoked"] = True
    elif r < 0.10:
        row["second_key_revoke_provenance"] = {
            "revoked_by": "svc-ops-princess",
            "via_runbook": "R-44",
            "at": "04:12Z",
            "after_paging": "oncall-jane",
        }
    return row


def generate(path: Path, rows: int) -> None:
    rnd = random.Random(2017)
    dumps = json.dumps
    with path.open("w", encoding="utf-8") as f:
        batch = []
        for i in range(1, rows + 1):
            batch.append(dumps(make_row(i, rnd)))
            if len(batch) == 10_000:
                f.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            f.write("\n".join(batch) + "\n")


def rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def report(label: str, rows: int, seconds: float, rss: float) -> None:
    print(
        f"{label:<14} {rows:>10,} rows in {seconds:6.2f}s = {rows / seconds:>9,.0f} rows/s"
        f"   peak RSS {rss:6.1f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    ap.add_argument("--skip-subprocess", action="store_true", help="only the in-process runs")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="writ-lint-bench-"))
    path = tmp / "audit.jsonl"
    t = time.perf_counter()
    generate(path, args.rows)
    size = path.stat().st_size
    print(
        f"generated {args.rows:,} rows ({size / 2**20:.0f} MiB) in "
        f"{time.perf_counter() - t:.1f}s; python {sys.version.split()[0]}"
    )
    print(f"baseline RSS before linting: {rss_mib(resource.RUSAGE_SELF):.1f} MiB")

    t = time.perf_counter()
    with path.open("rb") as f:
        n = sum(1 for _ in iter_rows(f))
    report("parse only", n, time.perf_counter() - t, rss_mib(resource.RUSAGE_SELF))

    t = time.perf_counter()
    with open(os.devnull, "w") as out:
        state = run([str(path)], Linter(), "jsonl", out=out)
    report("in-process", state.rows, time.perf_counter() - t, rss_mib(resource.RUSAGE_SELF))
    print(
        "  verdicts:",
        {
            k: v
            for k, v in state.summary().items()
            if k in ("accept", "suspicious", "reject", "contaminated", "warnings")
        },
    )

    if not args.skip_subprocess:
        t = time.perf_counter()
        with open(os.devnull, "wb") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "writ.cli_lint", "--format", "jsonl", str(path)],
                stdout=out,
                check=False,
            )
        report("subprocess", args.rows, time.perf_counter() - t, rss_mib(resource.RUSAGE_CHILDREN))
        print(f"  exit status {proc.returncode} (1: some rows are not accepted)")
    if args.keep:
        print(f"kept {path}")
    else:
        path.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
