"""Audit-row lint: judge audit rows from any system by the rules of PRODUCT.md.

A row gets one verdict, the worst of its findings (no finding is ``accept``)::

    accept < suspicious < reject < contaminated

Each :class:`Finding` names its rule, the field it is about, its own verdict and a reason.
A finding whose verdict is ``accept`` is a *warning*: the row passes, but someone should look
(a named person holding the rollback key has no rotation). The rules are data — the
:data:`RULES` table of ``Rule(id, field, verdict, description, check)`` — and each ``check``
is a small function returning the hits ``(field, reason, guessed)`` for one row.

``--fragment`` (``check_row(..., fragment=True)``) judges only the fields a row has: the two
missing-column rules stay quiet about absent columns. Every other rule still fires when the
field that triggers it is present — a ``rollback_path`` with no ``human_override_queue`` is a
reject in a fragment too (the seed's "i'd reject this row").

Principal kinds
---------------
``rollback_key_holder``, ``approved_by`` and ``human_override_queue`` are judged by the kind
of principal they name (``agent``, ``human``, ``queue``, ``portal``). The kind comes from the
``kinds`` map (a principals file, or ``GET /v1/principals``); a name that is not in the map is
guessed from its words (split on ``- _ . / @ :`` and spaces), first match wins, and the
finding says it was guessed (``guessed=True``)::

    agent   a word in AGENT_WORDS (agent, bot, script, cron, daemon, runner, job, worker,
            llm, optimizer, ...), or a word starting with "auto" or ending in "bot"/"agent"
    portal  a word in PORTAL_WORDS (portal, button, dashboard, console, ui, vendor, ...)
    queue   first word "svc" or "team"; a word in QUEUE_WORDS (oncall, queue, team, sre,
            rotation, pager, rota, escalation, noc, ...); or a last word ending in "ops"
            (db-ops, platform-ops, devops)
    human   one to three purely alphabetic words that are not generic (marco, jane.doe,
            ops-princess: a role prefix before a name is a person, not a team)
    unknown anything else (agent-less digits, "the platform", "none", "admin")

So ``svc-ops-princess`` is a queue, ``ops-princess`` a person, ``agent-autocleanup-7`` an
agent and ``vendor-portal-button`` a portal. A principals map always wins over a guess.

Input
-----
:func:`iter_rows` reads a text or binary stream in constant memory: 64 KiB chunks, each
extended to the end of its line, decoded value after value with ``json.JSONDecoder.raw_decode``.
That one reader takes JSONL (blank lines skipped), JSON objects one after another (pretty-printed
rows may span lines, as people paste them) and JSON arrays: a top-level ``[`` is walked element
by element, never parsed whole. ``{"rows": [...]}`` (writ's ``GET /v1/audit``) gives one row per
element (that object is parsed whole, up to 64 MiB). A malformed value becomes an
:class:`Unreadable` row naming its line, and reading goes on at the next line (for a value that
spanned lines, at the next line beginning with ``{`` or ``[``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple

from writ.core.errors import Invalid
from writ.core.ledger import FIELDS
from writ.core.models import KINDS
from writ.core.routes import route_problem

__all__ = [
    "RULES",
    "VERDICTS",
    "Finding",
    "Linter",
    "Result",
    "Rule",
    "Unreadable",
    "check_row",
    "guess_kind",
    "iter_rows",
    "load_principals",
    "parse_principals",
    "provenance_parts",
    "worst",
]

VERDICTS: tuple[str, ...] = ("accept", "suspicious", "reject", "contaminated")
_RANK = {v: i for i, v in enumerate(VERDICTS)}
BORING_COLUMNS = ("timestamp", "agent_id", "resource", "lock_holder", "rollback_allowed")
QUEUE_FIELD = "human_override_queue"
QUEUE_FIELD_VARIANTS = ("human_override_agent", "human_override", "override_queue")


def worst(*verdicts: str) -> str:
    """The worst of some verdicts (``accept`` when given none)."""
    return max(verdicts, key=_RANK.__getitem__, default="accept")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's judgement on one field of a row."""

    rule: str
    field: str
    verdict: str
    reason: str
    guessed: bool = False  # the principal's kind came from name heuristics

    @property
    def is_warning(self) -> bool:
        return self.verdict == "accept"

    def to_dict(self, *, guessed: bool = False) -> dict[str, Any]:
        out = {
            "rule": self.rule,
            "field": self.field,
            "verdict": self.verdict,
            "reason": self.reason,
        }
        return {**out, "guessed": self.guessed} if guessed else out


@dataclass(frozen=True, slots=True)
class Result:
    """A row's verdict and findings; ``error`` is set when the row could not be read."""

    verdict: str
    findings: tuple[Finding, ...] = ()
    error: str | None = None

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_warning)

    def to_dict(self, row: int | None = None, *, guessed: bool = False) -> dict[str, Any]:
        """The ``--format jsonl`` object: ``{"row", "verdict", "findings"}`` (+ ``error``)."""
        out: dict[str, Any] = {} if row is None else {"row": row}
        out["verdict"] = self.verdict
        out["findings"] = [f.to_dict(guessed=guessed) for f in self.findings]
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line (or array element) that is not a JSON object; ``line`` counts from 1."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"

    def result(self) -> Result:
        why = f"line {self.line} is not an audit row: {self.message}"
        return Result("contaminated", (Finding("unreadable", "*", "contaminated", why),), str(self))


# --------------------------------------------------------------------------- principal kinds

AGENT_WORDS = frozenset(
    """agent agents bot robot script cron cronjob daemon runner job worker
    automation autopilot llm ai gpt copilot optimizer controller reconciler autoscaler scheduler
    pipeline ci terraform ansible jenkins argocd lambda""".split()
)
PORTAL_WORDS = frozenset(
    """portal button dashboard console ui gui webui widget vendor saas
    click integration marketplace""".split()
)
QUEUE_WORDS = frozenset(
    """svc oncall queue team sre rotation rota pager pagerduty escalation noc
    support duty triage squad""".split()
)
GENERIC_WORDS = frozenset(
    """the a platform system service default admin root unknown none
    nobody null tbd todo na everyone anyone all user users someone owner it""".split()
)
_SPLIT = re.compile(r"[\s._\-/@:]+")


@lru_cache(maxsize=8192)
def guess_kind(name: str) -> str:
    """Guess a principal's kind from its name: agent, portal, queue, human or unknown."""
    low = name.strip().lower().replace("on-call", "oncall")
    words = [w for w in _SPLIT.split(low) if w]
    if not words:
        return "unknown"
    if any(w in AGENT_WORDS or w.startswith("auto") or w.endswith(("bot", "agent")) for w in words):
        return "agent"
    if any(w in PORTAL_WORDS for w in words):
        return "portal"
    if any(w in QUEUE_WORDS for w in words) or words[-1].endswith("ops"):
        return "queue"
    if (
        len(words) <= 3
        and all(w.isalpha() and w.isascii() and w not in GENERIC_WORDS for w in words)
        and (len(words) > 1 or len(words[0]) > 1)
    ):
        return "human"
    return "unknown"


def parse_principals(data: Any) -> dict[str, str]:
    """name -> kind from ``{name: kind}``, ``[{"name", "kind"}]`` or ``{"principals": ...}``."""
    if (
        isinstance(data, Mapping)
        and "principals" in data
        and not isinstance(data["principals"], str)
    ):
        return parse_principals(data["principals"])
    if isinstance(data, list):
        pairs = []
        for item in data:
            if not isinstance(item, Mapping) or "name" not in item or "kind" not in item:
                raise Invalid("a principals list holds objects with a name and a kind")
            pairs.append((item["name"], item["kind"]))
    elif isinstance(data, Mapping):
        pairs = list(data.items())
    else:
        raise Invalid('principals must map name -> kind, like {"svc-ops-princess": "queue"}')
    out: dict[str, str] = {}
    for name, kind in pairs:
        if not isinstance(name, str) or not isinstance(kind, str) or kind not in KINDS:
            raise Invalid(f"principal {name!r} has kind {kind!r}; kinds are {', '.join(KINDS)}")
        out[name] = kind
    return out


def load_principals(path: str | Path) -> dict[str, str]:
    """Read a principals file, JSON or TOML (by extension; otherwise JSON, then TOML)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    parsers = (
        [tomllib.loads]
        if p.suffix.lower() == ".toml"
        else [json.loads]
        if p.suffix.lower() == ".json"
        else [json.loads, tomllib.loads]
    )
    for i, parse in enumerate(parsers, 1):
        try:
            return parse_principals(parse(text))
        except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            if i == len(parsers):
                raise Invalid(f"{p.name} is not a JSON or TOML principals map: {exc}") from None
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- rules

Row = Mapping[str, Any]
Hit = tuple[str, str, bool]  # (field, reason, guessed)


class Rule(NamedTuple):
    id: str
    field: str
    verdict: str
    description: str
    check: Callable[[Row, Linter], list[Hit] | None]


def _blank(v: Any) -> bool:
    return v is None or (v.__class__ is str and (not v or v.isspace()))


def _true(v: Any) -> bool:
    """JSON true, and what people write for it ("true", "yes", 1)."""
    return (
        v is True
        or (type(v) is int and v == 1)
        or (isinstance(v, str) and v.strip().lower() in ("true", "yes", "1"))
    )


def _how(guessed: bool) -> str:
    return (
        " (kind guessed from the name; give --principals or --server to be sure)"
        if guessed
        else " (kind from the principals map)"
    )


def _missing_lock_holder(row: Row, lt: Linter) -> list[Hit] | None:
    present = "lock_holder" in row
    if (present and not _blank(row["lock_holder"])) or (not present and lt.fragment):
        return None
    why = "is empty" if present else "is missing"
    return [
        (
            "lock_holder",
            f"lock_holder {why}: the row cannot say who held write authority; "
            "it is contaminated evidence, not an incident record",
            False,
        )
    ]


def _missing_column(row: Row, lt: Linter) -> list[Hit] | None:
    hits = None
    for col in BORING_COLUMNS:
        if col == "lock_holder":
            continue  # its own rule
        if col in row:
            if not _blank(row[col]):
                continue
            why = f"{col} is empty"
        elif lt.fragment:
            continue
        else:
            why = f"no {col}"
        hits = hits or []
        hits.append((col, f"{why}: one of the five boring columns every incident row needs", False))
    return hits


_KEY_REASONS = {
    "agent": "is an agent: agents may request rollback; only a human queue holds the key",
    "portal": "is a vendor portal or button: a key inside the vendor's UI is a loyalty oath, "
    "not a second key (fire the vendor)",
    "human": "is a named person: acceptable, but a person has no rotation and sleeps; "
    "give the key to a human queue",
    "unknown": "is not a known principal and its name says neither queue nor person: "
    "register it or give the key to a human queue",
}


_APPROVER_REASONS = {
    "agent": "is an agent: agents may request; only a human or a human queue approves",
    "portal": "is a vendor portal: agents and portals may request; only humans approve",
}


def _principal(fld: str, kind: str, says: str) -> Callable[[Row, Linter], list[Hit] | None]:
    """A rule that fires when ``fld`` names a principal of ``kind``."""

    def check(row: Row, lt: Linter) -> list[Hit] | None:
        name = row.get(fld)
        if name is None:
            return None
        k, guessed = lt.kind(name)
        if k != kind:  # (a blank name is kind "blank")
            return None
        return [(fld, f"{fld} {name!r} {says}{_how(guessed) if k != 'unknown' else ''}", guessed)]

    return check


def _needs(flag: str, fld: str, reason: str) -> Callable[[Row, Linter], list[Hit] | None]:
    """A rule that fires when ``flag`` is true and ``fld`` is blank."""

    def check(row: Row, lt: Linter) -> list[Hit] | None:
        if _true(row.get(flag)) and _blank(row.get(fld)):
            return [(fld, reason, False)]
        return None

    return check


def _rollback_path_not_route(row: Row, lt: Linter) -> list[Hit] | None:
    path = row.get("rollback_path")
    if _blank(path):
        return None
    why = route_problem(path)  # the same test writ applies to rollback plans at acquire
    if why is None:
        return None
    return [
        (
            "rollback_path",
            f"rollback_path {path!r} {why}: if rollback_path is a dashboard, "
            "it's not a rollback_path",
            False,
        )
    ]


def _queue(row: Row) -> tuple[str, Any]:
    """The override queue and the field it came from (the standard name, else a variant)."""
    v = row.get(QUEUE_FIELD)
    if not _blank(v):
        return QUEUE_FIELD, v
    for alt in QUEUE_FIELD_VARIANTS:
        v = row.get(alt)
        if not _blank(v):
            return alt, v
    return QUEUE_FIELD, None


def _rollback_path_without_queue(row: Row, lt: Linter) -> list[Hit] | None:
    if _blank(row.get("rollback_path")) or _queue(row)[1] is not None:
        return None
    return [
        (
            QUEUE_FIELD,
            "rollback_path with no human_override_queue: no queue name? no rollback",
            False,
        )
    ]


def _queue_field_variant(row: Row, lt: Linter) -> list[Hit] | None:
    hits = None
    for alt in QUEUE_FIELD_VARIANTS:
        if alt in row:
            read = "read as" if _blank(row.get(QUEUE_FIELD)) else "ignored next to"
            hits = hits or []
            hits.append(
                (
                    alt,
                    f"{alt} is not a standard audit column: {read} {QUEUE_FIELD} (rename it)",
                    False,
                )
            )
    return hits


def _override_queue_not_human(row: Row, lt: Linter) -> list[Hit] | None:
    fld, name = _queue(row)
    k, guessed = lt.kind(name)
    if k not in ("agent", "portal"):
        return None
    return [
        (
            fld,
            f"{fld} {name!r} is a{'n' if k == 'agent' else ''} {k}: the override must "
            f"page humans, not the ghost in the room{_how(guessed)}",
            guessed,
        )
    ]


def _denominator_is_defect(row: Row, lt: Linter) -> list[Hit] | None:
    if not _true(row.get("rollback_denominator_is_defect")):
        return None
    den = row.get("rollback_denominator")
    on = f" (denominator {den!r})" if not _blank(den) else ""
    return [
        (
            "rollback_denominator_is_defect",
            f"rollback_denominator_is_defect is true{on}: "
            "the rollback was a new defect, not recovery, and never reads as clean history",
            False,
        )
    ]


_PROVENANCE_KEYS = {
    "who": ("revoked_by", "by", "who"),
    "runbook": ("via_runbook", "runbook"),
    "when": ("at", "when", "revoked_at", "timestamp"),
    "paged": ("after_paging", "paged", "paging"),
}
_PROVENANCE_TEXT = {
    "who": re.compile(r"^\s*[\w.@-]+\s+revoked\b|\bby\s+[\w.@-]+", re.I),
    "runbook": re.compile(r"\brunbook\b\s*[:=#]?\s*[\w./#-]*\w", re.I),
    "when": re.compile(r"\d{1,2}:\d{2}|\d{4}-\d{2}-\d{2}", re.I),
    "paged": re.compile(r"\b(?:page[ds]?|paging)\b\s*(?:to\s+|:\s*)?[\w.@-]*\w", re.I),
}


def provenance_parts(value: Any) -> set[str]:
    """Which of who, runbook, when, paged a provenance object or sentence names."""
    if isinstance(value, Mapping):
        return {
            part
            for part, keys in _PROVENANCE_KEYS.items()
            if any(not _blank(value.get(k)) and value.get(k) != [] for k in keys)
        }
    if isinstance(value, str):
        return {part for part, rx in _PROVENANCE_TEXT.items() if rx.search(value)}
    return set()


def _revoke_provenance_incomplete(row: Row, lt: Linter) -> list[Hit] | None:
    value = row.get("second_key_revoke_provenance")
    if _blank(value):
        return None
    missing = [p for p in _PROVENANCE_KEYS if p not in provenance_parts(value)]
    if not missing:
        return None
    return [
        (
            "second_key_revoke_provenance",
            "second_key_revoke_provenance does not say "
            + ", ".join(missing)
            + ": a revocation names who, via which runbook, when, and "
            "after paging whom (revoked_by, via_runbook, at, after_paging)",
            False,
        )
    ]


_KH, _AB, _Q, _RP = "rollback_key_holder", "approved_by", QUEUE_FIELD, "rollback_path"
_PROV = "second_key_revoke_provenance"
RULES: tuple[Rule, ...] = (
    Rule(
        "missing-lock-holder",
        "lock_holder",
        "contaminated",
        "lock_holder is absent or empty",
        _missing_lock_holder,
    ),
    Rule(
        "missing-column",
        "timestamp|agent_id|resource|rollback_allowed",
        "contaminated",
        "one of the other four boring columns is absent or empty",
        _missing_column,
    ),
    Rule(
        "key-holder-portal",
        _KH,
        "reject",
        "the rollback key is held by a vendor portal or button",
        _principal(_KH, "portal", _KEY_REASONS["portal"]),
    ),
    Rule(
        "key-holder-agent",
        _KH,
        "suspicious",
        "the rollback key is held by an agent or script",
        _principal(_KH, "agent", _KEY_REASONS["agent"]),
    ),
    Rule(
        "key-holder-unknown",
        _KH,
        "suspicious",
        "the rollback key holder is neither a known nor a recognisable principal",
        _principal(_KH, "unknown", _KEY_REASONS["unknown"]),
    ),
    Rule(
        "key-holder-person",
        _KH,
        "accept",
        "warning: the rollback key is held by a named person, not a queue",
        _principal(_KH, "human", _KEY_REASONS["human"]),
    ),
    Rule(
        "rollback-without-key-holder",
        _KH,
        "suspicious",
        "rollback_allowed is true but nobody holds the key",
        _needs(
            "rollback_allowed",
            _KH,
            "rollback_allowed is true but no rollback_key_holder: "
            "who holds the key while the lock is held? (not 'the platform')",
        ),
    ),
    Rule(
        "rollback-without-path",
        _RP,
        "reject",
        "rollback_allowed is true with no rollback_path",
        _needs(
            "rollback_allowed",
            _RP,
            "rollback_allowed is true with no rollback_path: a rollback "
            "with no route is a hostage note",
        ),
    ),
    Rule(
        "rollback-path-not-route",
        _RP,
        "reject",
        "rollback_path is a dashboard, console or button label, not a literal route",
        _rollback_path_not_route,
    ),
    Rule(
        "rollback-path-without-queue",
        _Q,
        "reject",
        "rollback_path with no human_override_queue",
        _rollback_path_without_queue,
    ),
    Rule(
        "queue-field-variant",
        _Q,
        "accept",
        "warning: a non-standard name (human_override_agent, ...) stands for human_override_queue",
        _queue_field_variant,
    ),
    Rule(
        "override-queue-not-human",
        _Q,
        "suspicious",
        "human_override_queue names an agent or portal",
        _override_queue_not_human,
    ),
    Rule(
        "approver-agent",
        _AB,
        "suspicious",
        "approved_by is an agent",
        _principal(_AB, "agent", _APPROVER_REASONS["agent"]),
    ),
    Rule(
        "approver-portal",
        _AB,
        "suspicious",
        "approved_by is a vendor portal",
        _principal(_AB, "portal", _APPROVER_REASONS["portal"]),
    ),
    Rule(
        "denominator-is-defect",
        "rollback_denominator_is_defect",
        "suspicious",
        "the rollback was a new defect, not recovery: never accept",
        _denominator_is_defect,
    ),
    Rule(
        "revoke-without-provenance",
        _PROV,
        "reject",
        "second_key_revoked: true with no provenance",
        _needs(
            "second_key_revoked",
            _PROV,
            "second_key_revoked is a bare boolean: name who revoked, via which runbook, "
            "when, and who was paged in second_key_revoke_provenance",
        ),
    ),
    Rule(
        "revoke-provenance-incomplete",
        _PROV,
        "reject",
        "the provenance does not name who, runbook, when and who was paged",
        _revoke_provenance_incomplete,
    ),
)


class Linter:
    """Rules bound to one mode and one principals map; reuse it across many rows."""

    def __init__(
        self,
        *,
        fragment: bool = False,
        kinds: Mapping[str, str] | None = None,
        rules: Iterable[Rule] = RULES,
    ) -> None:
        self.fragment = fragment
        self.kinds: Mapping[str, str] = kinds or {}
        self.rules = tuple(rules)
        self._plan = [(r.check, r.id, r.verdict, _RANK[r.verdict]) for r in self.rules]
        self._cache: dict[str, tuple[str, bool]] = {}

    def kind(self, name: Any) -> tuple[str, bool]:
        """``(kind, guessed)`` for a principal name: the map's kind, else a guess.

        Non-strings are ``unknown``; empty strings are ``blank`` (no principal named).
        """
        if not isinstance(name, str):
            return "unknown", False
        hit = self._cache.get(name)
        if hit is None:
            k = self.kinds.get(name) or self.kinds.get(name.strip().lower())
            hit = (
                ("blank", False)
                if not name.strip()
                else (k, False)
                if k
                else (guess_kind(name), True)
            )
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[name] = hit
        return hit

    def check(self, row: Any) -> Result:
        if not isinstance(row, Mapping):
            return Unreadable(0, f"a JSON {_json_type(row)} is not an audit row").result()
        findings: list[Finding] = []
        verdict, worst_rank = "accept", 0
        for check, rule_id, rule_verdict, rank in self._plan:
            hits = check(row, self)
            if hits:
                for fld, reason, guessed in hits:
                    findings.append(Finding(rule_id, fld, rule_verdict, reason, guessed))
                if rank > worst_rank:
                    verdict, worst_rank = rule_verdict, rank
        return Result(verdict, tuple(findings))


def check_row(
    row: Mapping[str, Any], *, fragment: bool = False, kinds: Mapping[str, str] | None = None
) -> Result:
    """Judge one audit row (see the module docstring for the rules and modes)."""
    return Linter(fragment=fragment, kinds=kinds).check(row)


# --------------------------------------------------------------------------- reading rows

_CHUNK = 1 << 16  # read this much, then to the end of the line: a chunk never cuts a line
_MAX_VALUE = 64 << 20  # characters one JSON value (not an array's element) may span
_WS = re.compile(r"[ \t\n\r]*")
_ROW_START = re.compile(r"\n[ \t\r]*[\[{]")  # where reading resumes after a malformed value
_AUDIT_FIELDS = frozenset(FIELDS)
RowItem = tuple[int, "dict[str, Any] | Unreadable"]


def _json_type(v: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number"
    )


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
