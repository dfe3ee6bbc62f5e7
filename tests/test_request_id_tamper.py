"""A waiting acquire is answered only with a lease granted to it. The leases table names the
request a lease was granted to (``request_id``), outside the hash: before, one set there by
hand made a waiting acquire answer with another principal's lease on another resource (its
fencing token too). Now such a lease is never the answer: the request leaves the queue, with
a row that ends its wait, and its caller gets ``Unavailable`` (ask again); the log says
tampering."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from writ.core.errors import Unavailable


async def _queued(backend: Backend) -> str:
    """The id of the one queued request, once its queue join committed."""
    for _ in range(500):
        rows = await backend.sql("SELECT waiter_id FROM waiters")
        if rows:
            return str(rows[0][0])
        await asyncio.sleep(0.01)
    raise AssertionError("the request was never queued")


async def test_a_lease_named_for_a_request_by_hand_is_not_its_answer(
    make_engine: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """perf-agent holds prod/db, cost-agent prod/secrets; web-agent waits for prod/db. An
    intruder names cost-agent's lease as granted to web-agent's request, and wakes it (a note
    from another process): web-agent gets Unavailable, never cost-agent's lease; its wait
    ends with a row, and the store verifies."""
    engine = await make_engine()
    add = engine.add_principal
    perf, _ = await add(None, "perf-agent", "agent")
    cost, _ = await add(None, "cost-agent", "agent")
    web, _ = await add(None, "web-agent", "agent")
    await engine.acquire(perf, resource="prod/db", intent="scale up", ttl_s=60)
    other = await engine.acquire(cost, resource="prod/secrets", intent="rotate", ttl_s=60)
    waiting = asyncio.ensure_future(
        engine.acquire(web, resource="prod/db", intent="vacuum", ttl_s=30, wait_s=60)
    )
    waiter_id = await _queued(backend)
    await backend.sql(
        "UPDATE leases SET request_id = %s WHERE lease_id = %s", waiter_id, other["lease_id"]
    )
    if backend.is_pg:  # behind the server's back: it loads its live replica afresh
        await backend.sql("UPDATE audit_head SET epoch = epoch + 1")
    note = {"waiter_id": waiter_id, "lease_id": other["lease_id"], "unverified": True}
    with caplog.at_level(logging.ERROR):
        engine._on_note("granted", note)
        with pytest.raises(Unavailable, match="changed by hand"):
            await asyncio.wait_for(waiting, 10)
    assert any("tampering" in r.getMessage() for r in caplog.records)
    assert await backend.sql("SELECT waiter_id FROM waiters") == []
    ended = [
        r
        for r in (await engine.audit())["rows"]
        if r["event"] == "lease.denied" and r["agent_id"] == "web-agent"
    ]
    assert len(ended) == 1 and ended[0]["notes"].endswith(f"; waiter {waiter_id}")
    still = await engine.store.read(lambda tx: tx.get_lease(other["lease_id"]))
    assert still is not None and still.state == "held" and still.holder == "cost-agent"
