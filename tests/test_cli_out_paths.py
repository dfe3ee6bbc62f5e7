"""An output file never lands on a database: ``--out`` naming the store (directly, through a
symlink, or its -wal/-shm/-journal) or any existing SQLite database is refused with one line
``writ: invalid: ...``, exit 2, and nothing written; ``audit export`` writes through a
temporary file renamed into place, so a failed export leaves ``--out`` as it was."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from writ.cli import main

ENV = {"WRIT_ADMIN_TOKEN": None, "WRIT_STORE": None, "WRIT_CHECKPOINT_KEY": None}


def cli(args: Sequence[str]) -> Result:
    return CliRunner().invoke(main, list(args), env=ENV)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "w.db"
    url = f"sqlite:///{db}"
    for name in ("a", "b"):
        res = cli(["principal", "add", name, "--kind", "agent", "--store", url, "-q"])
        assert res.exit_code == 0, res.output
    return db, url


def refused(res: Result, says: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("writ: invalid: --out "), res.stderr
    assert says in lines[0], lines[0]


def intact(db: Path, url: str) -> None:
    res = cli(["audit", "verify", "--store", url])
    assert res.exit_code == 0 and res.stdout.startswith("ok: 2 rows"), res.output
    assert not [p.name for p in db.parent.rglob("*.tmp")]


def test_export_refuses_the_store_itself(store: tuple[Path, str]) -> None:
    db, url = store
    refused(cli(["audit", "export", "--store", url, "--out", str(db)]), "is the store")
    intact(db, url)


def test_export_refuses_a_symlink_to_the_store(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    (tmp_path / "shared").mkdir()
    link = tmp_path / "shared" / "audit.jsonl"
    link.symlink_to(db)
    refused(cli(["audit", "export", "--store", url, "--out", str(link)]), "is the store")
    assert link.is_symlink()
    intact(db, url)


@pytest.mark.parametrize("end", ["-wal", "-shm", "-journal"])
def test_export_refuses_the_stores_sidecars(store: tuple[Path, str], end: str) -> None:
    db, url = store
    out = f"{db}{end}"
    refused(cli(["audit", "export", "--store", url, "--out", out]), f"the store's {end} file")
    assert not os.path.exists(out)
    intact(db, url)


def test_export_refuses_any_sqlite_database(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = other.read_bytes()
    refused(cli(["audit", "export", "--store", url, "--out", str(other)]), "a SQLite database")
    res = cli(["audit", "export", "--store", url, "--out", f"{other}-journal"])
    refused(res, "the -journal file of the SQLite database")
    assert other.read_bytes() == before and not os.path.exists(f"{other}-journal")
    intact(db, url)


def test_export_writes_whole_files_only(
    store: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _db, url = store
    out = tmp_path / "audit.jsonl"
    res = cli(["audit", "export", "--store", url, "--out", str(out)])
    assert res.exit_code == 0 and "exported 2 rows" in res.stderr, res.output
    assert len(out.read_text().splitlines()) == 2
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open(out, "w") made it
    out.write_text("kept\n")

    import writ.core.ledger

    def broken(*args: object) -> object:
        raise RuntimeError("the store failed half-way")

    monkeypatch.setattr(writ.core.ledger, "row_from", broken)
    res = cli(["audit", "export", "--store", url, "--out", str(out)])
    assert res.exit_code != 0
    assert out.read_text() == "kept\n"  # not truncated, not half written
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".audit.jsonl.*"))


def test_export_to_an_unopenable_store_leaves_out_alone(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("not a database\n")
    out = tmp_path / "audit.jsonl"
    out.write_text("kept\n")
    res = cli(["audit", "export", "--store", f"sqlite:///{bad}", "--out", str(out)])
    assert res.exit_code != 0
    assert out.read_text() == "kept\n" and not list(tmp_path.glob(".audit.jsonl.*"))


def test_checkpoint_refuses_the_store(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    key = tmp_path / "keys" / "k.key"
    assert cli(["audit", "keygen", "--out", str(key)]).exit_code == 0
    for out in (str(db), f"{db}-wal"):
        res = cli(["audit", "checkpoint", "--key", str(key), "--store", url, "--out", out])
        refused(res, "is the store")
    link = tmp_path / "cp.txt"
    link.symlink_to(db)
    res = cli(["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(link)])
    refused(res, "is the store")
    intact(db, url)
    good = tmp_path / "cp" / "1.checkpoint"
    res = cli(["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(good)])
    assert res.exit_code == 0 and good.read_text().strip(), res.output


def test_postmortem_refuses_the_store(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    window = ["--since", "2000-01-01T00:00:00Z", "--until", "2999-01-01T00:00:00Z"]
    res = cli(["postmortem", *window, "--store", url, "--out", str(db)])
    refused(res, "is the store")
    link = tmp_path / "report.md"
    link.symlink_to(db)
    refused(cli(["postmortem", *window, "--store", url, "--out", str(link)]), "is the store")
    intact(db, url)
    good = tmp_path / "pm.md"
    res = cli(["postmortem", *window, "--store", url, "--out", str(good)])
    assert res.exit_code == 0 and good.read_text().startswith("#"), res.output


def test_keygen_refuses_a_database(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    refused(cli(["audit", "keygen", "--out", str(db)]), "a SQLite database")
    (tmp_path / "k.pub").symlink_to(db)  # the public key would be written through it
    refused(cli(["audit", "keygen", "--out", str(tmp_path / "k")]), "a SQLite database")
    assert not (tmp_path / "k").exists()
    intact(db, url)


def test_demo_refuses_a_database_in_its_folder(store: tuple[Path, str], tmp_path: Path) -> None:
    db, url = store
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "postmortem.html").symlink_to(db)
    refused(cli(["demo", "--out", str(folder)]), "a SQLite database")
    intact(db, url)


def test_export_to_a_device_writes_it_and_never_replaces_it(store: tuple[Path, str]) -> None:
    _db, url = store
    before = os.stat("/dev/null")
    res = cli(["audit", "export", "--store", url, "--out", "/dev/null"])
    assert res.exit_code == 0 and "exported 2 rows" in res.stderr, res.output
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev, after.st_ino) == (
        before.st_mode,
        before.st_rdev,
        before.st_ino,
    )
