"""``writ migrate`` checks the source whole before the copy commits: its tables as well as
its chain (a copy that would not verify leaves the destination empty), the destination's
fencing-token counter reaches the ledger's largest grant, a reason is printed when a copy
does not verify; the mistakes a typo makes (``--from``, ``--upgrade``) create nothing; and a
row PostgreSQL cannot store is named as bad data, without a traceback."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.core.errors import Invalid
from writ.core.ledger import Verification
from writ.engine import Engine
from writ.stores import open_store
from writ.stores.migrate import _Copy, migrate, upgrade, verify_store

pytestmark = pytest.mark.usefixtures("no_admin_env")

HEAD_MIGRATION = "the chain's head kept beside the chain"


async def _source(path: Path) -> str:
    """A SQLite store with principals, a held lease (token 1), an ended one (token 2) and
    a freeze."""
    url = f"sqlite:///{path}"
    engine = Engine(open_store(url))
    await engine.start(background=False)
    try:
        agent, _ = await engine.add_principal(None, "agent-a", "agent")
        oncall, _ = await engine.add_principal(None, "oncall", "queue")
        await engine.acquire(agent, resource="prod/db", intent="hold", ttl_s=600)
        old = await engine.acquire(agent, resource="staging/db", intent="x")
        await engine.release(agent, old["lease_id"])
        await engine.freezes.freeze(oncall, prefix="billing", reason="quarter close")
    finally:
        await engine.stop()
    return url


def _by_hand(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


async def _empty(backend: Backend) -> None:
    """The destination of a refused copy: nothing in it, its chain included."""
    dst = backend.open_store()
    await dst.open()
    try:
        assert (await verify_store(dst)).rows == 0
        assert await dst.read(lambda tx: tx.list_principals()) == []
        assert await dst.read(lambda tx: tx.held_leases()) == []
    finally:
        await dst.close()


@pytest.mark.parametrize(
    ("edits", "says", "named"),
    [
        (  # the counter lowered and the lease of the largest token deleted
            (
                "UPDATE meta SET value = 1 WHERE key = 'fencing_token'",
                "DELETE FROM leases WHERE fencing_token = 2",
            ),
            "fencing-token counter (1) is below fencing token 2",
            "lease_id",
        ),
        (
            ("UPDATE principals SET admin = 1 WHERE name = 'agent-a'",),
            "principal agent-a: the admin column",
            "principal",
        ),
    ],
    ids=["lowered-counter", "admin-by-hand"],
)
async def test_a_source_whose_tables_do_not_verify_is_refused_before_the_commit(
    tmp_path: Path, backend: Backend, edits: tuple[str, ...], says: str, named: str
) -> None:
    src = await _source(tmp_path / "src.db")
    _by_hand(tmp_path / "src.db", *edits)
    with pytest.raises(Invalid, match="the source's tables do not verify") as refused:
        await migrate(src, backend.url)
    assert says in refused.value.message and "nothing was copied" in refused.value.message
    assert refused.value.details[named]  # the lease or principal, as verify names it
    await _empty(backend)


async def test_the_counter_reaches_the_largest_token_the_ledger_granted(
    tmp_path: Path, backend: Backend
) -> None:
    """A dump whose counter and lease rows fall short of the ledger's grants (token 2, its
    lease gone from the dump): the destination's next token is still past 2."""
    src_url = await _source(tmp_path / "src.db")
    src = open_store(src_url, read_only=True)
    dst = backend.open_store()
    await src.open()
    await dst.open()

    async def short() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        async for table, rows in src.export_rows():
            if table == "meta":
                rows = [{**rows[0], "fencing_token": 0}]
            elif table == "leases":
                rows = [r for r in rows if r["fencing_token"] != 2]
            yield table, rows

    try:
        loaded = await dst.import_rows(_Copy(src, None).tap(short()))
        assert loaded["meta"] == 2
        assert await dst.read(lambda tx: tx.token_counter()) == 2
    finally:
        await dst.close()
        await src.close()


def test_the_cli_says_why_a_copy_does_not_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import writ.stores.migrate as moving

    src = asyncio.run(_source(tmp_path / "a.db"))
    real = moving.verify_store

    async def broken_destination(store: Any, *args: Any, **kw: Any) -> Verification:
        out = await real(store, *args, **kw)
        if "b.db" not in store.url:
            return out
        return Verification(False, out.rows, out.head, None, "lease ls_x: changed by hand")

    monkeypatch.setattr(moving, "verify_store", broken_destination)
    res = CliRunner().invoke(main, ["migrate", "--from", src, "--to", f"sqlite:///{tmp_path}/b.db"])
    assert res.exit_code == 1, res.output
    assert res.stdout.startswith("COPY DOES NOT VERIFY")
    assert "lease ls_x: changed by hand" in res.stderr, res.stderr


def test_a_typo_in_from_creates_nothing_and_copies_nothing(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        [
            "migrate",
            "--from",
            f"sqlite:///{tmp_path}/typo.db",
            "--to",
            f"sqlite:///{tmp_path}/b.db",
        ],
    )
    assert res.exit_code == 1 and "no store at" in res.stderr, res.output
    assert "copied" not in res.stdout
    assert list(tmp_path.iterdir()) == []


def test_upgrade_creates_no_store_where_there_is_none(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["migrate", "--upgrade", f"sqlite:///{tmp_path}/typo.db"])
    assert res.exit_code == 1 and "no store at" in res.stderr, res.output
    assert list(tmp_path.iterdir()) == []


async def test_upgrade_refuses_a_postgresql_schema_without_writ(pg_backend: Backend) -> None:
    with pytest.raises(Invalid, match="is not a writ store"):
        await upgrade(pg_backend.url)
    schema = pg_backend.url.rpartition("schema=")[2]
    found = await pg_backend.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", schema)
    assert found == []


async def test_sqlite_upgrade_says_what_it_applied(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    await _source(db)
    _by_hand(db, "DROP TABLE audit_head", "DELETE FROM writ_migrations WHERE version = 3")
    out = await upgrade(f"sqlite:///{db}")
    assert out["ok"] and out["applied"] == [HEAD_MIGRATION]
    assert (await upgrade(f"sqlite:///{db}"))["applied"] == []


def test_the_cli_names_the_migration_an_upgrade_applied(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "old.db"
    asyncio.run(_source(db))
    _by_hand(db, "DROP TABLE audit_head", "DELETE FROM writ_migrations WHERE version = 3")
    res = CliRunner().invoke(main, ["migrate", "--upgrade", f"sqlite:///{db}"])
    assert res.exit_code == 0, res.output
    assert f"({HEAD_MIGRATION})" in res.stdout and "nothing to do" not in res.stdout


@pytest.mark.parametrize(
    ("edit", "table", "says"),
    [
        (
            "UPDATE principals SET name = 'ag' || char(0) || 'b' WHERE name = 'oncall'",
            "principals",
            "NUL",
        ),
        ("UPDATE leases SET expires_at = 'later' WHERE fencing_token = 1", "leases", "double"),
    ],
    ids=["nul-byte", "bad-double"],
)
async def test_a_row_postgresql_cannot_store_is_bad_data_not_a_traceback(
    tmp_path: Path,
    pg_backend: Backend,
    caplog: pytest.LogCaptureFixture,
    edit: str,
    table: str,
    says: str,
) -> None:
    src = await _source(tmp_path / "src.db")
    _by_hand(tmp_path / "src.db", edit)
    with caplog.at_level(logging.INFO), pytest.raises(Invalid) as refused:
        await migrate(src, pg_backend.url)
    message = refused.value.message
    assert f"the {table} rows cannot be stored" in message and says in message, message
    assert "nothing was imported" in message and "retry" not in message
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    await _empty(pg_backend)
