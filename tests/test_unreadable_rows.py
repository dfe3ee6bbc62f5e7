"""One hand-edited audit row cannot stop the evidence: a body writ cannot read (not an
object, a field of the wrong type, nested too deep, a time that is not a time) becomes a
stub — its stored seq, event ``unreadable``, the reason in its notes, its stored hash — so
``writ postmortem`` renders and says the hashes are BROKEN (as ``writ audit verify`` does),
and ``writ audit export`` writes the raw body with the reason instead of crashing; ``writ who``
names such a row when its answer rests on it, instead of answering that nobody held the resource.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.core.ledger import canonical, digest, row_from, verify
from writ.engine import Engine

DEEP = 100_000
UNREADABLE = "unreadable"  # the event of the stub that stands for such a row

# how an intruder rewrites the body of the lease.granted row on prod/db (seq n)
EDITS: dict[str, Callable[[str, int], str]] = {
    "a list": lambda body, n: "[1,2]",
    "seq as text": lambda body, n: body.replace(f'"seq":{n},', f'"seq":"{n}",'),
    "resource as a list": lambda body, n: body.replace(
        '"resource":"prod/db"', '"resource":["prod","db"]'
    ),
    "nested 100,000 deep": lambda body, n: "[" * DEEP + "]" * DEEP,
    "a garbage time": lambda body, n: body.replace('"timestamp":"', '"timestamp":"x'),
}
# what the stub's notes say for each
REASONS = {
    "a list": "array",
    "seq as text": "seq",
    "resource as a list": "resource",
    "nested 100,000 deep": "nest",
    "a garbage time": "timestamp",
}


async def _ledger(engine: Engine) -> dict[str, Any]:
    """A few rows on prod/db and elsewhere; the lease.granted row on prod/db, which has
    rows after it."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    other, _ = await engine.add_principal(None, "cost-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.acquire(other, resource="routing/edge", intent="reroute")
    await engine.release(agent, lease["lease_id"])
    rows = (await engine.audit(limit=100))["rows"]
    return next(r for r in rows if r["event"] == "lease.granted" and r["resource"] == "prod/db")


async def _cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))  # its own loop


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_one_unreadable_row_cannot_stop_the_report_or_the_export(
    engine: Engine, backend: Backend, edit: str
) -> None:
    row = await _ledger(engine)
    seq, total = row["seq"], (await engine.store.read(lambda tx: tx.audit_head()))[0]
    body = (await backend.sql("SELECT body FROM audit WHERE seq = %s", seq))[0][0]
    edited = EDITS[edit](body, seq)
    await backend.tamper(seq, edited)

    # verify names the row, as it did before
    res = await _cli("audit", "verify", "--store", backend.url, "--json")
    assert res.exit_code == 1 and json.loads(res.output)["first_bad_seq"] == seq

    # the store's reads (GET /v1/audit, the postmortem's rows) return a stub for it
    rows = (await engine.audit(limit=100))["rows"]
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    stub = rows[seq - 1]
    assert stub["event"] == UNREADABLE and stub["hash"] == row["hash"]
    assert REASONS[edit] in stub["notes"] and stub["resource"] is None

    # the report renders, with the stub in its timeline, and says the hashes are broken
    for fmt in ("json", "md", "html"):
        res = await _cli("postmortem", "--store", backend.url, "--format", fmt)
        assert res.exit_code == 0, (fmt, res.output, res.exception)
        assert res.exception is None
    rep = json.loads((await _cli("postmortem", "--store", backend.url, "--format", "json")).output)
    (seen,) = [r for r in rep["timeline"] if r["seq"] == seq]
    assert seen["event"] == UNREADABLE and REASONS[edit] in seen["notes"]
    v = rep["verification"]
    assert v["ok"] is False and [b["seq"] for b in v["bad"]] == [seq]
    assert "unreadable" in v["bad"][0]["reason"]
    md = (await _cli("postmortem", "--store", backend.url)).output
    assert "Hashes: BROKEN" in md and f"row {seq}" in md

    # a report on prod/db alone reads it too (by its lookup columns)
    res = await _cli("postmortem", "--store", backend.url, "--resource", "prod/db")
    assert res.exit_code == 0 and "Hashes: BROKEN" in res.output, res.output

    # the export writes every row; the unreadable one with its raw body and the reason
    res = await _cli("audit", "export", "--store", backend.url)
    assert res.exit_code == 0, (res.output, res.exception)
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, total + 1))
    out = lines[seq - 1]
    assert out["event"] == UNREADABLE and REASONS[edit] in out["notes"]
    assert out["body"] == edited and out["hash"] == row["hash"]
    # ... and with filters: a row whose resource and time cannot be read is kept
    res = await _cli("audit", "export", "--store", backend.url, "--resource", "routing")
    assert res.exit_code == 0, (res.output, res.exception)
    kept = [json.loads(x) for x in res.output.splitlines()]
    assert seq in [r["seq"] for r in kept] and {r["event"] for r in kept} > {UNREADABLE}
    res = await _cli("audit", "export", "--store", backend.url, "--since", row["timestamp"])
    assert res.exit_code == 0 and seq in [json.loads(x)["seq"] for x in res.output.splitlines()]


def test_row_from_never_raises_and_keeps_readable_rows_as_they_are() -> None:
    good = {"seq": 3, "timestamp": "2026-05-16T10:00:00.000000Z", "event": "lease.granted"}
    good |= {"resource": "prod/db", "lock_holder": "a", "prev_hash": "0" * 64, "notes": "hi"}
    row = row_from(canonical(good), "h", 3)
    assert row["event"] == "lease.granted" and row["hash"] == "h" and row["notes"] == "hi"
    for body, why in [
        ("{", "not JSON"),
        ("[" * DEEP, "nest"),
        ("null", "null"),
        (canonical({**good, "seq": 4}), "seq"),
        (canonical({**good, "seq": True}), "seq"),
        (canonical({**good, "timestamp": "2026-02-30T10:00:00.000000Z"}), "timestamp"),
        (canonical({**good, "timestamp": "10000-01-01T00:00:00Z"}), "timestamp"),
        (canonical({**good, "timestamp": 1778925600}), "timestamp"),
        (canonical({**good, "fencing_token": "7"}), "fencing_token"),
        (canonical({**good, "second_key_revoke_provenance": [1]}), "second_key_revoke"),
        (canonical({**good, "lock_acquired_at": "yesterday"}), "lock_acquired_at"),
        (canonical({**good, "notes": {"a": 1}}), "notes"),
    ]:
        stub = row_from(body, "h", 3)
        assert stub["seq"] == 3 and stub["event"] == UNREADABLE and stub["hash"] == "h"
        assert why in stub["notes"], (body[:80], stub["notes"])
        assert len(stub["notes"]) < 300


def test_verify_names_a_deeply_nested_row_even_with_its_hash_recomputed() -> None:
    body = "[" * DEEP + "]" * DEEP
    v = verify([(1, body, digest("0" * 64, body))])
    assert not v.ok and v.first_bad_seq == 1


def test_a_server_serves_the_stub_and_a_report_over_http_renders(tmp_path: Path) -> None:
    """``GET /v1/audit`` answers with the stub (not a 500), so ``writ postmortem --url``
    and ``writ audit export`` through a server go on past the row, saying it is broken."""
    from tests.server_fixtures import serve

    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent")
        _, other = srv.principal("agent")
        with srv.client(token) as c, srv.client(other) as o:
            lease = c.acquire("prod/db", "double capacity", ttl_s=60)
            o.acquire("routing/edge", "reroute", ttl_s=60)  # a row between prod/db's two
            c.release(lease["lease_id"])
        conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        conn.execute("DROP TRIGGER audit_no_update")
        (seq,) = conn.execute("SELECT seq FROM audit WHERE event = 'lease.granted'").fetchone()
        conn.execute("UPDATE audit SET body = '[1,2]' WHERE seq = ?", (seq,))
        conn.close()
        res = CliRunner().invoke(main, ["postmortem", "--format", "json"], env=srv.env())
        # on one resource: the rows are a subset, the seq range is re-verified over HTTP
        one = CliRunner().invoke(
            main, ["postmortem", "--resource", "prod/db", "--format", "json"], env=srv.env()
        )
        exported = CliRunner().invoke(main, ["audit", "export"], env=srv.env())
    assert res.exit_code == 0, (res.output, res.exception)
    rep = json.loads(res.output)
    assert [r["event"] for r in rep["timeline"] if r["seq"] == seq] == [UNREADABLE]
    assert not rep["verification"]["ok"]
    assert [b["seq"] for b in rep["verification"]["bad"]] == [seq]
    assert one.exit_code == 0, (one.output, one.exception)
    segment = json.loads(one.output)["verification"]["segment"]
    assert not segment["ok"] and f"row {seq} is unreadable" in segment["reason"]
    assert exported.exit_code == 0, (exported.output, exported.exception)
    rows = [json.loads(x) for x in exported.output.splitlines()]
    assert rows[seq - 1]["event"] == UNREADABLE and "array" in rows[seq - 1]["notes"]


async def test_who_names_the_unreadable_row_it_could_not_read(
    engine: Engine, backend: Backend
) -> None:
    """When the grant that would name the holder cannot be read back, ``who`` does not
    answer as if nobody held the resource: ``lock_holder`` is null and ``unreadable_rows``
    names the row. A readable history adds no field."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.acquire(agent, resource="routing/edge", intent="reroute")
    rows = (await engine.audit(limit=100))["rows"]
    grant = next(r for r in rows if r["event"] == "lease.granted" and r["resource"] == "prod/db")
    clean = await engine.who("prod/db")
    assert clean["lock_holder"] == "perf-agent" and "unreadable_rows" not in clean

    await backend.tamper(grant["seq"], "[1,2]")
    for resource in ("prod/db", "prod/db/replica"):  # a lease on prod/db holds both
        out = await engine.who(resource)
        assert out["lock_holder"] is None and out["lock_key"] is None and out["lease"] is None
        assert out["unreadable_rows"] == [grant["seq"]], out
    assert "unreadable_rows" not in await engine.who("routing/edge")  # its rows are readable


async def test_who_names_an_unreadable_row_that_ended_the_lease(
    engine: Engine, backend: Backend
) -> None:
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
    await engine.release(agent, lease["lease_id"])
    rows = (await engine.audit(limit=100))["rows"]
    (end,) = [r for r in rows if r["event"] == "lease.released"]
    await backend.tamper(end["seq"], "[1,2]")
    out = await engine.who("prod/db")
    assert out["lock_holder"] == "none" and out["unreadable_rows"] == [end["seq"]], out


def test_writ_who_warns_when_a_row_it_needs_is_unreadable(tmp_path: Path) -> None:
    from tests.server_fixtures import serve

    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent")
        with srv.client(token) as c:
            c.acquire("prod/db", "double capacity", ttl_s=60)
        conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        conn.execute("DROP TRIGGER audit_no_update")
        (seq,) = conn.execute("SELECT seq FROM audit WHERE event = 'lease.granted'").fetchone()
        conn.execute("UPDATE audit SET body = '[1,2]' WHERE seq = ?", (seq,))
        conn.close()
        text = CliRunner().invoke(main, ["who", "prod/db"], env=srv.env())
        as_json = CliRunner().invoke(main, ["who", "prod/db", "--json"], env=srv.env())
    assert text.exit_code == 0, (text.output, text.exception)
    assert "None" not in text.stdout and "unknown" in text.stdout, text.stdout
    assert f"warning: audit row {seq} cannot be read back" in text.stderr, text.stderr
    assert json.loads(as_json.stdout)["unreadable_rows"] == [seq]
