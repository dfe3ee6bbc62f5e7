"""A lease is held to the rules of all it holds back, on SQLite and on PostgreSQL.

A lease on ``capacity/db`` (grouped with ``prod/db``) or on ``prod`` writes ``prod/db`` as
surely as one on ``prod/db``: ``prod/db``'s rule — lock delay, max hold and page, protect
window, consent timeout — binds it too (:meth:`writ.core.policy.Policy.governing`), and the
strictest of the rules it meets wins. And a refusal behind a queue says what the first
waiter waits on, not that the asker's own resource is held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.test_engine import add, queued, refused, rows, waiting
from writ.core.clock import parse_time
from writ.core.policy import parse
from writ.engine import Engine

pytestmark = pytest.mark.usefixtures("no_admin_env")

POLICY = """
[blast_radius]
db-tier = ["prod/db", "capacity/db"]

[[rules]]
prefix = "prod"
lock_delay_s = 5
max_hold_s = 600

[[rules]]
prefix = "prod/db"
lock_delay_s = 30
max_hold_s = 4
page_after_s = 2
protect_s = 3600
consent_timeout_s = 30
"""
# the same authority over prod/db as a lease on prod/db: a member of its group, an ancestor
ALIASES = ["capacity/db", "prod"]


def test_the_strictest_rule_of_all_a_lease_holds_back_governs_it() -> None:
    pol = parse(POLICY + '\n[[rules]]\nprefix = "capacity"\nprotect_s = 7200\nmax_hold_s = 9\n')
    for resource in ("prod/db", "capacity/db", "prod"):
        rule = pol.governing(resource)
        assert (rule.lock_delay_s, rule.max_hold_s, rule.page_after_s) == (30, 4, 2), resource
        assert (rule.protect_s, rule.consent_timeout_s) == (7200, 30), resource
    # nothing of prod/db's below prod/web: its own rule, as rule_for says
    assert pol.governing("prod/web") is pol.rule_for("prod/web")
    assert pol.governing("prod/db") is pol.governing("prod/db")  # cached


def test_only_what_a_rule_names_counts_against_the_others() -> None:
    """A rule below that names only its lock delay leaves a lease on prod the protection,
    page delay and consent timeout prod's rule names (its unnamed settings are the
    built-in ones: they made prod's 60-s protection 900 s and its one-hour consent timeout
    two minutes)."""
    pol = parse(
        '[[rules]]\nprefix = "prod"\nprotect_s = 60\npage_after_s = 600\n'
        "consent_timeout_s = 3600\n"
        '[[rules]]\nprefix = "prod/db/replica"\nlock_delay_s = 2\n'
    )
    rule = pol.governing("prod")
    assert (rule.protect_s, rule.page_after_s, rule.consent_timeout_s) == (60, 600, 3600)
    assert rule.lock_delay_s == 2
    assert pol.rule_for("prod/db/replica").named == {"lock_delay_s"}


@pytest.mark.parametrize("alias", ALIASES)
async def test_a_lock_delay_holds_after_a_lease_through_a_group_member_or_ancestor(
    make_engine: Any, backend: Backend, alias: str
) -> None:
    engine: Engine = await make_engine(POLICY)
    alice, bob = await add(engine, "alice"), await add(engine, "bob")
    await engine.acquire(alice, resource=alias, intent="work", ttl_s=5)
    await backend.advance(6)
    assert await engine.sweep() == 1  # alice died: prod/db's 30 s lock delay begins
    [expired] = await rows(engine, "lease.expired")
    assert expired["resource"] == alias and "; lock delay until " in expired["notes"]
    assert (await refused(engine, bob, "prod/db")).details["reason"] == "lock_delay"
    await backend.advance(25)  # past prod's 5 s, not prod/db's 30 s
    assert (await refused(engine, bob, "prod/db")).details["reason"] == "lock_delay"


@pytest.mark.parametrize("alias", ALIASES)
async def test_a_lease_through_a_group_member_or_ancestor_is_stuck_and_paged(
    make_engine: Any, backend: Backend, alias: str
) -> None:
    engine: Engine = await make_engine(POLICY)
    alice = await add(engine, "alice")
    lease = await engine.acquire(alice, resource=alias, intent="work", ttl_s=3600)
    await backend.advance(5)  # past prod/db's max_hold_s of 4
    await engine.sweep()
    [stuck] = await rows(engine, "lease.stuck")
    assert stuck["lock_key"] == lease["lock_key"] and "past max_hold_s 4" in stuck["notes"]
    await backend.advance(3)  # past page_after_s 2
    await engine.sweep()
    [paged] = await rows(engine, "lease.paged")
    assert paged["lock_key"] == lease["lock_key"]


@pytest.mark.parametrize("alias", ALIASES)
async def test_a_change_through_a_group_member_or_ancestor_has_the_longest_window_and_the_shortest_consent_timeout(
    make_engine: Any, alias: str
) -> None:
    engine: Engine = await make_engine(POLICY)
    alice, bob = await add(engine, "alice"), await add(engine, "bob")
    lease = await engine.acquire(
        alice, resource=alias, intent="work", ttl_s=60, touches=["capacity"]
    )
    change = await engine.consents.record_change(alice, lease["lease_id"], "capacity", "4->8")
    window = parse_time(change["protected_until"]) - parse_time(change["at"])
    assert window == pytest.approx(3600, abs=1)  # prod/db's, not prod's default 900
    consent = await engine.consents.ask(bob, change["change_id"], "undo it")
    timeout = parse_time(consent["expires_at"]) - parse_time(consent["requested_at"])
    assert timeout == pytest.approx(30, abs=1)  # prod/db's, not the default 120


async def _behind_bob(engine: Engine, carol_asks: str) -> tuple[str, asyncio.Task[Any]]:
    """alice holds prod/db, bob waits on prod; carol asks ``carol_asks``: her refusal."""
    alice, bob, carol = [await add(engine, n) for n in ("alice", "bob", "carol")]
    await engine.acquire(alice, resource="prod/db", intent="migrate", ttl_s=60)
    task = waiting(engine, bob, "prod")
    await queued(engine, "bob")
    return str((await refused(engine, carol, carol_asks)).message), task


async def _done(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_refusal_behind_a_queue_names_what_the_first_waiter_waits_on(
    engine: Engine,
) -> None:
    text, task = await _behind_bob(engine, "prod/cache")
    try:
        assert "the first waits on: prod is held by alice (on prod/db)" in text, text
        assert "prod/cache is held" not in text, text
        [denied] = [r for r in await rows(engine, "lease.denied") if r["agent_id"] == "carol"]
        assert "prod/cache is held" not in denied["notes"], denied["notes"]
    finally:
        await _done(task)


async def test_a_hidden_refusal_behind_a_queue_does_not_call_the_askers_resource_held(
    make_engine: Any,
) -> None:
    closed = (
        '[authority]\nmode = "closed"\n'
        '[[authority.grant]]\nprincipals = ["alice", "bob"]\nwrite = ["prod"]\n'
        '[[authority.grant]]\nprincipals = ["carol"]\nwrite = ["prod/cache"]\n'
    )
    engine: Engine = await make_engine(closed)
    text, task = await _behind_bob(engine, "prod/cache")
    try:
        assert "the first waits on a lease on a resource you may not observe" in text, text
        assert "prod/cache is held" not in text and "alice" not in text, text
    finally:
        await _done(task)
