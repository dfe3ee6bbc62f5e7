"""The verdicts, a row's findings and result, and the Linter that runs the rules over rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from writ.evidence.lint.kinds import guess_kind
from writ.evidence.lint.rules import RULES, Rule

VERDICTS: tuple[str, ...] = ("accept", "suspicious", "reject", "contaminated")
_RANK = {v: i for i, v in enumerate(VERDICTS)}


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


def _json_type(v: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number"
    )
