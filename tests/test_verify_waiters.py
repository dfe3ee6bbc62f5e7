"""Verify covers the wait queue: writ serves its FIFO queue from the waiters table, outside
the hash chain, so each queued request is checked against the hashed ``lease.queued`` row
that queued it — online, with a signed checkpoint, and offline (``--store``), on every
store."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from tests.verify_fixtures import after_the_listing, cli_verify, found_everywhere, walked
from writ.cli import main
from writ.core.errors import WritError
from writ.core.models import Principal, Waiter, request_digest
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make, write_checkpoint
from writ.stores import queued
from writ.stores.base import Tx

PLAN = {
    "allowed": True,
    "path": "/rollback/db",
    "key_holder": "db-oncall",
    "override_queue": "db-oncall",
}
COLS = "seq, waiter_id, resource, principal, request, enqueued_at, deadline"

# what an intruder with database rights does to the waiters table ({first} and {second} are
# the two queued requests, in their order), the waiter verify names and the words it uses
EDITS: dict[str, tuple[str, str, str]] = {
    "a request nobody queued, at the front": (
        f"INSERT INTO waiters ({COLS}) SELECT 0, 'wt_forged', resource, 'perf-agent', request,"
        " enqueued_at, deadline FROM waiters WHERE {first}",
        "wt_forged",
        "no lease.queued row",
    ),
    "a waiter jumps the queue": ("UPDATE waiters SET seq = 0 WHERE {second}", "second", "order"),
    "a waiter sent to the back": (
        "UPDATE waiters SET seq = 1000 WHERE {first}",
        "second",
        "order",
    ),
    "another principal": (
        "UPDATE waiters SET principal = 'perf-agent' WHERE {first}",
        "first",
        "the principal column",
    ),
    "another resource": (
        "UPDATE waiters SET resource = 'prod/cache' WHERE {first}",
        "first",
        "no lease.queued row",
    ),
    "another intent": (
        "UPDATE waiters SET request = replace(request, 'scale down', 'drop the tables')"
        " WHERE {first}",
        "first",
        "the request column",
    ),
    "a longer ttl": (
        "UPDATE waiters SET request = replace(request, '\"ttl_s\": 30.0', '\"ttl_s\": 3600.0')"
        " WHERE {first}",
        "first",
        "the request column",
    ),
    "more touches": (
        'UPDATE waiters SET request = replace(request, \'"touches": [\', \'"touches": ["prod/keys", \')'
        " WHERE {first}",
        "first",
        "the request column",
    ),
    "another rollback route": (
        "UPDATE waiters SET request = replace(request, '/rollback/db', '/evil') WHERE {first}",
        "first",
        "the request column",
    ),
    "a later deadline": (
        "UPDATE waiters SET deadline = deadline + 86400 WHERE {second}",
        "second",
        "the deadline column",
    ),
    "an earlier enqueued_at": (
        "UPDATE waiters SET enqueued_at = enqueued_at - 60 WHERE {second}",
        "second",
        "no lease.queued row",
    ),
}


async def _table(engine: Engine) -> list[Waiter]:
    """The waiters table, in seq order."""

    async def all_(tx: Tx) -> list[Waiter]:
        return await tx.waiters_between(0, 1 << 62)

    return await engine.store.read(all_)


async def _queued(engine: Engine, n: int) -> list[Waiter]:
    """Wait until the waiters table holds ``n`` requests; they, in seq order."""
    for _ in range(500):
        table = await _table(engine)
        if len(table) == n:  # a call cancelled from here on leaves the queue, wherever it is
            return table
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(table)} waiters, not {n}")


class Queue:
    """perf-agent holds prod/db; cost-agent (with a rollback plan) and then jane's agent wait
    for it (their calls run as tasks, cancelled at the end)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> tuple[dict[str, Any], list[Waiter]]:
        e = self.engine
        self.holder, _ = await e.add_principal(None, "perf-agent", "agent")
        self.cost, _ = await e.add_principal(None, "cost-agent", "agent")
        self.web, _ = await e.add_principal(None, "web-agent", "agent")
        await e.add_principal(None, "db-oncall", "queue")
        lease = await e.acquire(self.holder, resource="prod/db", intent="scale up")
        self.wait(self.cost, "prod/db", "scale down", rollback=PLAN)
        await _queued(e, 1)
        self.wait(self.web, "prod/db", "vacuum")
        return lease, await _queued(e, 2)

    def wait(self, who: Principal, resource: str, intent: str, **more: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(
            self.engine.acquire(
                who, resource=resource, intent=intent, **{"ttl_s": 30, "wait_s": 120, **more}
            )
        )
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_queue_as_writ_keeps_it_verifies(engine: Engine, backend: Backend) -> None:
    """Requests queued, one granted from the queue and one withdrawn: verify says ok,
    online and offline, every time."""
    q = Queue(engine)
    lease, (_, second) = await q.start()
    try:
        assert (await engine.verify()).ok
        assert (await cli_verify(backend.url))["ok"]
        await engine.release(q.holder, lease["lease_id"])  # the first is granted
        granted = await asyncio.wait_for(q.tasks[0], 5)
        assert [w.waiter_id for w in await _queued(engine, 1)] == [second.waiter_id]
        assert (await engine.verify()).ok
        q.tasks[1].cancel()  # the second withdraws
        await asyncio.gather(q.tasks[1], return_exceptions=True)
        await _queued(engine, 0)
        await engine.release(q.cost, granted["lease_id"])
        assert (await engine.verify()).ok
    finally:
        await q.stop()


async def test_an_agents_words_cannot_end_another_agents_wait(engine: Engine) -> None:
    """A grant's notes end with its touches, an agent's words: touches spelled as the
    suffix that names the waiter a row ends the wait of (``; waiter wt_…``), on another
    resource and on the waiter's own (queued behind it, never granted while it waits), end
    nobody's wait: verify still says ok while the real waiters wait."""
    q = Queue(engine)
    _, (first, second) = await q.start()
    try:
        forged = [f"x; waiter {first.waiter_id}"]
        await engine.acquire(q.cost, resource="staging/db", intent="copy", touches=forged)
        q.wait(q.web, "prod/db", "forge", touches=[f"x; waiter {second.waiter_id}"])
        await _queued(engine, 3)
        assert (await engine.verify()).ok
    finally:
        await q.stop()


async def test_a_row_by_another_agent_does_not_end_a_wait(engine: Engine) -> None:
    """Every row writ ends a wait with is written as the waiter's principal: a refusal on
    the waiter's resource by another agent, whose words end in the waiter's name, ends no
    wait, so the waiter still queued is not called written back after its wait ended
    (where verify matched the ending rows by resource and name alone, and failed)."""
    from writ.engine.hooks import lock_row

    q = Queue(engine)
    _, (first, _second) = await q.start()
    try:
        notes = f"refused 'x': frozen: no; waiter {first.waiter_id}"
        row = lock_row("lease.refused", "perf-agent", "prod/db", None, notes)

        async def append(tx: Tx) -> None:
            await tx.append(row)

        await engine.store.transact(append)
        out = await engine.verify()
        assert out.ok, out.reason
    finally:
        await q.stop()


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_hand_edited_waiter_fails_verify(
    engine: Engine, backend: Backend, edit: str
) -> None:
    """A queued request changed (or made) by hand in the waiters table fails verify —
    online, with a signed checkpoint, and offline — naming the request and what is wrong,
    while every audit row is intact."""
    q = Queue(engine)
    _, (first, second) = await q.start()
    try:
        key = generate_key()
        cp = await make(engine.store, key)
        sql, name, field = EDITS[edit]
        mine = {"first": first.waiter_id, "second": second.waiter_id}
        where = {k: f"waiter_id = '{v}'" for k, v in mine.items()}
        await backend.sql(sql.format(**where))

        waiter_id = mine.get(name, name)
        bad = await found_everywhere(engine, backend.url, cp, key, "waiter_id", waiter_id, field)
        assert f"waiter {waiter_id} on " in (bad.reason or "")
        assert "lease_id" not in bad.to_dict() and "principal" not in bad.to_dict()
    finally:
        await q.stop()


async def test_a_granted_request_queued_again_fails_verify(
    engine: Engine, backend: Backend
) -> None:
    """A request granted from the queue and written back into the waiters table (its own
    id, columns and row: only the grant ended it) fails verify, naming the lease granted."""
    q = Queue(engine)
    lease, (first, _) = await q.start()
    try:
        kept = await backend.sql(
            f"SELECT {COLS} FROM waiters WHERE waiter_id = %s", first.waiter_id
        )
        await engine.release(q.holder, lease["lease_id"])
        granted = await asyncio.wait_for(q.tasks[0], 5)
        await _queued(engine, 1)
        assert (await engine.verify()).ok
        await backend.sql(
            f"INSERT INTO waiters ({COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", *kept[0]
        )
        bad = await engine.verify()
        assert not bad.ok and bad.first_bad_seq is None and bad.waiter_id == first.waiter_id
        assert f"lease {granted['lease_id']} was granted to it" in (bad.reason or "")
        report = await cli_verify(backend.url)
        assert report["waiter_id"] == first.waiter_id
    finally:
        await q.stop()


async def test_the_cli_and_the_answer_over_http_name_the_waiter(
    engine: Engine, backend: Backend, tmp_path: Any
) -> None:
    """``writ audit verify`` prints a queued request the ledger does not account for as
    itself (no "at seq None"), with and without a checkpoint, exit 1; ``GET
    /v1/audit/verify`` (the Python client's ``verify()``) answers it in ``waiter_id``."""
    import httpx

    from writ.api.app import create_app
    from writ.client import AsyncClient

    q = Queue(engine)
    _, (first, _) = await q.start()
    try:
        write_checkpoint(await make(engine.store, generate_key()), tmp_path / "cp.txt")
        await backend.sql(
            f"UPDATE waiters SET principal = 'perf-agent' WHERE waiter_id = '{first.waiter_id}'"
        )
        want = f"BROKEN: waiter {first.waiter_id} on prod/db: the principal column ('perf-agent')"
        for more in ([], ["--checkpoint", str(tmp_path / "cp.txt")]):
            args = ["audit", "verify", "--store", backend.url, *more]
            res = await asyncio.to_thread(CliRunner().invoke, main, args)
            assert res.exit_code == 1 and want in res.output and "seq None" not in res.output
        await engine.bootstrap_admin("writ_the-bootstrap-admin-token")
        transport = httpx.ASGITransport(app=create_app(engine, start_engine=False))
        token = "writ_the-bootstrap-admin-token"
        async with AsyncClient("http://writ.test", token, transport=transport) as admin:
            out = await admin.verify()
        assert out["ok"] is False and out["first_bad_seq"] is None
        assert out["waiter_id"] == first.waiter_id and "the principal column" in out["reason"]
        assert "lease_id" not in out and "principal" not in out
    finally:
        await q.stop()


async def test_a_queue_moved_by_writ_migrate_verifies_there(
    engine: Engine, backend: Backend, tmp_path: Any
) -> None:
    """``writ migrate`` copies the queue (each request's seq, times and request as they were)
    and its final check says ok; a request then moved ahead by hand in the copy fails
    migrate's verify there."""
    import sqlite3

    from writ.stores import open_store
    from writ.stores.migrate import migrate, verify_store

    q = Queue(engine)
    _, (_, second) = await q.start()
    try:
        dst_url = f"sqlite:///{tmp_path / 'dst.db'}"
        result = await migrate(backend.url, dst_url)
        assert result["ok"] and result["tables"]["waiters"] == 2, result
        db = sqlite3.connect(tmp_path / "dst.db", isolation_level=None)
        db.execute("UPDATE waiters SET seq = 0 WHERE waiter_id = ?", (second.waiter_id,))
        db.close()
        dst = open_store(dst_url)
        await dst.open()
        try:
            bad = await verify_store(dst)
        finally:
            await dst.close()
        assert not bad.ok and bad.waiter_id == second.waiter_id and "order" in (bad.reason or "")
    finally:
        await q.stop()


ENDED = ("withdrawn", "timed out", "its principal disabled", "granted, its lease unmarked")


@pytest.mark.parametrize("how", ENDED)
async def test_an_ended_wait_written_back_fails_verify(
    engine: Engine, backend: Backend, how: str
) -> None:
    """A request whose wait ended — withdrawn by its caller, timed out, refused as its
    principal was disabled, or granted (its lease's request_id cleared too) — written back
    into the waiters table as it was (its own id, columns and row) fails verify: the row
    that ended it names it."""
    q = Queue(engine)
    lease, (first, second) = await q.start()
    try:
        gone = second if how != "granted, its lease unmarked" else first
        if how == "timed out":
            q.wait(q.holder, "prod/db", "brief", wait_s=0.3)
            gone = (await _queued(engine, 3))[2]
        kept = await backend.sql(f"SELECT {COLS} FROM waiters WHERE waiter_id = %s", gone.waiter_id)
        if how == "timed out":
            await asyncio.gather(q.tasks[2], return_exceptions=True)
        elif how == "withdrawn":
            q.tasks[1].cancel()
            await asyncio.gather(q.tasks[1], return_exceptions=True)
        elif how == "its principal disabled":
            await engine.principals.disable(None, "web-agent", "retired")
        elif how == "granted, its lease unmarked":
            await engine.release(q.holder, lease["lease_id"])
            await asyncio.wait_for(q.tasks[0], 5)
            await backend.sql("UPDATE leases SET request_id = NULL")
        table = await _table(engine)
        assert gone.waiter_id not in [w.waiter_id for w in table]
        assert (await engine.verify()).ok
        await backend.sql(
            f"INSERT INTO waiters ({COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", *kept[0]
        )
        bad = await engine.verify()
        assert not bad.ok and bad.first_bad_seq is None and bad.waiter_id == gone.waiter_id, bad
        assert "ended its wait" in (bad.reason or ""), bad.reason
    finally:
        await q.stop()


async def test_rows_of_older_writ_versions_vouch_for_existence(
    engine: Engine, backend: Backend
) -> None:
    """A waiter queued by an older writ (its lease.queued row names no waiter) verifies, and
    its request is not compared; a request its principal's row does not vouch for fails."""
    await engine.add_principal(None, "old-agent", "agent")

    async def queue_old(tx: Tx) -> Waiter:
        now = tx.now()
        w = await tx.insert_waiter(
            Waiter(
                "wt_old", 0, "prod/db", "old-agent", {"intent": "x", "wait_s": 5.0}, now, now + 5
            )
        )
        await tx.append(
            {
                "event": "lease.queued",
                "agent_id": "old-agent",
                "resource": "prod/db",
                "notes": "queued at position 1 for up to 5s: prod/db is held by perf-agent",
            }
        )
        return w

    await engine.store.transact(queue_old)
    assert (await engine.verify()).ok
    await backend.sql('UPDATE waiters SET request = \'{"intent": "y"}\', deadline = 1e12')
    assert (await engine.verify()).ok  # existence only: the old row says no more
    await backend.sql("UPDATE waiters SET principal = 'perf-agent'")
    bad = await engine.verify()
    assert not bad.ok and bad.waiter_id == "wt_old" and "no lease.queued row" in (bad.reason or "")


async def test_waiters_changed_by_writ_while_verify_runs_are_not_tampered(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between verify listing the queue and checking it, the first request is granted, the
    second withdrawn and a third queued: each is judged as it stands when checked."""
    q = Queue(engine)
    lease, _ = await q.start()
    monkeypatch.setattr(queued, "PAGE", 1)
    store = engine.store

    async def meanwhile() -> None:
        await engine.release(q.holder, lease["lease_id"])
        await asyncio.wait_for(q.tasks[0], 5)
        q.tasks[1].cancel()
        await asyncio.gather(q.tasks[1], return_exceptions=True)
        q.wait(q.holder, "prod/db", "again")
        await _queued(engine, 1)

    listed = after_the_listing(monkeypatch, store, meanwhile)
    try:
        found = await queued.waiters_disagree(store)
        assert listed.is_set() and found is None
    finally:
        await q.stop()


async def test_a_busy_queue_verifies_while_writ_serves_it(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve agents acquire and release three resources in a loop (the queue filling and
    emptying as they go; on PostgreSQL through two servers sharing the store, so the queue's
    order is drawn by both), while verify runs again and again, a few waiters a page: never
    a tampering found."""
    monkeypatch.setattr(queued, "PAGE", 3)
    engine: Engine = await make_engine()
    servers = [engine, await make_engine()] if backend.is_pg else [engine]
    agents = [(await engine.add_principal(None, f"agent-{i}", "agent"))[0] for i in range(12)]
    stop = asyncio.Event()
    grants = 0

    async def work(agent: Principal, server: Engine) -> None:
        nonlocal grants
        rnd = random.Random(agent.name)
        while not stop.is_set():
            res = f"prod/r{rnd.randrange(3)}"
            try:
                got = await server.acquire(agent, resource=res, intent="tick", ttl_s=30, wait_s=10)
            except WritError:
                continue
            grants += 1
            await asyncio.sleep(rnd.random() * 0.01)
            await server.release(agent, got["lease_id"])

    workers = [
        asyncio.create_task(work(a, servers[i % len(servers)])) for i, a in enumerate(agents)
    ]
    seen, verifies = 0, 0
    try:
        for _ in range(1000):
            seen = max(seen, len(await _table(engine)))
            out = await engine.verify()
            assert out.ok, out
            verifies += 1
            if verifies >= 15 and seen >= 4 and grants >= 150:
                break
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 20)
    assert seen >= 4 and grants >= 150, (seen, grants)
    assert (await engine.verify()).ok


async def test_a_long_queue_verifies_over_many_pages(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty requests queued on five resources, seven a page: ok (the order holds across
    pages); the last moved to the front fails on its order."""
    monkeypatch.setattr(queued, "PAGE", 7)
    holder, _ = await engine.add_principal(None, "holder", "agent")
    for r in range(5):
        await engine.acquire(holder, resource=f"prod/r{r}", intent="hold")
    q = Queue(engine)
    for i in range(40):
        who, _ = await engine.add_principal(None, f"w-{i}", "agent")
        q.wait(who, f"prod/r{i % 5}", f"job {i}")
        await _queued(engine, i + 1)  # each in its turn: the order of the calls
    try:
        table = await _queued(engine, 40)
        assert [w.request["intent"] for w in table] == [f"job {i}" for i in range(40)]
        assert (await engine.verify()).ok
        last = table[-1].waiter_id
        await backend.sql(f"UPDATE waiters SET seq = 0 WHERE waiter_id = '{last}'")
        bad = await engine.verify()
        assert not bad.ok and bad.waiter_id == last and "order" in (bad.reason or "")
    finally:
        await q.stop()


async def test_waiter_lives_reads_each_waiter_with_its_rows(
    engine: Engine, backend: Backend
) -> None:
    """``Tx.waiter_lives`` (one statement on PostgreSQL) answers what the default asks
    waiter by waiter: the range of seq, each with its lease.queued row, no grant, and the
    row that ended the wait of one withdrawn and written back."""
    q = Queue(engine)
    _, (first, second) = await q.start()
    try:
        kept = await backend.sql(f"SELECT {COLS} FROM waiters WHERE seq = %s", second.seq)
        q.tasks[1].cancel()
        await asyncio.gather(q.tasks[1], return_exceptions=True)
        await _queued(engine, 1)
        await backend.sql(
            f"INSERT INTO waiters ({COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", *kept[0]
        )

        async def both(tx: Tx) -> tuple[Any, Any]:
            return await tx.waiter_lives(0, second.seq), await Tx.waiter_lives(tx, 0, second.seq)

        lives, one = await engine.store.read(both)
        assert lives == one
        assert [(w.waiter_id, g) for w, _, g, _ in lives] == [
            (first.waiter_id, None),
            (second.waiter_id, None),
        ]
        assert lives[0][3] is None and lives[1][3]["event"] == "lease.denied"
        assert lives[1][3]["notes"].endswith(
            f"disconnected before a grant; waiter {second.waiter_id}"
        )
        for w, rows, _, _ in lives:  # on a clock that stood still, both rows are at its time
            row = queued.queued_row(w, rows)
            said = f"; waiter {w.waiter_id}, request {request_digest(w.request)}"
            assert row is not None and row["event"] == "lease.queued"
            assert row["notes"].endswith(said) and row["agent_id"] == w.principal
        later = await engine.store.read(lambda tx: tx.waiter_lives(first.seq, second.seq))
        assert [w.waiter_id for w, _, _, _ in later] == [second.waiter_id]
    finally:
        await q.stop()


def test_the_window_of_a_wait_end_covers_every_wait() -> None:
    """The store looks for the row that ended a wait until its deadline (the longest wait
    the engine allows at most) and a stale waiter's grace after it."""
    from writ.engine.hooks import MAX_WAIT_S
    from writ.engine.queue import STALE_WAITER_S
    from writ.stores.base import ENDS_WITHIN_S, LONGEST_WAIT_S

    assert LONGEST_WAIT_S == MAX_WAIT_S and ENDS_WITHIN_S > STALE_WAITER_S


async def test_the_rows_ending_waits_are_read_only_within_the_waits() -> None:
    """``Tx.with_ends`` asks, on each resource, one window for the waits that overlap, and
    never the time between waits: a request whose enqueued_at was moved a year back costs a
    window of its own, not a year of its resource's rows."""
    asked: list[Any] = []

    class Fake:
        async def audit_waits_ended(self, windows: Any, ids: Any) -> list[Any]:
            asked.extend(windows)
            return []

    def w(i: int, resource: str, at: float, wait: float = 60) -> Any:
        return (Waiter(f"wt_{i}", i, resource, "a", {}, at, at + wait), [], None)

    t = 1.8e9
    lives = [w(1, "prod/db", t), w(2, "prod/db", t + 30), w(3, "prod/web", t + 1)]
    lives.append(w(4, "prod/db", t - 365 * 86400))
    out = await Tx.with_ends(Fake(), lives)  # type: ignore[arg-type]
    assert [x[3] for x in out] == [None] * 4
    assert sorted((r, round(lo - t, 3), round(hi - t, 3)) for r, lo, hi in asked) == [
        ("prod/db", -365.0 * 86400, -365.0 * 86400 + 65),
        ("prod/db", 0.0, 95.0),
        ("prod/web", 1.0, 66.0),
    ]


# what an intruder does to waits the ledger holds open: the request loses its place, and its
# wait ends without a row; the waiter verify names
GONE = {
    "the front of the queue": ("DELETE FROM waiters WHERE {first}", "first"),
    "the back of the queue": ("DELETE FROM waiters WHERE {second}", "second"),
    "the whole queue": ("DELETE FROM waiters", "first"),
}


@pytest.mark.parametrize("edit", sorted(GONE))
async def test_a_wait_the_ledger_holds_open_deleted_from_the_table_fails_verify(
    engine: Engine, backend: Backend, edit: str
) -> None:
    """A request queued and never granted, refused or withdrawn in the ledger, deleted from
    the waiters table by hand, fails verify — online, with a signed checkpoint made before,
    and offline — naming the waiter and the row that queued it."""
    if backend.clock is not None:  # the CLI's verify reads the wall clock: the waits are
        backend.clock.advance(time.time() - backend.clock.now())  # open to it as well
    q = Queue(engine)
    _, (first, second) = await q.start()
    try:
        key = generate_key()
        cp = await make(engine.store, key)
        sql, name = GONE[edit]
        mine = {"first": first, "second": second}
        await backend.sql(
            sql.format(**{k: f"waiter_id = '{w.waiter_id}'" for k, w in mine.items()})
        )

        gone = mine[name]
        bad = await found_everywhere(
            engine, backend.url, cp, key, "waiter_id", gone.waiter_id, "holds its wait open"
        )
        assert f"waiter {gone.waiter_id} on prod/db" in (bad.reason or "")
        assert "the waiters table does not queue it" in (bad.reason or "")
        assert "lease_id" not in bad.to_dict()
    finally:
        await q.stop()


async def _open_after_walk(engine: Engine) -> queued.OpenWaits:
    """The open waits of every row the store holds now, as verify's walk finds them."""
    return (await walked(engine)).waits


async def test_waits_ended_by_writ_after_the_walk_are_not_tampered(engine: Engine) -> None:
    """Waits open when the walk passed their rows — one granted, one withdrawn, one timed
    out by writ before the table is read — are judged by the rows that ended them."""
    q = Queue(engine)
    lease, (first, second) = await q.start()
    try:
        q.wait(q.holder, "prod/db", "brief", wait_s=0.5)
        third = (await _queued(engine, 3))[2]
        opened = await _open_after_walk(engine)
        assert set(opened.waits) == {first.waiter_id, second.waiter_id, third.waiter_id}
        await asyncio.gather(q.tasks[2], return_exceptions=True)  # timed out
        q.tasks[1].cancel()  # withdrawn
        await asyncio.gather(q.tasks[1], return_exceptions=True)
        await engine.release(q.holder, lease["lease_id"])  # granted
        await asyncio.wait_for(q.tasks[0], 5)
        assert await _table(engine) == []
        assert await queued.waiters_disagree(engine.store, opened) is None
        assert (await engine.verify()).ok
    finally:
        await q.stop()


async def test_a_wait_past_its_deadline_deleted_by_hand_is_not_tampered(
    engine: Engine, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request deleted by hand (its caller gone, so no row ends its wait) is found while
    it could still wait; past its deadline and the grace writ gives a wait's end, it waits
    for nothing (writ drops such a request unanswered), and verify says ok."""
    q = Queue(engine)
    await q.start()
    try:
        q.wait(q.holder, "prod/db", "brief", wait_s=2)
        third = (await _queued(engine, 3))[2]
        await backend.sql(f"DELETE FROM waiters WHERE waiter_id = '{third.waiter_id}'")
        await backend.advance(0)  # behind writ's back (PostgreSQL: its replica read afresh)
        q.tasks[2].cancel()  # its caller leaves: nothing to withdraw, so no row
        await asyncio.gather(q.tasks[2], return_exceptions=True)
        bad = await engine.verify()
        assert not bad.ok and bad.waiter_id == third.waiter_id, bad
        if backend.clock is not None:
            await backend.advance(2 + queued.ENDS_WITHIN_S + 0.1)
        else:  # PostgreSQL's clock and the ledger's times cannot be moved: a real wait
            monkeypatch.setattr(queued, "ENDS_WITHIN_S", 0.0)
            await asyncio.sleep(max(third.deadline - (await engine.store.read(_now)), 0) + 0.1)
        assert (await engine.verify()).ok
        from writ.evidence.checkpoint import verify_store as with_checkpoints

        assert (await with_checkpoints(engine.store, [await make(engine.store, generate_key())])).ok
    finally:
        await q.stop()


async def _now(tx: Tx) -> float:
    return tx.now()


def test_the_open_waits_are_collected_from_the_rows_that_name_waiters() -> None:
    """:class:`queued.OpenWaits` keeps a wait a ``lease.queued`` row names until a row on
    its resource, by its principal, ends it (one on another resource or by another agent,
    its words ending in the waiter's name, or an older writ's row, does not count), and lets
    it go once the rows are past its deadline and the grace."""
    import json

    def rec(seq: int, ts: float, event: str, on: str, notes: str, by: str = "a") -> Any:
        return (seq, json.dumps({"agent_id": by, "notes": notes}), "h", ts, event, on, None)

    def queue(seq: int, on: str, wait: str, name: str = "") -> Any:
        named = f"; waiter {name}, request sha256:{'0' * 64}" if name else ""
        return rec(seq, t, "lease.queued", on, f"queued at position 1 for up to {wait}s: x{named}")

    t = 1.8e9
    open_ = queued.OpenWaits()
    grant = "granted ls_1 for 'y', ttl 30s, touches x; waiter wt_a"
    open_.feed(
        [
            queue(1, "prod/db", "60", "wt_a"),
            queue(2, "prod/db", "60"),  # an older writ's
            queue(3, "prod/web", "2", "wt_b"),
            rec(4, t + 1, "lease.granted", "staging/db", grant),
            rec(5, t + 1, "lease.denied", "prod/db", "refused 'z': no; waiter wt_a", by="b"),
        ]
    )
    want = {"wt_a": ("prod/db", 1, t, t + 60, "a"), "wt_b": ("prod/web", 3, t, t + 2, "a")}
    assert open_.waits == want
    open_.feed([rec(6, t + 2 + queued.ENDS_WITHIN_S + 0.1, "gate.passed", "prod/db", "")])
    assert list(open_.waits) == ["wt_a"]  # wt_b's wait is over: let go
    open_.feed([rec(7, t + 10, "lease.denied", "prod/db", "refused 'y': gone; waiter wt_a")])
    assert open_.waits == {}


async def test_an_agents_refused_change_ends_none_of_its_own_waits(
    make_engine: Any, backend: Backend
) -> None:
    """In closed mode a change to an attribute its lease does not touch is refused with a
    ``lease.refused`` row by the agent, on its lease's resource, whose notes end with the
    attribute, the agent's words: spelled ``x; waiter wt_…`` after its own request queued
    there, it ends no wait. Where it did, verify called the request still queued written
    back after its wait ended (a false alarm any agent could raise), and a wait deleted by
    hand after such a row went unfound."""
    policy = '[authority]\nmode = "closed"\n[[authority.grant]]\nprincipals = ["perf-agent"]\nwrite = ["prod"]\n'
    engine = await make_engine(policy)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(perf, resource="prod/db", intent="scale", touches=["capacity"])
    q = Queue(engine)
    q.wait(perf, "prod/db", "scale again")  # behind its own lease
    try:
        (w,) = await _queued(engine, 1)
        with pytest.raises(WritError, match="touches only capacity"):
            await engine.consents.record_change(
                perf, lease["lease_id"], f"x; waiter {w.waiter_id}", "s"
            )
        out = await engine.verify()
        assert out.ok, out.reason
        assert (await cli_verify(backend.url))["ok"]
        await backend.sql(f"DELETE FROM waiters WHERE waiter_id = '{w.waiter_id}'")
        out = await engine.verify()
        assert not out.ok and out.waiter_id == w.waiter_id, out
        assert "deleted there by hand" in (out.reason or "")
    finally:
        await q.stop()
