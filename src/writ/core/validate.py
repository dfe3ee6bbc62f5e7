"""Checks of input values shared by the engine, the HTTP layer, the MCP tools and the CLI
(each raises Invalid naming the field).

Text: every string writ takes in must be Unicode text it can store, hash and send back —
no lone surrogates (``"\\ud800"`` written as a JSON escape decodes to one, and no UTF-8
encoder takes it), no NUL and no other C0 control character but tab, newline and carriage
return. :func:`check_tree` applies that to every string (keys included) of a request body or
a free-form value, and bounds its nesting (:data:`MAX_DEPTH`); :func:`json_value` also
bounds a free-form value's size (:data:`MAX_VALUE`). :func:`scrub` is the reading side: a
value a store already holds that is not text (written before these checks, or by hand)
is shown with U+FFFD in place of each lone surrogate rather than failing the read.
"""

from __future__ import annotations

import json
import re
from typing import Any

from writ.core.errors import Invalid
from writ.core.textsafe import visible

MAX_TEXT = 2000
MAX_DEPTH = 32  # nesting of a free-form JSON value (a scalar is 0, ``[]`` is 1)
MAX_VALUE = 64 << 10  # characters of a free-form JSON value, written compactly

# what no text field may hold: lone surrogates (a valid pair is one character once decoded),
# NUL and the C0 controls but tab, LF and CR
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def text_problem(value: str) -> str | None:
    """Why ``value`` is not text writ takes, or None when it is."""
    if value.isascii():
        m = _NOT_TEXT.search(value) if not value.isprintable() else None
    else:
        m = _NOT_TEXT.search(value)
    if m is None:
        return None
    c = m.group()
    what = "a lone surrogate" if "\ud800" <= c <= "\udfff" else "a control character"
    return f"is not valid text: {what} (U+{ord(c):04X}) at character {m.start()}"


def check_text(value: Any, field: str) -> None:
    """:class:`Invalid` naming ``field`` when ``value`` is a string that is not text."""
    if isinstance(value, str):
        if value.isascii() and value.isprintable():  # the common case, at C speed
            return
        problem = text_problem(value)
        if problem:
            raise Invalid(f"{field} {problem}", field=field)


def check_tree(value: Any, field: str, depth: int = MAX_DEPTH, root: str | None = None) -> None:
    """Every string in ``value`` (object keys included) is text, and ``value`` nests at most
    ``depth`` levels of arrays and objects; otherwise :class:`Invalid` naming the field
    (``before.steps[2].note``; a value nested too deep is named by ``field``)."""
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, (dict, list)):
        top = field if root is None else root
        if depth <= 0:
            raise Invalid(f"{top} nests deeper than {MAX_DEPTH} levels", field=top)
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and text_problem(k):
                    check_text(k, f"{field} key {k!r}")
                check_tree(v, f"{field}.{k}", depth - 1, top)
        else:
            for i, v in enumerate(value):
                check_tree(v, f"{field}[{i}]", depth - 1, top)


def check_body(body: Any) -> None:
    """A request body: its fields (and what they hold) are text, nested at most
    :data:`MAX_DEPTH` levels below each field."""
    if isinstance(body, dict):
        for k, v in body.items():
            check_text(k, "body key")
            check_tree(v, str(k))
    else:
        check_tree(body, "body")


def json_value(value: Any, field: str) -> Any:
    """A free-form JSON value (a change's ``before``/``after``): text only, at most
    :data:`MAX_DEPTH` levels deep and :data:`MAX_VALUE` characters as compact JSON."""
    check_tree(value, field)
    try:
        size = len(_COMPACT.encode(value))
    except (TypeError, ValueError) as exc:
        raise Invalid(f"{field} is not a JSON value ({exc})", field=field) from None
    if size > MAX_VALUE:
        raise Invalid(f"{field} is {size} characters as JSON; at most {MAX_VALUE}", field=field)
    return value


def scrub(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings (keys included) replaced by U+FFFD:
    what a store already holds is always shown and hashed, never a failed read."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if not value.isascii() else value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def loads(text: str) -> Any:
    """``json.loads`` for what a store holds: a lone surrogate escaped in ``text``
    (``\\ud800``) comes back as U+FFFD (:func:`scrub`), so every read can be answered."""
    value = json.loads(text)
    if _ESCAPED_SURROGATE.search(text):  # only an escape can make one: stores hold UTF-8
        value = scrub(value)
    return value


def number(value: Any, field: str, lo: float, hi: float) -> float:
    """``value`` as a float within ``[lo, hi]``; numeric strings are accepted, booleans
    are not numbers."""
    if isinstance(value, bool):
        raise Invalid(
            f"{field} must be a number between {lo:g} and {hi:g}, not a boolean", field=field
        )
    if not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise Invalid(
                f"{field} must be a number between {lo:g} and {hi:g}", field=field
            ) from None
    if value != value or not lo <= value <= hi:
        raise Invalid(f"{field} must be between {lo:g} and {hi:g}, not {value}", field=field)
    return float(value)


def text(value: Any, field: str, required: bool = True, limit: int = MAX_TEXT) -> str | None:
    """``value`` stripped: a string of at most ``limit`` characters of text, of which a reader
    sees at least one (zero-width spaces, bidi marks or soft hyphens alone are no words)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not visible(value):
        raise Invalid(f"{field} is required: a few plain words", field=field)
    if len(value) > limit:
        raise Invalid(f"{field} is at most {limit} characters", field=field)
    check_text(value, field)
    return value.strip()
