"""Gather a postmortem: select the rows of the lanes and window, and re-verify the chain they belong to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from writ.core import resources as _res
from writ.core.ledger import GENESIS, UNREADABLE
from writ.evidence.postmortem.query import MAX_SEGMENT, PAGE, Query, _lane_resources
from writ.evidence.postmortem.report import build
from writ.evidence.postmortem.sources import HttpSource, StoreSource, _row_problem

if TYPE_CHECKING:
    pass


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
    # who answers from the rows; a leases-table column that disagrees with them is named
    changed = [
        c for a in start.values() for c in (a.get("lease") or {}).get("changed_by_hand") or []
    ]
    if changed:
        verification["changed_by_hand"] = changed
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
        if (
            prev is not None
            and r.get("seq") == prev.get("seq", 0) + 1
            and r.get("event") != UNREADABLE  # its prev_hash is unknown: already a problem
        ):
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
