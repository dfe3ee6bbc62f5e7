"""What the gate judges is what the upstream gets: each reading of a request (its method, its
overrides, its path's spellings, HEAD as the GET it runs) needs what its route needs; a path
cannot climb out of the upstream's prefix; TRACE is not forwarded; and a refusal that names
no one writes no row and tells nothing of the holder.

A real upstream (wsgiref, recording each request) behind a real gate over HTTP, as in
tests/test_gate_trust.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from tests.server_fixtures import LiveServer, unique
from tests.test_gate_trust import GateRig, WsgiUpstream, serve_gate
from writ.core.errors import Invalid
from writ.gate import Gate, Route
from writ.gate.routes import request_paths, route_of


@pytest.fixture(scope="module")
def prefixed(live_server: LiveServer) -> Iterator[GateRig]:
    """A gate whose upstream has a path prefix (/admin): /db/* there is /admin/db/* here;
    anything of the upstream's outside the prefix is not the gate's to pass."""
    res = unique("prefix")
    _, gate_token = live_server.principal("portal", unique("gate"))
    with WsgiUpstream() as upstream:
        routes = [Route("/db/*", f"{res}/db")]
        gate = Gate(live_server.url, gate_token, upstream.url + "/admin", routes)
        with serve_gate(gate) as url:
            yield GateRig(live_server, upstream, url, res)


@pytest.mark.parametrize(
    "path",
    [
        "/../admin/db/scale",
        "/x/../../admin/db/scale",
        "/%2e%2e/admin/db/scale",
        "/..;/admin/db/scale",
        "/./../admin/db/scale",
        "//admin/db/scale",
    ],
)
def test_a_path_cannot_climb_out_of_the_upstreams_prefix(prefixed: GateRig, path: str) -> None:
    """Matched here as unmapped (/admin/db/scale is no route of the gate's), sent there as the
    prefix's /admin/db/scale once dot segments are removed: refused before anything is sent."""
    for method in ("DELETE", "GET"):
        before = len(prefixed.upstream.seen)
        status, body = prefixed.send(method, path)
        assert status == 400, (method, path, body)
        assert b'"invalid"' in body and b"prefix" in body
        assert len(prefixed.upstream.seen) == before


def test_behind_a_prefix_plain_paths_pass_and_routes_are_gated(prefixed: GateRig) -> None:
    assert prefixed.send("GET", "/public/x")[0] == 200
    assert prefixed.upstream.seen[-1]["PATH_INFO"] == "/admin/public/x"
    # a query httpx writes differently (a quote, escaped) is the same query: it passes
    assert prefixed.send("GET", '/public/x?q="a"')[0] == 200
    assert prefixed.upstream.seen[-1]["QUERY_STRING"] == "q=%22a%22"
    before = len(prefixed.upstream.seen)
    assert prefixed.send("DELETE", "/db/scale")[0] == 423
    assert len(prefixed.upstream.seen) == before


@pytest.fixture(scope="module")
def rig(live_server: LiveServer) -> Iterator[GateRig]:
    """Routes as docs/gate.md writes them: a narrow one first, a wide one after it; a route
    that lists GET (an API that changes things on GET); two unrelated resources; and the
    gate's own credentials for the upstream."""
    res = unique("reading")
    _, gate_token = live_server.principal("portal", unique("gate"))
    with WsgiUpstream() as upstream:
        routes = [
            Route("/admin/cache/*", f"{res}/cache", frozenset({"DELETE"})),
            Route("/admin/bump/*", f"{res}/bump", frozenset({"GET", "POST"})),
            Route("/admin/*", res),
            Route("/other/db/*", f"{res}-x/db", frozenset({"DELETE"})),
            Route("/other/*", f"{res}-y"),
        ]
        gate = Gate(
            live_server.url,
            gate_token,
            upstream.url,
            routes,
            upstream_headers={"Authorization": "Bearer the-upstreams-own-secret"},
        )
        with serve_gate(gate) as url:
            yield GateRig(live_server, upstream, url, res)


def _lease(rig: GateRig, resource: str) -> tuple[dict[str, Any], dict[str, str]]:
    with rig.live.client(rig.token) as c:
        lease: dict[str, Any] = c.acquire(resource, "gate readings test", ttl_s=60)
    headers = {
        "Authorization": f"Bearer {rig.token}",
        "Writ-Lease": lease["lease_id"],
        "Writ-Fencing-Token": str(lease["fencing_token"]),
    }
    return lease, headers


def _gate_events(admin: Any, after_seq: int) -> list[str]:
    return [r["event"] for r in admin.iter_audit(after_seq) if r["event"].startswith("gate.")]


def _release(rig: GateRig, lease: dict[str, Any]) -> None:
    with rig.live.client(rig.token) as c:
        c.release(lease["lease_id"])


def test_head_is_judged_as_the_get_a_framework_runs_for_it(rig: GateRig) -> None:
    """A route that lists GET gates HEAD too (Flask, Starlette, Django, Rails and Go's mux
    run the GET handler for a HEAD); with the lease, both pass."""
    before = len(rig.upstream.seen)
    for method in ("GET", "HEAD"):
        assert rig.send(method, "/admin/bump/replicas")[0] == 423, method
    assert len(rig.upstream.seen) == before
    lease, headers = _lease(rig, f"{rig.res}/bump")
    try:
        for method in ("GET", "HEAD"):
            assert rig.send(method, "/admin/bump/replicas", headers)[0] == 200, method
    finally:
        _release(rig, lease)
    # a route without methods (every method but the safe ones) still lets a HEAD pass
    assert rig.send("HEAD", "/admin/settings")[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/admin/cache/resize", {"X-HTTP-Method-Override": "DELETE"}),
        ("POST", "/admin/cache/resize?_method=DELETE", {}),
        ("DELETE", "/admin/cache.settings", {}),
    ],
)
def test_a_request_needs_what_each_reading_of_it_needs(
    rig: GateRig, method: str, path: str, headers: dict[str, str]
) -> None:
    """Read one way it falls under the narrow route (DELETE /admin/cache/*, the cache), read
    another under the wide one (/admin/*): a lease on the cache alone does not pass it; one
    on the whole, which covers the cache too, does."""
    narrow, narrow_headers = _lease(rig, f"{rig.res}/cache")
    try:
        before = len(rig.upstream.seen)
        status, body = rig.send(method, path, {**headers, **narrow_headers})
        assert status == 423, (status, body)
        assert rig.res.encode() in body
        assert len(rig.upstream.seen) == before
        # what falls under the narrow route alone passes with the narrow lease
        assert rig.send("DELETE", "/admin/cache/all", narrow_headers)[0] == 200
    finally:
        _release(rig, narrow)
    wide, wide_headers = _lease(rig, rig.res)
    try:
        assert rig.send(method, path, {**headers, **wide_headers})[0] == 200
    finally:
        _release(rig, wide)


def test_readings_under_routes_no_one_lease_covers_are_refused(rig: GateRig) -> None:
    """DELETE /other/db/* needs x/db and /other/* needs y: a POST that says it is a DELETE is
    both, and no one lease covers both: 400, and nothing reaches the upstream."""
    before = len(rig.upstream.seen)
    status, body = rig.send("POST", "/other/db/x", {"X-HTTP-Method-Override": "DELETE"})
    assert status == 400 and b'"invalid"' in body, body
    assert b"no one" in body
    assert len(rig.upstream.seen) == before


def test_trace_is_refused_and_the_gates_credentials_are_never_echoed(rig: GateRig) -> None:
    """An upstream answering TRACE echoes the request it got, the gate's own Authorization
    for it included: the gate forwards no TRACE, mapped or not."""
    before = len(rig.upstream.seen)
    for path in ("/", "/public/x", "/admin/db/x"):
        out = rig.raw(f"TRACE {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 405 "), out[:200]
        assert b"the-upstreams-own-secret" not in out
    assert len(rig.upstream.seen) == before


def test_a_refusal_that_names_no_one_writes_no_row_and_hides_the_holder(rig: GateRig) -> None:
    """No writ token, or an unknown one: 423 unauthenticated, with no holder (who holds the
    resource is told to callers writ knows) and no audit row (anyone could fill the ledger
    with them). A known caller without a lease is refused with a row, as before."""
    lease, _ = _lease(rig, f"{rig.res}/cache")
    admin = rig.live.client()
    try:
        seq = admin.last_seq()
        for headers in ({}, {"Authorization": "Bearer writ_not-a-token"}):
            status, body = rig.send("DELETE", "/admin/cache/x", headers)
            assert status == 423 and b'"unauthenticated"' in body, body
            assert b'"holder":null' in body and rig.agent.encode() not in body, body
        assert _gate_events(admin, seq) == []
        status, body = rig.send(
            "DELETE", "/admin/cache/x", {"Authorization": f"Bearer {rig.token}"}
        )
        assert status == 423 and b'"held"' in body
        assert _gate_events(admin, seq) == ["gate.refused"]
    finally:
        admin.close()
        _release(rig, lease)


# ----------------------------------------------------------------------------- route_of
ROUTES = [
    Route("/a/cache/*", "p/cache", frozenset({"DELETE"})),
    Route("/a/db/*", "p/db", frozenset({"DELETE"}), "capacity"),
    Route("/a/*", "p"),
    Route("/b/*", "q", frozenset({"DELETE"}), "labels"),
]


def test_each_reading_takes_its_first_route_in_file_order() -> None:
    """One reading: the first route that matches it, the wider one after it unasked."""
    assert route_of(ROUTES, ["DELETE"], request_paths("/a/cache/x")) == ROUTES[0]
    assert route_of(ROUTES, ["POST"], request_paths("/a/cache/x")) == ROUTES[2]
    assert route_of(ROUTES, ["GET"], request_paths("/a/cache/x")) is None


def test_readings_under_two_routes_ask_for_the_widest_resource_and_every_attribute() -> None:
    both = route_of(ROUTES, ["DELETE", "POST"], request_paths("/a/cache/x"))
    assert both is not None and (both.resource, both.attribute) == ("p", None)
    with_attribute = route_of(ROUTES, ["DELETE", "POST"], request_paths("/a/db/x"))
    assert with_attribute is not None
    assert (with_attribute.resource, with_attribute.attribute) == ("p", "capacity")


def test_readings_no_one_lease_covers_are_invalid() -> None:
    unrelated = [Route("/a/db/*", "x/db", frozenset({"DELETE"})), Route("/a/*", "y")]
    with pytest.raises(Invalid, match="no one"):
        route_of(unrelated, ["DELETE", "POST"], request_paths("/a/db/x"))
    two_attributes = [*ROUTES[:2], Route("/a/*", "p", frozenset({"POST"}), "labels")]
    with pytest.raises(Invalid, match="no one"):
        route_of(two_attributes, ["DELETE", "POST"], request_paths("/a/db/x"))


NON_ASCII = [
    Route("/straße/*", "prod/street"),
    Route("/kılavuz/*", "prod/guide"),
    Route("/maße/*", "prod/measures"),
    Route("/masse/*", "prod/mass"),
]


def test_routes_with_letters_a_router_folds_are_read_both_ways() -> None:
    """A route's own non-ASCII letters fold as a request's do: /kilavuz/x is what a
    case-insensitive router serves for /kılavuz/* (Python's re and Java match ı to i). A
    fold to several letters is none a router makes: /maße/x is the /maße/* route's alone,
    not a reading under /masse/* too (400 for every such request)."""
    assert route_of(NON_ASCII, ["POST"], request_paths("/kilavuz/x")) == NON_ASCII[1]
    assert route_of(NON_ASCII, ["POST"], request_paths("/KILAVUZ/x")) == NON_ASCII[1]
    assert route_of(NON_ASCII, ["POST"], request_paths("/maße/x")) == NON_ASCII[2]
    assert route_of(NON_ASCII, ["POST"], request_paths("/masse/x")) == NON_ASCII[3]


def test_an_ambiguous_path_on_a_non_ascii_route_is_on_its_prefix() -> None:
    """/stra%00ße/x may be /straße/x to an upstream that drops the NUL: it lies on the
    route's prefix, so the gate refuses it as ambiguous instead of passing it unchecked."""
    gate = Gate("http://127.0.0.1:9", "t", "http://127.0.0.1:9", NON_ASCII)
    for raw in (b"/stra%00%C3%9Fe/x", b"/k%00%C4%B1lavuz/x", b"/k%00ilavuz/x"):
        assert gate.mapped(unquote(raw.decode()), raw), raw
    assert not gate.mapped("/elsewhere/x", b"/else%00where/x")
