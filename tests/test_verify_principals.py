"""Verify covers the principals: writ serves them from the principals table, outside the
hash chain, so each principal is checked against the hashed ``principal.*`` rows of its
life — online, with a signed checkpoint, and offline (``--store``), on every store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from tests.verify_fixtures import after_the_listing, cli_verify, found_everywhere
from writ.cli import main
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make, write_checkpoint
from writ.stores import enrolled

DAY = 86400.0

# what an intruder with database rights does to the principals table: the principal and
# the field verify names
EDITS: dict[str, tuple[str, str, str]] = {
    "an admin of the intruder's own": (
        "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
        " VALUES ('mallory', 'human', true, 'a-hash', 1.0)",
        "mallory",
        "no principal.added row",
    ),
    "an agent made a human": (
        "UPDATE principals SET kind = 'human' WHERE name = 'perf-agent'",
        "perf-agent",
        "the kind column",
    ),
    "an agent made a queue": (
        "UPDATE principals SET kind = 'queue' WHERE name = 'old-agent'",
        "old-agent",
        "the kind column",
    ),
    "a human made an admin": (
        "UPDATE principals SET admin = true WHERE name = 'jane'",
        "jane",
        "the admin column",
    ),
    "another vendor": (
        "UPDATE principals SET vendor = 'vendor-b' WHERE name = 'perf-agent'",
        "perf-agent",
        "the vendor column",
    ),
    "another wake route": (
        "UPDATE principals SET wake = 'https://evil.example/wake' WHERE name = 'perf-agent'",
        "perf-agent",
        "the wake column",
    ),
    "a disabled principal enabled": (
        "UPDATE principals SET disabled_at = NULL, disabled_reason = NULL WHERE name = 'old-agent'",
        "old-agent",
        "the disabled column",
    ),
    "an enabled principal disabled": (
        "UPDATE principals SET disabled_at = 1.0, disabled_reason = 'x' WHERE name = 'jane'",
        "jane",
        "the disabled column",
    ),
    "another queue": (
        "UPDATE principals SET queues = '[\"db-oncall\", \"prod-oncall\"]' WHERE name = 'jane'",
        "jane",
        "the queues column",
    ),
    "a token's expiry lifted": (
        "UPDATE principals SET token_expires_at = NULL WHERE name = 'jane'",
        "jane",
        "the token_expires_at column",
    ),
    "a rotated token's expiry moved": (
        "UPDATE principals SET token_expires_at = token_expires_at + 3650 * 86400"
        " WHERE name = 'perf-agent'",
        "perf-agent",
        "the token_expires_at column",
    ),
}


async def _principals(engine: Engine) -> None:
    """perf-agent (vendor-a, a wake route, its token rotated to expire), old-agent
    (disabled), jane (a human in db-oncall, her token expiring), two queues, one an admin;
    the bootstrap admin."""
    await engine.bootstrap_admin("writ_the-bootstrap-admin-token")
    await engine.add_principal(
        None, "perf-agent", "agent", "vendor-a", wake="https://perf.example/wake"
    )
    await engine.add_principal(None, "old-agent", "agent")
    await engine.add_principal(None, "db-oncall", "queue", admin=True)
    await engine.add_principal(None, "prod-oncall", "queue")
    await engine.add_principal(None, "jane", "human", queues=["db-oncall"], expires_in_s=DAY)
    await engine.principals.rotate(None, "perf-agent", expires_in_s=DAY)
    await engine.principals.disable(None, "old-agent", "retired")


async def test_principals_as_writ_wrote_them_verify(engine: Engine, backend: Backend) -> None:
    """Added, rotated, disabled, enabled and requeued principals verify, online and
    offline."""
    await _principals(engine)
    assert (await engine.verify()).ok
    await engine.principals.enable(None, "old-agent")
    await engine.principals.set_queues(None, "jane", add=["prod-oncall"], remove=["db-oncall"])
    await engine.principals.rotate(None, "jane")
    await engine.principals.disable(None, "perf-agent", "on leave; back monday")
    assert (await engine.verify()).ok
    assert (await cli_verify(backend.url))["ok"]


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_hand_edited_principal_fails_verify(
    engine: Engine, backend: Backend, edit: str
) -> None:
    """A principal changed (or made) by hand in the principals table fails verify — online,
    with a signed checkpoint, and offline — naming the principal and the field, while
    every audit row is intact."""
    await _principals(engine)
    key = generate_key()
    cp = await make(engine.store, key)
    sql, name, field = EDITS[edit]
    await backend.sql(sql)

    bad = await found_everywhere(engine, backend.url, cp, key, "principal", name, field)
    assert f"principal {name}" in (bad.reason or "") and "lease_id" not in bad.to_dict()


async def test_rows_of_older_writ_versions_vouch_for_what_they_carry(
    engine: Engine, backend: Backend
) -> None:
    """A principal.added row without notes (existence only), one as the first writ wrote
    them (its wake route whole, no queues, no expiry) and one worded otherwise (its kind
    alone read) verify; a kind the old row names is still compared."""
    await _principals(engine)

    async def rows(tx: Any) -> None:
        await tx.append(
            {"event": "principal.added", "agent_id": "operator", "resource": "principals/bare"}
        )
        await tx.append(
            {
                "event": "principal.added",
                "agent_id": "operator",
                "resource": "principals/pager",
                "notes": "operator added queue 'pager' (vendor v1) as admin; "
                "wake pagerduty:R0UT1NGKEY0123456789ABCDEFGHIJKL",
            }
        )
        await tx.append(
            {
                "event": "principal.added",
                "agent_id": "operator",
                "resource": "principals/odd",
                "notes": "operator added agent 'odd', imported from the old registry",
            }
        )

    await engine.store.transact(rows)
    await backend.sql(
        "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
        " VALUES ('bare', 'agent', false, 'h-bare', 1.0)"
    )
    await backend.sql(
        "INSERT INTO principals (name, kind, vendor, wake, admin, token_hash, created_at)"
        " VALUES ('pager', 'queue', 'v1', 'pagerduty:R0UT1NGKEY0123456789ABCDEFGHIJKL',"
        " true, 'h-pager', 1.0)"
    )
    await backend.sql(
        "INSERT INTO principals (name, kind, admin, token_hash, created_at)"
        " VALUES ('odd', 'agent', false, 'h-odd', 1.0)"
    )
    assert (await engine.verify()).ok, await engine.verify()
    assert (await cli_verify(backend.url))["ok"]
    await backend.sql("UPDATE principals SET kind = 'human' WHERE name = 'pager'")
    bad = await engine.verify()
    assert bad.principal == "pager" and "the kind column" in (bad.reason or "")


async def test_principals_changed_by_writ_while_verify_runs_are_not_tampered(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between verify listing the principals and checking them, one is disabled, one
    enabled, one rotated and one added: each is judged as it stands when checked."""
    await _principals(engine)
    monkeypatch.setattr(enrolled, "PAGE", 1)
    store = engine.store

    async def meanwhile() -> None:
        await engine.principals.disable(None, "perf-agent", "compromised")
        await engine.principals.enable(None, "old-agent", expires_in_s=DAY)
        await engine.principals.rotate(None, "jane", expires_in_s=2 * DAY)
        await engine.add_principal(None, "new-agent", "agent")

    listed = after_the_listing(monkeypatch, store, meanwhile)
    found = await enrolled.principals_disagree(store)
    assert listed.is_set() and found is None


async def test_the_cli_names_the_principal_not_a_seq(
    engine: Engine, backend: Backend, tmp_path: Any
) -> None:
    """``writ audit verify`` prints a principal the ledger does not account for as itself
    (no "at seq None"), with and without a checkpoint, and exits 1."""
    await _principals(engine)
    signed = await make(engine.store, generate_key())
    write_checkpoint(signed, tmp_path / "cp.txt")
    await backend.sql("UPDATE principals SET kind = 'human' WHERE name = 'perf-agent'")
    want = "BROKEN: principal perf-agent: the kind column ('human')"
    for more in ([], ["--checkpoint", str(tmp_path / "cp.txt")]):
        args = ["audit", "verify", "--store", backend.url, *more]
        res = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert res.exit_code == 1 and want in res.output and "seq None" not in res.output, more


async def test_the_answer_over_http_names_the_principal(engine: Engine, backend: Backend) -> None:
    """``GET /v1/audit/verify`` (the Python client's ``verify()``) answers a principal the
    ledger does not account for in ``principal``, with no bad seq."""
    import httpx

    from writ.api.app import create_app
    from writ.client import AsyncClient

    await _principals(engine)
    await backend.sql("UPDATE principals SET admin = true WHERE name = 'jane'")
    transport = httpx.ASGITransport(app=create_app(engine, start_engine=False))
    token = "writ_the-bootstrap-admin-token"
    async with AsyncClient("http://writ.test", token, transport=transport) as admin:
        out = await admin.verify()
    assert out["ok"] is False and out["first_bad_seq"] is None and out["principal"] == "jane"
    assert "the admin column (True)" in out["reason"] and "lease_id" not in out


async def test_principal_lives_reads_each_principal_with_its_rows(engine: Engine) -> None:
    """``Tx.principal_lives`` (one statement on PostgreSQL) answers what the table read and
    ``audit_latest`` answer principal by principal: the principals asked for, by name."""
    from writ.stores.base import PRINCIPAL_LIFE

    await _principals(engine)
    await engine.principals.enable(None, "old-agent")
    await engine.principals.set_queues(None, "jane", add=["prod-oncall"])
    names = ["perf-agent", "jane", "nobody", "old-agent", "admin"]

    async def both(tx: Any) -> tuple[Any, Any]:
        one = [
            (p, [await tx.audit_latest([f"principals/{p.name}"], g, 1e18) for g in PRINCIPAL_LIFE])
            for p in sorted(await tx.list_principals(), key=lambda p: p.name)
            if p.name in names
        ]
        return await tx.principal_lives(names), one

    lives, one = await engine.store.read(both)
    assert lives == one and [p.name for p, _ in lives] == sorted(set(names) - {"nobody"})
    jane = dict((p.name, rows) for p, rows in lives)["jane"]
    assert [r and r["event"] for r in jane] == [
        "principal.added",
        None,
        "principal.queues",
        "principal.added",
    ]
