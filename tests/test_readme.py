"""The README's first screen is true: its Python example runs against a live server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(live_server: Any) -> None:
    """The ```python block acquires, records a change, and releases on exit."""
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README has a python example"
    name, token = live_server.principal("agent")
    source = code.group(1).replace('"http://127.0.0.1:7411"', repr(live_server.url))
    source = source.replace('"writ_..."', repr(token))
    calls: list[dict[str, Any]] = []
    namespace: dict[str, Any] = {"resize": lambda **kw: calls.append(kw)}
    exec(compile(source, "README.md", "exec"), namespace)
    assert calls and calls[0]["capacity"] == 8 and calls[0]["fencing_token"] > 0
    with live_server.client() as admin:
        lease = admin.leases(resource="prod/db", limit=1)["leases"][0]
        assert lease["holder"] == name and lease["state"] == "released"
        rows = admin.audit(resource="prod/db", limit=100_000)["rows"]
    assert any(r["event"] == "change.recorded" and r["agent_id"] == name for r in rows)


def test_readme_names_the_two_commands() -> None:
    """The two set-up commands of the README exist, and CI runs the test one."""
    text = README.read_text()
    assert "./scripts/serve" in text and "./scripts/test" in text
    root = README.parent
    assert (root / "scripts" / "serve").exists() and (root / "scripts" / "test").exists()
    assert "scripts/test" in (root / ".ci" / "run").read_text()


def _shell_blocks(text: str) -> list[str]:
    """The ```sh blocks after "Two commands" (that one serves and runs the suite itself)."""
    after = text.split("## A first lease", 1)[1]
    return re.findall(r"```sh\n(.*?)```", after, re.S)


def test_readme_shell_blocks_run_as_written(tmp_path: Path) -> None:
    """Every shell block from "A first lease" on runs verbatim with bash -e, in a temp dir that
    looks like the clone (.venv and examples/ linked in), against a freshly served store. The
    only substitutions are the served address for 127.0.0.1:7411 and the test's admin token for
    `change-me` (the token `./scripts/serve` was started with)."""
    import os
    import subprocess

    from tests.server_fixtures import ADMIN_TOKEN, serve

    root = README.parent
    blocks = _shell_blocks(README.read_text())
    assert len(blocks) >= 2 and "writ run" in blocks[0] and "writ demo" in blocks[-1]
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(root / ".venv")
    (work / "examples").symlink_to(root / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRIT_")}
    env["COLUMNS"] = "160"  # a wide terminal: status shows each lease on one line
    with serve(tmp_path / "writ.db") as srv:
        script = "\n".join(blocks)
        script = script.replace("http://127.0.0.1:7411", srv.url).replace("change-me", ADMIN_TOKEN)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        with srv.client() as admin:
            leases = admin.leases(resource="prod/db", limit=10)["leases"]
    out = done.stdout
    assert "perf-agent" in out and "double capacity" in out  # writ status showed the lease
    assert "resize: capacity -> 8" in out and "resize: holding prod/db/" in out
    assert sorted((l["intent"], l["state"]) for l in leases) == [
        ("double capacity", "released"),
        ("resize", "released"),
    ]
    assert "the DB is down at 02:19" in out or "02:19" in out  # writ demo ran
    assert (work / "writ-demo" / "postmortem.md").exists()
