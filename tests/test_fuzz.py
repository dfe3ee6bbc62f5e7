"""Schemathesis over the in-process app's ``/openapi.json``.

Every operation, with schema-valid and schema-breaking inputs, sent with a valid token and
with an invalid one: no response is a 5xx, and every response matches what the OpenAPI
document promises for it (status, content type, body schema). Then hypothesis over raw
requests with hostile input schemathesis does not send (see "hostile input" below). Bounded
for the default run; ``WRIT_FUZZ_EXAMPLES=500`` (say) runs longer.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import tempfile
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from writ.api.app import create_app
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores import open_store

ADMIN = "fuzz-admin-token"
EXAMPLES = int(os.environ.get("WRIT_FUZZ_EXAMPLES", "12"))
POLICY = '[blast_radius]\ndb-tier = ["prod/db", "routing/db-tier", "capacity/db"]\n'
MAX_WAIT = 0.05  # generated wait_s values are capped so long-polls cannot stall the run

# Schemathesis starts the app's lifespan on first use and keeps it until the process ends,
# so the store lives in a directory removed at exit.
_DIR = tempfile.mkdtemp(prefix="writ-fuzz-")
atexit.register(shutil.rmtree, _DIR, True)


def _app(directory: str = _DIR) -> Any:
    """An app on a fresh SQLite store in ``directory``, with the admin principal."""
    url = f"sqlite:///{directory}/writ.db"

    async def add_admin() -> None:  # offline on the store, as `writ principal add` does
        engine = Engine(open_store(url))
        await engine.start(background=False)
        try:
            await engine.add_principal(None, "admin", "human", admin=True, token=ADMIN)
        finally:
            await engine.stop()

    asyncio.run(add_admin())
    return create_app(Engine(open_store(url), parse(POLICY)))


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
)
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _cap_waits(case: Any) -> None:
    for part in (case.query, case.body):
        if isinstance(part, dict) and "wait_s" in part:
            value = part["wait_s"]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_WAIT:
                part["wait_s"] = MAX_WAIT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_within_its_schema(case: Any) -> None:
    """With a valid token and with a bad one, no generated request gets a 5xx or a response
    outside its documented schema; the bad token always gets 401."""
    _cap_waits(case)
    ok = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code < 500, (case.method, case.path, ok.status_code, ok.text[:500])
    case.validate_response(ok, checks=CHECKS)
    if case.path == "/v1/health":
        return
    bad = case.call(headers={"Authorization": "Bearer not-a-writ-token"})
    # 401, unless the request is refused before anyone is asked who the caller is: no such
    # route or method, a body too large or not JSON at all
    assert bad.status_code in (401, 404, 405, 413, 422), (
        case.method,
        case.formatted_path,
        bad.status_code,
        bad.text[:500],
    )
    if bad.status_code in (404, 405):
        assert "no route" in bad.json()["error"]["message"], bad.text
    case.validate_response(bad, checks=CHECKS)


# ----------------------------------------------------------------------------- hostile input
# Hypothesis over raw requests, for what schemathesis does not send: strings that are not
# text (lone surrogates and NULs as JSON escapes and percent-encoded), nesting thousands
# deep, numbers too large for a float or an int, booleans where numbers go, bodies declared
# as anything but JSON — on every route of the OpenAPI document, the lean path included
# (``POST /v1/leases`` with only its common fields). No answer may be a 5xx.

HOSTILE_EXAMPLES = int(os.environ.get("WRIT_FUZZ_EXAMPLES", "0")) * 10 or 250
_HOSTILE_DIR = tempfile.mkdtemp(prefix="writ-fuzz-hostile-")
atexit.register(shutil.rmtree, _HOSTILE_DIR, True)

NASTY_SCALARS = [
    '"\\ud800"',
    '"x\\udfffy"',
    '"\\u0000"',
    '"a\\u001b[2Jb"',
    "1e400",
    "-1e400",
    "1" * 5000,  # more digits than Python converts to an int
    "123456789012345678901234567890",
    "true",
    "false",
    "null",
    "-0",
    "NaN",
    "Infinity",
    '"30"',
    '""',
    '"prod/../secrets"',
    '"dot/./db"',
    '"' + "x" * 70_000 + '"',
]
NASTY_SEGMENTS = [
    "ls_x",
    ".",
    "..",
    "%2e%2e",
    "%00",
    "a%00b",
    "%1b",
    "%ED%A0%80",
    "%FF",
    "a%2Fb",
    "x" * 300,
    "%F0%9F%9A%80",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/merge-patch+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
]
ACQUIRE_FIELDS = ["resource", "intent", "ttl_s", "wait_s", "touches"]


def _operations(app: Any) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path template, query parameter names, body field names) of every route."""
    doc = app.openapi()
    schemas = doc.get("components", {}).get("schemas", {})
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            fields: list[str] = []
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = json.dumps(content.get("schema", {}))
            for name in re.findall(r"#/components/schemas/(\w+)", ref):
                fields += list(schemas.get(name, {}).get("properties", {}))
            out.append((method.upper(), path, query, fields))
    return out


@st.composite
def _json_text(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text, as an attacker writes it: valid values and hostile ones."""
    choice = draw(st.integers(0, 9))
    if choice <= 3:
        return draw(st.sampled_from(NASTY_SCALARS))
    if choice == 4:
        n = draw(st.sampled_from([31, 32, 33, 40, 500, 5000, 100_000]))
        return "[" * n + "]" * n
    if choice == 5:  # text of any code point, surrogates included, escaped as JSON does
        chars = st.characters(codec=None, exclude_categories=())
        return json.dumps(draw(st.text(chars, max_size=12)))
    if choice == 6 and depth < 3:
        items = draw(st.lists(_json_text(depth + 1), max_size=3))
        return "[" + ",".join(items) + "]"
    if choice == 7 and depth < 3:
        keys = draw(
            st.lists(st.sampled_from(['"k"', '"\\ud800"', '"\\u0000"', '"ok"']), max_size=3)
        )
        return "{" + ",".join(f"{k}:{draw(_json_text(depth + 1))}" for k in keys) + "}"
    return draw(st.sampled_from(['"prod/db"', '"double capacity"', "30", "0", '["*"]', "1"]))


GOOD = {
    "intent": '"double capacity"',
    "reason": '"the 02:17 alert"',
    "summary": '"4 to 8"',
    "attribute": '"capacity"',
    "runbook": '"R-1"',
    "paged": '"oncall"',
    "notes": '"n"',
    "vendor": '"acme"',
    "ttl_s": "30",
    "wait_s": "0",
    "touches": '["capacity"]',
    "kind": '"agent"',
    "protect_s": "60",
    "until": '"30m"',
    "allow": "[]",
    "method": '"POST"',
    "path": '"/"',
    "before": "4",
    "after": '{"n": 8}',
    "allowed": "false",
}


@st.composite
def _good(draw: st.DrawFn, field: str) -> str:
    """A value that passes for ``field`` (a fresh resource or name where one is named)."""
    word = draw(st.from_regex(r"[a-z]{8}", fullmatch=True))
    if field in ("resource", "prefix"):
        return f'"fz/{word}"'
    if field == "name":
        return f'"{word}"'
    return GOOD.get(field, '"x"')


def _capped(field: str, value: str) -> str:
    """Numbers for wait_s stay tiny: a generated long poll must not stall the run."""
    if field == "wait_s":
        try:
            number = float(json.loads(value))
        except (ValueError, TypeError, RecursionError):
            return value
        if number == number and abs(number) > MAX_WAIT:
            return "0"
    return value


@st.composite
def _request(draw: st.DrawFn, ops: list[tuple[str, str, list[str], list[str]]]) -> dict[str, Any]:
    lean = draw(st.booleans()) and draw(st.booleans())
    if lean:
        method, template, query, fields = "POST", "/v1/leases", [], ACQUIRE_FIELDS
    else:
        method, template, query, fields = draw(st.sampled_from(ops))
    segment = st.sampled_from(NASTY_SEGMENTS) | st.from_regex(r"[a-z0-9_.%-]{1,12}", fullmatch=True)
    path = re.sub(r"\{[^}]+\}", lambda _m: draw(segment), template)
    params = {}
    for name in draw(st.lists(st.sampled_from(query), unique=True)) if query else []:
        raw = draw(
            st.sampled_from(
                [*NASTY_SEGMENTS, "1e400", "true", "-1", "99999999999999999999", "prod"]
            )
        )
        params[name] = "0" if name == "wait_s" else raw
    body = None
    if fields or method in ("POST", "PUT", "PATCH"):
        keys = draw(st.lists(st.sampled_from(fields or ["x"]), unique=True, max_size=6))
        if lean:
            keys = list(dict.fromkeys(["resource", "intent", *keys]))
        # mostly good values, so that a hostile one gets past the checks before it
        pairs = [
            f"{json.dumps(k)}:{_capped(k, draw(_json_text()) if draw(st.integers(0, 2)) == 0 else draw(_good(k)))}"
            for k in keys
        ]
        body = "{" + ",".join(pairs) + "}"
        if draw(st.integers(0, 9)) == 0:
            body = draw(_json_text())  # not even an object
    ctype = draw(st.sampled_from(CONTENT_TYPES)) if draw(st.booleans()) else "application/json"
    query_string = "&".join(f"{k}={v}" for k, v in params.items())
    return {
        "method": method,
        "url": path + (f"?{query_string}" if query_string else ""),
        "body": body,
        "content_type": ctype,
    }


HOSTILE_APP = _app(_HOSTILE_DIR)
HOSTILE_OPS = _operations(HOSTILE_APP)


def test_hostile_input_never_gets_a_5xx() -> None:
    """Non-text strings, deep nesting, huge numbers, booleans for numbers and odd content
    types, on every route and the lean path: every answer is below 500 and has the error
    shape when it is an error."""
    with TestClient(HOSTILE_APP, raise_server_exceptions=False) as client:
        agent = client.post(
            "/v1/principals",
            json={"name": "fuzz-agent", "kind": "agent"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()["token"]

        @given(req=_request(HOSTILE_OPS), who=st.sampled_from([ADMIN, "agent"]))
        @settings(
            max_examples=HOSTILE_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def one(req: dict[str, Any], who: str) -> None:
            headers = {"Authorization": f"Bearer {agent if who == 'agent' else ADMIN}"}
            if req["body"] is not None:
                headers["Content-Type"] = req["content_type"]
            r = client.request(
                req["method"],
                req["url"],
                content=None
                if req["body"] is None
                else req["body"].encode("utf-8", "surrogatepass"),
                headers=headers,
            )
            assert r.status_code < 500, (
                req["method"],
                req["url"],
                (req["body"] or "")[:300],
                r.status_code,
                r.text[:300],
            )
            if r.status_code >= 400:
                err = r.json()["error"]
                assert isinstance(err["code"], str) and isinstance(err["message"], str), r.text

        one()
