"""The postmortem chart, checked as a reader would: labels never overprint, everyone who acted
is named on it, the axis fits the activity, and it renders at 1400 and 420 pixels.

Layout facts are computed from the SVG the code emits, with the chart's own width estimate
(:func:`writ.evidence.postmortem.chart.text_width`). The Chromium test renders the page headless and
skips, saying so, when no Chromium is installed.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from writ import demo
from writ.core.clock import ManualClock
from writ.engine import Engine
from writ.evidence.postmortem import Query, StoreSource, collect, to_html
from writ.evidence.postmortem.chart import GEOMETRIES, text_width, timeline_svg
from writ.stores.sqlite import SQLiteStore

TEXT = re.compile(r"<text ([^>]*)>(.*?)</text>", re.S)
ATTR = re.compile(r'([a-z-]+)="([^"]*)"')


def text_boxes(svg: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Each visible text of the chart and its box (x0, y0, x1, y1), as the chart estimates it."""
    out = []
    for attrs, body in TEXT.findall(svg):
        a = dict(ATTR.findall(attrs))
        text = html.unescape(body)
        size = float(a["font-size"])
        x, y = float(a["x"]), float(a["y"])
        w = text_width(text, size)
        anchor = a.get("text-anchor", "start")
        x0 = x - w if anchor == "end" else x - w / 2 if anchor == "middle" else x
        out.append((text, (x0, y - size, x0 + w, y + size * 0.3)))
    return out


def overlaps(boxes: list[tuple[str, tuple[float, float, float, float]]]) -> list[tuple[str, str]]:
    bad = []
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                bad.append((ta, tb))
    return bad


def principals(rep: dict[str, Any]) -> set[str]:
    """Everyone who acted in the report: holders, the refused, askers, answerers, waiters."""
    names = {str(h["holder"]) for h in rep["holders"]}
    names |= {str(r["agent"]) for r in rep["refusals"]}
    names |= {str(q["agent"]) for q in rep["waits"]}
    for c in rep["consents"]:
        names |= {str(c["requester"]), str(c["author"])}
        names |= {str(c[k]) for k in ("answered_by", "escalated_to") if c.get(k)}
    for r in rep["rollbacks"]:
        names |= {str(r[k]) for k in ("requested_by", "decided_by") if r.get(k)}
    for r in rep["revocations"]:
        names.add(str((r.get("provenance") or {}).get("revoked_by")))
    return names


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 02:17 demo's store (run 2, through writ), kept."""
    import asyncio

    folder = tmp_path_factory.mktemp("demo")

    async def play() -> None:
        with demo.counter_ids():
            await demo.run_through_writ(folder)

    asyncio.run(play())
    return folder / "writ-demo.db"


@pytest.fixture
async def reports(demo_store: Path) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The demo's incident over its own 4 minutes, and over the hour before its end."""
    engine = Engine(
        SQLiteStore(f"sqlite:///{demo_store}", clock=ManualClock(demo.START + demo.END))
    )
    await engine.start(background=False)
    try:
        lanes = ["prod", "routing", "capacity"]
        end = demo.START + demo.END
        yield {
            "incident": await collect(StoreSource(engine), Query(lanes, demo.START, end)),
            "wide": await collect(StoreSource(engine), Query(lanes, end - 3600, end)),
        }
    finally:
        await engine.stop()


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("which", ["incident", "wide"])
def test_no_label_overprints_and_everyone_is_named(
    reports: dict[str, dict[str, Any]], which: str, geometry: str
) -> None:
    rep = reports[which]
    svg = timeline_svg(rep, geometry)
    boxes = text_boxes(svg)
    assert not overlaps(boxes), overlaps(boxes)
    width = GEOMETRIES[geometry].width
    for text, (x0, _, x1, _) in boxes:
        assert -1 <= x0 and x1 <= width + 1, (text, x0, x1, width)  # inside the chart
    shown = " ".join(t for t, _ in boxes)
    missing = {n for n in principals(rep) if n not in shown}
    assert not missing, missing  # named on the chart itself, not only in tooltips
    # a refusal and a denial are an ✕; the consent's answer by the queue is one too
    assert svg.count('stroke-width="2.8" stroke-linecap="round"/>') >= 2


def test_the_axis_fits_the_activity(reports: dict[str, dict[str, Any]]) -> None:
    """Three minutes of rows in an hour's window: the axis spans the rows, and a cut band
    says how long the empty stretch before them was."""
    wide = timeline_svg(reports["wide"])
    texts = [t for t, _ in text_boxes(wide)]
    assert "⋯ 56m 00s" in texts
    ticks = [t for t in texts if re.fullmatch(r"\d\d:\d\d(:\d\d)?", t)]
    assert ticks and all("02:17" <= t <= "02:21" for t in ticks), ticks
    assert 'fill="url(#cut-wide)"' in wide
    # the incident's own window is mostly activity: not cut
    own = timeline_svg(reports["incident"])
    assert 'fill="url(#cut-wide)"' not in own
    assert not [t for t, _ in text_boxes(own) if t.startswith("⋯")]


def test_marks_that_would_touch_are_stacked() -> None:
    """Five refusals in the same second on one lane: five rows, five names, no overprint."""
    at = "2026-05-16T02:17:40.000000Z"
    rep: dict[str, Any] = {
        "window": {
            "from": "2026-05-16T02:17:00.000000Z",
            "to": "2026-05-16T02:19:00.000000Z",
            "first_row": at,
            "last_row": at,
            "multi_day": False,
        },
        "lanes": ["prod/db"],
        "holders": [],
        "refusals": [
            {
                "resource": "prod/db",
                "at": at,
                "seq": i,
                "agent": f"agent-{i}",
                "kind": "held",
                "reason": "held",
            }
            for i in range(5)
        ],
        "consents": [],
        "rollbacks": [],
        "revocations": [],
        "stuck": [],
        "waits": [],
        "changes": [],
        "freezes": [],
    }
    for geometry in GEOMETRIES:
        svg = timeline_svg(rep, geometry)
        boxes = text_boxes(svg)
        assert not overlaps(boxes)
        ys = {b[1] for t, b in boxes if t.startswith("agent-")}
        assert len(ys) == 5


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_renders_in_chromium_at_1400_and_420(
    reports: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Headless Chromium renders the page at desktop and phone width; at 420 px the narrow
    chart is the one shown (CSS media query), at 1400 px the wide one."""
    assert CHROMIUM is not None
    page = tmp_path / "pm.html"
    page.write_text(to_html(reports["wide"]), encoding="utf-8")
    for width in (1400, 420):
        shot = tmp_path / f"pm-{width}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    f"--screenshot={shot}",
                    f"--window-size={width},900",
                    page.as_uri(),
                ],
                capture_output=True,
                timeout=90,
                env={**os.environ, "HOME": profile},
                check=False,
            )
        assert shot.exists(), f"chromium wrote no screenshot at {width} px"
        assert _png_size(shot) == (width, 900)
    css = page.read_text()
    assert ".chart-narrow{display:none}" in css
    assert "@media (max-width:640px){.chart-wide{display:none}.chart-narrow{display:block}" in css
