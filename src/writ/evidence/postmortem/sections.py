"""The report's sections drawn from the rows: holders, changes, refusals and waits, consents, rollbacks, lint."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from writ.evidence.postmortem.notes import (
    _QUEUED,
    _USED,
    UNKNOWN,
    Changes,
    _plain,
    _secs,
    answer_said,
    ask_said,
    change_said,
    classify_refusal,
    expired_said,
    granted,
    rollback_asked,
    rollback_named,
    undo_split,
    waiter_of,
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
            said = granted(r.get("notes") or "")
            if said:
                h["intent"], h["ttl_s"] = said
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
        said = change_said(r.get("notes") or "")
        out.append(
            {
                **_plain(r),
                "attribute": said[0] if said else UNKNOWN,
                "summary": said[1] if said else r.get("notes"),
                "protected_until": said[2] if said else None,
            }
        )
    return out


def _refusals(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    refusals, waits = [], []
    by_id: dict[str, dict[str, Any]] = {}  # today's waits, by the waiter each row names
    by_who: dict[tuple[str, str], dict[str, Any]] = {}  # an older writ's, by who and where

    def ended(r: dict[str, Any], who: Any) -> dict[str, Any] | None:
        """The wait row ``r`` (by ``who``) ends: the one it names, its principal's; for an
        older writ's row (or the end of an older writ's wait), its principal's last on its
        resource."""
        wid = waiter_of(r)
        if wid is not None and wid in by_id:
            return by_id.pop(wid) if by_id[wid]["agent"] == who else None
        w = by_who.get((str(who), str(r.get("resource"))))
        if w is None or w["outcome"] != "waiting" or (wid and w["waiter_id"]):
            return None
        return by_who.pop((str(who), str(r.get("resource"))))

    for r in rows:
        ev = r.get("event")
        if ev in ("lease.denied", "lease.refused", "gate.refused"):
            kind, intent, why = classify_refusal(r)
            refusals.append({**_plain(r), "kind": kind, "intent": intent, "reason": why})
            w = ended(r, r.get("agent_id"))
            if w is not None:
                w.update(outcome="refused", until=r.get("timestamp"), end_seq=r.get("seq"))
        elif ev == "lease.queued":
            m = _QUEUED.match(r.get("notes") or "")
            w = {
                **_plain(r),
                "position": int(m.group(1)) if m else None,
                "wait_s": float(m.group(2)) if m else None,
                "reason": m.group(3) if m else r.get("notes"),
                "waiter_id": m.group(4) if m else None,
                "outcome": "waiting",
                "until": None,
                "end_seq": None,
            }
            waits.append(w)
            if w["waiter_id"]:
                by_id[w["waiter_id"]] = w
            by_who[(str(r.get("agent_id")), str(r.get("resource")))] = w
        elif ev == "lease.granted":
            w = ended(r, r.get("lock_holder"))
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


Consent = dict[str, Any]
Asks = dict[tuple[str, str], list[Consent]]


def _consents(rows: list[dict[str, Any]]) -> list[Consent]:
    """Each ask, with what became of it. Today's asks and answers name the consent (``;
    consent ID``): an answer and a use go to the ask they name; an expiry to the ask of its
    requester, author and answer-by time. An older writ's rows (no id) are paired as they
    always were: an answer with the first unanswered ask of its requester, author and
    attribute, a use with the first granted one of its requester and author."""
    out: list[Consent] = []
    by_id: dict[str, Consent] = {}
    older: Asks = defaultdict(list)  # the asks that name no consent, by requester and author
    by_deadline: dict[tuple[str, str, str], list[Consent]] = defaultdict(list)
    changes = Changes()  # each author's on each resource: the one an ask names
    for r in rows:
        ev, notes = r.get("event"), r.get("notes") or ""
        if ev == "change.recorded":
            head, sep, _ = notes.rpartition("; protected until ")
            if sep:
                changes.add(str(r.get("resource")), str(r.get("agent_id")), head)
        elif ev == "consent.requested":
            c = _asked(r, changes)
            out.append(c)
            if c["consent_id"]:
                by_id[c["consent_id"]] = c
            else:
                older[(c["requester"], c["author"])].append(c)
            if c["answer_by"]:
                by_deadline[(c["requester"], c["author"], c["answer_by"])].append(c)
        elif ev == "consent.expired":
            _expired(r, by_id, by_deadline, older)
        elif ev in ("consent.granted", "consent.denied"):
            _answered(r, by_id, older)
        elif ev == "consent.used":
            m = _USED.match(notes)
            if m is None:
                continue
            c2 = by_id.get(m.group(1))
            if c2 is None:
                key = (str(r.get("agent_id")), m.group(4))
                c2 = next((c for c in older.get(key, ()) if c["status"] == "granted"), None)
            if c2 is not None and c2["status"] == "granted":
                c2.update(status="used", used_at=r.get("timestamp"), used_seq=r.get("seq"))
    for c in out:
        c["seconds"] = _secs(c["at"], c["answered_at"])
        del c["_rest"]
    return out


def _asked(r: dict[str, Any], changes: Changes) -> Consent:
    notes = r.get("notes") or ""
    said = ask_said(notes)
    author = said["author"] or UNKNOWN
    rest = said["rest"]
    parts = (
        changes.asked(str(r.get("resource")), author, rest) or undo_split(rest)
        if rest is not None
        else None
    )
    return {
        "seq": r.get("seq"),
        "at": r.get("timestamp"),
        "resource": r.get("resource"),
        "consent_id": said["consent_id"],
        "requester": said["requester"] or r.get("agent_id") or UNKNOWN,
        "author": author,
        "attribute": parts[0] if parts else UNKNOWN,
        "change": parts[1] if parts else UNKNOWN,
        "reason": parts[2] if parts else notes,
        "answer_by": said["answer_by"],
        "status": "pending",
        "answered_by": None,
        "answered_at": None,
        "answer_seq": None,
        "expired_at": None,
        "escalated_to": None,
        "used_at": None,
        "used_seq": None,
        "holder": r.get("lock_holder"),
        "_rest": rest,  # the agents' words, parted again once an answer names the attribute
    }


def _expired(
    r: dict[str, Any],
    by_id: dict[str, Consent],
    by_deadline: dict[tuple[str, str, str], list[Consent]],
    older: Asks,
) -> None:
    said = expired_said(r.get("notes") or "")
    if said is None:
        return
    author, requester, by, queue, consent_id = said
    named = by_id.get(consent_id) if consent_id else None
    if named is not None:  # the ask it names; an older writ's: the one with its deadline
        pending = [named] if named["status"] == "pending" else []
    else:
        pending = [
            c for c in by_deadline.get((requester, author, by), ()) if c["status"] == "pending"
        ]
    if not pending:  # an ask whose answer-by time its row does not say
        pending = [
            c
            for c in older.get((requester, author), ())
            if c["status"] == "pending" and c["answer_by"] is None
        ]
    if pending:
        pending[0].update(
            status="expired",
            expired_at=r.get("timestamp"),
            escalated_to=queue,
            expired_seq=r.get("seq"),
        )


def _answered(r: dict[str, Any], by_id: dict[str, Consent], older: Asks) -> None:
    said = answer_said(r.get("notes") or "")
    if said is None:
        return
    attr = said["attribute"]
    c = by_id.get(said["consent_id"]) if said["consent_id"] else None
    if c is None:  # an older writ's ask (or answer): the first unanswered one like it
        c = next(
            (
                c
                for c in older.get((said["requester"], said["author"]), ())
                if c["status"] in ("pending", "expired")
                and (c["attribute"] == attr or (c["_rest"] or "").startswith(attr + " ("))
            ),
            None,
        )
    if c is None or c["status"] not in ("pending", "expired"):
        return
    c.update(
        status=said["status"],
        answered_by=said["by"],
        answered_at=r.get("timestamp"),
        answer_seq=r.get("seq"),
        change_id=said["change_id"],
    )
    if c["author"] == UNKNOWN:  # an ask worded otherwise: its answer names them
        c.update(requester=said["requester"], author=said["author"])
    if c["attribute"] != attr:  # the answer names the attribute exactly
        parts = undo_split(c["_rest"], attr) if c["_rest"] is not None else None
        c.update(attribute=attr)
        if parts:
            c.update(change=parts[1], reason=parts[2])


def _rollbacks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each rollback request, with its decision, outcome and defect. Today's rows name the
    rollback (``; rollback ID``, an outcome's ``rollback ID approved by``): each goes to the
    one it names. An older writ's go to the first undecided request on their lock key."""
    out: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        ev = str(r.get("event"))
        if not ev.startswith("rollback."):
            continue
        key = str(r.get("lock_key"))
        if ev == "rollback.requested":
            rb_id, reason = rollback_asked(r)
            rb = {
                "seq": r.get("seq"),
                "at": r.get("timestamp"),
                "rollback_id": rb_id,
                "resource": r.get("resource"),
                "lock_key": r.get("lock_key"),
                "holder": r.get("lock_holder"),
                "requested_by": r.get("agent_id"),
                "key_holder": r.get("rollback_key_holder"),
                "queue": r.get("human_override_queue"),
                "path": r.get("rollback_path"),
                "reason": reason,
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
            if rb_id:
                by_id[rb_id] = rb
            continue
        if ev == "rollback.defect":  # the one it names; an older writ's: the last that ran
            named = by_id.get(rollback_named(r) or "")
            done = (
                [named]
                if named is not None
                else [x for x in by_key.get(key, ()) if x["status"] in ("executed", "failed")]
            )
            if done:
                done[-1]["defect"] = {
                    "by": r.get("agent_id"),
                    "at": r.get("timestamp"),
                    "seq": r.get("seq"),
                    "notes": r.get("notes"),
                }
            continue
        cur = _decided(r, key, by_id, by_key)
        if cur is None:
            continue
        if ev in ("rollback.approved", "rollback.denied"):
            cur.update(
                status=ev.split(".")[1],
                decided_by=r.get("agent_id"),
                decided_at=r.get("timestamp"),
                decision_seq=r.get("seq"),
            )
        elif ev in ("rollback.executed", "rollback.failed"):
            cur.update(
                status=ev.split(".")[1],
                result=r.get("notes"),
                result_at=r.get("timestamp"),
                result_seq=r.get("seq"),
            )
    return out


def _decided(
    r: dict[str, Any],
    key: str,
    by_id: dict[str, dict[str, Any]],
    by_key: dict[str, list[dict[str, Any]]],
) -> dict[str, Any] | None:
    """The request a decision or outcome row ``r`` is about: the one it names; for an
    older writ's row, the first undecided one on its lock key."""
    rb_id = rollback_named(r)
    if rb_id is not None and rb_id in by_id:
        return by_id[rb_id]
    undecided: Iterable[dict[str, Any]] = (
        x
        for x in by_key.get(key, ())
        if x["status"] in ("pending", "approved") and not (rb_id and x["rollback_id"])
    )
    return next(iter(undecided), None)


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
