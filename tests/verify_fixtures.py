"""What the verify tests share: the CLI's verify of a store, and a tampering found by every
way verify runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner

from writ.cli import main
from writ.engine import Engine
from writ.evidence.checkpoint import Checkpoint, verify_store


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
    each fail on ``name`` (in ``attr``: ``lease_id`` or ``principal``) with the chain intact,
    the reason naming ``field``; the online answer, for more."""
    bad = await engine.verify()
    assert not bad.ok and bad.first_bad_seq is None and field in (bad.reason or ""), bad
    assert getattr(bad, attr) == name and bad.to_dict()[attr] == name
    out = await verify_store(engine.store, [cp], key.public_key())
    assert not out.ok and getattr(out, attr) == name and field in (out.reason or "")
    assert out.checkpoints[0]["ok"]  # the ledger itself still extends the checkpoint
    report = await cli_verify(url)
    assert report["ok"] is False and report[attr] == name and field in report["reason"]
    return bad
