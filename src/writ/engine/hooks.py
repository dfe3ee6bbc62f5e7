"""The interface between the engine and its rules: what a rule may call, and what it may override.

A rule (consent, freezes, stuck-holder waking, authority, principals, ...) is a :class:`Rule`
subclass. It overrides only the hooks it needs (:meth:`Rule.gate` at every grant,
:meth:`Rule.on_grant` after one, :meth:`Rule.on_end` when a lease ends, :meth:`Rule.tick` on every
sweep) and reaches the engine only through :class:`EngineView`. The engine builds its rules from a
list of ``"module:Class"`` strings (:data:`writ.engine.defaults.DEFAULT_RULES`), so it imports none
of them: this module imports only the core and the store interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from writ.core.clock import rfc3339
from writ.core.errors import LeaseLost, WritError
from writ.core.ledger import Verification
from writ.core.models import Lease, Principal, Waiter
from writ.core.policy import Policy
from writ.core.resources import BlastRadius
from writ.stores.base import Store, Tx

if TYPE_CHECKING:
    from writ.core.identity import Identity
    from writ.engine.wake import Caller

MAX_TTL_S = 3600
MAX_WAIT_S = 300  # the longest a caller waits: for a grant, or for events (a long poll)
SYSTEM = "writ"  # agent_id of rows writ writes on its own (expiry, bootstrap)

R = TypeVar("R")  # a rule class, for EngineView.rule


@dataclass(slots=True)
class Request:
    """A validated acquire request."""

    resource: str
    intent: str
    ttl_s: float
    wait_s: float
    touches: list[str]
    consent_id: str | None
    rollback: dict[str, Any] | None
    principal: str
    expand: tuple[str, ...] = ()
    default_touches: bool = False  # touches omitted: the authority rule may narrow them
    waiter_id: str | None = None  # queued as this waiter: the row that ends its wait names it

    def to_json(self) -> dict[str, Any]:
        out = {
            "resource": self.resource,
            "intent": self.intent,
            "ttl_s": self.ttl_s,
            "wait_s": self.wait_s,
            "touches": self.touches,
            "consent_id": self.consent_id,
            "rollback": self.rollback,
        }
        if self.default_touches:  # the hand-off narrows them to the grants of its turn
            out["default_touches"] = True
        return out


def lock_row(
    event: str, agent: str, resource: str, lock: Lease | None, notes: str
) -> dict[str, Any]:
    """Audit fields of a row about ``resource`` that names the lease holding it (or standing
    in a request's way), if any, but not its rollback plan (see :meth:`Engine.lease_row`)."""
    return {
        "event": event,
        "agent_id": agent,
        "resource": resource,
        "lock_holder": lock.holder if lock else "none",
        "lock_key": lock.lock_key if lock else None,
        "lock_acquired_at": rfc3339(lock.acquired_at) if lock else None,
        "fencing_token": lock.fencing_token if lock else None,
        "notes": notes,
    }


class EngineView(Protocol):
    """What a rule may use. Everything else in the engine is private."""

    store: Store
    policy: Policy  # mutable: Authority.reload assigns it
    blast: BlastRadius
    caller: Caller  # read at call time: tests swap its transport
    identity: Identity  # Authority.reload swaps it

    @property
    def audit_changed(self) -> asyncio.Event:
        """The current event; the engine swaps it, so re-read it on every loop."""

    def lease_row(
        self, lease: Lease, event: str, agent: str, notes: str, **extra: Any
    ) -> dict[str, Any]: ...
    def override_queue(self, lease: Lease) -> str | None: ...
    async def human_queue(self, tx: Tx, name: str | None) -> str | None: ...
    def call_later(
        self,
        tx: Tx,
        kind: str,
        route: str | None,
        payload: dict[str, Any],
        row: dict[str, Any],
    ) -> None: ...
    async def policy_objects(
        self, tx: Tx, paths: Sequence[str], kind: str
    ) -> list[dict[str, Any]]: ...
    async def holder(self, tx: Tx, resource: str) -> Lease | None: ...
    async def lock_columns(self, tx: Tx, resource: str) -> dict[str, Any]: ...
    async def refusal_row(
        self, event: str, actor: Principal | None, resource: str, err: WritError
    ) -> None: ...
    async def holder_info(self, tx: Tx, lease: Lease) -> dict[str, Any]: ...
    async def principal(self, name: str) -> Principal | None: ...
    async def authenticate(self, token: str | None) -> Principal: ...
    async def held_lease(
        self, tx: Tx, principal: Principal, lease_id: str, action: str
    ) -> Lease | WritError: ...
    async def lost(self, tx: Tx, lease: Lease) -> LeaseLost | None: ...
    async def end(
        self,
        tx: Tx,
        lease: Lease,
        state: str,
        by: str,
        notes: str,
        extra: dict[str, Any] | None = None,
        lock_delay: bool = False,
    ) -> Lease: ...
    async def withdraw(self, tx: Tx, w: Waiter, notes: str, error: WritError) -> None: ...
    async def events(
        self,
        prefix: str | None = None,
        after_seq: int = 0,
        wait_s: Any = 0,
        limit: int = 1000,
    ) -> dict[str, Any]: ...
    def add_ticker(self, tick: Callable[[], Awaitable[Any]]) -> None: ...
    def rule(self, cls: type[R]) -> R: ...


class Rule:
    """A rule plugged into the engine. Override only what you need: the engine hooks in only
    the methods a rule overrides (no no-op awaits on the grant path). Hooks run in the order of
    the engine's rule list, except gates, which are sorted (stably) by :attr:`gate_priority`."""

    name: ClassVar[str]  # "consents", "freezes", ...: the engine.<name> compat attribute
    gate_priority: ClassVar[int] = 100  # lower runs first

    def __init__(self, engine: EngineView) -> None:
        self.engine = engine

    async def gate(self, tx: Tx, me: Principal, req: Request) -> WritError | None:
        """Checked at every grant (and every hand-off from the queue): an error refuses it."""
        return None

    async def on_grant(self, tx: Tx, req: Request, lease: Lease) -> None:
        """Runs in the grant's transaction, after the lease is written."""
        return None

    async def on_end(self, tx: Tx, lease: Lease) -> None:
        """Runs in the transaction that ends a lease (release, expiry, revoke)."""
        return None

    async def tick(self) -> None:
        """Runs on every sweep at which :meth:`due` says there is work."""
        return None

    async def due(self, tx: Tx, now: float) -> bool:
        """Whether :meth:`tick` has work at ``now``, asked in the sweep's read (``tx``):
        False lets an idle sweep write nothing. A rule that does not say ticks every sweep."""
        return True


class AuditTrail(Protocol):
    """What Engine.who/audit/events/verify delegate to (writ.evidence.history.History)."""

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]: ...
    async def audit(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]: ...
    async def events(
        self,
        prefix: str | None = None,
        after_seq: int = 0,
        wait_s: Any = 0,
        limit: int = 1000,
    ) -> dict[str, Any]: ...
    async def verify(self) -> Verification: ...


class PlanChecker(Protocol):
    """What Engine.acquire asks of the rollbacks rule: a rollback plan checked."""

    async def check_plan(self, plan: dict[str, Any]) -> dict[str, Any]: ...
