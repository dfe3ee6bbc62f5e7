"""Paging and waking for real (issue 14): PagerDuty Events API v2, Slack incoming webhooks
and signed generic webhooks, each against a real HTTP receiver in a thread that checks the
payload shape the service documents. Retries honour Retry-After; every attempt is a row.

Shapes checked (PagerDuty "Send an Alert Event" / "Resolve", Events API v2): a JSON object
with ``routing_key``, ``event_action`` (trigger | resolve) and ``dedup_key`` (at most 255
characters); a trigger has ``payload`` with ``summary`` (at most 1024 characters),
``source`` and ``severity`` (critical | error | warning | info). Slack incoming webhooks: a
JSON object with ``text`` (the notification fallback) and optional ``blocks`` whose section
blocks carry ``{"type": "mrkdwn", "text": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from writ.api.app import create_app
from writ.core.clock import ManualClock
from writ.core.policy import parse
from writ.engine import Engine
from writ.engine.wake_payloads import sign, verify_signature
from writ.stores.sqlite import SQLiteStore

PD_KEY = "R0UT1NGKEYabcdef0123456789abcdef"
SECRET = "whsec-test-3f9a"
PD_ACTIONS = {"trigger", "resolve", "acknowledge"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server that records each POST and answers from a per-path script of
    ``(status, headers, body)`` (then 200 / 202)."""

    calls: list[Call] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                call = Call(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                outer.calls.append(call)
                outer.problems += outer.check(call)
                todo = outer.script.get(self.path)
                status, headers, out = (
                    todo.pop(0)
                    if todo
                    else (
                        202,
                        {"content-type": "application/json"},
                        b'{"status":"success","message":"Event processed"}',
                    )
                    if self.path == "/v2/enqueue"
                    else (200, {"content-type": "text/plain"}, b"ok")
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def check(self, call: Call) -> list[str]:
        """What the documented shapes forbid in ``call``."""
        bad: list[str] = []
        if call.headers.get("content-type") != "application/json":
            bad.append(f"{call.path}: content-type {call.headers.get('content-type')}")
        body = call.json
        if call.path == "/v2/enqueue":  # PagerDuty Events API v2
            if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
                bad.append("pagerduty: routing_key missing")
            if body.get("event_action") not in PD_ACTIONS:
                bad.append(f"pagerduty: event_action {body.get('event_action')!r}")
            dk = body.get("dedup_key")
            if not isinstance(dk, str) or not 0 < len(dk) <= 255:
                bad.append("pagerduty: dedup_key missing or over 255")
            if body.get("event_action") == "trigger":
                p = body.get("payload") or {}
                if not isinstance(p.get("summary"), str) or not 0 < len(p["summary"]) <= 1024:
                    bad.append("pagerduty: payload.summary missing or over 1024")
                if not p.get("source"):
                    bad.append("pagerduty: payload.source missing")
                if p.get("severity") not in PD_SEVERITIES:
                    bad.append(f"pagerduty: payload.severity {p.get('severity')!r}")
        elif call.path.startswith("/services/"):  # Slack incoming webhook
            if not isinstance(body.get("text"), str) or not body["text"]:
                bad.append("slack: text missing")
            for block in body.get("blocks", []):
                if block.get("type") == "section" and block.get("text", {}).get("type") not in (
                    "mrkdwn",
                    "plain_text",
                ):
                    bad.append("slack: section text type")
        return bad

    def to(self, prefix: str) -> list[Call]:
        return [c for c in self.calls if c.path.startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rx() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()
    assert not r.problems, r.problems


class World:
    def __init__(self, engine: Engine, http: httpx.AsyncClient, clock: ManualClock) -> None:
        self.engine, self.http, self.clock = engine, http, clock
        self.tokens: dict[str, str] = {}
        self.waits: list[float] = []

    async def add(self, name: str, kind: str, wake: str | None = None) -> None:
        _, self.tokens[name] = await self.engine.add_principal(None, name, kind, wake=wake)

    async def post(self, who: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(
            path, json=body, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )

    async def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.engine.sweep()
        await self.engine.caller.drain()

    async def rows(self, *events: str) -> list[dict[str, Any]]:
        rows = (await self.engine.audit(0, 100_000))["rows"]
        return [r for r in rows if not events or r["event"] in events]


@pytest.fixture
async def world(tmp_path: Path, rx: Receiver) -> AsyncIterator[World]:
    clock = ManualClock()
    policy = parse(
        f'pagerduty_url = "{rx.base}/v2/enqueue"\n'
        f'webhook_secret = "{SECRET}"\n'
        f'rollback_base_url = "{rx.base}"\n'
        'default_override_queue = "ops-queue"\n'
        '[[rules]]\nprefix = "prod"\nmax_hold_s = 600\npage_after_s = 60\nconsent_timeout_s = 120\n'
    )
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=clock), policy)
    await engine.start(background=False)
    app = create_app(engine, start_engine=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as http:
        w = World(engine, http, clock)

        async def record(s: float) -> None:  # the waits between attempts, not slept
            w.waits.append(s)

        engine.caller.sleep = record
        yield w
    await engine.stop()


async def test_pagerduty_triggers_then_resolves_when_the_lease_ends(
    world: World, rx: Receiver
) -> None:
    """A stuck lock: the holder's webhook is woken (signed), then the queue is paged through
    PagerDuty (trigger, dedup_key = the lease id) and the incident resolved at release."""
    w = world
    await w.add("perf-agent", "agent", wake=f"{rx.base}/hooks/perf")
    await w.add("ops-queue", "queue", wake=f"pagerduty:{PD_KEY}")
    lease = (
        await w.post(
            "perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "x", "ttl_s": 3600}
        )
    ).json()
    await w.tick(601)
    await w.tick(61)
    [trigger] = rx.to("/v2/enqueue")
    body = trigger.json
    assert body["routing_key"] == PD_KEY and body["event_action"] == "trigger"
    assert body["dedup_key"] == lease["lease_id"]
    assert body["payload"]["severity"] == "critical"
    assert "perf-agent holds prod/db" in body["payload"]["summary"]
    assert f"/v1/leases/{lease['lease_id']}/revoke" in body["payload"]["custom_details"]["call"]
    # the routing key is a secret: no row shows it
    rows = await w.rows()
    assert PD_KEY not in json.dumps(rows)
    assert any(r["event"] == "page.delivered" and "pagerduty:" in r["notes"] for r in rows)

    assert (
        await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
    ).status_code == 200
    await w.engine.caller.drain()
    resolve = rx.to("/v2/enqueue")[-1].json
    assert resolve == {
        "routing_key": PD_KEY,
        "event_action": "resolve",
        "dedup_key": lease["lease_id"],
    }
    assert await w.rows("page.resolved")
    text = (await w.http.get("/metrics")).text
    assert "writ_stuck_total 1.0" in text
    assert 'writ_outbound_calls_total{kind="page",outcome="delivered"} 1.0' in text
    assert 'writ_outbound_calls_total{kind="page",outcome="resolved"} 1.0' in text
    assert 'writ_outbound_calls_total{kind="wake",outcome="delivered"} 1.0' in text


async def test_slack_message_says_who_holds_what_and_the_call(world: World, rx: Receiver) -> None:
    w = world
    await w.add("perf-agent", "agent")
    await w.add("ops-queue", "queue", wake=f"slack:{rx.base}/services/T000/B000/XXXSECRET")
    await w.add("cost-agent", "agent")
    lease = (
        await w.post(
            "perf-agent",
            "/v1/leases",
            {"resource": "prod/db", "intent": "double capacity", "ttl_s": 3600},
        )
    ).json()
    await w.tick(601)
    await w.tick(61)
    [msg] = rx.to("/services/")
    body = msg.json
    text = body["blocks"][0]["text"]["text"]
    assert "perf-agent holds prod/db" in body["text"]
    assert lease["acquired_at"] in text  # since when
    assert "Waiting behind it: 0" in text  # what waits
    assert f"POST /v1/leases/{lease['lease_id']}/revoke" in text  # the exact call
    assert "XXXSECRET" not in json.dumps(await w.rows())


async def test_an_agents_words_in_a_slack_page_are_shown_not_obeyed(
    world: World, rx: Receiver
) -> None:
    """The page carries the holder's intent, an agent's words: "<!channel>" in it pinged the
    whole on-call channel, and "<https://…|approve here>" put the agent's link in writ's
    page. Slack is sent them escaped, as text to show."""
    w = world
    await w.add("perf-agent", "agent")
    await w.add("ops-queue", "queue", wake=f"slack:{rx.base}/services/T000/B000/XXXSECRET")
    intent = "<!channel> <@U999> see <https://evil.example/ok|approve here> & go"
    body = {"resource": "prod/db", "intent": intent, "ttl_s": 3600}
    assert (await w.post("perf-agent", "/v1/leases", body)).status_code == 201
    await w.tick(601)
    await w.tick(61)
    [msg] = rx.to("/services/")
    shown = [msg.json["text"], msg.json["blocks"][0]["text"]["text"]]
    for text in shown:
        assert "<" not in text and ">" not in text, text
        assert "&lt;!channel&gt; &lt;@U999&gt;" in text and "approve here&gt; &amp; go" in text


async def test_generic_webhook_is_signed_and_the_snippet_verifies_it(
    world: World, rx: Receiver, tmp_path: Path
) -> None:
    """Writ-Signature is HMAC-SHA256 over "t.body"; the documented five-line snippet
    (docs/operations.md, run here as its own process) accepts it and rejects a forgery."""
    w = world
    await w.add("perf-agent", "agent", wake=f"{rx.base}/hooks/perf")
    await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "x", "ttl_s": 3600})
    await w.tick(601)
    [call] = rx.to("/hooks/perf")
    header = call.headers["writ-signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify_signature(SECRET, header, call.body)
    assert not verify_signature("other-secret", header, call.body)
    assert not verify_signature(SECRET, header, call.body + b" ")
    assert not verify_signature(SECRET, sign(SECRET, call.body, now=0), call.body)  # too old

    snippet = snippet_from_docs()
    for body, want in ((call.body, "valid"), (call.body.replace(b"prod", b"prid"), "invalid")):
        script = tmp_path / "verify.py"
        script.write_text(
            "import sys\n"
            + snippet
            + "\nbody = open(sys.argv[1], 'rb').read()\n"
            + "print('valid' if verify(sys.argv[2], sys.argv[3], body) else 'invalid')\n"
        )
        (tmp_path / "body").write_bytes(body)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(tmp_path / "body"),
            header,
            SECRET,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert out.decode().strip() == want


def snippet_from_docs() -> str:
    """The five-line verification snippet of docs/operations.md, as written there."""
    doc = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    m = re.search(r"<!-- verify-snippet -->\n```python\n(.*?)```", doc, re.S)
    assert m, "docs/operations.md lost its verify-snippet block"
    code = m.group(1)
    assert len(code.strip().splitlines()) == 5, code
    return code


async def test_retries_honour_retry_after_and_every_attempt_is_a_row(
    world: World, rx: Receiver
) -> None:
    """429 with Retry-After: 7, then 503 with no header (backoff), then 200: three attempts,
    the waits asked for, two retry rows and one delivered row."""
    w = world
    rx.script["/hooks/perf"] = [
        (429, {"retry-after": "7"}, b""),
        (503, {}, b""),
    ]
    await w.add("perf-agent", "agent", wake=f"{rx.base}/hooks/perf")
    await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "x", "ttl_s": 3600})
    await w.tick(601)
    assert len(rx.to("/hooks/perf")) == 3
    assert w.waits == [7.0, w.engine.caller.backoff * 2]
    retries = await w.rows("wake.retry")
    assert [("HTTP 429" in r["notes"], "HTTP 503" in r["notes"]) for r in retries] == [
        (True, False),
        (False, True),
    ]
    assert "retrying in 7s" in retries[0]["notes"]
    assert len(await w.rows("wake.delivered")) == 1
    text = (await w.http.get("/metrics")).text
    assert 'writ_outbound_calls_total{kind="wake",outcome="retry"} 2.0' in text
    assert 'writ_outbound_calls_total{kind="wake",outcome="delivered"} 1.0' in text
    # each attempt is signed afresh
    assert all("writ-signature" in c.headers for c in rx.to("/hooks/perf"))


async def test_retry_after_is_capped(world: World, rx: Receiver) -> None:
    w = world
    rx.script["/hooks/perf"] = [(503, {"retry-after": "86400"}, b"")]
    await w.add("perf-agent", "agent", wake=f"{rx.base}/hooks/perf")
    await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "x", "ttl_s": 3600})
    await w.tick(601)
    assert w.waits == [w.engine.caller.max_delay]


async def test_consent_escalation_pages_pagerduty_and_resolves_on_answer(
    world: World, rx: Receiver
) -> None:
    w = world
    await w.add("perf-agent", "agent")
    await w.add("cost-agent", "agent")
    await w.add("ops-queue", "queue", wake=f"pagerduty:{PD_KEY}")
    lease = (
        await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "x"})
    ).json()
    change = (
        await w.post(
            "perf-agent",
            f"/v1/leases/{lease['lease_id']}/changes",
            {"attribute": "capacity", "summary": "4->8"},
        )
    ).json()
    await w.post("perf-agent", f"/v1/leases/{lease['lease_id']}/release")
    consent = (
        await w.post(
            "cost-agent", "/v1/consents", {"change_id": change["change_id"], "reason": "r"}
        )
    ).json()
    await w.tick(121)
    trigger = rx.to("/v2/enqueue")[-1].json
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == consent["consent_id"]
    r = await w.post("ops-queue", f"/v1/consents/{consent['consent_id']}/deny")
    assert r.status_code == 200, r.text
    await w.engine.caller.drain()
    resolve = rx.to("/v2/enqueue")[-1].json
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == consent["consent_id"]


async def test_bad_routes_and_the_policy_hide_secrets(world: World) -> None:
    w = world
    with pytest.raises(Exception, match="routing key"):
        await w.engine.add_principal(None, "q2", "queue", wake="pagerduty:no")
    with pytest.raises(Exception, match="https"):
        await w.engine.add_principal(None, "q3", "queue", wake="slack:hooks")
    await w.add("ops-queue", "queue", wake=f"pagerduty:{PD_KEY}")
    await w.add(
        "slack-queue", "queue", wake="slack:https://hooks.slack.test/services/T/B/XXSECRETXX"
    )
    await w.add("nosy-agent", "agent")
    r = await w.http.get("/v1/policy", headers={"Authorization": f"Bearer {w.tokens['ops-queue']}"})
    assert r.status_code == 200 and SECRET not in r.text
    assert r.json()["webhook_secret"] == "(set)"
    # any principal may list the principals: the routing key and the webhook stay hidden
    r = await w.http.get(
        "/v1/principals", headers={"Authorization": f"Bearer {w.tokens['nosy-agent']}"}
    )
    assert r.status_code == 200
    assert PD_KEY not in r.text and "XXSECRETXX" not in r.text
    wakes = {p["name"]: p["wake"] for p in r.json()["principals"]}
    assert wakes["ops-queue"] == "pagerduty:…" + PD_KEY[-4:]
    assert PD_KEY not in json.dumps(await w.rows())


# ----------------------------------------------------------------------------- a hostile route
def _route(
    answer: bytes, trickle: bool = False
) -> tuple[str, threading.Event, ThreadingHTTPServer]:
    """A route (a wake URL, a rollback route) on a raw socket server: ``answer`` sent at
    once, or a head that never ends, a byte each 0.1 s."""
    import socket
    import socketserver

    stop = threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536) or b"\r\n\r\n"
            try:
                conn.sendall(answer)
                while trickle and not stop.wait(0.1):
                    conn.sendall(b"x")
            except OSError:
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/route", stop, server


async def test_a_route_is_never_read_past_its_head_nor_past_its_time(world: World) -> None:
    """The route's status is its answer: an endless body is never read (it was read whole,
    into writ's memory), a head sent a byte at a time ends the call within CALL_SPAN
    timeouts (it held it, and an approver's request, for as long as the route went on), and
    a Retry-After of "²" is no number (str.isdigit said it was: a ValueError)."""
    import time

    from writ.engine.wake import CALL_SPAN, retry_after_s

    caller = world.engine.caller
    caller.timeout = 0.2
    endless = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"100000\r\n" + b" " * 2**20
    )
    url, stop, server = _route(endless + b"\r\n" * 0)
    try:
        result = await caller.post(url, {"a": 1}, attempts=1)
        assert result.ok and result.status == 200
        url, stop2, server2 = _route(b"HTTP/1.1 200 OK\r\n", trickle=True)
        started = time.monotonic()
        result = await caller.post(url, {"a": 1}, attempts=1)
        assert time.monotonic() - started < 0.2 * CALL_SPAN + 1
        assert not result.ok and result.error == f"no answer within {0.2 * CALL_SPAN:g}s"
        stop2.set()
        server2.shutdown()
    finally:
        stop.set()
        server.shutdown()
    assert retry_after_s("\xb2") is None and retry_after_s("7") == 7.0
