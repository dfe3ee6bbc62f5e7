"""``writ serve --checkpoint-every`` never signs over rows rewritten and re-hashed after they
were verified: the standing verify's break stays (a whole walk of the re-hashed chain clears
nothing), and the checkpointer checks its newest file against the ledger before signing, which
holds across a restart. A head stored as text is named, not a traceback."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.verify_fixtures import edit_row, open_db
from writ.api.app import create_app
from writ.cli import main
from writ.core.clock import ManualClock
from writ.core.errors import Unavailable
from writ.core.ledger import GENESIS
from writ.engine import Engine
from writ.evidence.checkpoint import (
    MARK,
    Checkpointer,
    generate_key,
    read_checkpoint,
    sign,
    verify_store,
    write_checkpoint,
    write_key,
)
from writ.evidence.sentinel import Sentinel
from writ.stores.sqlite import SQLiteStore


class Ticks:
    """A clock for the sentinel's schedule, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _rows(engine: Engine, n: int, name: str) -> None:
    for i in range(n):
        await engine.add_principal(None, f"{name}-{i}", "agent")


async def _engine(db: Path) -> Engine:
    engine = Engine(SQLiteStore(f"sqlite:///{db}", clock=ManualClock()))
    await engine.start(background=False)
    return engine


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


async def test_a_rewrite_a_pass_saw_stays_a_break(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows 11..15 verified by a pass, then row 12 rewritten and 12..15 re-hashed (head
    moved): the pass that notices, and every later one — the whole walks of the consistent
    re-hashed chain included — stay broken; no checkpoint is signed over it, the metric stays
    0, and nothing says it verifies again."""
    db, cps = tmp_path / "w.db", tmp_path / "cps"
    engine = await _engine(db)
    try:
        ticks = Ticks()
        app = create_app(engine, start_engine=False, verify_every=3600)
        s = app.state.sentinel
        s.clock, s.full_every = ticks, 3600.0
        cp = Checkpointer(engine, generate_key(), cps, every=10, sentinel=s)
        await _rows(engine, 10, "a")
        first = await cp.tick()
        assert first is not None and cp.last_seq == 10
        await _rows(engine, 5, "b")
        assert (await s.pass_()).ok and s.at[0] == 15
        edit_row(db, 12, rehash=True)
        await _rows(engine, 5, "c")
        with caplog.at_level(logging.INFO, logger="writ.audit"):
            for _ in range(3):  # the tick that notices, then ones whose walks start at genesis
                assert await cp.tick() is None
            ticks.now += 3600  # a whole pass, with the tables
            out = await s.pass_()
            assert await s.verified() is None
        assert not out.ok and out.first_bad_seq == 15
        assert "row 15 no longer has the hash writ verified" in (out.reason or "")
        assert s.last is not None and not s.last.ok and s.rewritten is not None
        assert _files(cps) == [first.name, MARK]  # the mark: row 15 as verified, not since
        assert read_checkpoint(cps / MARK).seq == 15 and cp.marked[0] == 15
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writ") as http:
            assert "writ_audit_verify_ok 0.0" in (await http.get("/metrics")).text
        assert not any("verifies again" in r.getMessage() for r in caplog.records)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "row 15" in errors[0].getMessage()
    finally:
        await engine.stop()


async def test_a_rewrite_under_a_checkpoint_gets_none_signed_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rewritten and re-hashed through the newest checkpoint's row while the server was down:
    a whole walk from genesis finds the chain consistent, but the new process's verify starts
    from the furthest row the files vouch for, finds row 10 with another hash, and signs
    nothing, naming the seq — after another restart too."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    engine = await _engine(db)
    try:
        cp = Checkpointer(engine, key, cps, every=10)
        await _rows(engine, 10, "a")
        first = await cp.tick()
        assert first is not None
    finally:
        await engine.stop()
    edit_row(db, 5, rehash=True)
    for restart in range(2):
        engine = await _engine(db)
        try:
            assert (await engine.verify()).ok  # the chain alone vouches for the rewrite
            cp = Checkpointer(engine, key, cps, every=10)
            await _rows(engine, 10, f"r{restart}")
            with caplog.at_level(logging.INFO, logger="writ.audit"):
                assert await cp.tick() is None and await cp.tick() is None
            last = cp.sentinel.last
            assert last is not None and not last.ok and last.first_bad_seq == 10, last
            assert "row 10 no longer has the hash" in (last.reason or "")
        finally:
            await engine.stop()
        assert _files(cps) == [first.name]  # no mark: nothing was verified past the checkpoint
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("at seq 10: row 10" in e for e in errors), errors


async def _marked(db: Path, cps: Path, key: Any, rows: int, name: str = "a") -> int:
    """A server's life: ``rows`` rows, a pass of its standing verify, the mark signed over
    the row it verified last; that seq. No checkpoint is due (``every``)."""
    engine = await _engine(db)
    try:
        app = create_app(engine, start_engine=False, verify_every=3600)
        cp = Checkpointer(engine, key, cps, every=100, sentinel=app.state.sentinel)
        await _rows(engine, rows, name)
        assert (await app.state.sentinel.pass_()).ok
        assert await cp.tick() is None
        mark = read_checkpoint(cps / MARK)
        assert (mark.seq, mark.hash) == app.state.sentinel.vouched == cp.marked
        return mark.seq
    finally:
        await engine.stop()


async def _first_pass(db: Path, cps: Path, key: Any) -> tuple[Any, str]:
    """A new process on ``db``: its standing verify's first pass, and /metrics."""
    engine = await _engine(db)
    try:
        app = create_app(engine, start_engine=False, verify_every=3600)
        Checkpointer(engine, key, cps, every=100, sentinel=app.state.sentinel)
        out = await app.state.sentinel.pass_()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writ") as http:
            return out, (await http.get("/metrics")).text
    finally:
        await engine.stop()


async def test_rows_rewritten_while_no_server_ran_are_found_by_the_first_pass(
    tmp_path: Path,
) -> None:
    """Rows past the newest checkpoint (there is none here), verified by a pass and signed in
    the mark, then rewritten and re-hashed while no server ran: a whole walk finds the chain
    consistent, but the next process's first pass reads the marked row again and breaks."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    seq = await _marked(db, cps, key, 12)
    edit_row(db, 7, rehash=True)
    out, metrics = await _first_pass(db, cps, key)
    assert not out.ok and out.first_bad_seq == seq, out
    assert f"row {seq} no longer has the hash writ verified" in (out.reason or "")
    assert "writ_audit_verify_ok 0.0" in metrics


async def test_rows_removed_while_no_server_ran_are_found_by_the_first_pass(
    tmp_path: Path,
) -> None:
    """The last rows deleted and the head moved back while no server ran: found too."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    seq = await _marked(db, cps, key, 12)
    c = open_db(db)
    prev = c.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 3,)).fetchone()[0]
    c.execute("DELETE FROM audit WHERE seq > ?", (seq - 3,))
    c.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq - 3, prev))
    c.close()
    out, _ = await _first_pass(db, cps, key)
    assert not out.ok and out.first_bad_seq == seq, out


async def test_the_mark_follows_the_verify_and_is_a_checkpoint(tmp_path: Path) -> None:
    """The mark moves on with the passes (one file, rewritten), holds the row's time, and
    verifies as a checkpoint; the ledger still verifies on the next start."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    first = await _marked(db, cps, key, 5)
    second = await _marked(db, cps, key, 5, "b")
    assert second == first + 5 and _files(cps) == [MARK]
    out, metrics = await _first_pass(db, cps, key)
    assert out.ok and "writ_audit_verify_ok 1.0" in metrics
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        mark = read_checkpoint(cps / MARK)
        assert mark.time is not None
        checked = await verify_store(store, [mark], key.public_key())
    finally:
        await store.close()
    assert checked.ok and checked.checkpoints[0]["ok"] is True, checked


async def test_a_mark_by_another_key_vouches_for_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mark that does not verify by the server's key is named in an ERROR line and
    ignored: the rows it would vouch for are read as a process with no mark reads them."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    await _marked(db, cps, generate_key(), 6)
    engine = await _engine(db)
    try:
        with caplog.at_level(logging.ERROR, logger="writ.audit"):
            cp = Checkpointer(engine, key, cps, every=100)
        assert cp.marked == (0, GENESIS) and cp.sentinel.vouched == (0, GENESIS)
        assert any(MARK in r.getMessage() for r in caplog.records)
    finally:
        await engine.stop()


async def test_a_newest_checkpoint_that_does_not_verify_stops_the_signing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newest file signed by another key (the ledger's true hash in it), or edited, gets
    no checkpoint signed after it; with it put right, the next one is signed."""
    db, cps, key = tmp_path / "w.db", tmp_path / "cps", generate_key()
    engine = await _engine(db)
    try:
        cp = Checkpointer(engine, key, cps, every=5)
        await _rows(engine, 5, "a")
        good = await cp.tick()
        assert good is not None
        text = good.read_text()
        row = (await engine.store.read(lambda tx: tx.audit_rows(4, 1)))[0]
        write_checkpoint(sign(generate_key(), 5, row["hash"], None), good)
        await _rows(engine, 5, "b")
        with caplog.at_level(logging.ERROR, logger="writ.audit"):
            assert await cp.tick() is None
        assert (
            cp.refused is not None and "seq 5" in cp.refused and "not by the trusted" in cp.refused
        )
        good.write_text(text.replace("seq: 5", "seq: 4"))
        assert await cp.tick() is None and "seq 5" in (cp.refused or "")
        good.write_text(text)
        path = await cp.tick()
        assert path is not None and cp.refused is None
        assert read_checkpoint(path).seq == 10
        assert any("seq 5" in r.getMessage() for r in caplog.records)
    finally:
        await engine.stop()


async def test_a_pass_that_could_not_run_is_no_break(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unreachable for a pass: the pass raises and records nothing; the next one
    verifies, and the next checkpoint is signed."""
    db, cps = tmp_path / "w.db", tmp_path / "cps"
    engine = await _engine(db)
    try:
        s = Sentinel(engine, every=60)
        cp = Checkpointer(engine, generate_key(), cps, every=5, sentinel=s)
        await _rows(engine, 5, "a")
        assert await cp.tick() is not None
        await _rows(engine, 5, "b")
        real = engine.store.read

        async def unreachable(fn: Any, *a: Any, **kw: Any) -> Any:
            raise Unavailable("store unreachable")

        monkeypatch.setattr(engine.store, "read", unreachable)
        with pytest.raises(Unavailable):
            await s.pass_()
        monkeypatch.setattr(engine.store, "read", real)
        assert s.rewritten is None and (await s.pass_()).ok
        path = await cp.tick()
        assert path is not None and read_checkpoint(path).seq == 10
    finally:
        await engine.stop()


async def _head_as_text(tmp_path: Path) -> tuple[Path, Path, Any]:
    """A store of 4 rows with a checkpoint of them, then ``audit_head.seq`` set to text."""
    db, key = tmp_path / "w.db", generate_key()
    engine = await _engine(db)
    try:
        await _rows(engine, 4, "a")
        cp = Checkpointer(engine, key, tmp_path / "cps", every=4)
        path = await cp.tick()
        assert path is not None
    finally:
        await engine.stop()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("UPDATE audit_head SET seq = 'abc'")
    c.close()
    return db, path, key


async def test_a_head_stored_as_text_is_named_by_verify_store(tmp_path: Path) -> None:
    db, path, key = await _head_as_text(tmp_path)
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        out = await verify_store(store, [read_checkpoint(path)], key.public_key())
    finally:
        await store.close()
    assert not out.ok and "(audit_head) is stored as text" in (out.reason or ""), out
    assert out.first_bad_seq is None and out.checkpoints[0]["ok"] is False


def test_a_head_stored_as_text_is_named_by_the_cli(tmp_path: Path) -> None:
    """``audit_head.seq`` stored as text: ``writ audit verify --checkpoint --pubkey`` says so
    and exits 1 (it was a TypeError traceback)."""
    db, path, key = asyncio.run(_head_as_text(tmp_path))
    keyfile = tmp_path / "k.key"
    write_key(keyfile, key)
    args = ["--store", f"sqlite:///{db}", "--checkpoint", str(path), "--pubkey", f"{keyfile}.pub"]
    res = CliRunner().invoke(main, ["audit", "verify", *args])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception
    assert "(audit_head) is stored as text" in res.output, res.output


async def test_a_rewrite_after_a_table_break_is_not_forgotten(tmp_path: Path) -> None:
    """A table changed by hand breaks a pass (the next walks the whole chain); rows it had
    verified are then rewritten and re-hashed, and the table mended: the whole walk finds
    the re-hashed chain consistent, but the furthest row verified has another hash now."""
    db = tmp_path / "w.db"
    engine = await _engine(db)
    try:
        agent, _ = await engine.add_principal(None, "perf-agent", "agent")
        lease = await engine.acquire(agent, resource="prod/db", intent="scale up")
        await _rows(engine, 5, "a")
        s = Sentinel(engine, every=60)
        assert (await s.pass_()).ok
        seq = s.at[0]
        assert seq > 3
        c = sqlite3.connect(db, isolation_level=None)
        holder = "UPDATE leases SET holder = ? WHERE lease_id = ?"
        c.execute(holder, ("cost-agent", lease["lease_id"]))
        assert (await s.pass_()).lease_id == lease["lease_id"]
        edit_row(db, 3, rehash=True)
        c.execute(holder, ("perf-agent", lease["lease_id"]))
        c.close()
        out = await s.pass_()
        assert not out.ok and out.first_bad_seq == seq, out
        assert await s.verified() is None
    finally:
        await engine.stop()


async def test_a_rewrite_between_the_re_read_and_the_walk_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewritten and re-hashed just after a whole pass read the furthest row verified again,
    before its walk: the walk finds that row with another hash, and it stays a break."""
    db = tmp_path / "w.db"
    engine = await _engine(db)
    try:
        await _rows(engine, 8, "a")
        ticks = Ticks()
        s = Sentinel(engine, every=60, full_every=3600, clock=ticks)
        assert (await s.pass_()).ok and s.at[0] == 8
        read_again = s._changed_behind

        async def then_rewritten() -> Any:
            out = await read_again()
            edit_row(db, 3, rehash=True)
            return out

        monkeypatch.setattr(s, "_changed_behind", then_rewritten)
        ticks.now += 3600  # a whole pass: the walk starts at genesis
        out = await s.pass_()
        assert not out.ok and out.first_bad_seq == 8, out
        monkeypatch.setattr(s, "_changed_behind", read_again)
        ticks.now += 3600
        assert not (await s.pass_()).ok and await s.verified() is None
    finally:
        await engine.stop()
