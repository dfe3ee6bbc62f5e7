"""The systems under test. Each peer starts its own server on loopback (in a temp folder),
and speaks its own lock protocol to the loader through one small interface:

    await peer.start(tmp)            # start the server; raise Skip(why) if it cannot run here
    await peer.open(n_clients, conns) # connect n logical clients over at most `conns` connections
    g = await peer.acquire(i, resource, wait)   # block until client i holds `resource`
    await peer.release(i, g)
    await peer.close(); await peer.stop()

``wait`` is True in the contended scenario: writ then uses its blocking FIFO wait
(``POST /v1/leases`` with ``wait_s``); the peers have no queue, so they spin-retry with a
small jittered backoff (:data:`BACKOFF`). Every acquire returns a :class:`Grant` with the
number of attempts it took and, where the system has one, a fencing token.

A peer that is not installed or cannot start is skipped with a message naming what is
missing — never faked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    from bench.http import HttpxHTTP, LeanHTTP

ADMIN_TOKEN = "bench-admin-" + os.urandom(8).hex()
TTL_S = 30  # every system grants the same lease length
BACKOFF = (0.001, 0.008)  # spin-retry backoff: first sleep, cap (doubling, full jitter)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class Skip(Exception):
    """This peer cannot run on this machine; the message says exactly why."""


@dataclass(slots=True)
class Grant:
    key: Any  # what release needs (lease id, etcd lease id, redis value, ...)
    token: int | None = None  # fencing token (writ) or revision (etcd)
    attempts: int = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def backoff(attempt: int) -> None:
    lo, cap = BACKOFF
    await asyncio.sleep(random.uniform(0, min(cap, lo * (2 ** min(attempt, 10)))) + lo / 2)


def cpu_seconds(pids: list[int]) -> float | None:
    """User+system CPU seconds of these processes (all their threads), from /proc."""
    if not pids:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


# a writ server as the bench runs it: python -c SERVE STORE_URL PORT [name=value ...]
SERVE = (
    "import sys; from writ.server import run; "
    "run(sys.argv[1], '127.0.0.1', int(sys.argv[2]), log_level='warning', "
    "**dict(a.split('=', 1) for a in sys.argv[3:]))"
)


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on the machine (postmaster, backends, WAL writer, ...)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(stat) as f:
                if f.read().strip() in ("postgres", "postmaster"):
                    pids.append(int(stat.split("/")[2]))
        except OSError:
            continue
    return pids


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return (0.0, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return ((user + nice + system + irq + softirq) / tick, steal / tick)


def _tail(path: Path | None, n: int = 15) -> str:
    if path is None:  # no server was spawned: no log to show
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Peer:
    name = "peer"
    description = ""
    durable = ""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.n = 0

    # -- process management ----------------------------------------------------------
    def server_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def db_pids(self) -> list[int]:
        """The processes of a database this peer's server stands on (metered apart from the
        rest of the machine); none of its own for most."""
        return []

    def _spawn(self, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.log = tmp / f"{self.name}.log"
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        out.close()

    async def _until_ready(self, probe: Any, what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - setup, outside any measured window
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise Skip(f"{what} exited with code {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                await probe()
                return
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.1)
        raise Skip(f"{what} did not answer within {timeout:g}s ({last}):\n{_tail(self.log)}")

    async def stop(self) -> None:
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.terminate()
            try:
                await asyncio.to_thread(p.wait, 15)
            except subprocess.TimeoutExpired:
                p.kill()
                await asyncio.to_thread(p.wait)

    # -- the lock protocol (overridden) ----------------------------------------------
    async def start(self, tmp: Path) -> None:
        raise NotImplementedError

    async def open(self, n_clients: int, conns: int) -> None:
        self.n = n_clients

    async def acquire(self, i: int, resource: str, wait: bool) -> Grant:
        raise NotImplementedError

    async def release(self, i: int, grant: Grant) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"description": self.description, "durable": self.durable}


# ------------------------------------------------------------------------------------ writ
HTTP_KIND = "lean"  # or "httpx": set from --http (bench/http.py)


def _http(conns: int, base_url: str) -> LeanHTTP | HttpxHTTP:
    from bench.http import client

    return client(HTTP_KIND, base_url, conns)


def _json(status: int, body: bytes, what: str, ok: int = 200) -> Any:
    if status != ok:
        raise RuntimeError(f"{what}: {status} {body[:300]!r}")
    return json.loads(body)


async def _get_ok(url: str) -> bytes:
    """One plain GET through a throwaway connection (readiness probes)."""
    from bench.http import LeanHTTP

    base, _, path = url.partition("://")[2].partition("/")
    c = LeanHTTP("http://" + base, 1)
    try:
        status, body = await asyncio.wait_for(c.request("GET", "/" + path), 2)
    finally:
        await c.aclose()
    if status != 200:
        raise RuntimeError(f"GET {url}: {status}")
    return body


class Writ(Peer):
    """writ over its HTTP protocol, one principal (agent) per client."""

    name = "writ-sqlite"
    description = "writ HTTP, SQLite store (WAL, synchronous=FULL, group commit)"
    durable = "fsync per group commit; audit row per state change"

    def __init__(self, store: str = "sqlite") -> None:
        super().__init__()
        self.store = store
        if store != "sqlite":
            self.name = "writ-postgres"
            self.description = "writ HTTP, PostgreSQL store"
            self.durable = "PostgreSQL commit (synchronous_commit on); audit row per change"
        self.pg_url = DEFAULT_PG_URL
        self.schema = f"bench_writ_{os.getpid()}"
        self.port = 0
        self.http: Any = None
        self.tokens: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._made = 0
        self.server_argv: list[str] = []
        self.store_url = ""
        self.profile: str | None = None  # "py-spy" | None: wrap the server (see run.py)
        self.src: str | None = None  # a src/ folder to import writ from (--writ-src)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, tmp: Path) -> None:
        if self.src is None and importlib.util.find_spec("writ") is None:
            raise Skip("the writ package is not importable: pip install -e '.[dev]' in the repo")
        if self.store == "sqlite":
            self.store_url = f"sqlite:///{(tmp / 'writ.db').resolve()}"  # sqlite:////abs/path
        else:
            if (
                not os.path.exists(os.path.join(self.src, "writ", "stores", "postgres"))  # noqa: ASYNC240 - setup, outside any measured window
                if self.src
                else importlib.util.find_spec("writ.stores.postgres") is None
            ):
                raise Skip("writ's PostgreSQL store (src/writ/stores/postgres/) does not exist yet")
            await _pg_check(self.pg_url)
            sep = "&" if "?" in self.pg_url else "?"
            self.store_url = f"{self.pg_url}{sep}schema={self.schema}"
        self.port = free_port()
        self.server_argv = [sys.executable, "-c", SERVE, self.store_url, str(self.port)]
        self.server_argv += self.run_options(tmp)
        argv = list(self.server_argv)
        if self.profile:
            argv = self.profile_argv(tmp) + argv
        env = {"WRIT_ADMIN_TOKEN": ADMIN_TOKEN}
        if self.src:  # benchmark this source tree's writ, not the installed one
            env["PYTHONPATH"] = os.pathsep.join([self.src, os.environ.get("PYTHONPATH", "")])
        self._spawn(argv, tmp, env)
        await self._until_ready(lambda: _get_ok(f"{self.base}/v1/health"), f"writ ({self.store})")
        self.http = _http(64, self.base)

    def profile_argv(self, tmp: Path) -> list[str]:
        return []

    def db_pids(self) -> list[int]:
        # PostgreSQL's processes: part of what a writ-postgres pair costs the machine, not
        # "other" work on a shared one
        return postgres_pids() if self.store != "sqlite" else []

    def run_options(self, tmp: Path) -> list[str]:
        """More keyword arguments of ``writ.server.run``, as ``name=value``."""
        return []

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        await super().stop()
        if self.store != "sqlite":
            with contextlib.suppress(Exception):
                import psycopg

                async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as c:
                    await c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    async def _principals(self, n: int) -> None:
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        while self._made < n:
            status, body = await self.http.request(
                "POST",
                "/v1/principals",
                {"name": f"bench-agent-{self._made}", "kind": "agent", "vendor": "bench"},
                admin,
            )
            self.tokens.append(_json(status, body, "writ refused a bench principal", 201)["token"])
            self.headers.append({"authorization": f"Bearer {self.tokens[-1]}"})
            self._made += 1

    async def open(self, n_clients: int, conns: int) -> None:
        await super().open(n_clients, conns)
        await self._principals(n_clients)
        await self.http.aclose()
        self.http = _http(conns, self.base)

    def client(self, i: int) -> Any:
        """The HTTP client that client ``i`` talks through."""
        return self.http

    async def acquire(self, i: int, resource: str, wait: bool, ttl_s: float = TTL_S) -> Grant:
        body = {
            "resource": resource,
            "intent": "bench",
            "ttl_s": ttl_s,
            "wait_s": 60 if wait else 0,
        }
        attempts = 0
        while True:
            attempts += 1
            status, raw = await self.client(i).request("POST", "/v1/leases", body, self.headers[i])
            if status == 201:
                d = json.loads(raw)
                return Grant(d["lease_id"], d["fencing_token"], attempts)
            if status == 409 and attempts < 1000:  # held (a wait that ran out)
                await backoff(attempts)
                continue
            raise RuntimeError(f"writ acquire: {status} {raw[:300]!r}")

    async def release(self, i: int, grant: Grant) -> None:
        status, raw = await self.client(i).request(
            "POST", f"/v1/leases/{grant.key}/release", None, self.headers[i]
        )
        if status != 200:
            raise RuntimeError(f"writ release: {status} {raw[:300]!r}")

    async def audit(self, resource: str | None, after_seq: int = 0) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        while True:
            params: dict[str, Any] = {"after_seq": after_seq, "limit": 10_000}
            if resource:
                params["resource"] = resource
            status, raw = await self.http.request(
                "GET", "/v1/audit?" + urlencode(params), None, admin
            )
            d = _json(status, raw, "writ audit")
            rows += d["rows"]
            if not d["rows"]:
                return rows
            after_seq = d["next_after_seq"]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "store_url": self.store_url.split("?")[0].rsplit("/", 1)[-1]}


# ------------------------------------------------------------------------------------ etcd
def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Etcd(Peer):
    """etcd v3 through its gRPC-gateway JSON API, over the same HTTP client as writ:
    acquire = lease grant + txn(create_revision == 0 → put with lease), retried while held;
    release = deleterange + lease revoke."""

    name = "etcd"
    description = "etcd (JSON gateway): lease grant + txn create-if-absent; deleterange + revoke"
    durable = "raft WAL fsync per commit (single member)"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.http: Any = None
        self.version = ""

    def _base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, tmp: Path) -> None:
        exe = shutil.which("etcd")
        if exe is None:
            raise Skip(
                "etcd is not installed: apt-get install -y etcd-server (Debian; binary 'etcd')"
            )
        self.port, peer = free_port(), free_port()
        data = tmp / "etcd-data"
        self._spawn(
            [
                exe,
                "--name",
                "bench",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"bench=http://127.0.0.1:{peer}",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ],
            tmp,
            {"ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")},
        )

        async def probe() -> None:
            self.version = json.loads(await _get_ok(f"{self._base()}/version")).get(
                "etcdserver", ""
            )
            c = _http(1, self._base())
            try:
                _json(*await c.request("POST", "/v3/kv/range", {"key": _b64("x")}), "etcd range")
            finally:
                await c.aclose()

        await self._until_ready(probe, "etcd")

    async def open(self, n_clients: int, conns: int) -> None:
        await super().open(n_clients, conns)
        if self.http is not None:
            await self.http.aclose()
        self.http = _http(conns, self._base())

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = await self.http.request("POST", path, body)
        out: dict[str, Any] = _json(status, raw, f"etcd {path}")
        return out

    async def acquire(self, i: int, resource: str, wait: bool) -> Grant:
        lease = (await self._post("/v3/lease/grant", {"TTL": TTL_S}))["ID"]
        key = _b64(resource)
        txn = {
            "compare": [{"target": "CREATE", "key": key, "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": _b64(f"c{i}"), "lease": lease}}],
        }
        attempts = 0
        while True:
            attempts += 1
            d = await self._post("/v3/kv/txn", txn)
            if d.get("succeeded"):
                return Grant((key, lease), int(d["header"]["revision"]), attempts)
            await backoff(attempts)

    async def release(self, i: int, grant: Grant) -> None:
        key, lease = grant.key
        await self._post("/v3/kv/deleterange", {"key": key})
        await self._post("/v3/lease/revoke", {"ID": lease})

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "version": self.version}


# ------------------------------------------------------------------------------------ redis
RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


class Redis(Peer):
    """Redis: SET key val NX PX, release by compare-and-delete Lua (redis-py asyncio)."""

    name = "redis"
    description = "Redis: SET NX PX; compare-and-delete Lua release"
    durable = "in memory only (--save '' --appendonly no): a crash loses every lock"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.r: Any = None
        self.script: Any = None
        self.version = ""

    async def start(self, tmp: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise Skip("redis-server is not installed: apt-get install -y redis-server")
        if importlib.util.find_spec("redis") is None:
            raise Skip(
                "the redis Python client is missing: pip install -e '.[dev]' (or pip install redis)"
            )
        self.port = free_port()
        self._spawn(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
                "--protected-mode",
                "yes",
            ],
            tmp,
        )
        import redis.asyncio as aioredis

        async def probe() -> None:
            c = aioredis.Redis(host="127.0.0.1", port=self.port)
            try:
                await c.ping()
                self.version = (await c.info("server"))["redis_version"]
            finally:
                await c.aclose()

        await self._until_ready(probe, "redis-server")

    async def open(self, n_clients: int, conns: int) -> None:
        await super().open(n_clients, conns)
        import redis.asyncio as aioredis

        if self.r is not None:
            await self.r.aclose()
        pool = aioredis.BlockingConnectionPool(
            host="127.0.0.1", port=self.port, max_connections=conns, timeout=120
        )
        self.r = aioredis.Redis(connection_pool=pool)
        self.script = self.r.register_script(RELEASE_LUA)

    async def acquire(self, i: int, resource: str, wait: bool) -> Grant:
        val = f"c{i}-{random.getrandbits(48):x}"
        attempts = 0
        while True:
            attempts += 1
            if await self.r.set(resource, val, nx=True, px=TTL_S * 1000):
                return Grant((resource, val), None, attempts)
            await backoff(attempts)

    async def release(self, i: int, grant: Grant) -> None:
        resource, val = grant.key
        await self.script(keys=[resource], args=[val])

    async def close(self) -> None:
        if self.r is not None:
            await self.r.aclose()
            self.r = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "version": self.version}


# ------------------------------------------------------------------------------- postgres
async def _pg_check(url: str) -> None:
    if importlib.util.find_spec("psycopg") is None:
        raise Skip("psycopg is missing: pip install -e '.[dev]'")
    import psycopg

    try:
        c = await asyncio.wait_for(psycopg.AsyncConnection.connect(url, autocommit=True), 5)
        await c.close()
    except Exception as exc:
        raise Skip(
            f"PostgreSQL at {url} is not reachable ({exc}); start it, or pass --pg-url"
        ) from None


async def _show(c: psycopg.AsyncConnection[TupleRow], name: str) -> str:
    """The server's value of one setting (``SHOW name``), as text."""
    row = await (await c.execute(f"SHOW {name}")).fetchone()
    if row is None:  # SHOW always answers one row
        raise RuntimeError(f"PostgreSQL answered SHOW {name} with no row")
    value: str = row[0]
    return value


class Postgres(Peer):
    """Bare PostgreSQL: INSERT … ON CONFLICT DO NOTHING (a row = a held lock) / DELETE."""

    name = "postgres"
    description = "bare PostgreSQL: INSERT ON CONFLICT DO NOTHING / DELETE (autocommit)"
    durable = "fsync'd WAL per commit (synchronous_commit on)"

    def __init__(self) -> None:
        super().__init__()
        self.url = DEFAULT_PG_URL
        self.schema = f"bench_pg_{os.getpid()}"
        self.pool: Any = None
        self.version = ""
        self._own: dict[str, Any] = {}

    def server_pids(self) -> list[int]:
        """Every postgres process on the machine (backends, WAL writer, ...)."""
        return postgres_pids()

    async def start(self, tmp: Path) -> None:
        try:
            await _pg_check(self.url)
        except Skip as exc:
            self.url = await self._start_own(tmp, str(exc))
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
            self.version = await _show(c, "server_version")
            await c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            await c.execute(f"CREATE SCHEMA {self.schema}")
            await c.execute(
                f"CREATE TABLE {self.schema}.locks (resource text PRIMARY KEY, holder text NOT NULL,"
                " expires_at timestamptz NOT NULL)"
            )
            self.settings = {
                k: await _show(c, k) for k in ("fsync", "synchronous_commit", "max_connections")
            }

    async def _start_own(self, tmp: Path, why: str) -> str:
        """No reachable PostgreSQL: start a private cluster if initdb is installed."""
        initdb = shutil.which("initdb") or next(
            iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None
        )
        if initdb is None:
            raise Skip(f"{why}; and no initdb to start one (apt-get install -y postgresql)")
        bindir = Path(initdb).parent
        data, port = tmp / "pgdata", free_port()
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            run_as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(tmp, "postgres")
        subprocess.run(  # noqa: ASYNC221 - setup, outside any measured window
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        self._spawn(
            [
                *run_as,
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(tmp),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
            ],
            tmp,
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        await self._until_ready(lambda: _pg_check(url), "private PostgreSQL")
        return url

    async def open(self, n_clients: int, conns: int) -> None:
        await super().open(n_clients, conns)
        from psycopg_pool import AsyncConnectionPool

        if self.pool is not None:
            await self.pool.close()
        self.pool = AsyncConnectionPool(
            self.url,
            min_size=conns,
            max_size=conns,
            open=False,
            kwargs={"autocommit": True},
            timeout=120,
        )
        await self.pool.open(wait=True)
        self.ins = (
            f"INSERT INTO {self.schema}.locks (resource, holder, expires_at)"
            f" VALUES (%s, %s, now() + interval '{TTL_S} seconds') ON CONFLICT DO NOTHING"
        )
        self.dele = f"DELETE FROM {self.schema}.locks WHERE resource = %s AND holder = %s"

    async def acquire(self, i: int, resource: str, wait: bool) -> Grant:
        holder = f"c{i}-{random.getrandbits(48):x}"
        attempts = 0
        while True:
            attempts += 1
            async with self.pool.connection() as c:
                cur = await c.execute(self.ins, (resource, holder), prepare=True)
                ok = cur.rowcount == 1
            if ok:
                return Grant((resource, holder), None, attempts)
            await backoff(attempts)

    async def release(self, i: int, grant: Grant) -> None:
        async with self.pool.connection() as c:
            await c.execute(self.dele, grant.key, prepare=True)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def stop(self) -> None:
        await self.close()
        with contextlib.suppress(Exception):
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
                await c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        await super().stop()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "version": self.version, **getattr(self, "settings", {})}


class WritCluster(Writ):
    """Several ``writ serve`` processes on one PostgreSQL database, client ``i`` talking to
    server ``i % servers``: what scaling out buys, and what it costs in agreement."""

    def __init__(
        self, servers: int = 2, sharded: bool = False, relay: bool = True, handoff: bool = True
    ) -> None:
        super().__init__("postgres")
        self.servers = servers
        self.sharded = sharded
        self.relay = relay and not sharded
        self.handoff = handoff and self.relay
        self.name = (
            f"writ-postgres-{servers}shards"
            if sharded
            else f"writ-postgres-x{servers}"
            + ("" if not relay else "" if handoff else "-relayed")
            + ("" if relay else "-direct")
        )
        self.description = (
            f"writ HTTP, {servers} servers on one PostgreSQL, each its own store (schema): "
            "a shard per server, client i on shard i % n"
            if sharded
            else f"writ HTTP, {servers} servers on one PostgreSQL database, "
            + (
                "the others handing their connections to one writer (--relay, the default "
                "with --workers)"
                if self.handoff
                else "relaying lease writes to one writer (--relay --no-handoff)"
                if relay
                else "each writing itself (--relay off)"
            )
        )
        self.others: list[tuple[subprocess.Popen[bytes], int]] = []
        self.https: list[Any] = []

    async def start(self, tmp: Path) -> None:
        await super().start(tmp)
        assert self.proc is not None
        first = self.proc
        for n in range(1, self.servers):
            port = free_port()
            store_url = self.store_url
            if self.sharded:
                store_url = self.store_url.replace(self.schema, f"{self.schema}_s{n}")
            argv = [*self.server_argv[:3], store_url, str(port), *self.server_argv[5:]]
            env = {"WRIT_ADMIN_TOKEN": ADMIN_TOKEN}
            if self.src:
                env["PYTHONPATH"] = os.pathsep.join([self.src, os.environ.get("PYTHONPATH", "")])
            where = tmp / f"server{n + 1}"  # its own log and working directory
            where.mkdir(exist_ok=True)
            self._spawn(argv, where, env)
            proc, self.proc = self.proc, first
            assert proc is not None
            self.others.append((proc, port))
            url = f"http://127.0.0.1:{port}/v1/health"
            await self._until_ready(lambda url=url: _get_ok(url), f"writ server {n + 1}")

    def run_options(self, tmp: Path) -> list[str]:
        if not self.relay:
            return []
        where = tmp / "relay"
        where.mkdir(mode=0o700, exist_ok=True)
        # writ.server.run's keyword arguments arrive as text: an empty one is false
        return [f"relay={where}"] + ([] if self.handoff else ["handoff="])

    def server_pids(self) -> list[int]:
        return super().server_pids() + [p.pid for p, _ in self.others]

    async def open(self, n_clients: int, conns: int) -> None:
        per = max(1, conns // self.servers)
        for h in self.https[1:]:  # sized per scenario: a waiting request holds its connection
            await h.aclose()
        if self.sharded:
            # each shard has its own principals: client i is made on shard i % n
            await self.http.aclose()
            self.http = _http(per, self.base)
            self.https = [self.http] + [
                _http(per, f"http://127.0.0.1:{port}") for _, port in self.others
            ]
            first = self.http
            while self._made < n_clients:
                self.http = self.https[self._made % self.servers]
                await Writ._principals(self, self._made + 1)
            self.http = first
            self.n = n_clients
            return
        await super().open(n_clients, conns)
        self.https = [self.http] + [
            _http(per, f"http://127.0.0.1:{port}") for _, port in self.others
        ]

    def client(self, i: int) -> Any:
        return self.https[i % self.servers]

    async def close(self) -> None:
        for h in self.https[1:]:
            await h.aclose()
        self.https = []
        await super().close()

    async def stop(self) -> None:
        if self.sharded:
            with contextlib.suppress(Exception):
                import psycopg

                async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as c:
                    for n in range(1, self.servers):
                        await c.execute(f"DROP SCHEMA IF EXISTS {self.schema}_s{n} CASCADE")
        others, self.others = self.others, []
        for p, _ in others:
            if p.poll() is None:
                p.terminate()
                try:
                    await asyncio.to_thread(p.wait, 15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    await asyncio.to_thread(p.wait)
        await super().stop()


def make(name: str) -> Peer:
    return {
        "writ-sqlite": lambda: Writ("sqlite"),
        "writ-postgres": lambda: Writ("postgres"),
        "writ-postgres-x2": lambda: WritCluster(2),
        "writ-postgres-x2-relayed": lambda: WritCluster(2, handoff=False),
        "writ-postgres-x2-direct": lambda: WritCluster(2, relay=False),
        "writ-postgres-2shards": lambda: WritCluster(2, sharded=True),
        "etcd": Etcd,
        "redis": Redis,
        "postgres": Postgres,
    }[name]()


ALL = [
    "writ-sqlite",
    "writ-postgres",
    "writ-postgres-x2",
    "writ-postgres-x2-relayed",
    "writ-postgres-x2-direct",
    "writ-postgres-2shards",
    "etcd",
    "redis",
    "postgres",
]
