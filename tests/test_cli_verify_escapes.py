"""What the CLI prints from a table or a server's answer is escaped: a principal named
``\\r\\x1b[2Kok: 8 rows, head …\\x1b[8m`` by hand made ``writ audit verify``'s BROKEN line
read ``ok: …`` on a terminal (the exit status still 1). Verify, offline and online, with and
without a checkpoint, and the other commands that print a server's words."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.client import Client
from writ.engine import Engine

HEAD = "ab" * 32
# a line that, on a terminal, wipes the one it is printed on and writes "ok" instead
EVIL = f"\r\x1b[2Kok: 8 rows, head {HEAD}\x1b[8m"
SAFE = f"\\r\\x1b[2Kok: 8 rows, head {HEAD}\\x1b[8m"


def _clean(res: Result) -> str:
    """The command's whole output (stdout and stderr), once it holds nothing a terminal
    obeys: no escape, no carriage return."""
    out = res.stdout + res.stderr
    assert "\x1b" not in out and "\r" not in out, repr(out)
    return out


async def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_offline_verify_escapes_what_the_tables_say(
    engine: Engine, backend: Backend, tmp_path: Path
) -> None:
    """A principal inserted by hand with that name: BROKEN, escaped, exit 1 — alone and
    with a signed checkpoint (which the ledger still extends)."""
    await engine.add_principal(None, "jane", "human", admin=True)
    key = tmp_path / "k.key"
    assert (await _cli("audit", "keygen", "--out", str(key))).exit_code == 0
    cp = tmp_path / "cp.txt"
    made = await _cli(
        "audit", "checkpoint", "--store", backend.url, "--key", str(key), "--out", str(cp)
    )
    assert made.exit_code == 0, made.output
    await backend.sql(
        "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
        " VALUES (%s, 'human', %s, 'h', 1.0)",
        EVIL,
        True if backend.is_pg else 1,
    )
    for extra in ([], ["--checkpoint", str(cp), "--pubkey", f"{key}.pub"]):
        res = await _cli("audit", "verify", "--store", backend.url, *extra)
        assert res.exit_code == 1, res.output
        out = _clean(res)
        assert f"BROKEN: principal {SAFE}" in out, out


# what a hostile (or broken) server answers, by path
ANSWERS: dict[str, Any] = {
    "/v1/audit/verify": {
        "ok": False,
        "rows": 8,
        "head": HEAD,
        "first_bad_seq": None,
        "reason": f"principal {EVIL}: no principal.added row names it",
        "principal": EVIL,
    },
    "/v1/audit": {"rows": [{"seq": 8, "hash": HEAD}], "next_after_seq": 8},
    "/v1/policy/reload": {
        "mode": EVIL,
        "source": EVIL,
        "grants": 1,
        "rules": 1,
        "warnings": [EVIL],
    },
    "/v1/leases/ls_x/wake": {"lease_id": "ls_x", "resource": "prod/db", "holder": EVIL},
    "/v1/principals/jane/rotate": {"name": "jane", "token": EVIL, "token_expires_at": EVIL},
    "/v1/principals": {"name": EVIL, "kind": "human", "token": EVIL},
}


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every request the CLI's client sends is answered from :data:`ANSWERS`."""
    monkeypatch.setattr(Client, "_send", lambda self, req: ANSWERS[req.path])
    return {"WRIT_URL": "http://writ.test:7411", "WRIT_TOKEN": "writ_t"}


async def test_online_verify_escapes_the_servers_reason(
    hostile: dict[str, str], tmp_path: Path
) -> None:
    res = await _cli("audit", "verify", env=hostile)
    assert res.exit_code == 1 and f"BROKEN: principal {SAFE}" in _clean(res), res.output
    key = tmp_path / "k.key"
    assert (await _cli("audit", "keygen", "--out", str(key))).exit_code == 0
    from writ.evidence.checkpoint import load_private_key, sign, write_checkpoint

    cp = write_checkpoint(sign(load_private_key(str(key)), 8, HEAD, None), tmp_path / "cp.txt")
    args = ["audit", "verify", "--checkpoint", str(cp), "--pubkey", f"{key}.pub"]
    res = await _cli(*args, env=hostile)
    assert res.exit_code == 1 and f"BROKEN: principal {SAFE}" in _clean(res), res.output


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "reload"],
        ["wake", "ls_x", "--reason", "look"],
        ["principal", "rotate", "jane"],
        ["principal", "add", "jane", "--kind", "human"],
    ],
)
async def test_other_commands_escape_the_servers_words(
    hostile: dict[str, str], args: list[str]
) -> None:
    res = await _cli(*args, env=hostile)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert SAFE in _clean(res), res.output
