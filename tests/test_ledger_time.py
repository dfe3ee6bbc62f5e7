"""Ledger time never runs backwards on SQLite either. The host clock stepped back across a
restart (an NTP step) gave rows dated before the row before them: verify still said ok, and
``who --at`` contradicted the fence. The store now holds its clock at the newest row's time,
at open and whenever another process wrote (PostgreSQL's batch already took the greatest
of the clock and the head's time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from writ.core.clock import Clock
from writ.engine import Engine
from writ.stores.sqlite import SQLiteStore


class SteppedClock(Clock):
    """The real clock's rule over a host time set by hand."""

    def __init__(self, host: float) -> None:
        super().__init__()
        self.host = host

    def now(self) -> float:
        t = self.host
        if t < self._last:
            return self._last
        self._last = t
        return t


async def _write(db: Path, clock: Clock, name: str) -> None:
    engine = Engine(SQLiteStore(f"sqlite:///{db}", clock=clock))
    await engine.start(background=False)
    try:
        await engine.add_principal(None, name, "agent")
    finally:
        await engine.stop()


@pytest.mark.parametrize("step_back", [600.0, 86_400.0])
async def test_a_host_clock_stepped_back_across_a_restart_dates_no_row_earlier(
    tmp_path: Path, step_back: float
) -> None:
    db = tmp_path / "w.db"
    t = 1_800_000_000.0
    await _write(db, SteppedClock(t), "a-agent")
    engine = Engine(SQLiteStore(f"sqlite:///{db}", clock=SteppedClock(t - step_back)))
    await engine.start(background=False)
    try:
        await engine.add_principal(None, "b-agent", "agent")
        times = [
            r[0]
            for r in engine.store._w.execute("SELECT ts FROM audit ORDER BY seq")  # type: ignore[union-attr]
        ]
        assert times == sorted(times) and times[-1] >= t, times
        assert (await engine.verify()).ok
    finally:
        await engine.stop()
