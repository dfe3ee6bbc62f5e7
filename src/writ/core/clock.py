"""Time: the store's clock, and RFC 3339 on the wire.

Inside writ a time is a float of seconds since the epoch, always taken from the store's
clock (an embedded store reads the host's; PostgreSQL its ``clock_timestamp()``), never a
client's. :class:`ManualClock` lets tests move time by hand instead of sleeping.
"""

from __future__ import annotations

import functools
import math
import re
import time
from datetime import UTC, datetime
from typing import overload

from writ.core.errors import Invalid


class Clock:
    """Wall-clock seconds that never run backwards within one process."""

    def __init__(self) -> None:
        self._last = 0.0

    def now(self) -> float:
        t = time.time()
        if t < self._last:  # the host clock stepped back: hold still rather than reorder
            return self._last
        self._last = t
        return t

    def floor(self, t: float) -> None:
        """Never run back before ``t`` (the newest row a store holds: a restart, or another
        process, after the host clock stepped back). A manual clock keeps its own time."""
        self._last = max(self._last, t)


class ManualClock(Clock):
    """A clock that moves only when told to (for tests and the demo)."""

    def __init__(self, start: float = 1_778_926_620.0) -> None:  # 2026-05-16T10:17:00Z
        super().__init__()
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@overload
def rfc3339(ts: float) -> str: ...
@overload
def rfc3339(ts: float | None) -> str | None: ...
def rfc3339(ts: float | None) -> str | None:
    """``1778926620.5`` → ``'2026-05-16T10:17:00.500000Z'`` (microseconds, UTC).

    On the hot path (several stamps per request, most within the same second): the whole
    seconds are formatted once and cached; the microseconds are rounded exactly as
    ``datetime.fromtimestamp`` rounds them (half to even), so both paths agree to the
    character (a property test checks it).
    """
    if ts is None:
        return None
    if ts >= 0:
        sec = math.floor(ts)
        us = round((ts - sec) * 1e6)
        if us < 1_000_000:
            return f"{_whole_seconds(sec)}.{us:06d}Z"
    return _rfc3339_slow(ts)


def stamp(ts: float) -> tuple[str, float]:
    """``ts`` as shown (:func:`rfc3339`) and the exact time that text names, which is what
    :func:`parse_time` reads back from it. The ledger keeps the second as a row's time, so a
    query ``since``/``until`` a row's shown timestamp finds that row: the raw clock reading
    can sit up to half a microsecond on either side of it."""
    if ts >= 0:
        sec = math.floor(ts)
        us = round((ts - sec) * 1e6)
        if us < 1_000_000:
            # int / int is correctly rounded, as datetime.timestamp() computes it
            return f"{_whole_seconds(sec)}.{us:06d}Z", (sec * 1_000_000 + us) / 1_000_000
    text = _rfc3339_slow(ts)
    return text, parse_time(text)


@functools.lru_cache(maxsize=1024)
def _whole_seconds(sec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")


def _rfc3339_slow(ts: float) -> str:
    # isoformat pads the year to four digits (strftime's %Y does not, for years < 1000)
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``'90s'``, ``'15m'``, ``'2h'`` → seconds."""
    m = _RELATIVE.match(text.strip())
    if not m:
        raise Invalid(f"duration {text!r} is not like '90s', '15m', '2h' or '1d'")
    return float(m.group(1)) * _UNITS[m.group(2)]


TIME_FORMS = (
    "give RFC 3339 (2026-05-16T02:17:00Z, or 2026-05-16T04:17:00+02:00), epoch seconds "
    "(1778897820), now, or a time ago: -90s, -15m, -2h, -1d"
)
_MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_MAX_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def parse_time(text: str | float | int, now: float | None = None) -> float:
    """Parse an RFC 3339 / ISO 8601 time (or epoch seconds, or ``-15m`` relative to now)."""
    t = _parse_time(text, now)
    if not _MIN_TS <= t <= _MAX_TS:  # also refuses NaN
        raise Invalid(f"time {text!r} is out of range: give RFC 3339 like 2026-05-16T02:17:00Z")
    return t


def _parse_time(text: str | float | int, now: float | None = None) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if not s:
        raise Invalid("time is empty: give RFC 3339 like 2026-05-16T02:17:00Z")
    if s.startswith("-") and _RELATIVE.match(s):
        return (time.time() if now is None else now) - parse_duration(s[1:])
    if s == "now":
        return time.time() if now is None else now
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Invalid(f"time {s!r} is not one writ reads: {TIME_FORMS}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def time_or_zero(text: object) -> float:
    """An RFC 3339 time kept in a record's data as seconds, or 0 when it is none (not a
    string, or not a time): what verify's probes ask about nothing."""
    if not isinstance(text, str):
        return 0.0
    try:
        return parse_time(text)
    except Invalid:
        return 0.0
