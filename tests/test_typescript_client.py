"""The TypeScript client's place in the test run (its own tests live in clients/typescript)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script")
def test_typescript_tests_are_skipped_with_the_reason_without_node(tmp_path: Path) -> None:
    """scripts/test-typescript, on a machine without node, says so and succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test-typescript")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TypeScript client tests skipped: node and npm not found" in done.stdout
