"""A hand-written SVG of a bench run: one panel per scenario, a bar per peer (pairs/s on
its own linear axis), labelled with the figure, p50/p99 and the writ/peer ratio."""

from __future__ import annotations

from html import escape
from typing import Any

COLORS = {
    "writ-sqlite": "#1f6feb",
    "writ-postgres": "#6e40c9",
    "writ-postgres-x2": "#a371f7",
    "writ-postgres-x2-relayed": "#b589fb",
    "writ-postgres-x2-direct": "#c297ff",
    "writ-postgres-2shards": "#d2a8ff",
    "etcd": "#2da44e",
    "redis": "#cf222e",
    "postgres": "#bf8700",
}
ORDER = [
    "writ-sqlite",
    "writ-postgres",
    "writ-postgres-x2",
    "writ-postgres-x2-relayed",
    "writ-postgres-x2-direct",
    "writ-postgres-2shards",
    "etcd",
    "redis",
    "postgres",
]


def render(doc: dict[str, Any]) -> str:
    results: dict[str, dict[str, Any]] = doc.get("results", {})
    panels: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []
    titles: dict[str, str] = {}
    for r in results.values():
        for k, v in r.items():
            if k != "held" and isinstance(v, dict) and "title" in v:
                titles.setdefault(k, v["title"])
    for key in ("c1", "d16", "one16", "d256"):
        rows = [(p, results[p][key]) for p in ORDER if p in results and key in results[p]]
        if rows:
            panels.append((titles.get(key, key), rows))
    for p in ORDER:
        h = results.get(p, {}).get("held")
        if h:
            panels.append(
                (
                    f"{p}: 16 distinct, empty vs {h['held']:,} leases held",
                    [(f"{p} (empty)", h["before"]), (f"{p} ({h['held']:,} held)", h["after"])],
                )
            )

    width, left, right = 980, 190, 330
    bar_h, gap, head = 22, 6, 34
    y = 56
    parts: list[str] = []
    for title, rows in panels:
        parts.append(f'<text x="20" y="{y + 18}" class="t">{escape(title)}</text>')
        y += head
        top = max((r.get("pairs_per_s") or 0) for _, r in rows) or 1
        span = width - left - right
        base = rows[0][1].get("pairs_per_s") if rows[0][0].startswith("writ") else None
        for name, r in rows:
            v = r.get("pairs_per_s") or 0
            w = max(1.0, span * v / top)
            color = COLORS.get(name.split(" ")[0], "#57606a")
            parts.append(
                f'<text x="{left - 8}" y="{y + bar_h - 6}" class="l">{escape(name)}</text>'
            )
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}" rx="2"/>'
            )
            label = f"{v:,.0f} pairs/s   p50 {_n(r.get('pair_p50_ms'))} · p99 {_n(r.get('pair_p99_ms'))} ms"
            if r.get("handoff_p50_ms") is not None:
                label += f" · handoff p50 {_n(r.get('handoff_p50_ms'))} ms"
            if base and not name.startswith("writ") and v:
                label += f"   (writ {base / v:.2f}×)"
            parts.append(
                f'<text x="{left + w + 6}" y="{y + bar_h - 6}" class="v">{escape(label)}</text>'
            )
            y += bar_h + gap
        y += 14
    m = doc.get("machine", {})
    o = doc.get("options", {})
    sub = (
        f"{m.get('cpus')} CPUs · {m.get('cpu_model', '')} · {o.get('duration_s')} s per scenario"
        f" · one asyncio loader ({o.get('loader_loop')}) · ≤{o.get('conns')} connections per peer"
        f" · {doc.get('started', '')}"
    )
    height = y + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif">'
        "<style>.h{font-size:18px;font-weight:600}.s{font-size:11px;fill:#57606a}"
        ".t{font-size:14px;font-weight:600}.l{font-size:12px;text-anchor:end}.v{font-size:11px;fill:#24292f}"
        "</style>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
        '<text x="20" y="26" class="h">writ vs etcd, Redis, PostgreSQL — acquire+release pairs/s</text>'
        f'<text x="20" y="44" class="s">{escape(sub)}</text>' + "".join(parts) + "</svg>\n"
    )


def _n(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"
