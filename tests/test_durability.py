"""A real ``writ`` server process, killed and restarted (issue 2, "Done means").

The server runs as its own process (``writ.server.run`` on the embedded SQLite store) on a
free port. It is killed with SIGKILL in the middle of concurrent traffic, restarted on the
same file, and checked over raw HTTP: every acknowledged lease and audit row survived, the
ledger verifies, fencing tokens keep increasing. Then one audit row's bytes are edited in
the database file by hand, and verify names that row.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_fixtures import ServerProcess, in_background, wait_until
from writ.engine import Engine
from writ.stores import open_store

ADMIN = "durability-admin-token"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(f"sqlite:///{tmp_path / 'writ.db'}", tmp_path, admin_token=ADMIN)
    try:
        yield s
    finally:
        s.kill()


def add_agent(c: httpx.Client, name: str) -> str:
    r = c.post("/v1/principals", json={"name": name, "kind": "agent"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def all_rows(c: httpx.Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        r = c.get("/v1/audit", params={"after_seq": after, "limit": 5000})
        assert r.status_code == 200, r.text
        page = r.json()["rows"]
        if not page:
            return rows
        rows += page
        after = page[-1]["seq"]


def offline_verify(db: Path) -> dict[str, Any]:
    """``writ audit verify`` offline: the engine over the store file, no server."""

    async def go() -> dict[str, Any]:
        engine = Engine(open_store(f"sqlite:///{db}"))
        await engine.start(background=False)
        try:
            return (await engine.verify()).to_dict()
        finally:
            await engine.stop()

    return asyncio.run(go())


def test_sigkill_under_load_keeps_every_acknowledged_lease_and_row(server: ServerProcess) -> None:
    """SIGKILL during concurrent acquire/release traffic, then a restart on the same file:
    every acknowledged grant and release is there (lease by id, its audit rows), the
    ledger verifies, and the next fencing token is higher than any before."""
    server.start()
    with server.client() as admin:
        tokens = {f"load-{i}": add_agent(admin, f"load-{i}") for i in range(6)}

    acked: list[dict[str, Any]] = []  # leases whose 201 reached us
    released: set[str] = set()  # lease ids whose release 200 reached us
    lock = threading.Lock()
    stop = threading.Event()

    def worker(name: str, token: str, i: int) -> None:
        with server.client(token) as c:
            n = 0
            while not stop.is_set():
                n += 1
                keep = n % 4 == 0  # held across the kill, on a resource of its own
                resource = f"load/{name}/k{n}" if keep else f"load/shared/r{(i + n) % 3}"
                try:
                    r = c.post(
                        "/v1/leases",
                        json={
                            "resource": resource,
                            "intent": f"{name} #{n}",
                            "ttl_s": 60,
                            "wait_s": 1,
                        },
                    )
                except httpx.TransportError:
                    return
                if r.status_code != 201:
                    assert r.status_code == 409, r.text
                    continue
                lease = r.json()
                with lock:
                    acked.append(lease)
                if keep:
                    continue
                try:
                    r = c.post(f"/v1/leases/{lease['lease_id']}/release")
                except httpx.TransportError:
                    return
                assert r.status_code == 200, r.text
                with lock:
                    released.add(lease["lease_id"])

    seen_rows: dict[int, str] = {}  # audit rows a reader saw before the kill: seq -> hash

    def reader() -> None:
        with server.client() as c:
            after = 0
            while not stop.is_set():
                try:
                    r = c.get("/v1/audit", params={"after_seq": after, "limit": 1000})
                except httpx.TransportError:
                    return
                for row in r.json()["rows"]:
                    seen_rows[row["seq"]] = row["hash"]
                    after = row["seq"]
                time.sleep(0.02)

    threads = [
        threading.Thread(target=worker, args=(n, t, i)) for i, (n, t) in enumerate(tokens.items())
    ]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    # hundreds of leases, some held and some released, and rows the reader saw
    wait_until(lambda: len(acked) >= 200 and released and seen_rows, timeout=30)
    server.kill()  # mid-traffic: requests are in flight
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    print(
        f"acknowledged before SIGKILL: {len(acked)} grants, {len(released)} releases, "
        f"{len(seen_rows)} audit rows read"
    )

    server.start()
    with server.client() as c:
        rows = all_rows(c)
        granted = {r["lock_key"]: r for r in rows if r["event"] == "lease.granted"}
        ended = {r["lock_key"] for r in rows if r["event"] == "lease.released"}
        for lease in acked:
            r = c.get(f"/v1/leases/{lease['lease_id']}")
            assert r.status_code == 200, (lease, r.text)
            got = r.json()
            assert got["fencing_token"] == lease["fencing_token"]
            assert got["holder"] == lease["holder"] and got["resource"] == lease["resource"]
            assert lease["lock_key"] in granted, lease
            assert granted[lease["lock_key"]]["lock_holder"] == lease["holder"]
            if lease["lease_id"] in released:
                assert got["state"] == "released", got
                assert lease["lock_key"] in ended
        # every row anyone read before the kill is there, byte for byte (same hash)
        assert seen_rows and all(rows[seq - 1]["hash"] == h for seq, h in seen_rows.items())
        # and the converse, from the store's side: no lease without its rows (same transaction)
        ends = {
            r["lock_key"]: r["event"]
            for r in rows
            if r["event"] in ("lease.released", "lease.expired", "lease.revoked")
        }
        every = c.get("/v1/leases", params={"resource": "load", "limit": 100_000}).json()["leases"]
        assert len(every) >= len(acked)
        for lease in every:
            assert lease["lock_key"] in granted, lease
            if lease["state"] != "held":
                assert ends.get(lease["lock_key"]) == f"lease.{lease['state']}", lease
        # at most one lease held per resource, as before the kill
        held = c.get("/v1/leases", params={"resource": "load", "state": "held"}).json()["leases"]
        assert len({x["resource"] for x in held}) == len(held)
        v = c.get("/v1/audit/verify").json()
        assert v["ok"] is True and v["first_bad_seq"] is None, v
        assert v["rows"] == len(rows) and v["head"] == rows[-1]["hash"]
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))

        top = max(r["fencing_token"] for r in rows if r["event"] == "lease.granted")
        assert top >= max(x["fencing_token"] for x in acked)
        me = add_agent(c, "after-restart")
        with server.client(me) as mine:
            r = mine.post("/v1/leases", json={"resource": "fresh/after-kill", "intent": "check"})
            assert r.status_code == 201, r.text
            assert r.json()["fencing_token"] > top
    server.kill()
    assert offline_verify(server.db)["ok"] is True


def test_hand_edited_audit_row_is_named_by_verify(server: ServerProcess) -> None:
    """The store refuses UPDATE and DELETE on audit rows; after a row's bytes are changed in
    the database file by hand (server stopped, trigger dropped), the restarted server's
    ``/v1/audit/verify`` reports ok=false with that row's seq, and so does the offline
    verify."""
    server.start()
    with server.client() as admin:
        a = add_agent(admin, "agent-a")
        with server.client(a) as c:
            for i in range(3):
                r = c.post("/v1/leases", json={"resource": f"t/r{i}", "intent": "tamper target"})
                assert r.status_code == 201, r.text
                c.post(f"/v1/leases/{r.json()['lease_id']}/release")
        rows = all_rows(admin)
        assert admin.get("/v1/audit/verify").json()["ok"] is True
    target = next(r for r in rows if r["event"] == "lease.granted" and r["resource"] == "t/r1")
    k = target["seq"]
    assert k < len(rows)  # a row in the middle, not the head
    assert server.stop() in (0, -signal.SIGTERM)  # graceful shutdown on SIGTERM
    assert "Traceback" not in server.logs(), server.logs()

    con = sqlite3.connect(server.db)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE audit SET body = body WHERE seq = ?", (k,))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM audit WHERE seq = ?", (k,))
        con.rollback()
        con.execute("DROP TRIGGER audit_no_update")
        cur = con.execute(
            "UPDATE audit SET body = replace(body, 'tamper target', 'tamper-target') WHERE seq = ?",
            (k,),
        )
        assert cur.rowcount == 1
        con.commit()
    finally:
        con.close()

    server.start()
    with server.client() as admin:
        v = admin.get("/v1/audit/verify").json()
        assert v["ok"] is False, v
        assert v["first_bad_seq"] == k, v
        # the edited row is shown as it now is: the hash no longer matches its bytes
        row = admin.get("/v1/audit", params={"after_seq": k - 1, "limit": 1}).json()["rows"][0]
        assert row["seq"] == k and "tamper-target" in row["notes"]
    server.kill()
    offline = offline_verify(server.db)
    assert offline["ok"] is False and offline["first_bad_seq"] == k, offline
    # and the command an operator runs: `writ audit verify --store URL` exits 1 naming row K
    cli = subprocess.run(
        [
            sys.executable,
            "-c",
            "from writ.cli import main; main()",
            "audit",
            "verify",
            "--store",
            f"sqlite:///{server.db}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WRIT_ADMIN_TOKEN": ""},
    )
    assert cli.returncode == 1, (cli.stdout, cli.stderr)
    assert json.loads(cli.stdout)["first_bad_seq"] == k, cli.stdout


def test_a_waiter_that_hangs_up_leaves_the_queue(server: ServerProcess) -> None:
    """A waiter whose client disconnects gives up its place: when the holder releases, the
    next live waiter gets the lease at once, and the dead one never holds it."""
    server.start()
    with server.client() as admin:
        holder, dead, live = (add_agent(admin, n) for n in ("holder", "dead", "live"))
    with server.client(holder) as h, server.client(live) as lv:
        held = h.post("/v1/leases", json={"resource": "hang/up", "intent": "hold"}).json()
        # the dead waiter: a raw connection, closed once its request is queued
        body = json.dumps({"resource": "hang/up", "intent": "wait", "wait_s": 60}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /v1/leases HTTP/1.1\r\nHost: writ\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {dead}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: h.get("/v1/resources/hang/up").json()["queue"] != [])
        sock.close()
        # the hung-up request is dropped from the queue, and a row says so
        wait_until(lambda: h.get("/v1/resources/hang/up").json()["queue"] == [])
        rows = [r for r in all_rows(h) if r["agent_id"] == "dead"]
        assert [r["event"] for r in rows] == ["lease.queued", "lease.denied"], rows

        result: dict[str, Any] = {}
        body = {"resource": "hang/up", "intent": "wait", "wait_s": 30}
        with in_background(lambda: result.update(r=lv.post("/v1/leases", json=body))):
            wait_until(lambda: h.get("/v1/resources/hang/up").json()["queue"] != [])
            assert h.post(f"/v1/leases/{held['lease_id']}/release").status_code == 200
        assert result["r"].status_code == 201, result["r"].text
        assert result["r"].json()["holder"] == "live"
        leases = h.get("/v1/leases", params={"resource": "hang"}).json()["leases"]
        assert "dead" not in {x["holder"] for x in leases}


def test_the_real_server_answers_bad_requests_in_the_error_shape(server: ServerProcess) -> None:
    """Through uvicorn itself: no token 401, oversized headers and bodies (declared or
    chunked) 413, malformed JSON 422, all as ``{"error": {"code", "message"}}``."""
    server.start()
    json_ct = {"content-type": "application/json"}
    with server.client() as c, httpx.Client(base_url=server.url, timeout=10) as anon:
        assert anon.get("/v1/health").status_code == 200
        cases = [
            (anon.get("/v1/leases"), 401, "unauthenticated"),
            (c.get("/v1/leases", headers={"x-big": "a" * 40_000}), 413, "too_large"),
            (c.post("/v1/leases", content=b"x" * (2 << 20), headers=json_ct), 413, "too_large"),
            (
                c.post("/v1/leases", content=iter([b"x" * (64 << 10)] * 40), headers=json_ct),
                413,
                "too_large",
            ),
            (c.post("/v1/leases", content=b"{oops", headers=json_ct), 422, "invalid"),
            (c.post("/v1/leases", json={"resource": "Prod", "intent": "x"}), 422, "invalid"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, (r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        # the server is still fine afterwards
        assert c.get("/v1/audit/verify").json()["ok"] is True
