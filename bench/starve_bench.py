"""``python -m bench.starve_bench`` — one client must not starve the rest.

Starts a real ``writ serve`` on a SQLite ledger of ``--rows`` audit rows (built with
:func:`bench.ledger_bench.build`, ``--resources`` resources under ``fleet/``), and an honest
agent that does acquire+release of its own resource (``honest/r``) over one keep-alive
connection, as fast as it can. Its pairs/s and pair latency (p50, p99, max) are measured for
``--seconds``, first with nobody else there (``baseline``) and then under each attack in turn:

* ``pipeline``: one raw connection sends 8 MiB of pipelined ``GET /livez`` (no token) and
  reads the answers; again on the same connection once they are all read, or on a new one
  when the server closes it;
* ``audit-prefix`` / ``audit-since``: two loops of ``GET /v1/audit?resource=fleet&limit=1``
  / ``GET /v1/audit?resource=fleet&since=<a minute into the ledger>&limit=1`` (admin token);
* ``leases-prefix`` / ``leases-holder``: two loops of ``GET /v1/leases?resource=fleet&limit=1``
  / ``GET /v1/leases?holder=nobody&limit=1``;
* ``events-polls``: ten long polls ``GET /v1/events?resource=fleet&after_seq=<head>&wait_s=300``
  with ``limit`` 1..10 (ten distinct questions), held open: each honest commit re-runs them;
* ``waiters``: one principal holds ``atk/r`` with ``ttl_s=1``, never renewed, and queues
  ``--waiters`` acquires of it (``wait_s=300``, ``ttl_s=1``) behind, each on a connection of
  its own, each queued again once granted.

Each row gets a server of its own on a fresh copy of the ledger (so no attack leaves memory
or waiters to the next), started with ``--max-connections 8192``: a quarter of it, 2,048, is
the per-principal wait cap and the per-address connection cap, above the 1,000 waiters. The
attacker runs in a process of its own (the honest agent's event loop is not the attacker's);
its window opens once the attack is in place: its first answer read, all its polls sent, or
the server's ``writ_waiters`` gauge showing its queue. A pair still unanswered when the window
closes counts as at least its time so far (``≥`` in the table). "server RSS" is the server's
``VmHWM`` (peak ``VmRSS``) from /proc at the window's end; a server past ``--rss-cap-mib``
ends its window early.

``--writ-src DIR`` runs the same rows against the writ in ``DIR`` (a ``src/`` folder, e.g.
``git archive COMMIT src | tar -x -C /tmp/old`` then ``--writ-src /tmp/old/src``), after this
tree's (never both at once), and prints the two side by side. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import cpu_seconds, free_port, machine_cpu

HERE = Path(__file__).resolve().parent
ADMIN = "bench-admin-" + os.urandom(8).hex()
ATTACKS = (
    "pipeline",
    "audit-prefix",
    "audit-since",
    "leases-prefix",
    "leases-holder",
    "events-polls",
    "waiters",
)
MAX_CONNECTIONS = 8192  # a quarter (2,048) is the per-principal wait cap and per-address cap
PIPELINE_BYTES = 8 << 20
POLLS = 10
WARMUP_PAIRS = 20
SINCE = "2026-05-01T00:01:00Z"  # a minute into bench.ledger_bench's ledger
_PROCS: list[subprocess.Popen[bytes]] = []  # whatever is still running on the way out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- a raw connection
class Conn:
    """One keep-alive HTTP/1.1 connection, requests sent and answers read apart."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def send(self, method: str, path: str, obj: Any = None) -> None:
        if self.w is None or self.w.is_closing():
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        body = b"" if obj is None else json.dumps(obj).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        if obj is not None:
            head += "Content-Type: application/json\r\n"
        self.w.write(head.encode() + b"\r\n" + body)
        await self.w.drain()

    async def answer(self) -> tuple[int, bytes]:
        assert self.r is not None and self.w is not None
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = b""
            while size := int((await self.r.readline()).split(b";")[0], 16):
                body += (await self.r.readexactly(size + 2))[:-2]
            await self.r.readline()
        else:
            body = await self.r.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), body

    async def request(self, method: str, path: str, obj: Any = None) -> tuple[int, bytes]:
        await self.send(method, path, obj)
        return await self.answer()

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


# ------------------------------------------------------------------ the attacks (a process)
async def first(task: asyncio.Task[None], event: asyncio.Event) -> None:
    """Until ``task`` ends or ``event`` is set."""
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


async def pipeline(cfg: dict[str, Any], stats: Counter[str], ready: asyncio.Event) -> None:
    one = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    n = PIPELINE_BYTES // len(one)
    blob = one * n
    while True:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", cfg["port"])
        except OSError as exc:
            stats[f"connect {type(exc).__name__}"] += 1
            continue
        stats["connections"] += 1
        expected, caught_up = [0], asyncio.Event()  # answers owed for what was sent

        async def read(
            r: asyncio.StreamReader = r,
            caught_up: asyncio.Event = caught_up,
            owed: list[int] = expected,
        ) -> None:
            tail = b""
            with contextlib.suppress(OSError):
                while data := await r.read(1 << 16):
                    stats["answers"] += (tail + data).count(b"HTTP/1.1 ")
                    tail = data[-8:]  # shorter than the needle: no answer counted twice
                    ready.set()
                    if stats["answers"] >= owed[0]:
                        caught_up.set()

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                caught_up.clear()
                expected[0] = stats["answers"] + n
                w.write(blob)
                await w.drain()
                stats["8 MiB sends"] += 1
                await first(reader, caught_up)
        except OSError:
            pass
        finally:
            reader.cancel()
            w.close()


async def reads(cfg: dict[str, Any], stats: Counter[str], ready: asyncio.Event) -> None:
    path = {
        "audit-prefix": "/v1/audit?resource=fleet&limit=1",
        "audit-since": f"/v1/audit?resource=fleet&since={SINCE}&limit=1",
        "leases-prefix": "/v1/leases?resource=fleet&limit=1",
        "leases-holder": "/v1/leases?holder=nobody&limit=1",
    }[cfg["attack"]]
    answered: set[int] = set()

    async def loop(i: int) -> None:
        c = Conn(cfg["port"], cfg["admin"])
        while True:
            status, _ = await c.request("GET", path)
            stats[f"reads {status}"] += 1
            answered.add(i)
            if len(answered) == 2:
                ready.set()

    await asyncio.gather(loop(0), loop(1))


async def polls(cfg: dict[str, Any], stats: Counter[str], ready: asyncio.Event) -> None:
    conns = [Conn(cfg["port"], cfg["token"]) for _ in range(POLLS)]
    path = "/v1/events?resource=fleet&after_seq={}&wait_s=300&limit={}"
    for i, c in enumerate(conns):
        await c.send("GET", path.format(cfg["head"], i + 1))
    ready.set()  # all ten written: the server holds them from its next read

    async def held(i: int, c: Conn) -> None:
        while True:  # answered only once a row under fleet comes: then asked again past it
            status, body = await c.answer()
            stats[f"polls answered {status}"] += 1
            after = json.loads(body)["next_after_seq"] if status == 200 else cfg["head"]
            await c.send("GET", path.format(after, i + 1))

    await asyncio.gather(*(held(i, c) for i, c in enumerate(conns)))


async def waiters(cfg: dict[str, Any], stats: Counter[str], ready: asyncio.Event) -> None:
    n, port = cfg["waiters"], cfg["port"]
    hold = {"resource": "atk/r", "intent": "hold", "ttl_s": 1}
    status, body = await Conn(port, cfg["token"]).request("POST", "/v1/leases", hold)
    if status != 201:
        raise RuntimeError(f"the attacker's first acquire: {status} {body[:200]!r}")
    conns = [Conn(port, cfg["token"]) for _ in range(n)]

    async def queued(i: int, c: Conn) -> None:
        ask = {"resource": "atk/r", "intent": f"w{i}", "ttl_s": 1, "wait_s": 300}
        try:
            while True:
                await c.send("POST", "/v1/leases", ask)
                status, _ = await c.answer()
                stats["granted" if status == 201 else f"answered {status}"] += 1
                if status not in (201, 409):  # refused: this waiter stops
                    return
        except (OSError, asyncio.IncompleteReadError) as exc:
            stats[type(exc).__name__] += 1

    tasks = [asyncio.create_task(queued(i, c)) for i, c in enumerate(conns)]
    probe = Conn(port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        _, text = await probe.request("GET", "/metrics")
        queued_now = next(
            (
                float(x.split()[1])
                for x in text.decode().splitlines()
                if x.startswith("writ_waiters ")
            ),
            0.0,
        )
        stats["queued at start"] = int(queued_now)
        if queued_now >= 0.95 * n:
            break
        await asyncio.sleep(0.05)  # a gauge: read it again
    ready.set()
    await asyncio.gather(*tasks)


ATTACK_FNS = {
    "pipeline": pipeline,
    "audit-prefix": reads,
    "audit-since": reads,
    "leases-prefix": reads,
    "leases-holder": reads,
    "events-polls": polls,
    "waiters": waiters,
}


async def attacker() -> None:
    """The attacker process: its settings on stdin's first line; "ready" once the attack is
    in place; its counters as JSON once stdin closes."""
    loop = asyncio.get_running_loop()
    cfg = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    stats: Counter[str] = Counter()
    ready = asyncio.Event()
    task = asyncio.create_task(ATTACK_FNS[cfg["attack"]](cfg, stats, ready))
    await first(task, ready)
    if task.done() and task.exception() is not None:
        print(f"failed: {task.exception()!r}", flush=True)
        return
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "" once the window closed
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    print(json.dumps(dict(stats)), flush=True)


# --------------------------------------------------------------------- the server, the agent
def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def env_for(src: str | None) -> dict[str, str]:
    env = {**os.environ, "WRIT_ADMIN_TOKEN": ADMIN}
    if src:  # this source tree's writ, not the installed one
        env["PYTHONPATH"] = os.pathsep.join([src, str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def build_ledger(path: Path, rows: int, resources: int, src: str | None) -> int:
    """A ledger in the format of the writ that will serve it (its own ``writ.core.ledger``)."""
    code = (
        "import json, sys; from pathlib import Path; from bench.ledger_bench import build; "
        "print(json.dumps(build(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(rows), str(resources)],
        cwd=HERE.parent,
        env=env_for(src),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return int(json.loads(out.stdout.splitlines()[-1])["rows"])


def spawn_server(db: Path, src: str | None, logfile: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``writ serve`` on ``db``, from ``src`` when given; :func:`until_ready` waits for it."""
    port = free_port()
    argv = [sys.executable, "-m", "writ.cli", "serve", "--store", f"sqlite:///{db}"]
    argv += ["--port", str(port), "--log-level", "warning", "--shutdown-timeout", "1"]
    argv += ["--max-connections", str(MAX_CONNECTIONS)]
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv, env=env_for(src), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _PROCS.append(proc)
    return proc, port


async def until_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        c = Conn(port)
        try:
            if (await c.request("GET", "/v1/health"))[0] == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)  # not listening yet
        finally:
            c.close()
    await asyncio.to_thread(stop_proc, proc)
    tail = (await asyncio.to_thread(logfile.read_bytes))[-800:].decode(errors="replace")
    raise SystemExit(f"writ serve did not start (log {logfile}):\n{tail}")


def spawn_attacker(cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    """The attacker, a process of its own: :func:`attacker`."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.starve_bench", "--attacker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=HERE.parent,
        start_new_session=True,
    )
    _PROCS.append(child)
    assert child.stdin is not None
    child.stdin.write(json.dumps(cfg).encode() + b"\n")
    child.stdin.flush()
    return child


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _PROCS:
        _PROCS.remove(proc)


@dataclass
class Row:
    pairs: int = 0
    seconds: float = 0.0
    lat: list[float] = field(default_factory=list)  # ms, each finished pair
    open_ms: float | None = None  # the pair still unanswered when the window closed
    errors: Counter[str] = field(default_factory=Counter)
    rss_mib: float = 0.0
    others: float = 0.0  # cores the machine's other processes used in the window
    notes: list[str] = field(default_factory=list)


async def principal(port: int, name: str) -> str:
    c = Conn(port, ADMIN)
    try:
        body = {"name": name, "kind": "agent", "vendor": "bench"}
        status, raw = await c.request("POST", "/v1/principals", body)
    finally:
        c.close()
    if status != 201:
        raise SystemExit(f"writ refused principal {name}: {status} {raw[:200]!r}")
    return str(json.loads(raw)["token"])


async def honest(
    port: int, token: str, row: Row, pairs: int | None, seconds: float, pid: int, cap_mib: float
) -> None:
    """Acquire+release pairs on one connection: ``pairs`` of them (warm-up, unmeasured), or as
    many as ``seconds`` allow, into ``row``."""
    c = Conn(port, token)
    began: float | None = None

    async def loop() -> None:
        nonlocal began
        ask = {"resource": "honest/r", "intent": "honest work", "ttl_s": 30}
        while pairs is None or row.pairs < pairs:
            began = time.perf_counter()
            try:
                status, raw = await c.request("POST", "/v1/leases", ask)
                if status == 201:
                    lid = json.loads(raw)["lease_id"]
                    status, raw = await c.request("POST", f"/v1/leases/{lid}/release")
                    if status == 200:
                        row.pairs += 1
                        row.lat.append((time.perf_counter() - began) * 1e3)
                        continue
                row.errors[f"{status} {raw[:60].decode(errors='replace')}"] += 1
            except (OSError, asyncio.IncompleteReadError) as exc:
                row.errors[type(exc).__name__] += 1
                c.close()

    async def guard() -> None:  # a server past the RSS cap ends the window
        while True:
            if status_kib(pid, "VmRSS") / 1024 >= cap_mib:
                row.notes.append(f"window ended early: server RSS past {cap_mib:,.0f} MiB")
                return
            await asyncio.sleep(0.1)  # /proc is read, not waited on

    t0 = time.perf_counter()
    work, watch = asyncio.create_task(loop()), asyncio.create_task(guard())
    await asyncio.wait(
        [work, watch], timeout=None if pairs else seconds, return_when=asyncio.FIRST_COMPLETED
    )
    row.seconds = time.perf_counter() - t0
    if not work.done() and began is not None:
        row.open_ms = (time.perf_counter() - began) * 1e3
    for t in (work, watch):
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
    c.close()
    if work.done() and not work.cancelled() and work.exception() is not None:
        row.notes.append(f"the honest agent stopped: {work.exception()!r}")


async def head_now(port: int, after: int) -> int:
    """The ledger's last seq now: the server writes rows of its own once it opens the ledger
    (the leases the ledger left held, expired), and the warm-up wrote more."""
    c = Conn(port, ADMIN)
    try:
        while True:
            status, raw = await c.request("GET", f"/v1/audit?after_seq={after}&limit=10000")
            page = json.loads(raw)
            if status != 200 or not page["rows"]:
                return after
            after = int(page["next_after_seq"])
    finally:
        c.close()


# ------------------------------------------------------------------------------ one row
async def run_row(
    attack: str, src: str | None, ledger: Path, head: int, a: argparse.Namespace, scratch: Path
) -> Row:
    """A server of its own on a fresh copy of the ledger; warm-up; the attack in place; the
    window; everything it started stopped, whatever happens."""
    db = scratch / "row.db"
    await asyncio.to_thread(shutil.copyfile, ledger, db)
    proc, port = await asyncio.to_thread(spawn_server, db, src, scratch / "server.log")
    child: subprocess.Popen[bytes] | None = None
    row = Row()
    try:
        await until_ready(proc, port, scratch / "server.log")
        token = await principal(port, "honest")
        await honest(port, token, Row(), WARMUP_PAIRS, 0.0, proc.pid, a.rss_cap_mib)
        if attack != "baseline":
            cfg = {"attack": attack, "port": port, "admin": ADMIN, "waiters": a.waiters}
            cfg |= {"token": await principal(port, "greedy"), "head": await head_now(port, head)}
            child = await asyncio.to_thread(spawn_attacker, cfg)
            assert child.stdout is not None
            line = (await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 120)).decode()
            if line.strip() != "ready":
                row.notes.append(f"attack not in place: {line.strip() or 'the attacker exited'}")
        pids = [proc.pid, os.getpid()] + ([child.pid] if child else [])
        cpu = [cpu_seconds([p]) or 0.0 for p in pids] + [machine_cpu()[0]]
        await honest(port, token, row, None, a.seconds, proc.pid, a.rss_cap_mib)
        row.rss_mib = status_kib(proc.pid, "VmHWM") / 1024
        now = [cpu_seconds([p]) or 0.0 for p in pids] + [machine_cpu()[0]]
        used = [(b - c) / row.seconds for b, c in zip(now, cpu, strict=True)]
        row.others = max(
            0.0, used[-1] - sum(used[:-1])
        )  # the machine's busy time that was not ours
        said = zip(("server", "agent", "attacker"), used[:-1], strict=False)
        row.notes.append("CPU (cores): " + ", ".join(f"{k} {u:.2f}" for k, u in said))
        row.notes[-1] += f", other processes {row.others:.2f}"
        if child is not None:
            out, _ = await asyncio.to_thread(child.communicate, None, 60)  # stdin closed: it ends
            lines = out.decode().strip().splitlines()
            if lines and lines[-1].startswith("{") and (stats := json.loads(lines[-1])):
                row.notes.append(", ".join(f"{k} {v:,}" for k, v in sorted(stats.items())))
    finally:
        for p in (child, proc):
            if p is not None:
                await asyncio.to_thread(stop_proc, p)
        for suffix in ("", "-wal", "-shm"):
            await asyncio.to_thread(Path(f"{db}{suffix}").unlink, missing_ok=True)
    return row


# ------------------------------------------------------------------------------ the table
def _ms(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def figures(row: Row) -> list[str]:
    """pairs/s, p50, p99, max, RSS: a value at least the unanswered pair's time gets ``≥``."""
    vals = sorted(row.lat + ([row.open_ms] if row.open_ms is not None else []))

    def pct(q: float) -> str:
        if not vals:
            return "–"
        v = vals[max(0, min(len(vals) - 1, math.ceil(q * len(vals)) - 1))]
        return ("≥" if v == row.open_ms else "") + _ms(v)

    rate = row.pairs / row.seconds if row.seconds else 0.0
    busy = " ⚠" if row.others > BUSY else ""
    return [f"{rate:,.0f}{busy}", pct(0.50), pct(0.99), pct(1.0), f"{row.rss_mib:,.0f}"]


BUSY = 0.3  # cores of other processes past which a row is marked: a shared machine
COLUMNS = ("honest pairs/s", "p50 ms", "p99 ms", "max ms", "server RSS MiB (peak)")


def table(results: dict[str, dict[str, Row]]) -> str:
    """One markdown table; with two builds each figure's columns side by side."""
    labels = list(results)
    if len(labels) == 1:
        head = ["attack", *COLUMNS]
    else:
        head = ["attack"] + [f"{c} ({lb})" for c in COLUMNS for lb in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for attack in results[labels[0]]:
        per = [figures(results[lb][attack]) for lb in labels]
        cells = [per[b][i] for i in range(len(COLUMNS)) for b in range(len(labels))]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    notes = []
    if any(r.others > BUSY for rows in results.values() for r in rows.values()):
        notes.append(f"⚠ other processes used more than {BUSY} cores in that window")
    for lb in labels:
        for attack, row in results[lb].items():
            said = row.notes + [f"honest errors: {k} ×{n}" for k, n in row.errors.items()]
            if said:
                notes.append(f"- {lb}, {attack}: " + "; ".join(said))
    return "\n".join(lines + (["", *notes] if notes else []))


# ------------------------------------------------------------------------------ main
def writ_src(arg: str) -> tuple[str, str]:
    """(its label, the folder writ imports from): a src/ folder or the folder that holds one."""
    p = Path(arg).resolve()
    src = p if (p / "writ").is_dir() else p / "src"
    if not (src / "writ" / "__init__.py").exists():
        raise SystemExit(f"--writ-src {arg}: no writ package there (nor in its src/)")
    commit = src.parent / "COMMIT"
    label = commit.read_text().strip() if commit.exists() else f"writ-src {src.parent.name}"
    return label, str(src)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.starve_bench",
        description="The honest agent's acquire+release under each attack.",
    )
    ap.add_argument("--rows", type=int, default=None, help="ledger rows (default 300,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 rows unless --rows")
    ap.add_argument("--resources", type=int, default=200, help="resources in the ledger")
    ap.add_argument("--seconds", type=float, default=5.0, help="each row's window")
    ap.add_argument(
        "--attacks", default=",".join(ATTACKS), help="a comma list of: " + ", ".join(ATTACKS)
    )
    ap.add_argument(
        "--waiters",
        type=int,
        default=1000,
        help="queued acquires (2,048 at most: the server's per-principal cap)",
    )
    ap.add_argument(
        "--writ-src",
        default=None,
        help="a src/ folder (or the folder holding one) to run a second server from, after this tree's",
    )
    ap.add_argument(
        "--rss-cap-mib",
        type=float,
        default=6144,
        help="end a window early once the server's RSS passes this",
    )
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--attacker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.rows = a.rows or (100_000 if a.quick else 300_000)
    a.attacks = [x.strip() for x in a.attacks.split(",") if x.strip()]
    if unknown := [x for x in a.attacks if x not in ATTACKS]:
        ap.error(f"--attacks: unknown {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    if not 1 <= a.waiters <= MAX_CONNECTIONS // 4:
        ap.error(f"--waiters: 1 to {MAX_CONNECTIONS // 4}")
    if a.seconds <= 0 or a.rows < 1000:
        ap.error("--seconds above 0, --rows at least 1,000")
    return a


def run(a: argparse.Namespace) -> dict[str, dict[str, Row]]:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 waiters, each a socket
    builds = [("this tree", None)] + ([writ_src(a.writ_src)] if a.writ_src else [])
    scratch = Path(a.dir or tempfile.mkdtemp(prefix="starve-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Row]] = {}
    try:
        for label, src in builds:  # one after the other, never at once
            ledger = scratch / "ledger.db"
            log(f"{label}: building a ledger of {a.rows:,} rows")
            head = build_ledger(ledger, a.rows, a.resources, src)
            results[label] = {}
            for attack in ["baseline", *a.attacks]:
                log(f"{label}: {attack}")
                results[label][attack] = asyncio.run(run_row(attack, src, ledger, head, a, scratch))
            ledger.unlink()
    finally:
        for p in list(_PROCS):
            stop_proc(p)
        if not a.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.attacker:
        asyncio.run(attacker())
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started, as Ctrl-C does
    try:
        results = run(a)
    except KeyboardInterrupt:  # run() stopped what it started on the way out
        log("interrupted")
        return 130
    print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
