"""``writ lint``'s library at its documented path (docs/lint.md): defined in
:mod:`writ.evidence.lint`."""

from writ.evidence.lint import RULES as RULES
from writ.evidence.lint import VERDICTS as VERDICTS
from writ.evidence.lint import Finding as Finding
from writ.evidence.lint import Linter as Linter
from writ.evidence.lint import Result as Result
from writ.evidence.lint import Rule as Rule
from writ.evidence.lint import Unreadable as Unreadable
from writ.evidence.lint import check_row as check_row
from writ.evidence.lint import guess_kind as guess_kind
from writ.evidence.lint import iter_rows as iter_rows
from writ.evidence.lint import load_principals as load_principals
from writ.evidence.lint import parse_principals as parse_principals
from writ.evidence.lint import provenance_parts as provenance_parts
from writ.evidence.lint import worst as worst

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
