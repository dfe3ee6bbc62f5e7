"""``bench.run --path`` (bench/path.py): the stamps a writ server takes of each request's
critical path, and the table made of them. The measured runs are benchmarks, on demand; here
the stamping is driven by a simulated clock, and once through a real server over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import path, peers
from tests.server_fixtures import ADMIN_TOKEN, free_port, gone_within, wait_until

ROOT = Path(__file__).resolve().parent.parent


class _Clock:
    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(path, "time", c)
    monkeypatch.setattr(path, "rows", [])
    monkeypatch.setattr(path, "_open", None)
    monkeypatch.setattr(path, "overlapped", 0)
    return c


def _request(clock: _Clock, route: str, steps: list[tuple[str, int]]) -> None:
    """One request through the stamps: bytes in, the lean path, then ``steps`` (a stamp and
    the µs since the one before)."""
    path._begin()
    clock.ns += 50_000
    path._lean(route)
    for name, us in steps:
        clock.ns += us * 1000
        path._stamp(name)


def test_a_serial_clients_requests_make_one_row_each_and_a_table_of_segments(
    clock: _Clock, tmp_path: Path
) -> None:
    pg = [("store", 20), ("sent", 100), ("back", 400), ("done", 30), ("answer", 25)]
    for _ in range(10):
        _request(clock, "/v1/leases", [*pg, ("out", 15)])
        clock.ns += 100_000  # the loader
        _request(clock, "/v1/leases/{lease_id}/release", [*pg, ("out", 15)])
        clock.ns += 100_000
    path._stamp("out")  # stamps are kept once: a second write is not the answer's
    assert len(path.rows) == 19  # each closed by the next request's beginning
    out = tmp_path / "p.json"
    path.dump(str(out))  # the last one, answered, is kept too (with no next)
    assert len(path.rows) == 20 and path.overlapped == 0 and "next" not in path.rows[-1]
    first = path.rows[0]
    assert first["route"] == "acquire" and first["in"] == 0 and first["lean"] == 50_000
    assert first["out"] - first["in"] == 640_000 and first["next"] - first["out"] == 100_000

    text = path.table(str(out))
    assert "#### acquire: 9 requests, in → out p50 640.0 µs" in text  # past the warm-up
    assert "| sent → back | PostgreSQL round trip | 400.0 | 400.0 | 62 % |" in text
    assert "| out → next | loader + kernel to the next | 100.0 | 100.0 | — |" in text
    assert "store → done" not in text  # on PostgreSQL its parts are shown instead
    assert "#### release: 9 requests" in text


def test_requests_in_the_air_together_are_left_out_and_counted(
    clock: _Clock, tmp_path: Path
) -> None:
    path._begin()
    path._lean("/v1/leases")
    path._lean("/v1/leases")  # a second lean path before the first answered: two clients
    assert path.overlapped == 1 and path._open is None
    path._stamp("out")  # the answers of the overlapped ones stamp nothing
    path._begin()  # a request the lean path does not take (no answer stamped): dropped
    _request(clock, "/v1/leases", [("store", 10), ("done", 300), ("answer", 20), ("out", 10)])
    path._begin()
    assert len(path.rows) == 1 and path.rows[0]["route"] == "acquire"
    out = tmp_path / "p.json"
    path.dump(str(out))
    text = path.table(str(out))
    assert "| store → done | store: decide + commit | 300.0 |" in text  # SQLite: one segment
    assert "(1 requests overlapped another: left out)" in text


def _serve(store: str, out: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A writ server on ``store`` run through bench/path.py, as ``bench.run --path`` runs it."""
    port = free_port()
    wrapper = [sys.executable, "-P", str(ROOT / "bench" / "path.py"), "serve", str(out)]
    proc = subprocess.Popen(
        [*wrapper, sys.executable, "-c", peers.SERVE, store, str(port)],
        env={**os.environ, "WRIT_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, port


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_server_run_through_it_stamps_each_request_and_writes_them_when_stopped(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        store = f"sqlite:///{tmp_path / 'writ.db'}"
    else:
        url = os.environ.get("WRIT_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("WRIT_TEST_POSTGRES_URL is not set")
        schema = f"t_path_{os.getpid()}_{time.monotonic_ns() % 10**8}"
        store = f"{url}{'&' if '?' in url else '?'}schema={schema}"
        request.addfinalizer(lambda: _drop(url, schema))
    out = tmp_path / "path.json"
    proc, port = _serve(store, out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _healthy(base), timeout=30)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with httpx.Client(base_url=base, timeout=10) as c:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            r = c.post("/v1/principals", json={"name": "pathbot", "kind": "agent"}, headers=admin)
            me = {"Authorization": f"Bearer {r.json()['token']}"}
            # past the PostgreSQL store's first half second, when its batches begin to go as
            # one statement each (solo_after): the round trip is stamped from then on
            i, until = 0, time.monotonic() + 1.0
            while i < 12 or time.monotonic() < until:
                i += 1
                r = c.post("/v1/leases", json={"resource": f"db/p{i}", "intent": "t"}, headers=me)
                assert r.status_code == 201, r.text
                lease = r.json()["lease_id"]
                assert c.post(f"/v1/leases/{lease}/release", headers=me).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert gone_within(proc.pid, 30)
        proc.wait()
    got: dict[str, Any] = json.loads(out.read_text())
    rows = [r for r in got["rows"] if r.get("route") in ("acquire", "release")]
    assert [r["route"] for r in rows[-4:]] == ["acquire", "release"] * 2
    for r in rows:
        want = ["in", "lean", "store", "done", "answer", "out"]
        if "sent" in r:  # a batch of one statement (PostgreSQL, once alone)
            want[3:3] = ["sent", "back"]
        assert [r[k] for k in want] == sorted(r[k] for k in want), r  # in path order
    assert any("sent" in r for r in rows) == (backend == "postgres")
    assert "#### acquire" in path.table(str(out))


def _drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
