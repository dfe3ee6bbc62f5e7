"""``writ migrate``: a store moves between backends whole, and its chain verifies there."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from writ.core.errors import Invalid
from writ.core.ledger import GENESIS, digest, seal
from writ.engine import Engine
from writ.stores import Store, open_store
from writ.stores.migrate import migrate, redact, verify_store

pytestmark = pytest.mark.usefixtures("no_admin_env")

EVENTS = ("lease.granted", "lease.renewed", "lease.released", "lease.denied", "gate.passed")


def _row(seq: int, prev: str, ts: float, i: int) -> tuple[Any, ...]:
    """What ``ledger.seal`` makes of a row (the canonical body written out by hand: sealing
    100,000 rows through ``seal`` would take most of this test's time)."""
    # a lease every five rows: granted, renewed, released (then a refusal and a gate's pass
    # naming it), so the rows leave no lease open that the leases table does not hold
    lease, event, agent = i // len(EVENTS), EVENTS[i % len(EVENTS)], f"agent-{i % 16}"
    r = f"fleet/svc-{lease % 97}/db"
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = (
        f'{{"agent_id":"{agent}","approved_by":null,"event":"{event}","fencing_token":{lease},'
        f'"human_override_queue":null,"lock_acquired_at":null,"lock_holder":"{agent}",'
        f'"lock_key":"{r}/{lease}","notes":"row {i}","prev_hash":"{prev}","resource":"{r}",'
        '"rollback_allowed":false,"rollback_denominator":null,'
        '"rollback_denominator_is_defect":false,"rollback_key_holder":null,'
        f'"rollback_path":null,"second_key_revoke_provenance":null,"seq":{seq},'
        f'"timestamp":"{stamp}"}}'
    )
    return seq, ts, event, r, f"{r}/{lease}", body, digest(prev, body)


def test_the_bulk_rows_are_what_seal_makes() -> None:
    s = seal(
        7,
        "ab" * 32,
        1_778_926_620.5,
        {
            "event": EVENTS[3],
            "agent_id": "agent-8",
            "resource": "fleet/svc-1/db",
            "lock_holder": "agent-8",
            "lock_key": "fleet/svc-1/db/1",
            "fencing_token": 1,
            "notes": "row 8",
        },
    )
    assert _row(7, "ab" * 32, 1_778_926_620.5, 8) == (
        s.seq,
        s.timestamp,
        s.event,
        s.resource,
        s.lock_key,
        s.body,
        s.hash,
    )


def bulk_ledger(path: Path, n: int) -> tuple[int, str]:
    """Append ``n`` sealed rows straight into a SQLite store's ledger, continuing its chain
    (a store-speed generator would take minutes for 100,000 rows)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        row = conn.execute("SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev, ts = row if row else (0, GENESIS, 1_778_926_620.0)
        out = []
        for i in range(n):
            out.append(_row(seq + 1 + i, prev, ts + 0.001 * (i + 1), i))
            prev = out[-1][-1]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO audit (seq, ts, event, resource, lock_key, body, hash)"
            " VALUES (?,?,?,?,?,?,?)",
            out,
        )
        # the grants name tokens up to this one: the store's counter has handed them out
        last = (n - 1) // len(EVENTS)
        conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'fencing_token'", (last,))
        conn.execute("COMMIT")
        return seq + n, prev
    finally:
        conn.close()


async def populate(store: Store) -> dict[str, Any]:
    """A little of everything, written by an engine on ``store``: principals, a held and an
    ended lease, a freeze, a change."""
    engine = Engine(store)
    await engine.start(background=False)
    try:
        agent, agent_token = await engine.add_principal(None, "agent-a", "agent", vendor="acme")
        oncall, _ = await engine.add_principal(None, "oncall", "queue", wake="/wake/oncall")
        held = await engine.acquire(agent, resource="prod/db", intent="double capacity", ttl_s=600)
        old = await engine.acquire(agent, resource="staging/db", intent="x")
        await engine.release(agent, old["lease_id"])
        await engine.freezes.freeze(oncall, prefix="billing", reason="quarter close")
    finally:
        await engine.stop()
    return {"agent_token": agent_token, "held": held}


async def dump(store: Store) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    async for table, rows in store.export_rows(batch=7):
        out.setdefault(table, []).extend(rows)
    return out


async def test_migrate_100k_rows_sqlite_to_postgres(tmp_path: Path, pg_backend: Backend) -> None:
    src_url = f"sqlite:///{tmp_path / 'src.db'}"
    made = await populate(open_store(src_url))
    head = bulk_ledger(tmp_path / "src.db", 100_000)
    seen: list[tuple[str, int]] = []

    result = await migrate(src_url, pg_backend.url, progress=lambda t, n: seen.append((t, n)))

    assert result["ok"] is True, result
    assert result["verify"]["ok"] and result["verify"]["rows"] == head[0] > 100_000
    assert result["head"] == {"seq": head[0], "hash": head[1]}
    assert result["tables"]["audit"] == head[0] and result["tables"]["principals"] == 2
    assert result["tables"]["leases"] == 2 and result["tables"]["objects"] >= 1
    assert ("audit", head[0]) in seen
    # the destination is a working store: same tokens, same leases, the chain goes on
    dst = Engine(pg_backend.open_store())
    await dst.start(background=False)
    try:
        agent = await dst.authenticate(made["agent_token"])
        assert agent.name == "agent-a" and agent.vendor == "acme"
        renewed = await dst.renew(agent, made["held"]["lease_id"])
        assert renewed["fencing_token"] == made["held"]["fencing_token"]
        nxt = await dst.acquire(agent, resource="other/thing", intent="after the move")
        assert nxt["fencing_token"] > result["fencing_token"] >= made["held"]["fencing_token"]
        with pytest.raises(Exception, match=r"(?i)frozen"):
            await dst.acquire(agent, resource="billing/ledger", intent="x")
        check = await dst.verify()
        assert check.ok and check.rows > head[0]
    finally:
        await dst.stop()


async def test_migrate_postgres_to_sqlite_keeps_every_row(
    tmp_path: Path, pg_backend: Backend
) -> None:
    await populate(pg_backend.open_store())
    dst_url = f"sqlite:///{tmp_path / 'dst.db'}"
    result = await migrate(pg_backend.url, dst_url)
    assert result["ok"], result
    a, b = open_store(pg_backend.url), open_store(dst_url)
    await a.open()
    await b.open()
    try:
        assert await dump(a) == await dump(b)
    finally:
        await a.close()
        await b.close()


async def test_migrate_refuses_a_store_that_is_not_empty(tmp_path: Path, backend: Backend) -> None:
    src_url = f"sqlite:///{tmp_path / 'src.db'}"
    await populate(open_store(src_url))
    dst = Engine(backend.open_store())
    await dst.start(background=False)
    await dst.add_principal(None, "already-here", "agent")
    await dst.stop()
    with pytest.raises(Invalid, match="not empty"):
        await migrate(src_url, backend.url)


async def _nothing_copied(backend: Backend) -> None:
    """The destination of a refused copy: empty, its chain included."""
    dst = backend.open_store()
    await dst.open()
    try:
        assert (await verify_store(dst)).rows == 0
        assert await dst.read(lambda tx: tx.list_principals()) == []
    finally:
        await dst.close()


async def test_migrate_refuses_a_broken_source_chain_and_copies_nothing(
    tmp_path: Path, backend: Backend
) -> None:
    src_url = f"sqlite:///{tmp_path / 'src.db'}"
    await populate(open_store(src_url))
    bulk_ledger(tmp_path / "src.db", 50)
    conn = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute(
        "UPDATE audit SET body = replace(body, 'row 7', 'row 8') WHERE body LIKE '%row 7\"%'"
    )
    conn.close()
    with pytest.raises(Invalid, match="does not verify at seq"):
        await migrate(src_url, backend.url)
    await _nothing_copied(backend)


async def test_migrate_refuses_a_source_whose_last_rows_were_removed(
    tmp_path: Path, backend: Backend
) -> None:
    """Rows deleted from the end of the source's ledger: verify on the source says so, and
    a copy used to carry the shorter chain, whose new head then verified "ok" — the
    deletion laundered. The dump now carries the head the source keeps beside its chain, and
    the copy refuses a chain that falls short of it, before anything is committed."""
    src_url = f"sqlite:///{tmp_path / 'src.db'}"
    await populate(open_store(src_url))
    src = open_store(src_url)
    await src.open()
    try:
        head = await src.read(lambda tx: tx.audit_head())
        meta = [rows async for table, rows in src.export_rows() if table == "meta"]
    finally:
        await src.close()
    assert meta == [[{"fencing_token": meta[0][0]["fencing_token"], "audit_head": list(head)}]]
    conn = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq > ?", (head[0] - 2,))
    conn.close()
    with pytest.raises(Invalid, match=f"rows {head[0] - 1}..{head[0]} were removed"):
        await migrate(src_url, backend.url)
    await _nothing_copied(backend)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://writ:s3cret@db:5432/writ") == "postgresql://writ:***@db:5432/writ"
    assert redact("sqlite:///writ.db") == "sqlite:///writ.db"
