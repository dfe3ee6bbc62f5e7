"""Pages of the ledger as the clients read them (``iter_audit``, ``watch``, ``last_seq``, the
MCP tool ``watch_events``), whoever answers at the URL: a page is what writ sends or
:class:`~writ.Unavailable`, the head is found within the seqs a store can hold, and a watch
does not poll faster than once a second while the answers bring nothing."""

from __future__ import annotations

import reprlib
from collections.abc import Generator
from typing import Any

from writ.core.errors import Unavailable
from writ.core.textsafe import printable

JSON = dict[str, Any]
MAX_SEQ = 2**63 - 1  # a seq is a BIGINT in every store
#: ``watch``: two polls that brought no rows are at least this far apart (their start), so
#: a server answering every long poll at once with nothing is not asked in a busy loop
QUIET_POLL_S = 1.0


def _broken(what: str, out: Any) -> Unavailable:
    return Unavailable(
        f"the server answered a read of the ledger with {what}, which writ never sends: "
        f"{printable(reprlib.repr(out))}"
    )


def page(out: JSON, cursor: int) -> tuple[list[JSON], int]:
    """The rows of an audit or events page read after ``cursor``, and the cursor after it."""
    rows, nxt = out.get("rows") or [], out.get("next_after_seq")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("seq"), int) for r in rows
    ):
        raise _broken("rows that are not rows", out)
    if any(r["seq"] <= cursor for r in rows):  # a watch given them again asked in a busy loop
        raise _broken(f"rows at or before seq {cursor}, the one it was asked after", out)
    if nxt is None:
        return rows, cursor
    if not isinstance(nxt, int) or isinstance(nxt, bool) or not 0 <= nxt <= MAX_SEQ:
        raise _broken("a next_after_seq that is no seq", out)
    return rows, max(cursor, nxt)


def head_search() -> Generator[int, bool, int]:
    """Find the newest seq (seqs run 1, 2, 3 ...): yields ``n``, is sent "are there rows
    after n?", returns the head. Exponential then binary search, at most 64 doublings: a
    server saying there are always rows after (it answered forever) is :class:`Unavailable`."""
    lo, hi = 0, 1
    while (yield hi):  # rows after hi: the head is further on
        if hi > MAX_SEQ:
            raise _broken("rows after every seq a store can hold", hi)
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # rows after lo (when lo > 0), none after hi
        mid = (lo + hi) // 2
        if (yield mid):
            lo = mid
        else:
            hi = mid
    if lo > 0:
        return hi
    return 1 if (yield 0) else 0


def after(probe: int, out: JSON) -> bool:
    """Whether an audit page read after ``probe`` says there are rows after it: rows shown,
    or a ``next_after_seq`` moved past rows this reader may not see (closed mode)."""
    rows, nxt = page(out, probe)
    return bool(rows) or nxt > probe
