"""The report's sections drawn from the rows: holders, changes, refusals and waits, consents, rollbacks, lint."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

from writ.evidence.postmortem.notes import (
    _ANSWER,
    _ASK,
    _CHANGE,
    _EXPIRED,
    _GRANTED,
    _QUEUED,
    _RB_ASK,
    _USED,
    _plain,
    _secs,
    classify_refusal,
)
from writ.evidence.postmortem.query import END_EVENTS

if TYPE_CHECKING:
    pass


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
        from writ.evidence.lint import Linter
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
