"""The instant postmortem: an incident report drafted from the audit ledger alone.

``writ postmortem`` selects the rows of one or more resource prefixes within a time window
(``--since``/``--until``, or ``--around T --window 30m``), through indexed queries — resource
prefix and time range, never a scan of the whole ledger — and turns them into the sections of
a postmortem template:

summary · impact window · timeline · who held write authority when · changes made · what writ
refused and why (and who it made wait) · consents and their answers · rollbacks and who
approved them · stuck-lock wakes and pages · revocations with provenance · freezes ·
contaminated or suspicious rows (by :mod:`writ.evidence.lint`) · chain verification of the rows used.

Sources: :class:`StoreSource` opens a store directly (offline, ``--store``);
:class:`HttpSource` pages ``GET /v1/audit`` of a running server (``--url``/``--token``).
:func:`collect` gathers a report (a plain dict, the ``--format json`` output) and
:func:`to_markdown` and :func:`to_html` render it.

Every fact in the report is a row of the ledger; each is cited by its ``seq``. What the
ledger cannot know (root cause, customer impact, follow-ups) is left as questions for people.

The package: :mod:`.query` (what a report is about), :mod:`.sources` (where it reads),
:mod:`.gather` (select and re-verify), :mod:`.report` with :mod:`.sections` and :mod:`.notes`
(the report dict), and the renderers :mod:`.markdown`, :mod:`.html` and :mod:`.chart`.
"""

from writ.evidence.postmortem.chart import GEOMETRIES as GEOMETRIES
from writ.evidence.postmortem.chart import text_width as text_width
from writ.evidence.postmortem.chart import timeline_svg as timeline_svg
from writ.evidence.postmortem.gather import collect as collect
from writ.evidence.postmortem.html import to_html as to_html
from writ.evidence.postmortem.markdown import to_json as to_json
from writ.evidence.postmortem.markdown import to_markdown as to_markdown
from writ.evidence.postmortem.notes import duration as duration
from writ.evidence.postmortem.notes import when as when
from writ.evidence.postmortem.query import Query as Query
from writ.evidence.postmortem.report import build as build
from writ.evidence.postmortem.sources import HttpSource as HttpSource
from writ.evidence.postmortem.sources import StoreSource as StoreSource

__all__ = [
    "GEOMETRIES",
    "HttpSource",
    "Query",
    "StoreSource",
    "build",
    "collect",
    "duration",
    "text_width",
    "timeline_svg",
    "to_html",
    "to_json",
    "to_markdown",
    "when",
]
