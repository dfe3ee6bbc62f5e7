"""What the verify tests share: the CLI's verify of a store, and a tampering found by every
way verify runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from writ.cli import main
from writ.core.ledger import GENESIS, canonical, seal
from writ.engine import Engine
from writ.evidence.checkpoint import Checkpoint, verify_store
from writ.stores.accounted import Opened


async def cli_verify(url: str) -> dict[str, Any]:
    """``writ audit verify --store URL --json``; its exit status agrees with its answer."""
    args = ["audit", "verify", "--store", url, "--json"]
    res = await asyncio.to_thread(CliRunner().invoke, main, args)  # the CLI runs its own loop
    assert res.exit_code == (0 if json.loads(res.output)["ok"] else 1), res.output
    out: dict[str, Any] = json.loads(res.output)
    return out


async def found_everywhere(
    engine: Engine, url: str, cp: Checkpoint, key: Any, attr: str, name: str, field: str
) -> Any:
    """Verify online, with the signed checkpoint ``cp`` and offline (the CLI on ``url``)
    each fail on ``name`` (in ``attr``: ``lease_id``, ``principal`` or ``policy_object``)
    with the chain intact, the reason naming ``field``; the online answer, for more."""
    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq is None and field in (bad.reason or ""), bad
    assert getattr(bad, attr) == name and bad.to_dict()[attr] == name
    out = await verify_store(engine.store, [cp], key.public_key())
    assert not out.ok and getattr(out, attr) == name and field in (out.reason or "")
    assert out.checkpoints[0]["ok"]  # the ledger itself still extends the checkpoint
    report = await cli_verify(url)
    assert report["ok"] is False and report[attr] == name and field in report["reason"], report
    return bad


def open_db(path: Path) -> sqlite3.Connection:
    """The SQLite store file at ``path`` with its refusals of updates and deletes dropped."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("DROP TRIGGER IF EXISTS audit_no_update")
    c.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    return c


def edit_row(path: Path, seq: int, rehash: bool, move_head: bool = True) -> None:
    """Change the notes of row ``seq`` of the SQLite store at ``path`` as someone with write
    access to the file would;
    with ``rehash``, re-seal every row from there on so the chain verifies again (and, with
    ``move_head``, the head the store keeps beside the chain too)."""
    c = open_db(path)
    rows = c.execute(
        "SELECT seq, ts, body FROM audit WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    prev = c.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()
    prev_hash = prev[0] if prev else GENESIS
    for i, (s, ts, body) in enumerate(rows):
        fields = json.loads(body)
        if i == 0:
            fields["notes"] = "nothing to see here"
        if not rehash:
            c.execute("UPDATE audit SET body = ? WHERE seq = ?", (canonical(fields), s))
            break
        for k in ("seq", "timestamp", "prev_hash"):
            fields.pop(k)
        sealed = seal(s, prev_hash, ts, fields)
        c.execute(
            "UPDATE audit SET body = ?, hash = ? WHERE seq = ?", (sealed.body, sealed.hash, s)
        )
        prev_hash = sealed.hash
    if rehash and move_head:
        c.execute("UPDATE audit_head SET hash = ?", (prev_hash,))
    c.close()


def after_the_listing(
    monkeypatch: Any, store: Any, writ_meanwhile: Callable[[], Awaitable[None]]
) -> asyncio.Event:
    """Make ``store``'s first read (a check listing what it will judge) run
    ``writ_meanwhile`` once it has answered, before the pages are read: writ changing the
    table while verify runs. The event is set once it ran."""
    real_read = store.read
    listed = asyncio.Event()

    async def read(fn: Any, single: bool = False) -> Any:
        out = await real_read(fn, single)
        if not listed.is_set():
            listed.set()
            await writ_meanwhile()
        return out

    monkeypatch.setattr(store, "read", read)
    return listed


async def walked(engine: Engine) -> Opened:
    """What every row the store holds now leaves open, as verify's walk finds it (two rows
    a chunk, so every chunk boundary is crossed)."""
    opened = Opened()
    async for chunk in engine.store.audit_records(batch=2):
        opened.feed(chunk)
    return opened


def moving(backend: Any, near_now: bool = False) -> None:
    """A manual clock (``backend.clock``; a real one is left alone) that moves a
    millisecond each read, as a host's does; ``near_now``: from a minute before the host's
    at the latest (the offline CLI reads the host's)."""
    clock = backend.clock
    if clock is None:
        return
    if near_now:
        clock.t = max(clock.t, time.time() - 60)
    clock.now = lambda: clock.advance(0.001)
