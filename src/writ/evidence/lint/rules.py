"""The lint rules: the RULES table of Rule(id, field, verdict, description, check) and its checks."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from writ.core.routes import route_problem
from writ.core.textsafe import visible

BORING_COLUMNS = ("timestamp", "agent_id", "resource", "lock_holder", "rollback_allowed")
QUEUE_FIELD = "human_override_queue"
QUEUE_FIELD_VARIANTS = ("human_override_agent", "human_override", "override_queue")

if TYPE_CHECKING:
    from writ.evidence.lint.linter import Linter

# --------------------------------------------------------------------------- rules

Row = Mapping[str, Any]
Hit = tuple[str, str, bool]  # (field, reason, guessed)


class Rule(NamedTuple):
    id: str
    field: str
    verdict: str
    description: str
    check: Callable[[Row, Linter], list[Hit] | None]


QUOTE_MAX = 200  # characters of a value a reason quotes


def quoted(value: Any) -> str:
    """``value`` as a reason quotes it: its ``repr``, cut to its first :data:`QUOTE_MAX`
    characters with how long it was (``'agent-xxx…'… (1,000,006 characters)``), so that a
    hostile 1 MB field makes a short reason. Every rule quotes values through this."""
    if isinstance(value, str):
        if len(value) <= QUOTE_MAX:
            return repr(value)
        return f"{value[:QUOTE_MAX]!r}… ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= QUOTE_MAX else f"{text[:QUOTE_MAX]}… ({len(text):,} characters)"


def _blank(v: Any) -> bool:
    return v is None or (v.__class__ is str and not visible(v))


def _no_text(v: Any) -> bool:
    """Whether ``v`` names nothing: a name, a time, a route or a queue is a string a reader
    sees something of, and anything else (``null``, ``""``, ``[]``, ``{}``, ``0``, ``false``,
    ``NaN``, zero-width spaces or bidi marks alone) is read as the value missing."""
    return not (isinstance(v, str) and visible(v))


def _json_kind(v: Any) -> str:
    return {list: "array", dict: "object", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, int | float) else "string"
    )


def _why_empty(col: str, v: Any) -> str:
    """Why a name column ``col`` holding ``v`` names nothing: empty, or not text at all."""
    if _blank(v):
        return f"{col} is empty"
    return f"{col} is a JSON {_json_kind(v)} ({quoted(v)}), not text"


def _true(v: Any) -> bool:
    """JSON true, and what people write for it ("true", "yes", 1, 1.0)."""
    return (
        v is True
        or (type(v) in (int, float) and v == 1)
        or (isinstance(v, str) and v.strip().lower() in ("true", "yes", "1"))
    )


def _boolean(v: Any) -> bool:
    """Whether ``v`` says true or false: JSON true or false, a number equal to 1 or 0, or
    what people write for them ("true"/"yes"/"1", "false"/"no"/"0")."""
    return (
        type(v) is bool
        or (type(v) in (int, float) and v in (0, 1))
        or (isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "false", "no", "0"))
    )


def _how(guessed: bool) -> str:
    return (
        " (kind guessed from the name; give --principals or --server to be sure)"
        if guessed
        else " (kind from the principals map)"
    )


class Duplicated(dict[str, Any]):
    """A row whose JSON object gave a key more than once: ``duplicates`` maps each such key to
    every value it was given, in order (the row itself holds the last, as :mod:`json` does)."""

    __slots__ = ("duplicates",)
    duplicates: dict[str, list[Any]]


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The ``object_pairs_hook`` rows are read with: a dict, or a :class:`Duplicated` one when
    a key comes twice (``{"lock_holder": "", "lock_holder": "perf-agent"}``), so the
    ``duplicate-field`` rule sees what a plain dict would silently drop."""
    row = dict(pairs)
    if len(row) == len(pairs):
        return row
    out = Duplicated(row)
    seen: dict[str, list[Any]] = {}
    for k, v in pairs:
        seen.setdefault(k, []).append(v)
    out.duplicates = {k: vs for k, vs in seen.items() if len(vs) > 1}
    return out


_DUPLICATES_NAMED = 20  # keys a row's duplicate-field findings name one by one, at most


def _duplicate_field(row: Row, lt: Linter) -> list[Hit] | None:
    dups: dict[str, list[Any]] | None = getattr(row, "duplicates", None)
    if not dups:
        return None
    hits: list[Hit] = []
    for key, values in list(dups.items())[:_DUPLICATES_NAMED]:
        shown = ", then ".join(quoted(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")
        hits.append(
            (
                key,
                f"{quoted(key)} is given {len(values)} times in this row ({shown}): readers "
                "disagree on which one counts (the first, the last, or neither), so the row "
                "says two things at once and is contaminated evidence",
                False,
            )
        )
    if len(dups) > _DUPLICATES_NAMED:
        more = len(dups) - _DUPLICATES_NAMED
        hits.append(("*", f"and {more:,} more keys are given more than once", False))
    return hits


def _missing_lock_holder(row: Row, lt: Linter) -> list[Hit] | None:
    present = "lock_holder" in row
    if (present and not _no_text(row["lock_holder"])) or (not present and lt.fragment):
        return None
    why = _why_empty("lock_holder", row["lock_holder"]) if present else "lock_holder is missing"
    return [
        (
            "lock_holder",
            f"{why}: the row cannot say who held write authority; "
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
            v = row[col]
            if col == "rollback_allowed":  # true or false, not a name
                if _boolean(v):
                    continue
                why = (
                    f"{col} is empty"
                    if _blank(v)
                    else f"{col} is {quoted(v)}, which says neither true nor false"
                )
            elif not _no_text(v):
                continue
            else:
                why = _why_empty(col, v)
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
        if not isinstance(name, str):  # kind "unknown": a value that is not text names nobody
            why = f"{_why_empty(fld, name)}: it names no principal"
            return [(fld, f"{why}; give the key to a human queue, by name", False)]
        return [
            (fld, f"{fld} {quoted(name)} {says}{_how(guessed) if k != 'unknown' else ''}", guessed)
        ]

    return check


def _needs(
    flag: str, fld: str, reason: str, empty: Callable[[Any], bool] = _no_text
) -> Callable[[Row, Linter], list[Hit] | None]:
    """A rule that fires when ``flag`` is true and ``fld`` is ``empty`` (by default: not
    text, see :func:`_no_text`; the reason then says what it holds instead)."""

    def check(row: Row, lt: Linter) -> list[Hit] | None:
        v = row.get(fld)
        if _true(row.get(flag)) and empty(v):
            shown = "" if _blank(v) else f" ({_why_empty(fld, v)})"
            return [(fld, reason + shown, False)]
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
            f"rollback_path {quoted(path)} {why}: if rollback_path is a dashboard, "
            "it's not a rollback_path",
            False,
        )
    ]


def _queue(row: Row) -> tuple[str, Any]:
    """The override queue and the field it came from (the standard name, else a variant)."""
    v = row.get(QUEUE_FIELD)
    if not _no_text(v):
        return QUEUE_FIELD, v
    for alt in QUEUE_FIELD_VARIANTS:
        v = row.get(alt)
        if not _no_text(v):
            return alt, v
    return QUEUE_FIELD, None


def _rollback_path_without_queue(row: Row, lt: Linter) -> list[Hit] | None:
    if _blank(row.get("rollback_path")) or _queue(row)[1] is not None:
        return None
    held = [
        _why_empty(f, row[f])
        for f in (QUEUE_FIELD, *QUEUE_FIELD_VARIANTS)
        if f in row and not _blank(row[f])
    ]
    return [
        (
            QUEUE_FIELD,
            "rollback_path with no human_override_queue: no queue name? no rollback"
            + (f" ({'; '.join(held)})" if held else ""),
            False,
        )
    ]


def _queue_field_variant(row: Row, lt: Linter) -> list[Hit] | None:
    hits = None
    for alt in QUEUE_FIELD_VARIANTS:
        if alt in row:
            read = "read as" if _no_text(row.get(QUEUE_FIELD)) else "ignored next to"
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
            f"{fld} {quoted(name)} is a{'n' if k == 'agent' else ''} {k}: the override must "
            f"page humans, not the ghost in the room{_how(guessed)}",
            guessed,
        )
    ]


def _denominator_is_defect(row: Row, lt: Linter) -> list[Hit] | None:
    if not _true(row.get("rollback_denominator_is_defect")):
        return None
    den = row.get("rollback_denominator")
    on = f" (denominator {quoted(den)})" if not _blank(den) else ""
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
    # a separator's spaces are taken after it: "\s*[:=#]?\s*" split a run of spaces in every
    # way before failing ("runbook" + 16,000 spaces + "!" took 5 s); this is the same language
    "runbook": re.compile(r"\brunbook\b\s*(?:[:=#]\s*)?[\w./#-]*\w", re.I),
    "when": re.compile(r"\d{1,2}:\d{2}|\d{4}-\d{2}-\d{2}", re.I),
    "paged": re.compile(r"\b(?:page[ds]?|paging)\b\s*(?:to\s+|:\s*)?[\w.@-]*\w", re.I),
}


def _names(v: Any, number: bool = False) -> bool:
    """Whether a provenance value says something: text, a list holding text (who was paged),
    or, for when, a finite number (epoch seconds); never ``[]``, ``{}``, ``0`` or ``false``."""
    if isinstance(v, list):
        return any(_names(x) for x in v)
    if number and type(v) in (int, float):
        return bool(v == v and abs(v) != float("inf") and v > 0)
    return not _no_text(v)


def provenance_parts(value: Any) -> set[str]:
    """Which of who, runbook, when, paged a provenance object or sentence names."""
    if isinstance(value, Mapping):
        return {
            part
            for part, keys in _PROVENANCE_KEYS.items()
            if any(_names(value.get(k), part == "when") for k in keys)
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
        "duplicate-field",
        "any",
        "contaminated",
        "the row's JSON object gives one key more than once",
        _duplicate_field,
    ),
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
            lambda v: _blank(v) or (not isinstance(v, Mapping | str)),
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
