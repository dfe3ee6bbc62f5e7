"""Reading rows: JSON, JSON Lines or a JSON array, streamed in chunks, with unreadable rows reported."""

from __future__ import annotations

import json
import re
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


def iter_rows(stream: IO[Any]) -> Iterator[RowItem]:
    """Yield ``(row_number, row_or_Unreadable)`` from JSONL, JSON arrays or JSON objects.

    Reads a text or binary stream in chunks that end on a line boundary, decoding one value
    after another with ``raw_decode``; a top-level ``[`` is walked element by element, so
    neither JSONL nor an array is ever held whole. Rows count from 1; an :class:`Unreadable`
    takes a row number too and names the line its value began on. After a malformed value,
    reading resumes at the next line (or, for a value that spanned lines, at the next line
    that begins with ``{`` or ``[``).
    """
    raw = json.JSONDecoder().raw_decode
    buf, pos, line, eof, n = "", 0, 1, False, 0
    in_array, want_value = False, True
    bad: dict[int, str] = {}

    def fill(size: int = _CHUNK) -> bool:
        """Append a chunk, dropping what was consumed; False at the end of input."""
        nonlocal buf, pos, eof
        chunk = b"" if eof else stream.read(size)
        if chunk and chunk[-1:] != (b"\n" if isinstance(chunk, bytes) else "\n"):
            chunk += stream.readline()
        if not chunk:
            eof = True
            return False
        if isinstance(chunk, bytes):
            for old in [k for k in bad if k < line]:
                del bad[old]
            chunk = _decode(chunk, line + buf.count("\n", pos), bad)
        buf, pos = buf[pos:] + chunk, 0
        return True

    def advance(to: int) -> None:
        nonlocal pos, line
        line += buf.count("\n", pos, to)
        pos = to

    def resync(at: int) -> None:
        """Resume after a malformed value that failed at ``at``: at the next line if it failed
        on its first line (JSONL), else at the next line that begins with '{' or '['."""
        nl = buf.find("\n", pos)
        if nl < 0 or nl >= at:
            return advance(nl + 1 if nl >= 0 else len(buf))
        while True:
            m = _ROW_START.search(buf, pos)
            if m:
                return advance(m.start() + 1)
            last = buf.rfind("\n", pos)
            advance(last if last >= 0 else len(buf))
            if not fill():
                return advance(len(buf))

    fill()
    if buf.startswith("\ufeff"):
        pos = 1
    while True:
        m = _WS.match(buf, pos)
        advance(m.end() if m else pos)
        if pos >= len(buf):
            if fill():
                continue
            if in_array:
                n += 1
                yield n, Unreadable(line, "unterminated JSON array (no closing ']')")
            return
        c = buf[pos]
        if in_array and (c == "]" or not want_value):
            if c in ",]":
                advance(pos + 1)
                in_array, want_value = c == ",", True
                continue
            n += 1
            yield n, Unreadable(line, f"expected ',' or ']' after an array element, not {c!r}")
            resync(pos)
            continue
        if c == "[" and not in_array:
            advance(pos + 1)
            in_array = want_value = True
            continue
        try:
            obj, end = raw(buf, pos)
        except json.JSONDecodeError as exc:
            ws = _WS.match(buf, exc.pos)
            at_end = ws is not None and ws.end() >= len(buf)
            if at_end and not eof and len(buf) - pos < _MAX_VALUE:
                fill(max(_CHUNK, len(buf) - pos))  # the value goes on: read as much again
                continue
            at = line + buf.count("\n", pos, exc.pos)
            why = bad.pop(at, None) or (
                exc.msg
                if not at_end
                else "JSON value over 64 MiB"
                if not eof
                else "input ends inside this JSON value"
            )
            n += 1
            yield n, Unreadable(line, why if at == line else f"{why} (line {at})")
            resync(exc.pos)
            continue
        start = line
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
