"""Long polls asking the same question share one reader (writ.core.polls): a thousand
polls of one consent, or of the same events, cost one store read a commit, not a thousand
(one principal's polls slowed every writer tenfold: each re-read the store after every
commit, on the event loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.test_authority import world
from tests.test_authority_reads import BLAST, _billing_change
from writ.core.polls import Polls
from writ.rules.consent import Consents

POLLS = 50


async def test_the_long_polls_of_one_consent_share_one_read_a_commit(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        _, change_id = await _billing_change(w)
        asked = await w.post("oncall-jane", "/v1/consents", {"change_id": change_id, "reason": "x"})
        cid = asked.json()["consent_id"]
        polls = [
            asyncio.create_task(w.get("oncall-jane", f"/v1/consents/{cid}", wait_s=60))
            for _ in range(POLLS)
        ]
        watches = w.engine.rule(Consents)._polls.watches
        while not watches or watches[cid].waiters < POLLS:  # every poll waits
            assert not any(p.done() for p in polls)
            await asyncio.sleep(0.005)
        reads = 0
        store_read = w.engine.store.read

        async def counted(fn: Any, **kw: Any) -> Any:
            nonlocal reads
            reads += 1
            return await store_read(fn, **kw)

        monkeypatch.setattr(w.engine.store, "read", counted)
        for i in range(3):  # commits that do not touch the consent
            assert (await w.lease("admin", f"routing/r{i}")).status_code == 201
        while not watches[cid].idle:  # the reader has read after the last commit
            assert not any(p.done() for p in polls)
            await asyncio.sleep(0.005)
        assert reads < POLLS, reads  # a read a poll a commit was 3 x 50
        monkeypatch.setattr(w.engine.store, "read", store_read)
        r = await w.post("admin", f"/v1/consents/{cid}/grant")
        assert r.status_code == 200, r.text
        answers = await asyncio.wait_for(asyncio.gather(*polls), 30)
        assert {a.json()["state"] for a in answers} == {"granted"}
        assert cid not in watches


class _Commits:
    """What ``engine.audit_changed`` is: the event the next commit sets."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self.event

    def commit(self) -> None:
        done, self.event = self.event, asyncio.Event()
        done.set()


async def _settle() -> None:
    for _ in range(10):  # every woken task runs to its next wait
        await asyncio.sleep(0)


async def test_a_hundred_polls_of_one_key_cost_one_probe_a_commit() -> None:
    commits, probes, answer = _Commits(), 0, None

    async def probe() -> str | None:
        nonlocal probes
        probes += 1
        return answer

    polls: Polls[str] = Polls(commits.changed)
    waiting = [asyncio.create_task(polls.wait("k", probe, 30)) for _ in range(100)]
    await _settle()
    assert polls.watches["k"].waiters == 100 and probes == 1
    for _ in range(3):
        commits.commit()
        await _settle()
    assert probes == 4
    answer = "settled"
    commits.commit()
    assert await asyncio.gather(*waiting) == ["settled"] * 100
    assert probes == 5 and "k" not in polls.watches


async def test_a_poll_nobody_waits_for_any_more_stops_reading() -> None:
    commits, probes = _Commits(), 0

    async def probe() -> None:
        nonlocal probes
        probes += 1

    polls: Polls[str] = Polls(commits.changed)
    assert await polls.wait("k", probe, 0.01) is None
    commits.commit()
    await _settle()
    assert probes == 1 and polls.watches == {}
