"""Signed checkpoints: a rewrite of history after a checkpoint is found and named."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from tests.verify_fixtures import edit_row, open_db
from writ.cli import main
from writ.core.clock import ManualClock, parse_time
from writ.core.ledger import canonical
from writ.engine import Engine
from writ.evidence.checkpoint import (
    Checkpointer,
    CheckpointError,
    generate_key,
    load_private_key,
    load_public_key,
    make,
    parse,
    read_checkpoint,
    signable,
    verify_store,
    write_checkpoint,
    write_key,
)
from writ.stores.sqlite import SQLiteStore

T0 = parse_time("2026-05-16T02:17:00Z")


async def _fill(engine: Engine, n: int, name: str = "agent") -> None:
    """Add ``n`` audit rows (a principal each)."""
    for i in range(n):
        await engine.add_principal(None, f"{name}-{i}", "agent")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    e = Engine(SQLiteStore(f"sqlite:///{tmp_path}/w.db", clock=ManualClock(T0)))
    await e.start(background=False)
    await _fill(e, 10)
    yield e
    await e.stop()


async def test_text_format_round_trips_and_signature_holds(engine: Engine) -> None:
    key = generate_key()
    cp = await make(engine.store, key)
    text = cp.text()
    lines = text.splitlines()
    assert lines[0] == "writ-checkpoint: 1"
    assert [ln.split(": ")[0] for ln in lines] == [
        "writ-checkpoint",
        "seq",
        "hash",
        "time",
        "signed_at",
        "key_id",
        "public_key",
        "signature",
    ]
    assert cp.seq == 10 and cp.time == "2026-05-16T02:17:00.000000Z"
    back = parse(text)
    assert back == cp
    back.check_signature(key.public_key())
    # an edited line breaks the signature
    forged = parse(text.replace(f"seq: {cp.seq}", "seq: 3"))
    with pytest.raises(CheckpointError, match="signature does not match"):
        forged.check_signature()


async def test_valid_checkpoint_passes_and_the_ledger_may_grow(engine: Engine) -> None:
    key = generate_key()
    cp = await make(engine.store, key)
    await _fill(engine, 5, "late")
    out = await verify_store(engine.store, [cp], key.public_key())
    assert out.ok and out.rows == 15 and out.checkpoints[0]["ok"] is True


async def test_edited_row_before_checkpoint_is_named(engine: Engine, tmp_path: Path) -> None:
    """A row changed in place (without re-hashing) fails at that row."""
    cp = await make(engine.store, generate_key())
    edit_row(tmp_path / "w.db", 4, rehash=False)
    out = await verify_store(engine.store, [cp])
    assert not out.ok and out.first_bad_seq == 4
    assert "row 4" in (out.reason or "") and "checkpoint seq 10" in (out.reason or "")


async def test_rehashed_rewrite_is_caught_only_by_the_checkpoint(
    engine: Engine, tmp_path: Path
) -> None:
    """Rewriting a row and re-sealing the chain fools `audit verify` but not the checkpoint;
    two checkpoints narrow down where the rewrite began."""
    key = generate_key()
    early = await make(engine.store, key)  # seq 10
    await _fill(engine, 5, "late")
    late = await make(engine.store, key)  # seq 15
    edit_row(tmp_path / "w.db", 12, rehash=True, move_head=False)
    careless = await engine.verify()  # the head kept beside the chain names another row
    assert not careless.ok and careless.first_bad_seq == 15, careless
    edit_row(tmp_path / "w.db", 12, rehash=True)
    assert (await engine.verify()).ok  # the chain and its head alone cannot tell
    out = await verify_store(engine.store, [early, late], key.public_key())
    assert not out.ok and out.first_bad_seq == 15
    assert "rows 11..15 were rewritten" in (out.reason or "")
    assert [c["ok"] for c in out.checkpoints] == [True, False]


async def test_removed_rows_are_found(engine: Engine, tmp_path: Path) -> None:
    cp = await make(engine.store, generate_key())
    c = open_db(tmp_path / "w.db")
    c.execute("DELETE FROM audit WHERE seq > 7")
    c.close()
    out = await verify_store(engine.store, [cp])
    assert not out.ok and out.first_bad_seq == 8 and "were removed" in (out.reason or "")


async def test_wrong_key_fails(engine: Engine) -> None:
    cp = await make(engine.store, generate_key())
    with pytest.raises(CheckpointError, match="not by the trusted key"):
        await verify_store(engine.store, [cp], generate_key().public_key())


def test_key_files(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k")
    assert oct(os.stat(priv).st_mode & 0o777) == "0o600"
    assert pub.name == "k.pub"
    key = load_private_key(priv)
    assert load_public_key(pub).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        write_key(priv)
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(CheckpointError):
        load_private_key(tmp_path / "junk")


async def test_checkpointer_writes_one_every_n_rows(engine: Engine, tmp_path: Path) -> None:
    """The server's ticker signs the head whenever N rows have been added."""
    key = generate_key()
    folder = tmp_path / "cps"
    cpr = Checkpointer(engine, key, folder, every=4)
    await engine.sweep()  # 10 rows: first checkpoint
    await engine.sweep()  # nothing new
    await _fill(engine, 5, "late")  # 15 rows
    await engine.sweep()
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint-000000000010.txt",
        "checkpoint-000000000015.txt",
        "verified.txt",  # the mark: the furthest row verified, a checkpoint too
    ]
    cps = [read_checkpoint(p) for p in sorted(folder.iterdir())]
    assert (await verify_store(engine.store, cps, key.public_key())).ok
    # a new Checkpointer carries on from the newest file
    assert Checkpointer(engine, key, folder, every=4).last_seq == 15 == cpr.last_seq


async def _store_with_rows(path: Path) -> None:
    e = Engine(SQLiteStore(f"sqlite:///{path}", clock=ManualClock(T0)))
    await e.start(background=False)
    await _fill(e, 6)
    await e.stop()


def test_cli_keygen_checkpoint_verify(tmp_path: Path) -> None:
    """`writ audit keygen`, `audit checkpoint`, `audit verify --checkpoint` end to end;
    tampering makes verify exit 1 naming the row."""
    import asyncio

    db = tmp_path / "w.db"
    asyncio.run(_store_with_rows(db))
    url = f"sqlite:///{db}"
    r = CliRunner()
    key = tmp_path / "ck.key"
    res = r.invoke(main, ["audit", "keygen", "--out", str(key)])
    assert res.exit_code == 0, res.output
    assert "key id" in res.output
    cpf = tmp_path / "cp.txt"
    res = r.invoke(
        main, ["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(cpf)]
    )
    assert res.exit_code == 0, res.output
    assert read_checkpoint(cpf).seq == 6
    res = r.invoke(
        main,
        ["audit", "verify", "--store", url, "--checkpoint", str(cpf), "--pubkey", f"{key}.pub"],
    )
    assert res.exit_code == 0, res.output
    assert "extends checkpoint seq 6" in res.output and "the trusted key" in res.output
    res = r.invoke(main, ["audit", "verify", "--store", url])  # unchanged without the option
    assert res.exit_code == 0 and "6 rows" in res.output
    edit_row(tmp_path / "w.db", 3, rehash=True)
    res = r.invoke(main, ["audit", "verify", "--store", url, "--checkpoint", str(cpf)])
    assert res.exit_code == 1
    assert "BROKEN at seq 6" in res.output and "rows 1..6 were rewritten" in res.output
    res = r.invoke(main, ["audit", "verify-checkpoint", str(cpf), "--store", url])
    assert res.exit_code == 1
    other = tmp_path / "other.key"
    write_key(other)
    res = r.invoke(
        main,
        ["audit", "verify", "--store", url, "--checkpoint", str(cpf), "--pubkey", f"{other}.pub"],
    )
    assert res.exit_code == 1 and "not by the trusted key" in res.output


def test_serve_has_checkpoint_options() -> None:
    res = CliRunner().invoke(main, ["serve", "--help"])
    assert res.exit_code == 0
    for opt in ("--checkpoint-every", "--checkpoint-key", "--checkpoint-dir"):
        assert opt in res.output


def test_install_checkpointer_hooks_into_every_app(tmp_path: Path) -> None:
    """`writ serve --checkpoint-every N` wires a Checkpointer into the app's engine."""
    from writ.api import app as server
    from writ.cli.commands.serve import install_checkpointer

    priv, _ = write_key(tmp_path / "k")
    before = list(server.EXTENSIONS)
    try:
        install_checkpointer(str(priv), str(tmp_path / "cps"), 3)
        e = Engine(SQLiteStore(f"sqlite:///{tmp_path}/s.db"))
        app = server.create_app(e, start_engine=False)
        cpr = app.state.checkpointer
        assert isinstance(cpr, Checkpointer) and cpr.every == 3
        assert cpr.tick in e._tickers
    finally:
        server.EXTENSIONS[:] = before


def test_write_checkpoint_is_atomic_text(tmp_path: Path) -> None:
    from writ.evidence.checkpoint import sign

    key = generate_key()
    cp = sign(key, 5, "ab" * 32, "2026-05-16T02:17:00.000000Z", "2026-05-16T02:18:00.000000Z")
    p = write_checkpoint(cp, tmp_path / "x" / "cp.txt")
    assert p.read_text() == cp.text() and not list((tmp_path / "x").glob(".*"))
    with pytest.raises(CheckpointError):
        parse(cp.text().replace("hash: ", "hash: zz"))


async def test_checkpoint_on_every_backend(make_engine: Any, backend: Backend) -> None:
    """A checkpoint holds as the ledger grows, and an edited row fails it, on each store."""
    e = await make_engine()
    await _fill(e, 5)
    key = generate_key()
    cp = await make(e.store, key)
    await _fill(e, 5, "late")
    assert (await verify_store(e.store, [cp], key.public_key())).ok
    rows = (await e.audit(0, 100))["rows"]
    row = rows[2]
    body = canonical({k: v for k, v in row.items() if k != "hash"} | {"notes": "edited"})
    await backend.tamper(row["seq"], body)
    out = await verify_store(e.store, [cp], key.public_key())
    assert not out.ok and out.first_bad_seq == row["seq"]
    assert f"row {row['seq']} changed after checkpoint seq {cp.seq}" in (out.reason or "")


def test_checkpoint_and_verify_through_a_server(tmp_path: Path) -> None:
    """`audit checkpoint --url` signs the served head; `audit verify --checkpoint --url`
    fails once the rows up to it were rewritten and re-hashed under the server."""
    from tests.server_fixtures import serve

    key = tmp_path / "k"
    write_key(key)
    r = CliRunner()
    with serve(tmp_path / "w.db") as srv:
        srv.principal("agent")
        srv.principal("agent")
        env = srv.env()
        cpf = tmp_path / "cp.txt"
        res = r.invoke(main, ["audit", "checkpoint", "--key", str(key), "--out", str(cpf)], env=env)
        assert res.exit_code == 0, res.output
        cp = read_checkpoint(cpf)
        assert cp.seq >= 3
        srv.principal("agent")  # the ledger grows after the checkpoint
        res = r.invoke(
            main, ["audit", "verify", "--checkpoint", str(cpf), "--pubkey", f"{key}.pub"], env=env
        )
        assert res.exit_code == 0, res.output
        assert f"extends checkpoint seq {cp.seq}" in res.output
        edit_row(tmp_path / "w.db", 2, rehash=True)
        res = r.invoke(main, ["audit", "verify", "--checkpoint", str(cpf), "--json"], env=env)
        assert res.exit_code == 1
        out = json.loads(res.output)
        assert out["ok"] is False and out["first_bad_seq"] == cp.seq
        assert "rewritten and re-hashed" in out["reason"]


async def test_checkpoints_that_disagree_at_one_seq_fail(engine: Engine, tmp_path: Path) -> None:
    """Two checkpoints of one seq with different hashes: the ledger was forked, or one is
    forged. The genuine one (kept off the host) was dropped unseen when the forged one, made
    with the intruder's own key over the rewritten rows, came after it in the list."""
    genuine = await make(engine.store, generate_key())
    edit_row(tmp_path / "w.db", 4, rehash=True)
    forged = await make(engine.store, generate_key())
    assert forged.seq == genuine.seq and forged.hash != genuine.hash
    for order in ([genuine, forged], [forged, genuine]):
        with pytest.raises(CheckpointError, match="disagree at seq 10"):
            await verify_store(engine.store, order)


def test_a_hostile_checkpoint_file_is_refused(tmp_path: Path) -> None:
    """A checkpoint is a few hundred bytes of plain text, its signature spelled one way: a
    file padded to any size is refused unread (one of gigabytes was read whole), and so
    is a signature spelled another way for the same bytes, or a line a terminal would
    obey (a forger's signed_at, printed by verify)."""
    from writ.evidence.checkpoint import MAX_FILE, sign

    key = generate_key()
    cp = sign(key, 5, "ab" * 32, "2026-05-16T02:17:00.000000Z", "2026-05-16T02:18:00.000000Z")
    padded = tmp_path / "padded.txt"
    padded.write_text(cp.text() + "\n" * MAX_FILE)
    with pytest.raises(CheckpointError, match="larger than"):
        read_checkpoint(padded)
    with pytest.raises(CheckpointError, match="larger than"):
        load_public_key(padded)
    sig = cp.text().splitlines()[-1].removeprefix("signature: ")
    assert sig.endswith("==")  # 64 bytes: the last character carries 4 unused bits
    respelled = sig[:-3] + chr(ord(sig[-3]) + 1) + "=="
    text = cp.text().replace(sig, respelled)
    assert parse(cp.text()).signature == cp.signature
    with pytest.raises(CheckpointError, match="reformatted"):
        parse(text)
    evil = sign(key, 5, "ab" * 32, None, "2026-05-16T02:18:00Z\x1b]0;pwned\x07")
    with pytest.raises(CheckpointError, match="control"):
        parse(evil.text())


def test_a_signing_key_others_may_read_is_refused(tmp_path: Path) -> None:
    """A private key every user of the host may read signs nothing (it was used as it
    was): whoever read it can sign checkpoints over a rewritten ledger."""
    priv, pub = write_key(tmp_path / "k")
    os.chmod(priv, 0o644)
    with pytest.raises(CheckpointError, match="other users may read"):
        load_private_key(priv)
    r = CliRunner().invoke(main, ["audit", "checkpoint", "--key", str(priv), "--store", "x"])
    assert r.exit_code == 1 and "chmod 600" in r.output
    os.chmod(priv, 0o640)  # its group (the server's) may
    assert load_private_key(priv).public_key().public_bytes_raw() == (
        load_public_key(pub).public_bytes_raw()
    )


def test_files_are_written_through_no_planted_symlink(tmp_path: Path) -> None:
    """In a directory others may write to (--out /tmp/cp.txt), a symlink planted at the
    temporary name or at KEY.pub made writ overwrite the file it points to."""
    from writ.evidence.checkpoint import sign

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".cp.txt.tmp").symlink_to(victim)
    cp = sign(generate_key(), 5, "ab" * 32, None, "2026-05-16T02:18:00.000000Z")
    write_checkpoint(cp, tmp_path / "cp.txt")
    assert victim.read_text() == "precious"
    assert read_checkpoint(tmp_path / "cp.txt") == cp
    (tmp_path / "k.pub").symlink_to(victim)
    with pytest.raises(CheckpointError, match="symlink"):
        write_key(tmp_path / "k")
    assert victim.read_text() == "precious"


def test_a_ledger_that_does_not_verify_gets_no_checkpoint(tmp_path: Path) -> None:
    """``writ audit checkpoint`` verifies first, offline (``--store``) and through the
    server: a row changed in place, or a held lease changed by hand, gets no checkpoint
    (exit 1, the reason, no file); before, it signed whatever head it found."""
    import contextlib
    import sqlite3

    from tests.server_fixtures import serve

    key = tmp_path / "k"
    write_key(key)
    r = CliRunner()
    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent", "perf-agent")
        srv.principal("agent")
        with srv.client(token) as agent:
            lease = agent.acquire("prod/db", "scale up")
        env = srv.env()
        cpf = tmp_path / "cp.txt"
        where = (["--store", srv.store_url], [])
        for args in where:
            made = [*args, "--key", str(key), "--out", str(cpf)]
            assert r.invoke(main, ["audit", "checkpoint", *made], env=env).exit_code == 0
        cpf.unlink()
        db = tmp_path / "w.db"
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
            c.execute("UPDATE leases SET holder = 'x' WHERE lease_id = ?", (lease["lease_id"],))
        for args in where:
            res = r.invoke(
                main, ["audit", "checkpoint", *args, "--key", str(key), "--out", str(cpf)], env=env
            )
            assert res.exit_code == 1 and not cpf.exists(), res.output
            assert "does not verify" in res.output and "the holder column" in res.output
            assert "writ signs no checkpoint" in res.output
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
            c.execute(
                "UPDATE leases SET holder = 'perf-agent' WHERE lease_id = ?", (lease["lease_id"],)
            )
        edit_row(db, 2, rehash=False)
        for args in where:
            res = r.invoke(
                main, ["audit", "checkpoint", *args, "--key", str(key), "--out", str(cpf)], env=env
            )
            assert res.exit_code == 1 and not cpf.exists(), res.output
            assert "does not verify at seq 2" in res.output


@pytest.mark.parametrize(
    ("verified", "row", "said"),
    [
        ({"ok": True, "rows": True, "head": "a" * 64}, {"seq": 1}, "which writ never sends"),
        ({"ok": True, "rows": 3, "head": "a" * 64 + "\nseq: 9"}, {"seq": 3}, "never sends"),
        ({"ok": True, "rows": "3", "head": "a" * 64}, {"seq": "3"}, "never sends"),
        ({"ok": True, "rows": 3, "head": "a" * 64}, {"seq": 3, "hash": "b" * 64}, "not the row"),
    ],
)
def test_a_hostile_servers_verify_gets_nothing_signed(
    tmp_path: Path, verified: dict[str, Any], row: dict[str, Any], said: str
) -> None:
    """``writ audit checkpoint --url`` signs what the server's verify answers: a seq that is
    a boolean or text, a head that is no hash (a newline in it would add a line to the
    checkpoint), or a row other than the one verified gets nothing signed and no file."""
    from tests.server_fixtures import serve_asgi

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = verified if scope["path"] == "/v1/audit/verify" else {"rows": [row]}
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    key, cpf = tmp_path / "k", tmp_path / "cp.txt"
    write_key(key)
    with serve_asgi(app) as url:
        args = ["audit", "checkpoint", "--key", str(key), "--out", str(cpf), "--url", url]
        res = CliRunner().invoke(main, args, env={"WRIT_TOKEN": "t" * 20})
    assert res.exit_code == 1 and said in res.output and not cpf.exists(), res.output


def test_a_time_no_writ_row_shows_is_not_signed() -> None:
    """A row's timestamp that does not parse (a newline, text) is left out of what is
    signed; a good one is signed as writ shows times."""
    verified = {"ok": True, "rows": 2, "head": "c" * 64}
    row = {"seq": 2, "hash": "c" * 64, "timestamp": "2026-05-16T02:17:00Z\nseq: 9"}
    assert signable(verified, row) is None
    row["timestamp"] = "2026-05-16T02:17:00.5Z"
    assert signable(verified, row) == "2026-05-16T02:17:00.500000Z"
