"""The postmortem as one self-contained HTML page, with a hand-written SVG timeline.

No scripts, no fonts, no network: the page is a file you can attach to a ticket. The chart is
:mod:`writ.evidence.postmortem.chart` (drawn twice, wide and narrow, one shown by CSS media query);
everything shown is escaped (HTML, and control characters written as escapes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape as _html_escape
from typing import Any

from writ.core.textsafe import printable
from writ.evidence.postmortem.chart import timeline_svg
from writ.evidence.postmortem.markdown import (
    CHANGE_COLUMNS,
    CONSENT_COLUMNS,
    FREEZE_COLUMNS,
    HOLDER_COLUMNS,
    LINT_CLEAN,
    LINT_COLUMNS,
    NO_CHANGES,
    NO_CONSENTS,
    NO_HOLDERS,
    NO_LINT,
    NO_REFUSALS,
    NO_REVOCATIONS,
    NO_ROLLBACKS,
    NO_STUCK,
    REFUSAL_COLUMNS,
    REVOCATION_COLUMNS,
    ROLLBACK_COLUMNS,
    STUCK_COLUMNS,
    TIMELINE_COLUMNS,
    WAIT_COLUMNS,
    WAITS_INTRO,
    Clock,
    change_cells,
    freeze_cells,
    lint_cells,
    refusal_cells,
    revocation_cells,
    stuck_cells,
    timeline_cells,
    verification_text,
)
from writ.evidence.postmortem.notes import duration, when
from writ.evidence.postmortem.report import _consent_outcome

__all__ = ["timeline_svg", "to_html"]

PALETTE = (
    "#2563eb",
    "#0d9488",
    "#9333ea",
    "#c2410c",
    "#0369a1",
    "#4d7c0f",
    "#be185d",
    "#475569",
    "#a16207",
    "#4338ca",
)
RED, NAVY, AMBER, VIOLET, INK, ORANGE, GREY = (
    "#dc2626",
    "#1e3a8a",
    "#b45309",
    "#7c3aed",
    "#111827",
    "#ea580c",
    "#6b7280",
)
W, LEFT, RIGHT, TOP, LANE, AXIS = 1120, 190, 36, 54, 74, 46
MAX_LANES = 24
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def escape(text: str, quote: bool = True) -> str:
    """HTML-escape ``text`` after writing its control and bidi characters as visible escapes."""
    return _html_escape(printable(text), quote)


# ----------------------------------------------------------------------------- the page
CSS = """
:root{--ink:#111827;--muted:#6b7280;--line:#e5e7eb;--soft:#f9fafb;--accent:#1e3a8a}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:var(--ink);
 font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#0f172a;color:#f8fafc;padding:28px 40px 24px}
header .kicker{font-size:11.5px;letter-spacing:.12em;text-transform:uppercase;color:#fbbf24;
 font-weight:700}
header h1{margin:6px 0 8px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header .meta{color:#cbd5e1;font-size:13px}
header code{color:#e2e8f0}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;
 margin:0 0 18px}
h2{font-size:16.5px;margin:0 0 12px;color:var(--accent);letter-spacing:-.005em}
h2 .n{color:var(--muted);font-weight:500;font-size:13px;margin-left:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(96px,1fr));gap:10px;
 background:none;border:0;padding:0}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .v{font-size:18px;font-weight:700;line-height:1.25;white-space:nowrap}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.card.bad .v{color:#b91c1c}.card.good .v{color:#047857}
ul.summary{margin:0;padding-left:20px}ul.summary li{margin:3px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-weight:600;color:#374151;background:var(--soft);
 border-bottom:1px solid var(--line);padding:6px 8px;white-space:nowrap}
td{border-bottom:1px solid #f1f5f9;padding:6px 8px;vertical-align:top}
tr:last-child td{border-bottom:0}
td.t,td.s{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;
 white-space:nowrap;color:#374151}
td.s{color:var(--muted)}
td.n{white-space:nowrap}
.badge{display:inline-block;border-radius:999px;padding:1px 8px;font-size:11.5px;font-weight:600;
 white-space:nowrap}
.b-red{background:#fee2e2;color:#991b1b}.b-amber{background:#fef3c7;color:#92400e}
.b-green{background:#d1fae5;color:#065f46}.b-grey{background:#f3f4f6;color:#374151}
.b-blue{background:#dbeafe;color:#1e40af}.b-violet{background:#ede9fe;color:#5b21b6}
.empty{color:var(--muted);font-style:italic;margin:0}
.note{color:var(--muted);font-size:12.5px;margin:10px 0 0}
figure{margin:0}
.chart-narrow{display:none}
@media (max-width:640px){.chart-wide{display:none}.chart-narrow{display:block}
 main{padding:12px 6px 32px}section{padding:12px 10px}header{padding:20px 14px 16px}}
.todo li{color:#374151}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 30px}
h1,.meta,p,li,td{overflow-wrap:anywhere}
"""

_BADGE = {
    "consent_required": "b-amber",
    "held": "b-red",
    "frozen": "b-blue",
    "lock_delay": "b-grey",
    "queue": "b-grey",
    "gate": "b-red",
    "refused": "b-red",
    "granted": "b-green",
    "used": "b-green",
    "denied": "b-red",
    "expired": "b-amber",
    "pending": "b-grey",
    "approved": "b-green",
    "executed": "b-green",
    "failed": "b-red",
    "released": "b-green",
    "revoked": "b-red",
    "held_now": "b-blue",
    "contaminated": "b-red",
    "reject": "b-red",
    "suspicious": "b-amber",
    "waiting": "b-grey",
    "ok": "b-green",
    "broken": "b-red",
}


def _badge(label: str, key: str | None = None) -> str:
    return f'<span class="badge {_BADGE.get(key or label, "b-grey")}">{escape(label)}</span>'


def _tag(word: str) -> _Raw:
    """A status word in a table cell, drawn as its badge."""
    return _Raw(_badge(word))


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: Sequence[str] = ()) -> str:
    o = [
        "<table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    ]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            c = cls[i] if i < len(cls) else ""
            cells.append(f'<td class="{c}">' if c else "<td>")
            cells.append(v if isinstance(v, _Raw) else escape("-" if v in (None, "") else str(v)))
            cells.append("</td>")
        o.append("<tr>" + "".join(cells) + "</tr>")
    o.append("</tbody></table>")
    return "".join(o)


class _Raw(str):
    """Markup already escaped."""


def _section(title: str, body: str, n: int | None = None) -> str:
    count = f'<span class="n">{n}</span>' if n is not None else ""
    return f"<section><h2>{escape(title)}{count}</h2>{body}</section>"


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def to_html(rep: dict[str, Any]) -> str:
    """The report as a standalone HTML document."""
    d = bool(rep["window"]["multi_day"])

    def t(ts: str | None) -> str:
        return when(ts, d)

    o = _html_head(rep, t) + _html_decisions(rep, t) + _html_tail(rep, t)
    return "\n".join(o) + "\n"


def _html_head(rep: dict[str, Any], t: Clock) -> list[str]:
    """The document head, the cards, the summary and the impact window."""
    w, src = rep["window"], rep["source"]
    d = bool(w["multi_day"])
    v = rep["verification"] or {}
    lint = rep["lint"]
    flagged = len(lint.get("rows") or [])
    v = rep["verification"] or {}
    lint = rep["lint"]
    flagged = len(lint.get("rows") or [])
    cards = [
        ("window", duration(w["seconds"]), ""),
        ("holders", str(len(rep["holders"])), ""),
        ("changes", str(len(rep["changes"])), ""),
        ("refused", str(len(rep["refusals"])), "bad" if rep["refusals"] else ""),
        ("waited", str(len(rep["waits"])), ""),
        ("consents", str(len(rep["consents"])), ""),
        ("rollbacks", str(len(rep["rollbacks"])), ""),
        ("revoked", str(len(rep["revocations"])), "bad" if rep["revocations"] else ""),
        ("lint flags", str(flagged), "bad" if flagged else "good"),
        (
            "hashes",
            "ok" if v.get("ok") else ("none" if not v.get("rows") else "BROKEN"),
            "good" if v.get("ok") else "bad",
        ),
    ]
    o: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(rep['title'])}</title><style>{CSS}</style></head><body>",
        "<header>",
        '<div class="kicker">Incident postmortem · draft written from the audit ledger</div>',
        f"<h1>{escape(rep['title'])}</h1>",
        f'<div class="meta">{escape(t(w["from"]))} – {escape(t(w["to"]))} UTC'
        f"{'' if d else ' · ' + escape((w['from'] or '')[:10])} · rows "
        f"{src['first_seq']}–{src['last_seq']} of <code>{escape(str(src['ledger']))}</code> · "
        "every fact cites its row as [seq]</div>",
        "</header><main>",
        '<section class="cards">'
        + "".join(
            f'<div class="card {c}"><div class="v">{escape(val)}</div>'
            f'<div class="k">{escape(k)}</div></div>'
            for k, val, c in cards
        )
        + "</section>",
    ]
    if src["truncated"]:
        o.append(
            _section(
                "Truncated",
                _empty(
                    f"Only the first {src['rows']} rows were read; narrow the window or the resources."
                ),
            )
        )
    o.append(
        _section(
            "Summary",
            '<ul class="summary">'
            + "".join(f"<li>{escape(s)}</li>" for s in rep["summary"])
            + "</ul>",
        )
    )
    o.append(
        _section(
            "Who held write authority when — timeline",
            f'<figure class="chart">{timeline_svg(rep)}{timeline_svg(rep, "narrow")}</figure>',
        )
    )
    imp = rep["impact"]
    items = [
        f"<li>Window {escape(t(w['from']))} – {escape(t(w['to']))} "
        f"({escape(duration(w['seconds']))}); rows from {escape(t(w['first_row']))} to "
        f"{escape(t(w['last_row']))}.</li>"
    ]
    items += [
        f"<li>{escape(k.replace('_', ' ').capitalize())}: {escape(t(m['at']))} [{m['seq']}]</li>"
        for k, m in imp["moments"].items()
    ]
    items += [
        f"<li>Write authority on <code>{escape(r)}</code> held for "
        f"{escape(duration(s))} of the window.</li>"
        for r, s in imp["held_seconds"].items()
    ]
    items.append(
        "<li>Customer impact, detection and root cause: <em>not in the ledger — to be "
        "written by the responders.</em></li>"
    )
    o.append(_section("Impact window", "<ul class='summary'>" + "".join(items) + "</ul>"))
    return o


def _html_decisions(rep: dict[str, Any], t: Clock) -> list[str]:
    """Holders, changes, refusals and waits, consents and rollbacks."""
    o: list[str] = []
    if rep["holders"]:
        body = _table(
            HOLDER_COLUMNS,
            [
                (
                    h["resource"],
                    _Raw(f"<b>{escape(str(h['holder']))}</b>"),
                    h["lock_key"],
                    t(h["from"]) + (" (before window)" if h["before_window"] else ""),
                    t(h["to"]) if h["to"] else "still held",
                    duration(h.get("seconds")),
                    _Raw(
                        _badge(h["ended"], "held_now" if h["ended"] == "held" else None)
                        + (f" [{h['end_seq']}]" if h["end_seq"] else "")
                    ),
                    h["intent"],
                )
                for h in rep["holders"]
            ],
            ["", "", "s", "t", "t", "t"],
        )
    else:
        body = _empty(NO_HOLDERS)
    o.append(_section("Who held write authority when", body, len(rep["holders"])))

    body = (
        _table(CHANGE_COLUMNS, change_cells(rep, t), ["t", "s", "n", "n"])
        if rep["changes"]
        else _empty(NO_CHANGES)
    )
    o.append(_section("Changes made", body, len(rep["changes"])))

    if rep["refusals"]:
        body = _table(REFUSAL_COLUMNS, refusal_cells(rep, t, _tag), ["t", "s", "n", "n", "", "n"])
    else:
        body = _empty(NO_REFUSALS)
    if rep["waits"]:
        body += f"<p class='note'>{WAITS_INTRO}</p>" + _table(
            WAIT_COLUMNS,
            [
                (
                    t(q["at"]),
                    q["seq"],
                    q["agent"],
                    q["resource"],
                    q["position"],
                    q["holder"],
                    _Raw(
                        _badge(q["outcome"])
                        + (f" {escape(t(q['until']))} [{q['end_seq']}]" if q["until"] else "")
                    ),
                    duration(q.get("seconds")),
                )
                for q in rep["waits"]
            ],
            ["t", "s", "n", "n", "", "n"],
        )
    o.append(_section("What writ refused, and why", body, len(rep["refusals"])))

    if rep["consents"]:
        body = _table(
            CONSENT_COLUMNS,
            [
                (
                    t(c["at"]),
                    c["seq"],
                    c["requester"],
                    c["author"],
                    f"{c['attribute']} ({c['change']})",
                    c["reason"],
                    _Raw(_badge(c["status"]) + " " + escape(_consent_outcome(c))),
                    duration(c.get("seconds")),
                )
                for c in rep["consents"]
            ],
            ["t", "s", "n", "n"],
        )
        body += (
            "<p class='note'>An unanswered request <em>expires</em>: it is never recorded "
            "as a denial, and it escalates to the override queue, which may still answer.</p>"
        )
    else:
        body = _empty(NO_CONSENTS)
    o.append(_section("Consents and their answers", body, len(rep["consents"])))

    if rep["rollbacks"]:
        body = _table(
            ROLLBACK_COLUMNS,
            [
                (
                    t(r["at"]),
                    r["seq"],
                    r["requested_by"],
                    r["lock_key"],
                    r["key_holder"],
                    r["path"],
                    r["reason"],
                    _Raw(
                        _badge(r["status"])
                        + (
                            f" by {escape(str(r['decided_by']))} at {escape(t(r['decided_at']))}"
                            f" [{r['decision_seq']}]"
                            if r["decided_by"]
                            else ""
                        )
                    ),
                    (r["result"] or "-")
                    + (" — marked a defect by " + r["defect"]["by"] if r.get("defect") else ""),
                )
                for r in rep["rollbacks"]
            ],
            ["t", "s", "n", "s", "n"],
        )
    else:
        body = _empty(NO_ROLLBACKS)
    o.append(_section("Rollbacks and who approved them", body, len(rep["rollbacks"])))
    return o


def _html_tail(rep: dict[str, Any], t: Clock) -> list[str]:
    """Stuck locks, revocations, freezes, lint, verification, timeline and the footer."""
    v = rep["verification"] or {}
    lint = rep["lint"]
    flagged = len(lint.get("rows") or [])
    o: list[str] = []
    body = (
        _table(STUCK_COLUMNS, stuck_cells(rep, t), ["t", "s", "n", "n", "n"])
        if rep["stuck"]
        else _empty(NO_STUCK)
    )
    o.append(_section("Stuck locks, wakes and pages", body, len(rep["stuck"])))

    body = (
        _table(REVOCATION_COLUMNS, revocation_cells(rep, t), ["t", "s", "n", "n", "s", "n"])
        if rep["revocations"]
        else _empty(NO_REVOCATIONS)
    )
    o.append(_section("Revocations, with provenance", body, len(rep["revocations"])))

    if rep["freezes"]:
        body = _table(FREEZE_COLUMNS, freeze_cells(rep, t), ["t", "s"])
        o.append(_section("Freezes", body, len(rep["freezes"])))

    if not lint.get("available"):
        body = _empty(NO_LINT)
    else:
        verdicts = ", ".join(f"{n} {k}" for k, n in sorted(lint["verdicts"].items()))
        body = (
            f"<p>{lint['checked']} rows judged by <code>writ lint</code> ({escape(verdicts)}"
            + (f", {lint['warnings']} warning(s)" if lint["warnings"] else "")
            + "); "
            + (
                "principal kinds from the server's registry."
                if lint["registry"]
                else "principal kinds guessed from names (no registry)."
            )
            + "</p>"
        )
        if lint["rows"]:
            body += _table(LINT_COLUMNS, lint_cells(rep, t, _tag), ["s", "t"])
        else:
            body += _empty(LINT_CLEAN)
    o.append(_section("Contaminated or suspicious rows (lint)", body, flagged))

    status = _badge("verified", "ok") if v.get("ok") else _badge("problems", "broken")
    items = verification_items(v)
    o.append(_section("Chain verification", f"<p>{status}</p><ul class='summary'>{items}</ul>"))

    body = _table(TIMELINE_COLUMNS, timeline_cells(rep, t), ["t", "s", "n", "n", "n", "n"])
    if rep["timeline_quiet"]:
        body += (
            "<p class='note'>Not listed: "
            + escape(", ".join(f"{n} {e}" for e, n in rep["timeline_quiet"].items()))
            + " rows.</p>"
        )
    o.append(_section("Timeline", body, len(rep["timeline"])))
    o.append(
        _section(
            "For the responders to write",
            "<ul class='todo summary'>"
            "<li>Detection: how and when did people learn of it?</li>"
            "<li>Customer impact and its duration.</li>"
            "<li>Root cause and contributing factors (the rows say <em>who</em> and "
            "<em>when</em>, not <em>why</em>).</li>"
            "<li>Action items, each with an owner.</li></ul>",
        )
    )
    o.append(
        "</main><footer>Drafted by writ postmortem from the hash-chained audit ledger. "
        "Self-contained: no scripts, no network.</footer></body></html>"
    )
    return o


# what verification_text quotes (rows' text) keeps its * and ` out of the markdown rendered
_INERT = str.maketrans({"*": "\ue000", "`": "\ue001"})
_BACK = str.maketrans({"\ue000": "*", "\ue001": "`"})


def verification_items(v: dict[str, Any]) -> str:
    """The verification section's ``<li>`` items: writ's own ``**`` and backticks rendered,
    the text its reasons quote (an intent, a column edited by hand) shown as it is."""
    lines = verification_text(v, lambda x: printable(x).translate(_INERT))
    return "".join(f"<li>{_md_inline(x[2:]).translate(_BACK)}</li>" for x in lines)


def _md_inline(s: str) -> str:
    """Escape, then render the two markdown forms verification_text uses."""
    e = escape(s)
    e = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", e)
