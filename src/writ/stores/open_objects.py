"""The policy objects the ledger says stand, against the objects table: the part of ``writ
audit verify`` that finds one deleted there by hand.

writ never deletes a policy object, and the ones that hold authority back give it away when
deleted: a protected change gone lets any agent undo it without asking; an active freeze
gone lets grants under its prefix through. The table check
(:mod:`writ.stores.policy_objects`) reads the objects the table holds; the ones it no longer
holds only the ledger knows of, and no row that makes one names its id, nor is there an
index by event: verify's walk over the whole chain collects them. :class:`OpenObjects` is fed each
verified chunk (lookup columns already checked against the hashed bodies) and keeps, by the
seq of the row that records it:

* every **change** (``change.recorded``) whose protection has not ended: the row's notes
  say until when (``ATTR: SUMMARY; protected until T``); nothing but time ends it;
* every **freeze** (``freeze.created``) not lifted and not expired: its row says until when,
  if ever (``BY froze PREFIX[ until T]…: REASON``); a ``freeze.lifted`` row on its prefix
  (``BY lifted the freeze on PREFIX (REASON)[; freeze ID]``: an id the created row does not
  give, so it is not matched by) ends the one open freeze there
  with that reason; when several match, none is taken as ended (each is still looked for:
  none is deleted by writ, so none is called tampered for being looked for);
* every **lock delay** whose ending row (``lease.expired``, ``lease.revoked``) says until
  when (``…; lock delay until T``): nothing but time ends one (an older writ's row, without
  the suffix, says nothing of a delay, and is not kept).

The feed runs on every row of the chain, so it is kept cheap: only the ``event`` column is
read of the other rows; of a change's, and of a lease's ending row, the notes' last
characters where writ words them (the body is not parsed: a ledger may hold hundreds of
thousands); freeze rows, few, are parsed. The rows themselves are kept, and what ended before the last row's time is dropped
each time the ends kept double (a freeze an hour after its end: writ may lift one not yet
swept, and that lift must find it).

Consents are not kept: a granted consent deleted takes away the one use it gives its
requester, a pending one can no longer be answered; neither gives authority.

After the walk, :func:`objects_gone` looks in the objects table, a page at a time, for each
object kept whose time has not run out (ended: its ``T`` at or before now, by the clock and
the microsecond's margin the table check judges a protection ended by): the table must hold
an object of that kind on that resource made at its row's time (``created_at`` within the
microsecond the row shows, as the table check finds an object's rows, inverted; two of one
instant need two). Its state is the table check's (a freeze marked lifted needs the lift's
row): one lifted by writ since the walk passed its rows is still there, so is one whose
protection ended, and writ writes no row that removes one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from writ.core.bulk import first_in_pages
from writ.core.clock import parse_time, rfc3339
from writ.core.errors import Invalid
from writ.core.ledger import Record
from writ.core.models import LOCK_DELAYED, named_in
from writ.stores.base import Store, Tx
from writ.stores.policy_objects import EPS, PAGE, froze

__all__ = ["OpenObjects", "Standing", "objects_gone"]

_CHANGE, _FREEZE, _LIFT = "change.recorded", "freeze.created", "freeze.lifted"
_DELAYED = frozenset(("lease.expired", "lease.revoked"))  # with a lock delay, when it says so
_EVENTS = frozenset((_CHANGE, _FREEZE, _LIFT, *_DELAYED))
_UNTIL = "; protected until "
_STAMP = 27  # len("2026-05-16T10:17:00.500000Z")
_NEXT = '","prev_hash":"'  # the key after the notes in a body (its keys sorted)
# a freeze past its end is kept this much longer: writ lifts one still marked active (its
# end not yet swept), and that lift must find it, not another on its prefix
_LAG = 3600.0
_BOUND = 1024


def _stamp(text: Any) -> str | None:
    """An end a row's notes give, as writ stamps a time (``2026-05-16T10:17:00.500000Z``:
    in that shape times compare as their text does, so none is parsed as the rows go by);
    None when none reads as a time."""
    if not isinstance(text, str):
        return None
    if len(text) == 27 and text[10] == "T" and text[-1] == "Z":
        return text
    try:
        return rfc3339(parse_time(text))
    except Invalid:
        return None


def _seconds(stamp: str | None) -> float:
    """A stamp of :func:`_stamp` as seconds (none, or one that does not read: never)."""
    try:
        return parse_time(stamp) if stamp is not None else math.inf
    except Invalid:
        return math.inf


def _protected_until(body: str, suffix: str = _UNTIL) -> str | None:
    """The end a ``change.recorded`` row's notes give its protection (``ATTR: SUMMARY;
    protected until T``; with ``suffix`` :data:`~writ.core.models.LOCK_DELAYED`, the end an
    ending row's give its lock delay), read without parsing the body: its keys are sorted,
    so its notes run from ``"notes":"`` to ``","prev_hash":"`` (neither can stand inside a
    string: its quotes would be escaped); a body shaped otherwise is parsed."""
    start, end = body.find('"notes":"'), body.find(_NEXT)
    notes = body[start + 9 : end] if 0 <= start < end else _parsed(body).get("notes")
    if not isinstance(notes, str):
        return None
    _, sep, until = notes.rpartition(suffix)
    return _stamp(until) if sep else None


def _said_end(body: str, suffix: str) -> str | None:
    """:func:`_protected_until`, first as writ words it: the notes' last characters
    (``…SUFFIX T"`` before the next key), the body not parsed; else (a row without the
    suffix where writ puts it) read whole when the suffix is in it at all."""
    end = body.find(_NEXT)
    at = end - _STAMP - len(suffix)
    if at > 0 and body.startswith(suffix, at) and body[end - 17] == "T":
        return body[end - _STAMP : end]
    return _protected_until(body, suffix) if suffix in body else None


class Standing(NamedTuple):
    """An object the ledger says stands: of ``kind`` (``change``, ``freeze``, ``delay``) on
    ``resource``, made at ``at`` (the time of its row, ``body``); until ``until`` (as writ
    stamps a time; None: no end known); ``reason`` a freeze's (None: a change, a delay, or a
    row worded otherwise)."""

    kind: str
    resource: str
    at: float
    until: str | None
    body: str
    reason: str | None = None


def _standing(rec: Record) -> Standing:
    """What the row ``rec`` (``change.recorded``, ``freeze.created``, or an ending row with
    a lock delay) says stands."""
    body, resource = rec[1], rec[5]
    if rec[4] == _CHANGE:
        return Standing("change", resource, rec[3], _protected_until(body), body)
    if rec[4] in _DELAYED:
        return Standing("delay", resource, rec[3], _said_end(body, LOCK_DELAYED), body)
    row = _parsed(body)
    notes = row.get("notes")
    said = froze(
        {
            "agent_id": str(row.get("agent_id")),
            "resource": resource,
            "notes": notes if isinstance(notes, str) else "",
        }
    )
    if said is None:
        return Standing("freeze", resource, rec[3], None, body)
    return Standing("freeze", resource, rec[3], _stamp(said["until"]), body, said["reason"])


class OpenObjects:
    """The protected changes, standing freezes and lock delays the ledger records, by the
    seq of the row that records each, as verified rows go by in seq order (:meth:`feed`, a chunk at a
    time). The rows themselves are kept (no object is made for each: the walk passes
    hundreds of thousands of changes), with the end of each that has one."""

    __slots__ = ("_bound", "_keep", "_rows")

    def __init__(self) -> None:
        self._rows: dict[int, Record] = {}  # the row that records each, by its seq
        self._keep: dict[int, str] = {}  # kept until then, as the rows go by (an end)
        self._bound = _BOUND  # ends kept before those passed are dropped

    @property
    def objects(self) -> dict[int, Standing]:
        """What stands by the rows fed so far, by the seq of the row that records each (an
        end passed may be among them until the next look: :func:`objects_gone` judges)."""
        return {seq: _standing(rec) for seq, rec in self._rows.items()}

    def feed(self, chunk: Sequence[Record]) -> None:
        rows, keep, events, delayed = self._rows, self._keep, _EVENTS, _DELAYED
        for rec in [r for r in chunk if r[4] in events]:
            if rec[4] in delayed:  # kept only when it says until when
                ends = _said_end(rec[1], LOCK_DELAYED)
                if ends is not None:
                    keep[rec[0]] = ends
                    rows[rec[0]] = rec
                continue
            if rec[4] != _CHANGE:
                self._freeze(rec)
                continue
            # the many: read for their end alone, the notes' last 27 characters as writ
            # words them (``…; protected until T"`` before the next key), else parsed
            body = rec[1]
            end = body.find(_NEXT)
            if end > 45 and body.startswith(_UNTIL, end - 45) and body[end - 17] == "T":
                until: str | None = body[end - 27 : end]
            else:
                until = _protected_until(body)
            if until is not None:
                keep[rec[0]] = until
            rows[rec[0]] = rec
        if len(keep) > self._bound and chunk:
            # drop what ended before the last row's time, then let as many again come
            # before the next look
            now = rfc3339(chunk[-1][3]) or ""
            for seq in [seq for seq, end in keep.items() if end < now]:
                del keep[seq], rows[seq]
            self._bound = max(_BOUND, 2 * len(keep))

    def _freeze(self, rec: Record) -> None:
        """A ``freeze.created`` or ``freeze.lifted`` row (few: parsed)."""
        if rec[4] == _LIFT:
            self._lifted(rec)
            return
        self._rows[rec[0]] = rec
        until = _seconds(_standing(rec).until)
        if until < math.inf:
            self._keep[rec[0]] = rfc3339(until + _LAG) or ""

    def _lifted(self, rec: Record) -> None:
        """A ``freeze.lifted`` row: the one standing freeze on its prefix it lifted."""
        row, prefix = _parsed(rec[1]), rec[5]
        notes = row.get("notes")
        if isinstance(notes, str):  # today's names the freeze, which no created row does
            notes = named_in(notes, "freeze")[0]
        said = f"{row.get('agent_id')} lifted the freeze on {prefix} ("
        reason = None
        if isinstance(notes, str) and notes.startswith(said) and notes.endswith(")"):
            reason = notes[len(said) : -1]
        match = []
        for seq, r in self._rows.items():
            if r[4] == _FREEZE and r[5] == prefix:
                was = _standing(r).reason
                if reason is None or was is None or was == reason:
                    match.append(seq)
        if len(match) == 1:
            del self._rows[match[0]]
            self._keep.pop(match[0], None)


async def objects_gone(store: Store, opened: OpenObjects) -> tuple[str, str] | None:
    """``(name, why)`` of the first object of ``opened`` (the standing ones of the rows
    verified) the objects table does not hold, its time not run out; or None. ``name`` is
    ``KIND at row SEQ``: with the object gone, its row is what names it."""

    taken: set[tuple[str, str]] = set()  # (kind, id) found for one: two of an instant need two

    async def judge(page: Sequence[tuple[int, Standing]]) -> tuple[str, str] | None:
        async def check(tx: Tx) -> tuple[str, str] | None:
            # one page a snapshot: writ never deletes an object, so one found stays found
            now = tx.now()
            live = [(seq, o) for seq, o in page if _seconds(o.until) > now + EPS]
            probes = [(o.kind, o.resource, o.at - EPS, o.at + EPS) for _, o in live]
            for (seq, o), ids in zip(live, await tx.objects_made(probes), strict=True):
                mine = next((i for i in ids if (o.kind, i) not in taken), None)
                if mine is None:
                    return f"{o.kind} at row {seq}", _why(seq, o)
                taken.add((o.kind, mine))
            return None

        return await store.read(check)

    return await first_in_pages(sorted(opened.objects.items()), PAGE, judge)


def _parsed(body: str) -> dict[str, Any]:
    """A row's body as a dict (empty when it does not read as one: the chain's check names
    such a row)."""
    try:
        row = json.loads(body)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}


def _why(seq: int, o: Standing) -> str:
    made, until = rfc3339(o.at), o.until
    row = _parsed(o.body)
    by, notes = row.get("agent_id"), row.get("notes")
    if o.kind == "change":
        head, sep, _ = notes.rpartition(_UNTIL) if isinstance(notes, str) else ("", "", "")
        attr = repr(head.partition(": ")[0]) if sep else "its attribute"
        return (
            f"change of {attr} on {o.resource} by {by}: the ledger says it is protected "
            f"until {until or 'a time its row does not say'} (row {seq}, change.recorded at "
            f"{made}), but the objects table holds no change on {o.resource} made then: it "
            f"was deleted there by hand, which lets any agent undo {attr} without asking"
        )
    if o.kind == "delay":
        return (
            f"lock delay on {o.resource} after {row.get('lock_holder')}'s lease: the ledger "
            f"says it holds {o.resource} back until {until} (row {seq}, {row.get('event')} at "
            f"{made}), but the objects table holds no delay on {o.resource} made then: it was "
            f"deleted there by hand, which frees {o.resource} for the next grant before then"
        )
    reason = f" ({o.reason!r})" if o.reason is not None else ""
    return (
        f"freeze on {o.resource} by {by}{reason}: the ledger says it stands "
        f"{'until ' + until if until else 'until lifted'} (row {seq}, freeze.created at "
        f"{made}; no freeze.lifted row lifted it), but the objects table holds no freeze on "
        f"{o.resource} made then: it was deleted there by hand, which lets grants under "
        f"{o.resource} through"
    )
