"""CLI output at 80 and at 160 columns (rich's console width, from COLUMNS): tables fit, names
are never cut, free text wraps between words, and a wide terminal shows every column."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.server_fixtures import LiveServer, unique
from writ.cli import main

INTENT = "double capacity before the evening peak so routing can move traffic"


def run(args: list[str], env: dict[str, str], width: int) -> Result:
    result = CliRunner().invoke(
        main, args, env={**env, "COLUMNS": str(width)}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert len(line.rstrip()) <= width, f"{len(line.rstrip())} > {width}: {line!r}"
    assert "…" not in re.sub(r"head [0-9a-f]+…", "", text)  # nothing cut short with an ellipsis


def words_whole(text: str, *phrases: str) -> None:
    """Every word of each phrase appears whole (wrapping moved words, never split them)."""
    flat = text.split()
    for phrase in phrases:
        for word in phrase.split():
            assert word in flat or any(word in w for w in flat), (word, text)


@pytest.fixture
def held(live_server: LiveServer) -> tuple[dict[str, str], str, str]:
    holder = unique("perf")
    _, token = live_server.principal("agent", holder)
    resource = f"{unique('o')}/db"
    with live_server.client(token) as c:
        c.acquire(resource, INTENT, ttl_s=600)
    return live_server.env(token), resource, holder


def test_status_at_80_and_160(held: tuple[dict[str, str], str, str]) -> None:
    env, resource, holder = held
    narrow = run(["status", resource], env, 80).stdout
    fits(narrow, 80)
    rows = [line for line in narrow.splitlines() if resource in line]
    assert len(rows) == 1 and holder in rows[0]  # names whole, on the row's first line
    words_whole(narrow, INTENT)
    assert "RESOURCE" in narrow.splitlines()[0] and "WAITERS" not in narrow.splitlines()[0]
    assert "(not shown at 80 columns: WAITERS" in narrow
    wide = run(["status", resource], env, 160).stdout
    fits(wide, 160)
    header, row = wide.splitlines()[:2]
    for column in ("RESOURCE", "HOLDER", "INTENT", "FENCING TOKEN", "EXPIRES", "WAITERS"):
        assert column in header
    assert resource in row and holder in row and INTENT in row  # one line: the full width used
    assert "not shown" not in wide


def test_status_with_names_longer_than_any_table_prints_blocks(live_server: LiveServer) -> None:
    holder = unique("vendor-b-routing-optimizer-production-eu-west")
    _, token = live_server.principal("agent", holder)
    resource = f"{unique('orders')}/checkout-write/primary-cluster-eu-west-1/replica-set-a"
    with live_server.client(token) as c:
        c.acquire(resource, INTENT, ttl_s=600)
    out = run(["status", resource], live_server.env(token), 80).stdout
    fits(out, 80)
    assert out.splitlines()[0].strip() == resource
    assert any(line.split() == ["holder", holder] for line in out.splitlines())
    words_whole(out, INTENT)


def test_who_at_80_and_160(held: tuple[dict[str, str], str, str]) -> None:
    env, resource, holder = held
    for width in (80, 160):
        out = run(["who", resource], env, width).stdout
        fits(out, width)
        assert resource in out.split()[0] and holder in out.split()
        words_whole(out, INTENT)
    lines = [len(run(["who", resource], env, w).stdout.splitlines()) for w in (80, 160)]
    assert lines[1] < lines[0]  # the wider console is used


def test_demo_at_80_and_160(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    narrow = run(["demo"], {}, 80).stdout
    fits(narrow, 80)
    for name in ("routing/db-tier", "svc-ops-princess", "consent_required", "perf-agent"):
        assert name in narrow
    titles = [line for line in narrow.splitlines() if "run 1: without writ" in line]
    assert titles and "run 2" not in titles[0]  # one timeline after the other
    wide = run(["demo"], {}, 160).stdout
    fits(wide, 160)
    assert re.search(r"run 1: without writ .* run 2: through writ", wide)  # side by side
    for name in ("routing/db-tier", "svc-ops-princess", "consent_required"):
        assert name in wide


def test_postmortem_does_not_depend_on_the_terminal(
    held: tuple[dict[str, str], str, str], live_server: LiveServer
) -> None:
    token_env, resource, _ = held
    env = live_server.env()
    at = json.loads(run(["who", resource, "--json"], token_env, 80).stdout)["lease"]
    args = ["postmortem", "--around", at["acquired_at"], "--window", "10m"]
    args += ["--resource", resource.split("/")[0]]
    outs: list[Any] = [run(args, env, w).stdout for w in (80, 160)]
    assert outs[0] == outs[1]
    table = [line for line in outs[0].splitlines() if line.startswith("|")]
    assert table and all(line.endswith("|") for line in table)  # no row broken by the width
