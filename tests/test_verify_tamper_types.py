"""Tampering that verify used to miss or crash on: a row stored as a BLOB (its bytes the
same, only the stored type changed) is named as a broken row by verify and read as a bad row
by every reader, never a traceback or a 500; the fencing-token counter lowered by hand is
found; a principal's crafted vendor no longer lets its added row vouch for an admin flag."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from tests.stores_fixtures import Backend
from tests.verify_fixtures import cli_verify
from writ.api.app import create_app
from writ.cli import main
from writ.core.clock import ManualClock
from writ.core.ledger import UNREADABLE, row_from, verify
from writ.core.models import Principal
from writ.engine import Engine
from writ.engine.principals import new_token
from writ.evidence.sentinel import Sentinel
from writ.stores.enrolled import principal_disagrees
from writ.stores.sqlite import SQLiteStore

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


async def _cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))  # its own loop


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=ManualClock()))
    await engine.start(background=False)
    try:
        yield engine
    finally:
        await engine.stop()


async def _ledger(engine: Engine) -> int:
    """A few rows; the seq of the lease.granted row on prod/db (rows follow it)."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.release(agent, lease["lease_id"])
    await engine.add_principal(None, "cost-agent", "agent")
    rows = (await engine.audit(limit=100))["rows"]
    return int(next(r["seq"] for r in rows if r["event"] == "lease.granted"))


def _by_hand(db: Path, sql: str, seq: int) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    try:
        c.execute("DROP TRIGGER IF EXISTS audit_no_update")
        c.execute(sql, (seq,))
    finally:
        c.close()


# what an intruder with the sqlite3 shell does to row N; the column verify names
BLOBS = {
    "body cast": ("UPDATE audit SET body = CAST(body AS BLOB) WHERE seq = ?", "body"),
    "body {}": ("UPDATE audit SET body = X'7B7D' WHERE seq = ?", "body"),
    "hash cast": ("UPDATE audit SET hash = CAST(hash AS BLOB) WHERE seq = ?", "hash"),
    "resource": ("UPDATE audit SET resource = X'00' WHERE seq = ?", "resource"),
    "resource cast": (
        "UPDATE audit SET resource = CAST(resource AS BLOB) WHERE seq = ?",
        "resource",
    ),
    "event cast": ("UPDATE audit SET event = CAST(event AS BLOB) WHERE seq = ?", "event"),
    "lock_key cast": (
        "UPDATE audit SET lock_key = CAST(lock_key AS BLOB) WHERE seq = ?",
        "lock_key",
    ),
    "ts": ("UPDATE audit SET ts = X'00' WHERE seq = ?", "ts"),
}


@pytest.mark.parametrize("edit", sorted(BLOBS))
async def test_a_column_stored_as_a_blob_is_a_broken_row_everywhere(
    sqlite_engine: Engine, tmp_path: Path, edit: str
) -> None:
    engine, db = sqlite_engine, tmp_path / "w.db"
    seq = await _ledger(engine)
    total = (await engine.store.read(lambda tx: tx.audit_head()))[0]
    sql, column = BLOBS[edit]
    _by_hand(db, sql, seq)
    named = f"row {seq}'s {column} is stored as a BLOB"

    bad = await engine.verify()  # online, and the CLI offline: named, exit 1, no traceback
    assert not bad.ok and bad.first_bad_seq == seq and named in (bad.reason or ""), bad
    report = await cli_verify(f"sqlite:///{db}")
    assert report["first_bad_seq"] == seq and named in report["reason"]

    # the standing verify: not ok through the broken-row path (writ_audit_verify_ok 0)
    out = await Sentinel(engine, every=60).pass_()
    assert not out.ok and out.first_bad_seq == seq and named in (out.reason or "")

    # the export writes every row as JSON; a body or hash not text is the unreadable stub
    res = await _cli("audit", "export", "--store", f"sqlite:///{db}")
    assert res.exit_code == 0 and res.exception is None, (res.output, res.exception)
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, total + 1))
    if column in ("body", "hash"):
        stub = lines[seq - 1]
        assert stub["event"] == UNREADABLE and f"its {column} is stored as a BLOB" in stub["notes"]

    # the postmortem renders (and says the hashes are broken when the body or hash is)
    for fmt in ("json", "md", "html"):
        res = await _cli("postmortem", "--store", f"sqlite:///{db}", "--format", fmt)
        assert res.exit_code == 0 and res.exception is None, (fmt, res.output, res.exception)
    if column in ("body", "hash"):
        md = (await _cli("postmortem", "--store", f"sqlite:///{db}")).output
        assert "Hashes: BROKEN" in md and "stored as a BLOB" in md

    # GET /v1/audit answers (page by page too), and /v1/audit/verify names the row
    app = create_app(engine, start_engine=False, verify_every=0)
    _, token = await engine.add_principal(None, "root", "human", admin=True)
    auth = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://writ") as http:
        for limit in (1000, 1):
            page = await http.get(f"/v1/audit?limit={limit}&after_seq={seq - 1}", headers=auth)
            assert page.status_code == 200, page.text
        got = (await http.get("/v1/audit/verify", headers=auth)).json()
        assert got["first_bad_seq"] == seq and named in got["reason"]


async def test_row_from_reads_a_body_or_hash_not_text_as_a_bad_row() -> None:
    """``row_from`` never raises: bytes (a SQLite BLOB) read as the unreadable stub, whose
    fields JSON can write."""
    for body, hash_, what in [(b"{}", "h", "body"), ("{}", b"h", "hash"), (None, "h", "body")]:
        stub = row_from(body, hash_, 3)  # type: ignore[arg-type]
        assert stub["event"] == UNREADABLE and f"its {what} is stored as" in stub["notes"]
        json.dumps(stub)
    out = verify([(1, b"{}", "h")])  # type: ignore[list-item]
    assert (
        not out.ok and out.first_bad_seq == 1 and "body is stored as a BLOB" in (out.reason or "")
    )


async def test_both_stores_read_the_ledger_as_text(engine: Engine) -> None:
    """What the readers assume of the columns holds on both stores (PostgreSQL's column
    types enforce it): seq an int, body and hash text, ts a float."""
    await _ledger(engine)
    async for chunk in engine.store.audit_records():
        for seq, body, hash_, ts, event, resource, lock_key in chunk:
            assert (type(seq), type(body), type(hash_), type(ts)) == (int, str, str, float)
            assert type(event) is str and type(resource) is str
            assert lock_key is None or type(lock_key) is str
    async for stored in engine.store.audit_stream():
        assert all(type(b) is str and type(h) is str for _, b, h in stored)


async def test_the_sentinel_names_the_last_row_verified_made_unreadable(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """The row a pass verified last, its body stored as a BLOB since (its hash kept): the
    next pass says so without waiting for the next whole pass."""
    await _ledger(sqlite_engine)
    s = Sentinel(sqlite_engine, every=60, full_every=86_400)
    assert (await s.pass_()).ok
    _by_hand(tmp_path / "w.db", "UPDATE audit SET body = CAST(body AS BLOB) WHERE seq = ?", s.at[0])
    out = await s.pass_()
    assert not out.ok and out.first_bad_seq == s.at[0] and "stored as a BLOB" in (out.reason or "")


# ---- the fencing-token counter ------------------------------------------------------------
async def _lower_counter(backend: Backend) -> None:
    if backend.is_pg:
        await backend.sql("SELECT setval('fencing_token', 1, false)")
    else:
        await backend.sql("UPDATE meta SET value = 0 WHERE key = 'fencing_token'")
    await backend.sql("DELETE FROM leases")


async def test_a_fencing_token_counter_lowered_by_hand_is_found(
    engine: Engine, backend: Backend
) -> None:
    """Lowered below the tokens the ledger's grants name (and the leases deleted, so no
    unique token refuses the next grant), the counter would hand out a token again and a
    stale holder would pass the fence: verify fails, naming the lease of the largest token."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    first = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.release(agent, first["lease_id"])
    last = await engine.acquire(agent, resource="prod/api", intent="reroute")
    await engine.release(agent, last["lease_id"])
    assert (await engine.verify()).ok
    await _lower_counter(backend)

    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq is None and bad.lease_id == last["lease_id"], bad
    assert "fencing-token counter (0) is below fencing token" in (bad.reason or "")
    assert f"fencing token {last['fencing_token']}" in (bad.reason or "")
    report = await cli_verify(backend.url)
    assert report["ok"] is False and report["lease_id"] == last["lease_id"]
    out = await Sentinel(engine, every=60).pass_()
    assert not out.ok and out.lease_id == last["lease_id"]


async def test_a_counter_at_or_above_the_ledger_verifies(engine: Engine, backend: Backend) -> None:
    """A counter above the ledger's largest token (tokens burnt by a rolled-back grant) is
    what writ leaves: ok."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.release(agent, lease["lease_id"])
    if backend.is_pg:
        await backend.sql("SELECT setval('fencing_token', 50, true)")
    else:
        await backend.sql("UPDATE meta SET value = 50 WHERE key = 'fencing_token'")
    assert (await engine.verify()).ok


# ---- the principals' vendor ---------------------------------------------------------------
async def test_a_crafted_vendor_does_not_vouch_for_an_admin_flag(
    engine: Engine, backend: Backend
) -> None:
    """``--vendor 'Acme) as admin'`` (refused today; a writ before that check wrote it),
    then the table set to vendor Acme, an admin, a wake route: the added row reads as that
    vendor (the rest reads to its end only so), so the principal disagrees with it."""

    async def as_an_older_writ(name: str, vendor: str, wake: str | None = None) -> None:
        await engine.store.transact(
            lambda tx: engine._insert_principal(
                tx, "operator", name, "agent", vendor, wake, False, new_token()
            )
        )

    await as_an_older_writ("vend-agent", "Acme) as admin")
    await as_an_older_writ("paren", "Acme (EU); x) y", "/w/a;b)")
    assert (await engine.verify()).ok, await engine.verify()  # written by writ: ok
    await backend.sql(
        "UPDATE principals SET vendor = 'Acme', admin = %s, wake = 'https://hooks.evil.example/y'"
        " WHERE name = 'vend-agent'",
        True if backend.is_pg else 1,
    )
    bad = await engine.verify()
    assert not bad.ok and bad.principal == "vend-agent", bad
    assert "the vendor column ('Acme')" in (bad.reason or "")


def test_notes_in_writs_words_that_do_not_read_to_their_end_vouch_for_nothing() -> None:
    """Notes begun as writ words them whose rest does not read as writ's words are a
    disagreement naming the row; notes worded otherwise right after the name (an older
    writ's) still vouch for the kind."""
    p = Principal(name="x", kind="agent", vendor=None, wake=None, admin=True, created_at=1.0)

    def added(notes: str) -> dict[str, Any]:
        return {"seq": 4, "event": "principal.added", "agent_id": "op", "notes": notes}

    why = principal_disagrees(p, added("op added agent 'x' as admin)"), None, None, None)
    assert why is not None and "row 4 (principal.added) does not read as writ words" in why
    why = principal_disagrees(p, added("op added agent 'x' (vendor Acme"), None, None, None)
    assert why is not None and "does not read as writ words" in why
    assert principal_disagrees(p, added("op added agent 'x' as admin"), None, None, None) is None
    older = added("op added agent 'x', imported from the old registry")
    assert principal_disagrees(p, older, None, None, None) is None


# ---- the alert on a standing verify that cannot run ----------------------------------------
def test_an_alert_fires_when_the_standing_verify_stops_ending_passes() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = {r["alert"]: r["expr"] for r in rules}
    stale = exprs["WritLedgerVerifyStale"]
    assert stale.startswith("time() - writ_audit_verify_last_end_timestamp_seconds >")
    assert "unless" in exprs["WritLedgerVerifyNeverRan"]
    assert "writ_audit_verify_last_end_timestamp_seconds" in exprs["WritLedgerVerifyNeverRan"]


async def test_a_pass_that_cannot_run_leaves_the_last_end_for_the_alert(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that raises does not move ``last_end`` (the metric the staleness alert reads)."""
    await _ledger(sqlite_engine)
    s = Sentinel(sqlite_engine, every=60)
    assert (await s.pass_()).ok
    ended = s.last_end

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("no")

    monkeypatch.setattr(s, "_walk", broken)
    with pytest.raises(RuntimeError):
        await s.pass_()
    assert s.last_end == ended and s.last is not None and s.last.ok
