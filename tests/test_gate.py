"""``writ gate`` between real processes: a real writ server, a real upstream HTTP server that
records what reaches it, and ``writ gate`` itself as a child process in front of it.

The upstream is the witness: a refused write must never reach it, a passed one must arrive
with ``Writ-Fencing-Token`` and ``Writ-Holder`` and without the caller's writ token.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from tests.server_fixtures import LiveServer, free_port, run_writ, serve_asgi, unique
from writ.cli import main
from writ.core.errors import Invalid
from writ.gate import Gate, Route, load_routes, parse_listen, parse_routes, request_paths

BIG = 4 << 20  # bytes streamed each way in the large-body tests


# ----------------------------------------------------------------------------- harness
class Upstream:
    """A toy admin API that records every request that reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                StarletteRoute(
                    "/{path:path}",
                    self.handle,
                    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                )
            ]
        )

    async def handle(self, request: Request) -> Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        entry = {
            "method": request.method,
            "path": request.url.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "raw_headers": [(k.decode(), v.decode()) for k, v in request.scope["headers"]],
            "size": size,
            "sha256": digest.hexdigest(),
        }
        self.seen.append(entry)
        if request.url.path == "/admin/db/export":
            return StreamingResponse(
                _pattern(BIG), media_type="application/octet-stream", headers={"x-total": str(BIG)}
            )
        response = JSONResponse({"ok": True, "size": size, "sha256": entry["sha256"]})
        response.set_cookie("a", "1")
        response.raw_headers.append((b"set-cookie", b"b=2"))
        return response

    def count(self, path_prefix: str = "/") -> int:
        return sum(1 for e in self.seen if e["path"].startswith(path_prefix))


async def _pattern(n: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    while sent < n:
        chunk = block[: min(len(block), n - sent)]
        sent += len(chunk)
        yield chunk


class Rig:
    """writ + upstream + gate, and the principals of the tests."""

    def __init__(
        self, writ: LiveServer, upstream: Upstream, upstream_url: str, gate_url: str, res: str
    ) -> None:
        self.writ = writ
        self.upstream = upstream
        self.upstream_url = upstream_url
        self.gate_url = gate_url
        self.db = f"{res}/db"  # the resource of /admin/db/*
        self.cache = f"{res}/cache"  # the resource of DELETE /admin/cache/*
        self.admin = writ.client()
        self.agent, self.agent_token = writ.principal("agent")
        self.other, self.other_token = writ.principal("agent")
        self.human, self.human_token = writ.principal("human")
        self.http = httpx.Client(base_url=gate_url, timeout=30)

    def acquire(self, token: str, resource: str | None = None, **kw: Any) -> dict[str, Any]:
        with self.writ.client(token) as c:
            lease: dict[str, Any] = c.acquire(resource or self.db, "gate test", **kw)
        return lease

    def release(self, token: str, lease: dict[str, Any]) -> None:
        with self.writ.client(token) as c:
            c.release(lease["lease_id"])

    def headers(
        self,
        token: str | None,
        lease: dict[str, Any] | None = None,
        fencing_token: int | None = None,
    ) -> dict[str, str]:
        h = {}
        if token:
            h["Authorization"] = f"Bearer {token}"
        if lease:
            h["Writ-Lease"] = lease["lease_id"]
            h["Writ-Fencing-Token"] = str(
                lease["fencing_token"] if fencing_token is None else fencing_token
            )
        return h

    def gate_rows(self, after_seq: int) -> list[dict[str, Any]]:
        return [r for r in self.admin.iter_audit(after_seq) if r["event"].startswith("gate.")]


@pytest.fixture(scope="module")
def rig(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    res = unique("gate")
    routes = tmp_path_factory.mktemp("gate") / "routes.toml"
    routes.write_text(
        f'[[route]]\npath = "/admin/db/*"\nresource = "{res}/db"\n\n'
        f'[[route]]\npath = "/admin/cache/*"\nmethods = ["DELETE"]\nresource = "{res}/cache"\n'
    )
    _, gate_token = live_server.principal("portal", unique("gate"))
    secrets_file = routes.parent / "upstream-headers"
    secrets_file.write_text("# the upstream's credentials\nX-Upstream-Secret: from-the-file\n")
    secrets_file.chmod(0o600)
    upstream = Upstream()
    with (
        serve_asgi(upstream.app) as upstream_url,
        run_writ(
            [
                "gate",
                "--url",
                live_server.url,
                "--token",
                gate_token,
                "--upstream",
                upstream_url,
                "--listen",
                "127.0.0.1:0",
                "--routes",
                str(routes),
                "--upstream-header",
                "X-Admin-Key: only-the-gate-knows",
                "--upstream-headers-file",
                str(secrets_file),
            ]
        ) as gate_url,
    ):
        r = Rig(live_server, upstream, upstream_url, gate_url, res)
        try:
            yield r
        finally:
            r.http.close()
            r.admin.close()


def refused(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.status_code == 423, (r.status_code, r.text)
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert len(err["message"]) > 20
    return err


# ----------------------------------------------------------------------------- refusals
def test_write_without_a_lease_is_423_and_never_reaches_the_upstream(rig: Rig) -> None:
    """No token, or a token without lease headers: 423, nothing reaches the upstream, and the
    refusal says what to do."""
    before = rig.upstream.count("/admin/db")
    err = refused(rig.http.post("/admin/db/scale", json={"to": 8}), "unauthenticated")
    assert "writ token" in err["message"]
    err = refused(
        rig.http.post("/admin/db/scale", json={"to": 8}, headers=rig.headers(rig.agent_token)),
        "held",
    )
    assert "Acquire a lease" in err["message"] and err["holder"] is None
    refused(rig.http.delete("/admin/db/x", headers=rig.headers("not-a-token")), "unauthenticated")
    assert rig.upstream.count("/admin/db") == before


def test_write_while_another_agent_holds_names_the_holder(rig: Rig) -> None:
    """The holder's lease id shown by someone else, or no lease at all, is refused with who
    holds the resource and until when."""
    lease = rig.acquire(rig.agent_token)
    try:
        before = rig.upstream.count("/admin/db")
        for h in (rig.headers(rig.other_token), rig.headers(rig.other_token, lease)):
            err = refused(rig.http.put("/admin/db/x", headers=h), "held")
            assert err["holder"]["holder"] == rig.agent
            assert err["holder"]["expires_at"] == lease["expires_at"]
            assert rig.agent in err["message"] and lease["expires_at"] in err["message"]
        assert rig.upstream.count("/admin/db") == before
    finally:
        rig.release(rig.agent_token, lease)


# ----------------------------------------------------------------------------- passing
def test_current_lease_passes_with_fencing_token_and_holder_not_the_writ_token(rig: Rig) -> None:
    """The upstream sees Writ-Fencing-Token, Writ-Holder and Writ-Resource, the gate's own
    upstream headers (given on the command line and in --upstream-headers-file), and neither the caller's writ token nor Writ-Lease."""
    lease = rig.acquire(rig.agent_token)
    try:
        h = {
            **rig.headers(rig.agent_token, lease),
            "Writ-Holder": "forged",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
        }
        r = rig.http.post("/admin/db/scale?dry=0", json={"to": 8}, headers=h)
        assert r.status_code == 200, r.text
        seen = rig.upstream.seen[-1]
        assert (seen["method"], seen["path"]) == ("POST", "/admin/db/scale")
        hdrs = seen["headers"]
        assert hdrs["writ-fencing-token"] == str(lease["fencing_token"])
        assert hdrs["writ-holder"] == rig.agent
        assert hdrs["writ-resource"] == rig.db
        assert hdrs["x-admin-key"] == "only-the-gate-knows"
        assert hdrs["x-upstream-secret"] == "from-the-file"
        assert "authorization" not in hdrs and "writ-lease" not in hdrs and "x-hop" not in hdrs
        assert rig.agent_token not in str(seen["raw_headers"])
        assert [v for k, v in seen["raw_headers"] if k == "writ-holder"] == [rig.agent]
        assert r.headers.get_list("set-cookie") == ["a=1; Path=/; SameSite=lax", "b=2"]
    finally:
        rig.release(rig.agent_token, lease)


def test_a_lease_on_an_ancestor_covers_the_route_and_an_unrelated_one_does_not(
    rig: Rig,
) -> None:
    """Write authority on the parent resource covers /admin/db/*; on a sibling it does not."""
    parent = rig.db.rsplit("/", 1)[0]
    lease = rig.acquire(rig.agent_token, parent)
    try:
        r = rig.http.post("/admin/db/x", headers=rig.headers(rig.agent_token, lease))
        assert r.status_code == 200
        assert rig.upstream.seen[-1]["headers"]["writ-resource"] == rig.db
    finally:
        rig.release(rig.agent_token, lease)
    sibling = rig.acquire(rig.agent_token, f"{parent}/queue")
    try:
        err = refused(
            rig.http.post("/admin/db/x", headers=rig.headers(rig.agent_token, sibling)), "held"
        )
        assert "does not cover" in err["reason"]
    finally:
        rig.release(rig.agent_token, sibling)


def test_writ_token_may_travel_in_writ_authorization(rig: Rig) -> None:
    """With Writ-Authorization, the caller's own Authorization goes on to the upstream."""
    lease = rig.acquire(rig.agent_token)
    try:
        h = {
            "Writ-Authorization": f"Bearer {rig.agent_token}",
            "Authorization": "Basic dXA6c3c=",
            "Writ-Lease": lease["lease_id"],
            "Writ-Fencing-Token": str(lease["fencing_token"]),
        }
        assert rig.http.patch("/admin/db/x", headers=h).status_code == 200
        hdrs = rig.upstream.seen[-1]["headers"]
        assert hdrs["authorization"] == "Basic dXA6c3c=" and "writ-authorization" not in hdrs
        assert hdrs["writ-holder"] == rig.agent
    finally:
        rig.release(rig.agent_token, lease)


def test_two_credential_headers_are_refused_not_guessed(rig: Rig) -> None:
    """Two Writ-Authorization headers, or two Authorization headers carrying the writ
    token, are 400 ``invalid`` in either order, and nothing reaches the upstream: a proxy in
    front may have checked one of them and not the other."""
    lease = rig.acquire(rig.agent_token)
    try:
        good, forged = f"Bearer {rig.agent_token}", "Bearer wrt_forged"
        fence = [
            ("Writ-Lease", lease["lease_id"]),
            ("Writ-Fencing-Token", str(lease["fencing_token"])),
        ]
        seen = len(rig.upstream.seen)
        for name in ("Writ-Authorization", "Authorization"):
            for pair in ((good, forged), (forged, good)):
                headers = [(name, v) for v in pair] + fence
                r = rig.http.patch("/admin/db/x", headers=headers)
                assert r.status_code == 400, r.text
                assert f"more than one {name} header" in r.json()["error"]["message"]
        # two spellings of one name are one header to a WSGI upstream, and to the gate
        headers = [("Writ-Authorization", good), ("Writ_Authorization", forged), *fence]
        r = rig.http.patch("/admin/db/x", headers=headers)
        assert r.status_code == 400 and "more than one" in r.json()["error"]["message"], r.text
        assert len(rig.upstream.seen) == seen
        ok = rig.http.patch("/admin/db/x", headers=[("Authorization", good), *fence])
        assert ok.status_code == 200, ok.text
    finally:
        rig.release(rig.agent_token, lease)


def test_reads_and_unmapped_routes_pass_through(rig: Rig) -> None:
    """GET on a mapped path and POST on an unmapped one pass unchecked, with no audit row;
    a forged Writ-Holder never reaches the upstream; a method the route does not list passes.
    Authorization (taken for the writ token) reaches the upstream only beside a
    Writ-Authorization."""
    seq = rig.admin.last_seq()
    r = rig.http.get("/admin/db/status", headers={"Authorization": "Bearer upstream-cred"})
    assert r.status_code == 200
    assert "authorization" not in rig.upstream.seen[-1]["headers"]
    r = rig.http.get(
        "/admin/db/status",
        headers={"Authorization": "Bearer upstream-cred", "Writ-Authorization": "Bearer x"},
    )
    assert r.status_code == 200
    assert rig.upstream.seen[-1]["headers"]["authorization"] == "Bearer upstream-cred"
    assert rig.http.head("/admin/db/status").status_code == 200
    r = rig.http.post("/public/echo", content=b"hi", headers={"Writ-Holder": "forged"})
    assert r.status_code == 200 and r.json()["size"] == 2
    assert "writ-holder" not in rig.upstream.seen[-1]["headers"]
    assert rig.http.post("/admin/cache/flush").status_code == 200  # only DELETE is mapped
    assert rig.gate_rows(seq) == []


# ----------------------------------------------------------------------------- lost leases
def test_revoked_lease_is_refused_as_lease_lost(rig: Rig) -> None:
    """Once a human revokes the lease, the old holder's write is 423 lease_lost."""
    lease = rig.acquire(rig.agent_token)
    h = rig.headers(rig.agent_token, lease)
    assert rig.http.post("/admin/db/a", headers=h).status_code == 200
    with rig.writ.client(rig.human_token) as human:
        human.revoke(lease["lease_id"], runbook="R-1", paged="oncall", reason="stuck")
    before = rig.upstream.count("/admin/db")
    err = refused(rig.http.post("/admin/db/a", headers=h), "lease_lost")
    assert "revoked" in err["reason"]
    assert rig.upstream.count("/admin/db") == before


def test_expired_lease_is_refused_as_lease_lost(rig: Rig) -> None:
    """A lease left to expire (ttl 1 s) no longer opens the gate."""
    lease = rig.acquire(rig.agent_token, ttl_s=1)
    h = rig.headers(rig.agent_token, lease)
    with rig.writ.client(rig.agent_token) as c:
        deadline = time.monotonic() + 10
        while c.get_lease(lease["lease_id"])["state"] == "held":
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.05)
    before = rig.upstream.count("/admin/db")
    err = refused(rig.http.post("/admin/db/a", headers=h), "lease_lost")
    assert "expired" in err["reason"]
    assert rig.upstream.count("/admin/db") == before


def test_replayed_lower_token_is_refused(rig: Rig) -> None:
    """After a newer lease passed, the older lease's token replayed (with its own lease or
    with the new lease id) is refused."""
    old = rig.acquire(rig.agent_token)
    r = rig.http.post("/admin/db/a", headers=rig.headers(rig.agent_token, old))
    assert r.status_code == 200
    rig.release(rig.agent_token, old)
    new = rig.acquire(rig.other_token)
    try:
        assert new["fencing_token"] > old["fencing_token"]
        assert (
            rig.http.post("/admin/db/a", headers=rig.headers(rig.other_token, new)).status_code
            == 200
        )
        before = rig.upstream.count("/admin/db")
        refused(
            rig.http.post("/admin/db/a", headers=rig.headers(rig.agent_token, old)), "lease_lost"
        )
        err = refused(
            rig.http.post(
                "/admin/db/a",
                headers=rig.headers(rig.other_token, new, fencing_token=old["fencing_token"]),
            ),
            "lease_lost",
        )
        assert str(old["fencing_token"]) in err["reason"]
        assert rig.upstream.count("/admin/db") == before
    finally:
        rig.release(rig.other_token, new)


# ----------------------------------------------------------------------------- evidence
def test_every_mutating_request_is_one_audit_row(rig: Rig) -> None:
    """Each checked request leaves exactly one gate.passed or gate.refused row, naming the
    caller, the method and path, and the lock holder; one that names no one (no writ token,
    or an unknown one) leaves none: anyone could fill the ledger with them."""
    seq = rig.admin.last_seq()
    lease = rig.acquire(rig.agent_token)
    try:
        sent = [
            (rig.http.post("/admin/db/1", headers=rig.headers(rig.agent_token, lease)), "passed"),
            (rig.http.delete("/admin/db/2", headers=rig.headers(rig.other_token)), "refused"),
            (rig.http.put("/admin/db/3"), None),  # no writ token: no row
            (rig.http.put("/admin/db/3", headers=rig.headers("writ_unknown")), None),
            (rig.http.put("/admin/db/3", headers=rig.headers(rig.human_token)), "refused"),
            (rig.http.get("/admin/db/4"), None),  # a read: no row
            (rig.http.patch("/admin/db/5", headers=rig.headers(rig.agent_token, lease)), "passed"),
        ]
    finally:
        rig.release(rig.agent_token, lease)
    rows = rig.gate_rows(seq)
    expected = [e for _, e in sent if e]
    assert [r["event"] for r in rows] == [f"gate.{e}" for e in expected]
    for row, (method, n) in zip(
        rows, [("POST", 1), ("DELETE", 2), ("PUT", 3), ("PATCH", 5)], strict=True
    ):
        assert f"{method} /admin/db/{n}" in row["notes"]
        assert row["resource"] == rig.db and row["lock_holder"] == rig.agent
    assert rows[0]["agent_id"] == rig.agent and rows[0]["fencing_token"] == lease["fencing_token"]
    assert rows[1]["agent_id"] == rig.other and rows[2]["agent_id"] == rig.human
    assert rig.admin.verify()["ok"]


# ----------------------------------------------------------------------------- streaming
def test_large_bodies_stream_through_intact(rig: Rig) -> None:
    """A 4 MiB chunked upload reaches the upstream byte for byte; a 4 MiB streamed download
    comes back byte for byte."""
    lease = rig.acquire(rig.agent_token)
    try:

        def upload() -> Iterator[bytes]:
            block = os.urandom(64 << 10)
            for _ in range(BIG // len(block)):
                yield block

        chunks = list(upload())
        expected = hashlib.sha256(b"".join(chunks)).hexdigest()
        r = rig.http.put(
            "/admin/db/restore", content=iter(chunks), headers=rig.headers(rig.agent_token, lease)
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "size": BIG, "sha256": expected}
        assert rig.upstream.seen[-1]["headers"].get("transfer-encoding") == "chunked"
    finally:
        rig.release(rig.agent_token, lease)
    with rig.http.stream("GET", "/admin/db/export") as r:
        assert r.status_code == 200 and r.headers["x-total"] == str(BIG)
        digest, size = hashlib.sha256(), 0
        for chunk in r.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG
    assert (
        digest.hexdigest()
        == hashlib.sha256((bytes(range(256)) * 256) * (BIG // (64 << 10))).hexdigest()
    )


# ----------------------------------------------------------------------------- evasion
@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/admin//db/x", 400),
        ("/admin/./db/x", 400),
        ("/public/../admin/db/x", 400),
        ("/admin%2Fdb/x", 400),
        ("/ADMIN/DB/x", 423),
        ("/admin/db%2F..%2Fdb/x", 400),
    ],
)
def test_disguised_paths_are_still_gated(rig: Rig, path: str, status: int) -> None:
    """Paths an upstream may normalize onto a mapped route never reach it without the
    lease (sent raw): ambiguous forms are refused (400), a case variant needs the lease."""
    before = len(rig.upstream.seen)
    host, port = rig.gate_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == status, (path, resp.status, resp.read())
    finally:
        conn.close()
    assert len(rig.upstream.seen) == before


def test_method_override_headers_are_judged_too(rig: Rig) -> None:
    """A POST that says it is a DELETE is gated by a DELETE-only route."""
    before = rig.upstream.count("/admin/cache")
    refused(
        rig.http.post("/admin/cache/all", headers={"X-HTTP-Method-Override": "DELETE"}),
        "unauthenticated",
    )
    refused(rig.http.delete("/admin/cache/all", headers=rig.headers(rig.agent_token)), "held")
    assert rig.upstream.count("/admin/cache") == before
    lease = rig.acquire(rig.agent_token, rig.cache)
    try:
        r = rig.http.delete("/admin/cache/all", headers=rig.headers(rig.agent_token, lease))
        assert r.status_code == 200
    finally:
        rig.release(rig.agent_token, lease)


# ----------------------------------------------------------------------------- fail closed
async def test_unreachable_writ_fails_closed_with_503(rig: Rig) -> None:
    """With writ down, a mapped write is 503 and never forwarded; reads still pass."""
    gate = Gate(
        f"http://127.0.0.1:{free_port()}",
        "gate-token",
        rig.upstream_url,
        [Route("/admin/db/*", rig.db)],
        writ_timeout=2,
    )
    before = len(rig.upstream.seen)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gate), base_url="http://gate.test"
    ) as c:
        r = await c.post("/admin/db/x", headers=rig.headers(rig.agent_token))
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert "fails closed" in r.json()["error"]["message"]
        assert len(rig.upstream.seen) == before
        assert (await c.get("/admin/db/x")).status_code == 200
    await gate.aclose()


async def test_gate_with_a_bad_token_of_its_own_fails_closed(rig: Rig) -> None:
    """A gate whose own writ token is refused answers 503, never passes the write."""
    gate = Gate(rig.writ.url, "wrong", rig.upstream_url, [Route("/admin/db/*", rig.db)])
    lease = rig.acquire(rig.agent_token)
    try:
        before = len(rig.upstream.seen)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gate.test"
        ) as c:
            r = await c.post("/admin/db/x", headers=rig.headers(rig.agent_token, lease))
        assert r.status_code == 503 and "unauthenticated" in r.json()["error"]["message"]
        assert len(rig.upstream.seen) == before
    finally:
        rig.release(rig.agent_token, lease)
        await gate.aclose()


# ----------------------------------------------------------------------------- units
def test_routes_file_is_checked_with_the_entry_named(tmp_path: Path) -> None:
    routes = parse_routes(
        '[[route]]\npath = "/a/*"\nresource = "prod/db"\n'
        '[[route]]\npath = "/b"\nmethods = ["get"]\nresource = "x"\n'
    )
    assert routes[0].methods == {"*"}  # every method but GET, HEAD, OPTIONS and TRACE
    assert routes[0].matches({"MERGE"}, {"/a/x"}) and not routes[0].matches({"GET"}, {"/a/x"})
    assert routes[1].methods == {"GET"}
    for text, needle in [
        ('[[route]]\npath = "a"\nresource = "x"\n', "beginning with '/'"),
        ('[[route]]\npath = "/a"\nresource = "Bad Name"\n', "route #1"),
        ('[[route]]\npath = "/a"\nresource = "x"\nmethods = []\n', "methods"),
        ('[[route]]\npath = "/a"\nresource = "x"\nverbs = ["GET"]\n', "verbs"),
        ("[route\n", "TOML"),
    ]:
        with pytest.raises(Invalid, match=re.escape(needle)):
            parse_routes(text)
    with pytest.raises(Invalid, match="cannot read"):
        load_routes(tmp_path / "missing.toml")


def test_check_prints_each_routes_attribute(tmp_path: Path) -> None:
    """writ gate --check shows what a write on each route needs, the lease's touches included."""
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[route]]\npath = "/admin/db/*"\nresource = "prod/db"\nattribute = "capacity"\n'
        '[[route]]\npath = "/admin/cache/*"\nmethods = ["DELETE"]\nresource = "prod/cache"\n'
    )
    args = ["gate", "--upstream", "http://127.0.0.1:9", "--routes", str(routes), "--check"]
    done = CliRunner().invoke(main, args, env={"WRIT_GATE_TOKEN": "t"})
    assert done.exit_code == 0, done.output
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first == {
        "path": "/admin/db/*",
        "methods": ["*"],
        "resource": "prod/db",
        "attribute": "capacity",
    }
    assert second == {"path": "/admin/cache/*", "methods": ["DELETE"], "resource": "prod/cache"}


def test_listen_and_path_forms() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:7412") == ("::1", 7412)
    assert parse_listen("7412") == ("127.0.0.1", 7412)
    with pytest.raises(Invalid):
        parse_listen("host:port")
    assert "/admin/db/x" in request_paths("/x/../admin//db/./x")
    assert "/admin/db/x" in request_paths("/admin\\db\\x")
