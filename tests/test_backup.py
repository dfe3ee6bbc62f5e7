"""Backup and restore (issue 14, docs/operations.md "Backup and restore"): the documented
commands, run on a store that is being served, and the restored copy verifies."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from writ.cli import main
from writ.core.models import Principal
from writ.engine import Engine
from writ.stores import open_store


async def _story(engine: Engine) -> dict[str, object]:
    """Some history: two agents, a grant, a release and a lease still held."""
    a, _ = await engine.add_principal(None, "bk-a", "agent")
    b, _ = await engine.add_principal(None, "bk-b", "agent")
    first = await engine.acquire(a, resource="prod/db", intent="x", ttl_s=60)
    await engine.release(a, first["lease_id"])
    return await engine.acquire(b, resource="prod/db", intent="y", ttl_s=3600)


def _verify(store_url: str) -> str:
    result = CliRunner().invoke(main, ["audit", "verify", "--store", store_url])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("how", ["sqlite3-cli", "python-backup-api"])
def test_an_online_sqlite_backup_restores_and_verifies(tmp_path: Path, how: str) -> None:
    """Backed up while the store is open and writing (WAL), restored by copying the file into
    place: the ledger verifies, the held lease is still held, and the next grant's fencing
    token is higher than any before."""
    if how == "sqlite3-cli" and shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line shell is not installed")
    live = tmp_path / "live" / "writ.db"
    backup = tmp_path / "writ-backup.db"

    async def serve_and_back_up() -> dict[str, object]:
        engine = Engine(open_store(f"sqlite:///{live}"))
        await engine.start(background=False)
        try:
            held = await _story(engine)
            if how == "sqlite3-cli":  # the documented command, verbatim
                proc = await asyncio.create_subprocess_exec(
                    "sqlite3", str(live), f".backup '{backup}'"
                )
                assert await proc.wait() == 0
            else:
                with sqlite3.connect(live) as src, sqlite3.connect(backup) as dst:
                    src.backup(dst)
            # the server goes on writing after the backup: the copy is a consistent snapshot
            await engine.add_principal(None, "bk-after", "agent")
            return held
        finally:
            await engine.stop()

    held = asyncio.run(serve_and_back_up())
    restored = tmp_path / "restored" / "writ.db"
    restored.parent.mkdir()
    shutil.copy(backup, restored)
    out = _verify(f"sqlite:///{restored}")
    assert "ok" in out.lower()

    async def use_the_copy() -> None:
        again = Engine(open_store(f"sqlite:///{restored}"))
        await again.start(background=False)
        try:
            assert (await again.get_lease(str(held["lease_id"])))["state"] == "held"
            assert await again.principal("bk-after") is None  # after the snapshot
            a: Principal | None = await again.principal("bk-a")
            assert a is not None
            nxt = await again.acquire(a, resource="other/x", intent="z")
            assert nxt["fencing_token"] > int(str(held["fencing_token"]))
        finally:
            await again.stop()

    asyncio.run(use_the_copy())


def test_a_store_copied_out_with_writ_migrate_verifies(
    store_url: str, tmp_path: Path, no_admin_env: None
) -> None:
    """The logical backup of either store (PostgreSQL's too): `writ migrate` into a fresh
    SQLite file, which then verifies on its own."""

    async def story() -> None:
        engine = Engine(open_store(store_url))
        await engine.start(background=False)
        try:
            await _story(engine)
        finally:
            await engine.stop()

    asyncio.run(story())
    backup = f"sqlite:///{tmp_path}/logical-backup.db"
    result = CliRunner().invoke(main, ["migrate", "--from", store_url, "--to", backup])
    assert result.exit_code == 0, result.output
    assert "copied" in result.output
    _verify(backup)
