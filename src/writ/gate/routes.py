"""The gate's routes file: which paths and methods map to which writ resource, and how a
request path is read (every spelling an upstream might decode it to)."""

from __future__ import annotations

import fnmatch
import functools
import json
import posixpath
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from writ.core import resources
from writ.core.errors import Invalid

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# a route's methods when its entry names none: every method but the safe ones, so a
# MERGE (OData), a MOVE or PROPPATCH (WebDAV) or a PURGE is gated like a POST
UNSAFE = frozenset({"*"})
# raw path forms an upstream may read differently from the gate: refused on a mapped prefix
_AMBIGUOUS = (
    (re.compile(rb";"), "a ';' path parameter"),
    (re.compile(rb"%(?:2[fF]|5[cC])|\\"), "an encoded slash or a backslash"),
    (re.compile(rb"%(?:2[eE]|25)"), "an encoded dot or percent sign"),
    (re.compile(rb"%(?:[01][0-9a-fA-F]|7[fF]|20)"), "an encoded control or whitespace character"),
    (re.compile(rb"%(?![0-9a-fA-F]{2})"), "a '%' that is not an escape"),
    (re.compile(rb"[\x00-\x20\x7f]"), "a control or whitespace character"),
    (re.compile(rb"//|/\.\.?(?:/|$)"), "an empty or dot segment"),
)


def ambiguity(raw_path: bytes) -> str | None:
    """Why a raw request path may mean another path to the upstream, or None."""
    for pattern, why in _AMBIGUOUS:
        if pattern.search(raw_path):
            return why
    try:
        unquote(raw_path.decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return "raw bytes outside ASCII, or escapes that are not UTF-8 text"
    return None


# ----------------------------------------------------------------------------- routes
@dataclass(frozen=True, slots=True)
class Route:
    """One ``[[route]]`` of the routes file: requests whose path matches the glob ``path``
    with one of ``methods`` need write authority on ``resource``."""

    path: str
    resource: str
    methods: frozenset[str] = UNSAFE
    attribute: str | None = None  # the lease's touches must name it (or "*")

    def matches(self, methods: Iterable[str], paths: Iterable[str]) -> bool:
        """Glob match (``fnmatch``, case-insensitive: ``*`` also crosses ``/``); a route
        ``/admin/db/*`` also covers ``/admin/db`` itself. A HEAD is also taken as a GET:
        web frameworks run a GET's handler for it (and drop the body)."""
        wanted = set(methods)
        if "HEAD" in wanted:
            wanted.add("GET")
        if not (self.methods & wanted or ("*" in self.methods and wanted - SAFE)):
            return False
        return self.covers(paths)

    def covers(self, paths: Iterable[str]) -> bool:
        """Whether any of ``paths`` falls under this route, whatever the method: as written,
        and with the letters a case-insensitive router takes for ASCII folded on both sides
        (:func:`ascii_folded`: a route ``/kılavuz/*`` covers ``/kilavuz/x``)."""
        patterns, bares = _patterns(self.path)
        return any(
            any(fnmatch.fnmatchcase(low := p.lower(), pattern) for pattern in patterns)
            or low in bares
            or low.rstrip("/") in bares
            for p in paths
        )

    def prefixes(self) -> frozenset[str]:
        """The literal start of the glob (before any wildcard), without a final ``/``: as
        written, and folded (:func:`ascii_folded`), lower case."""
        return _prefixes(self.path)


# a route's readings, worked out once per routes file, not on every request
@functools.lru_cache(maxsize=1024)
def _patterns(path: str) -> tuple[frozenset[str], frozenset[str]]:
    """A route glob's lower-case forms, as written and folded, and those of them that end
    ``/*`` without it (the route's own path)."""
    patterns = frozenset({path.lower(), ascii_folded(path).lower()})
    return patterns, frozenset(p[:-2] for p in patterns if p.endswith("/*"))


@functools.lru_cache(maxsize=1024)
def _prefixes(path: str) -> frozenset[str]:
    cut = min((i for i, c in enumerate(path) if c in "*?["), default=len(path))
    literal = path[:cut].rstrip("/")
    return frozenset({literal.lower(), ascii_folded(literal).lower()})


def route_of(routes: Sequence[Route], methods: Iterable[str], paths: Iterable[str]) -> Route | None:
    """The route a request falls under, read every way an upstream may read it.

    Each reading (one of its ``methods``, one of its ``paths``) falls under the first route, in
    file order, that matches it. When readings fall under different routes, the request needs
    what each of them needs: the route returned asks for the widest of their resources (each
    of the others is it or below it, so a lease that covers it covers them all) and for the
    attribute any of them names. When no resource is the widest, or two attributes are named,
    :class:`~writ.errors.Invalid` is raised: the gate does not guess which reading the
    upstream acts on. None when no reading falls under a route."""
    paths = list(paths)
    found = list(
        dict.fromkeys(
            r
            for m in methods
            for p in paths
            for r in [next((r for r in routes if r.matches((m,), (p,))), None)]
            if r is not None
        )
    )
    if len(found) <= 1:
        return found[0] if found else None
    widest = [r for r in found if all(resources.under(o.resource, r.resource) for o in found)]
    attributes = sorted({r.attribute for r in found if r.attribute})
    if not widest or len(attributes) > 1:
        raise Invalid(
            "the request may be read as falling under routes "
            + ", ".join(
                f"{r.path} ({r.resource}{f', {r.attribute}' if r.attribute else ''})" for r in found
            )
            + " (by its method override, its path's spellings or its method), which no one "
            "lease covers: send it in a form that falls under one route",
            field="path",
        )
    first = found[0]
    return Route(
        first.path, widest[0].resource, first.methods, attributes[0] if attributes else None
    )


def parse_routes(text: str, source: str = "routes.toml") -> list[Route]:
    """Routes from TOML text: ``[[route]]`` tables with ``path``, ``resource`` and
    optional ``methods``. Raises :class:`~writ.errors.Invalid` naming the bad entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"{source}: not valid TOML: {exc}", field="routes") from exc
    unknown = set(data) - {"route"}
    if unknown:
        raise Invalid(
            f"{source}: unknown table(s) {sorted(unknown)}; expected [[route]]", field="routes"
        )
    entries = data.get("route", [])
    if not isinstance(entries, list):
        raise Invalid(f"{source}: route must be an array of tables ([[route]])", field="routes")
    routes: list[Route] = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: route #{i}"
        if not isinstance(entry, dict):
            raise Invalid(f"{where} is not a table", field="routes")
        extra = set(entry) - {"path", "methods", "resource", "attribute"}
        if extra:
            raise Invalid(
                f"{where}: unknown key(s) {sorted(extra)}; expected path, methods, resource, "
                "attribute",
                field="routes",
            )
        path = entry.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise Invalid(
                f"{where}: path must be a glob beginning with '/', like \"/admin/db/*\"",
                field="routes",
            )
        try:
            resource = resources.validate(entry.get("resource"))
        except Invalid as exc:
            raise Invalid(f"{where}: {exc.message}", field="routes") from exc
        methods = entry.get("methods", sorted(UNSAFE))
        if (
            not isinstance(methods, list)
            or not methods
            or not all(
                isinstance(m, str) and (m == "*" or re.fullmatch(r"[A-Za-z]{1,16}", m))
                for m in methods
            )
        ):
            raise Invalid(
                f"{where}: methods must be a non-empty list of HTTP methods, like "
                '["POST", "DELETE"], or "*" (every method but GET, HEAD, OPTIONS, TRACE)',
                field="routes",
            )
        attribute = entry.get("attribute")
        if attribute is not None and (
            not isinstance(attribute, str) or not re.fullmatch(r"[^\s]{1,128}", attribute)
        ):
            raise Invalid(f'{where}: attribute must be a name like "capacity"', field="routes")
        routes.append(Route(path, resource, frozenset(m.upper() for m in methods), attribute))
    return routes


def load_routes(path: str | Path) -> list[Route]:
    """:func:`parse_routes` of a file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read routes file {p}: {exc.strerror}", field="routes") from exc
    return parse_routes(text, str(p))


def request_paths(path: str) -> set[str]:
    """The forms of a (decoded) request path an upstream might act on.

    A request is mapped when any of them matches a route, so ``/admin//db/x``,
    ``/admin/./db/x``, ``/x/../admin/db/x``, ``/admin%2Fdb/x`` and ``/admin\\db\\x`` cannot
    slip a write past a route for ``/admin/db/*``; nor can ``//host/admin/db/x`` (a URL parser
    reads a network-path reference: host ``host``, path ``/admin/db/x``), a compatibility
    form (``/ａdmin/db``, full-width), a letter another case mapping makes ASCII
    (``/adm\u0131n/db``: a case-insensitive router matches ``ı`` and ``İ`` to ``i``), trailing
    dots or spaces on a segment (``/admin/db.``, as Windows servers read it) or a format
    suffix (``/admin/db.json``, as Rails reads ``/admin/db``). The work is linear in the
    path's length.
    """
    out = {path}
    for p in (path, unquote(path)):
        p = p.replace("\\", "/")
        forms = [p, unicodedata.normalize("NFKC", p)]
        forms += [folded for f in forms if (folded := ascii_folded(f)) != f]
        if p.startswith("//"):  # //authority/rest
            forms.append("/" + p[2:].partition("/")[2])
        for form in forms:
            form = re.sub(r"/{2,}", "/", form)
            norm = posixpath.normpath(form) if form else "/"
            out.update((form, norm))
            if form.endswith("/") and norm != "/":
                out.add(norm + "/")
            # trailing dots and spaces off each segment (one of dots alone is a dot segment);
            # per segment, as a regex over the path backtracks on ". . . ." (quadratic)
            trimmed = "/".join(seg.rstrip(". ") or seg for seg in norm.split("/"))
            out.add(trimmed)
            head, _, last = trimmed.rpartition("/")
            if "." in last.strip("."):
                out.add(f"{head}/{last.split('.')[0]}")  # a format suffix cut off
    return out


@functools.lru_cache(maxsize=4096)
def _ascii_letters(c: str) -> str:
    """The ASCII letter a non-ASCII character ``c`` is taken for by a case-insensitive match
    that compares one character at a time (Python's ``re.IGNORECASE``, Java's
    ``toLowerCase`` and ``equalsIgnoreCase``), or ``c`` itself: ``ı`` and ``İ`` are ``i``,
    ``ſ`` is ``s``, ``K`` (Kelvin) is ``k``. A fold to several letters (``ß`` to ``ss``) is
    none such a router makes: ``/maße`` and ``/masse`` stay two paths."""
    for form in (c.lower(), c.upper()):
        # İ lowers to i and a combining dot above: a router comparing characters sees the i
        base = form.rstrip("".join(x for x in form if unicodedata.combining(x)))
        if len(base) == 1 and base.isascii() and base.isalpha():
            return base.lower()
    return c


def ascii_folded(text: str) -> str:
    """``text`` with each character that a case-insensitive match may take for ASCII letters
    written as them (:func:`_ascii_letters`)."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else _ascii_letters(c) for c in text)


def loose_path(raw_path: bytes) -> str:
    """What an ambiguous raw path may come to once an upstream drops or folds what makes it
    ambiguous (controls and spaces, ``;`` parameters, ``%uXXXX`` escapes, bytes that are not
    UTF-8, compatibility characters): lower case, for a prefix test (its folded forms are
    :func:`request_paths`')."""
    text = raw_path.decode("latin-1")
    text = re.sub(r"%[uU]([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    text = unicodedata.normalize("NFKC", unquote(text, errors="replace"))
    text = re.sub(r";[^/]*", "", text.replace("\\", "/"))
    return re.sub(r"[\x00-\x20\x7f\ufffd]", "", text).lower()


def describe(routes: list[Route]) -> str:
    """The routes as JSON lines (for ``writ gate --check``), a route's attribute included."""
    lines = []
    for r in routes:
        entry: dict[str, object] = {
            "path": r.path,
            "methods": sorted(r.methods),
            "resource": r.resource,
        }
        if r.attribute is not None:
            entry["attribute"] = r.attribute
        lines.append(json.dumps(entry))
    return "\n".join(lines)
