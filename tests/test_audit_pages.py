"""Large ledger reads are answered page by page (writ.api.streaming): the same rows and cursor
as one read, while the event loop serves others between pages."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.test_http import ADMIN, Writ, serve
from writ.api import streaming as paging


@pytest.fixture
async def writ(store_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Writ]:
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN)
    monkeypatch.setattr(paging, "PAGE", 7)  # pages of 7 rows: many pages, few rows
    async with serve(store_url) as w:
        yield w


async def test_a_large_read_is_the_same_answer_paged(writ: Writ) -> None:
    for i in range(30):
        await writ.principal(f"agent-{i}")
    whole = (await writ.engine.audit(0, 100_000))["rows"]
    assert len(whole) >= 30
    for limit, after in ((100_000, 0), (20, 3), (14, 0), (7, 0), (5, 2)):
        r = await writ.c.get(
            "/v1/audit", params={"limit": limit, "after_seq": after}, headers=writ.admin
        )
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = json.loads(r.content)
        want = [row for row in whole if row["seq"] > after][:limit]
        assert body["rows"] == want, (limit, after)
        assert body["next_after_seq"] == want[-1]["seq"]
    # filters hold across pages; an empty answer keeps the cursor
    r = await writ.c.get(
        "/v1/audit", params={"limit": 100_000, "resource": "nowhere"}, headers=writ.admin
    )
    assert r.json() == {"rows": [], "next_after_seq": 0}
    # bad input still fails before anything is sent
    r = await writ.c.get(
        "/v1/audit", params={"limit": 100_000, "resource": "a//b"}, headers=writ.admin
    )
    assert r.status_code == 422


async def test_other_tasks_run_between_pages(writ: Writ, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page after the first is read only after the loop has let others in."""
    for i in range(20):
        await writ.principal(f"agent-{i}")
    ran: list[str] = []
    real = writ.engine.audit

    async def audit(*a: Any, **kw: Any) -> dict[str, Any]:
        ran.append("page")
        return await real(*a, **kw)

    monkeypatch.setattr(writ.engine, "audit", audit)
    done = asyncio.Event()

    async def other() -> None:
        while not done.is_set():
            ran.append("other")
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other())
    r = await writ.c.get("/v1/audit", params={"limit": 100_000}, headers=writ.admin)
    done.set()
    await task
    assert r.status_code == 200 and len(r.json()["rows"]) >= 20
    pages = [i for i, what in enumerate(ran) if what == "page"]
    assert len(pages) >= 3
    for a, b in itertools.pairwise(pages[1:]):
        assert "other" in ran[a:b], ran
