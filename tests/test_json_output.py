"""JSON that may reach a terminal never carries a character the terminal would obey.

writ writes JSON with ``ensure_ascii=False`` (non-ASCII text stays readable), and JSON escapes
only C0 itself: a C1 control from agent text (U+009B, the one-byte CSI that starts a terminal
escape sequence), a bidi override (U+202E), a line separator, a zero-width character or DEL
came out raw in ``--json``, ``writ watch --json``, ``writ audit export``, ``writ lint``'s JSON,
``writ postmortem --format json`` and JSON logs. Each is now written as a ``\\uXXXX`` escape:
the output is still valid JSON and parses to the same value.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.server_fixtures import LiveServer, unique
from writ.cli import main
from writ.core.textsafe import dumps, json_printable
from writ.telemetry.logs import JsonFormatter

# text writ accepts from an agent (no C0 but tab and newline), every character a terminal
# would obey or a reader be misled by: C1 (CSI, OSC, NEL), DEL, separators, bidi, zero-width
HOSTILE = (
    "red\u009b31m \u009d0;pwned\u009c \x7f \u0085 \u2028\u2029 \u202egnp.exe \u2066\u200b\ufeff"
    " café\n4→8"
)
RAW = [c for c in HOSTILE if c not in " \ncafé4→8abcdeghijklmnopqrstuvwxyz.0123456789;"]


def _inert(text: str) -> None:
    for c in RAW:
        assert c not in text, f"U+{ord(c):04X} reached the output raw"


@pytest.mark.parametrize(
    "value",
    [HOSTILE, {HOSTILE: [HOSTILE, 1, None, {"k": HOSTILE}]}, "\ud800 lone", "plain café"],
)
def test_dumps_escapes_what_printable_would_and_parses_equal(value: Any) -> None:
    for kw in ({}, {"indent": 2}, {"separators": (",", ":")}):
        text = dumps(value, **kw)
        _inert(text)
        assert "\ud800" not in text
        assert json.loads(text) == value
    assert "café\\n4→8" in dumps(HOSTILE)  # other text stays as it is, readable
    assert json_printable('"a"') == '"a"'


def test_status_and_who_json_are_inert(live_server: LiveServer) -> None:
    _, token = live_server.principal("agent")
    resource = f"{unique('js')}/db"
    run = CliRunner().invoke
    env = live_server.env(token)
    with live_server.client(token) as c:
        lease = c.acquire(resource, HOSTILE, ttl_s=60)
        c.change(lease["lease_id"], "capacity", HOSTILE)
    status = run(main, ["status", resource, "--json"], env=env)
    assert status.exit_code == 0, status.output
    _inert(status.stdout)
    assert json.loads(status.stdout)["leases"][0]["intent"] == HOSTILE
    who = run(main, ["who", resource, "--json"], env=env)
    assert who.exit_code == 0, who.output
    _inert(who.stdout)
    assert json.loads(who.stdout)["lease"]["intent"] == HOSTILE
    export = run(main, ["audit", "export", "--resource", resource], env=live_server.env())
    assert export.exit_code == 0, export.output
    _inert(export.stdout)
    rows = [json.loads(x) for x in export.stdout.splitlines()]
    assert any(HOSTILE in (r["notes"] or "") for r in rows)


def test_offline_export_postmortem_and_lint_json_are_inert(tmp_path: Path) -> None:
    from writ.engine import Engine
    from writ.stores import open_store

    url = f"sqlite:///{tmp_path / 'w.db'}"

    async def story() -> None:
        e = Engine(open_store(url))
        await e.start(background=False)
        try:
            agent, _ = await e.add_principal(None, "perf-agent", "agent")
            lease = await e.acquire(agent, resource="prod/db", intent=HOSTILE)
            await e.consents.record_change(agent, lease["lease_id"], "capacity", HOSTILE)
        finally:
            await e.stop()

    asyncio.run(story())
    run = CliRunner().invoke
    export = run(main, ["audit", "export", "--store", url])
    assert export.exit_code == 0, export.output
    _inert(export.stdout)
    rows = [json.loads(x) for x in export.stdout.splitlines()]
    assert any(HOSTILE in (r["notes"] or "") for r in rows)

    report = run(main, ["postmortem", "--store", url, "--format", "json"])
    assert report.exit_code == 0, report.output
    _inert(report.stdout)
    assert HOSTILE in json.loads(report.stdout)["changes"][0]["summary"]

    # writ lint names each input when given several: a file name is text from anywhere too
    named = tmp_path / "rows\u202elnosj.jsonl"
    named.write_text(export.stdout, encoding="utf-8")
    for fmt in ("json", "jsonl"):
        linted = run(main, ["lint", "--format", fmt, str(named), str(named)])
        assert linted.exit_code in (0, 1), linted.output
        _inert(linted.stdout)
        assert "rows\\u202elnosj.jsonl" in linted.stdout  # shown, escaped


def test_json_log_lines_are_inert() -> None:
    record = logging.LogRecord("writ.decision", logging.INFO, __file__, 1, HOSTILE, None, None)
    record.writ = {"notes": HOSTILE, "path": "/v1/\u009b"}  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    _inert(line)
    out = json.loads(line)
    assert out["message"] == HOSTILE and out["notes"] == HOSTILE and out["path"] == "/v1/\u009b"
