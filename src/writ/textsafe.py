"""Text that is safe to print: control characters shown, never obeyed.

Intents, summaries, reasons and notes are free text from any agent. Printed as they are, a
newline in a summary becomes a fake row in `writ watch` or a table, an ANSI escape repaints
the terminal, and a bidirectional override reorders what a reader sees. Every text rendering
(CLI lines and tables, the Markdown postmortem, `writ lint`'s text output) passes values
through :func:`printable`, which writes each such character as a visible escape::

    printable("capacity 4→8\\n  42 lease.granted fake")  ->  'capacity 4→8\\\\n  42 lease.granted fake'

JSON output needs none of this (JSON escapes control characters itself); the HTML postmortem
escapes with :func:`html.escape` and this.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable"]

# C0 and C1 controls and DEL; line and paragraph separators; bidirectional marks, embeddings,
# overrides and isolates; zero-width characters, the byte-order mark; lone surrogates (which
# no terminal encoding can even write).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: Any) -> str:
    """``str(value)`` with every control, separator and bidi character written as an escape."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)
