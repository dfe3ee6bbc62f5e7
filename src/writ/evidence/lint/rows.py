"""Reading rows: JSON, JSON Lines or a JSON array, streamed in chunks, with unreadable rows reported."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

from writ.core.ledger import FIELDS
from writ.evidence.lint.linter import Unreadable, _json_type

# --------------------------------------------------------------------------- reading rows

_CHUNK = 1 << 16  # read this much, then to the end of the line: a chunk never cuts a line
_MAX_VALUE = 64 << 20  # characters one JSON value (not an array's element) may span
_WS = re.compile(r"[ \t\n\r]*")
_ROW_START = re.compile(r"\n[ \t\r]*[\[{]")  # where reading resumes after a malformed value
_AUDIT_FIELDS = frozenset(FIELDS)
RowItem = tuple[int, "dict[str, Any] | Unreadable"]


def _expand(line: int, obj: Any) -> list[dict[str, Any] | Unreadable]:
    """The rows in one top-level value: an object, or each element of ``{"rows": [...]}``."""
    if isinstance(obj, dict):
        rows = obj.get("rows")
        if not (isinstance(rows, list) and not _AUDIT_FIELDS.intersection(obj)):
            return [obj]
        return [
            r
            if isinstance(r, dict)
            else Unreadable(line, f"a JSON {_json_type(r)} in rows is not an audit row")
            for r in rows
        ]
    return [Unreadable(line, f"a JSON {_json_type(obj)} is not an audit row (expected an object)")]


def _decode(chunk: bytes, first_line: int, bad: dict[int, str]) -> str:
    """UTF-8 text; a line that is not UTF-8 becomes a NUL (never JSON) and ``bad`` says why."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        out = []
        for i, raw in enumerate(chunk.split(b"\n")):
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad[first_line + i] = f"not UTF-8 ({exc.reason}, byte {exc.start + 1})"
                out.append("\x00")
        return "\n".join(out)


def _unparsable(exc: RecursionError | ValueError) -> str:
    """Why a value that is JSON could not be read: Python's limits, not a syntax error."""
    if isinstance(exc, RecursionError):
        return "JSON value nested too deeply to read"
    if "integer string conversion" in str(exc):
        return f"JSON integer with over {sys.get_int_max_str_digits():,} digits"
    return f"JSON value that cannot be read ({exc})"


def iter_rows(stream: IO[Any]) -> Iterator[RowItem]:
    """Yield ``(row_number, row_or_Unreadable)`` from JSONL, JSON arrays or JSON objects.

    Reads a text or binary stream in chunks that end on a line boundary, decoding one value
    after another with ``raw_decode``; a top-level ``[`` is walked element by element, so
    neither JSONL nor an array is ever held whole. Rows count from 1; an :class:`Unreadable`
    takes a row number too and names the line its value began on. After a malformed value,
    reading resumes at the next line (or, for a value that spanned lines, at the next line
    that begins with ``{`` or ``[``). A value Python cannot hold (nested deeper than its stack,
    an integer over its digit limit) is unreadable too, and reading resumes at the next line.
    """
    return _Reader(stream).rows()


class _Reader:
    """One pass over a stream: the text read and not yet consumed (``buf`` from ``pos``), the
    line ``pos`` is on, and why lines that were not UTF-8 could not be read (``bad``)."""

    __slots__ = ("bad", "buf", "eof", "line", "pos", "stream")

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.bad: dict[int, str] = {}

    def fill(self, size: int = _CHUNK) -> bool:
        """Append a chunk, dropping what was consumed; False at the end of input."""
        chunk = b"" if self.eof else self.stream.read(size)
        if chunk and chunk[-1:] != (b"\n" if isinstance(chunk, bytes) else "\n"):
            chunk += self.stream.readline()
        if not chunk:
            self.eof = True
            return False
        if isinstance(chunk, bytes):
            for old in [k for k in self.bad if k < self.line]:
                del self.bad[old]
            chunk = _decode(chunk, self.line + self.buf.count("\n", self.pos), self.bad)
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def resync(self, at: int) -> None:
        """Resume after a malformed value that failed at ``at``: at the next line if it failed
        on its first line (JSONL), else at the next line that begins with '{' or '['."""
        nl = self.buf.find("\n", self.pos)
        if nl < 0 or nl >= at:
            return self.advance(nl + 1 if nl >= 0 else len(self.buf))
        while True:
            m = _ROW_START.search(self.buf, self.pos)
            if m:
                return self.advance(m.start() + 1)
            last = self.buf.rfind("\n", self.pos)
            self.advance(last if last >= 0 else len(self.buf))
            if not self.fill():
                return self.advance(len(self.buf))

    def rows(self) -> Iterator[RowItem]:
        raw = json.JSONDecoder().raw_decode
        advance, n = self.advance, 0
        in_array, want_value, opened = False, True, 0
        self.fill()
        if self.buf.startswith("\ufeff"):
            self.pos = 1
        while True:
            m = _WS.match(self.buf, self.pos)
            advance(m.end() if m else self.pos)
            buf, pos = self.buf, self.pos
            if pos >= len(buf):
                if self.fill():
                    continue
                if in_array:
                    n += 1
                    yield n, Unreadable(self.line, "unterminated JSON array (no closing ']')")
                return
            c = buf[pos]
            if in_array and (c == "]" or not want_value):
                if c in ",]":
                    advance(pos + 1)
                    in_array, want_value = c == ",", True
                    continue
                n += 1
                yield (
                    n,
                    Unreadable(self.line, f"expected ',' or ']' after an array element, not {c!r}"),
                )
                self.resync(pos)
                continue
            if c == "[" and not in_array:
                advance(pos + 1)
                in_array = want_value = True
                opened = self.line
                continue
            try:
                obj, end = raw(buf, pos)
            except json.JSONDecodeError as exc:
                ws = _WS.match(buf, exc.pos)
                at_end = ws is not None and ws.end() >= len(buf)
                if at_end and not self.eof and len(buf) - pos < _MAX_VALUE:
                    self.fill(max(_CHUNK, len(buf) - pos))  # the value goes on: read as much again
                    continue
                at = self.line + buf.count("\n", pos, exc.pos)
                why = self.bad.pop(at, None) or (
                    exc.msg
                    if not at_end
                    else "JSON value over 64 MiB"
                    if not self.eof
                    else "input ends inside this JSON value"
                )
                n += 1
                yield n, Unreadable(self.line, why if at == self.line else f"{why} (line {at})")
                self.resync(exc.pos)
                continue
            except (RecursionError, ValueError) as exc:  # no position: say where it began
                n += 1
                yield n, Unreadable(self.line, _unparsable(exc))
                if in_array and opened == self.line:
                    in_array = False  # "[[[[...": one broken value, not an array of rows
                self.resync(pos)
                continue
            start = self.line
            advance(end)
            if in_array:
                want_value = False
                n += 1
                yield (
                    n,
                    obj
                    if isinstance(obj, dict)
                    else Unreadable(
                        start, f"a JSON {_json_type(obj)} in the array is not an audit row"
                    ),
                )
                continue
            for item in _expand(start, obj):
                n += 1
                yield n, item
