"""The numbers of a policy file, and a sweep that one failing lease does not stop.

Every seconds setting of a rule is a finite number from 0 to a day (the API's own bound on
a change's ``protect_s``): ``nan``, ``inf``, ``1e20`` and a 400-digit integer passed the
check (``>= 0``), and made ``change``, ``revoke``, ``acquire`` and the sweep fail on a
running server, or ``float()`` raised in the parser (a traceback, a 500 at reload). The
file is refused with its line by ``writ policy check``, at ``writ serve`` and at reload.

A lease whose end fails (a rule's hook, a setting out of range) used to fail the sweep's one
transaction: no other lease of the store expired, and the periodic duties after it
(checkpoints) stopped. The others now end, the duties run, and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.server_fixtures import ADMIN_TOKEN
from tests.stores_fixtures import Backend
from writ.api.app import create_app
from writ.cli import main
from writ.core.errors import PolicyError
from writ.core.models import Lease
from writ.core.policy import MAX_RULE_S, Policy, Rule, load, parse
from writ.engine import Engine
from writ.stores.base import Tx

RULE_KEYS = ("protect_s", "max_hold_s", "page_after_s", "lock_delay_s", "consent_timeout_s")
BAD = ("nan", "inf", "-inf", "1e20", "86401", "1" + "0" * 400, "-0.5")


def _rule(key: str, value: str) -> str:
    return f'default_override_queue = "ops"\n\n[[rules]]\nprefix = "prod"\n{key} = {value}\n'


@pytest.mark.parametrize("key", RULE_KEYS)
@pytest.mark.parametrize("value", BAD)
def test_a_rule_number_out_of_range_is_refused_with_its_line(key: str, value: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse(_rule(key, value), "writ.toml")
    assert e.value.line == 5, e.value.message
    assert e.value.message.startswith(f"writ.toml:5: {key} must be a number of seconds from 0 to")
    assert len(e.value.message) < 200  # a 400-digit number is not quoted whole


@pytest.mark.parametrize("key", RULE_KEYS)
def test_the_bounds_themselves_are_taken(key: str) -> None:
    assert getattr(parse(_rule(key, str(MAX_RULE_S))).rules[0], key) == MAX_RULE_S
    assert getattr(parse(_rule(key, "0")).rules[0], key) == 0
    assert str(getattr(parse(_rule(key, "-0.0")).rules[0], key)) == "0.0"


def test_a_number_past_pythons_digit_limit_is_refused_with_its_line() -> None:
    """tomllib raises ValueError (not TOMLDecodeError) for an integer of over 4300 digits."""
    with pytest.raises(PolicyError) as e:
        parse(_rule("protect_s", "1" * 5000), "writ.toml")
    assert e.value.line == 5 and "thousands of digits" in e.value.message


def test_policy_check_and_serve_refuse_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`writ policy check`, `writ serve --check` and `writ serve` itself: exit 1, FILE:LINE."""
    import writ.api.lifecycle

    served: list[Any] = []
    monkeypatch.setattr(writ.api.lifecycle.DrainingServer, "run", lambda *a, **k: served.append(a))
    env = {"WRIT_STORE": f"sqlite:///{tmp_path}/w.db"}
    for value in ("inf", "nan", "1" + "0" * 400):
        bad = tmp_path / "bad.toml"
        bad.write_text(_rule("lock_delay_s", value))
        said = f"{bad}:5: lock_delay_s must be a number of seconds from 0 to {MAX_RULE_S}"
        r = CliRunner().invoke(main, ["policy", "check", str(bad)])
        assert r.exit_code == 1 and said in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        r = CliRunner().invoke(main, ["serve", "--check", "--policy", str(bad)], env=env)
        assert r.exit_code == 1 and said in r.output, r.output
        r = CliRunner().invoke(main, ["serve", "--policy", str(bad), "--port", "1"], env=env)
        assert r.exit_code == 1 and said in r.output, r.output
    assert served == []


async def test_a_reload_refuses_the_file_and_keeps_the_policy(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """422 with FILE:LINE (a 400-digit integer was a 500 ``internal``); the rules stay."""
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN_TOKEN)
    path = tmp_path / "writ.toml"
    path.write_text(_rule("lock_delay_s", "5"))
    engine = Engine(backend.open_store(), load(path))
    app = create_app(engine, start_engine=False)
    await engine.start(background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://writ"
        ) as http:
            for value in ("inf", "nan", "1e20", "1" + "0" * 400, "1" * 5000):
                path.write_text(_rule("lock_delay_s", value))
                r = await http.post(
                    "/v1/policy/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                assert r.status_code == 422, (value[:10], r.text)
                assert f"{path}:5: " in r.json()["error"]["message"], r.text
                assert engine.policy.rule_for("prod/db").lock_delay_s == 5
    finally:
        await engine.stop()


# ----------------------------------------------------------------------------- the sweep
async def _two_due_leases(make_engine: Any, backend: Backend, policy: Policy | None) -> Engine:
    """prod/db and other/x held by agent-a, both past their ttl."""
    engine: Engine = await make_engine(policy)
    a, _ = await engine.add_principal(None, "agent-a", "agent")
    for resource in ("prod/db", "other/x"):
        await engine.acquire(a, resource=resource, intent="work", ttl_s=5)
    await backend.advance(6)
    return engine


async def _held(engine: Engine) -> list[str]:
    async def fn(tx: Tx) -> list[Lease]:
        return await tx.held_related(["prod/db", "other/x"])

    return sorted(lease.resource for lease in await engine.store.read(fn))


async def _check_the_sweep_goes_on(
    engine: Engine, backend: Backend, caplog: pytest.LogCaptureFixture, cause: str
) -> None:
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)

    engine.add_ticker(tick)  # a periodic duty after the sweep's write (as checkpoints are)
    with caplog.at_level(logging.WARNING, logger="writ.engine"):
        assert await engine.sweep() == 1
    assert await _held(engine) == ["prod/db"]  # only the one whose end fails
    rows = (await engine.audit(limit=1000))["rows"]
    assert [r["resource"] for r in rows if r["event"] == "lease.expired"] == ["other/x"]
    assert ticks == [1]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("prod/db" in m and cause in m for m in said), said
    # the ledger holds no half of the failed end (on PostgreSQL, backend.advance itself
    # changes the held lease by hand, which verify reports)
    assert backend.is_pg or (await engine.verify()).ok


async def test_a_lease_whose_end_fails_stops_neither_the_others_nor_the_duties(
    make_engine: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule's hook that raises on one lease's end (a third party's bug)."""
    engine = await _two_due_leases(make_engine, backend, None)

    async def broken(tx: Any, lease: Lease) -> None:
        if lease.resource == "prod/db":
            raise RuntimeError("a rule's bug")

    engine._on_end.append(broken)
    await _check_the_sweep_goes_on(engine, backend, caplog, "RuntimeError: a rule's bug")


async def test_an_infinite_lock_delay_in_force_stops_only_its_own_lease(
    make_engine: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding's case, as a policy made in code (the file refuses it): an unrelated
    lease still expires (a lease.expired row), and the duties after the sweep still run."""
    rule = replace(Rule(), prefix="prod", lock_delay_s=float("inf"))
    policy = Policy(rules=[replace(rule, named=frozenset({"lock_delay_s"}))])
    engine = await _two_due_leases(make_engine, backend, policy)
    await _check_the_sweep_goes_on(engine, backend, caplog, "infinity")


async def test_the_sweeper_tries_a_failing_lease_again_an_interval_later(
    make_engine: Any, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Still due after the sweep, the failing lease would have the sweeper sweep again at
    once, over and over: it waits its interval."""
    engine = await _two_due_leases(make_engine, backend, None)
    engine.sweep_interval = 60.0

    async def broken(tx: Any, lease: Lease) -> None:
        raise RuntimeError("a rule's bug")

    engine._on_end.append(broken)
    slept: list[float] = []
    real_sleep = asyncio.sleep
    sweeper: asyncio.Task[None] | None = None

    async def sleep(delay: float, *args: Any) -> Any:
        # the sweeper's own wait; a store's yields (sleep(0)) and other tasks sleep for real
        if asyncio.current_task() is not sweeper or delay == 0:
            return await real_sleep(delay, *args)
        slept.append(delay)
        engine._closing = True

    monkeypatch.setattr("writ.engine.kernel.asyncio.sleep", sleep)
    sweeper = asyncio.ensure_future(engine._sweeper())
    await asyncio.wait_for(sweeper, 30)
    assert len(slept) == 1 and 50.0 < slept[0] <= 60.0, slept


async def test_a_periodic_duty_that_fails_stops_none_after_it(
    make_engine: Any, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A ticker that raises (a third party's duty, a checkpoint that cannot be written) is
    logged with its cause, and the duties after it run in the same sweep."""
    engine = await _two_due_leases(make_engine, backend, None)
    ran: list[str] = []

    async def broken() -> None:
        ran.append("broken")
        raise RuntimeError("a duty's bug")

    async def after() -> None:
        ran.append("after")

    engine.add_ticker(broken)
    engine.add_ticker(after)
    with caplog.at_level(logging.ERROR, logger="writ.engine"):
        assert await engine.sweep() == 2
    assert ran == ["broken", "after"]
    assert "RuntimeError: a duty's bug" in caplog.text
