"""Input, a second look (issue 11): values that passed the first wave's checks and should
not have — a route that is not a URL at all (a 500 in the dashboard detector), and numbers
that JSON cannot carry (NaN, Infinity) stored as a change's free-form ``before``/``after``
and read back as null. Raw HTTP on both stores; a 500 fails any test (``writ``'s hook).
Also pinned (it held already): odd percent-encoding sent as raw bytes to a real server."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.server_fixtures import LiveServer
from tests.test_http import ADMIN, Writ, admin_env, error, writ  # noqa: F401
from tests.test_trust import post, row_count
from writ.core.routes import route_problem
from writ.evidence.lint import check_row

NOT_URLS = ["http://[::1", "https://[fe80::1/rollback", "http://]x/rollback"]


@pytest.mark.parametrize("route", NOT_URLS)
def test_a_route_that_is_not_a_url_is_no_route(route: str) -> None:
    assert "not a valid URL" in (route_problem(route) or ""), route_problem(route)
    result = check_row({"rollback_path": route}, fragment=True)
    assert result.verdict == "reject", result


async def test_a_wake_or_rollback_route_that_is_not_a_url_is_422(writ: Writ) -> None:  # noqa: F811
    before = await row_count(writ)
    r = await writ.c.post(
        "/v1/principals",
        json={"name": "agent-w", "kind": "agent", "wake": NOT_URLS[0]},
        headers=writ.auth(ADMIN),
    )
    assert error(r, 422, "invalid")["field"] == "wake"
    agent = await writ.principal("agent-a")
    await writ.principal("ops-queue", "queue")
    plan = {"allowed": True, "key_holder": "ops-queue", "override_queue": "ops-queue"}
    plan["path"] = NOT_URLS[1]
    err = error(await writ.acquire(agent, "shop/db", rollback=plan), 422, "invalid")
    assert err["field"] == "rollback.path", err
    assert await row_count(writ) == before + 2  # two principal.added rows, nothing else


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_change_value_that_json_cannot_carry_is_422(writ: Writ, number: str) -> None:  # noqa: F811
    agent = await writ.principal("agent-a")
    lease = await writ.grant(agent, "shop/db")
    before = await row_count(writ)
    for field in ("before", "after"):
        body = f'{{"attribute": "capacity", "summary": "s", "{field}": {{"n": [{number}]}}}}'
        r = await post(writ, f"/v1/leases/{lease['lease_id']}/changes", body, agent)
        err = error(r, 422, "invalid")
        assert err["field"] == field, err
    assert await row_count(writ) == before
    r = await post(
        writ,
        f"/v1/leases/{lease['lease_id']}/changes",
        '{"attribute":"c","summary":"s","after":1e300}',
        agent,
    )
    assert r.status_code == 201 and r.json()["after"] == 1e300, r.text


ODD_ESCAPES = ["%FF%FE", "%C0%80", "%E0%80%80", "%ED%A0%80", "%2500", "%25%30%30", "%", "%zz", "%4"]


def test_odd_percent_encoding_on_a_real_server_is_never_a_500(live_server: LiveServer) -> None:
    """Bytes as a client sends them (no client library to tidy them): invalid and overlong
    UTF-8, an encoded surrogate, double encoding, broken %-sequences — in an id of the lean
    path, of a FastAPI route and in a query parameter. Each is answered (4xx, or 200 for a
    list that finds nothing), never a 500, and the server goes on answering."""
    host, port = live_server.url.removeprefix("http://").split(":")
    _, token = live_server.principal()
    for odd in ODD_ESCAPES:
        for method, target in (
            ("POST", f"/v1/leases/ls_{odd}/release"),
            ("GET", f"/v1/leases/ls_{odd}"),
            ("GET", f"/v1/leases?holder=a{odd}"),
            ("GET", f"/v1/who?resource=a{odd}"),
        ):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(
                    f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (method, target, answer[:300])
    assert httpx.get(f"{live_server.url}/v1/health").status_code == 200
