"""``who --at`` and the postmortem answer from the hashed rows, not from the columns of
ended leases that ``writ audit verify`` leaves alone: a lease "lapsed" by hand (its state
and expiry edited) is still held when its rows say it was, and an intent edited by hand is
shown as its grant row says it, the disagreement named — on every store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner

from tests.stores_fixtures import Backend
from writ.cli import main
from writ.core.clock import parse_time, rfc3339
from writ.core.models import Principal
from writ.engine import Engine

INTENT = "scale up the pool"
FORGED = "routine: benign capacity check"
LAPSE = "UPDATE leases SET state = 'expired', expires_at = acquired_at WHERE lease_id = '{id}'"
INTENT_EDIT = f"UPDATE leases SET intent = '{FORGED}' WHERE lease_id = '{{id}}'"


async def _later(backend: Backend, seconds: float) -> None:
    """Let ``seconds`` pass on the store's clock (SQLite's is the test's; PostgreSQL's is
    the database's: wait)."""
    if backend.clock is not None:
        backend.clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)


async def _ended_lease(
    engine: Engine, backend: Backend, renew: bool = False
) -> tuple[Principal, dict[str, Any], float]:
    """perf-agent held prod/db (ttl 600 s; renewed with ttl 900 s when ``renew``), then
    released it: the lease, and the time it was released."""
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    lease = await engine.acquire(agent, resource="prod/db", intent=INTENT, ttl_s=600)
    await _later(backend, 0.05)
    if renew:
        await engine.renew(agent, lease["lease_id"], ttl_s=900)
        await _later(backend, 0.05)
    await engine.release(agent, lease["lease_id"])
    rows = (await engine.audit(0, 100))["rows"]
    released = next(r for r in rows if r["event"] == "lease.released")
    return agent, lease, parse_time(released["timestamp"])


async def test_a_lapse_written_by_hand_does_not_free_the_resource(
    engine: Engine, backend: Backend
) -> None:
    """The leases table says the lease expired the instant it was granted; its rows say it
    was held until its release: ``who --at`` names the holder, with the lease as the rows
    say it and the edited columns named."""
    _, lease, _ = await _ended_lease(engine, backend)
    await backend.sql(LAPSE.format(id=lease["lease_id"]))
    at = parse_time(lease["acquired_at"]) + 0.01
    answer = await engine.who("prod/db", at)
    assert answer["lock_holder"] == "perf-agent", answer
    assert answer["lock_key"] == lease["lock_key"]
    shown = answer["lease"]
    assert shown["state"] == "released" and shown["expires_at"] == lease["expires_at"]
    why = " ".join(shown["changed_by_hand"])
    assert "the state column ('expired')" in why and "the expires_at column" in why
    assert "changed by hand" in why and lease["lease_id"] in why


async def test_a_lapse_after_a_renewal_is_judged_by_the_renewal(
    engine: Engine, backend: Backend
) -> None:
    """After a renewal its row (``renewed until …``) gives the expiry: held at the
    renewal's own time, though the table says the lease lapsed at its grant."""
    _, lease, released = await _ended_lease(engine, backend, renew=True)
    rows = (await engine.audit(0, 100))["rows"]
    renewed = next(r for r in rows if r["event"] == "lease.renewed")
    await backend.sql(LAPSE.format(id=lease["lease_id"]))
    answer = await engine.who("prod/db", parse_time(renewed["timestamp"]))
    assert answer["lock_holder"] == "perf-agent", answer
    assert answer["lease"]["expires_at"] == renewed["notes"].removeprefix("renewed until ")
    assert (await engine.who("prod/db", released))["lock_holder"] == "none"


async def test_an_intent_written_by_hand_is_shown_as_the_grant_row_says(
    engine: Engine, backend: Backend
) -> None:
    _, lease, _ = await _ended_lease(engine, backend)
    await backend.sql(INTENT_EDIT.format(id=lease["lease_id"]))
    answer = await engine.who("prod/db", parse_time(lease["acquired_at"]))
    assert answer["lease"]["intent"] == INTENT, answer
    (why,) = answer["lease"]["changed_by_hand"]
    assert f"the intent column ({FORGED!r}) disagrees with its row" in why
    assert "(lease.granted, " in why


async def test_leases_as_writ_wrote_them_are_shown_as_the_table_holds_them(
    engine: Engine, backend: Backend
) -> None:
    """No disagreement is found where there is none: a lease granted, renewed with
    another ttl and released, and one still held, are shown as the table holds them."""
    agent, lease, released = await _ended_lease(engine, backend, renew=True)
    table = await engine.list_leases("prod/db", None, 10)
    ended = next(l for l in table if l["lease_id"] == lease["lease_id"])
    answer = await engine.who("prod/db", released - 0.001)
    assert answer["lease"] == ended and "changed_by_hand" not in answer["lease"]
    held = await engine.acquire(agent, resource="prod/web", intent="deploy", ttl_s=30)
    now = await engine.who("prod/web")
    assert now["lock_holder"] == "perf-agent" and now["lease"]["lease_id"] == held["lease_id"]
    assert "changed_by_hand" not in now["lease"] and now["lease"]["intent"] == "deploy"
    brief = await engine.acquire(agent, resource="prod/cache", intent="flush", ttl_s=1)
    await _later(backend, 1.1)
    await engine.sweep()  # expired: its row written after its expiry
    expiry = parse_time(brief["expires_at"])
    then = await engine.who("prod/cache", expiry - 0.01)
    assert then["lock_holder"] == "perf-agent" and then["lease"]["state"] == "expired"
    assert "changed_by_hand" not in then["lease"]
    assert (await engine.who("prod/cache", expiry))["lock_holder"] == "none"


async def _postmortem(url: str, since: float, until: float, fmt: str = "json") -> Any:
    """``writ postmortem --store URL`` over the window: the report (JSON) or its text."""
    args = ["postmortem", "--store", url, "--format", fmt]
    args += ["--since", rfc3339(since), "--until", rfc3339(until)]
    res = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout) if fmt == "json" else res.stdout


async def test_the_postmortem_shows_the_rows_intent_and_names_the_edit(
    engine: Engine, backend: Backend
) -> None:
    """A lease held when the window opened, its intent edited by hand: the report's holder
    shows the grant row's intent, and its summary and verification name the leases table."""
    _, lease, released = await _ended_lease(engine, backend)
    await backend.sql(INTENT_EDIT.format(id=lease["lease_id"]))
    rep = await _postmortem(backend.url, parse_time(lease["acquired_at"]) + 0.01, released + 1)
    (h,) = [h for h in rep["holders"] if h["lock_key"] == lease["lock_key"]]
    assert h["before_window"] and h["intent"] == INTENT, h
    assert any(s.startswith("Leases table: 1 column(s)") for s in rep["summary"])
    (why,) = rep["verification"]["changed_by_hand"]
    assert "the intent column" in why
    md = await _postmortem(backend.url, parse_time(lease["acquired_at"]) + 0.01, released + 1, "md")
    assert FORGED not in md.split("## Chain verification")[0]  # shown only as the edit
    assert f"| {INTENT} |" in md and "- **Leases table:** lease " in md


async def test_the_postmortem_keeps_a_lease_lapsed_by_hand(
    engine: Engine, backend: Backend
) -> None:
    """A lease held when the window opened, "lapsed" by hand: the report still finds it
    held there, with its intent, from its grant row."""
    _, lease, released = await _ended_lease(engine, backend)
    await backend.sql(LAPSE.format(id=lease["lease_id"]))
    rep = await _postmortem(backend.url, parse_time(lease["acquired_at"]) + 0.01, released + 1)
    (h,) = [h for h in rep["holders"] if h["lock_key"] == lease["lock_key"]]
    assert h["intent"] == INTENT and h["ended"] == "released", h
    assert len(rep["verification"]["changed_by_hand"]) == 2


def test_writ_who_over_http_names_the_holder_and_the_rows_intent(tmp_path: Any) -> None:
    """The reviewer's reproduction: ``writ who RESOURCE --at T`` through a server, on a
    store whose ended lease was "lapsed" and its intent rewritten by hand."""
    import sqlite3

    from tests.server_fixtures import serve

    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent", "perf-agent")
        with srv.client(token) as agent:
            lease = agent.acquire("prod/db", INTENT)
            agent.release(lease["lease_id"])
        c = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
        c.execute(LAPSE.format(id=lease["lease_id"]))
        c.execute(INTENT_EDIT.format(id=lease["lease_id"]))
        c.close()
        args = ["who", "prod/db", "--at", lease["acquired_at"], "--url", srv.url]
        res = CliRunner().invoke(main, [*args, "--token", srv.admin_token])
    assert res.exit_code == 0, res.output
    said = " ".join(w for w in res.output.split() if w != "\u21b3")  # folded at the width
    assert f"perf-agent (lock key {lease['lock_key']}, intent {INTENT!r})" in said, said
    # and it says which columns of the table disagree with the rows (on stderr)
    assert "writ: warning: lease " in res.output and "changed by hand" in said, said
