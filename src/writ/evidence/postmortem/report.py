"""Build the report dict from the gathered rows: title, summary, impact window and the sections."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from writ.core.clock import rfc3339
from writ.evidence.postmortem.notes import _plain, _secs, duration, when
from writ.evidence.postmortem.query import TIMELINE_QUIET, Query, _lane_resources
from writ.evidence.postmortem.sections import (
    _changes,
    _consents,
    _holders,
    _lint,
    _refusals,
    _rollbacks,
)

if TYPE_CHECKING:
    pass


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
                else f"BROKEN, {len(v.get('bad') or [])} problem(s) found: see below."
            )
        )
    if v.get("changed_by_hand"):
        out.append(
            f"Leases table: {len(v['changed_by_hand'])} column(s) of a lease held when the "
            "window opened disagree with its hashed rows (changed by hand); the report shows "
            "what the rows say: see below."
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
