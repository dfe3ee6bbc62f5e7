"""Large reads answered page by page: ``GET /v1/audit?limit=100000`` must not stall the
event loop for everyone else (docs/security.md, "Limits").

The body is the one a single read would give — ``{"rows": [...], "next_after_seq": N}``,
as compact JSON — but it is read from the store and encoded :data:`PAGE` rows at a time,
streamed as it goes, and the loop serves other requests between pages. Bad parameters
fail before the answer starts (the first page is read first); a store failure after that
cuts the body short, so the client sees an incomplete answer rather than a partial one
that parses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse

from writ.core.bulk import PAGE as BULK_PAGE
from writ.core.bulk import Turns
from writ.engine import Engine

__all__ = ["PAGE", "audit_response", "paged_response"]

PAGE = BULK_PAGE  # rows per store read and per chunk of the answer


def _items(shown: list[dict[str, Any]], sep: str) -> str:
    return (sep + ",".join(_dumps(r) for r in shown)) if shown else ""


def _dumps(value: Any) -> str:
    # what starlette's JSONResponse writes, so a paged answer reads like a single one
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def audit_response(
    engine: Engine,
    after_seq: int,
    limit: int,
    prefix: str | None,
    since: float | None,
    until: float | None,
    view: Callable[[dict[str, Any]], dict[str, Any]] = lambda page: page,
) -> dict[str, Any] | StreamingResponse:
    """The answer to ``GET /v1/audit``: a plain dict for a page or less, else a stream.
    ``view`` filters each page to what the caller may read (the authority rule); the pages
    and ``next_after_seq`` follow the rows read, shown or not, as a single read would."""
    async with engine.bulk.page():  # a filtered first page is bulk work too (core.bulk)
        first = await engine.audit(after_seq, min(limit, PAGE), prefix, since, until)
    if limit <= PAGE or len(first["rows"]) < PAGE:
        return view(first)

    async def body() -> AsyncIterator[bytes]:
        page, left, last = first["rows"], limit, int(first["next_after_seq"])
        text = _items(view({"rows": page})["rows"], "")
        yield b'{"rows":[' + text.encode()
        sep = "," if text else ""
        while True:
            left -= len(page)
            last = int(page[-1]["seq"])
            if left <= 0 or len(page) < PAGE:
                break
            async with engine.bulk.page():  # one page of any bulk read at a time, then others
                page = (await engine.audit(last, min(left, PAGE), prefix, since, until))["rows"]
                text = _items(view({"rows": page})["rows"], sep) if page else ""
            if not page:
                break
            sep = sep or ("," if text else "")
            yield text.encode()
        yield f'],"next_after_seq":{last}}}'.encode()

    return StreamingResponse(body(), media_type="application/json")


async def paged_response(
    turns: Turns,
    key: str,
    limit: int,
    page: Callable[[int, int | None, bool], Awaitable[tuple[list[dict[str, Any]], int | None]]],
    view: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> dict[str, Any] | StreamingResponse:
    """``{key: [...]}`` for a list read newest first by fencing token, as
    :func:`audit_response` answers the ledger: a plain dict when one page holds it, else
    streamed :data:`PAGE` store rows at a time. ``page(n, before, whole)`` reads up to ``n``
    rows below token ``before`` (``whole``: as the whole answer) and says where the next page
    starts (None: nothing is left);
    ``view`` filters a page to what the caller may see. Each page is read on its own
    (a lease that changes between two pages is shown as its page found it), and none is
    shown twice: the pages follow the tokens down."""
    async with turns.page():  # the first page takes its turn as the others do
        first, floor = await page(min(limit, PAGE), None, limit <= PAGE)
    if limit <= PAGE or floor is None:
        return {key: view(first)}

    async def body() -> AsyncIterator[bytes]:
        left, below = limit - PAGE, floor  # type: int, int | None
        text = _items(view(first), "")
        yield b'{"' + key.encode() + b'":[' + text.encode()
        sep = "," if text else ""
        while left > 0 and below is not None:
            async with turns.page():  # one page of any bulk read at a time, then others
                items, below = await page(min(left, PAGE), below, False)
                text = _items(view(items), sep)
            left -= PAGE
            sep = sep or ("," if text else "")
            yield text.encode()
        yield b"]}"

    return StreamingResponse(body(), media_type="application/json")
