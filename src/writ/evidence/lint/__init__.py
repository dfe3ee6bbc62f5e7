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
extended to the end of its line (by at most 1 MiB: a longer line comes in pieces), decoded value
after value with ``json.JSONDecoder.raw_decode``. No read asks for more than 64 MiB; a value
over that is an :class:`Unreadable` row and the rest of its line is dropped unread.
That one reader takes JSONL (blank lines skipped), JSON objects one after another (pretty-printed
rows may span lines, as people paste them) and JSON arrays: a top-level ``[`` is walked element
by element, never parsed whole. ``{"rows": [...]}`` (writ's ``GET /v1/audit``) gives one row per
element (that object is parsed whole, up to 64 MiB). A malformed value becomes an
:class:`Unreadable` row naming its line, and reading goes on at the next line (for a value that
spanned lines, at the next line beginning with ``{`` or ``[``). An object that gives a key
twice is read as a :class:`~writ.evidence.lint.rules.Duplicated` dict, so the
``duplicate-field`` rule can say so (a plain dict keeps only the last value).

The package: :mod:`.kinds` (principal kinds), :mod:`.rules` (the RULES table and its checks),
:mod:`.linter` (verdicts, findings, the Linter) and :mod:`.rows` (reading rows).
"""

from writ.evidence.lint.kinds import guess_kind as guess_kind
from writ.evidence.lint.kinds import load_principals as load_principals
from writ.evidence.lint.kinds import parse_principals as parse_principals
from writ.evidence.lint.linter import VERDICTS as VERDICTS
from writ.evidence.lint.linter import Finding as Finding
from writ.evidence.lint.linter import Linter as Linter
from writ.evidence.lint.linter import Result as Result
from writ.evidence.lint.linter import Unreadable as Unreadable
from writ.evidence.lint.linter import check_row as check_row
from writ.evidence.lint.linter import worst as worst
from writ.evidence.lint.rows import iter_rows as iter_rows
from writ.evidence.lint.rules import RULES as RULES
from writ.evidence.lint.rules import Rule as Rule
from writ.evidence.lint.rules import provenance_parts as provenance_parts

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
