"""scripts/rooms_codemod.py: rewrites writ imports from the move table, idempotently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODEMOD = Path(__file__).parents[1] / "scripts" / "rooms_codemod.py"


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CODEMOD), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "src" / "writ" / "stores"
    pkg.mkdir(parents=True)
    (pkg / "pg.py").write_text(
        '"""Uses writ.errors in prose: left alone."""\n'
        "from ..errors import Conflict, Invalid\n"
        "from ..policy import Policy, PolicyError  # both\n"
        "from .base import Store\n"
        "from writ import __version__, server\n"
        "import writ.logs as logs\n"
        "import writ.metrics\n"
        "LOGGER = 'writ.engine'\n"
        "\n"
        "def f():\n"
        "    from writ.authority import Authority, decide\n"
        "    return Authority, decide\n"
    )
    return pkg / "pg.py"


def test_rewrites_relative_moved_and_split_imports(tmp_path: Path) -> None:
    f = _tree(tmp_path)
    done = _run("--wp", "all", tmp_path / "src")
    assert done.returncode == 0, done.stderr
    assert f.read_text() == (
        '"""Uses writ.errors in prose: left alone."""\n'
        "from writ.core.errors import Conflict, Invalid\n"
        "from writ.core.policy import Policy\n"
        "from writ.core.errors import PolicyError  # both\n"
        "from writ.stores.base import Store\n"
        "from writ._version import __version__\n"
        "from writ.api import app as server\n"
        "import writ.telemetry.logs as logs\n"
        "import writ.metrics\n"
        "LOGGER = 'writ.engine'\n"
        "\n"
        "def f():\n"
        "    from writ.rules.authority import Authority\n"
        "    from writ.core.grants import decide\n"
        "    return Authority, decide\n"
    )
    assert "bare `import writ.metrics`" in done.stdout  # printed for a hand fix, not rewritten


def test_check_mode_and_a_second_run_change_nothing(tmp_path: Path) -> None:
    f = _tree(tmp_path)
    before = f.read_text()
    check = _run("--wp", "all", "--check", tmp_path / "src")
    assert check.returncode == 1 and "would rewrite" in check.stdout
    assert f.read_text() == before  # --check writes nothing
    assert _run("--wp", "all", tmp_path / "src").returncode == 0
    after = f.read_text()
    again = _run("--wp", "all", "--check", tmp_path / "src")
    assert again.returncode == 0 and "would rewrite" not in again.stdout
    assert f.read_text() == after


def test_only_the_named_work_packages_apply(tmp_path: Path) -> None:
    f = _tree(tmp_path)
    assert _run("--wp", "0", tmp_path / "src").returncode == 0
    text = f.read_text()
    assert "from writ.core.errors import Conflict, Invalid\n" in text
    assert "    from writ.authority import Authority, decide\n" in text  # a WP1 row: untouched
    assert "from writ import server\n" in text  # a WP2 row: untouched


def test_src_has_no_relative_import_left() -> None:
    src = Path(__file__).parents[1] / "src"
    assert _run("--absolutize", "--check", src).returncode == 0
    assert _run("--wp", "0", "--check", src).returncode == 0
