"""``writ gate``'s own /metrics (issue 14): passed and refused by code, and the upstream's
latency — a gate in front of a real writ server and a toy upstream."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from tests.server_fixtures import LiveServer, free_port, serve_asgi, unique
from writ.gate import Gate, Route


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


async def test_gate_metrics_count_passed_refused_and_upstream_latency(
    live_server: LiveServer,
) -> None:
    upstream = Starlette(routes=[StarletteRoute("/{p:path}", _ok, methods=["GET", "POST"])])
    res = unique("gm")
    _, gate_token = live_server.principal("portal", unique("gate"))
    _, token = live_server.principal("agent")
    with serve_asgi(upstream) as upstream_url:
        gate = Gate(live_server.url, gate_token, upstream_url, [Route("/admin/*", res)])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gate.test"
        ) as c:
            with live_server.client(token) as w:
                lease = w.acquire(res, "metrics")
            auth = {"Authorization": f"Bearer {token}"}
            ok = await c.post(
                "/admin/x",
                headers={
                    **auth,
                    "Writ-Lease": lease["lease_id"],
                    "Writ-Fencing-Token": str(lease["fencing_token"]),
                },
            )
            assert ok.status_code == 200
            stale = await c.post(
                "/admin/x",
                headers={
                    **auth,
                    "Writ-Lease": lease["lease_id"],
                    "Writ-Fencing-Token": str(lease["fencing_token"] - 1),
                },
            )
            assert stale.status_code == 423
            assert (await c.post("/admin/x")).status_code == 423  # no token at all
            assert (await c.get("/admin/x")).status_code == 200  # a read: not a decision
            m = await c.get("/metrics")
            assert m.status_code == 200
            found = samples(m.text)
        await gate.aclose()
        # writ cannot be reached: the gate fails closed, and says so in its metrics
        down = Gate(
            f"http://127.0.0.1:{free_port()}",
            gate_token,
            upstream_url,
            [Route("/admin/*", res)],
            writ_timeout=2,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=down), base_url="http://gate.test"
        ) as c:
            # no writ token: refused at the gate, writ not asked (and no row)
            anonymous = await c.post("/admin/x")
            assert anonymous.status_code == 423, anonymous.text
            assert anonymous.json()["error"]["code"] == "unauthenticated"
            failed = await c.post("/admin/x", headers={"Authorization": f"Bearer {token}"})
            assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
            unavailable = samples((await c.get("/metrics")).text)
        await down.aclose()
    with live_server.client(token) as w:
        w.release(lease["lease_id"])
    assert found[("writ_gate_passed_total", ())] == 1
    refused = {k[1]: v for k, v in found.items() if k[0] == "writ_gate_refused_total"}
    assert sum(refused.values()) == 2
    assert set(refused) <= {
        (("code", "lease_lost"),),
        (("code", "unauthenticated"),),
        (("code", "held"),),
    }
    # two forwarded requests (the passed write and the read), both answered
    assert found[("writ_gate_upstream_seconds_count", (("outcome", "answered"),))] == 2
    assert unavailable[("writ_gate_refused_total", (("code", "unavailable"),))] == 1
