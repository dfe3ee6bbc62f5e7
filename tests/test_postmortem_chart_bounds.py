"""The postmortem page stays bounded under a flood of refusals, and under a very long word.

Every refused acquire writes a ``lease.denied`` row, and an agent retrying on ``held`` (honest or
not) writes thousands in seconds. The chart groups the marks that would stack into one counted
mark, folds what a lane's rows cannot hold into "+N more" marks, and stacks in the time of a
sort: its size and its cost follow the width of the page, not the number of rows. A word of
thousands of characters (an intent, a change's summary) wraps inside its box instead of pushing
the page wide (checked in headless Chromium, skipped when it is not installed).
"""

from __future__ import annotations

import asyncio
import html
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.test_postmortem_chart import CHROMIUM, overlaps, text_boxes
from writ.core.clock import ManualClock, parse_time
from writ.core.errors import Held
from writ.engine import Engine
from writ.evidence.postmortem import Query, StoreSource, collect, to_html
from writ.evidence.postmortem.chart import GEOMETRIES, timeline_svg
from writ.stores.base import Tx
from writ.stores.sqlite import SQLiteStore

T0 = parse_time("2026-05-16T10:00:00Z")
AGENTS = 40
BATCHES, PER_BATCH = 100, 50  # 5,000 copies of a real lease.denied row, over 5 s
MARK = re.compile(r"<g><title>([^<]*)</title>.*?</g>", re.S)
COUNTED = re.compile(r"^(flood-\d+)(?: ×(\d+))?$")
MORE = re.compile(r"^\+(\d+) more$")


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A report over 5,001 refusals of 40 agents in 5 s while ``holder-a`` holds prod/db."""
    path = tmp_path_factory.mktemp("flood") / "w.db"

    async def play() -> dict[str, Any]:
        clock = ManualClock(T0)
        engine = Engine(SQLiteStore(f"sqlite:///{path}", clock=clock))
        await engine.start(background=False)
        try:
            holder = (await engine.add_principal(None, "holder-a", "agent"))[0]
            agents = [
                (await engine.add_principal(None, f"flood-{i}", "agent"))[0] for i in range(AGENTS)
            ]
            await engine.acquire(holder, resource="prod/db", intent="migrate", ttl_s=600)
            with pytest.raises(Held):
                await engine.acquire(agents[0], resource="prod/db", intent="retry")
            rows = await engine.store.read(lambda tx: tx.audit_rows(0, 100))
            denied = {
                k: v
                for k, v in rows[-1].items()
                if k not in ("seq", "timestamp", "prev_hash", "hash")
            }
            assert denied["event"] == "lease.denied"

            def batch(n: int) -> Callable[[Tx], Any]:
                async def write(tx: Tx) -> None:
                    for i in range(PER_BATCH):
                        await tx.append({**denied, "agent_id": f"flood-{(n + i) % AGENTS}"})

                return write

            for n in range(BATCHES):  # the rows of one transaction share a time
                clock.t += 5 / BATCHES
                await engine.store.transact(batch(n))
            return await collect(StoreSource(engine), Query(["prod"], T0 - 60, clock.t + 1))
        finally:
            await engine.stop()

    return asyncio.run(play())


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_a_flood_of_refusals_draws_a_bounded_chart(flood: dict[str, Any], geometry: str) -> None:
    """5,001 refusals on one lane: a chart a few hundred units tall with a few dozen marks,
    no label over another, and the counts on it add up to the rows."""
    rows = len(flood["refusals"])
    assert rows == 1 + BATCHES * PER_BATCH  # the tables keep every row
    svg = timeline_svg(flood, geometry)
    height = float(re.search(r'viewBox="0 0 [\d.]+ ([\d.]+)"', svg).group(1))  # type: ignore[union-attr]
    assert height < 400, height  # the legend, one lane of at most nine rows, the axis
    marks = MARK.findall(svg)
    assert len(marks) < 200, len(marks)
    boxes = text_boxes(svg)
    assert not overlaps(boxes), overlaps(boxes)
    shown = 0
    for body in re.findall(r"<g><title>.*?</g>", svg, re.S):
        title = html.unescape(MARK.match(body).group(1))  # type: ignore[union-attr]
        texts = [t for t, _ in text_boxes(body)]
        if texts and (m := COUNTED.match(texts[0])):
            n = int(m.group(2) or 1)
            if n > 1:  # a group: its tooltip says how many, of what, who, and when
                stretch = r"\d\d:\d\d:\d\d(\.\d{3})?–\d\d:\d\d:\d\d(\.\d{3})? · over \S+"
                assert re.fullmatch(
                    rf"{n} × refused / denied · {m.group(1)} · {stretch} · see the tables", title
                ), title
            shown += n
        elif texts and (m := MORE.match(texts[0])):
            n = int(m.group(1))
            assert title.startswith(f"{n} more rows not drawn"), title
            assert f": {n} refused / denied · " in title, title
            shown += n
    assert shown == rows
    assert re.search(r">flood-\d+ ×\d+</text>", svg) and re.search(r">\+\d+ more</text>", svg)


def _refusals(n: int) -> dict[str, Any]:
    """A report of ``n`` refusals by ``n`` agents within two seconds (nothing to group)."""
    at = [f"2026-05-16T02:17:{40 + 2 * i / n:09.6f}Z" for i in range(n)]
    return {
        "window": {
            "from": "2026-05-16T02:17:00.000000Z",
            "to": "2026-05-16T02:19:00.000000Z",
            "first_row": at[0],
            "last_row": at[-1],
            "multi_day": False,
        },
        "lanes": ["prod/db"],
        "holders": [],
        "refusals": [
            {
                "resource": "prod/db",
                "at": t,
                "seq": i,
                "agent": f"agent-{i}",
                "kind": "held",
                "reason": "held",
            }
            for i, t in enumerate(at)
        ],
        **{k: [] for k in ("consents", "rollbacks", "revocations", "stuck", "waits")},
        **{k: [] for k in ("changes", "freezes")},
    }


def _lines(fn: Callable[[], object]) -> int:
    """The Python lines ``fn`` executes: a measure of its work that no machine's speed moves."""
    count = 0
    before = sys.gettrace()

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(before)
    return count


def test_the_chart_costs_no_worse_than_n_log_n() -> None:
    """Four times the refusals cost at most four times the work (times the log's growth), not
    sixteen: a refusal is placed against each row once, not against every mark before it."""
    small, large = (_refusals(n) for n in (1000, 4000))

    def work(rep: dict[str, Any]) -> Callable[[], object]:
        return lambda: timeline_svg(rep, "wide")

    lines = {n: _lines(work(rep)) for n, rep in ((1, small), (4, large))}
    bound = 4 * math.log(4000) / math.log(1000)
    assert lines[4] <= bound * lines[1], (lines, lines[4] / lines[1])
    # the same chart is bounded whatever the count: nothing to group, the rows fold
    assert re.search(r">\+\d+ more</text>", timeline_svg(large, "narrow"))


# the page's widest box, written into the page once it has laid out
_MEASURE = (
    "<script>addEventListener('load',()=>{const p=document.createElement('pre');"
    "p.id='widest';p.textContent=document.documentElement.scrollWidth;"
    "document.body.appendChild(p)})</script>"
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_long_word_wraps_inside_the_page(tmp_path: Path) -> None:
    """An intent of 1,000 letters and a change summary of 2,000, no space in either: at 1400
    pixels the page is no wider than the window (they wrap in the summary and the tables)."""
    assert CHROMIUM is not None

    async def report() -> dict[str, Any]:
        engine = Engine(SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}", clock=ManualClock(T0)))
        await engine.start(background=False)
        try:
            agent = (await engine.add_principal(None, "perf-agent", "agent"))[0]
            lease = await engine.acquire(agent, resource="prod/db", intent="A" * 1000, ttl_s=60)
            await engine.consents.record_change(agent, lease["lease_id"], "capacity", "x" * 2000)
            return await collect(StoreSource(engine), Query(["prod"], T0 - 60, T0 + 60))
        finally:
            await engine.stop()

    rep = asyncio.run(report())
    page = tmp_path / "pm.html"
    page.write_text(to_html(rep).replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "HOME": profile},
            check=False,
        ).stdout
    widest = re.search(r'<pre id="widest">(\d+)</pre>', dom)
    assert widest, dom[-500:]
    assert int(widest.group(1)) <= 1400
