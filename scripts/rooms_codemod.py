"""Rewrite writ imports after modules move (the rooms renovation, issue 17).

Usage::

    python scripts/rooms_codemod.py [--wp 0,1,...|all] [--absolutize] [--check] PATHS...

PATHS are files or directories (every ``*.py`` below them). For each ``from X import a, b`` whose
absolute module (a relative import is resolved against the file's own module name, found from the
``writ`` package directory in its path) is under ``writ``, the imported names are grouped by where they
live now, using the rows of ``scripts/rooms_moves.py`` whose work package is named by ``--wp``: a
symbol row first, otherwise the longest-prefix module row, otherwise unchanged. The statement is
replaced by one ``from ... import ...`` per destination, at the same indentation. A module imported as a
name moves too: ``from writ import server`` becomes ``from writ.api import app as server``.
``import writ.x as m`` becomes ``import writ.new as m``.

Every relative import of writ is written absolute, moved or not (ruff's TID252 bans them);
``--absolutize`` does only that (it applies no move rows unless ``--wp`` is also given).

Printed for a manual fix, never rewritten: a bare ``import writ.x`` of a moved module, and string
constants naming a moved module (``"from writ.server import run"``): logger and span names such as
"writ.engine" must keep their text. The one exception: ``"writ.<module>:<Name>"`` strings in
``engine/defaults.py`` and ``stores/__init__.py`` are rewritten.

The rewrite is idempotent: a second run changes nothing (the move table is checked so that no
destination is itself moved again). ``--check`` writes nothing and exits 1 when a file would change.
Afterwards run ``ruff check --select I,F401 --fix`` and ``ruff format`` over the same paths.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rooms_moves import MOVES, Row

STRING_FILES = ("engine/defaults.py", "stores/__init__.py")


class Table:
    def __init__(self, rows: list[Row]) -> None:
        self.symbols = {(o, n): new for _, o, new, names in rows if names for n in names}
        self.modules = {o: new for _, o, new, names in rows if names is None}
        for old, new in self.modules.items():
            if new.startswith(old + ".") or self.module(new) != new:
                raise SystemExit(f"move table: {old} -> {new} would move again")

    def module(self, mod: str) -> str:
        """Where module ``mod`` lives now (longest-prefix module row)."""
        parts = mod.split(".")
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in self.modules:
                return ".".join([self.modules[head], *parts[i:]])
        return mod

    def name(self, mod: str, name: str) -> tuple[str, str]:
        """(module, name) that ``from mod import name`` should read now."""
        if (mod, name) in self.symbols:
            return self.symbols[(mod, name)], name
        sub = f"{mod}.{name}"
        moved = self.module(sub)
        if moved != sub:  # a module imported as a name
            parent, _, last = moved.rpartition(".")
            return parent, last
        return self.module(mod), name


def module_of(path: pathlib.Path) -> tuple[str | None, bool]:
    parts = path.resolve().with_suffix("").parts
    if "writ" not in parts:
        return None, False
    i = len(parts) - 1 - parts[::-1].index("writ")
    mod = list(parts[i:])
    is_pkg = mod[-1] == "__init__"
    return ".".join(mod[:-1] if is_pkg else mod), is_pkg


def resolve(mod: str | None, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    if mod is None:
        return None
    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def alias(name: str, asname: str | None) -> str:
    return f"{name} as {asname}" if asname else name


def rewrite(path: pathlib.Path, table: Table, notes: list[str]) -> str | None:
    """The new text of ``path``, or None if nothing changes."""
    text = path.read_text()
    tree = ast.parse(text, str(path))
    mod, is_pkg = module_of(path)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []  # (first line, last line, new lines), 1-based
    for node in ast.walk(tree):
        new: list[str] | None = None
        if isinstance(node, ast.ImportFrom):
            base = resolve(mod, is_pkg, node)
            if base is None or not (base == "writ" or base.startswith("writ.")):
                continue
            groups: dict[str, list[str]] = {}
            for a in node.names:
                dest, name = (base, a.name) if a.name == "*" else table.name(base, a.name)
                asname = a.asname or (a.name if name != a.name else None)
                groups.setdefault(dest, []).append(alias(name, asname))
            if (
                node.level == 0
                and list(groups) == [base]
                and all(
                    table.name(base, a.name) == (base, a.name) for a in node.names if a.name != "*"
                )
            ):
                continue
            new = [f"from {d} import {', '.join(ns)}" for d, ns in groups.items()]
        elif isinstance(node, ast.Import):
            out, changed = [], False
            for a in node.names:
                moved = table.module(a.name)
                if moved != a.name and a.name.startswith("writ."):
                    if a.asname:
                        out.append(alias(moved, a.asname))
                        changed = True
                        continue
                    notes.append(
                        f"{path}:{node.lineno}: bare `import {a.name}` -> {moved} (fix by hand)"
                    )
                out.append(alias(a.name, a.asname))
            if not changed:
                continue
            new = [f"import {', '.join(out)}"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in re.finditer(r"\bwrit(?:\.\w+)+", node.value):
                if table.module(m.group()) == m.group():
                    continue
                rel = str(path).replace("\\", "/")
                if rel.endswith(STRING_FILES) and re.fullmatch(r"writ(\.\w+)+:\w+", node.value):
                    old_mod, _, cls = node.value.partition(":")
                    dest, name = table.name(old_mod, cls)
                    if node.lineno == node.end_lineno:
                        seg = ast.get_source_segment(text, node) or ""
                        q = seg[0] if seg[:1] in "'\"" else '"'
                        line = lines[node.lineno - 1]
                        start, end = node.col_offset, node.end_col_offset or 0
                        b = line.encode()
                        fixed = b[:start].decode() + f"{q}{dest}:{name}{q}" + b[end:].decode()
                        edits.append((node.lineno, node.lineno, [fixed.rstrip("\n")]))
                    break
                notes.append(
                    f"{path}:{node.lineno}: string names moved module {m.group()!r} (fix by hand)"
                )
                break
            continue
        if new is None:
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        head = lines[first - 1].encode()[: node.col_offset].decode()
        tail = lines[last - 1].encode()[node.end_col_offset or 0 :].decode().rstrip("\n")
        if head.strip() or (tail.strip() and not tail.strip().startswith("#")):
            notes.append(f"{path}:{first}: import shares its line with other code (fix by hand)")
            continue
        new = [head + s for s in new]
        new[-1] += tail
        edits.append((first, last, new))
    if not edits:
        return None
    for first, last, new in sorted(edits, reverse=True):
        lines[first - 1 : last] = [s + "\n" for s in new]
    out = "".join(lines)
    return None if out == text else out


def files(paths: list[str]) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for p in map(pathlib.Path, paths):
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return [p for p in out if ".venv" not in p.parts and p.name != "rooms_moves.py"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wp", default=None, help="comma-separated work packages, or 'all'")
    ap.add_argument("--absolutize", action="store_true", help="only make relative imports absolute")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file would change"
    )
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    if args.wp is None and not args.absolutize:
        ap.error("give --wp and/or --absolutize")
    wps = None if args.wp in (None, "") else args.wp.split(",")
    rows = [] if wps is None else [r for r in MOVES if args.wp == "all" or r[0] in wps]
    table = Table(rows)
    notes: list[str] = []
    changed = []
    for path in files(args.paths):
        out = rewrite(path, table, notes)
        if out is not None:
            changed.append(path)
            if not args.check:
                path.write_text(out)
    for n in notes:
        print(n)
    for p in changed:
        print(f"{'would rewrite' if args.check else 'rewrote'} {p}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
