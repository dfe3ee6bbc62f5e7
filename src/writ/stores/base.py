"""The store contract: what the engine needs from a backend, and nothing about SQL.

A store keeps writ's state (principals, leases, the wait queue, the policy objects of the
safety rules) and its audit ledger, and gives the engine two things:

* ``await store.transact(fn)`` runs ``fn(tx)`` atomically: every write it makes, and every
  audit row it appends, commits together or not at all. ``fn`` is an ``async`` function that
  awaits only ``tx`` methods. If it raises, nothing it did is kept; to keep its writes (an
  audit row recording a refusal, say) yet fail the call, it *returns* the error and the engine
  raises it after the commit. A store may run many transactions in one commit (group
  commit); each still succeeds or fails alone. ``transact`` returns only once the commit is
  durable: an acknowledged change survives a killed process and a power cut.
* ``await store.read(fn)`` runs ``fn(tx)`` on a consistent, committed snapshot.

Rules every backend keeps:

* **Time** comes from the store's clock (``tx.now()``), never a client's: the host clock
  for an embedded store, the database's ``clock_timestamp()`` for a server database.
  Times are float seconds since the epoch.
* **Fencing tokens** come from ``tx.next_token()``: strictly increasing across the whole
  store — every process that shares it, every restart — and never reused, even when the
  transaction that drew one rolls back.
* **The ledger** has one total order: ``seq`` 1, 2, 3, ... without gaps, each row hashed onto
  the one before (:mod:`writ.core.ledger`). Rows are appended only by ``tx.append``, in the
  transaction of the change they record; the store refuses UPDATE and DELETE on them.
* **Notifications**: ``tx.notify(kind, payload)`` is delivered after commit, to the listener
  of every process that shares the store (``store.set_listener``); nothing is delivered
  if the transaction rolls back. After every commit that appended rows the store also
  delivers ``("audit", {"seq": head})``. A store that tells other processes through the
  database (PostgreSQL's ``NOTIFY``) may hand its notes to some of them another way
  instead: those in ``store.note_peers`` (their ``instance``) are given them through
  ``store.note_sink`` after commit — writ's write relay, :mod:`writ.api.relay` — and take
  them with ``store.take_notes``; ``store.notes_lost()`` says that way broke, and the store
  delivers what may have been missed meanwhile, as after its own listening connection broke.
* **Related lookups** (``held_related``, ``waiters_related``, ``objects_related``) find
  the records on, above or below the given paths by indexes (``related_clauses``).
* Driver errors never escape: a backend raises :class:`writ.errors.Unavailable` when the
  database cannot be reached, and the engine's own errors pass through unchanged.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from writ.core.ledger import Record, Sealed, row_from, text_pages
from writ.core.models import Lease, Principal, Waiter
from writ.stores.rows import Unreadable, left_out

log = logging.getLogger(__name__)

T = TypeVar("T")
Listener = Callable[[str, dict[str, Any]], None]
Note = tuple[str, dict[str, Any]]


def shrink_note(payload: dict[str, Any]) -> dict[str, Any]:
    """A note too large to carry (in a NOTIFY, over the relay) keeps its short fields and
    says it was cut. Another process's note is only a hint (the receiver reads the database),
    so what is cut is what it would not have trusted anyway: a granted lease, a long error."""
    out: dict[str, Any] = {"truncated": True}
    for k, v in payload.items():
        if k == "error" and isinstance(v, dict):
            out[k] = {"code": v.get("code"), "message": str(v.get("message", ""))[:1000]}
        elif len(json.dumps(v)) <= 500:
            out[k] = v
    return out


LEASE_LIFE: tuple[str, ...] = (
    "lease.granted",
    "lease.renewed",
    "lease.released",
    "lease.expired",
    "lease.revoked",
)
"""The events of a lease's life, in the order they can come (see :meth:`Tx.audit_lease_life`)."""

WaiterLife = tuple[Waiter, list[dict[str, Any]], "str | None", "dict[str, Any] | None"]
"""A queued request with its ``lease.queued`` rows, the lease granted to it and the row that
ended its wait, if any (:meth:`Tx.waiter_lives`)."""
WAIT_ENDS: tuple[str, ...] = ("lease.granted", "lease.denied", "lease.refused")
"""The events of the row that ends a wait (a grant from the queue, a refusal, a withdrawal),
which names the waiter at the end of its notes (:func:`writ.core.models.waited_as`)."""
LONGEST_WAIT_S = 300.0  # the engine's MAX_WAIT_S: no request waits longer
ENDS_WITHIN_S = 5.0  # a wait's end is written by then after its deadline (or it is stale)

PRINCIPAL_LIFE: tuple[tuple[str, ...], ...] = (
    ("principal.added",),
    ("principal.disabled", "principal.enabled"),
    ("principal.added", "principal.queues"),
    ("principal.added", "principal.rotated", "principal.enabled"),
)
"""The rows :meth:`Tx.principal_lives` gives a principal, the latest of each group: its
added row, and the latest saying if it is disabled, its queues, its token's expiry."""


ENDS_AS: tuple[str, ...] = ("granted ", "refused '", 'refused "', "withdrawn '", 'withdrawn "')
"""How writ begins the notes of a row that ends a wait (its grant, refusal or withdrawal,
the intent quoted): a row whose notes end in an agent's words, begun otherwise (``refused
change to ATTR: …``, ``refused NAME: …``), ends no wait, however those words end."""


def wait_end(body: str) -> tuple[str, Any] | None:
    """``(waiter_id, agent_id)`` of a row's stored body that ends a wait as writ words one
    (notes beginning as :data:`ENDS_AS`, ending ``; waiter ID``), else None (unreadable too).
    The one reading of a wait's end: the table check's and the walk's
    (:class:`~writ.stores.queued.OpenWaits`)."""
    try:
        row = json.loads(body)
        notes = row.get("notes")
    except (ValueError, AttributeError):
        return None
    if not isinstance(notes, str) or not notes.startswith(ENDS_AS):
        return None
    _, said, waiter_id = notes.rpartition("; waiter ")
    return (waiter_id, row.get("agent_id")) if said else None


def _wait_window(w: Waiter) -> tuple[float, float]:
    """When the row that ends ``w``'s wait is looked for: from its ``enqueued_at`` to
    :data:`ENDS_WITHIN_S` after its deadline (at most :data:`LONGEST_WAIT_S` after it
    queued). A copy written back later is past its deadline: dropped, never granted."""
    return w.enqueued_at - 1e-6, min(w.deadline, w.enqueued_at + LONGEST_WAIT_S) + ENDS_WITHIN_S


OBJECT_COLUMNS: tuple[str, ...] = (
    "kind",
    "id",
    "resource",
    "state",
    "data",
    "created_at",
    "expires_at",
)
"""The columns :meth:`Tx.objects_by_key` gives for each policy object (``data`` decoded)."""

Probe = tuple[str, tuple[str, ...], float, float]
"""``(resource, events, since, until)``: the rows on ``resource`` (exact) with one of
``events`` and a time within ``[since, until]``, oldest first, at most :data:`PROBE_ROWS`
(:meth:`Tx.audit_probes`); an ``until`` of 0 or less asks nothing."""
PROBE_ROWS = 8


class Tx(ABC):
    """One transaction's view of the store. Methods are ``async`` but must not be awaited
    outside the transaction function they were handed to."""

    # ---- clock and tokens -------------------------------------------------------------
    @abstractmethod
    def now(self) -> float:
        """The store's clock, in seconds since the epoch."""

    @abstractmethod
    async def next_token(self) -> int:
        """The next fencing token: greater than every token this store ever handed out."""

    @abstractmethod
    async def token_counter(self) -> int:
        """The last fencing token handed out, as the store keeps it (0: none; for verify)."""

    # ---- principals ---------------------------------------------------------------------
    @abstractmethod
    async def insert_principal(self, principal: Principal, token_hash: str) -> None:
        """Add a principal; :class:`~writ.errors.Conflict` if the name is taken."""

    @abstractmethod
    async def get_principal(self, name: str) -> Principal | None: ...

    @abstractmethod
    async def principal_by_token(self, token_hash: str) -> Principal | None: ...

    @abstractmethod
    async def list_principals(self) -> list[Principal]: ...

    @abstractmethod
    async def update_principal(self, principal: Principal, token_hash: str | None = None) -> None:
        """Write back a principal's ``queues``, ``disabled_at``, ``disabled_reason`` and
        ``token_expires_at``; with ``token_hash``, replace its token too (the old one is
        refused from this commit on)."""

    # ---- leases -------------------------------------------------------------------------
    @abstractmethod
    async def insert_lease(self, lease: Lease, request_id: str | None = None) -> None:
        """Store a new lease; ``request_id`` names the queued request it was granted to."""

    @abstractmethod
    async def update_lease(self, lease: Lease) -> None:
        """Write back a lease's ``state``, ``expires_at``, ``ttl_s`` and ``ended_at``."""

    @abstractmethod
    async def get_lease(self, lease_id: str, for_update: bool = False) -> Lease | None:
        """A lease by id; ``for_update`` locks its row until the transaction ends."""

    @abstractmethod
    async def lease_for_request(self, request_id: str) -> Lease | None:
        """The lease granted to a queued request, if it was granted."""

    @abstractmethod
    async def held_related(self, paths: Sequence[str]) -> list[Lease]:
        """Leases in state ``held`` (past their expiry or not) related to any path,
        locked for update in a server database."""

    @abstractmethod
    async def due_leases(self, now: float, limit: int) -> list[Lease]:
        """Held leases whose ``expires_at`` is at or before ``now``, earliest first."""

    @abstractmethod
    async def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` among held leases, or None."""

    @abstractmethod
    async def held_leases(self) -> list[Lease]:
        """Every lease in state ``held`` (past its expiry or not), as the leases table holds
        it: read from the table itself, never a cache (verify compares the table with the
        ledger, see :mod:`writ.stores.held`)."""

    @abstractmethod
    async def list_leases(
        self,
        prefix: str | None,
        state: str | None,
        limit: int,
        holder: str | None = None,
        before: int | None = None,
    ) -> list[Lease]:
        """Leases under ``prefix`` (or all), newest first (by fencing token); with
        ``before``, only those whose token is lower (the next page of a long list)."""

    # ---- wait queue ---------------------------------------------------------------------
    @abstractmethod
    async def insert_waiter(self, waiter: Waiter) -> Waiter:
        """Queue a request; the store assigns ``seq``, greater than every earlier one."""

    @abstractmethod
    async def delete_waiter(self, waiter_id: str) -> bool:
        """Remove a queued request; False when it was no longer queued."""

    @abstractmethod
    async def waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None, limit: int | None = None
    ) -> list[Waiter]:
        """Queued requests related to any path (``seq < before_seq`` if given), FIFO order."""

    @abstractmethod
    async def waiters_of(self, principal: str) -> list[Waiter]:
        """Every request ``principal`` has queued, FIFO order."""

    @abstractmethod
    async def count_waiters_related(
        self, paths: Sequence[str], before_seq: int | None = None
    ) -> int: ...

    @abstractmethod
    async def gauges(self) -> tuple[int, int]:
        """``(held, waiting)``: leases held now (not past their expiry) and queued requests,
        store-wide — for ``/metrics``, one cheap count each."""

    # ---- policy objects (changes, consents, rollbacks, freezes, ...) -------------------
    @abstractmethod
    async def put_object(
        self,
        kind: str,
        obj_id: str,
        resource: str,
        state: str,
        data: dict[str, Any],
        expires_at: float | None = None,
    ) -> None:
        """Insert or replace a policy object (a JSON document with indexed columns)."""

    @abstractmethod
    async def get_object(
        self, kind: str, obj_id: str, for_update: bool = False
    ) -> dict[str, Any] | None:
        """The object's ``data`` (with ``state``/``expires_at`` columns merged in), or None."""

    @abstractmethod
    async def objects_related(
        self, kind: str, paths: Sequence[str], states: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind whose resource is related to any path, oldest first."""

    async def objects_related_many(
        self, specs: Sequence[tuple[str, Sequence[str]]], paths: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """:meth:`objects_related` for several ``(kind, states)`` at once, by kind. A store
        may answer with one query, and repeat the answer within the transaction until it
        writes; this default asks once per kind."""
        return {kind: await self.objects_related(kind, paths, states) for kind, states in specs}

    @abstractmethod
    async def objects_due(
        self, kind: str, state: str, now: float, limit: int
    ) -> list[dict[str, Any]]:
        """Objects of a kind and state whose ``expires_at`` is at or before ``now``."""

    @abstractmethod
    async def list_objects(
        self, kind: str, states: Sequence[str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    # ---- ledger -------------------------------------------------------------------------
    @abstractmethod
    async def append(self, fields: dict[str, Any]) -> Sealed:
        """Append one audit row (sealed onto the chain head) in this transaction."""

    @abstractmethod
    async def audit_rows(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
        upto: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows after ``after_seq`` in seq order, under ``prefix``, in ``[since, until]``;
        with ``upto``, only rows up to that seq, read in seq order (no index of the filters:
        the cost of a window is its width, however many rows the filters match elsewhere)."""

    async def audit_candidates(
        self, prefix: str | None, since: float | None, until: float | None, cap: int
    ) -> int:
        """How many rows an indexed read under these filters would visit, counted up to
        ``cap``; 0 where the database plans its own reads (one read is best there)."""
        return 0

    @abstractmethod
    async def audit_head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last row written, as the store keeps it beside the chain
        (moved in each row's transaction), ``(0, GENESIS)`` when empty. Verify compares the
        chain's end with it: rows deleted from the end are found missing."""

    @abstractmethod
    async def audit_latest(
        self, resources: Sequence[str], events: Sequence[str], at: float
    ) -> dict[str, Any] | None:
        """The last row at or before ``at`` on one of ``resources`` (exact), of ``events``."""

    @abstractmethod
    async def audit_for_lock_key(self, lock_key: str) -> list[dict[str, Any]]:
        """Every row naming a lock key, in seq order."""

    @abstractmethod
    async def audit_lease_life(
        self, lock_key: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Of the rows naming ``lock_key`` (by the ``lock_key`` and ``event`` columns): the
        first ``lease.granted`` and the last of its lease's life (:data:`LEASE_LIFE`:
        granted, renewed, released, expired, revoked), read back as wire rows. Two index
        probes, however many rows the lease has (its ``gate.passed`` rows are never read)."""

    async def held_lives(
        self, lease_ids: Sequence[str]
    ) -> list[tuple[Lease, dict[str, Any] | None, dict[str, Any] | None]]:
        """Each lease of ``lease_ids`` that is still held, as the leases table holds it, with
        the two rows :meth:`audit_lease_life` gives for its lock key, by fencing token
        (verify reads them in one snapshot). This default asks lease by lease; a server
        store answers in one statement."""
        out = []
        for lease_id in lease_ids:
            try:
                lease = await self.get_lease(lease_id)
            except Unreadable as exc:  # written by hand since it was listed: verify names it
                left_out(self).append(exc)
                continue
            if lease is not None and lease.state == "held":
                out.append((lease, *await self.audit_lease_life(lease.lock_key)))
        return sorted(out, key=lambda life: life[0].fencing_token)

    async def principal_lives(
        self, names: Sequence[str]
    ) -> list[tuple[Principal, list[dict[str, Any] | None]]]:
        """Each principal of ``names`` as the principals table holds it (never a cache), by
        name, with the latest row of each group of :data:`PRINCIPAL_LIFE` by the
        ``resource`` column (``principals/NAME``; None: no such row). Verify reads them in
        one snapshot. This default asks principal by principal; a server store answers in
        one statement."""
        wanted = set(names)
        out = []
        for p in sorted(await self.list_principals(), key=lambda p: p.name):
            if p.name in wanted:
                res = [f"principals/{p.name}"]
                out.append((p, [await self.audit_latest(res, g, 1e18) for g in PRINCIPAL_LIFE]))
        return out

    @abstractmethod
    async def waiter_seqs(self) -> list[int]:
        """The ``seq`` of every queued request, in order, as the waiters table holds them
        (verify lists the queue with it, :mod:`writ.stores.queued`)."""

    @abstractmethod
    async def waiters_between(self, after: int, last: int) -> list[Waiter]:
        """The queued requests whose ``seq`` is above ``after`` and at most ``last``, FIFO
        order, read from the waiters table."""

    @abstractmethod
    async def audit_waits_ended(
        self, windows: Sequence[tuple[str, float, float]], waiter_ids: Sequence[str]
    ) -> list[tuple[int, str, str, float, str]]:
        """``(seq, body, hash, ts, resource)`` of the :data:`WAIT_ENDS` rows on each
        ``(resource, since, until)``, within that time, that name a waiter (``; waiter ``
        in their stored body): one of ``waiter_ids``, or any (the caller picks). An index
        range (resource, ts) a window, as long as its rows."""

    @abstractmethod
    async def audit_at(self, resource: str, event: str, at: float) -> list[dict[str, Any]]:
        """The ``event`` rows on ``resource`` (exact) whose time is the microsecond ``at``
        shows (a row keeps the clock reading of its transaction to the microsecond), in seq
        order: one index probe (resource, ts)."""

    async def waiter_lives(self, after: int, last: int) -> list[WaiterLife]:
        """Each queued request of :meth:`waiters_between` ``after`` and ``last``, with the
        ``lease.queued`` rows on its resource at its ``enqueued_at`` (:meth:`audit_at`), the
        id of a lease granted to it (None: none; :meth:`lease_for_request`) and the first
        :data:`WAIT_ENDS` row on its resource, by its principal, naming it (``; waiter ID``
        ending its notes) within :func:`_wait_window` (:meth:`with_ends`). Verify reads them
        in one snapshot.
        This default asks waiter by waiter; a server store answers in two statements."""
        lives = []
        for w in await self.waiters_between(after, last):
            rows = await self.audit_at(w.resource, "lease.queued", w.enqueued_at)
            granted = await self.lease_for_request(w.waiter_id)
            lives.append((w, rows, granted.lease_id if granted else None))
        return await self.with_ends(lives)

    async def with_ends(
        self, lives: Sequence[tuple[Waiter, list[dict[str, Any]], str | None]]
    ) -> list[WaiterLife]:
        """``lives`` (of :meth:`waiter_lives`), each with the row that ended its wait: read
        with :meth:`audit_waits_ended`, the waits on one resource that overlap in one window
        (so a resource with many waiters is read once, and never beyond their waits)."""
        asked: list[tuple[str, float, float]] = []
        latest: dict[str, int] = {}  # the index in asked of each resource's latest window
        for lo, hi, res in sorted((*_wait_window(w), w.resource) for w, _, _ in lives):
            i = latest.get(res)
            if i is not None and lo <= asked[i][2]:  # overlaps it (sorted by start): widen it
                asked[i] = (res, asked[i][1], max(hi, asked[i][2]))
            else:
                latest[res] = len(asked)
                asked.append((res, lo, hi))
        named: dict[tuple[str, str], list[tuple[int, str, str, float, str, Any]]] = {}
        if asked:
            for found in await self.audit_waits_ended(asked, [w.waiter_id for w, _, _ in lives]):
                end = wait_end(found[1])
                if end is not None:
                    named.setdefault((end[0], found[4]), []).append((*found, end[1]))
        out: list[WaiterLife] = []
        for w, rows, granted in lives:
            lo, hi = _wait_window(w)
            hits = [
                f[:5]
                for f in named.get((w.waiter_id, w.resource), [])
                if lo <= f[3] <= hi and f[5] == w.principal  # writ writes it as the waiter
            ]
            first = min(hits) if hits else None
            out.append(
                (w, rows, granted, row_from(first[1], first[2], first[0]) if first else None)
            )
        return out

    @abstractmethod
    async def object_keys(self, kind: str, states: Sequence[str] | None = None) -> list[str]:
        """The id of every policy object of ``kind`` (in ``states``, if given), by id: read
        from the objects table itself (verify compares it with the ledger, see
        :mod:`writ.stores.policy_objects`)."""

    @abstractmethod
    async def objects_by_key(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The policy objects of ``kind`` among ``ids`` as the objects table holds them, by
        id: each a dict of :data:`OBJECT_COLUMNS` (``data`` decoded, never merged)."""

    @abstractmethod
    async def objects_made(
        self, probes: Sequence[tuple[str, str, float, float]]
    ) -> list[list[str]]:
        """For each ``(kind, resource, since, until)``, the ids of the policy objects of
        ``kind`` on ``resource`` (exact) made within ``[since, until]`` (their
        ``created_at``), oldest first: an index range each (``objects_by_resource``). Verify
        looks for the objects the ledger says exist (:mod:`writ.stores.open_objects`)."""

    async def audit_probes(self, probes: Sequence[Probe]) -> list[list[dict[str, Any]]]:
        """The rows of each :data:`Probe`, in order: an index range of the ``resource``
        column each (``audit_by_resource``), never a parse of the ledger. Verify reads them
        in one snapshot. This default asks probe by probe; a server store answers in one
        statement."""
        return [await self.audit_window(*p) if p[3] > 0 else [] for p in probes]

    @abstractmethod
    async def audit_window(
        self, resource: str, events: Sequence[str], since: float, until: float
    ) -> list[dict[str, Any]]:
        """The rows of one :data:`Probe`: on ``resource`` with one of ``events``, at a time
        within ``[since, until]``, oldest first, at most :data:`PROBE_ROWS`."""

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Deliver ``(kind, payload)`` to every listener after this transaction commits."""
        self.notes.append((kind, payload))

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` in this process once this transaction has committed (never if it
        rolls back) — for work that must happen once, where the decision was made, such as
        an outbound wake call. Stores call :meth:`committed` after the commit."""
        self.__dict__.setdefault("_after_commit", []).append(fn)

    # The caller waits after this transaction anyway (a queue join: its request is answered
    # at the grant or at its deadline, not at this commit), so a store may hold the commit
    # a moment for company — the release that will serve it, say. A hint; stores may ignore it.
    patient = False

    def noted(self, sealed: Sealed) -> None:
        """Remember an appended row for the store's row observers (stores call this from
        ``append`` when ``store.row_observers`` is not empty)."""
        self.__dict__.setdefault("_sealed", []).append(sealed)

    def committed(self) -> None:
        """Hand the rows this transaction appended to the store's row observers, then run
        the :meth:`after_commit` callbacks (called by the store, after the commit)."""
        sealed = self.__dict__.pop("_sealed", None)
        if sealed:
            for observe in getattr(self, "store").row_observers:  # noqa: B009 - each backend's Tx has it
                observe(sealed)
        for fn in self.__dict__.pop("_after_commit", []):
            fn()

    notes: list[tuple[str, dict[str, Any]]]


class Store(ABC):
    """A backend. Open with :func:`writ.stores.open_store`; close when done."""

    url: str
    #: True when every change to principals — by writ or by hand — reaches every process's
    #: listener as a ``principals`` note, and reads are costly enough to remember tokens
    #: briefly (see :mod:`writ.engine.principals`). A store without it is asked on every request.
    announces_principal_changes = False
    fingerprint: str | None = None  # the blast radius's digest (a store shared checks it)

    def __init__(self) -> None:
        self._listener: Listener | None = None
        # observers (writ.telemetry.metrics): the rows of each committed write transaction, and how
        # long each commit took (SQLite: a group-commit batch; PostgreSQL: a transaction),
        # from BEGIN to durable COMMIT. Called on the event loop, after the commit.
        self.row_observers: list[Callable[[list[Sealed]], None]] = []
        self.commit_observers: list[Callable[[float], None]] = []
        # seconds the committed batches spent in each phase of a store's own (the
        # PostgreSQL store's: lock, decide, commit); empty for a store that does not say
        self.phase_s: dict[str, float] = {}
        # this process's id among those sharing the store ("" for a store of one process),
        # and the processes (by theirs) given this one's notes through note_sink rather than
        # the database (see the module docstring): the servers that relay to this one
        self.instance = ""
        self.note_peers: set[str] = set()
        self.note_sink: Callable[[Sequence[Note]], None] | None = None

    def principals_generation(self) -> int | None:
        """A number that changes whenever a principal is updated or deleted, by writ or by
        hand, read cheaply (no transaction) — or None when the store cannot tell. With it
        (or :attr:`announces_principal_changes`) the engine may remember tokens it accepted
        (:mod:`writ.engine.principals`); without either, every request reads the store."""
        return None

    def set_listener(self, listener: Listener | None) -> None:
        """Receive every notification, from this process and any other sharing the store."""
        self._listener = listener

    def _deliver(self, notes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if self._listener is None:
            return
        for kind, payload in notes:
            # one note the listener cannot use (another process's may be anything) must not
            # cost the others, nor the commit or the LISTEN loop that delivers them
            try:
                self._listener(kind, payload)
            except Exception:
                log.exception("a %r note could not be handled: %.200r", kind, payload)

    def take_notes(self, notes: Sequence[Note]) -> None:
        """Notes another process that shares the store handed this one (its ``note_sink``):
        delivered as the notes heard from it through the database are."""
        self._deliver_foreign(notes)

    def _deliver_foreign(self, notes: Sequence[Note]) -> None:
        """Another process's notes, marked ``unverified``: a hint to look in the store,
        never a fact (anyone who may reach a shared store may say anything). A ``hello``
        only says who listens; it is delivered to no one."""
        self._deliver([(k, {**p, "unverified": True}) for k, p in notes if k != "hello"])

    def notes_lost(self) -> None:
        """The way :meth:`take_notes` was fed broke: notes may be lost. A store of one
        process has nothing to make up."""
        return None

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema (recording each migration)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` in one durable, atomic transaction (see the module docstring)."""

    @abstractmethod
    async def ready(self) -> str | None:
        """Why this store cannot serve now, or None (``GET /readyz``): it answers a read, and
        its schema is at the migration this writ expects. Raises nothing: an unreachable
        store is a reason."""

    @abstractmethod
    async def read(self, fn: Callable[[Tx], Awaitable[T]], single: bool = False) -> T:
        """Run ``fn`` on a committed snapshot; writes are not allowed. A store may begin the
        snapshot with ``fn``'s first statement and read the time after it (the PostgreSQL
        store does: a round trip less), so a ``fn`` whose first statement does not need the
        time should ask ``tx.now()`` after it. ``single``: ``fn`` sends one statement and
        asks the time only after it, so a store may answer in one round trip. Either way a
        ``fn`` that asks otherwise runs again as it asks (only a cost, never a risk: a read
        changes nothing)."""

    def audit_stream(
        self, after_seq: int = 0, batch: int = 10_000
    ) -> AsyncIterator[list[tuple[int, str, str]]]:
        """Stored ``(seq, body, hash)`` triples in seq order, in batches (for verify and
        export of ledgers of any size in constant memory)."""
        return text_pages(self._audit_pages("seq, body, hash", after_seq, batch))

    def audit_records(self, after_seq: int = 0, batch: int = 10_000) -> AsyncIterator[list[Record]]:
        """Like :meth:`audit_stream`, each row with the lookup columns the store keeps
        beside it: ``(seq, body, hash, ts, event, resource, lock_key)``
        (:data:`writ.core.ledger.Record`), for verify to check them against the hashed body."""
        return self._audit_pages("seq, body, hash, ts, event, resource, lock_key", after_seq, batch)

    @abstractmethod
    def _audit_pages(self, columns: str, after_seq: int, batch: int) -> AsyncIterator[list[Any]]:
        """The audit table's ``columns`` (SQL, a fixed list), rows after ``after_seq`` in seq
        order, ``batch`` rows a page."""

    # ---- moving a store (writ migrate) --------------------------------------------------
    @abstractmethod
    def export_rows(self, batch: int = 10_000) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        """Everything the store keeps, as ``(table, rows)`` batches from one consistent
        snapshot, in the order :meth:`import_rows` needs: ``meta`` (one row,
        ``{"fencing_token": last token handed out}``), then ``principals``, ``leases``,
        ``waiters``, ``objects`` and ``audit`` (in seq order), with the columns of
        :data:`~writ.stores.tables.TABLES`. Rows are the same plain JSON values on every backend (JSON columns
        decoded, booleans as booleans); ``token_hash`` is included, so a dump is a secret.
        """

    @abstractmethod
    async def import_rows(
        self, batches: AsyncIterable[tuple[str, list[dict[str, Any]]]]
    ) -> dict[str, int]:
        """Load an :meth:`export_rows` dump into this store, which must be empty
        (:class:`~writ.errors.Invalid` otherwise), in one transaction: all of it or none.
        Every value is kept as given — audit rows verbatim (body and hash, so the chain
        verifies as before), waiter ``seq``, lease tokens — and the next fencing token is
        greater than both the dump's counter and every lease token in it. Returns the rows
        loaded per table (``meta``: the fencing token counter)."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
