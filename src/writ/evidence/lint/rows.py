"""Reading rows: JSON, JSON Lines or a JSON array, streamed in chunks, with unreadable rows reported."""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

from writ.core.ledger import FIELDS
from writ.evidence.lint.linter import Unreadable, _json_type
from writ.evidence.lint.rules import object_pairs

# --------------------------------------------------------------------------- reading rows

_CHUNK = 1 << 16  # read this much, then on to the end of the line (up to _LINE more)
_LINE = 1 << 20  # the most one readline takes: a longer line is read in pieces
_MAX_VALUE = 64 << 20  # characters one JSON value (not an array's element) may span
#: objects, and as many arrays, one top-level value may build (each costs Python 56-64 bytes
#: and more, where its text may take 2: ``{}``); the 64 MiB of text held 22 million
_MAX_CONTAINERS = 1_000_000
_MAX_VALUES = 2_000_000  # strings and numbers a value may build (a short string: ~50 bytes)
_SCAN = 2 << 20  # a value in less text than this builds at most ~1M arrays: not counted
_NEAR_END = 16  # a syntax error this close to where the text read so far stops may be a cut
_WS = re.compile(r"[ \t\n\r]*")
_NOT_BLANK = re.compile(r"[^ \t\r]")
_ROW_START = re.compile(r"^[ \t\r]*[\[{]", re.M)  # where reading resumes after a malformed value
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


def _decode(chunk: bytes, first_line: int, bad: dict[int, str], skew: int = 0) -> str:
    """UTF-8 text; a line that is not UTF-8 becomes a NUL (never JSON) and ``bad`` says why.
    ``skew``: the bytes of the first line that an earlier chunk held."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        out = []
        for i, raw in enumerate(chunk.split(b"\n")):
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                at = exc.start + 1 + (skew if i == 0 else 0)
                bad.setdefault(first_line + i, f"not UTF-8 ({exc.reason}, byte {at})")
                out.append("\x00")
        return "\n".join(out)


def _whole_utf8(data: bytes) -> int:
    """``len(data)`` less a UTF-8 sequence that its last bytes begin but do not finish."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # ASCII or a lead byte: how many bytes its character takes
            need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


class _TooMany(ValueError):
    """A value that builds more than :data:`_MAX_CONTAINERS` objects, or arrays."""


class _Decoder:
    """``raw_decode`` for the reader, counting what a value builds: each object in the hook
    the C scanner calls (:func:`~writ.evidence.lint.rules.object_pairs`); arrays it builds
    without a hook, so a value whose text could hold more than the bound (its ``[`` from
    where it starts, counted once a buffer, as the reader moves on) is read by the
    pure-Python scanner, which counts them too. Past the bound, :class:`_TooMany`."""

    __slots__ = ("arrays", "at", "commas", "fast", "objects", "open", "slow", "values")

    def __init__(self) -> None:
        self.objects = self.arrays = self.values = 0
        # ``open``, ``commas``: the ``[`` and ``,`` in the buffer from ``at`` (-1: none)
        self.at, self.open, self.commas = -1, 0, 0
        self.fast = json.JSONDecoder(object_pairs_hook=self._pairs).raw_decode
        slow = _Counting(
            object_pairs_hook=self._pairs,
            parse_int=lambda t: self._value(int(t)),
            parse_float=lambda t: self._value(float(t)),
        )
        plain = getattr(json.decoder, "JSONArray")  # noqa: B009 (not in the stubs)
        scan = slow.parse_string

        def parse_array(s_and_end: tuple[str, int], scan_once: Any) -> Any:
            self.arrays += 1
            if self.arrays > _MAX_CONTAINERS:
                raise _TooMany(f"{_MAX_CONTAINERS:,} arrays")
            return plain(s_and_end, scan_once)

        def parse_string(*args: Any) -> Any:
            self._value(None)
            return scan(*args)

        slow.parse_array, slow.parse_string = parse_array, parse_string
        slow.memo = _Keys(self._value)  # an object's keys go through its setdefault
        slow.scan_once = getattr(json.scanner, "py_make_scanner")(slow)  # noqa: B009
        self.slow = slow.raw_decode

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.objects += 1
        if self.objects > _MAX_CONTAINERS:
            raise _TooMany(f"{_MAX_CONTAINERS:,} objects")
        return object_pairs(pairs)

    def _value(self, value: Any) -> Any:
        self.values += 1
        if self.values > _MAX_VALUES:
            raise _TooMany(f"{_MAX_VALUES:,} strings and numbers")
        return value

    def __call__(self, buf: str, pos: int) -> tuple[Any, int]:
        self.objects = self.arrays = self.values = 0
        if len(buf) - pos <= _SCAN:
            return self.fast(buf, pos)
        if self.at < 0:  # a buffer not counted yet
            self.at, self.open, self.commas = pos, buf.count("[", pos), buf.count(",", pos)
        self.open -= buf.count("[", self.at, pos)
        self.commas -= buf.count(",", self.at, pos)
        self.at = pos
        many = self.open > _MAX_CONTAINERS or self.commas > _MAX_VALUES
        return (self.slow if many else self.fast)(buf, pos)

    def forget(self) -> None:
        """The buffer changed: count its ``[`` again when a value asks."""
        self.at = -1


class _Keys(dict[str, str]):
    """The scanner's memo of keys (``JSONObject`` calls ``memo.setdefault`` for each key,
    which it reads without ``parse_string``): each key counted as it is read."""

    def __init__(self, count: Any) -> None:
        super().__init__()
        self._count = count

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._count(None)
        return super().setdefault(key, default)


class _Counting(json.JSONDecoder):
    """A decoder whose scanner is Python's own, which reads arrays with ``parse_array``."""

    parse_array: Any
    parse_string: Any
    memo: Any
    scan_once: Any


def _unparsable(exc: RecursionError | ValueError) -> str:
    """Why a value that is JSON could not be read: Python's limits, not a syntax error."""
    if isinstance(exc, _TooMany):
        return f"JSON value of over {exc} (more than writ lint holds)"
    if isinstance(exc, RecursionError):
        return "JSON value nested too deeply to read"
    if "integer string conversion" in str(exc):
        return f"JSON integer with over {sys.get_int_max_str_digits():,} digits"
    return f"JSON value that cannot be read ({exc})"


def _open_end(buf: str, exc: json.JSONDecodeError) -> tuple[bool, bool]:
    """``(at_end, goes_on)``: the error is at the end of the text read (but for blanks); or it
    is on an unfinished last line, where more text may mend it (a string, an escape, a literal
    or a number cut where a read stopped)."""
    ws = _WS.match(buf, exc.pos)
    at_end = ws is not None and ws.end() >= len(buf)
    cut = buf[-1:] != "\n" and (
        len(buf) - exc.pos <= _NEAR_END or exc.msg.startswith("Unterminated string")
    )
    return at_end, at_end or cut


def _open_number(buf: str, end: int) -> bool:
    """Whether a number that ends at ``end`` may go on: the read stopped just after it, mid-line."""
    return len(buf) - end <= _NEAR_END and buf[-1:] != "\n" and buf.find("\n", end) < 0


def iter_rows(stream: IO[Any]) -> Iterator[RowItem]:
    """Yield ``(row_number, row_or_Unreadable)`` from JSONL, JSON arrays or JSON objects.

    Reads a text or binary stream in chunks that end on a line boundary (a line over 1 MiB
    comes in pieces), decoding one value after another with ``raw_decode``; a top-level ``[`` is walked element by element, so
    neither JSONL nor an array is ever held whole. Rows count from 1; an :class:`Unreadable`
    takes a row number too and names the line its value began on. After a malformed value,
    reading resumes at the next line (or, for a value that spanned lines, at the next line
    that begins with ``{`` or ``[``). A value Python cannot hold (nested deeper than its stack,
    an integer over its digit limit) is unreadable too, and reading resumes at the next line.
    So is a value over 64 MiB: the rest of its line is read in pieces and dropped, so no read
    asks for more than that and the memory held stays bounded whatever the input. So is one
    that builds over 1,000,000 objects, or arrays (:class:`_Decoder`), read no further.
    """
    return _Reader(stream).rows()


class _Reader:
    """One pass over a stream: the text read and not yet consumed (``buf`` from ``pos``), the
    line ``pos`` is on, and why lines that were not UTF-8 could not be read (``bad``).

    No read asks for more than 64 MiB, and the text held stays under a value's 64 MiB cap plus
    a chunk and a line piece: a line longer than ``_LINE`` arrives in pieces (``buf`` then ends
    inside it, and ``carry`` holds the bytes of a character cut in two), and one over the cap
    is dropped to its newline in pieces, unread.
    """

    __slots__ = (
        "bad",
        "buf",
        "carry",
        "decode",
        "eof",
        "line",
        "line_bytes",
        "nl",
        "pos",
        "stream",
    )

    def __init__(self, stream: IO[Any]) -> None:
        self.stream = stream
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.bad: dict[int, str] = {}
        self.carry = b""
        self.line_bytes = 0  # bytes read of the line ``buf`` ends inside (0: it ends a line)
        self.nl: bytes | str = "\n"  # the stream's newline, b"\n" for a binary stream
        self.decode = _Decoder()

    def fill(self, size: int = 0) -> bool:
        """Append a chunk (``size``, at least ``_CHUNK``, never past the cap), dropping what was
        consumed; False at the end of input."""
        if self.eof:
            return False
        size = max(_CHUNK, min(size, _MAX_VALUE - (len(self.buf) - self.pos)))
        chunk = self.stream.read(size)
        if chunk and chunk[-1:] != (b"\n" if isinstance(chunk, bytes) else "\n"):
            chunk += self.stream.readline(_LINE)
        if isinstance(chunk, bytes):
            self.nl = b"\n"
            text = self._bytes(chunk)
        else:
            self.eof, text = not chunk, chunk
        if self.eof:
            return False
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        self.decode.forget()
        return True

    def _bytes(self, chunk: bytes) -> str:
        """Decode a binary chunk, holding back a character it cuts; EOF when nothing is left."""
        data = self.carry + chunk if self.carry else chunk
        self.carry = b""
        if chunk and data[-1:] != b"\n":
            whole = _whole_utf8(data)
            data, self.carry = data[:whole], data[whole:]
        if not data:
            self.eof = not chunk
            return ""
        for old in [k for k in self.bad if k < self.line]:
            del self.bad[old]
        text = _decode(data, self.line + self.buf.count("\n", self.pos), self.bad, self.line_bytes)
        last = data.rfind(b"\n")
        self.line_bytes = len(data) - last - 1 + (self.line_bytes if last < 0 else 0)
        return text

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def skip_line(self) -> None:
        """Go on at the next line, dropping the rest of this one: what is held of it, and what
        the stream still has, read in pieces of ``_LINE`` and thrown away."""
        nl = self.buf.find("\n", self.pos)
        if nl >= 0 or self.eof:
            return self.advance(nl + 1 if nl >= 0 else len(self.buf))
        self.buf, self.pos, self.carry, self.line_bytes = "", 0, b"", 0
        self.decode.forget()
        while piece := self.stream.readline(_LINE):
            if piece[-1:] == self.nl:
                self.line += 1
                return
        self.eof = True

    def resync(self, at: int) -> None:
        """Resume after a malformed value that failed at ``at``: at the next line if it failed
        on its first line (JSONL), else at the next line that begins with '{' or '['."""
        nl = self.buf.find("\n", self.pos)
        if nl < 0 or nl >= at:
            return self.skip_line()
        self.advance(nl + 1)
        while True:  # ``pos`` is at the start of a line
            m = _ROW_START.search(self.buf, self.pos)
            if m:
                return self.advance(m.start())
            self.advance(self.buf.rfind("\n", self.pos) + 1 or self.pos)
            if _NOT_BLANK.search(self.buf, self.pos):  # the unfinished last line begins no value
                self.skip_line()
            if not self.fill():
                return self.advance(len(self.buf))

    def rows(self) -> Iterator[RowItem]:
        raw = self.decode
        advance, n = self.advance, 0
        in_array, want_value, opened = False, True, 0
        while self.fill() and not self.buf:  # a read may end inside a first character
            pass
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
                at_end, goes_on = _open_end(buf, exc)
                if (
                    goes_on
                    and len(buf) - pos < _MAX_VALUE
                    and self.fill(max(_CHUNK, len(buf) - pos))
                ):
                    continue  # the value may go on: read as much again
                at = self.line + buf.count("\n", pos, exc.pos)
                why = self.bad.pop(at, None) or (
                    f"JSON value over {_MAX_VALUE >> 20} MiB"
                    if goes_on and not self.eof
                    else "input ends inside this JSON value"
                    if at_end
                    else exc.msg
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
            if type(obj) in (int, float) and _open_number(buf, end) and self.fill():
                continue  # "12" where the text read so far stops may be "1234": read on
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
