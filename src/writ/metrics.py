"""Prometheus metrics of one ``writ serve`` process (PROTOCOL.md v1.1 "Operations").

Each app gets its own :class:`Metrics` and its own registry (tests build many apps in one
process). What is counted, and where, is chosen so the hot path stays hot:

* **Decisions** (grants, consents, rollbacks, outbound calls, audit rows) are counted from
  the audit rows this process commits (:mod:`writ.observe`: after the commit, never for a
  transaction that rolled back), which also times each transaction into
  ``writ_store_commit_seconds``. Per grant: a list append and a dict lookup.
* **Hold times** come from the engine's lease-ended hook, after the commit.
* **Gauges** (``writ_leases_held``, ``writ_waiters``) are read from the store at scrape
  time with one count each: store-wide, and free between scrapes.
* **HTTP** (``writ_http_request_duration_seconds``, ``writ_refusals_total``,
  ``writ_lease_acquire_wait_seconds``) is measured by :class:`writ.ops.OpsFront` around the
  whole app: route labels are route templates, refusal codes come from the error tree.

Counters are per process: with several servers on one PostgreSQL store, ``sum()`` them.
The gauges are store-wide: ``max()`` them.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__
from .errors import WritError

if TYPE_CHECKING:
    from .engine import Engine
    from .models import Lease
    from .observe import Rows
    from .stores.base import Tx

T = TypeVar("T")

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# sub-millisecond grants up to a five-minute wait (MAX_WAIT_S)
WAIT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
# a held lease: from an instant hand-off to hour-long holds (ttl_s goes to 3600, renewed)
HOLD_BUCKETS = (0.001, 0.01, 0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
# a store transaction: an in-memory commit to a slow fsync or a database round trip
COMMIT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
HTTP_BUCKETS = WAIT_BUCKETS

# outcome rows of outbound calls: event -> (kind, outcome)
OUTBOUND = {
    "wake.delivered": ("wake", "delivered"),
    "wake.failed": ("wake", "failed"),
    "page.delivered": ("page", "delivered"),
    "page.failed": ("page", "failed"),
    "page.resolved": ("page", "resolved"),
    "rollback.executed": ("rollback", "delivered"),
    "rollback.failed": ("rollback", "failed"),
}


class Metrics:
    """The metric families of PROTOCOL.md v1.1, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.leases_held = Gauge(
            "writ_leases_held", "Leases held now, store-wide (read at scrape time)", registry=r
        )
        self.waiters = Gauge(
            "writ_waiters", "Requests queued for a lease now, store-wide", registry=r
        )
        self.store_up = Gauge(
            "writ_store_up", "1 if the store answered the last scrape's read, else 0", registry=r
        )
        self.acquire_wait = Histogram(
            "writ_lease_acquire_wait_seconds",
            "From an acquire request's arrival to its grant (201), queue wait included",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.hold = Histogram(
            "writ_lease_hold_seconds",
            "How long a lease was held, observed when it ends (released, expired, revoked)",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "writ_refusals", "Error answers, by error code", ["code"], registry=r
        )
        self.grants = Counter("writ_grants", "Leases granted by this process", registry=r)
        self.stuck = Counter(
            "writ_stuck",
            "Leases found stuck: held past max_hold_s, or expired with waiters (lease.stuck rows)",
            registry=r,
        )
        self.consents = Counter(
            "writ_consents",
            "Consent rows by outcome (requested, granted, denied, expired, used)",
            ["outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "writ_rollbacks",
            "Rollback rows by outcome (requested, approved, denied, executed, failed, defect)",
            ["outcome"],
            registry=r,
        )
        self.outbound = Counter(
            "writ_outbound_calls",
            "Outbound wake, page and rollback calls by outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.commit = Histogram(
            "writ_store_commit_seconds",
            "A store write transaction, from submit to durable commit",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.audit_rows = Counter(
            "writ_audit_rows", "Audit rows committed by this process", registry=r
        )
        self.http = Histogram(
            "writ_http_request_duration_seconds",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        build = Gauge("writ_build_info", "writ's version", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._refusal_children: dict[str, Any] = {}
        self._engine: Engine | None = None

    # ------------------------------------------------------------------ the engine
    @classmethod
    def for_engine(cls, engine: Engine) -> Metrics:
        """The metrics of ``engine``, instrumented once however many apps serve it."""
        m = _BY_ENGINE.get(engine)
        if m is None:
            m = _BY_ENGINE[engine] = cls()
            m.instrument(engine)
        return m

    def instrument(self, engine: Engine) -> None:
        """Count ``engine``'s committed rows and time its store transactions."""
        from .observe import observed

        self._engine = engine
        obs = observed(engine)
        obs.add_sink(self._count)
        obs.add_timer(self.commit.observe)
        engine._on_end.append(self._on_end)

    async def _on_end(self, tx: Tx, lease: Lease) -> None:
        held = tx.now() - lease.acquired_at
        observe = self.hold.observe
        tx.after_commit(lambda: observe(max(held, 0.0)))

    def _count(self, rows: Rows, context: dict[str, str]) -> None:
        self.audit_rows.inc(len(rows))
        for sealed, _ in rows:
            ev = sealed.event
            if ev == "lease.granted":
                self.grants.inc()
            elif ev == "lease.stuck":
                self.stuck.inc()
            elif ev.startswith("consent."):
                self.consents.labels(outcome=ev[8:]).inc()
            elif ev in OUTBOUND:
                kind, outcome = OUTBOUND[ev]
                self.outbound.labels(kind=kind, outcome=outcome).inc()
                if kind == "rollback":
                    self.rollbacks.labels(outcome=ev[9:]).inc()
            elif ev.startswith("rollback."):
                self.rollbacks.labels(outcome=ev[9:]).inc()

    # ------------------------------------------------------------------ HTTP
    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http.labels(method, route, str(status))
        child.observe(seconds)

    def refused(self, code: str) -> None:
        child = self._refusal_children.get(code)
        if child is None:
            child = self._refusal_children[code] = self.refusals.labels(code)
        child.inc()

    # ------------------------------------------------------------------ exposition
    async def render(self) -> bytes:
        """The text exposition, with the gauges read from the store now."""
        if self._engine is not None:
            try:
                held, waiting = await self._engine.store.read(lambda tx: tx.gauges())
            except WritError:
                self.store_up.set(0)
            else:
                self.store_up.set(1)
                self.leases_held.set(held)
                self.waiters.set(waiting)
        return generate_latest(self.registry)


_BY_ENGINE: weakref.WeakKeyDictionary[Engine, Metrics] = weakref.WeakKeyDictionary()


class GateMetrics:
    """``writ gate``'s own families: decisions by outcome and the upstream's latency."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.passed = Counter(
            "writ_gate_passed", "Mutating requests the gate let through", registry=r
        )
        self.refused = Counter(
            "writ_gate_refused",
            "Requests the gate refused, by code (held, lease_lost, unauthenticated, unavailable)",
            ["code"],
            registry=r,
        )
        self.upstream = Histogram(
            "writ_gate_upstream_seconds",
            "From forwarding a request to the upstream's response headers, by outcome",
            ["outcome"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        build = Gauge("writ_build_info", "writ's version", ["version"], registry=r)
        build.labels(version=__version__).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
