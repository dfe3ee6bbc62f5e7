"""Verify finds a policy object deleted from the objects table by hand: writ never deletes
one, and a protected change or a standing freeze gone gives authority away. The walk over
the chain collects what the ledger says stands (``writ.stores.open_objects``); each must
still be in the table — online, with a signed checkpoint, and offline (``--store``)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.verify_fixtures import found_everywhere, moving, walked
from writ.core.clock import rfc3339
from writ.core.ledger import GENESIS, Record, seal
from writ.engine import Engine
from writ.evidence.checkpoint import generate_key, make
from writ.stores import open_objects, policy_objects
from writ.stores.accounted import Opened, tables_disagree


async def _setup(engine: Engine, backend: Backend) -> dict[str, Any]:
    """A protected change on prod/db, a freeze on prod/api until two hours from now and
    one lifted there, a change that protects nothing: by name, with their agents. A manual
    clock starts a minute before the host's (the offline CLI reads that) and moves a
    millisecond each read."""
    moving(backend, near_now=True)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    jane, _ = await engine.add_principal(None, "jane", "human")
    lease = await engine.acquire(perf, resource="prod/db", intent="scale", touches=["capacity"])
    out: dict[str, Any] = {"perf": perf, "jane": jane, "lease": lease}
    out["change"] = await engine.consents.record_change(
        perf, lease["lease_id"], "capacity", "4→8", 4, 8
    )
    out["recorded"] = await engine.consents.record_change(
        perf, lease["lease_id"], "replicas", "1→2", protect_s=0
    )
    out["freeze"] = await engine.freezes.freeze(jane, "prod/api", "incident 4411", until="2h")
    out["lifted"] = await engine.freezes.freeze(jane, "prod/api", "load test")
    await engine.freezes.lift(jane, out["lifted"]["freeze_id"])
    return out


async def _walked(engine: Engine) -> open_objects.OpenObjects:
    """What stands by every row the store holds now, as verify's walk finds it."""
    return (await walked(engine)).objects


async def _seq(engine: Engine, event: str, notes: str) -> int:
    """The seq of the first row of ``event`` whose notes hold ``notes``."""
    async for chunk in engine.store.audit_records(batch=100):
        for seq, body, _, _, ev, _, _ in chunk:
            if ev == event and notes in body:
                return seq
    raise AssertionError(f"no {event} row with {notes!r}")


@pytest.mark.parametrize("kind", ["change", "freeze"])
async def test_a_standing_object_deleted_from_the_table_fails_verify(
    engine: Engine, backend: Backend, kind: str
) -> None:
    """A protected change or an active freeze deleted from the objects table by hand fails
    verify — online, with a signed checkpoint made before, and offline — named by the row
    that records it (no id is left to name it), saying what the deletion lets through."""
    if backend.is_pg and kind == "freeze":
        pytest.skip("on PostgreSQL the change, and the standing verify's freeze")
    out = await _setup(engine, backend)
    assert (await engine.verify()).ok
    key = generate_key()
    cp = await make(engine.store, key)
    obj_id = out[kind][f"{kind}_id"]
    await backend.sql(f"DELETE FROM objects WHERE kind = '{kind}' AND id = '{obj_id}'")

    if kind == "change":
        seq = await _seq(engine, "change.recorded", "capacity: ")
        bad = await found_everywhere(
            engine, backend.url, cp, key, "policy_object", f"change at row {seq}", "no change"
        )
        assert "change of 'capacity' on prod/db by perf-agent" in (bad.reason or "")
        assert "lets any agent undo 'capacity' without asking" in (bad.reason or "")
    else:
        seq = await _seq(engine, "freeze.created", "incident 4411")
        bad = await found_everywhere(
            engine, backend.url, cp, key, "policy_object", f"freeze at row {seq}", "no freeze"
        )
        assert "freeze on prod/api by jane ('incident 4411')" in (bad.reason or "")
        assert f"until {out['freeze']['until']}" in (bad.reason or "")
        assert "lets grants under prod/api through" in (bad.reason or "")
    assert "deleted there by hand" in (bad.reason or "")


async def test_the_walk_keeps_what_stands(make_engine: Any, backend: Backend) -> None:
    """The walk keeps the protected change and the standing freeze, not the freeze writ
    lifted; the change that protects nothing (its end its own time) is not looked for: none
    of these deleted gives anything away."""
    if backend.clock is None:
        pytest.skip("on PostgreSQL: a change deleted, above")
    engine = await make_engine()
    out = await _setup(engine, backend)
    kept = await _walked(engine)
    assert sorted((o.kind, o.until, o.reason) for o in kept.objects.values()) == [
        ("change", out["recorded"]["protected_until"], None),
        ("change", out["change"]["protected_until"], None),
        ("freeze", out["freeze"]["until"], "incident 4411"),
    ]
    for kind in ("recorded", "lifted"):
        k = "change" if kind == "recorded" else "freeze"
        await backend.sql(f"DELETE FROM objects WHERE id = '{out[kind][f'{k}_id']}'")
    assert await open_objects.objects_gone(engine.store, kept) is None


async def test_objects_ended_after_the_walk_are_not_tampered(
    make_engine: Any, backend: Backend
) -> None:
    """A freeze lifted by writ after the walk passed its rows, and a change whose
    protection ran out (lapsed by the sweep) since, are still in the table: verify says
    ok. One deleted by hand is found until its time runs out; after, it gives nothing
    away and is no longer looked for, as a freeze expired by time."""
    if backend.clock is None:
        pytest.skip("a manual clock moves time (on PostgreSQL: a change deleted, above)")
    engine = await make_engine()
    out = await _setup(engine, backend)
    brief = await engine.consents.record_change(
        out["perf"], out["lease"]["lease_id"], "size", "2→4", protect_s=30
    )
    short = await engine.freezes.freeze(out["jane"], "prod/web", "deploy", until="40s")
    kept = await _walked(engine)
    assert len(kept.objects) == 5  # with the change that protects nothing
    await engine.freezes.lift(out["jane"], out["freeze"]["freeze_id"])
    assert await tables_disagree(engine.store, _opened(kept)) is None

    await backend.sql(f"DELETE FROM objects WHERE id = '{brief['change_id']}'")
    found = await open_objects.objects_gone(engine.store, kept)
    assert found is not None and "change of 'size'" in found[1], found
    await backend.advance(31)
    await engine.sweep()  # size lapses
    assert await open_objects.objects_gone(engine.store, kept) is None
    await backend.sql(f"DELETE FROM objects WHERE id = '{short['freeze_id']}'")
    found = await open_objects.objects_gone(engine.store, kept)
    assert found is not None and "freeze on prod/web" in found[1], found
    await backend.advance(10)
    assert await open_objects.objects_gone(engine.store, kept) is None
    assert await tables_disagree(engine.store, _opened(kept)) is None


def _opened(objects: open_objects.OpenObjects) -> Opened:
    opened = Opened()
    opened.objects = objects
    return opened


async def test_two_freezes_of_one_instant_need_two(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two freezes on one prefix in one instant (a clock standing still), one deleted: the
    one left does not stand for both, in one page or two. Two with one reason, one lifted:
    the lift row does not say which, so both are looked for, and both are there."""
    if backend.clock is None:
        pytest.skip("only a manual clock stands still")
    engine = await make_engine()
    backend.clock.t = max(backend.clock.t, time.time() - 60)
    jane, _ = await engine.add_principal(None, "jane", "human")
    a = await engine.freezes.freeze(jane, "prod/api", "incident")
    b = await engine.freezes.freeze(jane, "prod/api", "incident")
    await engine.freezes.lift(jane, a["freeze_id"])
    kept = await _walked(engine)
    assert len(kept.objects) == 2  # the lift names no freeze: both kept
    assert (await engine.verify()).ok
    await backend.sql(f"DELETE FROM objects WHERE id = '{b['freeze_id']}'")
    for page in (open_objects.PAGE, 1):
        monkeypatch.setattr(open_objects, "PAGE", page)
        bad = await engine.verify()
        assert not bad.ok and (bad.policy_object or "").startswith("freeze at row "), bad


async def _lifted_by_hand(backend: Backend, freeze_id: str, like: dict[str, Any]) -> None:
    """Mark freeze ``freeze_id`` lifted by hand, as writ marked freeze ``like`` (its
    lifted_by and lifted_at: its lift row's)."""
    ((data,),) = await backend.sql(f"SELECT data FROM objects WHERE id = '{freeze_id}'")
    data = json.loads(data)
    data.update(lifted_by=like["lifted_by"], lifted_at=like["lifted_at"])
    text = json.dumps(data).replace("'", "''")
    await backend.sql(
        f"UPDATE objects SET state = 'lifted', expires_at = NULL, data = '{text}'"
        f" WHERE id = '{freeze_id}'"
    )


@pytest.mark.parametrize("whose", ["a freeze lifted since", "a freeze lifted before"])
async def test_a_lift_row_lifts_one_freeze(engine: Engine, backend: Backend, whose: str) -> None:
    """A lift row lifts one freeze (today's names it, ``…; freeze ID``; an older writ's
    did not, and is judged by this alone): an intruder who marks a standing freeze lifted by hand, with the lifted_by and lifted_at
    of another freeze on its prefix with its reason, borrows that freeze's lift row. One lift
    row lifts one freeze, after it was made: verify fails, naming one of the two (the one
    lifted before, deleted: the one marked), where it said ok and the freeze stopped no
    grant under its prefix."""
    if backend.is_pg and whose == "a freeze lifted before":
        pytest.skip("on PostgreSQL, one of the two")
    moving(backend)
    jane, _ = await engine.add_principal(None, "jane", "human")
    if whose == "a freeze lifted before":  # then deleted (a lifted one gives nothing away)
        other = await engine.freezes.freeze(jane, "prod/web", "incident")
        other = await engine.freezes.lift(jane, other["freeze_id"])
        await backend.sql(f"DELETE FROM objects WHERE id = '{other['freeze_id']}'")
        target = await engine.freezes.freeze(jane, "prod/web", "incident")
    else:
        target = await engine.freezes.freeze(jane, "prod/web", "incident")
        other = await engine.freezes.freeze(jane, "prod/web", "incident")
        other = await engine.freezes.lift(jane, other["freeze_id"])
    assert (await engine.verify()).ok
    await _lifted_by_hand(backend, target["freeze_id"], other)
    assert await engine.freezes.list() == []  # it stops nothing now
    bad = await engine.verify()
    # the two lifted ones are alike but for their rows: the one judged second is named
    names = {f"freeze {f['freeze_id']}" for f in (target, other)}
    assert not bad.ok and bad.policy_object in names, bad
    assert "freeze.lifted" in (bad.reason or "") and "by hand" in (bad.reason or "")


@pytest.mark.parametrize("kind", ["change", "freeze"])
async def test_one_row_records_one_object(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Two changes (or freezes) on one resource in one instant (a clock standing still):
    an intruder rewrites the second as a copy of the first (its data but its id), so the
    protection of 'replicas' (the freeze that allows nobody) is gone while both rows still
    find an object of their instant. Each row records one object: verify fails, in one page
    of the table check or two, where it said ok and cost-agent was granted past it."""
    if backend.clock is None:
        pytest.skip("only a manual clock stands still")
    engine = await make_engine()
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    cost, _ = await engine.add_principal(None, "cost-agent", "agent")
    jane, _ = await engine.add_principal(None, "jane", "human")
    if kind == "change":
        lease = await engine.acquire(perf, resource="prod/db", intent="scale", touches=["*"])
        first = await engine.consents.record_change(perf, lease["lease_id"], "capacity", "4→8")
        second = await engine.consents.record_change(perf, lease["lease_id"], "replicas", "1→2")
        await engine.release(perf, lease["lease_id"])
    else:
        first = await engine.freezes.freeze(jane, "prod/db", "deploy", allow=["cost-agent"])
        second = await engine.freezes.freeze(jane, "prod/db", "incident")
    assert first["at"] == second["at"] and (await engine.verify()).ok
    ((data,),) = await backend.sql(f"SELECT data FROM objects WHERE id = '{first[f'{kind}_id']}'")
    copy = {**json.loads(data), f"{kind}_id": second[f"{kind}_id"]}
    text = json.dumps(copy).replace("'", "''")
    await backend.sql(f"UPDATE objects SET data = '{text}' WHERE id = '{second[f'{kind}_id']}'")
    await engine.acquire(cost, resource="prod/db", intent="undo", touches=["replicas"])
    names = {f"{kind} {o[f'{kind}_id']}" for o in (first, second)}
    for page in (policy_objects.PAGE, 1):
        monkeypatch.setattr(policy_objects, "PAGE", page)
        bad = await engine.verify()
        assert not bad.ok and bad.policy_object in names, bad
        assert "has none of its own" in (bad.reason or ""), bad.reason


async def test_a_consent_granted_with_the_answer_of_one_still_granted(
    engine: Engine, backend: Backend
) -> None:
    """cost-agent asks twice to undo perf-agent's change; perf-agent grants one. An intruder
    marks the other granted with that answer's time and answerer: the consent.granted row
    names the consent it answers, so verify fails (used since, too: test_verify_named_objects;
    an older writ's row, naming none, answers one consent, found while that one is unused)."""
    moving(backend)
    perf, _ = await engine.add_principal(None, "perf-agent", "agent")
    cost, _ = await engine.add_principal(None, "cost-agent", "agent")
    lease = await engine.acquire(perf, resource="prod/db", intent="scale", touches=["*"])
    change = await engine.consents.record_change(perf, lease["lease_id"], "capacity", "4→8")
    # asked again once answered (while pending, asking again is the same ask)
    asked = [await engine.consents.ask(cost, change["change_id"], "need it")]
    granted = await engine.consents.answer(perf, asked[0]["consent_id"], True)
    asked.append(await engine.consents.ask(cost, change["change_id"], "need it"))
    assert (await engine.verify()).ok
    other = asked[1]["consent_id"]
    ((data,),) = await backend.sql(f"SELECT data FROM objects WHERE id = '{other}'")
    said = {k: granted[k] for k in ("answered_by", "answered_at")}
    text = json.dumps({**json.loads(data), "status": "granted", **said}).replace("'", "''")
    await backend.sql(f"UPDATE objects SET state = 'granted', data = '{text}' WHERE id = '{other}'")
    bad = await engine.verify()
    names = {f"consent {c['consent_id']}" for c in asked}
    assert not bad.ok and bad.policy_object in names, bad
    assert "the id (" in (bad.reason or "") and "(consent.granted, " in (bad.reason or "")


def test_each_object_takes_the_row_nearest_its_time() -> None:
    """Three consents of one requester on one resource a microsecond apart: a probe finds
    its neighbours' rows too (the microsecond's margin), and whatever order the objects
    come in, each takes the row at its own time, so none is left without one (taking the
    first free row, the middle one took the first's, and the first was called a copy)."""
    t = 1_800_000_000.0
    at = [t, t + 1e-6, t + 2e-6]
    rows = [
        {"seq": 10 + i, "event": "consent.requested", "agent_id": "cost-agent", "notes": None}
        | {"timestamp": rfc3339(a), "resource": "prod/db"}
        for i, a in enumerate(at)
    ]
    objs = [
        {"kind": "consent", "id": f"cns_{i}", "resource": "prod/db", "state": "pending"}
        | {"data": {"requester": "cost-agent"}, "created_at": a, "expires_at": None}
        for i, a in enumerate(at)
    ]
    found = {0: rows[:2], 1: rows, 2: rows[1:]}  # what each one's probe finds
    for order in ([1, 2, 0], [1, 0, 2], [2, 1, 0], [0, 1, 2]):
        taken: dict[int, str] = {}
        for i in order:
            why = policy_objects.object_disagrees(objs[i], [found[i], [], [], []], t, taken)
            assert why is None, (order, why)
        assert taken == {10 + i: f"consent cns_{i} on prod/db" for i in range(3)}


async def test_two_lifts_of_one_instant_lift_two(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two freezes on one prefix with one reason, made and lifted by writ in one instant (a
    clock standing still): each takes a lift row of its own, in one page of the table check
    or two, and verify says ok."""
    if backend.clock is None:
        pytest.skip("only a manual clock stands still")
    engine = await make_engine()
    jane, _ = await engine.add_principal(None, "jane", "human")
    for f in [await engine.freezes.freeze(jane, "prod/api", "incident") for _ in range(2)]:
        await engine.freezes.lift(jane, f["freeze_id"])
    for page in (policy_objects.PAGE, 1):
        monkeypatch.setattr(policy_objects, "PAGE", page)
        out = await engine.verify()
        assert out.ok, out.reason


def _change_row(seq: int, at: float, notes: str | None) -> Record:
    s = seal(seq, GENESIS, at, {"event": "change.recorded", "resource": "prod/db", "notes": notes})
    return (s.seq, s.body, s.hash, s.timestamp, s.event, s.resource, s.lock_key)


def test_the_walk_drops_what_ended_as_the_rows_go_by() -> None:
    """Thousands of changes, each protected ten seconds, one a second: the walk keeps what
    has not ended by the last row's time (and a little it has not looked at yet), never
    the ledger. Notes worded otherwise are read whole: an end found there counts; none,
    the change is kept (its end unknown)."""
    kept = open_objects.OpenObjects()
    t0 = 1_800_000_000.0
    rows = [
        _change_row(i, t0 + i, f"size: {i}; protected until {rfc3339(t0 + i + 10)}")
        for i in range(1, 5001)
    ]
    rows[9] = _change_row(10, t0 + 10, 'attr: "quoted\\n"; protected until 2030-01-01T00:00:00Z')
    rows[10] = _change_row(11, t0 + 11, "nothing to see here")
    rows[11] = _change_row(12, t0 + 12, None)
    for i in range(0, len(rows), 100):
        kept.feed(rows[i : i + 100])
    left = kept.objects
    assert len(left) < 2 * 1024 + 100
    assert {10, 11, 12} <= set(left) and set(range(4990, 5001)) <= set(left)
    assert left[10].until == "2030-01-01T00:00:00.000000Z" and left[11].until is None
    assert left[5000].until == rfc3339(t0 + 5010) and 100 not in left


def test_verify_over_http_names_a_deleted_freeze_by_its_row(tmp_path: Any) -> None:
    """``GET /v1/audit/verify`` through a running server, and ``writ audit verify --url``,
    answer a freeze deleted by hand in ``policy_object`` by the row that records it, never
    as a bad seq, exit 1."""
    import contextlib
    import json
    import sqlite3

    from click.testing import CliRunner

    from tests.server_fixtures import serve
    from writ.cli import main

    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("human", "jane")
        with srv.client(token) as jane:
            jane.freeze("prod/api", "incident 4411")
        args = ["audit", "verify", "--url", srv.url, "--token", srv.admin_token]
        assert CliRunner().invoke(main, args).exit_code == 0
        with contextlib.closing(sqlite3.connect(tmp_path / "w.db", isolation_level=None)) as db:
            db.execute("DELETE FROM objects WHERE kind = 'freeze'")
            (seq,) = db.execute("SELECT seq FROM audit WHERE event = 'freeze.created'").fetchone()
        with srv.client() as admin:
            out = admin.verify()
        assert out["ok"] is False and out["first_bad_seq"] is None, out
        assert out["policy_object"] == f"freeze at row {seq}"
        assert "lets grants under prod/api through" in out["reason"]
        res = CliRunner().invoke(main, [*args, "--json"])
        assert (
            res.exit_code == 1 and json.loads(res.output)["policy_object"] == f"freeze at row {seq}"
        )
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and "BROKEN: freeze on prod/api by jane" in res.output
        assert "seq None" not in res.output
