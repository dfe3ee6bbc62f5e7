"""The instant postmortem: an incident report drafted from the audit ledger alone.

``writ postmortem`` selects the rows of one or more resource prefixes within a time window
(``--since``/``--until``, or ``--around T --window 30m``), through indexed queries — resource
prefix and time range, never a scan of the whole ledger — and turns them into the sections of
a postmortem template:

summary · impact window · timeline · who held write authority when · changes made · what writ
refused and why (and who it made wait) · consents and their answers · rollbacks and who
approved them · stuck-lock wakes and pages · revocations with provenance · freezes ·
contaminated or suspicious rows (by :mod:`writ.lint`) · chain verification of the rows used.

Sources: :class:`StoreSource` opens a store directly (offline, ``--store``);
:class:`HttpSource` pages ``GET /v1/audit`` of a running server (``--url``/``--token``).
:func:`collect` gathers a report (a plain dict, the ``--format json`` output) and
:func:`to_markdown` and :func:`writ.postmortem_html.to_html` render it.

Every fact in the report is a row of the ledger; each is cited by its ``seq``. What the
ledger cannot know (root cause, customer impact, follow-ups) is left as questions for people.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import resources as _res
from .clock import parse_time, rfc3339
from .ledger import GENESIS, canonical
from .ledger import verify as verify_chain
from .textsafe import printable

if TYPE_CHECKING:
    from .client import AsyncClient
    from .engine import Engine

__all__ = [
    "HttpSource",
    "Query",
    "StoreSource",
    "build",
    "collect",
    "to_json",
    "to_markdown",
    "when",
]

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
class StoreSource:
    """Rows straight from a store, through an engine that was started (offline)."""

    def __init__(self, engine: Engine, label: str | None = None) -> None:
        self.engine = engine
        self.label = label or engine.store.url

    async def rows(
        self, prefix: str | None, since: float | None, until: float | None, after: int, limit: int
    ) -> list[dict[str, Any]]:
        def fn(tx: Any) -> Any:
            return tx.audit_rows(after, limit, prefix, since, until)

        rows: list[dict[str, Any]] = await self.engine.store.read(fn)
        return rows

    async def who(self, resource: str, at: float) -> dict[str, Any]:
        return await self.engine.who(resource, at)

    async def kinds(self) -> dict[str, str]:
        return {p["name"]: p["kind"] for p in await self.engine.list_principals()}

    async def segment(self, first: int, last: int, prev_hash: str) -> tuple[bool, int, str | None]:
        """Re-verify the stored bytes of every row ``first..last`` and their links."""
        seq, head, n = first, prev_hash, 0
        async for chunk in self.engine.store.audit_stream(first - 1, min(PAGE, last - first + 1)):
            chunk = [c for c in chunk if c[0] <= last]
            part = verify_chain(chunk, seq, head)
            n += part.rows
            if not part.ok:
                return False, n, f"row {part.first_bad_seq}: {part.reason}"
            seq, head = seq + part.rows, part.head
            if seq > last:
                break
        if seq <= last:
            return False, n, f"rows {seq}..{last} are missing"
        return True, n, None


class HttpSource:
    """Rows from a running server: ``GET /v1/audit`` pages, ``/v1/who``, ``/v1/principals``."""

    def __init__(self, client: AsyncClient, label: str | None = None) -> None:
        self.client = client
        self.label = label or client.url

    async def rows(
        self, prefix: str | None, since: float | None, until: float | None, after: int, limit: int
    ) -> list[dict[str, Any]]:
        out = await self.client.audit(
            after, min(limit, 100_000), prefix, rfc3339(since), rfc3339(until)
        )
        return list(out.get("rows") or [])

    async def who(self, resource: str, at: float) -> dict[str, Any]:
        out: dict[str, Any] = await self.client.who(resource, rfc3339(at))
        return out

    async def kinds(self) -> dict[str, str]:
        out = await self.client.principals()
        items = out.get("principals", []) if isinstance(out, dict) else out
        return {p["name"]: p["kind"] for p in items}

    async def segment(self, first: int, last: int, prev_hash: str) -> tuple[bool, int, str | None]:
        """Re-verify rows ``first..last`` as served (fields re-encoded canonically)."""
        after, head, n = first - 1, prev_hash, 0
        while after < last:
            rows = await self.rows(None, None, None, after, min(PAGE, last - after))
            if not rows:
                return False, n, f"rows {after + 1}..{last} are missing"
            for row in rows:
                if row["seq"] > last:
                    return True, n, None
                bad = _row_problem(row, after + 1, head)
                if bad:
                    return False, n, bad
                head, after, n = row["hash"], row["seq"], n + 1
        return True, n, None


# ----------------------------------------------------------------------------- collect
async def collect(source: StoreSource | HttpSource, query: Query) -> dict[str, Any]:
    """Read the rows of ``query`` from ``source`` and build the report."""
    rows, truncated = await _select(source, query)
    kinds: dict[str, str]
    try:
        kinds = await source.kinds()
    except Exception:
        kinds = {}
    # who already held each lane's resource when the window opened
    start: dict[str, dict[str, Any]] = {}
    if query.since is not None:
        lanes = _lane_resources(rows, query.resources)
        for res in lanes[:64]:
            try:
                ans = await source.who(res, query.since)
            except Exception:
                continue
            if ans.get("lock_holder") not in (None, "none"):
                start[res] = ans
    verification = await _verify(source, rows, query)
    return build(
        rows,
        query,
        source=source.label,
        kinds=kinds,
        start=start,
        verification=verification,
        truncated=truncated,
    )


async def _select(
    source: StoreSource | HttpSource, query: Query
) -> tuple[list[dict[str, Any]], bool]:
    prefixes: list[str | None] = list(dict.fromkeys(query.resources)) or [None]
    # a prefix below another one adds nothing
    prefixes = [
        p
        for p in prefixes
        if p is None or not any(q is not None and q != p and _res.under(p, q) for q in prefixes)
    ]
    found: dict[int, dict[str, Any]] = {}
    truncated = False
    for prefix in prefixes:
        after = 0
        while True:
            want = min(PAGE * 10, query.limit + 1 - len(found))
            if want <= 0:
                truncated = True
                break
            page = await source.rows(prefix, query.since, query.until, after, want)
            for r in page:
                found.setdefault(r["seq"], r)
            if len(page) < want:
                break
            after = page[-1]["seq"]
    rows = [found[s] for s in sorted(found)]
    if len(rows) > query.limit:
        rows, truncated = rows[: query.limit], True
    return rows, truncated


def _lane_resources(rows: Iterable[dict[str, Any]], asked: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in asked:
        seen.setdefault(name, None)
    for r in rows:
        res = r.get("resource")
        if isinstance(res, str) and not res.startswith("principals/"):
            seen.setdefault(res, None)
    return list(seen)


def _row_problem(row: dict[str, Any], seq: int | None, prev: str | None) -> str | None:
    """Why ``row`` is not sealed as writ seals rows (None when it is)."""
    body = {k: v for k, v in row.items() if k != "hash"}
    if seq is not None and row.get("seq") != seq:
        return f"row {row.get('seq')} where {seq} was expected (a row is missing or extra)"
    if prev is not None and row.get("prev_hash") != prev:
        return f"row {row.get('seq')}: prev_hash does not name the row before it"
    h = hashlib.sha256((str(row.get("prev_hash")) + canonical(body)).encode()).hexdigest()
    if h != row.get("hash"):
        return f"row {row.get('seq')}: hash does not match the row's contents"
    return None


async def _verify(
    source: StoreSource | HttpSource, rows: list[dict[str, Any]], query: Query
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rows": len(rows),
        "rows_ok": 0,
        "bad": [],
        "links": 0,
        "links_ok": 0,
        "segment": None,
    }
    prev: dict[str, Any] | None = None
    for r in rows:
        bad = _row_problem(r, None, None)
        if bad:
            out["bad"].append({"seq": r.get("seq"), "reason": bad})
        else:
            out["rows_ok"] += 1
        if prev is not None and r.get("seq") == prev.get("seq", 0) + 1:
            out["links"] += 1
            if r.get("prev_hash") == prev.get("hash"):
                out["links_ok"] += 1
            else:
                out["bad"].append(
                    {
                        "seq": r.get("seq"),
                        "reason": f"row {r.get('seq')}: prev_hash does not name row "
                        f"{prev.get('seq')}",
                    }
                )
        prev = r
    if rows:
        first, last = rows[0]["seq"], rows[-1]["seq"]
        span = last - first + 1
        out["first_seq"], out["last_seq"] = first, last
        if span == len(rows):
            out["segment"] = {
                "first": first,
                "last": last,
                "ok": not out["bad"],
                "rows": span,
                "reason": None,
                "contiguous": True,
            }
        elif span <= MAX_SEGMENT:
            ok, n, reason = await source.segment(first, last, rows[0].get("prev_hash") or GENESIS)
            out["segment"] = {
                "first": first,
                "last": last,
                "ok": ok,
                "rows": n,
                "reason": reason,
                "contiguous": False,
            }
    out["ok"] = not out["bad"] and (out["segment"] is None or out["segment"]["ok"])
    return out


# ----------------------------------------------------------------------------- build
_GRANTED = re.compile(r"^granted (\S+) for (['\"])(.*)\2, ttl (\S+?)s")
_CHANGE = re.compile(r"^(.*?): (.*); protected until (\S+)$")
_ASK = re.compile(r"^(\S+) asks (\S+) to undo (\S+) \((.*)\): (.*); answer by (\S+)$")
_ANSWER = re.compile(
    r"^(\S+) (granted|denied) (\S+)'s request to undo (\S+) \(change (\S+) by (\S+)\)$"
)
_EXPIRED = re.compile(
    r"^(\S+) did not answer (\S+)'s consent request by (\S+): .*escalated to (\S+)"
)
_USED = re.compile(r"^consent (\S+) from (\S+) used for change (\S+) by (\S+)$")
_RB_ASK = re.compile(r"^(\S+) asks (\S+) to roll back (\S+): (.*)$")
_REFUSED = re.compile(r"^refused (['\"])(.*?)\1: (.*)$", re.S)
_QUEUED = re.compile(r"^queued at position (\d+) for up to (\S+?)s: (.*)$", re.S)


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
    notes = row.get("notes") or ""
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


def build(
    rows: list[dict[str, Any]],
    query: Query,
    *,
    source: str = "",
    kinds: dict[str, str] | None = None,
    start: dict[str, dict[str, Any]] | None = None,
    verification: dict[str, Any] | None = None,
    truncated: bool = False,
) -> dict[str, Any]:
    """The report, as a plain JSON-ready dict, from the selected rows."""
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[str(r.get("event"))] += 1
    first_ts = rows[0]["timestamp"] if rows else None
    last_ts = rows[-1]["timestamp"] if rows else None
    w_from = rfc3339(query.since) if query.since is not None else first_ts
    w_to = rfc3339(query.until) if query.until is not None else last_ts
    multi_day = bool(w_from and w_to and w_from[:10] != w_to[:10])

    holders = _holders(rows, start or {}, w_to)
    changes = _changes(rows)
    refusals, waits = _refusals(rows)
    consents = _consents(rows)
    rollbacks = _rollbacks(rows)
    stuck = [
        _plain(r)
        for r in rows
        if r.get("event")
        in (
            "lease.stuck",
            "lease.paged",
            "wake.delivered",
            "wake.failed",
            "page.delivered",
            "page.failed",
        )
    ]
    revocations = [
        {**_plain(r), "provenance": r.get("second_key_revoke_provenance")}
        for r in rows
        if r.get("event") == "lease.revoked"
    ]
    freezes = [_plain(r) for r in rows if str(r.get("event", "")).startswith("freeze.")]
    lint = _lint(rows, kinds or {})
    timeline = [_plain(r) for r in rows if r.get("event") not in TIMELINE_QUIET]
    agents = sorted({str(r.get("agent_id")) for r in rows if r.get("agent_id")})
    # a lane for each resource someone held, or that a row other than principal.added is about
    drawn = {h["resource"] for h in holders}
    drawn.update(r.get("resource") for r in rows if r.get("event") != "principal.added")
    lanes = [res for res in _lane_resources(rows, query.resources) if res in drawn]
    report: dict[str, Any] = {
        "title": query.title or _title(query, lanes),
        "generated_by": "writ postmortem",
        "source": {
            "ledger": source,
            "resources": query.resources or ["(all)"],
            "since": rfc3339(query.since),
            "until": rfc3339(query.until),
            "rows": len(rows),
            "truncated": truncated,
            "first_seq": rows[0]["seq"] if rows else None,
            "last_seq": rows[-1]["seq"] if rows else None,
        },
        "window": {
            "from": w_from,
            "to": w_to,
            "first_row": first_ts,
            "last_row": last_ts,
            "multi_day": multi_day,
            "seconds": _secs(w_from, w_to),
        },
        "counts": dict(sorted(counts.items())),
        "agents": agents,
        "lanes": lanes,
        "holders": holders,
        "changes": changes,
        "refusals": refusals,
        "waits": waits,
        "consents": consents,
        "rollbacks": rollbacks,
        "stuck": stuck,
        "revocations": revocations,
        "freezes": freezes,
        "lint": lint,
        "verification": verification or {},
        "timeline": timeline,
        "timeline_quiet": {e: counts[e] for e in sorted(TIMELINE_QUIET) if counts.get(e)},
    }
    report["impact"] = _impact(report)
    report["summary"] = _summary(report)
    return report


def _title(query: Query, lanes: list[str]) -> str:
    what = (
        ", ".join(query.resources)
        if query.resources
        else (
            ", ".join(lanes[:3]) + (f" and {len(lanes) - 3} more" if len(lanes) > 3 else "")
            if lanes
            else "all resources"
        )
    )
    return f"Postmortem draft: {what}"


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


def _holders(
    rows: list[dict[str, Any]], start: dict[str, dict[str, Any]], w_to: str | None
) -> list[dict[str, Any]]:
    open_: dict[str, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    ended: set[str] = set()  # a row about a lease after its end (lease.stuck) reopens nothing

    def opened(r: dict[str, Any], at: str | None, seq: int | None, before: bool) -> dict[str, Any]:
        h = {
            "resource": r.get("resource"),
            "holder": r.get("lock_holder"),
            "lock_key": r.get("lock_key"),
            "fencing_token": r.get("fencing_token"),
            "from": at,
            "to": None,
            "ended": "held",
            "end_seq": None,
            "grant_seq": seq,
            "intent": None,
            "ttl_s": None,
            "before_window": before,
        }
        open_[str(r.get("lock_key"))] = h
        return h

    for res, ans in start.items():
        lease = ans.get("lease") or {}
        key = ans.get("lock_key") or lease.get("lock_key")
        if not key or key in open_:
            continue
        h = opened(
            {
                "resource": lease.get("resource", res),
                "lock_holder": ans["lock_holder"],
                "lock_key": key,
                "fencing_token": lease.get("fencing_token"),
            },
            lease.get("acquired_at"),
            None,
            True,
        )
        h["intent"] = lease.get("intent")
    for r in rows:
        ev, key = r.get("event"), r.get("lock_key")
        if not key or not str(ev).startswith(("lease.", "change.", "consent.used")):
            continue
        if ev == "lease.granted":
            h = opened(r, r.get("timestamp"), r.get("seq"), False)
            m = _GRANTED.match(r.get("notes") or "")
            if m:
                h["intent"], h["ttl_s"] = m.group(3), float(m.group(4))
            continue
        if ev in ("lease.denied", "lease.queued", "lease.refused"):
            continue  # these name the blocker, whose own rows tell its story
        if str(key) in ended or (ev in ("lease.stuck", "lease.paged") and str(key) not in open_):
            continue  # about a lease that ended (or began before the window: who has it)
        h = open_.get(str(key)) or opened(r, r.get("lock_acquired_at"), None, True)
        if ev in END_EVENTS:
            h.update(to=r.get("timestamp"), ended=END_EVENTS[str(ev)], end_seq=r.get("seq"))
            done.append(open_.pop(str(key)))
            ended.add(str(key))
    done.extend(open_.values())
    for h in done:
        h["seconds"] = _secs(h["from"], h["to"] or w_to)
    done.sort(key=lambda h: (h["from"] or "", h["resource"] or ""))
    return done


def _changes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.get("event") != "change.recorded":
            continue
        m = _CHANGE.match(r.get("notes") or "")
        out.append(
            {
                **_plain(r),
                "attribute": m.group(1) if m else None,
                "summary": m.group(2) if m else r.get("notes"),
                "protected_until": m.group(3) if m else None,
            }
        )
    return out


def _refusals(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    refusals, waits = [], []
    queued: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        ev = r.get("event")
        if ev in ("lease.denied", "lease.refused", "gate.refused"):
            kind, intent, why = classify_refusal(r)
            refusals.append({**_plain(r), "kind": kind, "intent": intent, "reason": why})
            w = queued.pop((str(r.get("agent_id")), str(r.get("resource"))), None)
            if w is not None:
                w.update(outcome="refused", until=r.get("timestamp"), end_seq=r.get("seq"))
        elif ev == "lease.queued":
            m = _QUEUED.match(r.get("notes") or "")
            w = {
                **_plain(r),
                "position": int(m.group(1)) if m else None,
                "wait_s": float(m.group(2)) if m else None,
                "reason": m.group(3) if m else r.get("notes"),
                "outcome": "waiting",
                "until": None,
                "end_seq": None,
            }
            waits.append(w)
            queued[(str(r.get("agent_id")), str(r.get("resource")))] = w
        elif ev == "lease.granted":
            w = queued.pop((str(r.get("lock_holder")), str(r.get("resource"))), None)
            if w is not None:
                w.update(
                    outcome="granted",
                    until=r.get("timestamp"),
                    end_seq=r.get("seq"),
                    fencing_token=r.get("fencing_token"),
                )
    for w in waits:
        w["seconds"] = _secs(w["at"], w["until"])
    return refusals, waits


def _consents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: dict[tuple[str, str, str], deque[dict[str, Any]]] = defaultdict(deque)
    granted: dict[tuple[str, str], deque[dict[str, Any]]] = defaultdict(deque)
    for r in rows:
        ev, notes = r.get("event"), r.get("notes") or ""
        if ev == "consent.requested":
            m = _ASK.match(notes)
            c = {
                "seq": r.get("seq"),
                "at": r.get("timestamp"),
                "resource": r.get("resource"),
                "requester": m.group(1) if m else r.get("agent_id"),
                "author": m.group(2) if m else None,
                "attribute": m.group(3) if m else None,
                "change": m.group(4) if m else None,
                "reason": m.group(5) if m else notes,
                "answer_by": m.group(6) if m else None,
                "status": "pending",
                "answered_by": None,
                "answered_at": None,
                "answer_seq": None,
                "expired_at": None,
                "escalated_to": None,
                "used_at": None,
                "used_seq": None,
                "holder": r.get("lock_holder"),
            }
            out.append(c)
            pending[(str(c["requester"]), str(c["author"]), str(c["attribute"]))].append(c)
        elif ev == "consent.expired":
            m = _EXPIRED.match(notes)
            cand = _first_pending(pending, m.group(2), m.group(1)) if m else None
            if m and cand is not None:
                cand.update(
                    status="expired",
                    expired_at=r.get("timestamp"),
                    escalated_to=m.group(4),
                    expired_seq=r.get("seq"),
                )
        elif ev in ("consent.granted", "consent.denied"):
            m = _ANSWER.match(notes)
            if m:
                q = pending.get((m.group(3), m.group(6), m.group(4)))
                c2 = q.popleft() if q else None
                if c2 is not None:
                    c2.update(
                        status=m.group(2),
                        answered_by=m.group(1),
                        answered_at=r.get("timestamp"),
                        answer_seq=r.get("seq"),
                        change_id=m.group(5),
                    )
                    if c2["status"] == "granted":
                        granted[(str(c2["requester"]), str(c2["author"]))].append(c2)
        elif ev == "consent.used":
            m = _USED.match(notes)
            if m:
                g = granted.get((str(r.get("agent_id")), m.group(4)))
                c3 = g.popleft() if g else None
                if c3 is not None:
                    c3.update(status="used", used_at=r.get("timestamp"), used_seq=r.get("seq"))
    for c in out:
        c["seconds"] = _secs(c["at"], c["answered_at"])
    return out


def _first_pending(
    pending: dict[tuple[str, str, str], deque[dict[str, Any]]], requester: str, author: str
) -> dict[str, Any] | None:
    for (req, auth, _attr), q in pending.items():
        if req == requester and auth == author:
            for c in q:
                if c["status"] == "pending":
                    return c
    return None


def _rollbacks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by_key: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
    for r in rows:
        ev = str(r.get("event"))
        if not ev.startswith("rollback."):
            continue
        key = str(r.get("lock_key"))
        if ev == "rollback.requested":
            m = _RB_ASK.match(r.get("notes") or "")
            rb = {
                "seq": r.get("seq"),
                "at": r.get("timestamp"),
                "resource": r.get("resource"),
                "lock_key": r.get("lock_key"),
                "holder": r.get("lock_holder"),
                "requested_by": r.get("agent_id"),
                "key_holder": r.get("rollback_key_holder"),
                "queue": r.get("human_override_queue"),
                "path": r.get("rollback_path"),
                "reason": m.group(4) if m else r.get("notes"),
                "status": "pending",
                "decided_by": None,
                "decided_at": None,
                "decision_seq": None,
                "result": None,
                "result_at": None,
                "result_seq": None,
                "defect": None,
            }
            out.append(rb)
            by_key[key].append(rb)
            continue
        q = by_key.get(key)
        cur = next((x for x in (q or []) if x["status"] in ("pending", "approved")), None)
        if cur is None and ev != "rollback.defect":
            continue
        if ev in ("rollback.approved", "rollback.denied"):
            assert cur is not None
            cur.update(
                status=ev.split(".")[1],
                decided_by=r.get("agent_id"),
                decided_at=r.get("timestamp"),
                decision_seq=r.get("seq"),
            )
        elif ev in ("rollback.executed", "rollback.failed"):
            assert cur is not None
            cur.update(
                status=ev.split(".")[1],
                result=r.get("notes"),
                result_at=r.get("timestamp"),
                result_seq=r.get("seq"),
            )
        elif ev == "rollback.defect":
            done = [x for x in (q or []) if x["status"] in ("executed", "failed")]
            if done:
                done[-1]["defect"] = {
                    "by": r.get("agent_id"),
                    "at": r.get("timestamp"),
                    "seq": r.get("seq"),
                    "notes": r.get("notes"),
                }
    return out


def _lint(rows: list[dict[str, Any]], kinds: dict[str, str]) -> dict[str, Any]:
    try:
        from .lint import Linter
    except ImportError:  # pragma: no cover - lint ships with writ; a stripped build may not
        return {"available": False, "checked": 0, "verdicts": {}, "rows": [], "warnings": 0}
    linter = Linter(fragment=False, kinds=kinds)
    verdicts: dict[str, int] = defaultdict(int)
    flagged: list[dict[str, Any]] = []
    warnings = 0
    for r in rows:
        res = linter.check(r)
        verdicts[res.verdict] += 1
        warnings += len(res.warnings)
        if res.verdict != "accept":
            flagged.append(
                {
                    "seq": r.get("seq"),
                    "at": r.get("timestamp"),
                    "event": r.get("event"),
                    "verdict": res.verdict,
                    "findings": [
                        f.to_dict(guessed=True) for f in res.findings if f.verdict != "accept"
                    ],
                }
            )
    order = {"contaminated": 0, "reject": 1, "suspicious": 2}
    flagged.sort(key=lambda f: (order.get(f["verdict"], 3), f["seq"] or 0))
    return {
        "available": True,
        "checked": len(rows),
        "verdicts": dict(verdicts),
        "rows": flagged,
        "warnings": warnings,
        "registry": bool(kinds),
    }


def _impact(rep: dict[str, Any]) -> dict[str, Any]:
    firsts: dict[str, Any] = {}
    for name, items in (
        ("first_change", rep["changes"]),
        ("first_refusal", rep["refusals"]),
        ("first_consent_request", rep["consents"]),
        ("first_rollback_request", rep["rollbacks"]),
        ("first_revocation", rep["revocations"]),
        ("first_stuck", [s for s in rep["stuck"] if s["event"] == "lease.stuck"]),
    ):
        if items:
            firsts[name] = {"at": items[0]["at"], "seq": items[0]["seq"]}
    held: dict[str, float] = defaultdict(float)
    for h in rep["holders"]:
        held[h["resource"]] += h.get("seconds") or 0.0
    return {
        "from": rep["window"]["from"],
        "to": rep["window"]["to"],
        "seconds": rep["window"]["seconds"],
        "moments": firsts,
        "held_seconds": dict(held),
    }


def _summary(rep: dict[str, Any]) -> list[str]:
    w = rep["window"]
    out = []
    day = bool(w["multi_day"])
    if not rep["source"]["rows"]:
        return [
            f"The ledger has no rows for {', '.join(rep['source']['resources'])} between "
            f"{w['from'] or 'the beginning'} and {w['to'] or 'now'}."
        ]
    lanes = rep["lanes"]
    out.append(
        f"Between {when(w['from'], day)} and {when(w['to'], day)} UTC "
        f"({duration(w['seconds'])}), the ledger records {rep['source']['rows']} rows on "
        f"{len(lanes)} resource{'s' if len(lanes) != 1 else ''} by "
        f"{len(rep['agents'])} principal{'s' if len(rep['agents']) != 1 else ''} "
        f"({', '.join(rep['agents'][:6])}{', ...' if len(rep['agents']) > 6 else ''})."
    )
    hs = rep["holders"]
    if hs:
        names = sorted({str(h["holder"]) for h in hs})
        out.append(
            f"Write authority was granted or held {len(hs)} time"
            f"{'s' if len(hs) != 1 else ''}, by {', '.join(names)}."
        )
    if rep["changes"]:
        out.append(
            f"{len(rep['changes'])} change{'s were' if len(rep['changes']) != 1 else ' was'}"
            " recorded under a lease: "
            + "; ".join(
                f"{c['agent']} {c['summary'] or c['notes']} at {when(c['at'], day)}"
                for c in rep["changes"][:4]
            )
            + (f"; and {len(rep['changes']) - 4} more" if len(rep["changes"]) > 4 else "")
            + "."
        )
    if rep["refusals"]:
        kinds: dict[str, int] = defaultdict(int)
        for r in rep["refusals"]:
            kinds[r["kind"]] += 1
        out.append(
            f"writ refused {len(rep['refusals'])} request"
            f"{'s' if len(rep['refusals']) != 1 else ''} ("
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            + ")."
        )
    if rep["waits"]:
        out.append(
            f"{len(rep['waits'])} request{'s' if len(rep['waits']) != 1 else ''} waited "
            "in the queue: "
            + "; ".join(
                f"{w['agent']} on {w['resource']} from {when(w['at'], day)} "
                f"({w['outcome']}{' at ' + when(w['until'], day) if w['until'] else ''})"
                for w in rep["waits"][:4]
            )
            + "."
        )
    if rep["consents"]:
        out.append(
            "Consent was asked "
            + "; ".join(
                f"by {c['requester']} of {c['author']} at {when(c['at'], day)}: {_consent_outcome(c)}"
                for c in rep["consents"][:4]
            )
            + "."
        )
    if rep["rollbacks"]:
        out.append(
            "Rollbacks: "
            + "; ".join(
                f"{r['requested_by']} asked at {when(r['at'], day)}, {r['status']}"
                + (f" by {r['decided_by']}" if r["decided_by"] else "")
                for r in rep["rollbacks"][:4]
            )
            + "."
        )
    if rep["revocations"]:
        out.append(
            "Revoked: "
            + "; ".join(
                f"{r['holder']}'s lease on {r['resource']} by {r['agent']} at {when(r['at'], day)}"
                for r in rep["revocations"][:4]
            )
            + "."
        )
    stuck = [s for s in rep["stuck"] if s["event"] in ("lease.stuck", "lease.paged")]
    if stuck:
        out.append(
            f"{len(stuck)} stuck-lock step{'s' if len(stuck) != 1 else ''} "
            "(wake or page) were taken."
        )
    lint = rep["lint"]
    if lint.get("available"):
        bad = {k: v for k, v in lint["verdicts"].items() if k != "accept"}
        out.append(
            "Lint: every row is acceptable evidence."
            if not bad
            else "Lint flags "
            + ", ".join(f"{n} {k}" for k, n in sorted(bad.items()))
            + " row(s): see below."
        )
    v = rep["verification"]
    if v:
        out.append(
            "Hashes: "
            + (
                "every row used was verified."
                if v.get("ok")
                else f"{len(v.get('bad') or [])} problem(s) found: see below."
            )
        )
    return out


def _consent_outcome(c: dict[str, Any]) -> str:
    s = c["status"]
    if s in ("granted", "denied", "used"):
        verb = "granted" if s in ("granted", "used") else "denied"
        pre = (
            f"expired unanswered at {when(c['expired_at'])} (escalated to "
            f"{c['escalated_to']}), then "
            if c.get("expired_at")
            else ""
        )
        return f"{pre}{verb} by {c['answered_by']} at {when(c['answered_at'])}" + (
            f", used at {when(c['used_at'])}" if s == "used" else ""
        )
    if s == "expired":
        return (
            f"nobody answered; expired at {when(c['expired_at'])} (not a denial) and "
            f"escalated to {c['escalated_to']}"
        )
    return "still pending at the end of the window"


# ----------------------------------------------------------------------------- markdown
# Tables drawn alike in the Markdown and the HTML report: columns, cells, empty text. Where
# a cell is a status word, ``tag`` draws it (Markdown: as it is; HTML: a coloured badge).
Cells = list[tuple[Any, ...]]
Clock = Callable[[str | None], str]
Tag = Callable[[str], Any]

TIMELINE_COLUMNS = ["time", "seq", "event", "by", "resource", "lock holder", "what the row says"]
HOLDER_COLUMNS = ["resource", "holder", "lock key", "from", "to", "held", "ended", "intent"]
NO_HOLDERS = "Nobody held write authority on these resources in the window."
CHANGE_COLUMNS = [
    "time",
    "seq",
    "author",
    "resource",
    "token",
    "attribute",
    "change",
    "protected until",
]
NO_CHANGES = "No changes were recorded."
REFUSAL_COLUMNS = ["time", "seq", "who asked", "resource", "refused", "holder then", "why"]
NO_REFUSALS = "writ refused nothing in the window."
WAITS_INTRO = "Made to wait (FIFO queue, blast radius included):"
WAIT_COLUMNS = ["queued", "seq", "who", "resource", "position", "behind", "outcome", "waited"]
CONSENT_COLUMNS = ["asked", "seq", "requester", "author", "to undo", "reason", "answer", "took"]
NO_CONSENTS = "No consent was asked in the window."
ROLLBACK_COLUMNS = [
    "asked",
    "seq",
    "requested by",
    "lock key",
    "key holder",
    "route",
    "reason",
    "decision",
    "result",
]
NO_ROLLBACKS = "No rollback was requested in the window."
STUCK_COLUMNS = ["time", "seq", "event", "holder", "resource", "what happened"]
NO_STUCK = "No lock was stuck, and nobody was woken or paged about one."
REVOCATION_COLUMNS = [
    "time",
    "seq",
    "lease of",
    "resource",
    "lock key",
    "revoked by",
    "runbook",
    "after paging",
    "reason",
]
NO_REVOCATIONS = "No lease was revoked in the window."
FREEZE_COLUMNS = ["time", "seq", "event", "by", "prefix", "notes"]
LINT_COLUMNS = ["seq", "time", "event", "verdict", "findings"]
NO_LINT = "writ lint is not available in this build; rows were not judged."
LINT_CLEAN = "No row is contaminated, rejected or suspicious."
LINT_SHOWN = 200  # flagged rows listed at most


def timeline_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(e["at"]), e["seq"], e["event"], e["agent"], e["resource"], e["holder"], e["notes"])
        for e in rep["timeline"]
    ]


def change_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (
            t(c["at"]),
            c["seq"],
            c["agent"],
            c["resource"],
            c["fencing_token"],
            c["attribute"],
            c["summary"],
            t(c["protected_until"]),
        )
        for c in rep["changes"]
    ]


def refusal_cells(rep: dict[str, Any], t: Clock, tag: Tag) -> Cells:
    return [
        (t(r["at"]), r["seq"], r["agent"], r["resource"], tag(r["kind"]), r["holder"], r["reason"])
        for r in rep["refusals"]
    ]


def stuck_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(s["at"]), s["seq"], s["event"], s["holder"], s["resource"], s["notes"])
        for s in rep["stuck"]
    ]


def revocation_cells(rep: dict[str, Any], t: Clock) -> Cells:
    out: Cells = []
    for r in rep["revocations"]:
        p = r["provenance"] or {}
        out.append(
            (
                t(r["at"]),
                r["seq"],
                r["holder"],
                r["resource"],
                r["lock_key"],
                p.get("revoked_by"),
                p.get("via_runbook"),
                p.get("after_paging"),
                r["notes"],
            )
        )
    return out


def freeze_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(f["at"]), f["seq"], f["event"], f["agent"], f["resource"], f["notes"])
        for f in rep["freezes"]
    ]


def lint_cells(rep: dict[str, Any], t: Clock, tag: Tag) -> Cells:
    return [
        (
            f["seq"],
            t(f["at"]),
            f["event"],
            tag(f["verdict"]),
            "; ".join(f"{x['rule']} ({x['field']}): {x['reason']}" for x in f["findings"]),
        )
        for f in rep["lint"]["rows"][:LINT_SHOWN]
    ]


def _as_is(word: str) -> str:
    return word


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    return printable(v).replace("|", "\\|")


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def to_markdown(rep: dict[str, Any]) -> str:
    w, src = rep["window"], rep["source"]
    d = bool(w["multi_day"])

    def t(ts: str | None) -> str:
        return when(ts, d)

    day = (w["from"] or "")[:10]
    L: list[str] = [f"# {printable(rep['title'])}", ""]
    L.append(
        f"*Drafted by `writ postmortem` from the audit ledger ({src['ledger']}), rows "
        f"{src['first_seq']}–{src['last_seq']}; every fact below cites its row as [seq]. "
        f"Times are UTC{'' if d else ' on ' + day}.*"
    )
    if src["truncated"]:
        L.append(
            f"\n> **Truncated:** only the first {src['rows']} rows were read; narrow the "
            "window or the resources."
        )
    L += ["", "## Summary", ""] + [f"- {printable(s)}" for s in rep["summary"]]
    imp = rep["impact"]
    L += ["", "## Impact window", ""]
    L.append(
        f"- Window: {t(w['from'])} – {t(w['to'])} ({duration(w['seconds'])}); rows from "
        f"{t(w['first_row'])} to {t(w['last_row'])}."
    )
    for name, m in imp["moments"].items():
        L.append(f"- {name.replace('_', ' ').capitalize()}: {t(m['at'])} [{m['seq']}]")
    for res, secs in imp["held_seconds"].items():
        L.append(f"- Write authority on {res} held for {duration(secs)} of the window.")
    L.append(
        "- Customer impact, detection and root cause: *not in the ledger — to be written "
        "by the responders.*"
    )

    L += ["", "## Timeline", ""]
    L += _table(TIMELINE_COLUMNS, timeline_cells(rep, t))
    if rep["timeline_quiet"]:
        L.append("")
        L.append(
            "Not listed: "
            + ", ".join(f"{n} {e}" for e, n in rep["timeline_quiet"].items())
            + " rows."
        )

    L += ["", "## Who held write authority when", ""]
    if rep["holders"]:
        L += _table(
            HOLDER_COLUMNS,
            [
                (
                    h["resource"],
                    h["holder"],
                    h["lock_key"],
                    t(h["from"]) + (" (before window)" if h["before_window"] else ""),
                    t(h["to"]) if h["to"] else "still held",
                    duration(h.get("seconds")),
                    h["ended"] + (f" [{h['end_seq']}]" if h["end_seq"] else ""),
                    h["intent"],
                )
                for h in rep["holders"]
            ],
        )
    else:
        L.append(NO_HOLDERS)

    L += ["", "## Changes made", ""]
    L += _table(CHANGE_COLUMNS, change_cells(rep, t)) if rep["changes"] else [NO_CHANGES]

    L += ["", "## What writ refused, and why", ""]
    if rep["refusals"]:
        L += _table(REFUSAL_COLUMNS, refusal_cells(rep, t, _as_is))
    else:
        L.append(NO_REFUSALS)
    if rep["waits"]:
        L += ["", WAITS_INTRO, ""]
        L += _table(
            WAIT_COLUMNS,
            [
                (
                    t(q["at"]),
                    q["seq"],
                    q["agent"],
                    q["resource"],
                    q["position"],
                    q["holder"],
                    q["outcome"] + (f" at {t(q['until'])} [{q['end_seq']}]" if q["until"] else ""),
                    duration(q.get("seconds")),
                )
                for q in rep["waits"]
            ],
        )

    L += ["", "## Consents and their answers", ""]
    if rep["consents"]:
        L += _table(
            CONSENT_COLUMNS,
            [
                (
                    t(c["at"]),
                    c["seq"],
                    c["requester"],
                    c["author"],
                    f"{c['attribute']} ({c['change']})",
                    c["reason"],
                    _consent_outcome(c),
                    duration(c.get("seconds")),
                )
                for c in rep["consents"]
            ],
        )
        L.append("")
        L.append(
            "An unanswered request *expires*: it is never recorded as a denial, and it "
            "escalates to the override queue, which may still answer."
        )
    else:
        L.append(NO_CONSENTS)

    L += ["", "## Rollbacks and who approved them", ""]
    if rep["rollbacks"]:
        L += _table(
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
                    f"{r['status']}"
                    + (
                        f" by {r['decided_by']} at {t(r['decided_at'])} [{r['decision_seq']}]"
                        if r["decided_by"]
                        else ""
                    ),
                    (r["result"] or "-")
                    + (" — marked a defect by " + r["defect"]["by"] if r.get("defect") else ""),
                )
                for r in rep["rollbacks"]
            ],
        )
    else:
        L.append(NO_ROLLBACKS)

    L += ["", "## Stuck locks, wakes and pages", ""]
    L += _table(STUCK_COLUMNS, stuck_cells(rep, t)) if rep["stuck"] else [NO_STUCK]

    L += ["", "## Revocations (with provenance)", ""]
    L += (
        _table(REVOCATION_COLUMNS, revocation_cells(rep, t))
        if rep["revocations"]
        else [NO_REVOCATIONS]
    )

    if rep["freezes"]:
        L += ["", "## Freezes", ""]
        L += _table(FREEZE_COLUMNS, freeze_cells(rep, t))

    L += ["", "## Contaminated or suspicious rows (lint)", ""]
    lint = rep["lint"]
    if not lint.get("available"):
        L.append(NO_LINT)
    else:
        L.append(
            f"{lint['checked']} rows judged by `writ lint` ("
            + ", ".join(f"{n} {k}" for k, n in sorted(lint["verdicts"].items()))
            + (f", {lint['warnings']} warning(s)" if lint["warnings"] else "")
            + "); "
            + (
                "principal kinds from the server's registry."
                if lint["registry"]
                else "principal kinds guessed from names (no registry)."
            )
        )
        L.append("")
        if lint["rows"]:
            L += _table(LINT_COLUMNS, lint_cells(rep, t, _as_is))
        else:
            L.append(LINT_CLEAN)

    L += ["", "## Chain verification", ""]
    L += verification_text(rep["verification"])

    L += [
        "",
        "## For the responders to write",
        "",
        "- Detection: how and when did people learn of it?",
        "- Customer impact and its duration.",
        "- Root cause and contributing factors (the rows above say *who* and *when*, not *why*).",
        "- Action items, each with an owner.",
        "",
    ]
    return "\n".join(L)


def verification_text(v: dict[str, Any]) -> list[str]:
    """Plain statements of what was verified, and what was not."""
    if not v or not v.get("rows"):
        return ["No rows, nothing to verify."]
    out = [
        f"- Each of the {v['rows']} rows used was re-hashed: hash = sha256(prev_hash + "
        f"canonical JSON of the row); {v['rows_ok']} match."
    ]
    if v.get("links"):
        out.append(
            f"- {v['links_ok']} of {v['links']} adjacent pairs with consecutive seqs link "
            "(each row's prev_hash is the hash of the row before)."
        )
    seg = v.get("segment")
    if seg and seg.get("contiguous"):
        out.append(
            f"- The rows are the whole, unbroken run of seq {seg['first']}–{seg['last']}: "
            "no row in that range is missing."
        )
    elif seg:
        out.append(
            f"- The full seq range {seg['first']}–{seg['last']} ({seg['rows']} rows, "
            "including rows on other resources) was re-verified link by link: "
            + (
                "it is unbroken, so no row in the window was removed, inserted or edited "
                "without re-hashing everything after it."
                if seg["ok"]
                else f"BROKEN — {seg['reason']}."
            )
        )
    else:
        out.append(
            "- The rows are a filtered subset too far apart to re-verify the seq range "
            "between them here; gaps between their seqs hold other resources' rows."
        )
    for b in (v.get("bad") or [])[:20]:
        out.append(f"- **Problem:** {b['reason']}")
    out.append(
        "- Not proven here: that rows before and after this range are intact, or that "
        "the whole chain was not rewritten and re-hashed. `writ audit verify` checks the "
        "whole chain; `writ audit verify --checkpoint FILE` proves it still extends a "
        "signed checkpoint kept elsewhere."
    )
    return out


def to_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=2, ensure_ascii=False) + "\n"
