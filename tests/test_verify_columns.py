"""Verify covers the lookup columns: an audit row's ``ts``, ``event``, ``resource`` and
``lock_key`` columns sit outside the hash (for indexed lookups), so each is checked against
the hashed body — online, offline (``--store``) and with a signed checkpoint — on every store.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.core.ledger import Record, seal, verify
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make, verify_store

# each column, and a value that changes what writ reads back through it
EDITS: dict[str, Any] = {
    "resource": "prod/elsewhere",
    "event": "lease.released",
    "ts": None,  # an hour later than the row's own time (set in the test)
    "lock_key": "prod/db/someone-else",
}


async def _granted(engine: Engine) -> dict[str, Any]:
    """A held lease on prod/db, and the rows around it; the lease.granted row."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    other, _ = await engine.add_principal(None, "cost-agent", "agent")
    await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.acquire(other, resource="routing/edge", intent="reroute")
    rows = (await engine.audit(limit=100))["rows"]
    return next(r for r in rows if r["event"] == "lease.granted" and r["resource"] == "prod/db")


@pytest.mark.parametrize("column", sorted(EDITS))
async def test_a_hand_edited_column_fails_verify_naming_the_row(
    engine: Engine, backend: Backend, column: str
) -> None:
    """Editing one lookup column by hand changes what writ reads back (who, filters), and
    verify — online, with a signed checkpoint, and offline ``--store`` — names that row."""
    row = await _granted(engine)
    assert (await engine.who("prod/db"))["lock_holder"] == "perf-agent"
    key = generate_key()
    cp = await make(engine.store, key)  # signed before the edit: the chain still matches it
    assert (await engine.verify()).ok

    stored = (await backend.sql("SELECT ts FROM audit WHERE seq = %s", row["seq"]))[0][0]
    value = stored + 3600.0 if column == "ts" else EDITS[column]
    await backend.tamper_column(row["seq"], column, value)

    if column in ("resource", "event", "ts"):  # who reads these columns: its answer changed
        who = await engine.who("prod/db")
        assert who["lock_holder"] != "perf-agent"

    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq == row["seq"] and bad.rows == row["seq"] - 1
    assert f"the {column} column" in (bad.reason or "")

    out = await verify_store(engine.store, [cp], key.public_key())
    assert not out.ok and out.first_bad_seq == row["seq"]
    assert f"the {column} column" in (out.reason or "")

    args = ["audit", "verify", "--store", backend.url, "--json"]
    res = await asyncio.to_thread(CliRunner().invoke, main, args)  # the CLI runs its own loop
    assert res.exit_code == 1, res.output
    report = json.loads(res.output)
    assert report["ok"] is False and report["first_bad_seq"] == row["seq"]
    assert f"the {column} column" in report["reason"]


async def test_untouched_columns_verify(engine: Engine) -> None:
    """Columns as writ wrote them verify, including rows with no lock key."""
    await _granted(engine)
    v = await engine.verify()
    assert v.ok and v.rows >= 4


def _record(sealed: Any, **cols: Any) -> Record:
    base = {
        "ts": sealed.timestamp,
        "event": sealed.event,
        "resource": sealed.resource,
        "lock_key": sealed.lock_key,
    }
    base.update(cols)
    return (
        sealed.seq,
        sealed.body,
        sealed.hash,
        base["ts"],
        base["event"],
        base["resource"],
        base["lock_key"],
    )


def test_the_fast_path_is_not_fooled_by_nested_keys() -> None:
    """A row whose notes carry their own "event"/"resource"/"lock_key" keys (or strings
    that look like them) is judged by its top-level fields, not the nested ones."""
    notes = {"event": "x", "resource": "decoy", "lock_key": None, "t": '"event":"x",'}
    s = seal(
        1,
        "0" * 64,
        1_780_000_000.25,
        {"event": "lease.granted", "resource": "prod/db", "agent_id": "a", "notes": notes},
    )
    assert verify([_record(s)]).ok
    for col, value in (("event", "x"), ("resource", "decoy"), ("lock_key", "k")):
        v = verify([_record(s, **{col: value})])
        assert not v.ok and f"the {col} column" in (v.reason or ""), col
    v = verify([_record(s, ts=s.timestamp + 0.001)])
    assert not v.ok and "the ts column" in (v.reason or "")
    # the raw clock reading older ledgers kept, within half a microsecond of the shown time
    assert verify([_record(s, ts=s.timestamp + 4e-7)]).ok
    # a bare (seq, body, hash) triple has no columns to check
    assert verify([(s.seq, s.body, s.hash)]).ok
