"""The engine's rule interface (writ.engine.hooks): rules chosen by a list, wired by the hooks
they override, gates ordered by gate_priority (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

import pytest

from writ.core.errors import Frozen, WritError
from writ.core.models import Principal
from writ.engine import Engine
from writ.engine.defaults import DEFAULT_RULES
from writ.engine.hooks import Request, Rule
from writ.stores import open_store
from writ.stores.base import Tx


class Refuser(Rule):
    """A gate between freezes (10) and consent (50)."""

    name = "refuser"
    gate_priority = 20

    async def gate(self, tx: Tx, me: Principal, req: Request) -> WritError | None:
        return Frozen(f"{req.resource}: refused by the test rule") if "no" in req.resource else None


class Quiet(Rule):
    """Overrides nothing: it must add no hook at all."""

    name = "quiet"


def _owners(hooks: list[Any]) -> list[str]:
    return [type(h.__self__).__name__ for h in hooks]


def test_a_rule_is_hooked_in_by_what_it_overrides_and_its_priority() -> None:
    e = Engine(open_store("sqlite:///:memory:"), rules=[*DEFAULT_RULES, Refuser, Quiet])
    assert _owners(e._gates) == ["Principals", "Authority", "Freezes", "Refuser", "Consents"]
    assert "Quiet" not in _owners(e._gates + e._on_grant + e._on_end + e._tickers)
    assert e.rule(Refuser) is e._named["refuser"]
    assert e.rule(Quiet).engine is e


def test_the_engine_runs_only_the_rules_it_is_given() -> None:
    e = Engine(open_store("sqlite:///:memory:"), rules=[*DEFAULT_RULES[:-1]])
    with pytest.raises(LookupError):
        e.rule(type(Engine(open_store("sqlite:///:memory:")).principals))


async def test_a_custom_gate_refuses_a_grant() -> None:
    async with Engine(open_store("sqlite:///:memory:"), rules=[*DEFAULT_RULES, Refuser]) as e:
        _, token = await e.add_principal(None, "a1", "agent")
        me = await e.authenticate(token)
        with pytest.raises(Frozen, match="refused by the test rule"):
            await e.acquire(me, resource="prod/no", intent="x", ttl_s=60)
        ok = await e.acquire(me, resource="prod/yes", intent="x", ttl_s=60)
        assert (ok["resource"], ok["state"]) == ("prod/yes", "held")
