"""A cell of the tables writ serves from that writ cannot read back (written by hand: not
JSON, JSON of another shape, a time stored as text) is a row changed by hand: verify names
that row, online, offline and in the standing verify, never a traceback or "could not run";
it never hides a row that can be read and disagrees (an admin written in beside a decoy);
and the reads that list rows (principals, leases) leave it out with an ERROR line, never a
500. Then the states writ never makes that verify used to accept: a principal named as writ
refuses to name one, a fencing-token counter that leaves no next token, two held leases
that conflict whatever the blast radius."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.stores_fixtures import Backend
from tests.test_verify_waiters import Queue
from tests.verify_fixtures import cli_verify
from writ.api.app import create_app
from writ.core.errors import Unavailable
from writ.core.models import Lease, Waiter, new_id
from writ.engine import RESERVED_NAMES, Engine
from writ.engine.blast_overlaps import EVENT as OVERLAPPED
from writ.engine.hooks import SYSTEM, lock_row
from writ.evidence.sentinel import Sentinel
from writ.stores import enrolled
from writ.stores.base import Tx

# a cell set by hand: the table, the statement ({lease}: the held lease's id, {waiter}: the
# queued request's), the field verify names it in and the name ({lease}, {waiter} or a
# principal's), the column and the words; and whether PostgreSQL's column types take it
CELLS: dict[str, tuple[str, str, str, str, bool]] = {
    "queues not JSON": (
        "UPDATE principals SET queues = 'not json' WHERE name = 'decoy'",
        "principal",
        "decoy",
        "its queues column ('not json') cannot be read (not JSON)",
        True,
    ),
    "queues not a list": (
        "UPDATE principals SET queues = '[1, 2]' WHERE name = 'decoy'",
        "principal",
        "decoy",
        "its queues column ('[1, 2]') cannot be read (not a list of names)",
        True,
    ),
    "touches not JSON": (
        "UPDATE leases SET touches = 'not json' WHERE lease_id = '{lease}'",
        "lease_id",
        "{lease}",
        "its touches column ('not json') cannot be read (not JSON)",
        True,
    ),
    "rollback not JSON": (
        "UPDATE leases SET rollback = '{{bad' WHERE lease_id = '{lease}'",
        "lease_id",
        "{lease}",
        "its rollback column ('{{bad') cannot be read (not JSON)",
        True,
    ),
    "request not JSON": (
        "UPDATE waiters SET request = 'not json' WHERE waiter_id = '{waiter}'",
        "waiter_id",
        "{waiter}",
        "its request column ('not json') cannot be read (not JSON)",
        True,
    ),
    "expires_at as text": (
        "UPDATE leases SET expires_at = 'later' WHERE lease_id = '{lease}'",
        "lease_id",
        "{lease}",
        "its expires_at column ('later') cannot be read (stored as text, not a number)",
        False,
    ),
    "admin as text": (
        "UPDATE principals SET admin = 'yes' WHERE name = 'decoy'",
        "principal",
        "decoy",
        "its admin column ('yes') cannot be read (stored as text, not 0 or 1)",
        False,
    ),
    "created_at as text": (
        "UPDATE principals SET created_at = 'yesterday' WHERE name = 'decoy'",
        "principal",
        "decoy",
        "its created_at column ('yesterday') cannot be read (stored as text, not a number)",
        False,
    ),
}
LAST_TOKEN = 2**63 - 1  # the largest a store keeps: a signed 64-bit integer
MALLORY = (
    "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
    " VALUES ('mallory', 'human', {admin}, 'mallorys-hash', 1.0)"
)


class Cast(Queue):
    """:class:`Queue`, its first request granted: cost-agent holds prod/db (with a rollback
    plan: ``lease``), web-agent's request waits for it (``waiter``); decoy, a human, and
    jane, an admin."""

    lease: dict[str, Any]
    waiter: Waiter

    async def cast(self) -> None:
        engine = self.engine
        lease, waiters = await self.start()
        await engine.release(self.holder, lease["lease_id"])  # the first waiter is granted
        self.lease, self.waiter = await self.tasks[0], waiters[1]
        await engine.add_principal(None, "decoy", "human")
        await engine.add_principal(None, "jane", "human", admin=True)
        assert (await engine.verify()).ok

    def said(self, text: str) -> str:
        return text.format(lease=self.lease["lease_id"], waiter=self.waiter.waiter_id)


@pytest.fixture
async def queue(engine: Engine) -> AsyncIterator[Cast]:
    q = Cast(engine)
    try:
        await q.cast()
        yield q
    finally:
        await q.stop()


@pytest.mark.parametrize("cell", sorted(CELLS))
async def test_a_cell_writ_cannot_read_is_a_row_changed_by_hand(
    engine: Engine, backend: Backend, queue: Cast, cell: str, caplog: pytest.LogCaptureFixture
) -> None:
    sql, field, name, words, on_pg = CELLS[cell]
    if backend.is_pg and not on_pg:
        pytest.skip("PostgreSQL's column types refuse the value")
    name, words = queue.said(name), queue.said(words)
    await backend.sql(queue.said(sql))

    # online, offline and the standing verify: that row, as changed by hand
    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq is None, bad
    assert getattr(bad, field) == name and words in (bad.reason or ""), bad
    assert "table was changed by hand" in (bad.reason or "")
    report = await cli_verify(backend.url)
    assert report[field] == name and words in report["reason"], report
    out = await Sentinel(engine, every=60).pass_()
    assert not out.ok and getattr(out, field) == name

    # the lists answer, the row left out, with an ERROR line naming it
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="writ.audit"):
        names = [p["name"] for p in await engine.list_principals()]
        leases = [l["lease_id"] for l in await engine.list_leases()]
    assert "jane" in names and ("decoy" in names) == (field != "principal")
    assert (queue.lease["lease_id"] in leases) == (field != "lease_id")
    if field != "waiter_id":
        assert any(words in r.getMessage() for r in caplog.records), caplog.records
    app = create_app(engine, start_engine=False, verify_every=0)
    _, token = await engine.add_principal(None, "root", "human", admin=True)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as http:
        for url in ("/v1/principals", "/v1/leases", "/v1/status", "/v1/audit/verify"):
            got = await http.get(url, headers=auth)
            assert got.status_code == 200, (url, got.text)
        assert got.json()[field] == name


@pytest.mark.parametrize("first", ["aaa", "zzz"])
async def test_a_decoy_never_hides_an_admin_written_in_by_hand(
    engine: Engine, backend: Backend, queue: Cast, first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mallory, an admin inserted by hand, beside a principal whose queues cannot be read
    (before or after her by name, on another page): verify names mallory, and says the decoy
    cannot be read too; offline the same."""
    monkeypatch.setattr(enrolled, "PAGE", 1)
    await backend.sql(
        "INSERT INTO principals (name, kind, admin, token_hash, created_at, queues)"
        f" VALUES ('{first}', 'human', {'false' if backend.is_pg else 0}, 'decoys-hash', 1.0,"
        " 'not json')"
    )
    await backend.sql(MALLORY.format(admin="true" if backend.is_pg else 1))
    online = (await engine.verify()).to_dict()
    for bad in (online, await cli_verify(backend.url)):
        reason = str(bad.get("reason"))
        assert bad.get("principal") == "mallory", bad
        assert "no principal.added row names it" in reason
        assert f"principal {first}: its queues column ('not json') cannot be read" in reason


async def test_a_decoy_in_another_table_never_hides_an_admin_written_in_by_hand(
    engine: Engine, backend: Backend, queue: Cast
) -> None:
    """The decoy in the leases table (checked before the principals): verify still names
    mallory, and the lease it cannot read after her."""
    lease = queue.lease["lease_id"]
    await backend.sql(f"UPDATE leases SET touches = 'not json' WHERE lease_id = '{lease}'")
    await backend.sql(MALLORY.format(admin="true" if backend.is_pg else 1))
    for bad in ((await engine.verify()).to_dict(), await cli_verify(backend.url)):
        reason = str(bad.get("reason"))
        assert bad.get("principal") == "mallory", bad
        assert "no principal.added row names it" in reason and lease in reason, reason


async def test_an_unreadable_held_lease_is_not_called_deleted(
    engine: Engine, backend: Backend, queue: Cast
) -> None:
    """The ledger holds the lease open and the table holds it in a form writ cannot read
    (its fencing token stored as text): named unreadable, not "the leases table does not
    hold it"."""
    lease = queue.lease["lease_id"]
    if backend.is_pg:
        pytest.skip("PostgreSQL's bigint refuses text")
    await backend.sql(f"UPDATE leases SET fencing_token = 'abc' WHERE lease_id = '{lease}'")
    bad = await engine.verify()
    assert bad.lease_id == lease and "its fencing_token column ('abc')" in (bad.reason or "")
    assert "does not hold it" not in (bad.reason or "")


# ---- states writ never makes ----------------------------------------------------------------
def test_verify_reserves_the_names_the_engine_reserves() -> None:
    """The store keeps its own copy (a store does not import the engine): the same names."""
    assert enrolled.RESERVED == RESERVED_NAMES


@pytest.mark.parametrize("name", ["writ", "operator", "none", "Admin", "a\x00b", "..", "x" * 65])
async def test_a_principal_named_as_writ_never_names_one_fails_verify(
    engine: Engine, backend: Backend, name: str
) -> None:
    """A principal writ would refuse to add (a reserved name: ``writ`` acts as any admin;
    or not a name), its row appended in the chain as writ words one (after the last
    checkpoint, rows can be forged): verify names it all the same."""
    if backend.is_pg and "\x00" in name:
        pytest.skip("PostgreSQL's text takes no NUL")
    await engine.add_principal(None, "jane", "human", admin=True)

    async def added(tx: Tx) -> None:
        await tx.append(
            {
                "event": "principal.added",
                "agent_id": "operator",
                "resource": f"principals/{name}",
                "notes": f"operator added human {name!r} as admin",
            }
        )

    await engine.store.transact(added)
    await backend.sql(
        "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
        " VALUES (%s, 'human', %s, 'forged-hash', 1.0)",
        name,
        True if backend.is_pg else 1,
    )
    bad = await engine.verify()
    assert not bad.ok and bad.principal == name, bad
    assert "which writ never gives a principal" in (bad.reason or "")
    assert (await cli_verify(backend.url))["principal"] == name


async def test_a_counter_that_leaves_no_next_token_fails_verify(
    engine: Engine, backend: Backend
) -> None:
    """A counter at the largest token a store keeps (raised by hand) leaves every grant
    without one: verify fails, naming no lease; one below it is what writ may leave."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.release(agent, lease["lease_id"])
    for counter, ok in ((LAST_TOKEN - 1, True), (LAST_TOKEN, False)):
        if backend.is_pg:
            await backend.sql(f"SELECT setval('fencing_token', {counter}, true)")
        else:
            await backend.sql(f"UPDATE meta SET value = {counter} WHERE key = 'fencing_token'")
        out = await engine.verify()
        assert out.ok is ok, out
    assert "largest fencing token a store keeps" in (out.reason or "")
    assert out.lease_id in (None, "") and "lease_id" not in out.to_dict()
    report = await cli_verify(backend.url)
    assert "largest fencing token" in report["reason"] and "lease_id" not in report


async def _second_holder(engine: Engine, resource: str, overlapped: bool = False) -> Lease:
    """A held lease on ``resource`` for cost-agent, its grant row in the chain as writ
    words one (forged: writ never grants it while perf-agent's lease on prod/db is held);
    with ``overlapped``, a ``lease.overlapped`` row about the lower token's lease too."""
    cost = await engine.principal("cost-agent")
    assert cost is not None

    async def grant(tx: Tx) -> Lease:
        now = tx.now()
        lease = Lease(
            new_id("ls"),
            resource,
            cost.name,
            "second writer",
            await tx.next_token(),
            now,
            now + 600,
            600.0,
        )
        await tx.insert_lease(lease)
        notes = f"granted {lease.lease_id} for 'second writer', ttl 600s, touches *"
        await tx.append(engine.lease_row(lease, "lease.granted", cost.name, notes))
        if overlapped:
            (low,) = [l for l in await tx.held_related(["prod/db"]) if l.holder == "perf-agent"]
            said = f"lease {low.lease_id} overtaken by lease {lease.lease_id}"
            await tx.append(lock_row(OVERLAPPED, SYSTEM, low.resource, low, said))
        return lease

    return await engine.store.transact(grant)


@pytest.mark.parametrize("resource", ["prod/db", "prod", "prod/db/shard-1"])
async def test_two_held_leases_that_conflict_under_any_blast_radius_fail_verify(
    engine: Engine, backend: Backend, resource: str
) -> None:
    """A second held lease on prod/db (or above it, or below it), its grant row chained as
    writ words one: writ never holds both, so verify names the higher token's."""
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    await engine.add_principal(None, "cost-agent", "agent")
    first = await engine.acquire(perf, resource="prod/db", intent="scale up", ttl_s=600)
    assert (await engine.verify()).ok
    second = await _second_holder(engine, resource)
    bad = await engine.verify()
    assert not bad.ok and bad.lease_id == second.lease_id, bad
    assert first["lease_id"] in (bad.reason or "")
    assert "conflict whatever the blast radius" in (bad.reason or "")
    assert (await cli_verify(backend.url))["lease_id"] == second.lease_id


async def test_two_held_leases_a_lease_overlapped_row_records_verify(
    engine: Engine, backend: Backend
) -> None:
    """The pair a ``lease.overlapped`` row about the lower token's lease records is what writ
    found at a start (tests/test_group_change.py: groups changed under them), not tampering;
    held leases on unrelated resources are never a pair."""
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    await engine.add_principal(None, "cost-agent", "agent")
    await engine.acquire(perf, resource="prod/db", intent="scale up", ttl_s=600)
    await engine.acquire(perf, resource="prod/dbx", intent="scale up", ttl_s=600)
    await _second_holder(engine, "prod/db", overlapped=True)
    assert (await engine.verify()).ok, await engine.verify()
    assert (await cli_verify(backend.url))["ok"]


async def test_an_unreadable_due_lease_stops_no_other_from_expiring(
    engine: Engine, backend: Backend
) -> None:
    """Two leases past their ttl, one of them changed by hand so that writ cannot read it:
    the sweep expires the other (it expired neither, its fallback failing on the same read),
    and verify names the one it cannot read. PostgreSQL's servers decide on every held
    lease, in memory: there an unreadable one stops every write (it fails closed)."""
    agent, _ = await engine.add_principal(None, "sweep-agent", "agent")
    one = await engine.acquire(agent, resource="x/one", intent="work", ttl_s=1)
    two = await engine.acquire(agent, resource="x/two", intent="work", ttl_s=1)
    await backend.sql(
        f"UPDATE leases SET touches = 'not json' WHERE lease_id = '{one['lease_id']}'"
    )
    await backend.advance(2)
    if backend.is_pg:
        with pytest.raises(Unavailable):
            await engine.sweep()
        assert not (await engine.verify()).ok
        return
    assert await engine.sweep() == 1
    states = {l["lease_id"]: l["state"] for l in await engine.list_leases(state=None)}
    assert states.get(two["lease_id"]) == "expired", states
    bad = await engine.verify()
    assert not bad.ok and bad.lease_id == one["lease_id"], bad
