"""Verify covers the policy objects that hold authority back: writ serves changes, consents
and freezes from the objects table, outside the hash chain, so each is checked against the
hashed rows that record it — online, with a signed checkpoint, and offline (``--store``),
on every store."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

from tests.stores_fixtures import Backend
from tests.verify_fixtures import after_the_listing, cli_verify, found_everywhere
from writ.cli import main
from writ.core.clock import rfc3339
from writ.core.errors import Invalid
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make, write_checkpoint
from writ.stores import policy_objects

POLICY = """
[[rules]]
prefix = "prod"
max_hold_s = 600
lock_delay_s = 5

[[rules]]
prefix = "prod/cache"
lock_delay_s = 5
consent_timeout_s = 1
"""
PLAN = {
    "allowed": True,
    "path": "/rollback/db",
    "key_holder": "db-oncall",
    "override_queue": "db-oncall",
}


async def _later(backend: Backend, engine: Engine, seconds: float) -> None:
    """Let ``seconds`` pass on the store's clock (a real wait on PostgreSQL, whose clock is
    the database's: its test lever moves created_at, which this check reads), then sweep."""
    if backend.clock is not None:
        backend.clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)
    await engine.sweep()


async def _objects(engine: Engine, backend: Backend, ticking: bool = True) -> dict[str, Any]:
    """Every kind of policy object writ writes, in each state writ gives it: changes
    (protected, recorded, lapsed), consents (pending, granted, denied, used, expired),
    freezes (active, lifted, expired), a lock delay, a hold check, a gate mark, a wake mark
    and a rollback. Returns them by name. A manual clock starts a minute before the host's
    (the offline CLI reads that: what ended has ended for it too) and, ``ticking``, moves a millisecond each time it is read, as a real
    one would (else every object is written in one instant)."""
    clock = backend.clock
    if clock is not None:
        clock.t = max(clock.t, time.time() - 60)
        if ticking:
            clock.now = lambda: clock.advance(0.001)  # type: ignore[method-assign]
    add = engine.add_principal
    perf, perf_token = await add(None, "perf-agent", "agent")
    cost, _ = await add(None, "cost-agent", "agent")
    await add(None, "db-oncall", "queue")
    jane, _ = await add(None, "jane", "human", queues=["db-oncall"])
    gate, _ = await add(None, "the-gate", "agent")
    out: dict[str, Any] = {}
    # a lease that expires (its lock delay), a change past its protection (lapsed)
    short = await engine.acquire(perf, resource="prod/cache", intent="warm", ttl_s=1, rollback=PLAN)
    out["lapsed"] = await engine.consents.record_change(
        perf, short["lease_id"], "size", "2→4", protect_s=1
    )
    out["expired"] = await engine.consents.ask(cost, out["lapsed"]["change_id"], "too big")
    # another requester: while one's ask is pending, asking again is the same ask
    out["escalated"] = await engine.consents.ask(gate, out["lapsed"]["change_id"], "still")
    out["brief"] = await engine.freezes.freeze(jane, "staging", "deploy window", until="1s")
    await _later(backend, engine, 1.5)
    await engine.consents.answer(jane, out["escalated"]["consent_id"], True)  # db-oncall's
    lease = await engine.acquire(
        perf, resource="prod/db", intent="scale", touches=["capacity"], rollback=PLAN
    )
    out["change"] = await engine.consents.record_change(
        perf, lease["lease_id"], "capacity", "4→8", 4, 8
    )
    out["recorded"] = await engine.consents.record_change(
        perf, lease["lease_id"], "replicas", "1→2", protect_s=0
    )
    ask = engine.consents.ask
    out["used"] = await ask(cost, out["change"]["change_id"], "overprovisioned")
    await engine.consents.answer(perf, out["used"]["consent_id"], True)
    out["denied"] = await ask(cost, out["change"]["change_id"], "again")
    await engine.consents.answer(perf, out["denied"]["consent_id"], False)
    out["granted"] = await ask(cost, out["change"]["change_id"], "and once more")
    await engine.consents.answer(jane, out["granted"]["consent_id"], True)
    out["pending"] = await ask(cost, out["change"]["change_id"], "later")
    await engine.gate_check(
        gate, perf_token, lease["lease_id"], lease["fencing_token"], "prod/db", "POST", "/x"
    )
    await engine.authority.wake(cost, lease["lease_id"], "are you there?")
    await engine.rollbacks.request(cost, lease_id=lease["lease_id"], reason="too big")
    await engine.release(perf, lease["lease_id"])
    out["lease"] = await engine.acquire(
        cost,
        resource="prod/db",
        intent="shrink",
        touches=["capacity"],
        consent_id=out["used"]["consent_id"],
    )
    out["freeze"] = await engine.freezes.freeze(
        jane, "prod/api", "incident 4411", until="2h", allow=["cost-agent"]
    )
    out["lifted"] = await engine.freezes.freeze(jane, "prod/api", "load test")
    out["lift"] = await engine.freezes.lift(jane, out["lifted"]["freeze_id"])
    out["agents"] = {"perf": perf, "cost": cost, "jane": jane}
    return out


async def _states(engine: Engine) -> dict[tuple[str, str], str]:
    """The state of each object, by ``(kind, id)``."""
    rows = [r async for t, b in engine.store.export_rows() if t == "objects" for r in b]
    return {(r["kind"], r["id"]): r["state"] for r in rows}


async def test_every_kind_of_object_as_writ_wrote_it_verifies(
    make_engine: Any, backend: Backend
) -> None:
    """A store with every kind of policy object, in every state writ gives it, verifies,
    online and offline."""
    engine = await make_engine(POLICY)
    out = await _objects(engine, backend)
    states = await _states(engine)
    assert {k for k, _ in states} >= {
        "change",
        "consent",
        "freeze",
        "delay",
        "holdcheck",
        "gatemark",
        "wake",
        "rollback",
    }, states
    assert set(states.values()) >= {
        "protected",
        "recorded",
        "lapsed",
        "pending",
        "granted",
        "denied",
        "used",
        "active",
        "lifted",
        "expired",
    }, states
    for name, kind, key, state in (
        ("used", "consent", "consent_id", "used"),
        ("expired", "consent", "consent_id", "expired"),
        ("escalated", "consent", "consent_id", "granted"),
        ("brief", "freeze", "freeze_id", "expired"),
        ("lapsed", "change", "change_id", "lapsed"),
    ):
        assert states[(kind, out[name][key])] == state, name
    assert (await engine.verify()).ok, await engine.verify()
    assert (await cli_verify(backend.url))["ok"]


def _set(kind: str, key: str, sets: str) -> str:
    return f"UPDATE objects SET {sets} WHERE kind = '{kind}' AND id = '{{{key}}}'"


def _data(old: str, new: str) -> str:
    return f"data = replace(data, '{old}', '{new}')"


_GRANT = "state = 'granted', " + _data('"status": "{was}"', '"status": "granted"')
# what an intruder with database rights does to the objects table: the SQL (formatted with
# the objects' ids), the object named, and what the reason names
EDITS: dict[str, tuple[str, str, str]] = {
    "a pending consent granted": (
        _set("consent", "pending", _GRANT.format(was="pending")),
        "consent {pending}",
        "no consent.granted row",
    ),
    "a denied consent granted": (
        _set("consent", "denied", _GRANT.format(was="denied")),
        "consent {denied}",
        "(consent.denied) at its answered_at denied it",
    ),
    "an expired consent granted": (
        _set("consent", "expired", _GRANT.format(was="expired")),
        "consent {expired}",
        "no consent.granted row",
    ),
    "a used consent granted again": (
        _set("consent", "used", "state = 'granted'"),
        "consent {used}",
        "(consent.used) used it",
    ),
    "a consent of the intruder's own": (
        "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
        " SELECT kind, 'cns_forged', resource, state, data, created_at + 7, expires_at"
        " FROM objects WHERE kind = 'consent' AND id = '{granted}'",
        "consent cns_forged",
        "no consent.requested row",
    ),
    "a granted consent for another change": (
        _set("consent", "granted", _data("{change}", "chg_another")),
        "consent {granted}",
        "the change_id",
    ),
    "a granted consent for another requester": (
        _set("consent", "granted", _data('"requester": "cost-agent"', '"requester": "jane"')),
        "consent {granted}",
        "the requester",
    ),
    "an escalated consent's queue": (
        _set(
            "consent", "escalated", _data('"escalated_to": "db-oncall"', '"escalated_to": "jane"')
        ),
        "consent {escalated}",
        "the escalated_to",
    ),
    "a change's override queue": (
        _set(
            "change", "change", _data('"override_queue": "db-oncall"', '"override_queue": "jane"')
        ),
        "change {change}",
        "the override_queue",
    ),
    "a protected change lapsed": (
        _set("change", "change", "state = 'lapsed'"),
        "change {change}",
        "it is marked lapsed",
    ),
    "a change's protection cut short": (
        _set("change", "change", "expires_at = created_at + 1"),
        "change {change}",
        "the expires_at column",
    ),
    "a change made the requester's own": (
        _set("change", "change", _data('"author": "perf-agent"', '"author": "cost-agent"')),
        "change {change}",
        "the author",
    ),
    "a change's attribute changed": (
        _set("change", "change", _data('"attribute": "capacity"', '"attribute": "color"')),
        "change {change}",
        "the attribute",
    ),
    "a change moved": (
        _set("change", "change", "resource = 'prod/elsewhere'"),
        "change {change}",
        "no change.recorded row",
    ),
    "a freeze lifted by hand": (
        _set("freeze", "freeze", "state = 'lifted', expires_at = NULL"),
        "freeze {freeze}",
        "no freeze.lifted row",
    ),
    "a freeze lifted with another lift's row": (
        _set(
            "freeze",
            "freeze",
            "state = 'lifted', expires_at = NULL, "
            + _data(
                '"lifted_by": null, "lifted_at": null',
                '"lifted_by": "jane", "lifted_at": "{lifted_at}"',
            ),
        ),
        "freeze {freeze}",
        "the id",  # today's lift row names the freeze it lifts (older: its reason disagrees)
    ),
    "a freeze expired by hand": (
        _set("freeze", "freeze", "state = 'expired'"),
        "freeze {freeze}",
        "it is marked expired",
    ),
    "a freeze cut short": (
        _set("freeze", "freeze", "expires_at = created_at + 1"),
        "freeze {freeze}",
        "the expires_at column",
    ),
    "a freeze that allows more": (
        _set("freeze", "freeze", _data('["cost-agent"]', '["cost-agent", "perf-agent"]')),
        "freeze {freeze}",
        "the allow",
    ),
    "a freeze moved": (
        _set("freeze", "freeze", "resource = 'prod/elsewhere'"),
        "freeze {freeze}",
        "no freeze.created row",
    ),
}


def _ids(out: dict[str, Any]) -> dict[str, str]:
    ids = {
        k: v.get("consent_id") or v.get("change_id") or v.get("freeze_id")
        for k, v in out.items()
        if isinstance(v, dict) and (v.get("consent_id") or v.get("change_id") or v.get("freeze_id"))
    }
    ids["lifted_at"] = out["lift"]["lifted_at"]
    return ids


# the edits run on PostgreSQL too, one or two of each kind (building the objects waits a real
# 1.5 s there, the database's clock): the check's SQL is the same for every edit of a kind
ON_POSTGRES = {
    "a pending consent granted",
    "a granted consent for another change",
    "a protected change lapsed",
    "a change moved",
    "a freeze lifted by hand",
    "a freeze that allows more",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
async def test_a_hand_edited_object_fails_verify(
    make_engine: Any, backend: Backend, edit: str
) -> None:
    """A policy object changed (or made) by hand in the objects table so that it gives
    authority fails verify — online, with a signed checkpoint, and offline — naming the
    object and what disagrees, while every audit row is intact."""
    if backend.is_pg and edit not in ON_POSTGRES:
        pytest.skip("run on SQLite; on PostgreSQL one or two edits of each kind (ON_POSTGRES)")
    engine = await make_engine(POLICY)
    ids = _ids(await _objects(engine, backend))
    assert (await engine.verify()).ok
    key = generate_key()
    cp = await make(engine.store, key)
    sql, name, field = EDITS[edit]
    await backend.sql(sql.format(**ids))
    name = name.format(**ids)

    bad = await found_everywhere(engine, backend.url, cp, key, "policy_object", name, field)
    assert name.replace(" ", " ") in (bad.reason or "") or name.split()[1] in (bad.reason or "")
    assert "lease_id" not in bad.to_dict() and "principal" not in bad.to_dict()


async def test_objects_written_in_one_instant_verify(make_engine: Any, backend: Backend) -> None:
    """Objects on one resource written in one instant (a clock that did not move: two
    changes, two freezes, consents answered together) each find their own row among the
    rows of that instant, and verify."""
    if backend.clock is None:
        pytest.skip("only a manual clock stands still")
    engine = await make_engine(POLICY)
    await _objects(engine, backend, ticking=False)
    assert (await engine.verify()).ok, await engine.verify()


async def test_objects_changed_by_writ_while_verify_runs_are_not_tampered(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between verify listing the objects and checking them, writ grants a pending consent,
    uses a granted one, lifts a freeze, freezes anew and records a change: each is judged
    as it stands when checked, a page (here one object) in one snapshot."""
    engine = await make_engine(POLICY)
    out = await _objects(engine, backend)
    a = out["agents"]
    monkeypatch.setattr(policy_objects, "PAGE", 1)
    store = engine.store

    async def meanwhile() -> None:
        await engine.consents.answer(a["perf"], out["pending"]["consent_id"], True)
        await engine.release(a["cost"], out["lease"]["lease_id"])
        await engine.acquire(
            a["cost"],
            resource="prod/db",
            intent="shrink again",
            touches=["capacity"],
            consent_id=out["granted"]["consent_id"],
        )
        await engine.freezes.lift(a["jane"], out["freeze"]["freeze_id"])
        await engine.freezes.freeze(a["jane"], "prod/api", "again")
        lease = await engine.acquire(a["perf"], resource="prod/queue", intent="drain")
        await engine.consents.record_change(a["perf"], lease["lease_id"], "depth", "0")

    listed = after_the_listing(monkeypatch, store, meanwhile)
    found = await policy_objects.objects_disagree(store)
    assert listed.is_set() and found is None
    states = await _states(engine)
    assert states[("consent", out["granted"]["consent_id"])] == "used"
    assert states[("freeze", out["freeze"]["freeze_id"])] == "lifted"


async def test_the_cli_names_the_object_not_a_seq(
    make_engine: Any, backend: Backend, tmp_path: Any
) -> None:
    """``writ audit verify`` prints a policy object the ledger does not account for as
    itself (no "at seq None"), with and without a checkpoint, and exits 1."""
    engine = await make_engine(POLICY)
    ids = _ids(await _objects(engine, backend))
    signed = await make(engine.store, generate_key())
    write_checkpoint(signed, tmp_path / "cp.txt")
    await backend.sql(EDITS["a pending consent granted"][0].format(**ids))
    want = f"BROKEN: consent {ids['pending']} on prod/db: no consent.granted row"
    for more in ([], ["--checkpoint", str(tmp_path / "cp.txt")]):
        args = ["audit", "verify", "--store", backend.url, *more]
        res = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert res.exit_code == 1 and want in res.output and "seq None" not in res.output, more


async def test_rows_worded_otherwise_vouch_for_existence(
    make_engine: Any, backend: Backend
) -> None:
    """A freeze.created or change.recorded row without the notes writ writes today (an
    older writ's, an import's) vouches for its object's existence and what its own fields
    say (who, where, when), never for what its notes would: it verifies; who is still
    compared."""
    engine = await make_engine(POLICY)

    async def rows(tx: Any) -> float:
        await tx.append(
            {"event": "freeze.created", "agent_id": "ops", "resource": "prod/old", "notes": "x"}
        )
        sealed = await tx.append(
            {"event": "change.recorded", "agent_id": "old-agent", "resource": "prod/old"}
        )
        return float(sealed.timestamp)

    at = await engine.store.transact(rows)
    shown = rfc3339(at)
    freeze = {
        "freeze_id": "frz_old",
        "prefix": "prod/old",
        "reason": "imported",
        "by": "ops",
        "at": shown,
        "until": None,
        "allow": [],
        "lifted_by": None,
        "lifted_at": None,
    }
    change = {
        "change_id": "chg_old",
        "resource": "prod/old",
        "author": "old-agent",
        "attribute": "size",
        "summary": "imported",
        "fencing_token": None,
        "at": shown,
        "protected_until": rfc3339(at + 900),
    }
    for kind, oid, data, until in (
        ("freeze", "frz_old", freeze, "NULL"),
        ("change", "chg_old", change, repr(at + 900)),
    ):
        await backend.sql(
            "INSERT INTO objects (kind, id, resource, state, data, created_at, expires_at)"
            f" VALUES ('{kind}', '{oid}', 'prod/old', '{'active' if kind == 'freeze' else 'protected'}',"
            f" '{json.dumps(data)}', {at!r}, {until})"
        )
    assert (await engine.verify()).ok, await engine.verify()
    assert (await cli_verify(backend.url))["ok"]
    await backend.sql(
        "UPDATE objects SET data = replace(data, '\"old-agent\"', '\"new-agent\"')"
        " WHERE id = 'chg_old'"
    )
    bad = await engine.verify()
    assert bad.policy_object == "change chg_old" and "the author" in (bad.reason or "")


async def test_audit_probes_answer_as_each_window_does(make_engine: Any, backend: Backend) -> None:
    """``Tx.audit_probes`` (one statement on PostgreSQL) answers what ``audit_window``
    answers probe by probe: each probe's rows, oldest first, none for an unasked one."""
    engine = await make_engine(POLICY)
    out = await _objects(engine, backend)

    async def both(tx: Any) -> tuple[Any, Any, Any]:
        objs = await tx.objects_by_key("consent", [out["granted"]["consent_id"], "nobody"])
        [change] = await tx.objects_by_key("change", [out["change"]["change_id"]])
        probes = policy_objects.object_probes(objs[0], change["expires_at"])
        probes.append(("prod/db", ("lease.granted",), 0.0, 0.0))
        probes.append(("prod/db", ("lease.granted", "lease.released"), 0.0, 1e18))
        one = [await tx.audit_window(*p) if p[3] > 0 else [] for p in probes]
        return objs, await tx.audit_probes(probes), one

    objs, many, one = await engine.store.read(both)
    assert [o["id"] for o in objs] == [out["granted"]["consent_id"]] and many == one
    assert [len(rows) for rows in many] == [1, 1, 1, 0, 0, 3]  # another consent used since
    assert [r["event"] for r in many[-1]] == ["lease.granted", "lease.released", "lease.granted"]


def test_verify_over_http_names_the_object(tmp_path: Any) -> None:
    """``GET /v1/audit/verify`` (the Python client's ``verify()``) and ``writ audit verify
    --url --checkpoint`` (the server verifies, the CLI checks the checkpoint's rows) answer
    a freeze lifted by hand in ``policy_object``, never as a bad seq, exit 1."""
    import contextlib
    import sqlite3

    from tests.server_fixtures import serve

    key, cp = str(tmp_path / "cp.key"), str(tmp_path / "cp.txt")
    assert CliRunner().invoke(main, ["audit", "keygen", "--out", key]).exit_code == 0
    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("human", "jane")
        with srv.client(token) as jane:
            freeze = jane.freeze("prod/api", "incident 4411")
        server = ["--url", srv.url, "--token", srv.admin_token]
        made = CliRunner().invoke(main, ["audit", "checkpoint", "--key", key, "--out", cp, *server])
        assert made.exit_code == 0, made.output
        args = ["audit", "verify", *server, "--checkpoint", cp]
        assert CliRunner().invoke(main, args).exit_code == 0
        with contextlib.closing(sqlite3.connect(tmp_path / "w.db", isolation_level=None)) as db:
            db.execute("UPDATE objects SET state = 'lifted', expires_at = NULL")
        name = f"freeze {freeze['freeze_id']}"
        with srv.client() as admin:
            out = admin.verify()
        assert out["ok"] is False and out["first_bad_seq"] is None
        assert out["policy_object"] == name and "no freeze.lifted row" in out["reason"]
        assert "lease_id" not in out and "principal" not in out
        out = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
        assert out["ok"] is False and out["policy_object"] == name and out["first_bad_seq"] is None
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and f"BROKEN: {name} on prod/api" in res.output
        assert "seq None" not in res.output


async def test_a_consent_answered_by_an_author_set_by_hand_fails_verify(
    make_engine: Any, backend: Backend
) -> None:
    """A pending consent whose author was changed by hand to an agent of the intruder's,
    which then grants it through writ (writ records that answer as its own), fails verify:
    its consent.requested row names the change's real author."""
    engine = await make_engine(POLICY)
    ids = _ids(await _objects(engine, backend))
    mallory, _ = await engine.add_principal(None, "mallory-agent", "agent")
    edit = _data('"author": "perf-agent"', '"author": "mallory-agent"')
    await backend.sql(_set("consent", "pending", edit).format(**ids))
    if backend.is_pg:  # behind the server's back: it loads its live replica afresh
        await backend.sql("UPDATE audit_head SET epoch = epoch + 1")
    await engine.consents.answer(mallory, ids["pending"], True)
    bad = await engine.verify()
    assert bad.policy_object == f"consent {ids['pending']}", bad
    assert "the author and attribute" in (bad.reason or "") and bad.first_bad_seq is None


async def test_migrate_checks_the_objects_it_copied(
    make_engine: Any, backend: Backend, tmp_path: Any
) -> None:
    """``writ migrate``'s check covers the policy objects: a store with every kind copies
    and verifies; one whose freeze was lifted by hand is refused before the copy commits
    (the chain is intact; its tables are not), naming the freeze, and nothing is copied."""
    from writ.stores.migrate import migrate

    engine = await make_engine(POLICY)
    ids = _ids(await _objects(engine, backend))
    done = await migrate(backend.url, f"sqlite:///{tmp_path / 'copy.db'}")
    assert done["ok"] and done["verify"]["ok"], done
    await backend.sql(_set("freeze", "freeze", "state = 'lifted', expires_at = NULL").format(**ids))
    with pytest.raises(Invalid) as refused:
        await migrate(backend.url, f"sqlite:///{tmp_path / 'copy2.db'}")
    assert refused.value.details["policy_object"] == f"freeze {ids['freeze']}"
