"""``python -m bench.ab`` — two builds of writ, measured in alternating rounds.

    python -m bench.ab 96114ea HEAD --rounds 3 --peers writ-postgres --scenarios c1,d16

Each build is a commit (anything ``git rev-parse`` takes) or ``.``, the working tree as it is
now; its ``src/`` is copied to a temp folder once, so editing the tree meanwhile changes
nothing. Each round runs :mod:`bench.run` once per build, the first build first in odd
rounds and second in even ones (A B, B A, A B, ...), with ``--writ-src`` pointing at that
copy: a shared machine's slow drifts fall on both builds, not on one. Then, per peer and scenario, every round's pairs/s (and p50, p99, server CPU per pair),
each build's mean, and the median change of the paired rounds — the figures bench/RESULTS.md
quotes for a change. The raw ``bench.run`` output of every round stays in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("pairs_per_s", "pair_p50_ms", "pair_p99_ms", "server_cpu_ms_per_pair")


def resolve(rev: str) -> str:
    """``rev`` as the commit it names (short hash), or ``HEAD+tree`` for ``.``; an error for
    anything git does not take as a commit (an option, a typo)."""
    if rev == ".":
        return _git("rev-parse", "--short", "HEAD") + "+tree"
    return _git("rev-parse", "--short", "--verify", "--end-of-options", f"{rev}^{{commit}}")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def export(rev: str, dest: Path) -> Path:
    """``rev``'s ``src/`` (or the working tree's, for ``.``) copied under ``dest``, with a
    ``COMMIT`` file beside it that ``bench.run`` records as the build measured."""
    commit = resolve(rev)
    dest.mkdir(parents=True, exist_ok=True)
    if rev == ".":
        cmd = ["tar", "-c", "--exclude=__pycache__", "src"]
    else:
        cmd = ["git", "archive", commit, "src"]
    tar = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            t.extractall(dest, filter="data")
        else:  # this repository's own files, from git or its tree
            t.extractall(dest)
    (dest / "COMMIT").write_text(commit + "\n")
    return dest / "src"


def figures(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """``(peer, scenario) -> {figure: value}`` of one ``bench.run`` JSON document."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for peer, scenarios in doc.get("results", {}).items():
        for key, r in scenarios.items():
            if isinstance(r, dict) and "pairs_per_s" in r:
                out[(peer, key)] = {f: r[f] for f in FIGURES if r.get(f) is not None}
    return out


def summary(
    rounds: dict[str, list[dict[tuple[str, str], dict[str, float]]]],
) -> list[dict[str, Any]]:
    """Per ``(peer, scenario)`` both builds measured: each round's pairs/s, the means, and the
    median of the paired rounds' change in pairs/s (round i of A against round i of B)."""
    (_, ra), (_, rb) = rounds.items()
    keys = sorted({k for r in ra + rb for k in r})
    rows = []
    for key in keys:
        va = [r[key]["pairs_per_s"] for r in ra if key in r]
        vb = [r[key]["pairs_per_s"] for r in rb if key in r]
        if not va or not vb:
            continue
        # round i of one build against round i of the other: a round either lacks is left out
        both = [
            (x[key]["pairs_per_s"], y[key]["pairs_per_s"])
            for x, y in zip(ra, rb, strict=False)
            if key in x and key in y
        ]
        paired = [(y - x) / x for x, y in both if x > 0]
        rows.append(
            {
                "peer": key[0],
                "scenario": key[1],
                "before": va,
                "after": vb,
                "mean": (statistics.fmean(va), statistics.fmean(vb)),
                "paired_change": statistics.median(paired) if paired else None,
                "p50": tuple(_each(r, key, "pair_p50_ms") for r in (ra, rb)),
                "cpu": tuple(_each(r, key, "server_cpu_ms_per_pair") for r in (ra, rb)),
            }
        )
    return rows


def _each(rounds: list[dict[tuple[str, str], dict[str, float]]], key: Any, fig: str) -> list[float]:
    return [r[key][fig] for r in rounds if fig in r.get(key, {})]


def table(a: str, b: str, rows: list[dict[str, Any]]) -> str:
    def nums(vs: list[float], fmt: str = "{:,.0f}") -> str:
        return ", ".join(fmt.format(v) for v in vs)

    lines = [
        f"| peer | scenario | {a} pairs/s | {b} pairs/s | means | paired change (median) "
        f"| p50 ms {a} → {b} | CPU ms/pair {a} → {b} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = r["paired_change"]
        p50, cpu = r["p50"], r["cpu"]
        lines.append(
            f"| {r['peer']} | {r['scenario']} | {nums(r['before'])} | {nums(r['after'])} "
            f"| {r['mean'][0]:,.0f} → {r['mean'][1]:,.0f} "
            f"| {'—' if change is None else f'{change:+.1%}'} "
            f"| {nums(p50[0], '{:.2f}')} → {nums(p50[1], '{:.2f}')} "
            f"| {nums(cpu[0], '{:.3f}')} → {nums(cpu[1], '{:.3f}')} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("a", help="the build before: a commit, or . for the working tree")
    ap.add_argument("b", help="the build after: a commit, or . for the working tree")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each build (default 3)")
    ap.add_argument("--peers", default="writ-postgres", help="bench.run --peers (writ peers)")
    ap.add_argument("--scenarios", default="c1,d16", help="bench.run --scenarios")
    ap.add_argument("--duration", type=float, default=5.0, help="bench.run --duration")
    ap.add_argument("--warmup", type=float, default=1.0, help="bench.run --warmup")
    ap.add_argument("--settle", type=float, default=10.0, help="bench.run --settle")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ab"), help="raw runs")
    a = ap.parse_args(argv)
    if a.a == a.b:
        ap.error("the two builds are the same")
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    return a


def cli(argv: list[str] | None = None) -> int:
    a = parse(argv)
    out = Path(a.out).resolve()  # bench.run runs from the repository's root
    builds = [a.a, a.b]
    try:
        commits = [resolve(rev) for rev in builds]
    except subprocess.CalledProcessError as exc:
        print(f"bench.ab: not a commit: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    if commits[0] == commits[1]:
        print(f"bench.ab: both builds are {commits[0]}", file=sys.stderr)
        return 2
    rounds: dict[str, list[dict[tuple[str, str], dict[str, float]]]] = {a.a: [], a.b: []}
    with tempfile.TemporaryDirectory(prefix="writ-ab-") as tmp:
        srcs = {rev: export(rev, Path(tmp) / f"build{i}") for i, rev in enumerate(builds)}
        for n in range(1, a.rounds + 1):
            for rev in builds if n % 2 else builds[::-1]:
                i = builds.index(rev)
                where = out / f"round{n}-{i}-{commits[i]}"
                cmd = [sys.executable, "-m", "bench.run", "--peers", a.peers]
                cmd += ["--scenarios", a.scenarios, "--duration", str(a.duration)]
                cmd += ["--warmup", str(a.warmup), "--settle", str(a.settle)]
                cmd += ["--writ-src", str(srcs[rev]), "--out", str(where)]
                print(f"round {n}/{a.rounds}: {rev} ({commits[i]})", file=sys.stderr, flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
                doc = json.loads((where / "latest.json").read_text())
                rounds[rev].append(figures(doc))
    print(table(a.a, a.b, summary(rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
