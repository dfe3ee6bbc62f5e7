"""Reading the ledger's notes (the row texts the engine writes) and writing times and durations."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from writ.core.clock import parse_time

if TYPE_CHECKING:
    pass


# ----------------------------------------------------------------------------- build
_GRANTED = re.compile(r"^granted (\S+) for (['\"])(.*)\2, ttl (\S+?)s")
_CHANGE = re.compile(r"^(.*?): (.*); protected until (\S+)$")
_ASK = re.compile(r"^(\S+) asks (\S+) to undo (\S+) \((.*)\): (.*); answer by (\S+)$")
_ANSWER = re.compile(  # a queue member's answer names the queue: "jane (member of Q) granted"
    r"^(\S+)(?: \(member of \S+\))? (granted|denied) (\S+)'s request to undo (\S+) "
    r"\(change (\S+) by (\S+)\)"
    r"(?:; consent \S+)?$"  # the consent today's writ names (models.named)
)
_EXPIRED = re.compile(
    r"^(\S+) did not answer (\S+)'s consent request by (\S+): .*escalated to (\S+)"
)
_USED = re.compile(r"^consent (\S+) from (\S+) used for change (\S+) by (\S+)$")
_RB_ASK = re.compile(
    r"^(\S+) asks (\S+) to roll back (\S+): (.*?)"
    r"(?:; rollback \S+)?$"  # the rollback today's writ names (models.named)
)
_REFUSED = re.compile(r"^refused (['\"])(.*?)\1: (.*)$", re.S)
# the queued request a row of today's writ ends the wait of (models.waited_as), left out
_WAITED = re.compile(r"; waiter [A-Za-z0-9_-]+\Z")
# the waiter and request a row of today's writ names at its end (models.queued_as) are
# left out of the reason
_QUEUED = re.compile(
    r"^queued at position (\d+) for up to (\S+?)s: (.*?)"
    r"(?:; waiter \S+, request sha256:[0-9a-f]{64})?$",
    re.S,
)


def when(ts: str | None, day: bool = False) -> str:
    """``2026-05-16T02:17:40.000000Z`` → ``02:17:40`` (``.123`` kept when not whole)."""
    if not ts:
        return "-"
    t = ts[11:19]
    frac = ts[20:26].rstrip("0") if len(ts) > 20 else ""
    if frac:
        t += "." + frac[:3].ljust(3, "0")
    return (ts[5:10] + " " + t) if day else t


def _secs(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return parse_time(b) - parse_time(a)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.3f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def classify_refusal(row: dict[str, Any]) -> tuple[str, str, str]:
    """``(kind, intent, reason)`` of a ``lease.denied``, ``lease.refused`` (not the
    caller's authority: kind ``forbidden``) or ``gate.refused`` row."""
    notes = _WAITED.sub("", row.get("notes") or "")
    if row.get("event") == "gate.refused":
        return "gate", "", notes
    if row.get("event") == "lease.refused":
        m = _REFUSED.match(notes)
        return "forbidden", (m.group(2) if m else ""), (m.group(3) if m else notes)
    m = _REFUSED.match(notes)
    intent, why = (m.group(2), m.group(3)) if m else ("", notes)
    if "protected until" in why and ("Ask first" in why or "consent" in why):
        kind = "consent_required"
    elif " is frozen by " in why:
        kind = "frozen"
    elif "lock-delay" in why:
        kind = "lock_delay"
    elif "queued ahead" in why:
        kind = "queue"
    elif " is held by " in why:
        kind = "held"
    else:
        kind = "refused"
    return kind, intent, why


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": r.get("seq"),
        "at": r.get("timestamp"),
        "event": r.get("event"),
        "agent": r.get("agent_id"),
        "resource": r.get("resource"),
        "holder": r.get("lock_holder"),
        "lock_key": r.get("lock_key"),
        "fencing_token": r.get("fencing_token"),
        "approved_by": r.get("approved_by"),
        "queue": r.get("human_override_queue"),
        "notes": r.get("notes") or "",
    }
