"""The postmortem as one self-contained HTML page, with a hand-written SVG timeline.

No scripts, no fonts, no network: the page is a file you can attach to a ticket. The chart
has one lane per resource; a bar for each holder of write authority, labelled with the
holder's name; marks for refusals, changes, consents, rollbacks, revocations and stuck-lock
steps; a dashed line for each request that waited in the queue; a legend and a time axis.
Every mark carries a tooltip (``<title>``) with its row's seq, time and notes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape as _html_escape
from typing import Any

from .clock import parse_time, rfc3339
from .postmortem import (
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
    _consent_outcome,
    change_cells,
    duration,
    freeze_cells,
    lint_cells,
    refusal_cells,
    revocation_cells,
    stuck_cells,
    timeline_cells,
    verification_text,
    when,
)
from .resources import under
from .textsafe import printable

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


def _x(ts: str | None, t0: float, t1: float) -> float:
    t = parse_time(ts) if ts else t1
    return LEFT + (min(max(t, t0), t1) - t0) / (t1 - t0) * (W - LEFT - RIGHT)


def _tip(*parts: Any) -> str:
    return "<title>" + escape(" · ".join(str(p) for p in parts if p not in (None, ""))) + "</title>"


def _text_w(s: str, size: float = 11.0, factor: float = 0.62) -> float:
    return len(s) * size * factor + 10


def timeline_svg(rep: dict[str, Any]) -> str:
    """The SVG chart of a report (a string starting with ``<svg``)."""
    w = rep["window"]
    if not w.get("from") or not w.get("to"):
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 40" role="img">'
            '<text x="10" y="24" font-size="13">No rows in the window.</text></svg>'
        )
    t0, t1 = parse_time(w["from"]), parse_time(w["to"])
    if t1 - t0 < 1:
        t1 = t0 + 1
    pad = (t1 - t0) * 0.015
    t0, t1 = t0 - pad, t1 + pad
    lanes: list[str] = list(rep["lanes"])[:MAX_LANES]
    hidden = len(rep["lanes"]) - len(lanes)
    index = {r: i for i, r in enumerate(lanes)}
    colors: dict[str, str] = {}
    for h in rep["holders"]:
        colors.setdefault(str(h["holder"]), PALETTE[len(colors) % len(PALETTE)])
    height = TOP + LANE * max(len(lanes), 1) + AXIS + (18 if hidden else 0)
    o: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="100%" '
        f'role="img" aria-label="Timeline of write authority" font-family="inherit">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f4f6"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#d1d5db" stroke-width="3"/></pattern></defs>',
    ]
    # legend (wraps onto a second line when it must)
    items = [
        ("bar", "holder"),
        ("wait", "waited in queue"),
        ("x", "refused"),
        ("diamond", "change recorded"),
        ("circle", "consent asked / answered"),
        ("tri", "rollback asked / decided"),
        ("square", "revoked"),
        ("flag", "stuck, wake or page"),
        ("band", "frozen"),
    ]
    lx, ly = 20.0, 20.0
    for kind, label in items:
        wdt = 18 + _text_w(label, 11.5, 0.5) + 10
        if lx + wdt > W - RIGHT:
            lx, ly = 20.0, ly + 18
        o.append(_mark(kind, lx + 7, ly, GREY if kind == "wait" else _color(kind), legend=True))
        o.append(
            f'<text x="{lx + 18:.1f}" y="{ly + 4:.1f}" font-size="11.5" fill="#374151">'
            f"{escape(label)}</text>"
        )
        lx += wdt
    # time grid and axis
    top, bottom = TOP, TOP + LANE * max(len(lanes), 1)
    span = t1 - t0
    step = next((s for s in _STEPS if span / s <= 10), _STEPS[-1])
    first = (int(t0) // step + 1) * step
    o.append(
        f'<rect x="{LEFT}" y="{top}" width="{W - LEFT - RIGHT}" height="{bottom - top}" '
        'fill="#fbfbfc" stroke="#e5e7eb"/>'
    )
    tick = first
    multi = bool(w.get("multi_day"))
    while tick < t1:
        x = LEFT + (tick - t0) / span * (W - LEFT - RIGHT)
        o.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#e5e7eb"/>')
        label = when(rfc3339(tick), multi)
        label = label if step < 60 else label[:-3]
        o.append(
            f'<text x="{x:.1f}" y="{bottom + 19}" font-size="11" fill="#4b5563" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
        tick += step
    o.append(
        f'<text x="{W - RIGHT}" y="{bottom + 37}" font-size="11" fill="#6b7280" '
        f'text-anchor="end">UTC{"" if multi else " · " + w["from"][:10]}</text>'
    )
    # lanes
    for i, res in enumerate(lanes):
        y = top + i * LANE
        if i:
            o.append(f'<line x1="12" y1="{y}" x2="{W - RIGHT}" y2="{y}" stroke="#e5e7eb"/>')
        o.append(
            f'<text x="{LEFT - 12}" y="{y + LANE / 2 + 4}" font-size="12.5" '
            f'font-family="ui-monospace,SFMono-Regular,Menlo,Consolas,monospace" '
            f'fill="#111827" text-anchor="end">{escape(_short(res, 24))}</text>'
        )
    # freezes: a hatched band over every lane under the frozen prefix
    for prefix, x_from, x_to, by in _freeze_spans(rep["freezes"]):
        x1, x2 = _x(x_from, t0, t1), _x(x_to, t0, t1)
        hit = sorted(i for r, i in index.items() if under(r, prefix))
        for n, i in enumerate(hit):
            o.append(
                f"<g>{_tip(f'{prefix} frozen by {by}', when(x_from), when(x_to))}"
                f'<rect x="{x1:.1f}" y="{top + i * LANE + 2}" width="{max(x2 - x1, 3):.1f}" '
                f'height="{LANE - 4}" fill="url(#hatch)" opacity="0.8"/>'
                + (
                    _label(f"frozen by {by}", x1 + 4, top + i * LANE + 13, "#1e40af")
                    if n == 0
                    else ""
                )
                + "</g>"
            )
    # waits: dashed line in the lower part of the lane
    for q in rep["waits"]:
        lane = index.get(q["resource"])
        if lane is None:
            continue
        y = top + lane * LANE + LANE - 11
        x1, x2 = _x(q["at"], t0, t1), _x(q["until"], t0, t1)
        tip = _tip(
            f"seq {q['seq']}",
            when(q["at"]),
            f"{q['agent']} queued behind {q['holder']}",
            f"{q['outcome']} at {when(q['until'])}" if q["until"] else "still waiting",
        )
        o.append(
            f'<g>{tip}<line x1="{x1:.1f}" y1="{y}" x2="{max(x2, x1 + 2):.1f}" y2="{y}" '
            f'stroke="{GREY}" stroke-width="2" stroke-dasharray="5 3"/>'
            f'<circle cx="{x1:.1f}" cy="{y}" r="3" fill="{GREY}"/>'
            f'<text x="{x1 + 6:.1f}" y="{y - 4}" font-size="10.5" fill="#4b5563">'
            f"{escape(str(q['agent']))} waits</text></g>"
        )
    # holder bars
    by_lane: dict[int, list[dict[str, Any]]] = {}
    for h in rep["holders"]:
        lane = index.get(h["resource"])
        if lane is not None:
            by_lane.setdefault(lane, []).append(h)
    for i, bars in by_lane.items():
        y = top + i * LANE + 30
        bars = sorted(bars, key=lambda h: _x(h["from"], t0, t1))
        for n, h in enumerate(bars):
            x1, x2 = _x(h["from"], t0, t1), _x(h["to"], t0, t1)
            wdt = max(x2 - x1, 2.5)
            c = colors.get(str(h["holder"]), GREY)
            tip = _tip(
                f"{h['holder']} holds {h['resource']}",
                f"token {h['fencing_token']}",
                f"{when(h['from'])}–{when(h['to']) if h['to'] else 'still held'}",
                h["ended"],
                h.get("intent"),
            )
            o.append(
                f'<g>{tip}<rect x="{x1:.1f}" y="{y}" width="{wdt:.1f}" height="22" rx="4" '
                f'fill="{c}" fill-opacity="0.9"/>'
            )
            if not h["to"]:
                o.append(
                    f'<path d="M{x1 + wdt:.1f},{y} l7,11 l-7,11 z" fill="{c}" fill-opacity="0.9"/>'
                )
            name = str(h["holder"])
            nxt = _x(bars[n + 1]["from"], t0, t1) if n + 1 < len(bars) else W - RIGHT
            long = f"{name} · token {h['fencing_token']}" if h["fencing_token"] else name
            if _text_w(long) + 8 <= wdt:
                name = long
            if _text_w(name) + 8 <= wdt:
                o.append(
                    f'<text x="{x1 + 11:.1f}" y="{y + 15}" font-size="11" font-weight="600" '
                    f'fill="#fff">{escape(name)}</text>'
                )
            elif x2 + _text_w(name) + 4 <= nxt:
                o.append(
                    f'<text x="{x2 + 5:.1f}" y="{y + 15}" font-size="11" font-weight="600" '
                    f'fill="{c}">{escape(name)}</text>'
                )
            o.append("</g>")
    # marks in the strip above the bars (stacked when they would touch)
    placed: dict[int, list[tuple[float, int]]] = {}

    def put(res: str | None, at: str | None, kind: str, tip: str, on_bar: bool = False) -> None:
        i = index.get(str(res))
        if i is None or not at:
            return
        x = _x(at, t0, t1)
        if on_bar:
            o.append(f"<g>{tip}{_mark(kind, x, top + i * LANE + 41, _color(kind))}</g>")
            return
        level = 0
        taken = placed.setdefault(i, [])
        while any(abs(px - x) < 11 and pl == level for px, pl in taken) and level < 2:
            level += 1
        taken.append((x, level))
        o.append(f"<g>{tip}{_mark(kind, x, top + i * LANE + 22 - level * 9, _color(kind))}</g>")

    for c in rep["changes"]:
        put(
            c["resource"],
            c["at"],
            "diamond",
            _tip(f"seq {c['seq']}", when(c["at"]), f"{c['agent']} changed {c['summary']}"),
            on_bar=True,
        )
    for r in rep["refusals"]:
        put(
            r["resource"],
            r["at"],
            "x",
            _tip(
                f"seq {r['seq']}",
                when(r["at"]),
                f"refused {r['agent']}: {r['kind']}",
                r["reason"][:200],
            ),
        )
    for c in rep["consents"]:
        put(
            c["resource"],
            c["at"],
            "circle-open",
            _tip(
                f"seq {c['seq']}",
                when(c["at"]),
                f"{c['requester']} asks {c['author']}",
                c["reason"],
            ),
        )
        if c.get("expired_at"):
            put(
                c["resource"],
                c["expired_at"],
                "circle-open",
                _tip(
                    when(c["expired_at"]),
                    "consent expired unanswered (not denied)",
                    f"escalated to {c['escalated_to']}",
                ),
            )
        if c.get("answered_at"):
            put(
                c["resource"],
                c["answered_at"],
                "circle",
                _tip(
                    f"seq {c.get('answer_seq')}",
                    when(c["answered_at"]),
                    f"consent {c['status']} by {c['answered_by']}",
                ),
            )
    for r in rep["rollbacks"]:
        put(
            r["resource"],
            r["at"],
            "tri",
            _tip(
                f"seq {r['seq']}",
                when(r["at"]),
                f"rollback asked by {r['requested_by']}",
                r["reason"],
            ),
        )
        if r.get("decided_at"):
            put(
                r["resource"],
                r["decided_at"],
                "tri",
                _tip(when(r["decided_at"]), f"rollback {r['status']} by {r['decided_by']}"),
            )
    for r in rep["revocations"]:
        p = r.get("provenance") or {}
        put(
            r["resource"],
            r["at"],
            "square",
            _tip(
                f"seq {r['seq']}",
                when(r["at"]),
                f"{p.get('revoked_by')} revoked {r['holder']}'s lease",
                f"runbook {p.get('via_runbook')}",
                f"after paging {p.get('after_paging')}",
            ),
        )
    for s in rep["stuck"]:
        put(
            s["resource"],
            s["at"],
            "flag",
            _tip(f"seq {s['seq']}", when(s["at"]), s["event"], s["notes"]),
        )
    if not lanes:
        o.append(
            f'<text x="{LEFT + 12}" y="{top + 40}" font-size="13" fill="#6b7280">'
            "Nobody held write authority in the window.</text>"
        )
    if hidden:
        o.append(
            f'<text x="{LEFT}" y="{height - 6}" font-size="11" fill="#6b7280">'
            f"{hidden} more resource lane(s) not drawn; see the tables.</text>"
        )
    o.append("</svg>")
    return "\n".join(o)


def _color(kind: str) -> str:
    return {
        "x": RED,
        "diamond": NAVY,
        "circle": AMBER,
        "circle-open": AMBER,
        "tri": VIOLET,
        "square": INK,
        "flag": ORANGE,
    }.get(kind, GREY)


def _mark(kind: str, x: float, y: float, c: str, legend: bool = False) -> str:
    if kind == "bar":
        return (
            f'<rect x="{x - 7:.1f}" y="{y - 6:.1f}" width="14" height="12" rx="3" '
            f'fill="{PALETTE[0]}"/>'
        )
    if kind == "band":
        return (
            f'<rect x="{x - 7:.1f}" y="{y - 6:.1f}" width="14" height="12" '
            'fill="url(#hatch)" stroke="#d1d5db"/>'
        )
    if kind == "wait":
        return (
            f'<line x1="{x - 8:.1f}" y1="{y:.1f}" x2="{x + 8:.1f}" y2="{y:.1f}" stroke="{c}" '
            'stroke-width="2" stroke-dasharray="4 2"/>'
        )
    if kind == "x":
        return (
            f'<path d="M{x - 5:.1f},{y - 5:.1f} L{x + 5:.1f},{y + 5:.1f} '
            f'M{x + 5:.1f},{y - 5:.1f} L{x - 5:.1f},{y + 5:.1f}" stroke="{c}" '
            'stroke-width="2.6" stroke-linecap="round"/>'
        )
    if kind == "diamond":
        return (
            f'<path d="M{x:.1f},{y - 7:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
            f'L{x - 6:.1f},{y:.1f} z" fill="{c}" stroke="#fff" stroke-width="1.5"/>'
        )
    if kind == "circle":
        if legend:
            return (
                f'<circle cx="{x - 3:.1f}" cy="{y:.1f}" r="4.5" fill="none" stroke="{c}" '
                f'stroke-width="2"/><circle cx="{x + 6:.1f}" cy="{y:.1f}" r="4.5" fill="{c}"/>'
            )
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{c}"/>'
    if kind == "circle-open":
        return (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="#fff" stroke="{c}" stroke-width="2"/>'
        )
    if kind == "tri":
        return (
            f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y + 5:.1f} '
            f'L{x - 6:.1f},{y + 5:.1f} z" fill="{c}"/>'
        )
    if kind == "square":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{c}"/>'
    if kind == "flag":
        return (
            f'<path d="M{x - 3:.1f},{y + 7:.1f} L{x - 3:.1f},{y - 7:.1f} '
            f'L{x + 6:.1f},{y - 3.5:.1f} L{x - 3:.1f},{y:.1f}" fill="{c}" stroke="{c}" '
            'stroke-width="1.6" stroke-linejoin="round"/>'
        )
    return ""


def _label(text: str, x: float, y: float, color: str, size: float = 10.5) -> str:
    """A text label that stays inside the plot (anchored at its end near the right edge)."""
    if x + _text_w(text, size, 0.55) > W - RIGHT:
        return (
            f'<text x="{W - RIGHT - 4}" y="{y}" font-size="{size}" fill="{color}" '
            f'text-anchor="end">{escape(text)}</text>'
        )
    return f'<text x="{x:.1f}" y="{y}" font-size="{size}" fill="{color}">{escape(text)}</text>'


def _freeze_spans(freezes: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str]]:
    """``(prefix, from, to or None, by)`` of each freeze in the window."""
    out: list[tuple[str, str, str | None, str]] = []
    open_: dict[str, tuple[str, str]] = {}
    for f in freezes:
        prefix = str(f["resource"])
        if f["event"] == "freeze.created":
            open_[prefix] = (f["at"], str(f["agent"]))
        elif prefix in open_:
            start, by = open_.pop(prefix)
            out.append((prefix, start, f["at"], by))
    out += [(p, start, None, by) for p, (start, by) in open_.items()]
    return out


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else "…" + s[-(n - 1) :]


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
.todo li{color:#374151}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 30px}
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
    w, src = rep["window"], rep["source"]
    d = bool(w["multi_day"])

    def t(ts: str | None) -> str:
        return when(ts, d)

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
            "Who held write authority when — timeline", f"<figure>{timeline_svg(rep)}</figure>"
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

    lines = verification_text(v)
    status = _badge("verified", "ok") if v.get("ok") else _badge("problems", "broken")
    o.append(
        _section(
            "Chain verification",
            f"<p>{status}</p><ul class='summary'>"
            + "".join(f"<li>{_md_inline(x[2:])}</li>" for x in lines)
            + "</ul>",
        )
    )

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
    return "\n".join(o) + "\n"


def _md_inline(s: str) -> str:
    """Escape, then render the two markdown forms verification_text uses."""
    e = escape(s)
    e = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", e)
