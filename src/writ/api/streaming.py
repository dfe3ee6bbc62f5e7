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

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from writ.engine import Engine

__all__ = ["PAGE", "audit_response"]

PAGE = 1000  # rows per store read and per chunk of the answer


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
    first = await engine.audit(after_seq, min(limit, PAGE), prefix, since, until)
    if limit <= PAGE or len(first["rows"]) < PAGE:
        return view(first)

    async def body() -> AsyncIterator[bytes]:
        page, left, last = first["rows"], limit, int(first["next_after_seq"])
        yield b'{"rows":['
        sep = ""
        while page:
            shown = view({"rows": page})["rows"]
            if shown:
                yield (sep + ",".join(_dumps(r) for r in shown)).encode()
                sep = ","
            left -= len(page)
            last = int(page[-1]["seq"])
            if left <= 0 or len(page) < PAGE:
                break
            await asyncio.sleep(0)  # let everyone else in between pages
            out = await engine.audit(last, min(left, PAGE), prefix, since, until)
            page = out["rows"]
        yield f'],"next_after_seq":{last}}}'.encode()

    return StreamingResponse(body(), media_type="application/json")
