"""The files a checkpointing server and ``writ audit verify`` read: a newest checkpoint file
that does not verify (junk named ``checkpoint-000099999999.txt``, or one signed past the
ledger's end) stops the signing with an ERROR, never in silence; a ``--pubkey`` file that
looks like a checkpoint but is not UTF-8 is a clear error, not a traceback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from writ.cli import main
from writ.engine import Engine
from writ.evidence.checkpoint import (
    Checkpointer,
    CheckpointError,
    generate_key,
    load_public_key,
    sign,
    write_checkpoint,
    write_key,
)
from writ.stores import open_store

JUNK = "checkpoint-000099999999.txt"


async def _rows(engine: Engine, n: int) -> None:
    for i in range(n):
        await engine.add_principal(None, f"agent-{i}", "agent")


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_junk_newest_file_stops_the_signing_out_loud(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cps"
    folder.mkdir()
    (folder / JUNK).write_text("not a checkpoint\n")
    key = generate_key()
    cp = Checkpointer(engine, key, folder, every=3)
    assert cp.last_seq == 0  # the junk's name counts for nothing
    await _rows(engine, 5)
    with caplog.at_level(logging.INFO, logger="writ.audit"):
        assert await cp.tick() is None
    (error,) = _errors(caplog)
    assert "writ signs no checkpoint: the newest checkpoint, seq 99999999" in error
    assert "does not verify" in error and cp.refused is not None
    (folder / JUNK).unlink()  # once it is gone, the signing goes on
    written = await cp.tick()
    assert written is not None and written.name == "checkpoint-000000000005.txt"


async def test_a_checkpoint_past_the_ledgers_end_stops_the_signing_out_loud(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed by this key at seq 50 of a ledger of 5 rows (rows removed, or another
    ledger's): the next checkpoint would never be due; the server says why instead."""
    folder = tmp_path / "cps"
    key = generate_key()
    write_checkpoint(sign(key, 50, "ab" * 32, None), folder / "checkpoint-000000000050.txt")
    cp = Checkpointer(engine, key, folder, every=3)
    assert cp.last_seq == 50
    await _rows(engine, 5)
    with caplog.at_level(logging.INFO, logger="writ.audit"):
        assert await cp.tick() is None
        assert await cp.tick() is None  # said once while the reason stands
    errors = [e for e in _errors(caplog) if "signs no checkpoint" in e]
    assert len(errors) == 1, errors
    assert "row 50 no longer has the hash checkpoint seq 50" in errors[0]
    assert "the row is gone" in errors[0]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-000000000050.txt"
    ]


def test_a_pubkey_that_is_no_utf8_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "key.pub"
    bad.write_bytes(b"writ-checkpoint: 1\nseq: \xff\n")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {bad}"):
        load_public_key(bad)

    async def store() -> str:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        engine = Engine(open_store(url))
        await engine.start(background=False)
        try:
            await _rows(engine, 2)
        finally:
            await engine.stop()
        return url

    url = asyncio.run(store())
    key, _pub = write_key(tmp_path / "k.key")
    cp = tmp_path / "cp.txt"
    made = CliRunner().invoke(
        main, ["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(cp)]
    )
    assert made.exit_code == 0, made.output
    res = CliRunner().invoke(
        main, ["audit", "verify", "--store", url, "--checkpoint", str(cp), "--pubkey", str(bad)]
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 1 and "cannot read checkpoint" in res.stderr, res.output
