"""What a request's body may say its method is, on a mapped path.

Web frameworks take a ``POST`` as another method when its body names one in a ``_method``
field: Rack's ``MethodOverride`` (Rails) and Symfony (Laravel) read it from a form, Rack
takes a ``POST`` with no ``Content-Type`` as a form, PHP cuts the type at ``;``, ``,`` or a
space before it compares it, and Laravel reads a JSON body's keys as the request's fields.
So on a mapped path the gate reads every body that may carry one — a form, JSON, or a
``POST`` with no type — and judges each method it names; and it refuses a ``Content-Type``
that is not one plain media type, which an upstream may read as a form the gate did not.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from writ.core.errors import Invalid

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM = 1 << 20  # a body on a mapped path is read (for its _method field) up to this
# one media type, as RFC 9110 spells it: token "/" token (its parameters after a ';')
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")


def body_kind(method: str, headers: list[str]) -> str | None:
    """How the gate reads the body of a request with these ``Content-Type`` values on a
    mapped path: ``"form"``, ``"multipart"``, ``"json"``, ``"untyped"`` (a ``POST`` with no
    type, which Rack reads as a form), or None (not read: no framework finds a ``_method``
    in it). Raises Invalid for more than one type, or one that is not a plain media type."""
    if len(headers) > 1:
        raise Invalid("more than one Content-Type: an upstream may read the body as the other one")
    value = headers[0] if headers else ""
    media = value.split(";")[0].strip().lower()
    if not media:
        if value.strip():
            raise Invalid(f"Content-Type {value[:80]!r} names no media type")
        return "untyped" if method == "POST" else None
    if not _MEDIA_TYPE.fullmatch(media):
        raise Invalid(
            f"Content-Type {value[:80]!r} is not one media type (type/subtype): an upstream "
            "may read the body as a form the gate did not; send one plain Content-Type"
        )
    if media == FORM_TYPES[0]:
        return "form"
    if media == FORM_TYPES[1]:
        return "multipart"
    # Laravel's isJson(): '/json' or '+json' anywhere in the header, parameters too
    if method == "POST" and ("/json" in value.lower() or "+json" in value.lower()):
        return "json"
    return None


def body_methods(kind: str, header: str, body: bytes) -> list[str]:
    """The ``_method`` fields of a body the gate reads (:func:`body_kind`); Invalid for one
    it cannot read plainly."""
    if kind in ("form", "untyped"):
        return method_fields(body)
    if kind == "json":
        return _json_methods(body)
    return _multipart_methods(body)


def _field_name(name: str) -> str:
    """A form field's name as the frameworks that honour ``_method`` may read it: PHP turns
    ``.``, spaces and ``[`` into ``_`` and drops leading spaces (``.method`` is ``_method``)."""
    return re.sub(r"[. \[]", "_", name.lstrip(" ")).lower()


def method_fields(query: bytes) -> list[str]:
    """Values of ``_method`` (any case, any spelling a framework folds onto it, ``&`` or
    ``;`` between fields) in a query string or urlencoded form."""
    text = query.decode("latin-1").replace(";", "&")
    return [v for k, v in parse_qsl(text, keep_blank_values=True) if _field_name(k) == "_method"]


# a multipart part's name, however it is written: name="x", name='x', name=x, name*=UTF-8''x
_PART = re.compile(
    rb"""\bname(?:\*\s*=\s*(?:[\w-]*'[\w-]*')?|\s*=\s*["']?)([^"';\r\n]*)""", re.IGNORECASE
)


def _multipart_methods(body: bytes) -> list[str]:
    """The ``_method`` parts of a multipart form, parsed only enough to find them: one that
    cannot be read plainly is refused (Invalid)."""
    named = [
        m
        for m in _PART.findall(body)
        if _field_name(unquote(m.decode("latin-1")).strip()) == "_method"
    ]
    if not named:
        return []
    found = re.findall(
        rb'content-disposition:\s*form-data;\s*name="_method"\r\n\r\n([A-Za-z, ]{1,64})\r\n',
        body,
        re.IGNORECASE,
    )
    if len(found) != len(named):
        raise Invalid(
            "a multipart form with a '_method' part the gate cannot read plainly: send the "
            "method as the request's own",
            field="_method",
        )
    return [m.decode("ascii") for m in found]


def _json_methods(body: bytes) -> list[str]:
    """The ``_method`` keys of a JSON body's top-level object (every one, where a key comes
    twice), each a string; one of another kind is refused (Invalid). A body that is no JSON
    names none: an upstream that cannot parse it finds no field in it either."""
    try:
        top = json.loads(body, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return []
    if not isinstance(top, _Pairs):
        return []
    found: list[str] = []
    for key, value in top:
        if _field_name(key) != "_method":
            continue
        if not isinstance(value, str):
            raise Invalid(
                "a JSON body whose '_method' is not a string: send the method as the request's own",
                field="_method",
            )
        found.append(value)
    return found


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key-value pairs, in order, duplicates kept."""
