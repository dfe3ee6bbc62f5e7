"""Record what clients did, then prove the server kept write authority safe (Jepsen-style).

Clients record every operation they attempt in a :class:`History`: an *invoke* when the
request leaves, then exactly one completion — ``ok`` (the server acknowledged it), ``fail``
(the server refused it; nothing happened) or ``info`` (unknown: the connection broke, it
may or may not have happened). Times are the client's monotonic clock, which is only
used to compare operations with one another, never with the server's timestamps.

:func:`check` then reads the history next to the server's own order of events — the
audit log, whose ``seq`` is the order in which the store committed the changes — and
proves:

* **mutual exclusion** — walking the ``lease.granted`` and ``lease.released`` /
  ``lease.expired`` / ``lease.revoked`` rows in ``seq`` order, a lease is never granted
  while a lease on a conflicting resource is held, and a lease ends only once, and only
  while it is held;
* **fencing tokens** strictly increase in grant order, and an acquire acknowledged before
  another was invoked has the lower token (the token is a linearizable counter);
* **acknowledged means recorded** — every acknowledged grant has its ``lease.granted`` row
  (same resource, same holder), every acknowledged release its ``lease.released`` row;
* **a late release never frees anyone** — a release refused with 410 wrote no
  ``lease.released`` row, and every ``lease.released`` row of an acknowledged lease was
  asked for by that lease's holder (so nobody else's release, late or not, ended it);
* **no lost update** — the writes of a :class:`FencedRegister` (a toy storage system that
  accepts a write only with a fencing token at least the highest it has seen, and only
  while writ says the token is current) add up: each key's final value equals the
  number of writes acknowledged on it, and each acknowledged write came from a holder of
  a lease that covered the key.

:class:`Conflicts` is the protocol's conflict relation written out again from PROTOCOL.md
(ancestors, descendants, blast-radius groups), independently of :mod:`writ.core.resources`,
so the checker does not trust the code it checks.

Typical use::

    history = History()
    op = history.invoke("agent-1", "acquire", "tank/a")
    r = await http.post("/v1/leases", json=...)
    if r.status_code == 201:
        history.ok(op, lease_id=r.json()["lease_id"], token=r.json()["fencing_token"])
    else:
        history.fail(op, status=r.status_code)
    ...
    report = check(history, audit_rows, Conflicts(groups), register)
    assert report.ok, report
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conflicts", "FencedRegister", "History", "Op", "Report", "check"]

END_EVENTS = ("lease.released", "lease.expired", "lease.revoked")


# ----------------------------------------------------------------------------- the history
@dataclass
class Op:
    """One operation of one client: what it asked, when, and how it ended.

    ``process`` is the principal that acted (a client is sequential: one operation at a
    time). ``f`` is ``acquire``, ``renew``, ``release``, ``read`` or ``write``. ``type`` is
    ``invoke`` until the operation completes, then ``ok``, ``fail`` or ``info``.
    """

    index: int
    process: str
    f: str
    resource: str
    invoke_t: float
    type: str = "invoke"
    complete_t: float | None = None
    lease_id: str | None = None
    token: int | None = None
    status: int | None = None
    key: str | None = None  # the register key of a read or write
    value: Any = None
    error: str | None = None

    def __str__(self) -> str:
        parts = [f"#{self.index}", self.process, self.f, self.resource, self.type]
        for name in ("lease_id", "token", "status", "key", "value", "error"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v}")
        return " ".join(str(p) for p in parts)


class History:
    """A thread- and task-safe log of :class:`Op` s.

    ``clock`` is a monotonic clock shared by every recording client (default
    :func:`time.monotonic`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()

    def invoke(self, process: str, f: str, resource: str, **fields: Any) -> Op:
        """Record that ``process`` starts operation ``f`` on ``resource``; returns the op."""
        with self._lock:
            op = Op(len(self._ops), process, f, resource, self.clock(), **fields)
            self._ops.append(op)
        return op

    def _complete(self, op: Op, type_: str, fields: Mapping[str, Any]) -> Op:
        if op.type != "invoke":
            raise ValueError(f"operation {op} completed twice")
        for name, value in fields.items():
            if not hasattr(op, name):
                raise TypeError(f"Op has no field {name!r}")
            setattr(op, name, value)
        op.complete_t = self.clock()
        op.type = type_
        return op

    def ok(self, op: Op, **fields: Any) -> Op:
        """The server acknowledged ``op`` (e.g. ``lease_id=``, ``token=``)."""
        return self._complete(op, "ok", fields)

    def fail(self, op: Op, **fields: Any) -> Op:
        """The server refused ``op`` (e.g. ``status=410``): it did not happen."""
        return self._complete(op, "fail", fields)

    def info(self, op: Op, **fields: Any) -> Op:
        """``op`` has an unknown outcome (a broken connection): it may have happened."""
        return self._complete(op, "info", fields)

    @property
    def ops(self) -> list[Op]:
        """Every operation, in invocation order (a copy)."""
        with self._lock:
            return list(self._ops)

    def select(self, f: str | None = None, type_: str | None = None) -> list[Op]:
        """The operations named ``f`` that completed as ``type_`` (either may be None)."""
        return [
            o for o in self.ops if (f is None or o.f == f) and (type_ is None or o.type == type_)
        ]

    def pending(self) -> list[Op]:
        """Operations never completed (a recording client forgot one: a test bug)."""
        return [o for o in self.ops if o.type == "invoke"]


# ----------------------------------------------------------------------------- conflicts
def _related(a: str, b: str) -> bool:
    """``a`` is ``b``, or one is an ancestor of the other (whole segments only)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


class Conflicts:
    """PROTOCOL.md's conflict relation: two resources conflict when one is the other or an
    ancestor of it, or when both fall within the same blast-radius group (a resource falls
    within a group when it is related to one of the group's members: a lease on ``prod``
    covers ``prod/db`` and so everything ``prod/db`` is grouped with).

    ``groups`` is the policy's ``[blast_radius]`` table: ``{name: [resource, ...]}``. Groups
    are taken as written: a server that merges overlapping groups only excludes more, and
    the checker holds it to the protocol's minimum.
    """

    def __init__(self, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.groups = [tuple(members) for members in (groups or {}).values()]

    def _groups_of(self, resource: str) -> set[int]:
        return {
            i
            for i, members in enumerate(self.groups)
            if any(_related(resource, m) for m in members)
        }

    def __call__(self, a: str, b: str) -> bool:
        return _related(a, b) or bool(self._groups_of(a) & self._groups_of(b))


# ----------------------------------------------------------------------------- the register
IsCurrent = Callable[[str, int], Awaitable[bool]]


@dataclass
class _Key:
    value: int = 0
    highest: int = 0  # the highest fencing token a write on this key was accepted with
    accepted: list[tuple[int, int]] = field(default_factory=list)  # (token, value)


class FencedRegister:
    """A toy storage system guarded by fencing tokens: integer registers by key.

    A write carries the writer's fencing token and the resource its lease is on. It is
    accepted only when the key is within that resource (:class:`Conflicts`), the token is
    at least the highest this key has accepted, and ``is_current(resource, token)`` —
    typically ``GET /v1/fence`` — says the lease still holds. The check and the write
    happen under one lock per key, and reads take it too, so a writer whose lease ended
    can never slip a write in after its successor has read.

    Clients increment by reading and then writing ``value + 1`` under their lease: if two
    holders ever overlapped, one increment would be lost, and :func:`check` would find the
    final value below the number of acknowledged writes.
    """

    def __init__(self, conflicts: Conflicts, is_current: IsCurrent | None = None) -> None:
        self.conflicts = conflicts
        self.is_current = is_current
        self._keys: dict[str, _Key] = defaultdict(_Key)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def read(self, key: str) -> int:
        async with self._locks[key]:
            return self._keys[key].value

    async def write(self, key: str, token: int, resource: str, value: int) -> bool:
        """Store ``value`` under ``key`` if the token may write it now; True if accepted."""
        async with self._locks[key]:
            k = self._keys[key]
            ok = self.conflicts(resource, key) and token >= k.highest
            if ok and self.is_current is not None:
                ok = await self.is_current(resource, token)
            if not ok:
                return False
            k.highest = token
            k.value = value
            k.accepted.append((token, value))
            return True

    def value(self, key: str) -> int:
        return self._keys[key].value

    @property
    def keys(self) -> list[str]:
        return sorted(self._keys)

    def accepted(self, key: str) -> list[tuple[int, int]]:
        """``(token, value)`` of every accepted write on ``key``, in the order applied."""
        return list(self._keys[key].accepted)


# ----------------------------------------------------------------------------- the checker
@dataclass
class Report:
    """What :func:`check` found: ``errors`` (empty when every property holds) and
    ``stats``, counts a test can use to show the interesting cases really happened."""

    errors: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, text: str) -> None:
        self.errors.append(text)

    def __str__(self) -> str:
        head = f"{len(self.errors)} violation(s); stats {dict(self.stats)}"
        return "\n".join([head, *self.errors[:40]])


def check(
    history: History,
    rows: Iterable[Mapping[str, Any]],
    conflicts: Conflicts | None = None,
    register: FencedRegister | None = None,
) -> Report:
    """Check ``history`` against the audit ``rows`` (every row, ascending ``seq``).

    ``conflicts`` is the policy's relation (default: the hierarchy alone). ``register``,
    when the clients wrote through one, is checked for lost updates.
    """
    conflicts = conflicts or Conflicts()
    report = Report()
    rows = list(rows)
    for op in history.pending():
        report.error(f"operation never completed (a recording bug): {op}")
    grants, ends = _server_order(rows, conflicts, report)
    _acquires(history, grants, report)
    _releases(history, grants, ends, conflicts, report)
    if register is not None:
        _register(history, grants, conflicts, register, report)
    return report


def _server_order(
    rows: list[Mapping[str, Any]], conflicts: Conflicts, report: Report
) -> tuple[dict[int, Mapping[str, Any]], dict[int, Mapping[str, Any]]]:
    """Walk the ledger in seq order: exclusion, token order, each lease ending once.
    Returns the grant row and the end row of each fencing token."""
    grants: dict[int, Mapping[str, Any]] = {}
    ends: dict[int, Mapping[str, Any]] = {}
    held: dict[int, Mapping[str, Any]] = {}  # token -> its grant row, while held
    last_token = 0
    for a, b in itertools.pairwise(rows):
        if a["seq"] >= b["seq"]:
            report.error(f"rows out of seq order: {a['seq']} then {b['seq']}")
    for row in rows:
        event, token = row["event"], row.get("fencing_token")
        if event == "lease.granted":
            report.stats["grants"] += 1
            if token is None or token <= last_token:
                report.error(
                    f"seq {row['seq']}: token {token} granted after {last_token} "
                    "(fencing tokens must strictly increase in grant order)"
                )
            last_token = max(last_token, token or 0)
            for other in held.values():
                if conflicts(other["resource"], row["resource"]):
                    report.error(
                        f"seq {row['seq']}: {row['lock_holder']} granted {row['resource']} "
                        f"(token {token}) while {other['lock_holder']} held "
                        f"{other['resource']} (token {other['fencing_token']}, "
                        f"seq {other['seq']})"
                    )
            grants[token] = held[token] = row
        elif event in END_EVENTS:
            report.stats[event] += 1
            grant = held.pop(token, None)
            if grant is None:
                why = "it had already ended" if token in ends else "it was never granted"
                report.error(f"seq {row['seq']}: {event} of token {token}, but {why}")
            elif (grant["resource"], grant["lock_holder"]) != (row["resource"], row["lock_holder"]):
                report.error(
                    f"seq {row['seq']}: {event} of token {token} names "
                    f"{row['lock_holder']} on {row['resource']}, but it was granted "
                    f"to {grant['lock_holder']} on {grant['resource']}"
                )
            ends.setdefault(token, row)
        elif event == "lease.renewed" and token not in held:
            report.error(f"seq {row['seq']}: token {token} renewed while not held")
    report.stats["held_at_end"] = len(held)
    return grants, ends


def _acquires(history: History, grants: Mapping[int, Mapping[str, Any]], report: Report) -> None:
    """Acknowledged grants are in the ledger; tokens respect real time."""
    acked = history.select("acquire", "ok")
    report.stats["acquire_ok"] = len(acked)
    report.stats["acquire_fail"] = len(history.select("acquire", "fail"))
    report.stats["acquire_info"] = len(history.select("acquire", "info"))
    seen: set[int] = set()
    for op in acked:
        if op.token is None:
            report.error(f"acknowledged acquire without a fencing token: {op}")
            continue
        if op.token in seen:
            report.error(f"fencing token {op.token} acknowledged twice: {op}")
        seen.add(op.token)
        row = grants.get(op.token)
        if row is None:
            report.error(f"acknowledged grant missing from the ledger: {op}")
        elif (row["resource"], row["lock_holder"]) != (op.resource, op.process):
            report.error(
                f"ledger grant of token {op.token} is {row['lock_holder']} on "
                f"{row['resource']}, but the client was acknowledged {op}"
            )
    # linearizable tokens: acknowledged before b was invoked => a lower token than b's
    done = sorted((o for o in acked if o.token is not None), key=lambda o: o.complete_t or 0)
    best: Op | None = None  # the highest-token acquire completed so far
    i = 0
    for b in sorted(done, key=lambda o: o.invoke_t):
        while i < len(done) and (done[i].complete_t or 0) < b.invoke_t:
            if best is None or (done[i].token or 0) > (best.token or 0):
                best = done[i]
            i += 1
        if best is not None and (best.token or 0) >= (b.token or 0):
            report.error(f"token order breaks real time: {best} completed before {b} began")


def _releases(
    history: History,
    grants: Mapping[int, Mapping[str, Any]],
    ends: Mapping[int, Mapping[str, Any]],
    conflicts: Conflicts,
    report: Report,
) -> None:
    """Acknowledged releases are recorded; late ones freed nobody."""
    by_token: dict[int, list[Op]] = defaultdict(list)
    for op in history.select("release"):
        if op.token is not None:
            by_token[op.token].append(op)
    acquired = {o.token: o for o in history.select("acquire", "ok")}
    late_releases = [o for o in history.select("release", "fail") if o.status == 410]
    for op in history.select("release", "ok"):
        end = ends.get(op.token or -1)
        if end is None or end["event"] != "lease.released" or end["agent_id"] != op.process:
            report.error(
                f"acknowledged release has no lease.released row by its holder: {op} "
                f"(ledger: {end and end['event']})"
            )
    for op in late_releases:
        report.stats["late_releases"] += 1
        end = ends.get(op.token or -1)
        if end is not None and end["event"] == "lease.released":
            report.error(f"a release refused as late (410) still released the lease: {op}")
    # every released row of an acknowledged lease was asked for by its holder
    for token, end in ends.items():
        if end["event"] != "lease.released" or token not in acquired:
            continue
        asked = [o for o in by_token.get(token, ()) if o.type in ("ok", "info")]
        if not asked:
            report.error(
                f"seq {end['seq']}: lease token {token} of {end['lock_holder']} was "
                "released, but its holder never asked for that release"
            )
        elif end["agent_id"] != end["lock_holder"]:
            report.error(
                f"seq {end['seq']}: {end['agent_id']} released {end['lock_holder']}'s "
                f"lease (token {token})"
            )
    # successors that stayed held across a late release (the protocol's case, counted)
    for late in late_releases:
        mine = grants.get(late.token or -1)
        if mine is None:
            continue
        for token, grant in grants.items():
            if token <= (late.token or 0) or not conflicts(grant["resource"], mine["resource"]):
                continue
            got = acquired.get(token)
            rel = [o for o in by_token.get(token, ()) if o.type == "ok"]
            if (
                got is not None
                and (got.complete_t or 0) < late.invoke_t
                and rel
                and rel[0].invoke_t > (late.complete_t or 0)
            ):
                report.stats["successor_held_across_late_release"] += 1


def _register(
    history: History,
    grants: Mapping[int, Mapping[str, Any]],
    conflicts: Conflicts,
    register: FencedRegister,
    report: Report,
) -> None:
    """No lost update: each key's value is the count of acknowledged writes on it."""
    writes = history.select("write", "ok")
    report.stats["writes_ok"] = len(writes)
    report.stats["writes_refused"] = len(history.select("write", "fail"))
    per_key = Counter(o.key for o in writes)
    for key in sorted(set(per_key) | set(register.keys)):
        if register.value(key) != per_key.get(key, 0):
            report.error(
                f"register {key}: value {register.value(key)} after "
                f"{per_key.get(key, 0)} acknowledged increments (lost or phantom "
                "update)"
            )
        tokens = [t for t, _ in register.accepted(key)]
        if any(a > b for a, b in itertools.pairwise(tokens)):
            report.error(f"register {key}: accepted tokens went down: {tokens}")
    for op in writes:
        grant = grants.get(op.token or -1)
        if grant is None or grant["lock_holder"] != op.process:
            report.error(f"acknowledged write with a token not granted to its writer: {op}")
        elif op.key is not None and not conflicts(grant["resource"], op.key):
            report.error(
                f"acknowledged write outside the writer's lease ({grant['resource']}): {op}"
            )
