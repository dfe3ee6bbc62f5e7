"""An output file never lands on a database: ``--out`` naming the store (directly, through a
symlink, or its -wal/-shm/-journal) or any existing SQLite database is refused with one line
``writ: invalid: ...``, exit 2, and nothing written; ``audit export`` writes through a
temporary file renamed into place, so a failed export leaves ``--out`` as it was."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- special files
# Anything that exists and is not a regular file is written as it is, never replaced, and
# never opened to see whether it is a database: a FIFO's open for reading waited for ever.


def writ_process(
    args: Sequence[str], pass_fds: Sequence[int] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    return subprocess.run(
        [sys.executable, "-m", "writ.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        pass_fds=tuple(pass_fds),
        env=env,
    )


@contextlib.contextmanager
def reading(fifo: Path) -> Iterator[list[bytes]]:
    """What is written to ``fifo`` while the block runs, read by a thread; a FIFO nobody
    opened for writing is then opened and closed, so the reader always ends."""
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield got
    finally:
        if reader.is_alive() and not got:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)


def test_export_to_a_fifo_writes_it_and_never_waits(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    _db, url = store
    plain = tmp_path / "plain.jsonl"
    assert cli(["audit", "export", "--store", url, "--out", str(plain)]).exit_code == 0
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.jsonl"
    link.symlink_to(fifo)
    for out in (fifo, link):
        with reading(fifo) as got:
            done = writ_process(["audit", "export", "--store", url, "--out", str(out)])
        assert done.returncode == 0, done.stderr
        assert got == [plain.read_bytes()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()


def test_export_to_dev_fd_of_a_pipe_writes_the_pipe(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    """``--out >(gzip > a.gz)``: the realpath of /dev/fd/N names no file."""
    _db, url = store
    plain = tmp_path / "plain.jsonl"
    assert cli(["audit", "export", "--store", url, "--out", str(plain)]).exit_code == 0
    r, w = os.pipe()
    try:
        done = writ_process(["audit", "export", "--store", url, "--out", f"/dev/fd/{w}"], [w])
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            got = f.read()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert done.returncode == 0, done.stderr
    assert got == plain.read_bytes()


def test_checkpoint_to_a_symlink_to_a_fifo_keeps_both(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    _db, url = store
    key = tmp_path / "k.key"
    assert cli(["audit", "keygen", "--out", str(key)]).exit_code == 0
    fifo = tmp_path / "cp.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "cp.txt"
    link.symlink_to(fifo)
    with reading(fifo) as got:
        done = writ_process(
            ["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(link)]
        )
    assert done.returncode == 0, done.stderr
    assert got and got[0].startswith(b"writ-checkpoint:")
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_checkpoint_to_a_path_it_cannot_write_is_one_line(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    _db, url = store
    key = tmp_path / "k.key"
    assert cli(["audit", "keygen", "--out", str(key)]).exit_code == 0
    (tmp_path / "a-file").write_text("kept\n")
    out = tmp_path / "a-file" / "cp.txt"  # its folder is a file: never made, never written
    res = cli(["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(out)])
    assert res.exit_code == 2, (res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"writ: invalid: --out {out}: cannot write"), line
    assert (tmp_path / "a-file").read_text() == "kept\n"


# --------------------------------------------------------------------------- keygen
def test_keygen_never_replaces_a_key_or_its_public_key(tmp_path: Path) -> None:
    key = tmp_path / "k1"
    assert cli(["audit", "keygen", "--out", str(key)]).exit_code == 0
    pub = tmp_path / "k1.pub"
    before = (key.read_bytes(), pub.read_bytes())
    res = cli(["audit", "keygen", "--out", str(key)])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.output
    assert "k1 exists: refusing to overwrite a signing key" in res.stderr
    key.unlink()  # the private key gone, the public key verifiers trust still there
    res = cli(["audit", "keygen", "--out", str(key)])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.output
    assert "k1.pub exists: refusing to overwrite the public key verifiers trust" in res.stderr
    assert pub.read_bytes() == before[1] and not key.exists()


def test_keygen_at_a_dangling_symlink_is_refused_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.symlink_to(tmp_path / "nowhere")
    res = cli(["audit", "keygen", "--out", str(key)])
    assert res.exit_code == 1, (res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: ") and "is a symlink: refusing" in line, line
    assert not (tmp_path / "nowhere").exists()


def test_keygen_where_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("kept\n")
    res = cli(["audit", "keygen", "--out", str(tmp_path / "a-file" / "k")])
    assert res.exit_code == 1, (res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: cannot write"), line


def test_keygen_leaves_no_private_key_without_its_public_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import writ.evidence.keys as keys

    real = os.open

    def no_pub(path: Any, *args: Any, **kw: Any) -> int:
        if str(path).endswith(".pub"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kw)

    monkeypatch.setattr(keys.os, "open", no_pub)
    res = cli(["audit", "keygen", "--out", str(tmp_path / "k")])
    assert res.exit_code == 1 and "cannot write" in res.stderr, res.output
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_never_writes_through_a_symlink_to_a_file(
    store: tuple[Path, str], tmp_path: Path
) -> None:
    """A symlink planted at --out (in a shared folder) is replaced, its target left alone."""
    _db, url = store
    key = tmp_path / "k.key"
    assert cli(["audit", "keygen", "--out", str(key)]).exit_code == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "cp.txt"
    link.symlink_to(victim)
    res = cli(["audit", "checkpoint", "--key", str(key), "--store", url, "--out", str(link)])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text().startswith("writ-checkpoint:")
