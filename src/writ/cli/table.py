"""CLI tables and lines that fit the terminal: names never cut, free text wrapped at words.

The console's width comes from rich (the terminal, or ``COLUMNS``; 80 when neither says). A
table first takes the width it needs. When its columns cannot all fit, the least important ones
(``drop``, in order) are left out and a line after the table says which — ``--json`` always has
every field. Name-like columns (resources, principals, ids, times) are never wrapped; the free-text
ones (``wrap``: intents, reasons) wrap between words. When even the remaining columns cannot fit
(names longer than the terminal is wide), each row is printed as a block of ``column  value``
lines instead, wrapped between words. All text passes through
:func:`writ.core.textsafe.printable`, and cells are plain text, never rich markup.

A line of prose or a row (``writ who``, ``writ watch``, a rollback's or a consent's line,
``writ lint``'s findings, an error) is never left to the terminal to wrap: a terminal wraps a
long line at its width, and what follows starts a line of its own at column 0, so agent text
padded to a multiple of the width (with spaces, or with anything) printed as a row or an answer
writ never wrote. Such a line is folded by writ (:func:`fold`), every piece after the first
beginning with :data:`CONTINUED`: a line of prose at the console's width, a row of ``writ
watch`` (and the other one-line answers) on a terminal only, as into a pipe or a file it stays
one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

import click

from writ.core.textsafe import printable

__all__ = ["CONTINUED", "console", "echo_line", "fold", "print_line", "print_table"]

GAP = 2  # rich's padding between two columns (box=None, pad_edge=False)
MIN_WRAP = 12  # a wrapped column is never squeezed below this many cells
CONTINUED = "  \u21b3 "  # "  ↳ ": begins every piece of a folded line after the first


def _columns(text: str) -> int:
    """The columns a terminal that measures each code point alone (wcwidth: xterm, tmux)
    gives ``text``: a skin-toned emoji is 4 there, where rich counts the cluster as 2."""
    import unicodedata

    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in ("W", "F")
        else 1
        for c in text
    )


def _chop(piece: str, limit: int) -> list[str]:
    """``piece`` cut where it would pass ``limit`` by either measure."""
    from rich.cells import cell_len

    out, cur = [], ""
    for c in piece:
        if cur and max(cell_len(cur + c), _columns(cur + c)) > limit:
            out.append(cur)
            cur = ""
        cur += c
    return [*out, cur]


def fold(line: str, width: int) -> str:
    """``line`` wrapped between words into lines of at most ``width`` columns (by rich's
    measure and by a terminal's that counts each code point), each after the first
    beginning with :data:`CONTINUED`, so that no piece of it begins a line as writ's own
    lines do (a word longer than a line is cut)."""
    from rich.cells import cell_len
    from rich.console import Console
    from rich.text import Text

    if width <= 2 * len(CONTINUED) or max(cell_len(line), _columns(line)) <= width:
        return line
    limit = width - len(CONTINUED)
    wrapped = Text(line).wrap(Console(width=width), limit, overflow="fold")
    pieces = [
        part
        for p in wrapped
        for part in (
            [p.plain.rstrip()] if _columns(p.plain.rstrip()) <= limit else _chop(p.plain, limit)
        )
    ]
    return "\n".join([pieces[0], *(CONTINUED + p for p in pieces[1:])])


def terminal_width(stream: Any) -> int | None:
    """The width of the terminal ``stream`` writes to; None when it writes elsewhere."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (AttributeError, OSError, ValueError):
        return None


def echo_line(line: str, err: bool = False, file: IO[str] | None = None) -> None:
    """Echo ``line`` (already :func:`printable`), folded (:func:`fold`) on a terminal."""
    stream = file or (sys.stderr if err else sys.stdout)
    width = terminal_width(stream)
    click.echo(fold(line, width) if width else line, file=stream)


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _words(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for w in text.split()), default=0)


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    wrap: Sequence[str] = (),
    drop: Sequence[str] = (),
    out: Any = None,
) -> list[str]:
    """Print ``rows`` under ``columns`` to fit the console; return the columns left out."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    con = out or console()
    cells = [["-" if v is None or v == "" else printable(v) for v in row] for row in rows]
    keep = list(range(len(columns)))

    def need(i: int) -> int:
        head = cell_len(columns[i])
        if columns[i] in wrap:
            longest = max((_words(r[i]) for r in cells), default=0)
            return max(head, min(max(longest, MIN_WRAP), 30))
        return max([head] + [cell_len(r[i]) for r in cells])

    dropped: list[str] = []
    for name in drop:
        if sum(need(i) for i in keep) + GAP * (len(keep) - 1) <= con.width:
            break
        if name in columns:
            keep.remove(columns.index(name))
            dropped.append(name)
    if sum(need(i) for i in keep) + GAP * (len(keep) - 1) > con.width:
        _records(con, columns, cells)  # names too long for any table: one block per row
        return []
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i in keep:
        if columns[i] in wrap:
            table.add_column(columns[i], overflow="fold")
        else:
            table.add_column(columns[i], no_wrap=True, overflow="fold")
    for r in cells:
        table.add_row(*(Text(r[i]) for i in keep))
    con.print(table)
    if dropped:
        con.print(
            Text(
                f"(not shown at {con.width} columns: {', '.join(dropped)}; a wider terminal or "
                "--json shows them)",
                style="dim",
            )
        )
    return dropped


def _records(con: Any, columns: Sequence[str], cells: list[list[str]]) -> None:
    """Each row as a block: its first cell, then ``COLUMN  value`` lines, wrapped at words."""
    from rich.table import Table
    from rich.text import Text

    for n, r in enumerate(cells):
        if n:
            con.print()
        con.print(Text(r[0], style="bold"), overflow="fold")
        block = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1, 0, 2))
        block.add_column(no_wrap=True, style="dim")
        block.add_column(overflow="fold")
        for name, value in zip(columns[1:], r[1:], strict=True):
            block.add_row(name.lower(), Text(value))
        con.print(block)


def print_line(text: str, out: Any = None) -> None:
    """One line of prose, escaped, folded at the console's width (:func:`fold`)."""
    from rich.text import Text

    con = out or console()
    con.print(Text(fold(printable(text), con.width)), no_wrap=True, crop=False, overflow="ignore")
