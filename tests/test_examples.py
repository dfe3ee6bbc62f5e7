"""Every example in examples/ runs as its README says, against a real server."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_fixtures import LiveServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(live_server: LiveServer, *cmd: str) -> str:
    env = {
        **os.environ,
        "WRIT_URL": live_server.url,
        "WRIT_ADMIN_TOKEN": live_server.admin_token,
        "WRIT": f"{shlex.quote(sys.executable)} -m writ.cli",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WRIT_TOKEN", None)
    done = subprocess.run(
        cmd, cwd=EXAMPLES.parent, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_agent_lease(live_server: LiveServer) -> None:
    out = run_example(live_server, sys.executable, "examples/agent_lease.py")
    assert "refused: perf-agent-" in out and "must ask perf-agent-" in out
    assert "now: none" in out


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script")
def test_run_command(live_server: LiveServer) -> None:
    out = run_example(live_server, "bash", "examples/run_command.sh")
    assert "deploy: refused while batch-runner holds" in out
    assert out.index("deploy: queued") < out.index("batch: done") < out.index("deploy: holding")


def test_mcp_session(live_server: LiveServer) -> None:
    out = run_example(live_server, sys.executable, "examples/mcp_session.py")
    assert "Refused: routing-agent-" in out and "ask_consent(change_id=" in out
    assert "(the human queue holding the key) can approve it" in out
    assert "writ://resources/" in out


def test_gate_toy_api(live_server: LiveServer) -> None:
    out = run_example(live_server, sys.executable, "examples/gate_toy_api.py")
    before, after = out.split("with lease", 1)
    assert "-> 423 held" in before and "[admin API] POST" not in before
    assert "'writ-fencing-token'" in after and "-> 200" in after
    assert "gate.refused" in after and "gate.passed" in after
    assert "writ gate: acting as admin-api-gate-" in before and "warning" not in before


def test_examples_default_to_the_readme_server() -> None:
    """Run without WRIT_URL, each example talks to the server examples/README.md starts (7421)."""
    readme = (EXAMPLES / "README.md").read_text()
    assert "--port 7421" in readme and "default `http://127.0.0.1:7421`" in readme
    for path in sorted(EXAMPLES.iterdir()):
        if path.suffix in {".py", ".mjs", ".sh"}:
            text = path.read_text()
            named = {port for port in ("7411", "7421") if f"127.0.0.1:{port}" in text}
            assert named <= {"7421"}, f"{path.name} defaults to another server: {named}"
