"""Schemathesis over the in-process app's ``/openapi.json``.

Every operation, with schema-valid and schema-breaking inputs, sent with a valid token and
with an invalid one: no response is a 5xx, and every response matches what the OpenAPI
document promises for it (status, content type, body schema). Bounded for the default run;
``WRIT_FUZZ_EXAMPLES=500`` (say) runs longer.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from writ.engine import Engine
from writ.policy import parse
from writ.server import create_app
from writ.stores import open_store

ADMIN = "fuzz-admin-token"
EXAMPLES = int(os.environ.get("WRIT_FUZZ_EXAMPLES", "12"))
POLICY = '[blast_radius]\ndb-tier = ["prod/db", "routing/db-tier", "capacity/db"]\n'
MAX_WAIT = 0.05  # generated wait_s values are capped so long-polls cannot stall the run

# Schemathesis starts the app's lifespan on first use and keeps it until the process ends,
# so the store lives in a directory removed at exit.
_DIR = tempfile.mkdtemp(prefix="writ-fuzz-")
atexit.register(shutil.rmtree, _DIR, True)


def _app() -> Any:
    url = f"sqlite:///{_DIR}/writ.db"

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
