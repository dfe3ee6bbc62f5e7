"""Reading the ledger's notes (the row texts the engine writes) and writing times and durations.

Agent and human words stand in the notes among writ's own: some quoted as Python's ``repr``
writes them (an intent, a holder's intent, a changed attribute and its summary in a refusal),
some as they were given (a change's attribute and summary, a reason). Each is read as the text
it is: a quoted one by its quotes and escapes (:func:`literal`), one given as it was by what
writ writes after it (its ids and times, at the end), never by a search of the whole note, so
no word of an agent's reads as writ's."""

from __future__ import annotations

import ast
import re
import secrets
from collections import defaultdict
from typing import Any

from writ.core.clock import parse_time
from writ.core.models import named_in

# what a row worded otherwise than writ words it today does not say (never shown as "None")
UNKNOWN = "(unknown)"
# a consent expired with no override queue to escalate to (the row says "nobody: no queue")
NO_QUEUE = "nobody (no override queue)"

# ----------------------------------------------------------------------------- build
# a string as repr quotes it: an escape (a backslash and the next character) or a character
# but the quote, a backslash or a line end, between quotes (the two never overlap: linear)
_LITERAL = re.compile(r"'(?:[^'\\\r\n]|\\.)*'" r'|"(?:[^"\\\r\n]|\\.)*"', re.S)
_GRANTED, _TTL = re.compile(r"granted \S+ for "), re.compile(r", ttl (\S+?)s")
_USED = re.compile(r"^consent (\S+) from (\S+) used for change (\S+) by (\S+)$")
_ASK = re.compile(r"^(\S+) asks (\S+) to undo (.*)\Z", re.S)
_ANSWER = re.compile(  # a queue member's answer names the queue: "jane (member of Q) granted"
    r"^(\S+)(?: \(member of \S+\))? (granted|denied) (\S+)'s request to undo (.*) "
    r"\(change (\S+) by (\S+)\)\Z",
    re.S,
)
_EXPIRED = re.compile(
    r"^(\S+) did not answer (\S+)'s consent request by (\S+): .*escalated to (.+)\Z", re.S
)
_RB_ASK = re.compile(r"^(\S+) asks (\S+) to roll back (\S+): (.*)\Z", re.S)
_RB_DONE = re.compile(r"^rollback (rb_[A-Za-z0-9_-]+) approved by ")
# the queued request a row of today's writ ends the wait of (models.waited_as)
_WAITED = re.compile(r"; waiter ([A-Za-z0-9_-]+)\Z")
# the waiter and request a row of today's writ names at its end (models.queued_as) are
# left out of the reason
_QUEUED = re.compile(
    r"^queued at position (\d+) for up to (\S+?)s: (.*?)"
    r"(?:; waiter ([A-Za-z0-9_-]+), request sha256:[0-9a-f]{64})?$",
    re.S,
)
_WAITED_FIRST = re.compile(r"waited \S+s; ")
# a refusal by the words writ begins its reason with (agent text quoted: '…')
_KINDS = (
    ("queue", re.compile(r"(?:\S+ has )?\d+ conflicting request\(s\) queued ahead")),
    ("lock_delay", re.compile(r"\S+ is in lock-delay ")),
    ("held", re.compile(r"\S+ is held (?:by |through its blast radius)")),
    ("frozen", re.compile(r"\S+ is frozen (?:by |through its blast radius)")),
    (
        "consent_required",
        re.compile(
            r"\S+ changed '…' on \S+ at \S+ \(summary: '…'\); it is protected until "
            r"|\S+ is protected until \S+ by a recent change"
        ),
    ),
)


def literal(text: str, i: int) -> tuple[str, int] | None:
    """``(value, end)`` of the string quoted as ``repr`` writes one that begins at
    ``text[i]`` (its quote): its value, escapes read, and the index after its closing
    quote; None when none begins there."""
    m = _LITERAL.match(text, i)
    if m is None:
        return None
    try:
        value = ast.literal_eval(m.group())
    except (ValueError, SyntaxError):
        return None
    return (value, m.end()) if isinstance(value, str) else None


def own_words(text: str) -> str:
    """``text`` with each string quoted in it (the agent's or human's words writ quotes) as
    ``'…'``: what is left is writ's own."""
    return _LITERAL.sub("'…'", text)


def _quoted_head(notes: str, verb: str) -> tuple[str, str] | None:
    """``(words, rest)`` of notes that begin ``VERB 'WORDS': REST`` (the quoted words read)."""
    if not notes.startswith(verb + " "):
        return None
    lit = literal(notes, len(verb) + 1)
    if lit is None or notes[lit[1] : lit[1] + 2] != ": ":
        return None
    return lit[0], notes[lit[1] + 2 :]


def granted(notes: str) -> tuple[str, float] | None:
    """``(intent, ttl_s)`` of a ``lease.granted`` row (``granted ID for 'INTENT', ttl Ns…``)."""
    m = _GRANTED.match(notes)
    lit = literal(notes, m.end()) if m else None
    if lit is None:
        return None
    ttl = _TTL.match(notes, lit[1])
    try:
        return (lit[0], float(ttl.group(1))) if ttl else None
    except ValueError:
        return None


def change_said(notes: str) -> tuple[str, str, str] | None:
    """``(attribute, summary, protected_until)`` of a ``change.recorded`` row (``ATTR:
    SUMMARY; protected until T``: the time is writ's, the last thing in it; the attribute
    ends at the first ``: ``)."""
    head, sep, until = notes.rpartition("; protected until ")
    attr, sep2, summary = head.partition(": ")
    if not sep or not sep2 or not until or any(c.isspace() for c in until):
        return None
    return attr, summary, until


def ask_said(notes: str) -> dict[str, Any]:
    """What a ``consent.requested`` row says: ``R asks A to undo ATTR (SUMMARY): REASON;
    answer by T; consent ID`` (an older writ's without ``; consent ID``). ``rest`` is
    ``ATTR (SUMMARY): REASON``, the agents' words (:meth:`Changes.asked` or :func:`undo_split`
    parts them); a part the
    row does not say is None."""
    head, consent_id = named_in(notes, "consent")
    body, sep, by_said = head.rpartition("; answer by ")
    by: str | None = by_said
    if not sep or not by_said or any(c.isspace() for c in by_said):
        body, by = head, None
    m = _ASK.match(body)
    return {
        "consent_id": consent_id,
        "requester": m.group(1) if m else None,
        "author": m.group(2) if m else None,
        "rest": m.group(3) if m else None,
        "answer_by": by if m else None,
    }


# A change's row says ``ATTR: SUMMARY`` and an ask names it ``ATTR (SUMMARY): ``; either part
# may hold ": ", " (" and "): " any number of times. Each way a change's words read as an ask
# (one for each ": ") is indexed by its hash, each found in one step from the hash of the
# whole, and an ask is looked up by the hash of each of its prefixes that "): " ends, found in
# one pass: each change and each ask is read once, whatever their length and however many
# changes came before (trying each ": " of each change for each ask, 600 asks on 600 changes
# of 2,000 characters took over a minute). The base is drawn per process, so no agent can
# write two texts that hash alike on purpose; a match is checked.
_PRIME = (1 << 61) - 1
_BASE = secrets.randbelow(_PRIME - 256) + 256
# what writing ": " as " (" adds to a text's hash, at the colon and at the space after it
_COLON, _PAREN = ord(" ") - ord(":"), ord("(") - ord(" ")

Author = tuple[str, str]  # a resource and an author on it


class Changes:
    """The ``ATTR: SUMMARY`` of each change recorded, by resource and author, to find the
    one an ask names (:meth:`asked`)."""

    def __init__(self) -> None:
        self._heads: dict[Author, list[str]] = defaultdict(list)
        # each author's changes read as asks, by (length, hash): the newest's (its place
        # among the author's changes, its words, where its attribute ends)
        self._as_asks: dict[Author, dict[tuple[int, int], tuple[int, str, int]]] = {}
        self._read: dict[Author, int] = defaultdict(int)  # how many are indexed
        self._longest: dict[Author, int] = defaultdict(int)
        self._powers = [1]  # _BASE ** n

    def add(self, resource: str, author: str, head: str) -> None:
        """A change's ``ATTR: SUMMARY`` (its row's words before ``; protected until``)."""
        self._heads[(resource, author)].append(head)

    def asked(self, resource: str, author: str, rest: str) -> tuple[str, str, str] | None:
        """``(attribute, summary, reason)`` of an ask's ``ATTR (SUMMARY): REASON`` by the
        newest change of ``author`` on ``resource`` recorded so far that it begins with
        (the one it names); None when it begins with none."""
        who = (resource, author)
        index = self._index(who)
        hits: list[tuple[int, str, int]] = []
        h, i, j = 0, 0, rest.find("): ")
        while 0 <= j <= self._longest[who]:
            for c in rest[i:j]:
                h = (h * _BASE + ord(c)) % _PRIME
            hit = index.get((j, h))
            if hit is not None:
                hits.append(hit)
            i, j = j, rest.find("): ", j + 1)
        for _, head, k in sorted(hits, key=lambda hit: -hit[0]):
            attr, summary = head[:k], head[k + 2 :]
            if rest.startswith(f"{attr} ({summary}): "):
                return attr, summary, rest[len(head) + 3 :]
        return None

    def _index(self, who: Author) -> dict[tuple[int, int], tuple[int, str, int]]:
        """``who``'s changes read as asks, those recorded since the last ask indexed too."""
        index = self._as_asks.setdefault(who, {})
        heads, powers = self._heads.get(who, []), self._powers
        for n in range(self._read[who], len(heads)):
            head, size, h = heads[n], len(heads[n]), 0
            while len(powers) < size:
                powers.append(powers[-1] * _BASE % _PRIME)
            for c in head:
                h = (h * _BASE + ord(c)) % _PRIME
            k = head.find(": ")
            while k >= 0:  # ATTR (SUMMARY): the same length, ": " written " (" at k
                as_ask = h + _COLON * powers[size - 1 - k] + _PAREN * powers[size - 2 - k]
                index[(size, as_ask % _PRIME)] = (n, head, k)
                k = head.find(": ", k + 1)
            self._longest[who] = max(self._longest[who], size)
        self._read[who] = len(heads)
        return index


def undo_split(rest: str, attribute: str | None = None) -> tuple[str, str, str] | None:
    """``(attribute, summary, reason)`` of an ask's ``ATTR (SUMMARY): REASON`` when no change
    recorded before it names its parts (:meth:`Changes.asked`): ``attribute`` (an answer's,
    which names it exactly) and the first ``): `` after it; else the first `` (`` and the
    first ``): `` after it. None when it reads as none."""
    if attribute is not None and rest.startswith(attribute + " ("):
        attr, tail = attribute, rest[len(attribute) + 2 :]
    else:
        attr, sep, tail = rest.partition(" (")
        if not sep:
            return None
    summary, sep, reason = tail.partition("): ")
    return (attr, summary, reason) if sep else None


def answer_said(notes: str) -> dict[str, Any] | None:
    """What a ``consent.granted`` or ``consent.denied`` row says: ``BY[ (member of Q)]
    granted R's request to undo ATTR (change C by A); consent ID`` (an older writ's without
    ``; consent ID``); None when worded otherwise."""
    head, consent_id = named_in(notes, "consent")
    m = _ANSWER.match(head)
    if m is None:
        return None
    keys = ("by", "status", "requester", "attribute", "change_id", "author")
    return {**dict(zip(keys, m.groups(), strict=True)), "consent_id": consent_id}


def expired_said(notes: str) -> tuple[str, str, str, str, str | None] | None:
    """``(author, requester, answer_by, escalated_to, consent_id)`` of a ``consent.expired``
    row (an older writ's names no consent: its id None)."""
    head, consent_id = named_in(notes, "consent")
    m = _EXPIRED.match(head)
    if m is None:
        return None
    queue = NO_QUEUE if m.group(4) == "nobody: no queue" else m.group(4)
    return m.group(1), m.group(2), m.group(3), queue, consent_id


def rollback_asked(row: dict[str, Any]) -> tuple[str | None, str]:
    """``(rollback_id, reason)`` of a ``rollback.requested`` row: ``R asks K to roll back
    LOCK_KEY: REASON; rollback ID`` (an older writ's without ``; rollback ID``)."""
    notes = row.get("notes") or ""
    head, rb_id = named_in(notes, "rollback")
    said = (
        f"{row.get('agent_id')} asks {row.get('rollback_key_holder')} to roll back "
        f"{row.get('lock_key')}: "
    )
    if head.startswith(said):
        return rb_id, head[len(said) :]
    m = _RB_ASK.match(head)
    return rb_id, (m.group(4) if m else notes)


def rollback_named(row: dict[str, Any]) -> str | None:
    """The rollback a decision, outcome or defect row names: an approval's, denial's or
    defect's at its end (``; rollback ID``), an outcome's at its start (``rollback ID approved
    by …``); None in an older writ's approval, denial or defect."""
    notes = row.get("notes") or ""
    if row.get("event") in ("rollback.executed", "rollback.failed"):
        m = _RB_DONE.match(notes)
        return m.group(1) if m else None
    if row.get("event") in ("rollback.approved", "rollback.denied", "rollback.defect"):
        return named_in(notes, "rollback")[1]
    return None


def waiter_of(row: dict[str, Any]) -> str | None:
    """The queued request a row that ends a wait names (``; waiter ID``), if it names one."""
    m = _WAITED.search(row.get("notes") or "")
    return m.group(1) if m else None


def when(ts: str | None, day: bool = False) -> str:
    """``2026-05-16T02:17:40.000000Z`` → ``02:17:40`` (``.123`` kept when not whole)."""
    if not ts:
        return "-"
    t = ts[11:19]
    frac = ts[20:26].rstrip("0") if len(ts) > 20 else ""
    if frac:
        t += "." + frac[:3].ljust(3, "0")
    return (ts[5:10] + " " + t) if day else t


def _secs(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return parse_time(b) - parse_time(a)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.3f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def classify_refusal(row: dict[str, Any]) -> tuple[str, str, str]:
    """``(kind, intent, reason)`` of a ``lease.denied``, ``lease.refused`` (not the
    caller's authority: kind ``forbidden``) or ``gate.refused`` row. The kind is read from
    writ's own words alone: the asker's intent is split off by its quotes, and the words
    quoted in the reason (a holder's intent, a changed attribute and its summary) are left
    out, so an agent's text that says "is frozen by" makes nothing frozen."""
    notes = _WAITED.sub("", row.get("notes") or "")
    if row.get("event") == "gate.refused":
        return "gate", "", notes
    said = _quoted_head(notes, "refused")
    intent, why = said if said else ("", notes)
    if row.get("event") == "lease.refused":
        return "forbidden", intent, why
    own = own_words(why)
    waited = _WAITED_FIRST.match(own)  # a queued request's refusal, once its wait ended
    own = own[waited.end() :] if waited else own
    kind = next((k for k, pattern in _KINDS if pattern.match(own)), None)
    if kind is not None:
        return kind, intent, why
    # an older writ's wording (or none of today's): looked for among writ's words alone
    if "protected until" in own and ("Ask first" in own or "consent" in own):
        kind = "consent_required"
    elif " is frozen by " in own:
        kind = "frozen"
    elif "lock-delay" in own:
        kind = "lock_delay"
    elif "queued ahead" in own:
        kind = "queue"
    elif " is held by " in own:
        kind = "held"
    else:
        kind = "refused"
    return kind, intent, why


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": r.get("seq"),
        "at": r.get("timestamp"),
        "event": r.get("event"),
        "agent": r.get("agent_id"),
        "resource": r.get("resource"),
        "holder": r.get("lock_holder"),
        "lock_key": r.get("lock_key"),
        "fencing_token": r.get("fencing_token"),
        "approved_by": r.get("approved_by"),
        "queue": r.get("human_override_queue"),
        "notes": r.get("notes") or "",
    }
