"""Large reads are answered page by page (writ.api.streaming): the ledger, and long lists of
leases (``GET /v1/leases``, ``GET /v1/status``), give the same answer as one read, while the
event loop serves others between pages."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.test_http import ADMIN, Writ, serve
from writ.api import streaming as paging
from writ.engine import Engine


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


async def _read_between_others(
    writ: Writ, monkeypatch: pytest.MonkeyPatch, reader: str, path: str
) -> tuple[Any, list[int], list[str]]:
    """GET ``path`` (limit 100,000) while another task runs; the engine's ``reader`` counted:
    the answer, where each page was read among the other task's turns, and those turns."""
    ran: list[str] = []
    real = getattr(writ.engine, reader)

    async def read(*a: Any, **kw: Any) -> Any:
        ran.append("page")
        return await real(*a, **kw)

    monkeypatch.setattr(writ.engine, reader, read)
    done = asyncio.Event()

    async def other() -> None:
        while not done.is_set():
            ran.append("other")
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other())
    r = await writ.c.get(path, params={"limit": 100_000}, headers=writ.admin)
    done.set()
    await task
    assert r.status_code == 200
    return r.json(), [i for i, what in enumerate(ran) if what == "page"], ran


async def test_other_tasks_run_between_pages(writ: Writ, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each page after the first is read only after the loop has let others in."""
    for i in range(20):
        await writ.principal(f"agent-{i}")
    body, pages, ran = await _read_between_others(writ, monkeypatch, "audit", "/v1/audit")
    assert len(body["rows"]) >= 20
    assert len(pages) >= 3
    for a, b in itertools.pairwise(pages[1:]):
        assert "other" in ran[a:b], ran


async def _leases(engine: Engine, released: int, held: int) -> None:
    agent, _ = await engine.add_principal(None, "lister", "agent")
    for i in range(released + held):
        lease = await engine.acquire(agent, resource=f"fleet/r{i}", intent="list me", ttl_s=60)
        if i < released:
            await engine.release(agent, lease["lease_id"])


async def test_a_long_lease_list_is_the_same_answer_paged(writ: Writ) -> None:
    await _leases(writ.engine, released=25, held=6)
    for state in (None, "released", "held"):
        whole = await writ.engine.list_leases(state=state, limit=100_000)
        tokens = [d["fencing_token"] for d in whole]
        assert tokens == sorted(set(tokens), reverse=True)  # newest first, each once
        for limit in (100_000, 31, 13, 7, 5):
            params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
            r = await writ.c.get("/v1/leases", params=params, headers=writ.admin)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            got = json.loads(r.content)["leases"]
            assert got == whole[:limit], (state, limit, [d["fencing_token"] for d in got])
    r = await writ.c.get("/v1/status", params={"limit": 100_000}, headers=writ.admin)
    assert r.json()["leases"] == await writ.engine.status(limit=100_000)
    assert len(r.json()["leases"]) == 6
    # filters hold across pages; nothing found is an empty list
    r = await writ.c.get(
        "/v1/leases", params={"limit": 100_000, "resource": "nowhere"}, headers=writ.admin
    )
    assert r.json() == {"leases": []}
    r = await writ.c.get(
        "/v1/leases", params={"limit": 100_000, "resource": "a//b"}, headers=writ.admin
    )
    assert r.status_code == 422  # bad input still fails before anything is sent


async def test_expired_leases_page_by_page_as_in_one_read(engine: Engine, backend: Backend) -> None:
    """``state=expired`` merges held leases past their ttl (not yet swept) with those swept:
    read three at a time, the pages give what one read gives."""
    if backend.clock is None:
        pytest.skip("leases past their ttl without waiting need the simulated clock")
    agent, _ = await engine.add_principal(None, "lister", "agent")
    for i in range(14):
        lease = await engine.acquire(agent, resource=f"fleet/r{i}", intent="x", ttl_s=5)
        if i % 3 == 0:
            await engine.release(agent, lease["lease_id"])
        if i == 6:
            backend.clock.advance(10)
            await engine.sweep()  # the first ones are expired in the store, the rest not yet
    backend.clock.advance(10)
    whole = await engine.list_leases(state="expired", limit=100_000)
    assert len(whole) == 9 and all(d["state"] == "expired" for d in whole)
    for n in (1, 2, 3, 4):
        got: list[dict[str, Any]] = []
        page, before = await engine.lease_page(state="expired", limit=n)
        got += page
        while before is not None:
            page, before = await engine.lease_page(state="expired", limit=n, before=before)
            assert len(page) <= n
            got += page
        assert got == whole, (n, [d["fencing_token"] for d in got])
    # newer live leases above them: one read of a few still finds expired ones below
    for i in range(10):
        await engine.acquire(agent, resource=f"fleet/new{i}", intent="x", ttl_s=60)
    few = await engine.list_leases(state="expired", limit=5)
    assert few and all(d["state"] == "expired" for d in few), few


async def test_other_tasks_run_between_lease_pages(
    writ: Writ, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of 100,000 leases held the loop for a second: now each page after the first
    is read only after the loop has let others in."""
    await _leases(writ.engine, released=20, held=0)
    body, pages, ran = await _read_between_others(writ, monkeypatch, "lease_page", "/v1/leases")
    assert len(body["leases"]) == 20
    assert len(pages) >= 3
    for a, b in itertools.pairwise(pages):
        assert "other" in ran[a:b], ran


async def test_a_long_poll_of_many_rows_is_read_page_by_page(
    writ: Writ, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/v1/events`` answers up to 10,000 rows at once (one read of them held the loop
    200 ms): read in pages that take turns with the other bulk reads, the same rows."""
    from writ.evidence import history

    monkeypatch.setattr(history, "PAGE", 7)
    for i in range(30):
        await writ.principal(f"agent-{i}")
    whole = (await writ.engine.audit(0, 100_000))["rows"]
    reads: list[int] = []
    real = writ.engine.store.read

    async def read(fn: Any, **kw: Any) -> Any:
        reads.append(1)
        return await real(fn, **kw)

    monkeypatch.setattr(writ.engine.store, "read", read)
    for limit, after in ((10_000, 0), (20, 3), (7, 0)):
        reads.clear()
        r = await writ.c.get(
            "/v1/events", params={"limit": limit, "after_seq": after}, headers=writ.admin
        )
        want = [row for row in whole if row["seq"] > after][:limit]
        assert r.json() == {"rows": want, "next_after_seq": want[-1]["seq"]}, (limit, after)
        assert len(reads) >= -(-len(want) // 7), (limit, len(reads))  # a read per page
