"""Where a postmortem reads the ledger from: a store opened directly, or a running server over HTTP."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from writ.client._pages import page
from writ.core.clock import rfc3339
from writ.core.ledger import UNREADABLE, canonical
from writ.core.ledger import verify as verify_chain
from writ.evidence.postmortem.query import PAGE
from writ.stores import redact

if TYPE_CHECKING:
    from writ.client import AsyncClient
    from writ.engine import Engine


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
        self.label = label or redact(client.url)

    async def rows(
        self, prefix: str | None, since: float | None, until: float | None, after: int, limit: int
    ) -> list[dict[str, Any]]:
        out = await self.client.audit(
            after, min(limit, 100_000), prefix, rfc3339(since), rfc3339(until)
        )
        rows, _ = page(out, after)  # a page as writ sends it, or Unavailable
        return rows

    async def who(self, resource: str, at: float) -> dict[str, Any]:
        out: dict[str, Any] = await self.client.who(resource, rfc3339(at))
        return out

    async def kinds(self) -> dict[str, str]:
        out = await self.client.principals()
        items = out.get("principals", []) if isinstance(out, dict) else out
        if not isinstance(items, list):
            return {}
        return {str(p.get("name")): str(p.get("kind")) for p in items if isinstance(p, dict)}

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


def _row_problem(row: dict[str, Any], seq: int | None, prev: str | None) -> str | None:
    """Why ``row`` is not sealed as writ seals rows (None when it is)."""
    body = {k: v for k, v in row.items() if k != "hash"}
    if seq is not None and row.get("seq") != seq:
        return f"row {row.get('seq')} where {seq} was expected (a row is missing or extra)"
    if row.get("event") == UNREADABLE and row.get("prev_hash") is None:  # a stored body writ
        return f"{row.get('notes')} (so it cannot verify)"  # cannot read (its stub)
    if prev is not None and row.get("prev_hash") != prev:
        return f"row {row.get('seq')}: prev_hash does not name the row before it"
    h = hashlib.sha256((str(row.get("prev_hash")) + canonical(body)).encode()).hexdigest()
    if h != row.get("hash"):
        return f"row {row.get('seq')}: hash does not match the row's contents"
    return None
