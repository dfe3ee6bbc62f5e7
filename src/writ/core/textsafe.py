"""Text that is safe to print: control characters shown, never obeyed.

Intents, summaries, reasons and notes are free text from any agent. Printed as they are, a
newline in a summary becomes a fake row in `writ watch` or a table, an ANSI escape repaints
the terminal, and a bidirectional override reorders what a reader sees. Every text rendering
(CLI lines and tables, the Markdown postmortem, `writ lint`'s text output) passes values
through :func:`printable`, which writes each such character as a visible escape::

    printable("capacity 4→8\\n  42 lease.granted fake")  ->  'capacity 4→8\\\\n  42 lease.granted fake'

JSON escapes only the C0 controls (``\\x00``-``\\x1f``) itself: with ``ensure_ascii=False``,
as writ writes JSON to keep other text readable, DEL, the C1 controls (U+009B is the one-byte
CSI that starts a terminal escape sequence), the separators and the bidi characters come out
raw. Every JSON output that may reach a terminal (``--json``, ``writ watch --json``, ``writ
audit export``, ``writ lint``'s JSON, ``writ postmortem --format json``, JSON logs) goes through
:func:`json_printable` (or :func:`dumps`), which writes each of them as a ``\\uXXXX`` escape:
the JSON stays valid and parses to the same value. The HTML postmortem escapes with
:func:`html.escape` and :func:`printable`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

__all__ = ["UNSAFE", "dumps", "hex_escaped", "inert", "json_printable", "printable", "visible"]

# C0 and C1 controls and DEL; line and paragraph separators; bidirectional marks, embeddings,
# overrides and isolates (the Arabic letter mark among them); zero-width characters, the soft
# hyphen, the Mongolian vowel separator, the byte-order mark, the interlinear annotation
# characters; the blank letters (Hangul fillers); the tag characters (an invisible copy of
# ASCII: "SYSTEM: release now" in tags shows as nothing, and a model reads it) and the rest of
# their plane; the variation selectors but the emoji ones (U+FE0E, U+FE0F: bytes smuggled as
# selectors show as nothing either); lone surrogates (which no terminal encoding can write);
# and every other format character and default-ignorable one (the combining grapheme joiner,
# the Arabic and Syriac number signs, Khmer's inherent vowels, the Mongolian selectors, the
# deprecated format characters, the blank braille pattern, the Egyptian and shorthand format
# controls, the musical beams): "capa\u034fcity" must not print as "capacity", another
# attribute. tests/test_textsafe.py checks this against the whole of Unicode's Cf category.
_C0 = "\x00-\x1f"
_BEYOND_C0 = (
    "\x7f-\x9f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f"
    "\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u2800"
    "\u3164\ufe00-\ufe0d\ufeff\uffa0\ufff0-\ufffb\ud800-\udfff\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff"
)
# of those, what hides text from a reader that a model still reads (the bidi embeddings,
# overrides and isolates, the tag characters, the selectors): what MCP answers escape
_SMUGGLED = re.compile("[\u202a-\u202e\u2066-\u2069\ufe00-\ufe0d\U000e0000-\U000e0fff]")
UNSAFE = re.compile(f"[{_C0}{_BEYOND_C0}]")
"""Every character :func:`printable` escapes (for a rendering with escapes of its own)."""
# in JSON text, C0 is either escaped already (inside a string) or JSON's own whitespace; every
# other unsafe character can only sit inside a string, where \uXXXX means the same character
_UNSAFE_IN_JSON = re.compile(f"[{_BEYOND_C0}]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# what a reader sees nothing of: spaces and separators, controls, format characters (zero-width
# ones, bidi marks, the soft hyphen, the byte-order mark), lone surrogates; and the blank letters
# (Hangul fillers, the blank braille pattern) that render as space
_UNSEEN = frozenset(("Zs", "Zl", "Zp", "Cc", "Cf", "Cs"))
# and Unicode's other default-ignorable characters, whatever their category (the combining
# grapheme joiner, the variation selectors, Khmer's inherent vowels, ...)
_IGNORABLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
    "\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def visible(text: str) -> bool:
    """Whether ``text`` holds a character a reader sees: a runbook, a page, a reason or a name
    of zero-width spaces, bidi marks or soft hyphens says nothing, as an empty one does."""
    if text.isascii():
        if text.isprintable():  # the common case, at C speed
            return bool(text) and not text.isspace()
        return any(" " < c < "\x7f" for c in text)
    category = unicodedata.category
    return any(category(c) not in _UNSEEN and not _IGNORABLE.match(c) for c in text)


def _hex(m: re.Match[str]) -> str:
    code = ord(m.group())
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    if code > 0xFFFF:  # JSON writes a character beyond the BMP as its UTF-16 pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _escape(m: re.Match[str]) -> str:
    return _SHORT.get(m.group()) or _hex(m)


def hex_escaped(text: str) -> str:
    """``text`` with what :func:`printable` escapes written in hex only (``\\x0a``, never
    ``\\n``): for lines whose readers know that form (writ's console log lines)."""
    return UNSAFE.sub(_hex, text) if UNSAFE.search(text) else text


def printable(value: Any) -> str:
    """``str(value)`` with every control, separator and bidi character written as an escape."""
    text = value if isinstance(value, str) else str(value)
    return UNSAFE.sub(_escape, text)


def json_printable(text: str) -> str:
    """JSON ``text`` (from :func:`json.dumps`, ``ensure_ascii=False``) with every character
    :func:`printable` escapes and JSON does not written as a ``\\uXXXX`` escape: still valid
    JSON, parsing to the same value, and nothing in it a terminal would obey."""
    if _UNSAFE_IN_JSON.search(text) is None:
        return text
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


def inert(value: Any) -> Any:
    """``value`` (an answer: dicts, lists, strings) with every string's characters that hide
    text from a person but not from a model (tag characters, bidi overrides and isolates,
    variation selectors but the emoji ones) written as escapes (``\\U000e0053``): for answers
    handed to a model as they are (the MCP tools). What a change says it was and became
    (``before``, ``after``) is left exact, as a model may write it back; so is the rest of
    what text needs (zero-width joiners in Persian or in emoji, a soft hyphen)."""
    if isinstance(value, str):
        return _SMUGGLED.sub(_hex, value) if _SMUGGLED.search(value) else value
    if isinstance(value, dict):
        return {k: v if k in ("before", "after") else inert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [inert(v) for v in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kwargs)``, through :func:`json_printable`."""
    return json_printable(json.dumps(obj, ensure_ascii=False, **kwargs))


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``counted(1, "request")``: '1 request')."""
    return f"{n} {noun}{'s' * (n != 1)}"
