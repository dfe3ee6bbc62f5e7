"""Verify covers the held leases: writ serves them from the leases table, outside the hash
chain, so each held lease is checked against the hashed rows of its life — online, with a
signed checkpoint, and offline (``--store``), on every store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from tests.verify_fixtures import after_the_listing, cli_verify, found_everywhere, walked
from writ.cli import main
from writ.core.models import Principal
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make, write_checkpoint
from writ.stores import held

YEAR = 365 * 86400.0
PLAN = {
    "allowed": True,
    "path": "/rollback/db",
    "key_holder": "db-oncall",
    "override_queue": "db-oncall",
}
COLS = (
    "lease_id, resource, holder, intent, fencing_token, acquired_at, expires_at, ttl_s, "
    "touches, state, rollback, ended_at, request_id"
)

# what an intruder with database rights does to the leases table, and the field verify names
EDITS: dict[str, tuple[str, str]] = {
    "a year more": ("UPDATE leases SET expires_at = expires_at + {year} WHERE {me}", "expires_at"),
    "another holder": ("UPDATE leases SET holder = 'cost-agent' WHERE {me}", "holder"),
    "another token": (
        "UPDATE leases SET fencing_token = fencing_token + 1000 WHERE {me}",
        "no lease.granted row",
    ),
    "another ttl": (
        "UPDATE leases SET ttl_s = 3600, expires_at = acquired_at + 3600 WHERE {me}",
        "ttl_s",
    ),
    "another rollback route": (
        "UPDATE leases SET rollback = replace(rollback, '/rollback/db', '/evil') WHERE {me}",
        "rollback.path",
    ),
    "a lease nobody was granted": (
        f"INSERT INTO leases ({COLS}) SELECT 'ls_forged', 'routing/edge', 'perf-agent', intent,"
        " fencing_token + 1000, acquired_at, expires_at, ttl_s, touches, 'held', rollback, NULL,"
        " NULL FROM leases WHERE {me}",
        "no lease.granted row",
    ),
    "a released lease held again": (
        "UPDATE leases SET state = 'held', ended_at = NULL WHERE lease_id = '{gone}'",
        "(lease.released) ended it",
    ),
}


async def _leases(engine: Engine) -> tuple[Principal, dict[str, Any], dict[str, Any]]:
    """perf-agent holds prod/db (with a rollback plan); its earlier lease on prod/cache was
    released."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    await engine.add_principal(None, "cost-agent", "agent")
    await engine.add_principal(None, "db-oncall", "queue")
    gone = await engine.acquire(agent, resource="prod/cache", intent="flush")
    await engine.release(agent, gone["lease_id"])
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up", rollback=PLAN)
    return agent, lease, gone


async def test_held_leases_as_writ_wrote_them_verify(engine: Engine, backend: Backend) -> None:
    """Granted, renewed (with another ttl) and released leases verify, online and offline."""
    agent, lease, _ = await _leases(engine)
    assert (await engine.verify()).ok
    await engine.renew(agent, lease["lease_id"], ttl_s=120)
    assert (await engine.verify()).ok
    assert (await cli_verify(backend.url))["ok"]


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_hand_edited_held_lease_fails_verify(
    engine: Engine, backend: Backend, edit: str
) -> None:
    """A held lease changed (or made) by hand in the leases table fails verify — online,
    with a signed checkpoint, and offline — naming the lease and the field, while every
    audit row is intact."""
    _, lease, gone = await _leases(engine)
    key = generate_key()
    cp = await make(engine.store, key)
    sql, field = EDITS[edit]
    me = f"lease_id = '{lease['lease_id']}'"
    await backend.sql(sql.format(year=YEAR, me=me, gone=gone["lease_id"]))

    want = {"a lease nobody was granted": "ls_forged", "a released lease held again": gone}
    lease_id = want.get(edit, lease)
    lease_id = lease_id if isinstance(lease_id, str) else lease_id["lease_id"]
    bad = await found_everywhere(engine, backend.url, cp, key, "lease_id", lease_id, field)
    assert f"held lease {lease_id}" in (bad.reason or "")


async def test_a_renewed_lease_is_checked_against_its_renewal(
    engine: Engine, backend: Backend
) -> None:
    """After a renewal the expiry is the renewal row's: moving it fails verify."""
    agent, lease, _ = await _leases(engine)
    await engine.renew(agent, lease["lease_id"], ttl_s=120)
    await backend.sql(
        f"UPDATE leases SET expires_at = expires_at + 60 WHERE lease_id = '{lease['lease_id']}'"
    )
    bad = await engine.verify()
    assert not bad.ok and "the expires_at column" in (bad.reason or "")
    assert "(lease.renewed, " in (bad.reason or "")


async def test_leases_changed_by_writ_while_verify_runs_are_not_tampered(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between verify listing the held leases and checking them, a lease is renewed with
    another ttl, one released and one granted: each is judged as it stands when checked."""
    agent, lease, _ = await _leases(engine)
    other = await engine.acquire(agent, resource="prod/queue", intent="drain")
    monkeypatch.setattr(held, "PAGE", 1)
    store = engine.store

    async def meanwhile() -> None:
        await engine.renew(agent, lease["lease_id"], ttl_s=300)
        await engine.release(agent, other["lease_id"])
        await engine.acquire(agent, resource="prod/web", intent="deploy")

    listed = after_the_listing(monkeypatch, store, meanwhile)
    found = await held.held_disagrees(store)
    assert listed.is_set() and found is None


async def test_the_cli_names_the_lease_not_a_seq(
    engine: Engine, backend: Backend, tmp_path: Any
) -> None:
    """``writ audit verify`` prints a lease the ledger does not account for as itself (no
    "at seq None"), with and without a checkpoint, and exits 1."""
    _, lease, _ = await _leases(engine)
    signed = await make(engine.store, generate_key())
    write_checkpoint(signed, tmp_path / "cp.txt")
    await backend.sql(
        f"UPDATE leases SET holder = 'cost-agent' WHERE lease_id = '{lease['lease_id']}'"
    )
    want = f"BROKEN: held lease {lease['lease_id']} on prod/db: the holder column"
    for more in ([], ["--checkpoint", str(tmp_path / "cp.txt")]):
        args = ["audit", "verify", "--store", backend.url, *more]
        res = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert res.exit_code == 1 and want in res.output and "seq None" not in res.output, more


async def test_held_lives_reads_each_held_lease_with_its_two_rows(engine: Engine) -> None:
    """``Tx.held_lives`` (one statement on PostgreSQL) answers what the lease read and
    ``audit_lease_life`` answer lease by lease: held leases only, by fencing token."""
    agent, lease, gone = await _leases(engine)
    renewed = await engine.acquire(agent, resource="prod/web", intent="deploy")
    await engine.renew(agent, renewed["lease_id"], ttl_s=90)
    ids = [renewed["lease_id"], gone["lease_id"], "ls_nobody", lease["lease_id"]]

    async def both(tx: Any) -> tuple[Any, Any]:
        one = [
            (l, *await tx.audit_lease_life(l.lock_key))
            for l in [await tx.get_lease(i) for i in ids]
            if l is not None and l.state == "held"
        ]
        return await tx.held_lives(ids), one

    lives, one = await engine.store.read(both)
    assert [(l.lease_id, g["seq"], z["event"]) for l, g, z in lives] == [
        (lease["lease_id"], lives[0][1]["seq"], "lease.granted"),
        (renewed["lease_id"], lives[1][1]["seq"], "lease.renewed"),
    ]
    assert lives == sorted(one, key=lambda t: t[0].fencing_token)
    assert lives[1][0].ttl_s == 90 and lives[1][1]["event"] == "lease.granted"


def test_verify_over_http_with_a_checkpoint_names_the_lease_and_the_principal(
    tmp_path: Any,
) -> None:
    """``writ audit verify --url --checkpoint`` (the server verifies, the CLI checks the
    checkpoints' rows) passes on what the server found: a hand-edited held lease, then a
    hand-edited principal, each named as itself and never as a bad seq, exit 1."""
    import contextlib
    import sqlite3

    from tests.server_fixtures import serve

    key, cp = str(tmp_path / "cp.key"), str(tmp_path / "cp.txt")
    assert CliRunner().invoke(main, ["audit", "keygen", "--out", key]).exit_code == 0
    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent", "perf-agent")
        srv.principal("agent", "cost-agent")
        with srv.client(token) as agent:
            lease = agent.acquire("prod/db", "scale up")
        server = ["--url", srv.url, "--token", srv.admin_token]
        made = CliRunner().invoke(main, ["audit", "checkpoint", "--key", key, "--out", cp, *server])
        assert made.exit_code == 0, made.output
        args = ["audit", "verify", *server, "--checkpoint", cp]
        assert CliRunner().invoke(main, args).exit_code == 0
        edits = (
            (
                f"UPDATE leases SET holder = 'cost-agent' WHERE lease_id = '{lease['lease_id']}'",
                "lease_id",
                lease["lease_id"],
                f"BROKEN: held lease {lease['lease_id']} on prod/db",
            ),
            (
                "UPDATE principals SET admin = 1 WHERE name = 'cost-agent'",
                "principal",
                "cost-agent",
                "BROKEN: principal cost-agent",
            ),
        )

        def by_hand(sql: str) -> None:
            with contextlib.closing(sqlite3.connect(tmp_path / "w.db", isolation_level=None)) as db:
                db.execute(sql)

        for sql, field, name, said in edits:
            by_hand(sql)
            out = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
            assert out["ok"] is False and out[field] == name and out["first_bad_seq"] is None
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 1 and said in res.output and "seq None" not in res.output
            if field == "lease_id":  # put it back, so the principal is what verify finds next
                by_hand(sql.replace("'cost-agent'", "'perf-agent'"))


# what an intruder does to a lease the ledger holds open, freeing its resource without a revoke
UNHELD = {
    "deleted": "DELETE FROM leases WHERE {me}",
    "marked released": "UPDATE leases SET state = 'released', ended_at = acquired_at WHERE {me}",
    "marked expired": "UPDATE leases SET state = 'expired', ended_at = expires_at WHERE {me}",
}


@pytest.mark.parametrize("edit", sorted(UNHELD))
async def test_a_lease_the_ledger_holds_open_gone_from_the_table_fails_verify(
    engine: Engine, backend: Backend, edit: str
) -> None:
    """A lease granted and never ended in the ledger, deleted from the leases table or
    marked ended there by hand, fails verify — online, with a signed checkpoint made
    before, and offline — naming the lease, its grant row and its fencing token."""
    _, lease, _ = await _leases(engine)
    key = generate_key()
    cp = await make(engine.store, key)
    await backend.sql(UNHELD[edit].format(me=f"lease_id = '{lease['lease_id']}'"))

    lease_id = lease["lease_id"]
    bad = await found_everywhere(
        engine, backend.url, cp, key, "lease_id", lease_id, "the ledger holds it open"
    )
    assert f"lease {lease_id} on prod/db" in (bad.reason or "")
    assert f"fencing token {lease['fencing_token']}" in (bad.reason or "")
    assert "the leases table does not hold it" in (bad.reason or "")


async def _open_after_walk(engine: Engine) -> held.OpenLeases:
    """The open leases of every row the store holds now, as verify's walk finds them."""
    return (await walked(engine)).leases


async def test_leases_ended_by_writ_after_the_walk_are_not_tampered(
    engine: Engine, backend: Backend
) -> None:
    """A lease open when the walk passed its rows, released or expired by writ before the
    table is read, is judged by the row that ended it; one still held is found held; the
    walk keeps only the open ones."""
    agent, lease, _ = await _leases(engine)
    other = await engine.acquire(agent, resource="prod/queue", intent="drain", ttl_s=5)
    opened = await _open_after_walk(engine)
    want = {f"prod/db/{lease['fencing_token']}", f"prod/queue/{other['fencing_token']}"}
    assert set(opened.keys) == want  # prod/cache's lease was released: not open
    await engine.release(agent, lease["lease_id"])
    assert await held.held_disagrees(engine.store, opened) is None  # prod/queue's still held
    await backend.advance(10)
    await engine.sweep()
    assert (await engine.store.read(lambda tx: tx.held_leases())) == []
    assert await held.held_disagrees(engine.store, opened) is None
