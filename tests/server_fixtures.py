"""A real writ server on a free port, for tests of the client and the CLI.

``live_server`` (session scope) runs ``create_app`` under uvicorn in a background thread over
a temporary SQLite store, with ``admin`` bootstrapped from :data:`ADMIN_TOKEN`. Tests share
it, so each names its own resources and principals (:func:`unique`). ``serve()`` starts a
private one for tests that stop the server on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import random
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

ADMIN_TOKEN = "test-admin-token-live"

__all__ = [
    "ADMIN_TOKEN",
    "LiveServer",
    "add_principals",
    "all_rows",
    "gone_within",
    "hostile",
    "in_background",
    "live_server",
    "run_writ",
    "serve",
    "serve_asgi",
    "unique",
    "verify",
    "wait_until",
]


def gone_within(pid: int, timeout: float) -> bool:
    """Wait (on the kernel's exit notification, a pidfd, not a sleep) up to ``timeout``
    seconds for process ``pid`` to end; whether it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def unique(prefix: str = "t") -> str:
    """A fresh name that is a valid principal name and resource segment."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def in_background(fn: Callable[[], object], delay: float = 0.0) -> Iterator[None]:
    """Run ``fn`` in a thread while the block runs; join it after, re-raising its error."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            if delay:
                time.sleep(delay)
            fn()
        except BaseException as exc:  # handed to the test after the join
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(15)
    if errors:
        raise errors[0]


_PORTS = itertools.count(random.randrange(1 << 16))  # (two sessions at once: apart)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORT_BASE = 10000


def free_port() -> int:
    """A port for a server these tests start, free when asked. Not one ``bind(0)`` picks:
    those come from the kernel's ephemeral range, where any outgoing connection (a client's
    to PostgreSQL, on any xdist worker) may take it before the server binds it (CI saw a
    server fail so: "address already in use"). So each worker counts through a block of its
    own below that range (shared out among the workers), from a random place in it, skipping
    any port a server could not bind (as a server binds: SO_REUSEADDR); the ephemeral way
    only if the blocks would be too small."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    block = (_ephemeral_low() - PORT_BASE) // max(int(workers) if workers.isdigit() else 1, 1)
    base = PORT_BASE + block * (int(worker) if worker.isdigit() else 0)
    if block >= 100:  # (each worker a block of its own, however many workers)
        for _ in range(block):
            port = base + next(_PORTS) % block
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A running server: its URL, its engine, and helpers to make principals."""

    def __init__(self, url: str, engine: Any, store_url: str, stop: Any) -> None:
        self.url = url
        self.engine = engine
        self.store_url = store_url
        self.admin_token = ADMIN_TOKEN
        self.stop = stop  # stop(): shut the server down now (idempotent)

    def client(self, token: str | None = None, **kw: Any) -> Any:
        from writ.client import Client

        return Client(self.url, token if token is not None else self.admin_token, **kw)

    def principal(self, kind: str = "agent", name: str | None = None, **kw: Any) -> tuple[str, str]:
        """Register a principal; returns ``(name, token)``."""
        name = name or unique(kind)
        with self.client() as admin:
            out = admin.add_principal(name, kind, **kw)
        return name, str(out["token"])

    def env(self, token: str | None = None) -> dict[str, str]:
        """``WRIT_URL``/``WRIT_TOKEN`` for a CLI invocation acting as ``token``."""
        return {"WRIT_URL": self.url, "WRIT_TOKEN": token or self.admin_token}


@contextmanager
def serve(
    store_path: Path, policy: Any = None, max_waits: int | None = None
) -> Iterator[LiveServer]:
    """Run a server over the SQLite file ``store_path`` until the block ends; ``max_waits``
    is its ``--max-waits-per-principal``."""
    import uvicorn

    from writ.api.app import create_app
    from writ.api.serve import uvicorn_options
    from writ.engine import Engine
    from writ.stores import open_store

    store_url = f"sqlite:///{store_path}"
    engine = Engine(open_store(store_url), policy)
    port = free_port()
    # as `writ serve` configures it: its protocol, limits and the hot routes' direct answers
    options = uvicorn_options("127.0.0.1", port, "warning")
    app = create_app(engine) if max_waits is None else create_app(engine, max_waits=max_waits)
    config = uvicorn.Config(app, ws="none", lifespan="on", **options)
    server = uvicorn.Server(config)
    saved = os.environ.get("WRIT_ADMIN_TOKEN")
    os.environ["WRIT_ADMIN_TOKEN"] = ADMIN_TOKEN  # read when the engine starts
    thread = threading.Thread(target=server.run, name=f"writ-server-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
    finally:
        if saved is None:
            os.environ.pop("WRIT_ADMIN_TOKEN", None)
        else:
            os.environ["WRIT_ADMIN_TOKEN"] = saved

    def stop() -> None:
        server.should_exit = True
        thread.join(15)

    try:
        yield LiveServer(f"http://127.0.0.1:{port}", engine, store_url, stop)
    finally:
        stop()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the session (client and CLI tests)."""
    with serve(tmp_path_factory.mktemp("live") / "writ.db") as srv:
        yield srv


# ----------------------------------------------------------------------------- a server process
def raise_fd_limit(want: int = 8192) -> None:
    """Raise this process's soft limit on open files towards ``want`` (the hard limit caps)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class ServerProcess:
    """``writ.server.run`` as a child process on a free port (its own event loop, GIL and
    file limit), with ``admin`` bootstrapped from ``admin_token``. It can be stopped
    (SIGTERM), killed (SIGKILL) and started again on the same store and port."""

    def __init__(
        self,
        store_url: str,
        tmp: Path,
        policy: str | None = None,
        admin_token: str = ADMIN_TOKEN,
        run_args: str = "",
    ) -> None:
        self.store_url = store_url
        self.run_args = run_args  # more keyword arguments of run(), as Python source
        self.admin_token = admin_token
        self.log = tmp / f"server-{free_port()}.log"
        self.policy_path: Path | None = None
        if policy is not None:
            self.policy_path = tmp / "writ.toml"
            self.policy_path.write_text(policy)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        policy = str(self.policy_path) if self.policy_path else None
        code = (
            "from writ.server import run; "
            f"run({self.store_url!r}, '127.0.0.1', {self.port}, {policy!r}, log_level='warning'"
            + (f", {self.run_args})" if self.run_args else ")")
        )
        env = {**os.environ, "WRIT_ADMIN_TOKEN": self.admin_token}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_fd_limit,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"server did not answer /v1/health:\n{self.logs()}")

    @property
    def db(self) -> Path:
        """The SQLite file of a ``sqlite:///`` store."""
        assert self.store_url.startswith("sqlite:///"), self.store_url
        return Path(self.store_url[len("sqlite:///") :])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        """Resident memory of the server process, in bytes (``VmRSS``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, a graceful shutdown; returns the exit status (uvicorn re-raises the
        signal once it has shut down, so a clean stop is 0 or -SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def client(self, token: str | None = None) -> httpx.Client:
        auth = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=auth, timeout=10)


@contextlib.contextmanager
def server_process(
    store_url: str, tmp: Path, policy: str | None = None, run_args: str = ""
) -> Iterator[ServerProcess]:
    s = ServerProcess(store_url, tmp, policy, run_args=run_args)
    try:
        yield s.start()
    finally:
        s.stop()


# ---------------------------------------------------------- helpers shared by test modules
def wait_until(predicate: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


@contextmanager
def serve_script(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``scripts/serve`` (the README's first command) on a free port, with ``env`` as its
    whole environment: the process, and what it wrote to stderr until the app started.
    Stopped on leaving."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "serve"
    proc = subprocess.Popen(
        [str(script), "--port", str(free_port())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "Application startup complete" in line:
                break
        yield proc, seen
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"upstream-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "upstream did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextmanager
def run_writ(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``writ ARGS`` as a child process until it prints 'listening on URL'; yield URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "writ.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"writ {args[0]} did not start: {''.join(log)}") from None
            assert line, f"writ {args[0]} exited: {''.join(log)}"
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                break
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(5)


async def add_principals(url: str, kind: str, names: list[str]) -> list[str]:
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as c:
        tokens = []
        for name in names:
            r = await c.post("/v1/principals", json={"name": name, "kind": kind})
            assert r.status_code == 201, r.text
            tokens.append(r.json()["token"])
        return tokens


async def all_rows(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as c:
        after = 0
        while True:
            r = await c.get("/v1/audit", params={"after_seq": after, "limit": 10000})
            assert r.status_code == 200, r.text
            page = r.json()["rows"]
            if not page:
                return rows
            rows += page
            after = page[-1]["seq"]


async def verify(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        r = await c.get("/v1/audit/verify", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@contextlib.asynccontextmanager
async def writ_servers(
    store_url: str,
    n: int,
    tmp: Path,
    policy: str | None = None,
    relay: Path | None = None,
    log_level: str = "warning",
    handoff: bool = True,
) -> AsyncIterator[list[str]]:
    """``n`` ``writ serve`` processes on one store; yields their base URLs. (Async: the
    test's event loop may be running the proxy the servers connect through.) With
    ``relay``, they elect a writer in that directory (``--relay``), and the others hand it
    their connections unless ``handoff`` is False (``--no-handoff``: they keep them and relay
    their lease writes); each server's log is ``tmp/server-<i>.log``."""
    procs: list[asyncio.subprocess.Process] = []
    urls = []
    env = {**os.environ, "WRIT_ADMIN_TOKEN": ADMIN_TOKEN}
    extra: list[str] = []
    if policy is not None:
        (tmp / "writ.toml").write_text(policy)
        extra = ["--policy", str(tmp / "writ.toml")]
    if relay is not None:
        extra += ["--relay", str(relay)]
        if not handoff:
            extra.append("--no-handoff")
    try:
        for i in range(n):
            port = free_port()
            with (tmp / f"server-{i}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-c",
                        "from writ.cli import main; main()",
                        "serve",
                        "--store",
                        store_url,
                        "--port",
                        str(port),
                        "--log-level",
                        log_level,
                        *extra,
                        env=env,
                        stdout=log,
                        stderr=log,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=1) as c:
            for i, (url, p) in enumerate(zip(urls, procs, strict=True)):
                while True:
                    assert p.returncode is None, (tmp / f"server-{i}.log").read_text()[-3000:]
                    with contextlib.suppress(httpx.HTTPError):
                        if (await c.get(f"{url}/v1/health")).status_code == 200:
                            break
                    assert time.monotonic() < deadline, "writ serve did not come up"
                    await asyncio.sleep(0.05)
        yield urls
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):  # a test may have killed it
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except TimeoutError:
                p.kill()
                await p.wait()


@contextlib.asynccontextmanager
async def writ_workers(
    store_url: str, n: int, log_path: Path, *more: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``writ serve --workers n`` (and ``more`` flags) on a port of its own, logging at
    ``info`` to ``log_path``: its base URL and process, once every worker has started. The
    supervisor is stopped after (SIGTERM, unless the test ended it)."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "writ.cli",
            "serve",
            "--store",
            store_url,
            "--port",
            str(port),
            "--workers",
            str(n),
            "--log-level",
            "info",
            *more,
            env={**os.environ, "WRIT_ADMIN_TOKEN": ADMIN_TOKEN},
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while _text(log_path).count("Application startup complete") < n:
            assert proc.returncode is None, _text(log_path)[-3000:]
            assert time.monotonic() < deadline, (
                f"writ serve --workers did not come up in 30 s: {_text(log_path)[-3000:]}"
            )
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


Handler = Callable[[socket.socket, threading.Event], None]


@contextlib.contextmanager
def hostile(handler: Handler) -> Iterator[str]:
    """A server on a free port that reads each request's head and hands the connection to
    ``handler`` (with an event set at teardown); yields its URL."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def serve_one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            handler(conn, stop)

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()
