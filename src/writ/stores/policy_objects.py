"""The policy objects against the ledger: the part of ``writ audit verify`` that covers the
objects table where it gives authority.

writ serves its safety rules' objects from the objects table — the changes whose
protection holds other agents off, the consents that let one past it, the freezes that
stop grants — and the table is outside the hash chain. Each object is written in the
transaction of a hashed row that records it, at the same instant (the object's
``created_at`` is its row's time), on the same ``resource``. So verify checks every
object of the kinds that hold authority back against those rows, found by their resource
and time (an index range a row, ``audit_by_resource``, never a parse of the ledger;
:meth:`~writ.stores.base.Tx.audit_probes`):

* a **change** (every one, whatever its state: one lapsed by hand no longer protects):
  its ``change.recorded`` row must agree on the author, the fencing token, the override
  queue its consents escalate to, the attribute (``ATTR: SUMMARY; protected until T``)
  and the protection's end (the ``expires_at`` column and ``protected_until``); and a
  change may be marked ``lapsed`` or ``recorded`` only once that end has passed;
* a **granted consent** (the only state that lets anyone past a protection): its
  ``consent.requested`` row must name its requester, the change's author and attribute;
  a ``consent.granted`` row at its ``answered_at`` must name its requester, change,
  author and attribute, and its answerer, and, as today's writ words it (``…; consent
  ID``), the consent itself; one answered after it expired, a
  ``consent.expired`` row before the answer must name the queue it was escalated to (who
  may answer it then); and no ``consent.used`` row on its resource between the answer and
  the end of its change's protection may have used it (the first few are read: after that
  end, or with its change gone, it lets no one past anything);
* a **freeze** (every one: one lifted or expired by hand no longer stops grants): its
  ``freeze.created`` row must agree on who froze what (the prefix), until when (the
  ``expires_at`` column while it stands), the allow list and the reason; a lifted freeze
  needs a ``freeze.lifted`` row at its ``lifted_at`` by its ``lifted_by``, after the row
  that made it, that no other freeze took (each lifts one), naming it as today's writ
  words it (``…; freeze ID``: an older writ's names none); an expired one an end the
  created row gave, and passed;
* a **pending or approved rollback** (the states in which writ may yet call its route): its
  ``rollback.requested`` row at its ``requested_at`` must say who asked, for which lease and
  route, and why, and no later row may have decided it but, for an approved one, its
  approval (:func:`writ.core.rollback_rows.rollback_disagrees`, which the approval asks too,
  before it calls a route). Its rows are read a probe's rows at a time, as many as it has.

Each row records one object: one that accounts for an object is not taken for another (two
made in one instant have two rows; one rewritten as a copy of the other, or marked lifted or
granted with another's lift or answer, borrows a row; today's lift and answer rows name
their object's id at the very end of their notes, after any human's or agent's words, so
one never accounts for another: :func:`~writ.core.models.named`). A row worded otherwise than writ
words it today (or without notes) vouches for the object's existence and for its own fields
(who, where, when) alone: the chain vouches that writ wrote it. Each page of objects is read
again with its rows in one snapshot, so an object written by writ while verify runs
is judged as it stood then. What this does not cover is in docs/security.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339, time_or_zero
from writ.core.models import named_in
from writ.core.rollback_rows import rollback_disagrees
from writ.stores.base import PROBE_ROWS, Probe, Store, Tx

__all__ = [
    "BY_HAND",
    "EPS",
    "KINDS",
    "PAGE",
    "differ",
    "ended",
    "froze",
    "object_disagrees",
    "object_probes",
    "objects_disagree",
    "one_of",
]

PAGE = 200  # objects a snapshot
# a row's time is its object's created_at to the microsecond it shows (half of one either
# way, and a float's rounding at today's seconds)
EPS = 2e-6
Row = dict[str, Any]
Obj = dict[str, Any]
BY_HAND = "the objects table was changed by hand"
_ANSWER = re.compile(
    r" granted (?P<requester>.+?)'s request to undo (?P<attribute>.*) "
    r"\(change (?P<change_id>\S+) by (?P<author>[^)]*)\)$",
    re.DOTALL,
)


def _at(res: str, events: tuple[str, ...], t: float) -> Probe:
    """The rows of ``events`` on ``res`` at time ``t`` (0: none asked)."""
    return (res, events, t - EPS, t + EPS if t > 0 else 0.0)


def object_probes(o: Obj, protected_until: float | None = None) -> list[Probe]:
    """The rows ``o`` is checked against, as :meth:`Tx.audit_probes` asks for them; for a
    consent, ``protected_until`` is the end of its change's protection (the objects
    table's, checked against its own row), None when there is no such change: a consent
    lets no one past a protection that ended, so a use after it, or with none, is not
    looked for (the rows on its resource between its answer and that end are read, until
    a few uses are found, never the rest of the resource's history)."""
    res, made, d = o["resource"], o["created_at"], o["data"]
    made = made if isinstance(made, (int, float)) else 0.0  # a hand-written text: none
    d = d if isinstance(d, dict) else {}
    if o["kind"] == "change":
        return [_at(res, ("change.recorded",), made)]
    if o["kind"] == "consent":
        answered = time_or_zero(d.get("answered_at"))
        used_until = (protected_until or 0.0) + EPS if answered else 0.0
        return [
            _at(res, ("consent.requested",), made),
            _at(res, ("consent.granted", "consent.denied"), answered),
            (res, ("consent.used",), answered - EPS, used_until),
            # writ expires it at the first sweep after its answer-by time: its row comes
            # first from then on
            (
                res,
                ("consent.expired",),
                (time_or_zero(d.get("expires_at")) or made) - EPS,
                answered + EPS if d.get("escalated_to") else 0.0,
            ),
        ]
    lifted = time_or_zero(d.get("lifted_at")) if o["state"] == "lifted" else 0.0
    return [_at(res, ("freeze.created",), made), _at(res, ("freeze.lifted",), lifted)]


Whys = list[str]  # what disagrees, first first (none: the row accounts for the object)


def differ(name: str, checks: Sequence[tuple[str, Any, Any, Row]]) -> Whys:
    return [
        f"{name}: the {field} ({have!r}) disagrees with its row {row['seq']} "
        f"({row['event']}, {want!r}): {BY_HAND}"
        for field, have, want, row in checks
        if have != want
    ]


Taken = dict[int, str]  # the object each row that records one was taken by (by seq)


def one_of(
    name: str,
    rows: list[Row],
    what: str,
    judge: Callable[[Row], Whys],
    taken: Taken | None = None,
    at: Any = 0.0,
) -> str | None:
    """None when one of ``rows`` (a probe's, at one instant: writ may write two objects on
    one resource in one microsecond) accounts for the object, one no other object took
    (``taken``, which the one nearest its time ``at`` joins: writ writes a row for each
    object, at its time); else why the row that comes nearest does not, that another took
    it, or that there is none."""
    if not rows:
        return (
            f"{name}: no {what}: it was written into the objects table by hand, or its "
            "resource or times were changed there"
        )
    judged = [(judge(r), r) for r in rows]
    mine = [r for whys, r in judged if not whys]
    if not mine:
        return min((whys for whys, _ in judged), key=len)[0]
    if taken is None:
        return None
    at = at if isinstance(at, (int, float)) else 0.0
    mine.sort(key=lambda r: abs(time_or_zero(r["timestamp"]) - at))
    free = next((r["seq"] for r in mine if r["seq"] not in taken), None)
    if free is None:
        row = mine[0]
        return (
            f"{name}: its row {row['seq']} ({row['event']}) is {taken[row['seq']]}'s (writ "
            f"writes a row for each object; this one has none of its own): {BY_HAND}"
        )
    taken[free] = name
    return None


def ended(name: str, state: str, until: str | None, row: Row, now: float) -> Whys:
    """A protection or freeze marked ended (``state``) while its row says it holds."""
    if until is None or time_or_zero(until) > now + EPS:
        return [
            f"{name}: it is marked {state}, but its row {row['seq']} ({row['event']}) says it "
            f"holds {'until ' + until if until else 'until lifted'}: {BY_HAND}"
        ]
    return []


# ---------------------------------------------------------------------------- changes
def _change(o: Obj, rows: list[list[Row]], now: float, taken: Taken) -> str | None:
    c, name = o["data"], f"change {o['id']} on {o['resource']}"
    if o["state"] not in ("protected", "recorded", "lapsed"):
        return f"{name}: its state ({o['state']!r}) is none writ gives a change: {BY_HAND}"

    def judge(row: Row) -> Whys:
        checks: list[tuple[str, Any, Any, Row]] = [
            ("author", c.get("author"), row["agent_id"], row),
            ("resource", c.get("resource"), row["resource"], row),
            ("fencing_token", c.get("fencing_token"), row["fencing_token"], row),
            ("at", c.get("at"), row["timestamp"], row),
        ]
        if "override_queue" in c:  # the queue its consents escalate to (without: the policy's)
            checks.append(("override_queue", c["override_queue"], row["human_override_queue"], row))
        head, sep, until = (row.get("notes") or "").rpartition("; protected until ")
        attr = str(c.get("attribute"))
        if sep:  # as writ words it: ATTR: SUMMARY; protected until T (the summary is the
            # author's words, quoted wherever writ shows them: it gives no authority)
            checks += [
                ("attribute", attr, attr if head.startswith(attr + ": ") else head, row),
                ("protected_until", c.get("protected_until"), until, row),
                ("expires_at column", rfc3339(o["expires_at"]), until, row),
            ]
        over = o["state"] != "protected" and bool(sep)
        return differ(name, checks) + (ended(name, o["state"], until, row, now) if over else [])

    what = "change.recorded row on its resource at its created_at"
    return one_of(name, rows[0], what, judge, taken, o["created_at"])


# ---------------------------------------------------------------------------- consents
def _consent(o: Obj, rows: list[list[Row]], now: float, taken: Taken) -> str | None:
    c, name = o["data"], f"consent {o['id']} on {o['resource']}"
    requester, author, attr = c.get("requester"), c.get("author"), c.get("attribute")

    def asked(row: Row) -> Whys:
        notes = row.get("notes") or ""
        said = f"{row['agent_id']} asks {author} to undo {attr} ("
        checks = [("requester", requester, row["agent_id"], row)]
        if notes.startswith(f"{row['agent_id']} asks ") and not notes.startswith(said):
            checks.append(("author and attribute", f"{author} to undo {attr}", notes, row))
        return differ(name, checks)

    what = "consent.requested row on its resource at its created_at"
    why = one_of(name, rows[0], what, asked, taken, o["created_at"])
    if why is not None or o["state"] != "granted":
        return why

    def answered(row: Row) -> Whys:
        its = named_in(row.get("notes") or "", "consent")[1]
        if its is not None and its != o["id"]:  # another's answer
            return differ(name, [("id", o["id"], its, row)])
        if row["event"] != "consent.granted":
            return [
                f"{name}: it is granted, but its row {row['seq']} ({row['event']}) at its "
                f"answered_at denied it: {BY_HAND}"
            ]
        head, its = named_in(row.get("notes") or "", "consent")
        checks = [("answered_by", c.get("answered_by"), row["agent_id"], row)]
        if its is not None:  # today's writ names the consent it answers (models.named)
            checks.insert(0, ("id", o["id"], its, row))
        said = _ANSWER.search(head)
        if said is not None:  # as writ words it: ... granted R's request to undo A (change C by B)
            checks += [(k, c.get(k), said[k], row) for k in ("requester", "change_id", "author")]
            checks.append(("attribute", attr, said["attribute"], row))
        return differ(name, checks)

    what = "consent.granted row on its resource at its answered_at"
    why = one_of(name, rows[1], what, answered, taken, time_or_zero(c.get("answered_at")))
    if why is None and c.get("escalated_to") is not None:

        def escalated(row: Row) -> Whys:  # who may answer once it expired unanswered
            checks = [("escalated_to", c["escalated_to"], row["human_override_queue"], row)]
            notes = row.get("notes") or ""
            if notes.startswith(f"{author} did not answer "):
                said = f"{author} did not answer {requester}'s consent request by "
                checks.append(("requester", said, notes[: len(said)], row))
            return differ(name, checks)

        what = "consent.expired row on its resource before its answer"
        why = one_of(name, rows[3], what, escalated)
    if why is not None:
        return why
    for row in rows[2]:
        if (row.get("notes") or "").startswith(f"consent {o['id']} "):
            return (
                f"{name}: it is granted, but row {row['seq']} (consent.used) used it: a "
                f"consent is used once; {BY_HAND}"
            )
    return None


# ---------------------------------------------------------------------------- freezes
def froze(row: Row) -> dict[str, Any] | None:
    """What a ``freeze.created`` row says, as writ words it: ``BY froze PREFIX[ until T][
    (allowed: A, ...)]: REASON``; None when worded otherwise."""
    notes = row.get("notes") or ""
    head = f"{row['agent_id']} froze {row['resource']}"
    if not notes.startswith(head):
        return None
    rest, until, allow = notes[len(head) :], None, ""
    if rest.startswith(" until "):
        until, _, rest = rest[len(" until ") :].partition("Z")
        until += "Z"
    if rest.startswith(" (allowed: "):
        allow, _, rest = rest[len(" (allowed: ") :].partition(")")
    if not rest.startswith(": "):
        return None
    return {"until": until, "allow": allow, "reason": rest[2:]}


def _freeze(o: Obj, rows: list[list[Row]], now: float, taken: Taken) -> str | None:
    f, name = o["data"], f"freeze {o['id']} on {o['resource']}"
    state = o["state"]
    if state not in ("active", "lifted", "expired"):
        return f"{name}: its state ({state!r}) is none writ gives a freeze: {BY_HAND}"
    allow = f.get("allow") or []

    def created(row: Row) -> Whys:
        checks: list[tuple[str, Any, Any, Row]] = [
            ("by", f.get("by"), row["agent_id"], row),
            ("prefix", f.get("prefix"), row["resource"], row),
            ("at", f.get("at"), row["timestamp"], row),
        ]
        said = froze(row)
        if said is not None:
            checks += [
                ("until", f.get("until"), said["until"], row),
                ("allow", ", ".join(map(str, allow)), said["allow"], row),
                ("reason", f.get("reason"), said["reason"], row),
            ]
            if state != "lifted":  # a lift clears it
                checks.append(("expires_at column", rfc3339(o["expires_at"]), said["until"], row))
        whys = differ(name, checks)
        if said is not None and state == "expired":
            whys += ended(name, state, said["until"], row, now)
        return whys

    what = "freeze.created row on its prefix at its created_at"
    why = one_of(name, rows[0], what, created, taken, o["created_at"])
    if why is not None or state != "lifted":
        return why
    made = min(r["seq"] for r in rows[0] if not created(r))

    def lifted(row: Row) -> Whys:
        notes, its = named_in(row.get("notes") or "", "freeze")
        checks = [("lifted_by", f.get("lifted_by"), row["agent_id"], row)]
        if its is not None:  # today's writ names the freeze it lifts (models.named)
            checks.insert(0, ("id", o["id"], its, row))
        if notes.startswith(f"{row['agent_id']} lifted the freeze on "):
            want = f"{row['agent_id']} lifted the freeze on {f.get('prefix')} ({f.get('reason')})"
            checks.append(("reason", want, notes, row))
        whys = differ(name, checks)
        if row["seq"] < made:  # another freeze's, made and lifted before this one
            whys.append(
                f"{name}: its freeze.lifted row {row['seq']} comes before the freeze.created "
                f"row {made} that made it: {BY_HAND}"
            )
        return whys

    # a lift row lifts one freeze: today's names it, an older writ's did not
    what = "freeze.lifted row on its prefix at its lifted_at"
    return one_of(name, rows[1], what, lifted, taken, time_or_zero(f.get("lifted_at")))


_JUDGES: dict[str, Callable[[Obj, list[list[Row]], float, Taken], str | None]] = {
    "change": _change,
    "consent": _consent,
    "freeze": _freeze,
}
#: The kinds checked, and the states (None: every one) read of each.
KINDS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("consent", ("granted",)),
    ("freeze", None),
    ("change", None),
    ("rollback", ("pending", "approved")),
)


def object_disagrees(
    o: Obj, rows: list[list[Row]], now: float, taken: Taken | None = None
) -> str | None:
    """Why the ledger's rows (each probe's of :func:`object_probes`) do not account for policy
    object ``o`` (a dict of :data:`~writ.stores.base.OBJECT_COLUMNS`) at ``now``, or None.
    ``taken``: the object each row that records one (by seq) was taken by so far, to which
    ``o``'s join (None: ``o`` judged alone)."""
    if not isinstance(o["data"], dict):
        return f"{o['kind']} {o['id']}: its data cannot be read: {BY_HAND}"
    return _JUDGES[o["kind"]](o, rows, now, {} if taken is None else taken)


async def objects_disagree(store: Store) -> tuple[str, str] | None:
    """``("KIND ID", why)`` of the first policy object the ledger does not account for, or
    None."""
    for kind, states in KINDS:
        found = await _kind_disagrees(store, kind, states)
        if found is not None:
            return found
    return None


def _change_of(o: Obj) -> str:
    return str((o["data"] if isinstance(o["data"], dict) else {}).get("change_id"))


async def _protections(tx: Tx, consents: list[Obj]) -> dict[str, float]:
    """The end of the protection of each consent's change, by change id (the objects
    table's ``expires_at``, which the change's own check compares with its row)."""
    ids = sorted({_change_of(o) for o in consents})
    changes = await tx.objects_by_key("change", ids) if ids else []
    return {
        c["id"]: float(c["expires_at"])
        for c in changes
        if isinstance(c["expires_at"], (int, float))
    }


async def _rollbacks_disagree(tx: Tx, objs: list[Obj], taken: Taken) -> tuple[str, str] | None:
    """``("rollback ID", why)`` of the first of ``objs`` its rows do not account for."""
    for o in objs:
        if not isinstance(o["data"], dict):
            return f"rollback {o['id']}", f"rollback {o['id']}: its data cannot be read: {BY_HAND}"
        why = await rollback_disagrees(tx, o["id"], o["data"], o["state"], PROBE_ROWS, taken)
        if why is not None:
            return f"rollback {o['id']}", why
    return None


async def _kind_disagrees(
    store: Store, kind: str, states: tuple[str, ...] | None
) -> tuple[str, str] | None:
    async def listed(tx: Tx) -> list[str]:
        return await tx.object_keys(kind, states)

    taken: Taken = {}  # the object each row records, across pages

    async def judge(page: Sequence[str]) -> tuple[str, str] | None:
        async def check(tx: Tx) -> tuple[str, str] | None:
            # read again, from the table, with the rows in this snapshot: one no longer in
            # a state checked (a consent used since) is left out
            objs = [
                o
                for o in await tx.objects_by_key(kind, list(page))
                if states is None or o["state"] in states
            ]
            if kind == "rollback":
                return await _rollbacks_disagree(tx, objs, taken)
            now = tx.now()
            ends = await _protections(tx, objs) if kind == "consent" else {}
            probes = [object_probes(o, ends.get(_change_of(o))) for o in objs]
            found = await tx.audit_probes([p for ps in probes for p in ps])
            at = 0
            for o, ps in zip(objs, probes, strict=True):
                why = object_disagrees(o, found[at : at + len(ps)], now, taken)
                at += len(ps)
                if why is not None:
                    return f"{kind} {o['id']}", why
            return None

        return await store.read(check)

    return await first_in_pages(await store.read(listed), PAGE, judge)
