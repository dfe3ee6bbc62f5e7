"""What a postmortem is about: the resource prefixes and time window, and the reading limits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from writ.core import resources as _res
from writ.core.clock import parse_time

if TYPE_CHECKING:
    pass


MAX_ROWS = 200_000  # rows a report reads at most (it says so when it stops there)
MAX_SEGMENT = 200_000  # longest unfiltered seq range re-verified link by link
PAGE = 10_000
TIMELINE_QUIET = frozenset({"lease.renewed", "gate.passed"})  # counted, not listed
END_EVENTS = {"lease.released": "released", "lease.expired": "expired", "lease.revoked": "revoked"}


@dataclass(slots=True)
class Query:
    """Which rows a report is about: resource prefixes (none: all) and a time window."""

    resources: list[str] = field(default_factory=list)
    since: float | None = None
    until: float | None = None
    limit: int = MAX_ROWS
    title: str | None = None

    def __post_init__(self) -> None:
        for r in self.resources:
            _res.validate(r, "resource")
        if self.since is not None and self.until is not None and self.until < self.since:
            raise ValueError("until is before since")

    @classmethod
    def around(cls, at: str | float, window: float, resources: Sequence[str] = ()) -> Query:
        """The window from ``at - window`` to ``at + window``."""
        t = parse_time(at)
        return cls(list(resources), t - window, t + window)


# ----------------------------------------------------------------------------- sources


def _lane_resources(rows: Iterable[dict[str, Any]], asked: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in asked:
        seen.setdefault(name, None)
    for r in rows:
        res = r.get("resource")
        if isinstance(res, str) and not res.startswith("principals/"):
            seen.setdefault(res, None)
    return list(seen)
