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
