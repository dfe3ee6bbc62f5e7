"""The order in which the engine runs its rules' hooks: gates, grant and end hooks, tickers.

The order is behaviour (the first refusing gate names the refusal; tickers run in turn), recorded
before the rooms renovation (issue 17) split the engine: moving rules into modules of their own must
not reorder them. Also the public view a rule uses (``rule``, ``add_ticker``, ``audit_changed``).
"""

from __future__ import annotations

from typing import Any

import pytest

from writ.api.app import create_app
from writ.engine import Engine
from writ.engine.principals import Principals
from writ.evidence.checkpoint import Checkpointer, generate_key
from writ.evidence.history import History
from writ.rules.authority import Authority
from writ.rules.consent import Consents
from writ.rules.freezes import Freezes
from writ.rules.rollbacks import Rollbacks
from writ.rules.stuck import Stuck
from writ.stores import open_store


def _owners(hooks: list[Any]) -> list[str]:
    return [type(h.__self__).__name__ for h in hooks]


def _engine() -> Engine:
    return Engine(open_store("sqlite:///:memory:"))


def test_hooks_run_in_the_recorded_order() -> None:
    """Principals, then Authority, then Freezes, then Consents refuse a grant; on_grant, on_end
    and the tickers keep the rules' construction order."""
    e = _engine()
    assert _owners(e._gates) == ["Principals", "Authority", "Freezes", "Consents"]
    assert _owners(e._on_grant) == ["Consents", "Stuck"]
    assert _owners(e._on_end) == ["Stuck"]
    assert _owners(e._tickers) == ["Consents", "Rollbacks", "Freezes", "Stuck"]


def test_the_app_adds_its_metrics_after_the_rules() -> None:
    """create_app hooks the lease metrics in after the rules' own end hooks."""
    e = _engine()
    create_app(e, start_engine=False)
    assert _owners(e._on_end) == ["Stuck", "Metrics"]
    assert _owners(e._gates) == ["Principals", "Authority", "Freezes", "Consents"]


def test_a_checkpointer_ticks_after_the_rules(tmp_path: Any) -> None:
    """Checkpointer registers through add_ticker: it runs after the rules' periodic duties."""
    e = _engine()
    cpr = Checkpointer(e, generate_key(), tmp_path)
    assert _owners(e._tickers) == ["Consents", "Rollbacks", "Freezes", "Stuck", "Checkpointer"]
    assert e._tickers[-1] == cpr.tick


def test_rule_finds_each_rule_instance() -> None:
    """engine.rule(cls) is the same object as the compat attribute; an unknown class is refused."""
    e = _engine()
    assert e.rule(Consents) is e.consents
    assert e.rule(Rollbacks) is e.rollbacks
    assert e.rule(Freezes) is e.freezes
    assert e.rule(Stuck) is e.stuck
    assert e.rule(History) is e.history
    assert e.rule(Authority) is e.authority
    assert e.rule(Principals) is e.principals
    with pytest.raises(LookupError, match="no rule Engine"):
        e.rule(Engine)


async def test_audit_changed_is_the_current_event() -> None:
    """The property follows the event the engine swaps in after each batch of audit rows."""
    e = _engine()
    first = e.audit_changed
    assert first is e._audit_changed
    e._audit_changed = type(first)()
    assert e.audit_changed is not first
    assert e.audit_changed is e._audit_changed


def test_the_old_private_names_still_work() -> None:
    """Until the renovation ends, _own_lease/_lost/_end are the public methods under old names."""
    assert Engine._own_lease is Engine.own_lease
    assert Engine._lost is Engine.lost
    assert Engine._end is Engine.end
