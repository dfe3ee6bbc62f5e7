"""``writ serve`` as an operator runs it (issue 14): every flag from a WRIT_* variable,
``--check``, JSON logs without secrets, and a graceful SIGTERM with waiters — a real
process, its log and its ledger read afterwards."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import free_port, wait_until
from writ.cli import main
from writ.stores import open_store

ADMIN = "serve-admin-token-7f3e9c"
WEBHOOK_SECRET = "whsec-serve-4c1d"
METRICS_TOKEN = "metrics-token-0123456789"
DOCS = Path(__file__).parents[1] / "docs" / "operations.md"


def serve_command() -> click.Command:
    cmd = main.commands["serve"]
    assert isinstance(cmd, click.Command)
    return cmd


# ----------------------------------------------------------------------------- config
def test_every_serve_flag_has_a_writ_variable_in_the_documented_table() -> None:
    """Each option of `writ serve` (its own and those other modules add) reads a WRIT_*
    variable, and docs/operations.md's table names it with its flag."""
    doc = DOCS.read_text()
    table = doc[doc.index("<!-- serve-env -->") :]
    for p in serve_command().params:
        if not isinstance(p, click.Option) or p.name == "help":
            continue
        assert isinstance(p.envvar, str) and p.envvar.startswith("WRIT_"), p.name
        flag = max(p.opts, key=len)
        assert re.search(rf"\| `{re.escape(flag)}[^|]*\| `{p.envvar}`", table), (flag, p.envvar)


def test_serve_takes_its_flags_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import writ.api.serve
    from writ.net.limits import Limits

    calls: list[Any] = []
    monkeypatch.setattr(writ.api.serve, "run", lambda *a, **kw: calls.append((a, kw)))
    env = {
        "WRIT_STORE": "sqlite:///env.db",
        "WRIT_HOST": "0.0.0.0",
        "WRIT_PORT": "9001",
        "WRIT_LOG_LEVEL": "warning",
        "WRIT_LOG_FORMAT": "json",
        "WRIT_SHUTDOWN_TIMEOUT": "3",
        "WRIT_METRICS": "false",
        "WRIT_METRICS_TOKEN": METRICS_TOKEN,
        "WRIT_MAX_CONNECTIONS": "64",
        "WRIT_HEADER_TIMEOUT": "2.5",
        "WRIT_MAX_WAITS_PER_PRINCIPAL": "16",
        "WRIT_VERIFY_EVERY": "30",
    }
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    assert calls == [
        (
            ("sqlite:///env.db", "0.0.0.0", 9001, None),
            {
                "log_level": "warning",
                "log_format": "json",
                "shutdown_timeout": 3,
                "metrics": False,
                "metrics_token": METRICS_TOKEN,
                "limits": Limits(max_connections=64, header_timeout=2.5),
                "verify_every": 30,
                "max_waits": 16,
            },
        )
    ]
    bad = CliRunner().invoke(main, ["serve"], env={"WRIT_LOG_FORMAT": "xml"})
    assert bad.exit_code == 2 and "xml" in bad.output
    for waits in ("0", "-1", "true", "1.5"):  # a count of requests, at least one
        bad = CliRunner().invoke(main, ["serve", "--max-waits-per-principal", waits])
        assert bad.exit_code == 2 and "--max-waits-per-principal" in bad.output, bad.output
    for share in ("-1", "true", "1.5", "nan"):  # a count of connections, 0 for no cap
        bad = CliRunner().invoke(main, ["serve", "--max-connections-per-client", share])
        assert bad.exit_code == 2 and "--max-connections-per-client" in bad.output, bad.output
    for flag in ("--send-timeout", "--header-timeout", "--body-timeout", "--keepalive-timeout"):
        for seconds in ("nan", "0", "-1", "soon"):  # nan passed every range and was a traceback
            bad = CliRunner().invoke(main, ["serve", flag, seconds])
            assert bad.exit_code == 2 and flag in bad.output, (flag, seconds, bad.output)
    assert calls == [calls[0]]  # none of them served


def test_serve_check_passes_a_good_configuration(tmp_path: Path) -> None:
    policy = tmp_path / "writ.toml"
    policy.write_text('default_override_queue = "ops"\n')
    result = CliRunner().invoke(
        main,
        ["serve", "--check", "--policy", str(policy), "--port", str(free_port())],
        env={"WRIT_STORE": f"sqlite:///{tmp_path}/w.db"},
    )
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_serve_check_names_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken policy, an unreachable store, a port in use, a short metrics token and an
    unsupported trace exporter: exit 1, one line each, nothing served."""
    policy = tmp_path / "writ.toml"
    policy.write_text("rollback_base_url = 'ftp://x'\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    dead = free_port()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    try:
        result = CliRunner().invoke(
            main,
            [
                "serve",
                "--check",
                "--policy",
                str(policy),
                "--port",
                str(taken.getsockname()[1]),
                "--metrics-token",
                "short",
                "--store",
                f"postgresql://writ:pw-not-shown@127.0.0.1:{dead}/nowhere",
            ],
        )
    finally:
        taken.close()
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    warned = [line for line in lines if ": warning: " in line]
    lines = [line for line in lines if ": warning: " not in line]
    assert ["password" in warned[0], "metrics token" in warned[1], len(warned)] == [1, 1, 2]
    assert [line.split(":")[1].strip().split()[0] for line in lines] == [
        "policy",
        "metrics",
        "listen",
        "tracing",
        "store",
    ], lines
    assert "rollback_base_url" in lines[0] and "zipkin" in lines[3]
    assert "pw-not-shown" not in result.output


def test_serve_check_refuses_the_workers_serving_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--workers on SQLite, or with --checkpoint-every, is refused by --check as by serving:
    --check said ok, and the same flags then failed to serve."""
    import writ.api.app

    monkeypatch.setattr(writ.api.app, "EXTENSIONS", [])  # --checkpoint-every installs one
    sqlite = f"sqlite:///{tmp_path}/w.db"
    key = tmp_path / "cp.key"
    assert CliRunner().invoke(main, ["audit", "keygen", "--out", str(key)]).exit_code == 0
    port = str(free_port())
    cases = [
        (["--workers", "2"], sqlite, "needs a PostgreSQL store"),
        (
            ["--workers", "2", "--checkpoint-every", "5", "--checkpoint-key", str(key)],
            "postgresql://writ@127.0.0.1:1/nowhere",
            "--checkpoint-every",
        ),
    ]
    for flags, store, says in cases:
        result = CliRunner().invoke(
            main, ["serve", "--check", "--port", port, "--store", store, *flags]
        )
        assert result.exit_code == 1, result.output
        assert "writ serve --check: workers: --workers 2 " in result.stderr, result.stderr
        assert says in result.stderr
    ok = CliRunner().invoke(main, ["serve", "--check", "--port", port, "--store", sqlite])
    assert ok.exit_code == 0, ok.output


def test_serve_check_names_a_bad_checkpoint_key_or_relay_among_the_other_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--check says every problem as one of its lines (operations.md): a missing checkpoint
    key, or a relay directory open to others, was a lone 'writ: invalid: ...' that hid the
    rest (here a short metrics token)."""
    import writ.api.app

    monkeypatch.setattr(writ.api.app, "EXTENSIONS", [])
    monkeypatch.setenv("WRIT_METRICS_TOKEN", "short")
    sqlite = f"sqlite:///{tmp_path}/w.db"
    open_dir = tmp_path / "relay"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    cases = [
        (
            ["--checkpoint-every", "5", "--checkpoint-key", str(tmp_path / "none.key")],
            "checkpoint key: ",
        ),
        (["--relay", str(open_dir)], "relay: "),
    ]
    for flags, says in cases:
        result = CliRunner().invoke(
            main, ["serve", "--check", "--port", str(free_port()), "--store", sqlite, *flags]
        )
        assert result.exit_code == 1, result.output
        lines = result.stderr.splitlines()
        assert any(l.startswith(f"writ serve --check: {says}") for l in lines), lines
        assert "writ serve --check: metrics token: use at least 16 characters" in lines, lines


# ----------------------------------------------------------------------------- a process
class Writ:
    """`writ serve` in a child process, configured by environment variables."""

    def __init__(self, tmp: Path, store_url: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store_url = store_url or f"sqlite:///{tmp / 'writ.db'}"
        self.log = tmp / "serve.log"
        self.env = {
            **os.environ,
            "WRIT_ADMIN_TOKEN": ADMIN,
            "WRIT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WRIT_STORE": self.store_url,
            "WRIT_PORT": str(self.port),
            "WRIT_LOG_FORMAT": "json",
            "WRIT_METRICS_TOKEN": METRICS_TOKEN,
            **env,
        }
        code = "import sys; from writ.cli import main; sys.argv[0] = 'writ'; main()"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, "serve"], env=self.env, stdout=out, stderr=out
            )
        wait_until(self._live, timeout=30)

    def _live(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(self.url + "/livez", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str = ADMIN) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def agent(self, name: str) -> str:
        with self.client() as c:
            r = c.post("/v1/principals", json={"name": name, "kind": "agent"})
            assert r.status_code == 201, r.text
            token: str = r.json()["token"]
            return token

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def writ_process(tmp_path: Path) -> Iterator[Writ]:
    w = Writ(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def writ_on_each_store(tmp_path: Path, store_url: str) -> Iterator[Writ]:
    """`writ serve` on SQLite and on PostgreSQL (a fresh schema)."""
    w = Writ(tmp_path, store_url)
    yield w
    w.stop()


def _raw_long_poll(
    url: str, token: str, path: str
) -> tuple[socket.socket, threading.Thread, dict[str, Any]]:
    """Send a GET on a raw socket (so it has left this process when we return) and read
    its answer in a thread."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: writ\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    out: dict[str, Any] = {}

    def read() -> None:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        out["raw"] = data.decode()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return s, t, out


def test_sigterm_drains_waiters_with_503_and_leaves_nothing_half_done(
    writ_on_each_store: Writ,
) -> None:
    """A queued acquire and an events long-poll are waiting when SIGTERM arrives: both get
    503 with Retry-After at once, the acquire leaves the queue with a row of its own, the
    process exits cleanly, the ledger verifies and no waiter is left in the store. The JSON
    log has a line per request and per decision, and not one secret."""
    w = writ_on_each_store
    holder, waiter, poller = w.agent("holder"), w.agent("waiter"), w.agent("poller")
    with w.client(holder) as c:
        held = c.post("/v1/leases", json={"resource": "prod/db", "intent": "hold", "ttl_s": 120})
        assert held.status_code == 201
        refused = c.post("/v1/leases", json={"resource": "prod/db/x", "intent": "again"})
        assert refused.status_code == 409 and int(refused.headers["retry-after"]) >= 100
    sock, reader, polled = _raw_long_poll(w.url, poller, "/v1/events?resource=quiet&wait_s=120")
    answer: dict[str, Any] = {}

    def queued_acquire() -> None:
        with w.client(waiter) as c:
            r = c.post("/v1/leases", json={"resource": "prod/db", "intent": "wait", "wait_s": 120})
            answer.update(status=r.status_code, headers=dict(r.headers), body=r.json())

    t = threading.Thread(target=queued_acquire, daemon=True)
    t.start()

    def queued() -> bool:
        with w.client() as c:
            rows = c.get("/v1/audit", params={"resource": "prod"}).json()["rows"]
        return any(r["event"] == "lease.queued" and r["agent_id"] == "waiter" for r in rows)

    wait_until(queued, timeout=20)
    started = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    t.join(20)
    reader.join(20)
    sock.close()
    assert answer["status"] == 503, answer
    assert answer["headers"]["retry-after"] == "1"
    assert answer["body"]["error"]["code"] == "unavailable"
    assert "shutting down" in answer["body"]["error"]["message"]
    head = polled["raw"].split("\r\n\r\n", 1)[0]
    assert head.startswith("HTTP/1.1 503") and "retry-after: 1" in head.lower(), head
    assert w.proc.wait(20) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10  # well inside --shutdown-timeout's default

    async def after() -> tuple[Any, Any, list[dict[str, Any]]]:
        store = open_store(w.store_url)
        await store.open()
        try:
            gauges = await store.read(lambda tx: tx.gauges())
            from writ.engine import Engine

            e = Engine(store)
            ok = await e.verify()
            rows = (await e.audit(0, 10_000))["rows"]
            return gauges, ok, rows
        finally:
            await store.close()

    (held_now, waiting), verification, rows = asyncio.run(after())
    assert waiting == 0 and held_now == 1  # the holder's lease stands; no waiter is left
    assert verification.ok
    mine = [r for r in rows if r["agent_id"] == "waiter"]
    assert [r["event"] for r in mine] == ["lease.queued", "lease.denied"]
    assert "'wait': its server shut down before a grant" in mine[1]["notes"]  # not its caller

    # the JSON log: a line per request and per decision, no secrets
    lines = w.lines()
    access = [x for x in lines if x.get("logger") == "writ.access"]
    decisions = [x for x in lines if x.get("logger") == "writ.decision"]
    grant = next(x for x in access if x["route"] == "/v1/leases" and x["status"] == 201)
    assert grant["principal"] == "holder" and grant["resource"] == "prod/db"
    assert grant["lease_id"] == held.json()["lease_id"]
    assert grant["fencing_token"] == held.json()["fencing_token"]
    assert grant["outcome"] == "ok" and grant["request_id"]
    refusal = next(x for x in access if x["status"] == 409)
    assert refusal["outcome"] == "held" and refusal["principal"] == "holder"
    granted = next(x for x in decisions if x["event"] == "lease.granted")
    assert granted["request_id"] == grant["request_id"]
    assert granted["fencing_token"] == held.json()["fencing_token"]
    assert granted["lock_key"] == held.json()["lock_key"]
    assert any(x["event"] == "lease.denied" and x["principal"] == "waiter" for x in decisions)
    assert any(x["status"] == 503 and x["principal"] == "waiter" for x in access)
    text = w.log.read_text()
    for secret in (ADMIN, WEBHOOK_SECRET, METRICS_TOKEN, holder, waiter, poller):
        assert secret not in text


def test_metrics_over_a_real_socket_need_the_token(writ_process: Writ) -> None:
    w = writ_process
    assert httpx.get(w.url + "/metrics").status_code == 401
    r = httpx.get(w.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "writ_build_info" in r.text
    assert httpx.get(w.url + "/readyz").json() == {"ok": True}
    assert METRICS_TOKEN not in w.log.read_text()


def test_a_started_server_settles_its_heap_once(writ_process: Writ) -> None:
    """``writ serve`` freezes what it built at startup and raises the young generation's
    threshold (writ.api.lifecycle.settle_heap), once, after its store opened; it still
    serves."""
    w = writ_process
    with w.client() as c:
        assert c.get("/v1/health").status_code == 200
    settled = [x for x in w.lines() if str(x.get("message", "")).startswith("heap settled")]
    assert len(settled) == 1, w.log.read_text()
    frozen = int(re.search(r"(\d+) objects", settled[0]["message"]).group(1))  # type: ignore[union-attr]
    assert frozen > 10_000  # modules, routes, schemas: the bulk of a started server's heap


async def test_only_an_app_that_serves_a_process_settles_the_heap(tmp_path: Path) -> None:
    """``create_app(settle=True)`` (``writ serve``, each ``--workers`` process) freezes the
    heap and sets GC_THRESHOLDS once its lifespan started; an app built as a library (tests,
    an embedding program) leaves the host process's collector as it found it."""
    from writ.api.app import create_app
    from writ.api.lifecycle import GC_THRESHOLDS
    from writ.engine import Engine

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert before != GC_THRESHOLDS
    try:
        app = create_app(Engine(open_store(f"sqlite:///{tmp_path / 'lib.db'}")))
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
        app = create_app(Engine(open_store(f"sqlite:///{tmp_path / 'srv.db'}")), settle=True)
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_log_lines_never_carry_a_known_secret() -> None:
    """The scrub runs over the finished line: known secrets (also JSON-escaped), bearer
    tokens and PagerDuty routing keys become [redacted], whatever field carried them."""
    import logging

    from writ.telemetry.logs import ConsoleFormatter, JsonFormatter, Scrub, Scrubbed

    scrub = Scrub(['s3cr"et-value', WEBHOOK_SECRET])
    record = logging.LogRecord(
        "writ.access", logging.INFO, __file__, 1, "called with Bearer abc.def-123", None, None
    )
    record.writ = {  # type: ignore[attr-defined]
        "notes": f'{WEBHOOK_SECRET} and s3cr"et-value via pagerduty:R0UT1NGKEY0123',
        "status": 201,
    }
    for inner in (JsonFormatter(), ConsoleFormatter()):
        line = Scrubbed(inner, scrub).format(record)
        for leaked in (WEBHOOK_SECRET, "s3cr", "abc.def-123", "R0UT1NGKEY0123"):
            assert leaked not in line, (leaked, line)
        assert line.count("[redacted]") == 4
    json.loads(Scrubbed(JsonFormatter(), scrub).format(record))  # still one JSON object


def test_console_lines_cannot_be_forged_by_a_path() -> None:
    """A path with an encoded newline stays on its one console line (escaped)."""
    import logging

    from writ.telemetry.logs import ConsoleFormatter

    record = logging.LogRecord("writ.access", logging.INFO, __file__, 1, "GET x 404", None, None)
    record.writ = {"path": "/nope\n2026-01-01T00:00:00Z INFO writ.access: forged"}  # type: ignore[attr-defined]
    line = ConsoleFormatter().format(record)
    assert "\n" not in line and "\\x0a" in line


def test_console_lines_show_c1_and_bidi_characters_as_escapes() -> None:
    """A C1 control (U+009B, a one-byte CSI) or a bidi override in a path, a message or a
    row's notes reaches the terminal as an escape, never raw."""
    import logging

    from writ.telemetry.logs import ConsoleFormatter

    hostile = "x\u009b2J\u202egnp.exe\u2028\u200b\x7f"
    record = logging.LogRecord("writ.decision", logging.INFO, __file__, 1, hostile, None, None)
    record.writ = {"path": "/v1/" + hostile, "notes": hostile}  # type: ignore[attr-defined]
    line = ConsoleFormatter().format(record)
    for raw in "\u009b\u202e\u2028\u200b\x7f":
        assert raw not in line, f"U+{ord(raw):04X}"
    assert line.count("x\\x9b2J\\u202egnp.exe\\u2028\\u200b\\x7f") == 3
