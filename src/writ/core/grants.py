"""The authority model: who may ever hold write authority on what (PROTOCOL.md v1.1, "Authority").

The ``[authority]`` section of a policy file (:func:`parse_section`), its grants (:class:`Grant`,
:class:`Settings`) and the pure decision over them (:func:`decide`, :func:`observable`). The rule
that applies it at every grant is :class:`writ.rules.authority.Authority`, whose docstring shows the
policy file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from writ.core import resources
from writ.core.errors import Invalid, PolicyError
from writ.core.models import KINDS, NAME, Principal
from writ.core.validate import text_problem

MODES = ("open", "closed")
GRANT_KEYS = ("principals", "kinds", "vendors", "write", "observe", "attributes")
SECTION_KEYS = ("mode", "grant")
READ_ALL = ("human", "queue")  # kinds that read everything, in any mode


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True, slots=True)
class Grant:
    """One ``[[authority.grant]]``: whom it applies to and what it allows."""

    line: int | None = None
    principals: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    vendors: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    observe: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ("*",)

    def applies(self, p: Principal) -> bool:
        return (
            p.name in self.principals
            or p.kind in self.kinds
            or (p.vendor is not None and p.vendor in self.vendors)
        )

    def writes(self, resource: str) -> bool:
        return any(resources.under(resource, w) for w in self.write)

    def observes(self, resource: str) -> bool:
        return self.writes(resource) or any(resources.under(resource, o) for o in self.observe)

    def who(self) -> str:
        parts = [*self.principals, *(f"kind {k}" for k in self.kinds)]
        parts += [f"vendor {v}" for v in self.vendors]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "principals": list(self.principals),
            "kinds": list(self.kinds),
            "vendors": list(self.vendors),
            "write": list(self.write),
            "observe": list(self.observe),
            "attributes": list(self.attributes),
        }


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[authority]`` section of a policy (the default is open mode, no grants)."""

    mode: str = "open"
    grants: tuple[Grant, ...] = ()
    source: str = "<policy>"

    @property
    def closed(self) -> bool:
        return self.mode == "closed"

    def where(self, grant: Grant | None) -> str | None:
        """FILE:LINE of ``grant`` (None for none, or a grant of unknown line)."""
        if grant is None or grant.line is None:
            return None
        return f"{self.source}:{grant.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "grants": [g.to_dict() for g in self.grants]}


OPEN = Settings()


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``principal`` may do on ``resource``, and which grant says so."""

    principal: str
    resource: str
    mode: str
    write: bool
    observe: bool
    attributes: list[str]
    rule: str | None
    message: str
    may: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "resource": self.resource,
            "mode": self.mode,
            "write": self.write,
            "observe": self.observe,
            "attributes": self.attributes,
            "rule": self.rule,
            "message": self.message,
            "may": self.may,
        }


def _union(groups: Iterable[Iterable[str]]) -> list[str]:
    out = list(dict.fromkeys(x for g in groups for x in g))
    return ["*"] if "*" in out else out


def _list(items: Sequence[str]) -> str:
    """Names or prefixes in words ("" is the prefix of everything)."""
    return ", ".join(x or "(everything)" for x in items) if items else "nothing"


def decide(s: Settings, p: Principal, resource: str) -> Decision:
    """The authority of ``p`` over ``resource`` under ``s`` (pure; no I/O)."""
    if not s.closed:
        return Decision(
            p.name,
            resource,
            s.mode,
            True,
            True,
            ["*"],
            None,
            f"open mode: {p.name} may write and observe {resource}",
            {"write": [""], "observe": [""], "attributes": ["*"]},
        )
    mine = [g for g in s.grants if g.applies(p)]
    writers = [g for g in mine if g.writes(resource)]
    observers = [g for g in mine if g.observes(resource)]
    admin = p.admin and p.kind in READ_ALL
    write = bool(writers) or admin
    attributes = ["*"] if admin else _union(g.attributes for g in writers)
    observe = write or p.kind in READ_ALL or bool(observers)
    nearest = next(iter(writers or observers or mine), None)
    may = {
        "write": _union(g.write for g in mine) if not admin else [""],
        "observe": _union((*g.write, *g.observe) for g in mine) if p.kind not in READ_ALL else [""],
        "attributes": _union(g.attributes for g in mine if g.write) if not admin else ["*"],
    }
    if write:
        what = f"{p.name} may write {resource}" + (" (an admin)" if admin and not writers else "")
        if attributes != ["*"]:
            what += f", touching only {_list(attributes)}"
    else:
        what = (
            f"{p.name} may observe {resource}, not write it"
            if observe
            else f"{p.name} may neither write nor observe {resource}"
        )
        what += f"; it may write under: {_list(may['write'])}"
        if p.kind not in READ_ALL:
            what += f"; observe under: {_list(may['observe'])}"
    where = s.where(nearest)
    what += f" ({where})" if where else " (no grant in [authority] names it)"
    return Decision(p.name, resource, s.mode, write, observe, attributes, where, what, may)


def observable(s: Settings, p: Principal, resource: str | None) -> bool:
    """May ``p`` read rows about ``resource``? (Rows about no resource: humans only.)"""
    if not s.closed or p.kind in READ_ALL:
        return True
    if not resource:
        return False
    return any(g.observes(resource) for g in s.grants if g.applies(p))


def may_filter(s: Settings, p: Principal, prefix: str) -> bool:
    """May ``p`` read the ledger filtered to ``prefix``? When it may observe ``prefix``, or
    something below it (the page leaves out the rows it may not read). Not a resource it
    neither observes nor stands above: the page's cursor, moving past the rows left out,
    would tell when and how often that resource was written."""
    if not prefix or observable(s, p, prefix):
        return True
    return any(
        resources.under(o, prefix) for g in s.grants if g.applies(p) for o in (*g.write, *g.observe)
    )


LOCK_COLUMNS = ("lock_holder", "lock_key", "lock_acquired_at", "fencing_token")
# rows about no resource, whatever their ``resource`` column says (``principals/NAME``,
# ``policy``; ``freezes`` for a refused lift): for humans and queues
ABOUT_NO_RESOURCE = ("principal.", "policy.")


# rows whose notes name the wake or page route writ calls ("POST URL"): another principal's
# route, which may carry secrets (an agent is shown writ's wake route instead)
CALL_EVENTS = ("wake.", "page.", "lease.stuck", "lease.paged")
_CALL = re.compile(r"POST \S+")
UNSHOWN_ROUTE = "POST (its route, not shown to agents and portals)"


def _about_no_resource(row: dict[str, Any]) -> bool:
    event = str(row.get("event"))
    return event.startswith(ABOUT_NO_RESOURCE) or (
        event == "freeze.refused" and row.get("resource") == "freezes"
    )


def row_view(s: Settings, p: Principal, row: dict[str, Any]) -> dict[str, Any] | None:
    """An audit row as ``p`` may read it: None when it may not read it at all (a row about
    a resource it may not observe, or about no resource: principals, the policy); else the row,
    its lock columns blanked (``hidden`` true) when they name a lease on a resource ``p`` may
    not observe — a blast-radius neighbour standing in the way of a request about the row's
    resource — and the wake or page route a row's notes name left out. The ledger keeps the
    row as written: this is a reader's view of it."""
    if not s.closed or p.kind in READ_ALL:
        return row
    if _about_no_resource(row) or not observable(s, p, row.get("resource")):
        return None
    key = row.get("lock_key")
    if isinstance(key, str) and not observable(s, p, key.rsplit("/", 1)[0]):
        row = {**row, **dict.fromkeys(LOCK_COLUMNS), "hidden": True}
    notes = row.get("notes")
    if str(row.get("event")).startswith(CALL_EVENTS) and isinstance(notes, str):
        row = {**row, "notes": _CALL.sub(UNSHOWN_ROUTE, notes)}
    return row


def sees_freeze(s: Settings, p: Principal, prefix: str | None) -> bool:
    """May ``p`` be told of a freeze on ``prefix``? In closed mode an agent or portal is told
    of the freezes above, on or below what it may observe or write, of no others."""
    if not s.closed or p.kind in READ_ALL:
        return True
    mine = [q for g in s.grants if g.applies(p) for q in (*g.write, *g.observe)]
    return any(q == "" or resources.related(str(prefix), q) for q in mine)


# ----------------------------------------------------------------------------- parsing
_HEADER = re.compile(r"""^\s*\[\[\s*["']?authority["']?\s*\.\s*["']?grant["']?\s*\]\]\s*(#.*)?$""")
_SECTION = re.compile(r"""^\s*\[\s*["']?authority["']?\s*\]\s*(#.*)?$""")
_MARK = "__writ_grant_line__"


def grant_lines(text: str) -> list[int]:
    """1-based line numbers of the ``[[authority.grant]]`` headers, in file order.

    tomllib keeps no positions. So every line that looks like such a header gets a marker
    key after it (``__writ_grant_line__ = N``) and the marked text is parsed again: a real
    header's table carries its line, while a header-like line inside a multi-line string
    only changes that string. The TOML parser decides what is a string (quotes in comments
    and in one-line strings included), not a scan of quotes. [] when the marked text does
    not parse (the grants then have no line)."""
    marked: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        marked.append(line)
        if _HEADER.match(line):
            marked.append(f"{_MARK} = {i}")
    try:
        data = tomllib.loads("\n".join(marked))
    except (tomllib.TOMLDecodeError, RecursionError):
        return []
    section = data.get("authority")
    grants = section.get("grant") if isinstance(section, dict) else None
    if not isinstance(grants, list):
        return []
    lines = [g.get(_MARK) if isinstance(g, dict) else None for g in grants]
    return [n for n in lines if type(n) is int] if all(type(n) is int for n in lines) else []


def section_line(text: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if _SECTION.match(line):
            return i
    return None


def _names(
    raw: Mapping[str, Any], key: str, fail: Any, line: int | None, least: int = 1
) -> tuple[str, ...]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) and least <= len(x) <= 256 for x in v):
        fail(f"authority.grant {key} must be a list of names", line)
    for x in v:  # a name that is not text could never match, and would print as a fake row
        problem = text_problem(x)
        if problem:
            fail(f"authority.grant {key}: {x!r} {problem}", line)
        if key == "principals" and not NAME.fullmatch(x):
            fail(f"authority.grant principals: {x!r} is not a principal name (a-z 0-9 . _ -)", line)
    return tuple(dict.fromkeys(v))


def _prefixes(raw: Mapping[str, Any], key: str, fail: Any, line: int | None) -> tuple[str, ...]:
    out = _names(raw, key, fail, line, least=0)  # "" is the prefix of everything
    for prefix in out:
        if prefix == "":
            continue
        try:
            resources.validate(prefix, f"authority.grant {key}")
        except Invalid as exc:
            fail(exc.message, line)
    return out


def parse_section(raw: Any, text: str, path: str) -> Settings:
    """The ``[authority]`` section of a policy file; raises :class:`~writ.core.policy.PolicyError`
    with FILE:LINE and the reason."""

    def fail(reason: str, line: int | None) -> None:
        raise PolicyError(path, reason, line)

    top = section_line(text)
    if raw is None:
        return Settings(source=path)
    if not isinstance(raw, dict):
        fail("authority must be a table: [authority] with mode = ...", top)
    for key in raw:
        if key not in SECTION_KEYS:
            fail(f"unknown authority setting {key!r}; known: mode, grant", top)
    mode = raw.get("mode", "open")
    if mode not in MODES:
        fail(f'authority mode must be "open" or "closed", not {mode!r}', top)
    entries = raw.get("grant", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        fail("grants must be written as [[authority.grant]] tables", top)
    lines: list[int | None] = list(grant_lines(text))
    if len(lines) != len(entries):  # written some other way (inline tables): no lines
        lines = [None] * len(entries)
    grants = []
    for raw_grant, line in zip(entries, lines, strict=True):
        unknown = sorted(set(raw_grant) - set(GRANT_KEYS))
        if unknown:
            fail(f"unknown grant setting {unknown[0]!r}; known: {', '.join(GRANT_KEYS)}", line)
        principals = _names(raw_grant, "principals", fail, line)
        kinds = _names(raw_grant, "kinds", fail, line)
        vendors = _names(raw_grant, "vendors", fail, line)

        for k in kinds:
            if k not in KINDS:
                fail(f"authority.grant kinds: {k!r} is not one of {', '.join(KINDS)}", line)
        if not (principals or kinds or vendors):
            fail("a grant needs principals, kinds or vendors: whom does it apply to?", line)
        attributes = (
            _names(raw_grant, "attributes", fail, line) if "attributes" in raw_grant else ("*",)
        )
        if not attributes:
            fail('attributes must name at least one attribute (or "*")', line)
        grants.append(
            Grant(
                line=line,
                principals=principals,
                kinds=kinds,
                vendors=vendors,
                write=_prefixes(raw_grant, "write", fail, line),
                observe=_prefixes(raw_grant, "observe", fail, line),
                attributes=attributes,
            )
        )
    return Settings(mode=mode, grants=tuple(grants), source=path)


def review(s: Settings, known: Mapping[str, Principal] | None = None) -> list[str]:
    """Warnings for ``writ policy check``: unknown principals, grants without effect,
    and overlaps explained (what a principal matched by several grants may do)."""
    out: list[str] = []
    for g in s.grants:
        where = s.where(g) or s.source
        if known is not None:
            for name in g.principals:
                if name not in known:
                    out.append(f"{where}: {name!r} is not a registered principal")
        if not g.write and not g.observe:
            out.append(f"{where}: this grant lets {g.who()} neither write nor observe anything")
    for i, a in enumerate(s.grants):
        for b in s.grants[i + 1 :]:
            common = _overlap(a, b, known)
            if common:
                out.append(
                    f"{s.where(a) or s.source} and {s.where(b) or s.source} both apply to "
                    f"{common}: they add up (write {_list(_union([a.write, b.write]))}; "
                    f"observe {_list(_union([a.write, a.observe, b.write, b.observe]))}; "
                    f"attributes {_list(_union(g.attributes for g in (a, b) if g.write))})"
                )
    if s.mode == "open" and s.grants:
        out.append(
            f"{s.source}: mode is open, so the {len(s.grants)} grant(s) are not enforced "
            '(set mode = "closed" in [authority])'
        )
    return out


def _overlap(a: Grant, b: Grant, known: Mapping[str, Principal] | None) -> str:
    """Whom both grants apply to, in words ('' when nobody)."""
    names = sorted(set(a.principals) & set(b.principals))
    kinds = sorted(set(a.kinds) & set(b.kinds))
    vendors = sorted(set(a.vendors) & set(b.vendors))
    if known is not None:
        names = sorted({*names, *(n for n, p in known.items() if a.applies(p) and b.applies(p))})
    parts = names + [f"kind {k}" for k in kinds] + [f"vendor {v}" for v in vendors]
    return ", ".join(parts)
