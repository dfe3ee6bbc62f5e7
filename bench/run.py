"""``python -m bench.run`` — writ side by side with etcd, Redis and PostgreSQL.

Starts each peer itself on loopback in a temp folder (one at a time, so they never share the
CPU), runs every scenario against it with the one loader in :mod:`bench.loader`, prints a
table with writ/peer ratios, and writes ``bench/results/bench-<time>.json`` and ``.svg``
(also ``latest.json`` / ``latest.svg``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import chart, peers
from bench.loader import SCENARIOS, Scenario, fill_held, run_scenario

HERE = Path(__file__).resolve().parent
SCEN_KEYS = [s.key for s in SCENARIOS] + ["held"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--peers",
        default=",".join(peers.ALL),
        help=f"comma list from {','.join(peers.ALL)} (default: all)",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(SCEN_KEYS),
        help=f"comma list from {','.join(SCEN_KEYS)} (default: all; held = writ only)",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per scenario (default 10; --quick 3)",
    )
    ap.add_argument(
        "--warmup", type=float, default=None, help="unmeasured seconds first (default 2)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="short windows (3 s) and 10,000 held leases instead of 100,000",
    )
    ap.add_argument("--held", type=int, default=None, help="leases held in the 'held' scenario")
    ap.add_argument(
        "--conns",
        type=int,
        default=64,
        help="connection pool cap per peer, same for all (default 64)",
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", peers.DEFAULT_PG_URL),
        help="PostgreSQL for the bare peer and the writ PostgreSQL store "
        "(a private cluster is started when it is unreachable)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="before each scenario wait up to this many seconds for other processes "
        "to use < 0.3 cores (a shared machine); 0 = do not wait (default 30)",
    )
    ap.add_argument(
        "--http",
        choices=["lean", "httpx"],
        default="lean",
        help="HTTP client for writ and etcd (the same for both): lean = bench/http.py's "
        "keep-alive client (default), httpx = httpx.AsyncClient",
    )
    ap.add_argument(
        "--writ-src",
        default=None,
        help="a src/ folder to run the writ server from (e.g. an exported commit); "
        "default: the installed writ",
    )
    ap.add_argument("--out", default=str(HERE / "results"), help="where JSON and SVG go")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run writ servers under py-spy (raw collapsed stacks into --out; "
        "summarise with python -m bench.profile FILE)",
    )
    ap.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    ap.add_argument(
        "--path",
        action="store_true",
        help="stamp each request's critical path inside a writ server (one client: c1) and "
        "print where its time goes, segment by segment (bench/path.py)",
    )
    a = ap.parse_args(argv)
    if a.profile and a.path:
        ap.error("--profile and --path each wrap the server: use one at a time")
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0)
    a.held = a.held if a.held is not None else (10_000 if a.quick else 100_000)
    a.peer_list = [p.strip() for p in a.peers.split(",") if p.strip()]
    a.scen_list = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    bad = [p for p in a.peer_list if p not in peers.ALL] + [
        s for s in a.scen_list if s not in SCEN_KEYS
    ]
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    return a


class Profiled(peers.Writ):
    """Mixed in front of a writ peer's class (see :func:`profiled`): its server — the first
    one, for several servers — runs under ``py-spy record`` (raw collapsed stacks, idle
    frames left out); the others run as they would."""

    out_file: Path
    rate: int

    def profile_argv(self, tmp: Path) -> list[str]:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise peers.Skip("py-spy is not installed: pip install py-spy")
        return [
            exe,
            "record",
            "--format",
            "raw",
            "--rate",
            str(self.rate),
            "--nonblocking",
            "--threads",
            "-o",
            str(self.out_file),
            "--",
        ]

    def server_pids(self) -> list[int]:
        # py-spy is the first server's parent: count that server (its child) and the other
        # servers, and py-spy's own sampling apart
        pids = super().server_pids()
        kids = _children(self.proc.pid) if self.proc else []
        return kids + pids[1:] if kids else pids

    async def stop(self) -> None:
        # SIGINT to the python child makes py-spy write its file; then stop py-spy
        import signal

        for pid in _children(self.proc.pid) if self.proc else []:
            os.kill(pid, signal.SIGINT)
        if self.proc is not None:
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except Exception:
                pass
        await super().stop()
        if self.out_file.exists():
            log(f"  profile: {self.out_file}  (python -m bench.profile {self.out_file})")


def profiled(peer: peers.Writ, out: Path, stamp: str, rate: int) -> peers.Writ:
    """``peer`` (one writ server, or several) with its first server under py-spy."""
    peer.__class__ = type(f"Profiled{type(peer).__name__}", (Profiled, type(peer)), {})
    assert isinstance(peer, Profiled)
    peer.profile = "py-spy"
    peer.out_file = out / f"profile-{peer.name}-{stamp}.txt"
    peer.rate = rate
    return peer


class Traced(peers.Writ):
    """Mixed in front of a writ peer's class (see :func:`traced`): its server runs through
    bench/path.py, which stamps each request's path and writes the stamps when it stops."""

    out_file: Path

    def profile_argv(self, tmp: Path) -> list[str]:
        # -P: bench/ is not put on the path (its http.py would hide the standard library's)
        return [sys.executable, "-P", str(HERE / "path.py"), "serve", str(self.out_file)]

    async def stop(self) -> None:
        await super().stop()
        if self.out_file.exists():
            from bench import path

            log(f"  path of one request (python -m bench.path {self.out_file}):")
            log(path.table(str(self.out_file)))


def traced(peer: peers.Writ, out: Path, stamp: str) -> peers.Writ:
    """``peer`` (one writ server) with its server's critical path stamped (bench/path.py)."""
    peer.__class__ = type(f"Traced{type(peer).__name__}", (Traced, type(peer)), {})
    assert isinstance(peer, Traced)
    peer.profile = "path"
    peer.out_file = out / f"path-{peer.name}-{stamp}.json"
    return peer


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


async def bench_peer(
    name: str, a: argparse.Namespace, stamp: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start one peer, run the scenarios, stop it. Returns (info, results by scenario)."""
    peer = peers.make(name)
    if a.profile and isinstance(peer, peers.Writ):
        peer = profiled(peer, Path(a.out), stamp, a.profile_rate)
    elif a.path and isinstance(peer, peers.WritCluster):
        log(f"== {name}: several servers, not stamped (--path follows one server's requests)")
    elif a.path and isinstance(peer, peers.Writ):
        peer = traced(peer, Path(a.out), stamp)
    if isinstance(peer, peers.Writ):
        peer.pg_url = a.pg_url
        peer.src = str(Path(a.writ_src).resolve()) if a.writ_src else None  # noqa: ASYNC240 - setup, outside any measured window
    elif isinstance(peer, peers.Postgres):
        peer.url = a.pg_url
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix=f"writ-bench-{name}-"))
    try:
        log(f"== {name}: starting")
        try:
            await peer.start(tmp)
        except peers.Skip as exc:
            log(f"== {name}: SKIPPED — {exc}")
            return {"skipped": str(exc)}, {}
        info = peer.info()
        for sc in SCENARIOS:
            if sc.key not in a.scen_list:
                continue
            await settle(peer, a.settle)
            t = time.perf_counter()
            r = await run_scenario(peer, sc, a.duration, a.warmup, a.conns, f"{sc.key}-{stamp}")
            results[sc.key] = r
            log(
                f"   {sc.title:34s} {r['pairs_per_s'] or 0:9,.0f} pairs/s  p50 {r['pair_p50_ms']} ms"
                f"  p99 {r['pair_p99_ms']} ms  errors {r['errors']}"
                f"  (¼ {r.get('pairs_per_s_first_quarter')}→{r.get('pairs_per_s_last_quarter')})"
                f"  cpu loader {r['loader_cpu']} server {r['server_cpu']} db {r.get('db_cpu')}"
                f" other {r.get('other_cpu')}"
                f" steal {r.get('steal_cpu')}  ({time.perf_counter() - t:.0f}s)"
            )
            if r["errors"]:
                log(f"     errors: {r['error_samples']}")
        if (
            "held" in a.scen_list
            and isinstance(peer, peers.Writ)
            and not isinstance(peer, peers.WritCluster)
        ):
            results["held"] = await held_scenario(peer, a, stamp)
        await peer.close()
        return info, results
    finally:
        await peer.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def settle(peer: peers.Peer, limit: float, threshold: float = 0.3) -> float:
    """Wait (up to ``limit`` s) until the rest of the machine uses under ``threshold`` cores,
    so that other work on a shared box does not land inside a measured window."""
    t_end = time.monotonic() + limit
    while True:
        m0, p0, s0 = (
            peers.machine_cpu()[0],
            time.process_time(),
            peers.cpu_seconds(peer.server_pids()) or 0.0,
        )
        w0 = time.monotonic()
        await asyncio.sleep(0.5)
        wall = time.monotonic() - w0
        other = (
            (peers.machine_cpu()[0] - m0)
            - (time.process_time() - p0)
            - ((peers.cpu_seconds(peer.server_pids()) or 0.0) - s0)
        ) / wall
        if other < threshold:
            return other
        if time.monotonic() >= t_end:
            log(
                f"   (the machine is busy: {other:.2f} cores used by other processes; measuring anyway)"
            )
            return other
        await asyncio.sleep(1.0)


async def held_scenario(peer: peers.Writ, a: argparse.Namespace, stamp: str) -> dict[str, Any]:
    """16 clients on distinct resources, measured on the same server before and after it
    holds ``a.held`` leases at once."""
    sc = Scenario("held", "16 distinct", 16)
    await settle(peer, a.settle)
    before = await run_scenario(peer, sc, a.duration, a.warmup, a.conns, f"held0-{stamp}")
    log(
        f"   held: empty-store baseline {before['pairs_per_s']:,.0f} pairs/s; filling {a.held:,} leases…"
    )
    fill = await fill_held(peer, a.held, f"fill-{stamp}")
    log(
        f"   held: filled {fill['held']:,} in {fill['fill_s']}s (acquire/s first tenth"
        f" {fill['acquire_per_s_first_tenth']}, last tenth {fill['acquire_per_s_last_tenth']})"
    )
    await settle(peer, a.settle)
    after = await run_scenario(peer, sc, a.duration, a.warmup, a.conns, f"held1-{stamp}")
    ratio = (after["pairs_per_s"] / before["pairs_per_s"]) if before["pairs_per_s"] else None
    log(
        f"   held: with {fill['held']:,} held {after['pairs_per_s']:,.0f} pairs/s"
        f" = {ratio:.0%} of empty"
        if ratio
        else "   held: no figure"
    )
    return {
        "held": fill["held"],
        "before": before,
        "fill": fill,
        "after": after,
        "ratio": round(ratio, 3) if ratio else None,
    }


# ------------------------------------------------------------------------------------ table
def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def table(results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    lines: list[str] = []
    writs = [
        w
        for w in ("writ-sqlite", "writ-postgres", "writ-postgres-x2", "writ-postgres-2shards")
        if results.get(w)
    ]
    for sc in SCENARIOS:
        rows = [(p, r[sc.key]) for p, r in results.items() if sc.key in r]
        if not rows:
            continue
        lines.append(
            f"\n### {sc.title}"
            + (" (writ: blocking FIFO wait; peers: spin-retry)" if sc.contended else "")
        )
        head = ["peer", "pairs/s", "p50 ms", "p99 ms"]
        head += [f"{w}÷peer" for w in writs]
        if sc.contended:
            head += ["handoff p50 ms", "handoff p99 ms", "in arrival order", "tries/grant"]
        head += ["errors", "CPU loader/server/db/other"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        for p, r in rows:
            noisy = (r.get("other_cpu") or 0) > 0.3
            cells = [
                p + (" ⚠" if noisy else ""),
                _f(r["pairs_per_s"]),
                _f(r["pair_p50_ms"], "{:.2f}"),
                _f(r["pair_p99_ms"], "{:.2f}"),
            ]
            for w in writs:
                wr = results[w].get(sc.key, {}).get("pairs_per_s")
                cells.append(
                    _f(wr / r["pairs_per_s"] if wr and r["pairs_per_s"] else None, "{:.2f}×")
                )
            if sc.contended:
                order = _f(r.get("in_arrival_order_pct"), "{:.1f}%")
                au = r.get("writ_audit")
                if au:
                    order += (
                        " (ledger: "
                        + (
                            "FIFO ✓"
                            if au["fifo"]
                            else f"{au['grants_not_to_queue_head']}+{au['grants_past_a_queue']} out of order"
                        )
                        + (
                            ", tokens ↑"
                            if au["tokens_strictly_increasing"]
                            else ", TOKENS NOT INCREASING"
                        )
                        + ")"
                    )
                cells += [
                    _f(r.get("handoff_p50_ms"), "{:.2f}"),
                    _f(r.get("handoff_p99_ms"), "{:.2f}"),
                    order,
                    _f(r.get("attempts_per_grant"), "{:.1f}"),
                ]
            cells += [
                str(r["errors"]),
                "/".join(
                    _f(r.get(k), "{:.2f}")
                    for k in ("loader_cpu", "server_cpu", "db_cpu", "other_cpu")
                ),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for w in writs:
        h = results[w].get("held")
        if h:
            lines.append(
                f"\n### {w}: {h['held']:,} leases held at once (16 clients, distinct resources)"
            )
            lines.append("| store | pairs/s | p50 ms | p99 ms | vs empty |")
            lines.append("|---|---|---|---|---|")
            for label, r in (
                ("empty (same server, before)", h["before"]),
                (f"{h['held']:,} held", h["after"]),
            ):
                lines.append(
                    f"| {label} | {_f(r['pairs_per_s'])} | {_f(r['pair_p50_ms'], '{:.2f}')} | "
                    f"{_f(r['pair_p99_ms'], '{:.2f}')} | "
                    f"{_f(r['pairs_per_s'] / h['before']['pairs_per_s'] if h['before']['pairs_per_s'] else None, '{:.0%}')} |"
                )
            f = h["fill"]
            lines.append(
                f"\nacquire-only while filling: {_f(f['acquire_per_s_first_tenth'])}/s in the first"
                f" tenth, {_f(f['acquire_per_s_last_tenth'])}/s in the last tenth"
            )
    if any(
        (r.get("other_cpu") or 0) > 0.3
        for res in results.values()
        for r in res.values()
        if isinstance(r, dict)
    ):
        lines.append(
            "\n⚠ = other processes used > 0.3 cores during that window (a shared machine): "
            "treat that figure as a lower bound"
        )
    for p, why in skipped.items():
        lines.append(f"\nskipped {p}: {why.splitlines()[0]}")
    return "\n".join(lines).lstrip("\n")


def writ_commit(src: str | None) -> str | None:
    """The commit of the writ being measured: this checkout's HEAD (and '+dirty' when src/
    has local changes), or the COMMIT file beside an exported --writ-src folder."""
    import subprocess

    if src:
        marker = Path(src).resolve().parent / "COMMIT"
        return marker.read_text().strip() if marker.exists() else None
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":")[1].strip()
    except OSError:
        pass
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


async def main(a: argparse.Namespace) -> int:
    peers.HTTP_KIND = a.http
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - setup, outside any measured window
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    doc: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "conns": a.conns,
            "held": a.held,
            "quick": a.quick,
            "ttl_s": peers.TTL_S,
            "spin_backoff_s": list(peers.BACKOFF),
            "loader_loop": loop,
            "http_client": a.http,
            "writ_src": a.writ_src,
            "writ_commit": writ_commit(a.writ_src),
            "profiled": a.profile,
            "path_stamped": a.path,  # the servers ran with bench/path.py's stamps
        },
        "peers": {},
        "results": {},
    }
    skipped: dict[str, str] = {}
    for name in a.peer_list:
        info, res = await bench_peer(name, a, stamp)
        doc["peers"][name] = info
        if "skipped" in info:
            skipped[name] = info["skipped"]
        else:
            doc["results"][name] = res
        (out / f"bench-{stamp}.json").write_text(
            json.dumps(doc, indent=2)
        )  # kept if a later step fails
    text = table(doc["results"], skipped)
    doc["table_markdown"] = text
    print(text)
    js = out / f"bench-{stamp}.json"
    js.write_text(json.dumps(doc, indent=2))
    svg = out / f"bench-{stamp}.svg"
    svg.write_text(chart.render(doc))
    shutil.copyfile(js, out / "latest.json")
    shutil.copyfile(svg, out / "latest.svg")
    log(f"\nwrote {js} and {svg} (also latest.json, latest.svg)")
    return 0


def cli(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        import uvloop

        return uvloop.run(main(a))
    except ImportError:
        return asyncio.run(main(a))


if __name__ == "__main__":
    raise SystemExit(cli())
