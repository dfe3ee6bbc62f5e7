"""Verify covers the lock delays: after a lease expires or is revoked, writ holds its resource
back with a ``delay`` object in the objects table, outside the hash chain; the row that ended
the lease says until when (``; lock delay until T``), so each delay is checked against it
(``writ.stores.lock_delays``), and one the rows say still stands must still be in the table
(``writ.stores.open_objects``) — online, with a signed checkpoint, and offline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.verify_fixtures import cli_verify, found_everywhere, moving, walked
from writ.core.clock import rfc3339
from writ.core.ledger import GENESIS, Record, seal
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make
from writ.stores import open_objects
from writ.stores.accounted import tables_disagree
from writ.stores.lock_delays import delays_disagree

POLICY = """
[[rules]]
prefix = "prod"
lock_delay_s = 300

[[rules]]
prefix = "prod/cache"
lock_delay_s = 5
"""
SAID = "; lock delay until "


async def _later(backend: Backend, engine: Engine, seconds: float) -> None:
    """Let ``seconds`` pass on the store's clock (a real wait on PostgreSQL), then sweep."""
    if backend.clock is not None:
        backend.clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)
    await engine.sweep()


async def _revoke(engine: Engine, jane: Any, lease: dict[str, Any], waive: bool = False) -> None:
    await engine.revoke(jane, lease["lease_id"], "rb-7", "db-oncall", "stuck", waive)


async def _delays(engine: Engine, backend: Backend, expire: bool = True) -> dict[str, Any]:
    """Lock delays as writ writes them: a lease revoked on prod/api (300 s), one revoked
    with its delay waived on prod/web (none), one of a principal disabled on prod/queue
    (300 s), and, with ``expire``, one expired on prod/db (300 s) and one on prod/cache whose
    5 s delay writ has ended (``done``). By name: each lease, and the agents. A manual clock
    starts a minute before the host's (the offline CLI reads that) and moves a millisecond
    each read."""
    moving(backend, near_now=True)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    gone, _ = await engine.add_principal(None, "gone-agent", "agent")
    jane, _ = await engine.add_principal(None, "jane", "human")
    out: dict[str, Any] = {"perf": perf, "jane": jane}
    if expire:
        out["cache"] = await engine.acquire(perf, resource="prod/cache", intent="warm", ttl_s=1)
        out["expired"] = await engine.acquire(perf, resource="prod/db", intent="scale", ttl_s=1)
        await _later(backend, engine, 1.5)
        await _later(backend, engine, 5)  # prod/cache's delay ends: done
    out["revoked"] = await engine.acquire(perf, resource="prod/api", intent="deploy")
    await _revoke(engine, jane, out["revoked"])
    out["waived"] = await engine.acquire(perf, resource="prod/web", intent="deploy")
    await _revoke(engine, jane, out["waived"], waive=True)
    out["disabled"] = await engine.acquire(gone, resource="prod/queue", intent="drain")
    await engine.principals.disable(None, "gone-agent", "compromised")
    return out


async def _objects(backend: Backend) -> dict[str, dict[str, Any]]:
    """The delay objects, by id (the lease's)."""
    rows = await backend.sql(
        "SELECT id, resource, state, data, created_at, expires_at FROM objects WHERE kind = 'delay'"
    )
    return {
        r[0]: {"resource": r[1], "state": r[2], "data": json.loads(r[3]), "expires_at": r[5]}
        for r in rows
    }


async def _ending(backend: Backend, resource: str) -> tuple[int, str]:
    """The seq and notes of the row that ended the lease on ``resource``."""
    ((seq, body),) = await backend.sql(
        "SELECT seq, body FROM audit WHERE resource = %s"
        " AND event IN ('lease.expired', 'lease.revoked')",
        resource,
    )
    return seq, json.loads(body)["notes"]


async def test_lock_delays_as_writ_wrote_them_verify(make_engine: Any, backend: Backend) -> None:
    """Each row that ends a lease with a lock delay says until when, as its delay object
    does; a waived one says nothing of a delay and writes none. The store verifies, online
    and offline, with one delay active and one ended by writ."""
    if backend.is_pg:
        pytest.skip("SQLite's clock moves past a delay; on PostgreSQL, the edits below")
    engine = await make_engine(POLICY)
    out = await _delays(engine, backend)
    delays = await _objects(backend)
    assert set(delays) == {out[k]["lease_id"] for k in ("cache", "expired", "revoked", "disabled")}
    assert delays[out["cache"]["lease_id"]]["state"] == "done"
    for name in ("cache", "expired", "revoked", "disabled"):
        d = delays[out[name]["lease_id"]]
        _, notes = await _ending(backend, d["resource"])
        assert notes.endswith(SAID + d["data"]["until"]), (name, notes)
    _, notes = await _ending(backend, "prod/web")
    assert notes.endswith(" (lock-delay waived)") and SAID not in notes
    _, notes = await _ending(backend, "prod/db")
    assert notes.startswith("expired: not renewed within its ttl of 1s"), notes
    assert (await engine.verify()).ok, await engine.verify()
    assert (await cli_verify(backend.url))["ok"]


def _set(sets: str) -> str:
    return f"UPDATE objects SET {sets} WHERE kind = 'delay' AND id = '{{revoked}}'"


# what an intruder with database rights does to a delay (the lease revoked on prod/api): the
# SQL (formatted with the leases' ids), the delay named, and what the reason names
EDITS: dict[str, tuple[str, str, str]] = {
    "a delay cut short": (
        _set("expires_at = created_at + 1"),
        "delay {revoked}",
        "the expires_at column",
    ),
    "a delay lengthened": (
        _set("expires_at = expires_at + 600"),
        "delay {revoked}",
        "the expires_at column",
    ),
    "a delay's until cut short": (
        _set("data = replace(data, substr(data, instr(data, '\"until\"')), '\"until\": null}}')"),
        "delay {revoked}",
        "the until",
    ),
    "a delay ended by hand": (_set("state = 'done'"), "delay {revoked}", "it is marked done"),
    "a delay of another holder": (
        _set("data = replace(data, 'perf-agent', 'jane')"),
        "delay {revoked}",
        "the holder",
    ),
    "a delay moved": (
        _set("resource = 'prod/elsewhere'"),
        "delay {revoked}",
        "no lease.expired or lease.revoked row",
    ),
    "a delay of the intruder's own": (
        "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
        " SELECT kind, 'ls_forged', resource, state, data, created_at + 7, expires_at"
        " FROM objects WHERE kind = 'delay' AND id = '{revoked}'",
        "delay ls_forged",
        "no lease.expired or lease.revoked row",
    ),
    "a delay where the revoke waived it": (
        "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
        " SELECT 'delay', 'ls_forged', resource, 'active', '{{}}', ts, ts + 300"
        " FROM audit WHERE event = 'lease.revoked' AND resource = 'prod/web'",
        "delay ls_forged",
        "waived it",
    ),
}
ON_POSTGRES = {"a delay cut short", "a delay moved"}


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_hand_edited_delay_fails_verify(
    make_engine: Any, backend: Backend, edit: str
) -> None:
    """A lock delay changed (or made) by hand in the objects table fails verify — online,
    with a signed checkpoint, and offline — naming the delay and what disagrees, while every
    audit row is intact. Shortened, ended or moved, it freed its resource early."""
    if backend.is_pg and edit not in ON_POSTGRES:
        pytest.skip("run on SQLite; on PostgreSQL two (ON_POSTGRES)")
    engine = await make_engine(POLICY)
    out = await _delays(engine, backend, expire=not backend.is_pg)
    ids = {k: v["lease_id"] for k, v in out.items() if isinstance(v, dict) and "lease_id" in v}
    assert (await engine.verify()).ok
    key = generate_key()
    cp = await make(engine.store, key)
    sql, name, field = EDITS[edit]
    await backend.sql(sql.format(**ids))
    await found_everywhere(engine, backend.url, cp, key, "policy_object", name.format(**ids), field)


async def test_a_standing_delay_deleted_fails_verify(make_engine: Any, backend: Backend) -> None:
    """A lock delay deleted from the objects table by hand while its row says it stands
    (prod/api's, 300 s) fails verify — online, with a signed checkpoint made before, and
    offline — named by the row that ended the lease (no object is left to name it)."""
    engine = await make_engine(POLICY)
    out = await _delays(engine, backend, expire=not backend.is_pg)
    assert (await engine.verify()).ok
    key = generate_key()
    cp = await make(engine.store, key)
    await backend.sql(f"DELETE FROM objects WHERE id = '{out['revoked']['lease_id']}'")
    seq, notes = await _ending(backend, "prod/api")
    bad = await found_everywhere(
        engine, backend.url, cp, key, "policy_object", f"delay at row {seq}", "no delay"
    )
    until = notes.rpartition(SAID)[2]
    assert "lock delay on prod/api after perf-agent's lease" in (bad.reason or "")
    assert f"until {until} (row {seq}, lease.revoked" in (bad.reason or ""), bad.reason
    assert "frees prod/api for the next grant" in (bad.reason or "")


async def test_a_reason_that_reads_as_a_delay_is_none(make_engine: Any, backend: Backend) -> None:
    """A revoke on a resource the policy gives no lock delay, whose reason (a human's words)
    ends as a delay's row would: writ writes no delay, and says so after those words
    (``; no lock delay``), so the walk does not take the row for a standing delay and verify
    says ok (where it called the delay deleted by hand until 2099)."""
    if backend.clock is None:
        pytest.skip("the engine words it alike on every store")
    engine = await make_engine(POLICY)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    jane, _ = await engine.add_principal(None, "jane", "human")
    lease = await engine.acquire(perf, resource="staging/db", intent="scale")
    reason = f"stuck{SAID}2099-01-01T00:00:00.000000Z"
    await engine.revoke(jane, lease["lease_id"], "rb-7", "db-oncall", reason)
    _, notes = await _ending(backend, "staging/db")
    assert notes.endswith(f"{reason}; no lock delay") and await _objects(backend) == {}
    assert (await engine.verify()).ok, await engine.verify()


async def test_delays_ended_after_the_walk_are_not_tampered(
    make_engine: Any, backend: Backend
) -> None:
    """The walk keeps the delays the rows say stand (not the one waived; one already past
    until it drops what passed); one ended by writ after the walk (its time passed, the sweep marks it done) is
    not called tampered, nor is one deleted once its time ran out (it holds nothing back);
    one deleted before is found."""
    if backend.clock is None:
        pytest.skip("a manual clock moves time (on PostgreSQL: a delay deleted, above)")
    engine = await make_engine(POLICY)
    out = await _delays(engine, backend)
    opened = await walked(engine)
    kept = opened.objects.objects
    delays = await _objects(backend)
    standing = {out[k]["lease_id"] for k in ("cache", "expired", "revoked", "disabled")}
    assert sorted((o.resource, o.until) for o in kept.values() if o.kind == "delay") == sorted(
        (delays[i]["resource"], delays[i]["data"]["until"]) for i in standing
    )
    await backend.sql(f"DELETE FROM objects WHERE id = '{out['disabled']['lease_id']}'")
    found = await open_objects.objects_gone(engine.store, opened.objects)
    assert found is not None and "lock delay on prod/queue" in found[1], found
    await backend.advance(301)
    await engine.sweep()  # every delay ends: done
    assert {d["state"] for d in (await _objects(backend)).values()} == {"done"}
    assert await tables_disagree(engine.store, opened) is None
    assert await delays_disagree(engine.store) is None


def _ending_row(seq: int, at: float, event: str, notes: Any) -> Record:
    fields = {"event": event, "resource": f"prod/r{seq}", "lock_holder": "a", "notes": notes}
    s = seal(seq, GENESIS, at, fields)
    return (s.seq, s.body, s.hash, s.timestamp, s.event, s.resource, s.lock_key)


def test_the_walk_reads_a_delay_from_the_notes_end() -> None:
    """The walk keeps an ending row only when its notes end with a lock delay (read from the
    body's text, or, worded otherwise, from the parsed notes), and drops those past as the
    rows go by; a release, a waived revoke and an older writ's row say nothing of a delay."""
    t0 = 1_800_000_000.0
    until = "2027-01-15T08:00:00.000000Z"
    rows = [
        _ending_row(1, t0, "lease.expired", f"expired: not renewed{SAID}{until}"),
        _ending_row(2, t0, "lease.revoked", f'revoked a\'s lease: "x"{SAID}{until}'),
        _ending_row(3, t0, "lease.revoked", "revoked a's lease: x (lock-delay waived)"),
        _ending_row(4, t0, "lease.expired", "expired: not renewed within its ttl of 1s"),
        _ending_row(5, t0, "lease.released", f"released{SAID}{until}"),
        _ending_row(6, t0, "lease.revoked", None),
        _ending_row(7, t0, "lease.revoked", f"revoked a's lease: x{SAID}{until}; no lock delay"),
    ]
    kept = open_objects.OpenObjects()
    kept.feed(rows)
    assert {s: (o.kind, o.until) for s, o in kept.objects.items()} == {
        1: ("delay", until),
        2: ("delay", until),
    }
    many = open_objects.OpenObjects()
    for i in range(8, 5008, 100):
        many.feed(
            [
                _ending_row(j, t0 + j, "lease.expired", f"x{SAID}{rfc3339(t0 + j + 5)}")
                for j in range(i, i + 100)
            ]
        )
    assert len(many.objects) < 2 * 1024 + 100 and 5007 in many.objects
