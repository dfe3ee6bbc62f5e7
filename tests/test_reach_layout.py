"""The ways out of writ after the rooms split (issue 17, WP5): ``writ.client``, ``writ.mcp`` and
``writ.gate`` are packages whose public names, MCP tool list and imports stay what they were.

``tests/data/mcp_tools.json`` and ``mcp_resources.json`` are the tool and resource lists recorded
before the split: tool order, names, schemas and annotations are what an MCP client sees."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path
from typing import Any

import pytest

import writ
from writ.client import AsyncClient

SRC = Path(writ.__file__).parent
DATA = Path(__file__).parent / "data"


def _dump(items: list[Any]) -> list[Any]:
    return [x.model_dump(mode="json") for x in items]


async def test_mcp_lists_the_recorded_tools_and_resources() -> None:
    """tools/list and resources/list equal the lists recorded before the split: same tools in
    the same order, with the same input schemas, descriptions and annotations."""
    from writ.mcp import create_server

    server = create_server(AsyncClient("http://127.0.0.1:1", token="x"))
    tools = _dump(await server.list_tools())
    resources = {
        "resources": _dump(await server.list_resources()),
        "templates": _dump(await server.list_resource_templates()),
    }
    assert tools == json.loads((DATA / "mcp_tools.json").read_text())
    assert resources == json.loads((DATA / "mcp_resources.json").read_text())


@pytest.mark.parametrize("package", ["writ.client", "writ.gate", "writ.mcp"])
def test_every_exported_name_exists(package: str) -> None:
    """Each package's ``__all__`` names something real (mypy reads the same list)."""
    module = importlib.import_module(package)
    assert module.__all__
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


def test_public_names_keep_their_paths() -> None:
    """The documented names answer at their old paths, and the client's classes still call
    themselves ``writ.client.X`` (reprs, docs)."""
    import writ.client
    import writ.gate
    import writ.mcp
    import writ.net.listen

    for name in ("Client", "AsyncClient", "Lease", "AsyncLease"):
        cls = getattr(writ.client, name)
        assert cls.__module__ == "writ.client"
        assert repr(cls) == f"<class 'writ.client.{name}'>"
    assert writ.Client is writ.client.Client and writ.AsyncClient is writ.client.AsyncClient
    assert writ.gate.parse_listen is writ.net.listen.parse_listen
    assert writ.gate.DEFAULT_LISTEN == "127.0.0.1:7412"
    assert writ.mcp.TOOL_NAMES[0] == "acquire_write_authority"


def _writ_imports(path: Path) -> set[str]:
    """The writ modules a file imports, at any depth, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING":
            skip |= {id(s) for b in n.body for s in ast.walk(b)}
    out: set[str] = set()
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.split(".")[0] == "writ"}
        elif isinstance(n, ast.ImportFrom):
            assert n.level == 0, f"{path}: relative import"
            if (n.module or "").split(".")[0] == "writ":
                out.add(n.module or "")
    return out


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("client", ("writ.core.", "writ._version", "writ.client")),
        ("net", ("writ.core.", "writ.net.")),
        ("gate", ("writ.core", "writ._version", "writ.gate.", "writ.net.", "writ.telemetry.")),
        ("mcp", ("writ.core.", "writ._version", "writ.client", "writ.mcp", "writ.net.")),
    ],
)
def test_each_way_out_imports_only_what_its_layer_allows(
    package: str, allowed: tuple[str, ...]
) -> None:
    """The client needs only the core (it is what other programs import); the MCP server
    talks to writ through the client, never the engine, the HTTP app or the gate."""
    bad = {
        f"{p.relative_to(SRC)}: {m}"
        for p in sorted((SRC / package).rglob("*.py"))
        for m in _writ_imports(p)
        if not m.startswith(allowed)
    }
    assert bad == set()


@pytest.mark.parametrize("package", ["client", "gate", "mcp", "net/listen.py"])
def test_modules_and_functions_stay_small(package: str) -> None:
    """No module over 700 lines, no function over 120 (issue 17)."""
    long = []
    root = SRC / package
    for p in sorted(root.rglob("*.py") if root.is_dir() else [root]):
        text = p.read_text()
        if text.count("\n") > 700:
            long.append(f"{p.name}: {text.count(chr(10))} lines")
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (n.end_lineno or n.lineno) - n.lineno
                if size > 120:
                    long.append(f"{p.name}:{n.name}: {size} lines")
    assert long == []
