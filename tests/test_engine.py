"""The engine through the store contract, on SQLite and on PostgreSQL.

Waits are asserted by order and events, not by sleeping: a waiter that is served within a
second of a release, while its holder's ttl runs for 30 s more, was woken by the release.
Time moves with ``backend.advance`` (a manual clock on SQLite; the stored times on
PostgreSQL, whose clock is the database's). ``test_pg_*`` tests run two engines — two
``writ serve`` processes — on one PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from writ.core.clock import parse_time
from writ.core.errors import Conflict, Forbidden, Held, Invalid, LeaseLost, Unauthenticated
from writ.core.models import Principal, Waiter
from writ.engine import DISPATCH_PAGE, Engine
from writ.engine.queue import SHUTTING_DOWN

pytestmark = pytest.mark.usefixtures("no_admin_env")

BLAST = '[blast_radius]\ndb-tier = ["prod/db", "routing/db-tier", "capacity/db"]\n'
MakeEngine = Callable[..., Any]


async def add(engine: Engine, name: str, kind: str = "agent", **kw: Any) -> Principal:
    p, _token = await engine.add_principal(None, name, kind, **kw)
    return p


async def adds(engine: Engine, *names: str) -> list[Principal]:
    return [await add(engine, n) for n in names]


async def grant(engine: Engine, who: Principal, resource: str, **kw: Any) -> dict[str, Any]:
    kw.setdefault("intent", f"change {resource}")
    lease = await engine.acquire(who, resource=resource, **kw)
    assert lease["state"] == "held"
    return lease


async def refused(engine: Engine, who: Principal, resource: str, **kw: Any) -> Held:
    with pytest.raises(Held) as info:
        await engine.acquire(who, resource=resource, intent="try", **kw)
    return info.value


async def rows(engine: Engine, event: str | None = None) -> list[dict[str, Any]]:
    out = (await engine.audit(limit=100_000))["rows"]
    return [r for r in out if event is None or r["event"] == event]


async def queued(engine: Engine, who: str, n: int = 1) -> None:
    """Wait until ``who`` has ``n`` ``lease.queued`` rows (its request is in the queue)."""
    seen, after = 0, 0
    async with asyncio.timeout(5):
        while seen < n:  # the events long poll returns as soon as a row is appended
            out = await engine.events(after_seq=after, wait_s=5)
            seen += sum(r["event"] == "lease.queued" and r["agent_id"] == who for r in out["rows"])
            after = out["next_after_seq"]


def waiting(engine: Engine, who: Principal, resource: str, **kw: Any) -> asyncio.Task[Any]:
    kw.setdefault("wait_s", 30)
    return asyncio.create_task(grant(engine, who, resource, **kw))


async def two_behind(
    engine: Engine,
) -> tuple[Principal, dict[str, Any], asyncio.Task[Any], asyncio.Task[Any]]:
    """agent-a holds prod/db; agent-b, then agent-c, wait for it (their calls as tasks)."""
    a, b, c = await adds(engine, "agent-a", "agent-b", "agent-c")
    lease = await grant(engine, a, "prod/db")
    wb = waiting(engine, b, "prod/db")
    await queued(engine, "agent-b")
    wc = waiting(engine, c, "prod/db")
    await queued(engine, "agent-c")
    return a, lease, wb, wc


# ------------------------------------------------------------------------- leases
async def test_acquire_renew_release(engine: Engine, backend: Backend) -> None:
    a = await add(engine, "agent-a")
    lease = await grant(engine, a, "prod/db", ttl_s=30, touches=["capacity"])
    assert lease["holder"] == "agent-a" and lease["ttl_s"] == 30
    assert lease["lock_key"] == f"prod/db/{lease['fencing_token']}"
    assert lease["touches"] == ["capacity"]
    await backend.advance(10)
    renewed = await engine.renew(a, lease["lease_id"], ttl_s=60)
    assert renewed["ttl_s"] == 60
    assert parse_time(renewed["expires_at"]) > parse_time(lease["expires_at"])
    released = await engine.release(a, lease["lease_id"])
    assert released["state"] == "released" and released["ended_at"]
    again = await grant(engine, a, "prod/db")
    assert again["fencing_token"] > lease["fencing_token"]
    assert [r["event"] for r in await rows(engine)][-4:] == [
        "lease.granted",
        "lease.renewed",
        "lease.released",
        "lease.granted",
    ]


async def test_only_the_holder_renews_or_releases(engine: Engine) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    lease = await grant(engine, a, "prod/db")
    with pytest.raises(Forbidden):
        await engine.release(b, lease["lease_id"])
    with pytest.raises(Forbidden):
        await engine.renew(b, lease["lease_id"])
    assert (await engine.get_lease(lease["lease_id"]))["state"] == "held"


async def test_held_names_the_holder_and_queue_position(engine: Engine) -> None:
    a = await add(engine, "agent-a", wake="https://agents.example/wake/a")
    b, c = await add(engine, "agent-b"), await add(engine, "agent-c")
    lease = await grant(engine, a, "prod/db", intent="double capacity")
    w = waiting(engine, b, "prod/db")
    await queued(engine, "agent-b")
    err = await refused(engine, c, "prod/db")
    assert err.status == 409 and err.code == "held"
    assert err.holder["holder"] == "agent-a" and err.holder["intent"] == "double capacity"
    assert err.holder["resource"] == "prod/db" and err.holder["wake"].endswith("/wake/a")
    assert err.holder["acquired_at"] == lease["acquired_at"]
    assert err.holder["expires_at"] == lease["expires_at"]
    assert err.queue_position == 2  # agent-b is ahead
    denied = (await rows(engine, "lease.denied"))[-1]
    assert denied["agent_id"] == "agent-c" and denied["lock_holder"] == "agent-a"
    await engine.release(a, lease["lease_id"])
    assert (await asyncio.wait_for(w, 5))["holder"] == "agent-b"


async def test_ancestors_and_descendants_conflict_siblings_do_not(engine: Engine) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    await grant(engine, a, "prod/db")
    for r in ("prod/db", "prod", "prod/db/replica", "prod/db/replica/x"):
        err = await refused(engine, b, r)
        assert err.holder["resource"] == "prod/db"
    for r in ("prod/dbx", "prod/db-x", "prod/cache", "staging/db"):
        await grant(engine, b, r)


async def test_blast_radius_groups_conflict_as_one(make_engine: MakeEngine) -> None:
    engine = await make_engine(BLAST)
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    await grant(engine, a, "prod/db")
    for r in ("capacity/db", "capacity/db/shard-1", "routing/db-tier", "capacity"):
        err = await refused(engine, b, r)
        assert err.holder["holder"] == "agent-a" and err.holder["resource"] == "prod/db"
    await grant(engine, b, "capacity/web")
    await grant(engine, b, "routing/edge")


# ------------------------------------------------------------------------- waiting
async def test_waiters_are_served_in_arrival_order(engine: Engine) -> None:
    a = await add(engine, "agent-a")
    others = [await add(engine, f"agent-{n}") for n in "bcde"]
    first = await grant(engine, a, "prod/db")
    tasks = []
    for i, p in enumerate(others):  # mixed resources, all conflicting with prod/db
        resource = ["prod/db", "prod", "prod/db/replica", "prod/db"][i]
        tasks.append(waiting(engine, p, resource))
        await queued(engine, p.name)
    late = await refused(engine, await add(engine, "agent-late"), "prod/db")
    assert late.queue_position == 5
    current = first
    holder = a
    for p, t in zip(others, tasks, strict=True):
        assert not any(x.done() for x in tasks[tasks.index(t) :])
        await engine.release(holder, current["lease_id"])
        nxt = await asyncio.wait_for(t, 5)
        assert nxt["holder"] == p.name
        assert nxt["fencing_token"] > current["fencing_token"]
        current, holder = nxt, p
    grants = [r["agent_id"] for r in await rows(engine, "lease.granted")]
    assert grants == ["agent-a", "agent-b", "agent-c", "agent-d", "agent-e"]


async def test_no_overtaking_by_a_later_conflicting_request(engine: Engine) -> None:
    """agent-b waits for ``prod`` (behind agent-a on prod/db). agent-c then asks for
    prod/cache: free of any lease, but it conflicts with agent-b, who came first."""
    a, b, c = await adds(engine, "agent-a", "agent-b", "agent-c")
    lease = await grant(engine, a, "prod/db")
    wb = waiting(engine, b, "prod")
    await queued(engine, "agent-b")
    err = await refused(engine, c, "prod/cache")
    assert err.reason == "queue" and err.queue_position == 2
    wc = waiting(engine, c, "prod/cache")
    await queued(engine, "agent-c")
    await engine.release(a, lease["lease_id"])
    got_b = await asyncio.wait_for(wb, 5)
    assert got_b["holder"] == "agent-b" and not wc.done()
    await engine.release(b, got_b["lease_id"])
    assert (await asyncio.wait_for(wc, 5))["holder"] == "agent-c"


async def test_a_release_serves_the_whole_queue_not_only_its_first_page(engine: Engine) -> None:
    """The queue is read a few requests at a time when a lease ends. Releasing ``prod``
    frees prod/a (first in line), and prod/b too, queued behind more requests for prod/a
    than the first read holds: both are granted by the one release."""
    a = await add(engine, "agent-a")
    on_a = [await add(engine, f"agent-a{n}") for n in range(DISPATCH_PAGE + 2)]
    b = await add(engine, "agent-b")
    lease = await grant(engine, a, "prod")
    tasks = []
    for p in on_a:
        tasks.append(waiting(engine, p, "prod/a"))
        await queued(engine, p.name)
    tb = waiting(engine, b, "prod/b")
    await queued(engine, "agent-b")
    await engine.release(a, lease["lease_id"])
    got_b = await asyncio.wait_for(tb, 5)
    got_a = await asyncio.wait_for(tasks[0], 5)
    assert (got_a["holder"], got_b["holder"]) == ("agent-a0", "agent-b")
    assert not any(t.done() for t in tasks[1:])  # the rest wait behind agent-a0
    for t in tasks[1:]:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_a_release_wakes_the_waiter_at_once(engine: Engine) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    lease = await grant(engine, a, "prod/db", ttl_s=600)
    w = waiting(engine, b, "prod/db", wait_s=300)
    await queued(engine, "agent-b")
    t0 = time.perf_counter()
    await engine.release(a, lease["lease_id"])
    got = await asyncio.wait_for(w, 5)  # its blocker would have run 600 s more
    woke_in = time.perf_counter() - t0
    assert got["holder"] == "agent-b" and woke_in < 5
    seq = {r["event"]: r["seq"] for r in await rows(engine) if r["resource"] == "prod/db"}
    assert seq["lease.granted"] == seq["lease.released"] + 1  # in the releasing transaction


async def test_an_unserved_waiter_gets_held_and_leaves_the_queue(engine: Engine) -> None:
    a, b, c = await adds(engine, "agent-a", "agent-b", "agent-c")
    await grant(engine, a, "prod/db")
    err = await refused(engine, b, "prod/db", wait_s=1)
    assert err.queue_position == 1 and "waited" in (await rows(engine, "lease.denied"))[-1]["notes"]
    assert (await engine.resource_status("prod/db"))["queue"] == []
    assert (await refused(engine, c, "prod/db")).queue_position == 1


async def test_a_cancelled_waiter_leaves_the_queue(engine: Engine) -> None:
    a, lease, wb, wc = await two_behind(engine)
    wb.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wb
    assert [q["principal"] for q in (await engine.resource_status("prod/db"))["queue"]] == [
        "agent-c"
    ]
    await engine.release(a, lease["lease_id"])
    assert (await asyncio.wait_for(wc, 5))["holder"] == "agent-c"


async def test_a_free_waiter_found_by_its_own_recheck_goes_before_those_behind_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first waiter finds its resource free with nobody having served the queue (its
    blocker gone without a dispatch reaching it): it is granted, and the one behind it waits
    on. Where its recheck took it out of the queue and served the queue first, the request
    behind it, conflicting, was granted ahead of it, and it waited on outside the table."""
    a, lease, wb, wc = await two_behind(engine)

    async def unserved(tx: Any, paths: Any) -> None:
        return None

    with monkeypatch.context() as m:  # the release serves nobody
        m.setattr(engine, "_dispatch", unserved)
        await engine.release(a, lease["lease_id"])
    first = (await engine.store.read(lambda tx: tx.waiters_related(["prod/db"])))[0]
    req = engine._queued_request(first)
    got = await engine.store.transact(lambda tx: engine._recheck_tx(tx, req, first, False))
    assert getattr(got, "holder", None) == "agent-b"
    queue = (await engine.resource_status("prod/db"))["queue"]
    assert [q["principal"] for q in queue] == ["agent-c"]
    held = await engine.store.read(lambda tx: tx.held_leases())
    assert [h.holder for h in held] == ["agent-b"]
    for task in (wb, wc):
        task.cancel()
    await asyncio.gather(wb, wc, return_exceptions=True)


async def test_a_caller_cancelled_as_its_queue_join_commits_leaves_the_queue(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller went away while its queue join was committing (cancelled as the
    transaction's answer came back, before it began to wait): it leaves the queue with a
    row that says so, where it stayed queued and was granted a lease nobody collects."""
    a, b = await adds(engine, "agent-a", "agent-b")
    lease = await grant(engine, a, "prod/db")
    real = engine.store.transact
    armed = [True]

    async def transact(fn: Any, *args: Any, **kwargs: Any) -> Any:
        out = await real(fn, *args, **kwargs)
        if armed[0]:  # the queue join committed; its caller is cancelled now
            armed[0] = False
            raise asyncio.CancelledError
        return out

    monkeypatch.setattr(engine.store, "transact", transact)
    with pytest.raises(asyncio.CancelledError):
        await engine.acquire(b, resource="prod/db", intent="scale", wait_s=30)
    assert (await engine.resource_status("prod/db"))["queue"] == []
    withdrawn = (await rows(engine, "lease.denied"))[-1]
    assert "withdrawn 'scale'" in withdrawn["notes"] and withdrawn["agent_id"] == "agent-b"
    await engine.release(a, lease["lease_id"])
    held = await engine.store.read(lambda tx: tx.held_leases())
    assert held == []  # nobody was granted prod/db on agent-b's behalf


@pytest.mark.parametrize(
    ("cause", "said"),
    [(None, "the caller disconnected"), (SHUTTING_DOWN, "its server shut down")],
)
@pytest.mark.parametrize("wait_s", [0, 30])
async def test_a_caller_cancelled_as_its_grant_commits_gives_the_lease_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, wait_s: float, cause: Any, said: str
) -> None:
    """The caller went away while the grant of a free resource was committing (a hang-up
    or a graceful shutdown ending its call, as the transaction's answer came back): the
    lease it never received is released with a row that says so, where it stayed held, the
    resource blocked for its whole ttl, its caller retrying behind its own lease."""
    a, b = await adds(engine, "agent-a", "agent-b")
    real = engine.store.transact
    armed = [True]

    async def transact(fn: Any, *args: Any, **kwargs: Any) -> Any:
        out = await real(fn, *args, **kwargs)
        if armed[0]:  # the grant committed; its caller is cancelled now (a hang-up, a drain)
            armed[0] = False
            raise asyncio.CancelledError(cause)
        return out

    monkeypatch.setattr(engine.store, "transact", transact)
    with pytest.raises(asyncio.CancelledError):
        await engine.acquire(a, resource="prod/db", intent="scale", ttl_s=600, wait_s=wait_s)
    assert await engine.store.read(lambda tx: tx.held_leases()) == []
    granted, released = await rows(engine, "lease.granted"), await rows(engine, "lease.released")
    assert len(granted) == 1 and len(released) == 1
    assert released[0]["lock_key"] == granted[0]["lock_key"]
    assert f"released: {said} before the grant reached it" in released[0]["notes"]
    assert released[0]["agent_id"] == "agent-a"
    lease = await grant(engine, b, "prod/db")  # free at once, not in ten minutes
    assert lease["holder"] == "agent-b"


async def test_a_dead_servers_waiter_is_dropped_not_granted(
    engine: Engine, backend: Backend
) -> None:
    """A waiter whose server died stays in the queue; once its wait is over, the next
    dispatch drops it (one row says so) instead of granting it a lease nobody collects."""
    a, b = await adds(engine, "agent-a", "agent-b")
    lease = await grant(engine, a, "prod/db")
    ghost = Principal("agent-ghost", "agent")
    req = engine.validate_request(ghost, resource="prod/db", intent="orphaned")

    async def orphan(tx: Any) -> None:
        await tx.insert_waiter(
            Waiter("wt_ghost", 0, "prod/db", "agent-ghost", req.to_json(), tx.now(), tx.now() + 1)
        )

    await engine.store.transact(orphan)
    wb = waiting(engine, b, "prod/db")
    await queued(engine, "agent-b")
    await backend.advance(5)  # the ghost's wait ended 4 s ago; agent-a's lease still runs
    await engine.release(a, lease["lease_id"])
    assert (await asyncio.wait_for(wb, 5))["holder"] == "agent-b"
    dropped = [r for r in await rows(engine, "lease.denied") if r["agent_id"] == "agent-ghost"]
    assert len(dropped) == 1 and "nobody collected it" in dropped[0]["notes"]


# ------------------------------------------------------------------------- expiry
async def test_expiry_and_late_renew_or_release_never_free_a_successor(
    engine: Engine, backend: Backend
) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    old = await grant(engine, a, "prod/db", ttl_s=5)
    await backend.advance(6)
    assert (await engine.get_lease(old["lease_id"]))["state"] == "expired"
    new = await grant(engine, b, "prod/db", ttl_s=30)  # the expired holder is no obstacle
    assert new["fencing_token"] > old["fencing_token"]
    with pytest.raises(LeaseLost) as lost:
        await engine.renew(a, old["lease_id"])
    assert lost.value.status == 410 and lost.value.state == "expired"
    with pytest.raises(LeaseLost):
        await engine.release(a, old["lease_id"])
    assert (await engine.get_lease(new["lease_id"]))["state"] == "held"
    assert (await engine.fence("prod/db", new["fencing_token"]))["current"] is True
    assert (await engine.fence("prod/db", old["fencing_token"]))["current"] is False
    assert len(await rows(engine, "lease.expired")) == 1


async def test_sweep_expires_each_lease_once(engine: Engine, backend: Backend) -> None:
    a = await add(engine, "agent-a")
    for r in ("prod/a", "prod/b", "prod/c"):
        await grant(engine, a, r, ttl_s=5)
    await grant(engine, a, "prod/d", ttl_s=60)
    await backend.advance(6)
    assert await engine.sweep() == 3
    assert await engine.sweep() == 0
    expired = await rows(engine, "lease.expired")
    assert sorted(r["resource"] for r in expired) == ["prod/a", "prod/b", "prod/c"]
    assert all(r["agent_id"] == "writ" and r["lock_holder"] == "agent-a" for r in expired)


async def test_waiter_is_granted_when_its_blocker_expires(engine: Engine, backend: Backend) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    old = await grant(engine, a, "prod/db", ttl_s=5)
    w = waiting(engine, b, "prod/db", wait_s=30)
    await queued(engine, "agent-b")
    await backend.advance(6)
    await engine.sweep()  # the sweeper (any server's) expires it and serves the queue
    got = await asyncio.wait_for(w, 5)
    assert got["holder"] == "agent-b" and got["fencing_token"] > old["fencing_token"]


# ------------------------------------------------------------------------- revoke
async def test_revoke_rules_and_provenance(engine: Engine) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    jane = await add(engine, "oncall-jane", "human")
    lease = await grant(engine, a, "prod/db")
    with pytest.raises(Forbidden):
        await engine.revoke(b, lease["lease_id"], "R-1", "oncall", "stuck")
    with pytest.raises(Invalid) as missing:
        await engine.revoke(jane, lease["lease_id"], "", "oncall", "stuck")
    assert "runbook" in missing.value.message
    done = await engine.revoke(
        jane, lease["lease_id"], "RB-44 db stuck", "svc-ops-princess", "holder unresponsive"
    )
    assert done["state"] == "revoked"
    row = (await rows(engine, "lease.revoked"))[-1]
    prov = row["second_key_revoke_provenance"]
    assert prov["revoked_by"] == "oncall-jane" and prov["via_runbook"] == "RB-44 db stuck"
    assert prov["after_paging"] == "svc-ops-princess" and prov["at"]
    assert row["lock_holder"] == "agent-a" and row["approved_by"] == "oncall-jane"
    with pytest.raises(LeaseLost):
        await engine.renew(a, lease["lease_id"])
    nxt = await grant(engine, b, "prod/db")
    assert nxt["fencing_token"] > lease["fencing_token"]


# ------------------------------------------------------------------------- ledger
async def test_audit_since_and_until_include_the_rows_stamped_at_them(
    engine: Engine, backend: Backend
) -> None:
    """``since`` and ``until`` are inclusive of a row's timestamp as shown: a window from a
    row's own timestamp to the same instant holds that row, whatever the store's clock read
    below the microsecond."""
    a = await add(engine, "agent-a")
    for i in range(24):
        if backend.clock is not None:  # the host clock reads nanoseconds; so does this one
            backend.clock.advance(0.012345678901)
        await grant(engine, a, f"prod/r{i}")
    for row in await rows(engine):
        at = parse_time(row["timestamp"])
        window = (await engine.audit(since=at, until=at))["rows"]
        assert row["seq"] in [r["seq"] for r in window], row["timestamp"]


async def test_audit_verifies_and_tampering_is_found(engine: Engine, backend: Backend) -> None:
    a = await add(engine, "agent-a")
    lease = await grant(engine, a, "prod/db")
    await engine.release(a, lease["lease_id"])
    ok = await engine.verify()
    assert ok.ok and ok.rows == 3 and ok.first_bad_seq is None
    row = (await rows(engine, "lease.granted"))[0]
    body = {k: v for k, v in row.items() if k != "hash"}
    body["lock_holder"] = "someone-else"
    await backend.tamper(row["seq"], json.dumps(body, sort_keys=True, separators=(",", ":")))
    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq == row["seq"] and bad.rows == row["seq"] - 1


async def test_rows_deleted_from_the_end_are_found_missing(
    engine: Engine, backend: Backend
) -> None:
    """The chain alone cannot tell its last rows were deleted; the head the store keeps
    beside it can, and the next row is numbered after them, so the gap stays in sight."""
    a = await add(engine, "agent-a")
    lease = await grant(engine, a, "prod/db")
    await engine.release(a, lease["lease_id"])
    assert (await engine.verify()).rows == 3
    await backend.cut_tail(1)
    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq == 2 and bad.rows == 1, bad
    assert bad.reason is not None and "rows 2..3 were removed" in bad.reason, bad.reason
    await add(engine, "agent-b")  # the next row: seq 4, after the head, not 2
    assert [r["seq"] for r in await rows(engine)] == [1, 4]
    later = await engine.verify()
    assert not later.ok and later.first_bad_seq == 2, later
    await backend.cut_tail(0)  # every row
    assert not (await engine.verify()).ok


async def test_every_state_change_is_one_row(engine: Engine) -> None:
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    lease = await grant(engine, a, "prod/db")
    await refused(engine, b, "prod/db")
    await engine.renew(a, lease["lease_id"])
    await engine.release(a, lease["lease_id"])
    events = [r["event"] for r in await rows(engine)]
    assert events == [
        "principal.added",
        "principal.added",
        "lease.granted",
        "lease.denied",
        "lease.renewed",
        "lease.released",
    ]
    assert [r["seq"] for r in await rows(engine)] == list(range(1, 7))


# ------------------------------------------------------------------------- principals, who, fence
async def test_principals(engine: Engine) -> None:
    p, token = await engine.add_principal(None, "oncall", "queue", wake="/wake/oncall")
    assert await engine.authenticate(token) == p
    with pytest.raises(Conflict):
        await engine.add_principal(None, "oncall", "human")
    with pytest.raises(Unauthenticated):
        await engine.authenticate("writ_nope")
    agent, _ = await engine.add_principal(None, "agent-1", "agent", vendor="acme")
    with pytest.raises(Forbidden):
        await engine.add_principal(agent, "agent-2", "agent")
    with pytest.raises(Invalid):
        await engine.add_principal(None, "Bad Name", "agent")
    listed = {d["name"]: d for d in await engine.list_principals()}
    assert set(listed) == {"oncall", "agent-1"} and listed["agent-1"]["vendor"] == "acme"
    assert "token" not in listed["oncall"]


async def test_who_reads_the_ledger_at_any_instant(engine: Engine, backend: Backend) -> None:
    a = await add(engine, "agent-a")
    lease = await grant(engine, a, "prod/db")
    await backend.advance(1)
    await engine.release(a, lease["lease_id"])
    await backend.advance(1)
    granted = parse_time((await rows(engine, "lease.granted"))[0]["timestamp"])
    released = parse_time((await rows(engine, "lease.released"))[0]["timestamp"])
    during = await engine.who("prod/db/replica", granted + (released - granted) / 2)
    assert during["lock_holder"] == "agent-a"
    assert during["lease"]["fencing_token"] == lease["fencing_token"]
    assert (await engine.who("prod/db", granted - 0.5))["lock_holder"] == "none"
    assert (await engine.who("prod/db"))["lock_holder"] == "none"


async def test_fence_tells_the_current_token(engine: Engine) -> None:
    a = await add(engine, "agent-a")
    lease = await grant(engine, a, "prod/db")
    now = await engine.fence("prod/db/table", lease["fencing_token"])
    assert now["current"] is True and now["current_token"] == lease["fencing_token"]
    assert (await engine.fence("prod/db", lease["fencing_token"] - 1))["current"] is False
    await engine.release(a, lease["lease_id"])
    assert (await engine.fence("prod/db", lease["fencing_token"]))["current_token"] is None


async def test_fence_names_the_holder_who_names_across_a_blast_radius(
    make_engine: MakeEngine,
) -> None:
    """The holder of routing/db-tier holds write authority over prod/db (one blast radius):
    its token is the current one there, as ``who`` says, and nobody else's is."""
    engine = await make_engine(BLAST)
    routing = await add(engine, "routing-agent")
    lease = await grant(engine, routing, "routing/db-tier")
    assert (await engine.who("prod/db"))["lock_holder"] == "routing-agent"
    fence = await engine.fence("prod/db", lease["fencing_token"])
    assert fence["current"] is True and fence["holder"] == "routing-agent"
    assert (await engine.fence("capacity/db/shard-1", lease["fencing_token"]))["current"]
    assert (await engine.fence("capacity/web", lease["fencing_token"]))["current_token"] is None


async def test_a_member_of_a_blast_radius_holds_no_ancestor_of_the_others(
    make_engine: MakeEngine,
) -> None:
    """A lease on capacity/db keeps prod (above prod/db, its neighbour) from everyone else,
    but holds none of it: prod/web beside prod/db is free for another agent, so the
    capacity/db holder is not current for prod, capacity or routing (fence, who and the
    gate alike), and two writers are never current over one resource."""
    engine = await make_engine(BLAST)
    cap, cap_token = await engine.add_principal(None, "capacity-agent", "agent")
    web, gate = await add(engine, "web-agent"), await add(engine, "the-gate")
    lease = await grant(engine, cap, "capacity/db")
    other = await grant(engine, web, "prod/web")  # not in the blast radius: free
    token = lease["fencing_token"]
    for above in ("prod", "capacity", "routing"):
        fence = await engine.fence(above, token)
        assert fence["current"] is False and fence["holder"] is None, fence
        assert (await engine.who(above))["lock_holder"] == "none"
    assert (await engine.fence("prod/db", token))["current"] is True  # its neighbour
    assert (await engine.fence("prod/web", other["fencing_token"]))["current"] is True
    checked = await engine.gate_check(
        gate, cap_token, lease["lease_id"], token, "prod", "POST", "/admin/prod/scale"
    )
    assert checked["passed"] is False and "does not cover prod" in checked["reason"]
    with pytest.raises(Held):
        await grant(engine, web, "prod")  # and it stays kept from everyone else


async def test_recheck_after_a_gate_refused_the_waiter_runs_the_gates(engine: Engine) -> None:
    """A waiter refused by a safety rule at dispatch learns of it by a notification; if
    its own recheck runs first (the note crosses servers), it must not be granted past
    the rule."""
    a, b = await add(engine, "agent-a"), await add(engine, "agent-b")
    jane = await add(engine, "oncall-jane", "human")
    lease = await grant(engine, a, "prod/db")
    w = waiting(engine, b, "prod/db")
    await queued(engine, "agent-b")
    await engine.freezes.freeze(jane, prefix="prod", reason="incident")
    await engine.release(a, lease["lease_id"])  # dispatch: agent-b refused, frozen
    with pytest.raises(Exception, match=r"(?i)frozen"):
        await asyncio.wait_for(w, 5)
    req = engine.validate_request(b, resource="prod/db", intent="change prod/db")
    gone = Waiter(
        waiter_id="wt_gone",
        seq=10**9,
        resource="prod/db",
        principal="agent-b",
        request=req.to_json(),
        enqueued_at=0,
        deadline=0,
    )
    out = await engine.store.transact(lambda tx: engine._recheck_tx(tx, req, gone, False))
    assert not hasattr(out, "lease_id"), "granted past a freeze"


# ------------------------------------------------------------------------- two servers
@contextlib.asynccontextmanager
async def servers(backend: Backend, n: int = 2) -> AsyncIterator[list[Engine]]:
    engines = [Engine(backend.open_store()) for _ in range(n)]
    for e in engines:
        await e.start(background=False)
    try:
        yield engines
    finally:
        for e in engines:
            await e.stop()


async def test_pg_conflicting_grants_on_two_servers(pg_backend: Backend) -> None:
    """20 agents on two servers ask for one free resource at once: one wins."""
    async with servers(pg_backend) as (s1, s2):
        agents = [await add(s1, f"agent-{i}") for i in range(20)]
        results = await asyncio.gather(
            *(
                (s1 if i % 2 else s2).acquire(p, resource="prod/db", intent="x")
                for i, p in enumerate(agents)
            ),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, dict)]
        assert len(won) == 1 and all(isinstance(r, Held) for r in results if r not in won)
        assert (await s2.verify()).ok


async def test_pg_waiter_on_one_server_is_woken_by_a_release_on_the_other(
    pg_backend: Backend,
) -> None:
    async with servers(pg_backend) as (s1, s2):
        a, b, c = await adds(s1, "agent-a", "agent-b", "agent-c")
        lease = await grant(s1, a, "prod/db", ttl_s=600)
        wb = waiting(s2, b, "prod/db")  # FIFO across servers: b on s2, then c on s1
        await queued(s1, "agent-b")
        wc = waiting(s1, c, "prod/db")
        await queued(s1, "agent-c")
        latencies = []
        t0 = time.perf_counter()
        await s1.release(a, lease["lease_id"])
        got_b = await asyncio.wait_for(wb, 5)
        latencies.append(time.perf_counter() - t0)
        assert got_b["holder"] == "agent-b" and not wc.done()
        t0 = time.perf_counter()
        await s2.release(b, got_b["lease_id"])
        got_c = await asyncio.wait_for(wc, 5)
        latencies.append(time.perf_counter() - t0)
        assert got_c["holder"] == "agent-c"
        assert got_c["fencing_token"] > got_b["fencing_token"] > lease["fencing_token"]
        assert max(latencies) < 1.0, latencies  # by notification, not by a 600 s timer


async def test_pg_expiry_by_two_sweepers_happens_once(pg_backend: Backend) -> None:
    async with servers(pg_backend) as (s1, s2):
        a = await add(s1, "agent-a")
        for i in range(10):
            await grant(s1, a, f"prod/r{i}", ttl_s=5)
        await pg_backend.advance(6)
        counts = await asyncio.gather(s1.sweep(), s2.sweep(), s1.sweep(), s2.sweep())
        assert sum(counts) == 10
        assert len(await rows(s2, "lease.expired")) == 10


async def test_pg_tokens_increase_in_grant_order_under_contention(pg_backend: Backend) -> None:
    """Agents on two servers take turns on one resource; the ledger's grant order and
    token order agree, and no two holders overlap."""
    async with servers(pg_backend) as (s1, s2):
        agents = [await add(s1, f"agent-{i}") for i in range(8)]

        async def work(engine: Engine, p: Principal) -> None:
            for _ in range(3):
                lease = await grant(engine, p, "prod/db", wait_s=30)
                await engine.release(p, lease["lease_id"])

        await asyncio.gather(*(work(s1 if i % 2 else s2, p) for i, p in enumerate(agents)))
        ledger = [r for r in await rows(s1) if r["resource"] == "prod/db"]
        tokens = [r["fencing_token"] for r in ledger if r["event"] == "lease.granted"]
        assert len(tokens) == 24 and all(x < y for x, y in itertools.pairwise(tokens))
        holder = None
        for r in ledger:
            if r["event"] == "lease.granted":
                assert holder is None, f"{r['lock_holder']} granted while {holder} held"
                holder = r["lock_holder"]
            elif r["event"] == "lease.released":
                assert holder == r["lock_holder"]
                holder = None
        assert (await s1.verify()).ok
