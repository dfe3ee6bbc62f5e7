"""The commands that only read a store (``audit verify|export|checkpoint|verify-checkpoint
--store``, ``postmortem --store``, ``policy check --store``, ``migrate --from``) open it
read-only: nothing is created, migrated, switched to WAL or written. A database that is not
a writ store, or one at an older schema, is refused with a clear error, unchanged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, sign, write_checkpoint, write_key
from writ.stores import OlderSchema, open_store

pytestmark = pytest.mark.usefixtures("no_admin_env")


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _commands(url: str, tmp: Path) -> dict[str, list[str]]:
    """Each read-only command, on the store at ``url``."""
    key, _pub = write_key(tmp / "k.key")
    cp = write_checkpoint(sign(generate_key(), 1, "ab" * 32, None), tmp / "cp.txt")
    policy = tmp / "policy.toml"
    policy.write_text('[[rules]]\nprefix = "prod"\n')
    return {
        "audit verify": ["audit", "verify", "--store", url],
        "audit verify --checkpoint": ["audit", "verify", "--store", url, "--checkpoint", str(cp)],
        "audit verify-checkpoint": ["audit", "verify-checkpoint", str(cp), "--store", url],
        "audit export": ["audit", "export", "--store", url],
        "audit checkpoint": ["audit", "checkpoint", "--key", str(key), "--store", url],
        "postmortem": ["postmortem", "--store", url],
        "policy check": ["policy", "check", str(policy), "--store", url],
        "migrate --from": ["migrate", "--from", url, "--to", f"sqlite:///{tmp / 'copy.db'}"],
    }


COMMANDS = [
    "audit verify",
    "audit verify --checkpoint",
    "audit verify-checkpoint",
    "audit export",
    "audit checkpoint",
    "postmortem",
    "policy check",
    "migrate --from",
]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("command", COMMANDS)
def test_another_apps_database_is_refused_and_left_as_it_was(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    foreign = data / "app.db"
    conn = sqlite3.connect(foreign, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    before = _files(data)
    res = cli(*_commands(f"sqlite:///{foreign}", tmp_path)[command])
    assert res.exit_code == 1, res.output
    assert "is not a writ store (it has no writ_migrations table)" in res.stderr, res.output
    assert _files(data) == before  # no writ tables, no WAL, no -wal or -shm file
    assert not (tmp_path / "copy.db").exists()


def _writ_store(path: Path) -> None:
    async def fill() -> None:
        engine = Engine(open_store(f"sqlite:///{path}"))
        await engine.start(background=False)
        try:
            await engine.add_principal(None, "agent-a", "agent")
        finally:
            await engine.stop()

    asyncio.run(fill())


def _by_hand(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_an_older_sqlite_schema_is_not_upgraded_by_a_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "old.db"
    _writ_store(db)
    _by_hand(
        db,
        "DROP TABLE audit_head",
        "DELETE FROM writ_migrations WHERE version = 3",
        "PRAGMA journal_mode = DELETE",
    )
    before = _files(data)
    url = f"sqlite:///{db}"
    for command in COMMANDS:
        res = cli(*_commands(url, tmp_path)[command])
        assert res.exit_code == 1, (command, res.output)
        assert "has an older schema (migration 2; this writ's is 3)" in res.stderr, res.output
        assert f"run 'writ migrate --upgrade {url}' first" in res.stderr
        assert _files(data) == before, command
        for made in ("k.key", "k.key.pub", "cp.txt", "policy.toml"):
            (tmp_path / made).unlink()


def test_a_read_leaves_a_writ_store_in_its_journal_mode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "w.db"
    _writ_store(db)
    _by_hand(db, "PRAGMA journal_mode = DELETE")
    before = _files(data)
    res = cli("audit", "verify", "--store", f"sqlite:///{db}")
    assert res.exit_code == 0 and res.stdout.startswith("ok: 1 rows"), res.output
    assert _files(data) == before


def test_read_only_cli_on_a_postgresql_schema_without_writ_creates_nothing(
    pg_backend: Backend,
) -> None:
    res = cli("audit", "verify", "--store", pg_backend.url)
    assert res.exit_code == 1 and "is not a writ store" in res.stderr, res.output
    schema = pg_backend.url.rpartition("schema=")[2]
    found = asyncio.run(pg_backend.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", schema))
    assert found == []


def test_an_older_schema_is_refused_on_every_backend(backend: Backend) -> None:
    async def older() -> int:
        store = backend.open_store()
        await store.open()
        await store.close()
        (last,) = (await backend.sql("SELECT max(version) FROM writ_migrations"))[0]
        await backend.sql("DELETE FROM writ_migrations WHERE version = %s", last)
        return int(last)

    last = asyncio.run(older())
    res = cli("audit", "verify", "--store", backend.url)
    assert res.exit_code == 1, res.output
    assert f"has an older schema (migration {last - 1}; this writ's is {last})" in res.stderr
    assert "writ migrate --upgrade" in res.stderr

    async def read_only_open() -> list[tuple[object, ...]]:
        with pytest.raises(OlderSchema):
            await open_store(backend.url, read_only=True).open()
        return await backend.sql("SELECT version FROM writ_migrations WHERE version = %s", last)

    assert asyncio.run(read_only_open()) == []  # nothing applied
