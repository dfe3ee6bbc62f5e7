"""The timeline chart's layout: geometries, palette, text measuring and placing, the time axis, and
the lanes with their stacked rows of marks."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape as _html_escape
from typing import Any

from writ.core.clock import parse_time
from writ.core.textsafe import printable

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
RED, GREEN, NAVY, AMBER, VIOLET, INK, ORANGE, GREY = (
    "#dc2626",
    "#15803d",
    "#1e3a8a",
    "#b45309",
    "#7c3aed",
    "#111827",
    "#ea580c",
    "#6b7280",
)
MAX_LANES = 24
MAX_ROWS = 8  # rows of marks in a lane; the rest fold into "+N more" marks in a row above
ZOOM_BELOW = 0.5  # zoom when the rows cover less than this share of the window
BREAK = 30.0  # width of the band that stands for an empty stretch
ROW = 17.0  # height of one row of marks and labels
BAR = 22.0
FONT = 11.0
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Geometry:
    width: float
    left: float  # x of the plot's left edge
    right: float  # margin right of the plot
    names_above: bool  # lane names on their own line above each lane
    tick_px: float  # at least this many units between two time labels


GEOMETRIES = {
    "wide": Geometry(1120, 190, 24, False, 80),
    "narrow": Geometry(380, 10, 10, True, 70),
}


def text_width(text: str, size: float = FONT) -> float:
    """A generous estimate of the width of ``text`` at ``size`` (sans-serif; monospace is
    narrower than this for lane names)."""
    return len(text) * size * 0.6 + 2


def escape(text: str) -> str:
    return _html_escape(printable(text))


def _tip(*parts: Any) -> str:
    return "<title>" + escape(" · ".join(str(p) for p in parts if p not in (None, ""))) + "</title>"


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlap(a: Box, b: Box, gap: float = 1.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


class _Texts:
    """Every text of the chart, placed only where it overlaps no other."""

    def __init__(self, width: float) -> None:
        self.boxes: list[Box] = []
        self.width = width

    @staticmethod
    def box(text: str, x: float, y: float, size: float, anchor: str) -> Box:
        w = text_width(text, size)
        x0 = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
        return (x0, y - size, x0 + w, y + size * 0.3)

    def free(self, b: Box) -> bool:
        inside = b[0] >= 0 and b[2] <= self.width
        return inside and not any(_overlap(b, o) for o in self.boxes)

    def put(
        self,
        text: str,
        x: float,
        y: float,
        *,
        size: float = FONT,
        fill: str = "#374151",
        anchor: str = "start",
        weight: str = "",
        force: bool = False,
        mono: bool = False,
    ) -> str | None:
        """The ``<text>`` element, or None when it would overlap a placed text (unless
        ``force``: then it is placed all the same, for texts the layout already made room for)."""
        b = self.box(text, x, y, size, anchor)
        if not force and not self.free(b):
            return None
        self.boxes.append(b)
        attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if weight:
            attrs += f' font-weight="{weight}"'
        if mono:
            attrs += ' font-family="ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"'
        return f"<text {attrs}>{escape(text)}</text>"


# ----------------------------------------------------------------------------- time axis
class _Axis:
    """Times to x: the window, or — zoomed — the rows' span with break bands at the edges."""

    def __init__(self, rep: dict[str, Any], g: Geometry) -> None:
        w = rep["window"]
        t0, t1 = parse_time(w["from"]), parse_time(w["to"])
        if t1 - t0 < 1:
            t1 = t0 + 1
        self.w0, self.w1 = t0, t1
        a0 = parse_time(w["first_row"]) if w.get("first_row") else t0
        a1 = parse_time(w["last_row"]) if w.get("last_row") else t1
        self.before = self.after = 0.0  # the empty stretches cut away
        if (a1 - a0) < ZOOM_BELOW * (t1 - t0):
            pad = max((a1 - a0) * 0.06, 5.0)
            z0, z1 = max(t0, a0 - pad), min(t1, a1 + pad)
            cut = 0.2 * (t1 - t0)  # a short empty stretch is drawn, not cut
            z0 = z0 if z0 - t0 > cut else t0
            z1 = z1 if t1 - z1 > cut else t1
            self.before, self.after = z0 - t0, t1 - z1
            t0, t1 = z0, z1
        else:
            pad = (t1 - t0) * 0.015
            t0, t1 = t0 - pad, t1 + pad
        self.t0, self.t1 = t0, t1
        self.x0 = g.left + (BREAK if self.before > 0 else 0)
        self.x1 = g.width - g.right - (BREAK if self.after > 0 else 0)
        self.g = g
        self.step = 1

    def x(self, ts: str | None) -> float:
        """The x of ``ts`` (None: the end of the window); times in a cut stretch sit on
        the edge of the plot, across the break band."""
        t = parse_time(ts) if ts else self.w1
        if t < self.t0:
            return self.g.left if self.before > 0 else self.x0
        if t > self.t1:
            return self.g.width - self.g.right if self.after > 0 else self.x1
        return self.x0 + (t - self.t0) / (self.t1 - self.t0) * (self.x1 - self.x0)

    def ticks(self) -> list[float]:
        span = self.t1 - self.t0
        most = max(2, int((self.x1 - self.x0) / self.g.tick_px))
        step = next((s for s in _STEPS if span / s <= most), _STEPS[-1])
        out, tick = [], (int(self.t0) // step + 1) * step
        while tick < self.t1:
            out.append(float(tick))
            tick += step
        self.step = step
        return out

    def xt(self, t: float) -> float:
        return self.x0 + (t - self.t0) / (self.t1 - self.t0) * (self.x1 - self.x0)


# ----------------------------------------------------------------------------- lanes
@dataclass
class _Item:
    """A mark (or a bare label) in a lane's rows above the bars; it may stand for several rows
    of the ledger: marks that would stack are grouped (``n``, from ``at`` to ``until``), and what
    does not fit in a lane's rows is folded into a "+N more" mark (``folded``: count by kind)."""

    x: float
    kind: str | None
    label: str | None
    color: str
    tip: str
    at: str = ""  # the (first) row's time
    row: int = 0
    flip: bool = False  # the label sits left of the mark (it would pass the right edge)
    n: int = 1
    until: str = ""  # the last row's time, when grouped
    folded: dict[str, int] | None = None
    room: float = 0.0  # width kept for the label, whatever its count grows to

    @property
    def text(self) -> str | None:
        """The label as drawn: with its count when it stands for several rows."""
        if self.folded is not None:
            return f"+{self.n} more"
        if self.n > 1:
            return f"{self.label} ×{self.n}" if self.label else f"×{self.n}"
        return self.label

    def span(self, limit: float) -> tuple[float, float]:
        text = self.text
        if not text:
            return (self.x - 7, self.x + 7)
        tw = max(text_width(text), self.room)
        lead = 9 if self.kind else -7
        self.flip = self.x + lead + tw > limit
        if self.flip:
            return (self.x - (9 if self.kind else 0) - tw, self.x + 7)
        return (self.x - 7, self.x + lead + tw)

    def absorb(self, other: _Item) -> None:
        """Count ``other`` (a mark or a group) in this one."""
        if self.folded is not None:
            kind = other.kind or ""
            self.folded[kind] = self.folded.get(kind, 0) + other.n
        self.n += other.n
        times = [t for t in (self.at, self.until, other.at, other.until) if t]
        self.at, self.until = (min(times), max(times)) if times else ("", "")


def _group(items: list[_Item], limit: float) -> list[_Item]:
    """``items`` (left to right) with each mark that would touch the last one of its kind,
    label and colour counted in that one instead: a flood of refusals is one counted mark per
    label's width of the axis, not a row per refusal."""
    out: list[_Item] = []
    last: dict[tuple[str | None, str | None, str], _Item] = {}
    for it in items:
        key = (it.kind, it.label, it.color)
        g = last.get(key)
        if g is not None and it.span(limit)[0] < g.span(limit)[1] + 4:
            g.absorb(it)
        else:
            last[key] = it
            out.append(it)
    return out


def _fold(items: list[_Item], limit: float) -> list[_Item]:
    """``items`` (left to right, past a lane's last row) as "+N more" marks in one row, each
    from the first item it counts; each keeps room for the largest count, so none grows into
    the next."""
    room = text_width(f"+{sum(i.n for i in items)} more")
    out: list[_Item] = []
    for it in items:
        m = _Item(it.x, None, None, GREY, "", it.at, n=0, folded={}, room=room)
        if out and m.span(limit)[0] < out[-1].span(limit)[1] + 4:
            m = out[-1]
        else:
            out.append(m)
        m.absorb(it)
    return out


@dataclass
class _Lane:
    resource: str
    items: list[_Item] = field(default_factory=list)
    rows: int = 0
    waits: bool = False
    top: float = 0.0

    def stack(self, limit: float) -> None:
        """Group the items that would stack (:func:`_group`), then give each the lowest row
        where it touches no other; what finds no row among the first ``MAX_ROWS`` is folded
        into "+N more" marks in one row above them. Items come left to right, so an item
        touches a row exactly when it starts before that row's right edge: a row is one
        number, and the stacking costs the sort."""
        items = _group(sorted(self.items, key=lambda i: i.x), limit)
        ends: list[float] = []  # each row's right edge so far
        placed, over = [], []
        for it in items:
            a, b = it.span(limit)
            r = next((r for r, end in enumerate(ends) if a >= end + 4), len(ends))
            if r == MAX_ROWS:
                over.append(it)
                continue
            if r == len(ends):
                ends.append(b)
            ends[r] = max(ends[r], b)
            it.row = r
            placed.append(it)
        more = _fold(over, limit)
        for m in more:
            m.row = len(ends)
        self.items = placed + more
        self.rows = len(ends) + (1 if more else 0)

    def height(self, g: Geometry) -> float:
        return (
            (18 if g.names_above else 0)
            + max(self.rows, 1) * ROW
            + 8
            + BAR
            + (14 if self.waits else 4)
        )

    def bar_y(self, g: Geometry) -> float:
        return self.top + (18 if g.names_above else 0) + max(self.rows, 1) * ROW + 8

    def row_y(self, g: Geometry, row: int) -> float:
        """The centre line of row ``row`` (0 is the one just above the bars)."""
        return self.bar_y(g) - 8 - ROW / 2 - row * ROW


def _is_grant(status: str | None) -> bool:
    return status in ("granted", "used", "approved", "executed", "failed")
