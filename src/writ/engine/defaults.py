"""The composition place: which rules an engine runs, named as ``"module:Class"`` strings.

The engine imports no rule: it loads these with :func:`load_rule` (the same mechanism as the
store backends), so the rules may import the engine's interface (:mod:`writ.engine.hooks`) without
a circle. To add a rule, write a :class:`writ.engine.hooks.Rule` subclass and list it here (or pass
``rules=`` to :class:`writ.engine.Engine`).
"""

from __future__ import annotations

import importlib
from typing import Any

DEFAULT_RULES: tuple[str, ...] = (  # construction order = on_grant/on_end/tick order
    "writ.rules.consent:Consents",  # gate_priority 50
    "writ.rules.rollbacks:Rollbacks",  # no hooks (Engine.acquire calls check_plan)
    "writ.rules.freezes:Freezes",  # gate_priority 10
    "writ.rules.stuck:Stuck",
    "writ.evidence.history:History",  # no hooks; the engine's audit trail (who, audit, events, verify)
    "writ.rules.authority:Authority",  # gate_priority 1
    "writ.engine.principals:Principals",  # gate_priority 0: the first gate
)


def load_rule(spec: str | type[Any]) -> type[Any]:
    """The class a ``"module:Class"`` string names (a class is returned as it is)."""
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls
