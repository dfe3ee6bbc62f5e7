"""Prometheus metrics of one ``writ serve`` process (PROTOCOL.md v1.1 "Operations").

Each app gets its own :class:`Metrics` and its own registry (tests build many apps in one
process). What is counted, and where, is chosen so the hot path stays hot:

* **Decisions** (grants, consents, rollbacks, outbound calls, audit rows) are counted from
  the audit rows this process commits: the store hands each committed transaction's rows
  to its ``row_observers`` (never a transaction that rolled back), and each commit's
  duration to its ``commit_observers`` (``writ_store_commit_seconds``). Per grant: a list
  append and a few dict lookups.
* **Hold times** come from the engine's lease-ended hook, after the commit.
* **Gauges** (``writ_leases_held``, ``writ_waiters``) are read from the store at scrape
  time with one count each: store-wide, and free between scrapes.
* **HTTP** (``writ_http_request_duration_seconds``, ``writ_refusals_total``,
  ``writ_lease_acquire_wait_seconds``) is measured by :class:`writ.api.ops.OpsFront` around the
  whole app: route labels are route templates, refusal codes come from the error tree.

Counters are per process: with several servers on one PostgreSQL store, ``sum()`` them.
The gauges are store-wide: ``max()`` them.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from writ._version import __version__
from writ.core.errors import WritError

if TYPE_CHECKING:
    from writ.core.ledger import Sealed
    from writ.core.models import Lease
    from writ.engine import Engine
    from writ.stores.base import Tx

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
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# outcome rows of outbound calls: event -> (kind, outcome)
OUTBOUND = {
    "wake.delivered": ("wake", "delivered"),
    "wake.failed": ("wake", "failed"),
    "wake.retry": ("wake", "retry"),
    "page.retry": ("page", "retry"),
    "page.delivered": ("page", "delivered"),
    "page.failed": ("page", "failed"),
    "page.resolved": ("page", "resolved"),
    "rollback.executed": ("rollback", "delivered"),
    "rollback.failed": ("rollback", "failed"),
}


class Hist:
    """A histogram without locks: every observation happens on the event loop's thread
    (after-commit callbacks and request ends run there). prometheus-client's own Histogram
    takes two locks per observation — measured 0.7–2 µs against 0.1–0.2 µs here, six times per
    acquire+release pair — so the hot families accumulate here and :class:`_Families`
    hands them to prometheus-client at scrape time."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1  # le: value <= bound
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class _Family:
    """One counter or histogram family: its children by label values."""

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.kind, self.name, self.doc, self.labels, self.buckets = kind, name, doc, labels, buckets
        self.values: dict[tuple[str, ...], Any] = {}

    def hist(self, *values: str) -> Hist:
        h = self.values.get(values)
        if h is None:
            h = self.values[values] = Hist(self.buckets)
        return h

    def inc(self, *values: str, by: float = 1) -> None:
        self.values[values] = self.values.get(values, 0) + by

    def family(self) -> Any:
        if self.kind == "counter":
            c = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
            for values, n in self.values.items():
                c.add_metric(list(values), n)
            return c
        h = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for values, hist in self.values.items():
            h.add_metric(list(values), hist.cumulative(), hist.sum)
        return h


class _Families:
    """A prometheus-client collector over :class:`_Family` accumulators."""

    def __init__(self, families: list[_Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        for f in self.families:
            yield f.family()

    def describe(self) -> list[Any]:
        return []


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
        build = Gauge("writ_build_info", "writ's version", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        H, C = "histogram", "counter"
        self.acquire_wait_f = _Family(
            H,
            "writ_lease_acquire_wait_seconds",
            "From an acquire request's arrival to its grant (201), queue wait included",
            buckets=WAIT_BUCKETS,
        )
        self.hold_f = _Family(
            H,
            "writ_lease_hold_seconds",
            "How long a lease was held, observed when it ends (released, expired, revoked)",
            buckets=HOLD_BUCKETS,
        )
        self.commit_f = _Family(
            H,
            "writ_store_commit_seconds",
            "A store commit, to durable COMMIT (SQLite: one group-commit batch from BEGIN; "
            "PostgreSQL: one batch from its start, head lock wait and decisions included)",
            buckets=COMMIT_BUCKETS,
        )
        self.http_f = _Family(
            H,
            "writ_http_request_duration_seconds",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            HTTP_BUCKETS,
        )
        self.refusals = _Family(C, "writ_refusals", "Error answers, by error code", ("code",))
        self.grants = _Family(C, "writ_grants", "Leases granted by this process")
        self.stuck = _Family(
            C,
            "writ_stuck",
            "Leases found stuck: held past max_hold_s, or expired with waiters (lease.stuck rows)",
        )
        self.consents = _Family(
            C,
            "writ_consents",
            "Consent rows by outcome (requested, granted, denied, expired, used)",
            ("outcome",),
        )
        self.rollbacks = _Family(
            C,
            "writ_rollbacks",
            "Rollback rows by outcome (requested, approved, denied, executed, failed, defect)",
            ("outcome",),
        )
        self.outbound = _Family(
            C,
            "writ_outbound_calls",
            "Outbound wake, page and rollback calls by outcome",
            ("kind", "outcome"),
        )
        self.audit_rows = _Family(C, "writ_audit_rows", "Audit rows committed by this process")
        self._relay_families(C, r)
        self.relay: Any = None  # the app's writ.api.relay.Relay, when it has one
        self.sentinel: Any = None  # the app's writ.evidence.sentinel.Sentinel, when it has one
        self.verify_ok = Gauge(
            "writ_audit_verify_ok",
            "1 if the standing verify's last pass found the ledger and the tables as writ wrote "
            "them, 0 if not (alert on 0)",
            registry=None,  # these three are shown from the first pass on (registered then)
        )
        self.verified_rows = Gauge(
            "writ_audit_verified_rows", "Audit rows the standing verify has verified", registry=None
        )
        self.verify_end = Gauge(
            "writ_audit_verify_last_end_timestamp_seconds",
            "When the standing verify's last pass ended (Unix time)",
            registry=None,
        )
        self._verify_shown = False
        self.batch_phases = _Family(
            C,
            "writ_store_batch_seconds",
            "Seconds this process's committed store batches spent per phase (PostgreSQL: "
            "lock = waiting for the head lock and catching up, decide, commit)",
            ("phase",),
        )
        r.register(
            _Families(
                [
                    self.acquire_wait_f,
                    self.hold_f,
                    self.refusals,
                    self.grants,
                    self.stuck,
                    self.consents,
                    self.rollbacks,
                    self.outbound,
                    self.commit_f,
                    self.audit_rows,
                    self.batch_phases,
                    self.relay_calls,
                    self.relay_notes,
                    self.relay_connections,
                    self.http_f,
                ]
            )
        )
        for f in (self.grants, self.stuck, self.audit_rows):
            f.values[()] = 0  # unlabelled counters are exposed from the start
        self.acquire_wait = self.acquire_wait_f.hist()
        self.hold = self.hold_f.hist()
        self.commit = self.commit_f.hist()
        self._http: dict[tuple[str, str, int], Hist] = {}
        self._engine: Engine | None = None

    def _relay_families(self, C: str, r: CollectorRegistry) -> None:
        """The write relay's (writ.api.relay): read from the app's relay at scrape."""
        self.relay_calls = _Family(
            C,
            "writ_relay_calls",
            "Lease writes through the write relay, by outcome: relayed (sent to the writer), "
            "spilled (written here while the writer had 16 of them), lost (the writer went "
            "away before answering), served (answered as the writer, for another server)",
            ("outcome",),
        )
        self.relay_notes = _Family(
            C,
            "writ_relay_notes",
            "Commits whose notes (grants to queued requests, the new chain head) went over "
            "the write relay instead of a PostgreSQL NOTIFY: sent (as the writer, counted "
            "once per commit) and taken (from the writer)",
            ("way",),
        )
        self.relay_connections = _Family(
            C,
            "writ_relay_connections",
            "Client connections through the write relay's hand-off, by how: handed (to the "
            "writer), adopted (served as the writer, handed by another server), refused (sent "
            "to the writer but not a connected TCP socket)",
            ("how",),
        )
        self.relay_role = Gauge(
            "writ_relay_role",
            "1 for this server's role in the write relay (writer, relaying, alone)",
            ["role"],
            registry=r,
        )

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
        """Count ``engine``'s committed rows and time its store's commits."""
        self._engine = engine
        engine.store.row_observers.append(self._count)
        engine.store.commit_observers.append(self.commit.observe)
        engine._on_end.append(self._on_end)

    async def _on_end(self, tx: Tx, lease: Lease) -> None:
        held = tx.now() - lease.acquired_at
        observe = self.hold.observe
        tx.after_commit(lambda: observe(max(held, 0.0)))

    def _count(self, rows: list[Sealed]) -> None:
        counts = self.audit_rows.values
        counts[()] += len(rows)
        for sealed in rows:
            ev = sealed.event
            if ev == "lease.granted":
                self.grants.values[()] += 1
            elif ev == "lease.stuck":
                self.stuck.values[()] += 1
            elif ev.startswith("consent."):
                self.consents.inc(ev[8:])
            elif ev in OUTBOUND:
                kind, outcome = OUTBOUND[ev]
                self.outbound.inc(kind, outcome)
                if kind == "rollback":
                    self.rollbacks.inc(ev[9:])
            elif ev.startswith("rollback."):
                self.rollbacks.inc(ev[9:])

    # ------------------------------------------------------------------ HTTP
    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        h = self._http.get(key)
        if h is None:
            # a client may send any method token: only known ones become label values
            shown = method if method in HTTP_METHODS else "other"
            h = self._http[key] = self.http_f.hist(shown, route, str(status))
            if len(self._http) > 10_000:  # bounded whatever arrives (the labels are)
                self._http.clear()
        h.observe(seconds)

    def refused(self, code: str) -> None:
        self.refusals.inc(code)

    # ------------------------------------------------------------------ exposition
    async def render(self) -> bytes:
        """The text exposition, with the gauges read from the store now."""
        if self.relay is not None:
            for outcome, n in self.relay.counts.items():
                self.relay_calls.values[(outcome,)] = n
            for way, n in self.relay.notes.items():
                self.relay_notes.values[(way,)] = n
            if self.relay.handoff is not None:
                for how, n in self.relay.handoff.counts.items():
                    self.relay_connections.values[(how,)] = n
            now = self.relay.role()
            for role in ("writer", "relaying", "alone"):
                self.relay_role.labels(role=role).set(int(role == now))
        last = self.sentinel.last if self.sentinel is not None else None
        if last is not None:
            if not self._verify_shown:
                self._verify_shown = True
                for g in (self.verify_ok, self.verified_rows, self.verify_end):
                    self.registry.register(g)
            self.verify_ok.set(int(last.ok))
            self.verified_rows.set(self.sentinel.at[0])
            self.verify_end.set(self.sentinel.last_end)
        if self._engine is not None:
            phases = self.batch_phases.values
            for phase, seconds in self._engine.store.phase_s.items():
                phases[(phase,)] = seconds
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
            "Requests the gate refused, by code (held, lease_lost, unauthenticated, unavailable, "
            "too_many_requests)",
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
