"""The postmortem's SVG timeline: who held write authority when, and what writ refused.

One lane per resource. In each lane a bar for each holder of write authority (its name inside
the bar, or beside it in the lane's label rows when the bar is too short), a dashed line for
each request that waited in the queue, change diamonds on the bars, and above them rows of
marks, each labelled with the principal who acted: ✕ a refusal or a denial, ✓ a grant or an
approval, ○ a consent asked or expired, ▲ a rollback asked, ■ a revocation, a flag for a stuck
lock's wake or page. Marks of one kind and label that would touch are one mark with a count
(``✕ name ×N``); other marks that would touch are stacked into further rows — the lane grows —
so no label covers another, and what finds no row among a lane's first ``MAX_ROWS`` is folded
into "+N more" marks: a flood of refusals draws a chart of bounded size. Every mark has a
tooltip (``<title>``) with its row's seq and notes, or, for a counted one, the count and the
stretch it covers (the tables list each row).

The time axis fits the activity: when the rows cover less than half of the asked window, the
axis spans the rows (with a little margin) and a hatched, zig-zag band at the edge stands for
the empty stretch, its length written under it.

Two geometries: ``wide`` (1120 units, lane names in a left column) and ``narrow`` (380 units,
lane names above each lane, fewer ticks) for phone screens; the page shows one or the other by
CSS media query. All text is placed through one registry that refuses overlapping boxes
(:class:`_Texts`), and its estimate of a text's width (:func:`text_width`) is the one the tests
use to check the emitted SVG.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from writ.core.clock import parse_time, rfc3339
from writ.core.resources import under
from writ.evidence.postmortem.layout import (
    AMBER,
    BAR,
    BREAK,
    GEOMETRIES,
    GREEN,
    GREY,
    INK,
    MAX_LANES,
    NAVY,
    ORANGE,
    PALETTE,
    RED,
    VIOLET,
    Geometry,
    _Axis,
    _is_grant,
    _Item,
    _Lane,
    _Texts,
    _tip,
    text_width,
)
from writ.evidence.postmortem.notes import duration, when

__all__ = ["GEOMETRIES", "text_width", "timeline_svg"]


_Bar = tuple[_Lane, dict[str, Any], float, float, str | None]
LEGEND = (
    ("bar", "holder"),
    ("wait", "waited in queue"),
    ("deny", "refused / denied"),
    ("grant", "granted / approved"),
    ("diamond", "change recorded"),
    ("ask", "consent asked / expired"),
    ("tri", "rollback asked"),
    ("square", "revoked"),
    ("flag", "stuck, wake or page"),
    ("band", "frozen"),
)
_KINDS = {**dict(LEGEND), "": "holder or wait label"}


def _place_marks(
    rep: dict[str, Any], ax: _Axis, lanes: dict[str, _Lane], colors: dict[str, str]
) -> list[_Bar]:
    """Put the marks (with the name of who acted) in the lanes' rows, and measure the holder
    bars: a holder name that does not fit in its bar goes to the rows too."""

    def add(
        res: Any, at: str | None, kind: str | None, label: str | None, color: str, tip: str
    ) -> None:
        lane = lanes.get(str(res))
        if lane is not None and at:
            lane.items.append(_Item(ax.x(at), kind, label, color, tip, at))

    # -- what goes in the rows: marks with the name of who acted
    for r in rep["refusals"]:
        tip = _tip(
            f"seq {r['seq']}",
            when(r["at"]),
            f"refused {r['agent']}: {r['kind']}",
            r["reason"][:200],
        )
        add(r["resource"], r["at"], "deny", str(r["agent"]), RED, tip)
    for c in rep["consents"]:
        tip = _tip(
            f"seq {c['seq']}", when(c["at"]), f"{c['requester']} asks {c['author']}", c["reason"]
        )
        add(c["resource"], c["at"], "ask", f"{c['requester']} asks", AMBER, tip)
        if c.get("expired_at"):
            tip = _tip(
                when(c["expired_at"]),
                "consent expired unanswered (not denied)",
                f"escalated to {c['escalated_to']}",
            )
            add(c["resource"], c["expired_at"], "ask", f"expired → {c['escalated_to']}", AMBER, tip)
        if c.get("answered_at"):
            grant = _is_grant(c.get("status"))
            tip = _tip(
                f"seq {c.get('answer_seq')}",
                when(c["answered_at"]),
                f"consent {c['status']} by {c['answered_by']}",
            )
            add(
                c["resource"],
                c["answered_at"],
                "grant" if grant else "deny",
                str(c["answered_by"]),
                GREEN if grant else RED,
                tip,
            )
    for r in rep["rollbacks"]:
        tip = _tip(
            f"seq {r['seq']}", when(r["at"]), f"rollback asked by {r['requested_by']}", r["reason"]
        )
        add(r["resource"], r["at"], "tri", str(r["requested_by"]), VIOLET, tip)
        if r.get("decided_at"):
            grant = r.get("status") != "denied"
            tip = _tip(when(r["decided_at"]), f"rollback {r['status']} by {r['decided_by']}")
            add(
                r["resource"],
                r["decided_at"],
                "grant" if grant else "deny",
                str(r["decided_by"]),
                GREEN if grant else RED,
                tip,
            )
    for r in rep["revocations"]:
        p = r.get("provenance") or {}
        tip = _tip(
            f"seq {r['seq']}",
            when(r["at"]),
            f"{p.get('revoked_by')} revoked {r['holder']}'s lease",
            f"runbook {p.get('via_runbook')}",
            f"after paging {p.get('after_paging')}",
        )
        add(r["resource"], r["at"], "square", f"{p.get('revoked_by')} revokes", INK, tip)
    for ch in rep["changes"]:
        tip = _tip(f"seq {ch['seq']}", when(ch["at"]), f"{ch['agent']} changed {ch['summary']}")
        add(ch["resource"], ch["at"], "diamond", None, NAVY, tip)
    for s in rep["stuck"]:
        add(
            s["resource"],
            s["at"],
            "flag",
            None,
            ORANGE,
            _tip(f"seq {s['seq']}", when(s["at"]), s["event"], s["notes"]),
        )
    for q in rep["waits"]:
        lane = lanes.get(str(q["resource"]))
        if lane is not None:
            lane.waits = True
            tip = _tip(
                f"seq {q['seq']}", when(q["at"]), f"{q['agent']} queued behind {q['holder']}"
            )
            add(q["resource"], q["at"], None, f"{q['agent']} waits", GREY, tip)
    # holder names that do not fit in their bar go to the rows too
    bars: list[_Bar] = []
    for h in rep["holders"]:
        lane = lanes.get(str(h["resource"]))
        if lane is None:
            continue
        x1, x2 = ax.x(h["from"]), ax.x(h["to"])
        wdt = max(x2 - x1, 3.0)
        name = str(h["holder"])
        long = f"{name} · token {h['fencing_token']}" if h["fencing_token"] else name
        inside = (
            long if text_width(long) + 14 <= wdt else name if text_width(name) + 14 <= wdt else None
        )
        if inside is None:
            tip = _tip(f"{name} holds {h['resource']}")
            lane.items.append(_Item(x1, None, name, colors.get(name, GREY), tip, h["from"]))
        bars.append((lane, h, x1, wdt, inside))
    return bars


def _legend(ax: _Axis, g: Geometry, texts: _Texts, out: list[str]) -> float:
    """Draw the legend at the top (in as many lines as it needs); its bottom edge."""
    legend = list(LEGEND)
    if ax.before or ax.after:
        legend.append(("break", "no rows (cut)"))
    lx, ly = 10.0, 16.0
    for kind, label in legend:
        wdt = 18 + text_width(label, 11) + 12
        if lx + wdt > g.width - 4:
            lx, ly = 10.0, ly + 18
        out.append(_mark(kind, lx + 7, ly - 4, GREY if kind in ("wait", "break") else _color(kind)))
        out.append(texts.put(label, lx + 18, ly, force=True) or "")
        lx += wdt
    top = ly + 16
    return top


def _axis(
    w: dict[str, Any],
    ax: _Axis,
    texts: _Texts,
    out: list[str],
    top: float,
    bottom: float,
    plot_l: float,
    plot_r: float,
) -> None:
    """The cut-away empty stretches, the time grid and the axis labels."""
    # empty stretches cut away
    for gone, x0, anchor in ((ax.before, plot_l, "start"), (ax.after, plot_r - BREAK, "end")):
        if not gone:
            continue
        span_tip = _tip(f"no rows for {duration(gone)}: the axis is cut here")
        out.append(
            f'<g>{span_tip}<rect x="{x0:.1f}" y="{top}" width="{BREAK}" height="{bottom - top}" fill="url(#cut)"/>'
            f"{_zigzag(x0 + 6, top, bottom)}{_zigzag(x0 + BREAK - 6, top, bottom)}</g>"
        )
        out.append(
            texts.put(
                f"⋯ {duration(gone)}",
                x0 if anchor == "start" else x0 + BREAK,
                bottom + 30,
                size=10,
                fill=GREY,
                anchor=anchor,
                force=True,
            )
            or ""
        )
    # time grid and axis labels
    multi = bool(w.get("multi_day"))
    for tick in ax.ticks():
        x = ax.xt(tick)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#e5e7eb"/>'
        )
        label = when(rfc3339(tick), multi)
        label = label if ax.step < 60 else label[:-3]
        out.append(texts.put(label, x, bottom + 17, fill="#4b5563", anchor="middle") or "")
    out.append(
        texts.put(
            f"UTC{'' if multi else ' · ' + w['from'][:10]}",
            plot_r,
            bottom + 44,
            size=10,
            fill=GREY,
            anchor="end",
            force=True,
        )
        or ""
    )


def _bands(
    rep: dict[str, Any], g: Geometry, ax: _Axis, lanes: dict[str, _Lane], out: list[str]
) -> None:
    """Freezes (a hatched band over every lane under the frozen prefix) and waits (a dashed line under the bars)."""
    # freezes: a hatched band over every lane under the frozen prefix
    for prefix, f_from, f_to, by in _freeze_spans(rep["freezes"]):
        x1, x2 = ax.x(f_from), ax.x(f_to)
        for lane in lanes.values():
            if under(lane.resource, prefix):
                h = lane.height(g)
                out.append(
                    f"<g>{_tip(f'{prefix} frozen by {by}', when(f_from), when(f_to))}"
                    f'<rect x="{x1:.1f}" y="{lane.top + 2}" width="{max(x2 - x1, 3):.1f}" height="{h - 4}" '
                    'fill="url(#hatch)" opacity="0.8"/></g>'
                )
    # waits: a dashed line under the bars
    for q in rep["waits"]:
        q_lane = lanes.get(str(q["resource"]))
        if q_lane is None:
            continue
        yq = q_lane.bar_y(g) + BAR + 7
        x1, x2 = ax.x(q["at"]), ax.x(q["until"])
        tip = _tip(f"{q['agent']} queued behind {q['holder']}", q["outcome"])
        out.append(
            f"<g>{tip}"
            f'<line x1="{x1:.1f}" y1="{yq}" x2="{max(x2, x1 + 2):.1f}" y2="{yq}" stroke="{GREY}" '
            f'stroke-width="2" stroke-dasharray="5 3"/><circle cx="{x1:.1f}" cy="{yq}" r="3" fill="{GREY}"/></g>'
        )


def _lane_names(
    g: Geometry,
    lanes: dict[str, _Lane],
    texts: _Texts,
    out: list[str],
    plot_l: float,
    plot_r: float,
) -> None:
    """The lane names (beside or above their lanes) and the lines between lanes."""
    # lane names and separators
    for i, lane in enumerate(lanes.values()):
        if i:
            out.append(
                f'<line x1="4" y1="{lane.top}" x2="{plot_r}" y2="{lane.top}" stroke="#d1d5db"/>'
            )
        if g.names_above:
            out.append(
                texts.put(
                    lane.resource,
                    plot_l + 4,
                    lane.top + 14,
                    size=12,
                    fill=INK,
                    weight="600",
                    force=True,
                    mono=True,
                )
                or ""
            )
        else:
            out.append(
                texts.put(
                    lane.resource,
                    plot_l - 10,
                    lane.bar_y(g) + 15,
                    size=12,
                    fill=INK,
                    anchor="end",
                    force=True,
                    mono=True,
                )
                or ""
            )


def timeline_svg(rep: dict[str, Any], geometry: str = "wide") -> str:
    """The SVG chart of a report (a string starting with ``<svg``)."""
    g = GEOMETRIES[geometry]
    w = rep["window"]
    if not g.names_above and any(text_width(n, 12) > g.left - 14 for n in rep["lanes"]):
        g = replace(g, names_above=True, left=10)  # long lane names go above their lanes
    if not w.get("from") or not w.get("to"):
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {g.width:.0f} 40" '
            'role="img"><text x="10" y="24" font-size="13">No rows in the window.</text></svg>'
        )
    ax = _Axis(rep, g)
    names: list[str] = list(rep["lanes"])[:MAX_LANES]
    hidden = len(rep["lanes"]) - len(names)
    lanes = {r: _Lane(r) for r in names}
    colors: dict[str, str] = {}
    for h in rep["holders"]:
        colors.setdefault(str(h["holder"]), PALETTE[len(colors) % len(PALETTE)])
    texts = _Texts(g.width)
    out: list[str] = []

    bars = _place_marks(rep, ax, lanes, colors)

    top = _legend(ax, g, texts, out)

    # -- lanes, stacked
    y = top
    for lane in lanes.values():
        lane.stack(g.width - g.right)
        lane.top = y
        y += lane.height(g)
    bottom = y if lanes else top + 60
    plot_l, plot_r = g.left, g.width - g.right
    out.append(
        f'<rect x="{plot_l}" y="{top}" width="{plot_r - plot_l}" height="{bottom - top}" fill="#fbfbfc" stroke="#e5e7eb"/>'
    )
    _axis(w, ax, texts, out, top, bottom, plot_l, plot_r)
    _lane_names(g, lanes, texts, out, plot_l, plot_r)
    _bands(rep, g, ax, lanes, out)
    # holder bars, their names inside when they fit
    for lane, h, x1, wdt, inside in bars:
        yb = lane.bar_y(g)
        c = colors.get(str(h["holder"]), GREY)
        tip = _tip(
            f"{h['holder']} holds {h['resource']}",
            f"token {h['fencing_token']}",
            f"{when(h['from'])}–{when(h['to']) if h['to'] else 'still held'}",
            h["ended"],
            h.get("intent"),
        )
        out.append(
            f'<g>{tip}<rect x="{x1:.1f}" y="{yb}" width="{wdt:.1f}" height="{BAR}" rx="4" fill="{c}" fill-opacity="0.9"/>'
        )
        if not h["to"]:
            out.append(
                f'<path d="M{x1 + wdt:.1f},{yb} l7,11 l-7,11 z" fill="{c}" fill-opacity="0.9"/>'
            )
        if inside:
            out.append(
                texts.put(inside, x1 + 7, yb + 15, fill="#fff", weight="600", force=True) or ""
            )
        out.append("</g>")
    # the rows: marks and their labels, stacked
    for lane in lanes.values():
        for it in lane.items:
            yr = lane.row_y(g, it.row)
            mark = _mark(it.kind, it.x, yr, it.color) if it.kind else ""
            label, text = "", it.text
            if text:
                fill = it.color if it.color != AMBER else "#92400e"
                if it.flip:
                    lx0 = it.x - 9 if it.kind else it.x
                    label = texts.put(text, lx0, yr + 4, fill=fill, anchor="end", force=True) or ""
                else:
                    lx0 = it.x + 9 if it.kind else it.x - 7
                    label = texts.put(text, lx0, yr + 4, fill=fill, force=True) or ""
            out.append(f"<g>{_title(it, bool(w.get('multi_day')))}{mark}{label}</g>")
    if not lanes:
        out.append(
            texts.put(
                "Nobody held write authority in the window.",
                plot_l + 12,
                top + 40,
                size=13,
                fill=GREY,
                force=True,
            )
            or ""
        )
    height = bottom + 52
    if hidden:
        out.append(
            texts.put(
                f"{hidden} more resource lane(s) not drawn; see the tables.",
                plot_l,
                height - 2,
                fill=GREY,
                force=True,
            )
            or ""
        )
        height += 8
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {g.width:.0f} {height:.0f}" width="100%" '
        f'class="chart-{geometry}" role="img" aria-label="Timeline of write authority" font-family="inherit">'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f4f6"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#d1d5db" stroke-width="3"/></pattern>'
        '<pattern id="cut" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(-45)"><rect width="8" height="8" fill="#f9fafb"/>'
        '<line x1="0" y1="0" x2="0" y2="8" stroke="#e5e7eb" stroke-width="2"/></pattern></defs>'
    )
    svg = "\n".join([head, *(o for o in out if o), "</svg>"])
    # pattern ids unique per geometry: both charts sit in one page
    for pid in ("hatch", "cut"):
        svg = svg.replace(f'id="{pid}"', f'id="{pid}-{geometry}"')
        svg = svg.replace(f"url(#{pid})", f"url(#{pid}-{geometry})")
    return svg


def _title(it: _Item, multi: bool) -> str:
    """The tooltip of a mark; of a group or a "+N more" mark, how many rows it stands for,
    of what, and over which stretch (the tables list each row)."""
    if it.n == 1 and it.folded is None:
        return it.tip
    stretch = f"{when(it.at, multi)}–{when(it.until, multi)}" if it.at else ""
    over = f"over {duration(parse_time(it.until) - parse_time(it.at))}" if it.at else ""
    if it.folded is not None:
        kinds = ", ".join(f"{n} {_KINDS.get(k, k)}" for k, n in sorted(it.folded.items()))
        head = f"{it.n} more rows not drawn (the lane's rows are full): {kinds}"
        return _tip(head, stretch, over, "see the tables")
    what = f"{it.n} × {_KINDS.get(it.kind, it.kind)}" if it.kind else f"{it.n} times"
    return _tip(what, it.label, stretch, over, "see the tables")


def _zigzag(x: float, top: float, bottom: float) -> str:
    pts, y, k = [], top, 0
    while y < bottom:
        pts.append(f"{x + (3 if k % 2 else -3):.1f},{y:.1f}")
        y += 6
        k += 1
    return f'<polyline points="{" ".join(pts)}" fill="none" stroke="#9ca3af" stroke-width="1.2"/>'


def _color(kind: str | None) -> str:
    return {
        "deny": RED,
        "grant": GREEN,
        "diamond": NAVY,
        "ask": AMBER,
        "tri": VIOLET,
        "square": INK,
        "flag": ORANGE,
        "bar": PALETTE[0],
    }.get(kind or "", GREY)


def _mark(kind: str | None, x: float, y: float, c: str) -> str:
    if kind == "bar":
        return f'<rect x="{x - 7:.1f}" y="{y - 6:.1f}" width="14" height="12" rx="3" fill="{c}"/>'
    if kind == "band":
        return f'<rect x="{x - 7:.1f}" y="{y - 6:.1f}" width="14" height="12" fill="url(#hatch)" stroke="#d1d5db"/>'
    if kind == "break":
        return f'<rect x="{x - 7:.1f}" y="{y - 6:.1f}" width="14" height="12" fill="url(#cut)" stroke="#9ca3af"/>'
    if kind == "wait":
        return (
            f'<line x1="{x - 8:.1f}" y1="{y:.1f}" x2="{x + 8:.1f}" y2="{y:.1f}" stroke="{c}" '
            'stroke-width="2" stroke-dasharray="4 2"/>'
        )
    if kind == "deny":
        return (
            f'<path d="M{x - 5:.1f},{y - 5:.1f} L{x + 5:.1f},{y + 5:.1f} '
            f'M{x + 5:.1f},{y - 5:.1f} L{x - 5:.1f},{y + 5:.1f}" stroke="{c}" '
            'stroke-width="2.8" stroke-linecap="round"/>'
        )
    if kind == "grant":
        return (
            f'<path d="M{x - 5:.1f},{y:.1f} L{x - 1.5:.1f},{y + 4.5:.1f} L{x + 5.5:.1f},{y - 5:.1f}" '
            f'fill="none" stroke="{c}" stroke-width="2.8" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    if kind == "diamond":
        return (
            f'<path d="M{x:.1f},{y - 7:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
            f'L{x - 6:.1f},{y:.1f} z" fill="{c}" stroke="#fff" stroke-width="1.5"/>'
        )
    if kind == "ask":
        return (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="#fff" stroke="{c}" stroke-width="2"/>'
        )
    if kind == "tri":
        return f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y + 5:.1f} L{x - 6:.1f},{y + 5:.1f} z" fill="{c}"/>'
    if kind == "square":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{c}"/>'
    if kind == "flag":
        return (
            f'<path d="M{x - 3:.1f},{y + 7:.1f} L{x - 3:.1f},{y - 7:.1f} '
            f'L{x + 6:.1f},{y - 3.5:.1f} L{x - 3:.1f},{y:.1f}" fill="{c}" stroke="{c}" '
            'stroke-width="1.6" stroke-linejoin="round"/>'
        )
    return ""


def _freeze_spans(freezes: Iterable[dict[str, Any]]) -> list[tuple[str, str, str | None, str]]:
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
