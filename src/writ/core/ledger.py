"""The audit ledger: one hash-chained row per state change.

Row fields are exactly those of PROTOCOL.md (:data:`FIELDS`). A row is sealed by

    hash = sha256_hex(prev_hash + canonical_json(row without "hash"))

where ``canonical_json`` is JSON with sorted keys, no spaces (``","`` and ``":"``), and
non-ASCII characters kept as UTF-8. The first row's ``prev_hash`` is 64 zeros. Stores keep
the canonical text (``body``) as written, so verification rehashes the exact bytes and any
change to a row — its body, its hash, or its place in the chain — is found and named.

Stores also keep a few fields as columns of their own, for lookups (:data:`COLUMNS`: the
row's time, event, resource and lock key). They are outside the hash, so verification
checks each one against the hashed body too (a :data:`Record` instead of a bare ``(seq,
body, hash)`` triple): a column edited by hand would change what ``who``, filters and
postmortems find while the chain still verified.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from writ.core.bulk import make_way
from writ.core.clock import parse_time, stamp
from writ.core.errors import Invalid, WritError
from writ.core.validate import loads

FIELDS: tuple[str, ...] = (
    "seq",
    "timestamp",
    "event",
    "agent_id",
    "resource",
    "lock_holder",
    "lock_key",
    "lock_acquired_at",
    "fencing_token",
    "rollback_allowed",
    "rollback_path",
    "rollback_key_holder",
    "approved_by",
    "human_override_queue",
    "rollback_denominator",
    "rollback_denominator_is_defect",
    "second_key_revoke_provenance",
    "notes",
    "prev_hash",
    "hash",
)
GENESIS = "0" * 64
_DEFAULTS: dict[str, Any] = {
    "lock_holder": "none",
    "lock_key": None,
    "lock_acquired_at": None,
    "fencing_token": None,
    "rollback_allowed": False,
    "rollback_path": None,
    "rollback_key_holder": None,
    "approved_by": None,
    "human_override_queue": None,
    "rollback_denominator": None,
    "rollback_denominator_is_defect": False,
    "second_key_revoke_provenance": None,
    "notes": None,
}


# the lookup columns a store keeps beside (seq, body, hash), in Record order
COLUMNS: tuple[str, ...] = ("ts", "event", "resource", "lock_key")
Stored = tuple[int, str, str]
"""``(seq, body, hash)`` as stored."""
Record = tuple[int, str, str, float, str, str, "str | None"]
"""``(seq, body, hash, ts, event, resource, lock_key)``: a stored row with its lookup
columns, which :func:`verify` checks against the body."""

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_FIELD_SET = frozenset(FIELDS)


def canonical(obj: Any) -> str:
    """The canonical JSON text that is hashed (one encoder, built once)."""
    return _CANONICAL.encode(obj)


def digest(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Sealed:
    """A row ready for the store: its fields, canonical body and hash."""

    seq: int
    timestamp: float
    event: str
    resource: str
    lock_key: str | None
    lock_holder: str
    body: str
    hash: str

    def row(self) -> dict[str, Any]:
        return row_from(self.body, self.hash, self.seq)


def seal(seq: int, prev_hash: str, at: float, fields: dict[str, Any]) -> Sealed:
    """Fill defaults, stamp ``seq``/``timestamp``/``prev_hash`` and hash the row."""
    row = dict(_DEFAULTS)
    row.update(fields)
    if not row.get("lock_holder"):
        row["lock_holder"] = "none"
    row["seq"] = seq
    row["timestamp"], at = stamp(at)  # the row's time is the microsecond it shows
    row["prev_hash"] = prev_hash
    if not _FIELD_SET.issuperset(row):
        unknown = set(row) - _FIELD_SET
        raise ValueError(f"not audit fields: {sorted(unknown)}")
    body = canonical(row)
    return Sealed(
        seq=seq,
        timestamp=at,
        event=row["event"],
        resource=row["resource"],
        lock_key=row["lock_key"],
        lock_holder=row["lock_holder"],
        body=body,
        hash=digest(prev_hash, body),
    )


class NotText(str):
    """A value read from a column writ keeps text in that held something else there (on
    SQLite, a BLOB: ``CAST(body AS BLOB)`` keeps the bytes and changes only the stored
    type), given as text so a reader can still show it; ``stored`` names what it was.
    Never what writ wrote: :func:`verify` and :func:`row_from` name the row (see
    :func:`as_text`)."""

    stored: str


_STORED_NAMES: dict[type, str] = {bytes: "a BLOB", int: "an integer", float: "a real number"}
_STORED_NAMES |= {str: "text", type(None): "NULL"}


def stored_name(value: Any) -> str:
    """How a store holds ``value``, in words ("a BLOB", "text", "NULL", ...)."""
    if isinstance(value, NotText):
        return value.stored
    return _STORED_NAMES.get(type(value), f"a {type(value).__name__}")


def as_text(value: Any) -> str:
    """``value`` (a column read back) as text: itself when it is text, else a
    :class:`NotText` of it (bytes decoded as UTF-8, a bad byte as U+FFFD)."""
    if value.__class__ is str or isinstance(value, NotText):
        return value
    shown = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    out = NotText("" if value is None else shown)
    out.stored = stored_name(value)
    return out


# what writ stores in each column of a stored row (a Record), in Record order
_STORED_AS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("seq", (int,), "an integer"),
    ("body", (str,), "text"),
    ("hash", (str,), "text"),
    ("ts", (float, int), "a real number"),
    ("event", (str,), "text"),
    ("resource", (str,), "text"),
    ("lock_key", (str, type(None)), "text"),
)


def stored_wrong(rec: Sequence[Any]) -> str | None:
    """Why a stored row (a :data:`Stored` or :data:`Record`) holds a column in another type
    than writ stores it in (``row 7's body is stored as a BLOB, not text``), or None."""
    for (name, types, want), value in zip(_STORED_AS, rec, strict=False):
        if value.__class__ not in types:
            seq = rec[0] if rec[0].__class__ is int else "?"
            return (
                f"row {seq}'s {name} is stored as {stored_name(value)}, not {want}: the row "
                "was changed by hand"
            )
    return None


UNREADABLE = "unreadable"
"""The event of a stub row: a stored body writ cannot read (see :func:`row_from`)."""

_NONE = type(None)
# the JSON types each field may have (exact types: a boolean is no fencing token); seq and
# the times are checked on their own
_TYPES: dict[str, tuple[type, ...]] = {
    "event": (str,),
    "resource": (str,),
    "prev_hash": (str,),
    **{
        k: (str, _NONE)
        for k in (
            "agent_id",
            "lock_holder",
            "lock_key",
            "rollback_path",
            "rollback_key_holder",
            "approved_by",
            "human_override_queue",
            "rollback_denominator",
            "notes",
        )
    },
    "fencing_token": (int, _NONE),
    "rollback_allowed": (bool, _NONE),
    "rollback_denominator_is_defect": (bool, _NONE),
    "second_key_revoke_provenance": (dict, _NONE),
}
_JSON_NAMES: dict[type, str] = {dict: "an object", list: "an array", str: "text"}
_JSON_NAMES |= {int: "a number", float: "a number", bool: "a boolean", _NONE: "null"}
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")  # as writ writes them


def _readable_time(value: Any) -> bool:
    """Is ``value`` a time :func:`~writ.core.clock.parse_time` reads (RFC 3339 text)?"""
    if type(value) is not str:
        return False
    if _STAMP.fullmatch(value):  # the form writ writes: only the calendar can be wrong
        try:
            datetime.fromisoformat(value)
            return True
        except ValueError:
            return False
    try:
        parse_time(value, 0.0)
    except (Invalid, ValueError, OverflowError):
        return False
    return True


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _unreadable_why(data: Any, seq: int | None) -> str | None:
    """Why a parsed body is not a row writ can read (None when it is one)."""
    if type(data) is not dict:
        return f"the body is {_name(data)}, not an object"
    got = data.get("seq")
    if type(got) is not int:
        return f"its seq is {_name(got)} ({_shown(got)}), not a number"
    if seq is not None and got != seq:
        return f"it says seq {got}, but the store keeps it as seq {seq}"
    if not _readable_time(data.get("timestamp")):
        return f"its timestamp {_shown(data.get('timestamp'))} is not a time writ reads"
    at = data.get("lock_acquired_at")
    if at is not None and not _readable_time(at):
        return f"its lock_acquired_at {_shown(at)} is not a time writ reads"
    for k, types in _TYPES.items():
        if type(v := data.get(k)) not in types:
            return f"its {k} is {_name(v)}, not {_JSON_NAMES[types[0]]}"
    prov = data.get("second_key_revoke_provenance")
    if prov and any(type(v) in (dict, list) for v in prov.values()):
        return "its second_key_revoke_provenance holds more than plain values"
    return None


def _name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), "a JSON value")


def unreadable_row(seq: int | None, hash_: str, why: str) -> dict[str, Any]:
    """The stub that stands for a stored row writ cannot read: its seq (the store's), event
    :data:`UNREADABLE`, the reason in ``notes``, its stored hash, every other field null.
    It never verifies (its fields do not hash to ``hash``), so a report says the row is
    broken, as ``writ audit verify`` does."""
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row.update(seq=seq, event=UNREADABLE, notes=f"row {seq} is unreadable: {why}", hash=hash_)
    return row


def row_from(body: str, hash_: str, seq: int | None = None) -> dict[str, Any]:
    """The wire row (fields in PROTOCOL.md order) from a stored body and hash.

    Never raises: a body edited by hand into something writ cannot read (not text, such
    as a SQLite BLOB, or a hash that is not; not a JSON object, nested too deep, a field of the wrong type, a time that is not one, another
    ``seq`` than the store's, when ``seq`` is given) reads as :func:`unreadable_row`, so
    one edited row cannot stop a read, a report or an export.
    """
    if body.__class__ is not str or hash_.__class__ is not str:
        col, value = ("body", body) if body.__class__ is not str else ("hash", hash_)
        stored = f"its {col} is stored as {stored_name(value)}, not text (changed by hand)"
        return unreadable_row(seq, as_text(hash_), stored)
    try:
        data = loads(body)  # a hand-written lone surrogate reads as U+FFFD, never a failed read
    except RecursionError:
        return unreadable_row(seq, hash_, "the body nests deeper than writ reads")
    except ValueError as exc:
        return unreadable_row(seq, hash_, f"the body is not JSON ({_shown(str(exc))})")
    if (why := _unreadable_why(data, seq)) is not None:
        return unreadable_row(seq if seq is not None else _seq_of(data), hash_, why)
    data["hash"] = hash_
    return {k: data.get(k) for k in FIELDS}


def _seq_of(data: Any) -> int | None:
    seq = data.get("seq") if type(data) is dict else None
    return seq if type(seq) is int else None


#: What a verify answer may name beside the chain, when the chain itself verified (no bad
#: seq) but a table writ serves from does not agree with it (:mod:`writ.stores.accounted`):
#: a held lease (or one the ledger holds open), a principal, a queued request, a policy object
NAMED: tuple[str, ...] = ("lease_id", "principal", "waiter_id", "policy_object")


def named(answer: Any) -> dict[str, str]:
    """The :data:`NAMED` fields ``answer`` (a verify's result) sets."""
    return {k: v for k in NAMED if (v := getattr(answer, k))}


@dataclass(slots=True)
class Verification:
    ok: bool
    rows: int
    head: str
    first_bad_seq: int | None
    reason: str | None = None
    # a held lease the ledger does not account for (the chain itself verified: no bad seq)
    lease_id: str | None = None
    # a principal the ledger does not account for (likewise)
    principal: str | None = None
    # a queued request the ledger does not account for (likewise)
    waiter_id: str | None = None
    # a policy object the ledger does not account for, as "KIND ID" (likewise)
    policy_object: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "rows": self.rows,
            "head": self.head,
            "first_bad_seq": self.first_bad_seq,
        }
        if self.reason:
            out["reason"] = self.reason
        return out | named(self)


def verify(
    stored: Iterable[Stored] | Iterable[Record],
    start_seq: int = 1,
    start_hash: str = GENESIS,
) -> Verification:
    """Check a chain of stored ``(seq, body, hash)`` triples in seq order.

    Names the first row whose hash does not match its bytes, whose ``prev_hash`` does not
    name the row before it, or whose ``seq`` breaks the 1, 2, 3, ... order — and, for a
    :data:`Record`, whose lookup columns disagree with its body.
    """
    prev, expect, n = start_hash, start_seq, 0
    loads, sha = json.loads, hashlib.sha256
    seconds, enc = _SECONDS, _ENC
    for rec in stored:
        seq, body, hash_ = rec[0], rec[1], rec[2]
        bad: str | None = None
        if seq != expect:
            bad = f"seq {seq} where {expect} was expected (a row is missing or extra)"
        elif body.__class__ is not str or hash_.__class__ is not str:
            bad = stored_wrong(rec)  # a BLOB, say: never what writ wrote, whatever its bytes
        elif sha((prev + body).encode()).hexdigest() != hash_:
            bad = "hash does not match the row's bytes (the row or its hash was changed)"
        elif (
            # fast path: canonical bodies sort their keys, so the top level has
            # ..."prev_hash":"<hex>","resource":... and ends with
            # ,"seq":N,"timestamp":"<27 characters>"} (the hash above already binds the row
            # to the one before; this only checks the body agrees). Anything unusual falls
            # through to the full parse below.
            body[-29 - len(tail := f',"seq":{seq},"timestamp":"') : -29] == tail
            and f',"prev_hash":"{prev}","resource":' in body
        ):
            pass
        else:
            try:
                data = loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
                data = None
            if not isinstance(data, dict) or data.get("seq") != seq:
                bad = "row body does not carry its own seq"
            elif data.get("prev_hash") != prev:
                bad = "prev_hash does not name the row before it"
        if bad is None and len(rec) > 3:
            # the lookup columns against the body; fast path inline (see _columns_disagree)
            ts, event, resource, lock_key = rec[3:]
            try:
                ok = (
                    ts.__class__ is float
                    and body[-42:-29] == '"timestamp":"'
                    and body[-10] == "."
                    and body[-3:] == 'Z"}'
                    and (us := body[-9:-3]).isdigit()
                    and (sec := seconds[body[-29:-10]]) is not None
                    and -1e-6 <= ts - sec - int(us) * 1e-6 <= 1e-6
                    and (body.find("{", 1) < 0 or _keys_once(body))
                    and body.find(f'"event":{enc(event)},') > 0
                    and body.find(f'"resource":{enc(resource)},') > 0
                    and body.find(
                        '"lock_key":null,' if lock_key is None else f'"lock_key":{enc(lock_key)},'
                    )
                    > 0
                )
            except TypeError:  # a column not stored as text (a BLOB): named below
                ok = False
            if not ok:
                bad = stored_wrong(rec) or _columns_disagree(rec, body)
        if bad:
            return Verification(False, n, prev, seq if seq == expect else expect, bad)
        prev, expect, n = hash_, expect + 1, n + 1
    return Verification(True, n, prev, None)


_ENC = json.encoder.encode_basestring  # C, the function canonical() writes strings with


def _columns_disagree(rec: Record, body: str) -> str | None:
    """Why a row's lookup columns disagree with its hashed body, or None.

    Fast path, no JSON parse: in a body with no nested object (no ``{`` after the first;
    else: a key that occurs once), ``"event":`` can only be the top-level key (inside a
    string its quotes are escaped), so the exact text ``"event":<value>,`` names its value;
    the shown timestamp is the body's last 27 characters before ``"}`` (sorted keys end
    with it). Anything else takes the full parse.
    """
    _seq, _body, _hash, ts, event, resource, lock_key = rec
    if (
        isinstance(ts, float)
        and isinstance(event, str)
        and isinstance(resource, str)
        and (lock_key is None or isinstance(lock_key, str))
        and body[-42:-29] == '"timestamp":"'
        and body[-2:] == '"}'
        and (sec := _SECONDS[body[-29:-10]]) is not None
        and body[-10] == "."
        and body[-3] == "Z"
        and body[-9:-3].isdigit()
        # the column may sit within half a microsecond of the shown time (older ledgers
        # kept the raw clock reading)
        and abs(ts - sec - int(body[-9:-3]) / 1e6) <= 1e-6
        and (body.find("{", 1) == -1 or _keys_once(body))
        and f'"event":{_ENC(event)},' in body
        and f'"resource":{_ENC(resource)},' in body
        and f'"lock_key":{"null" if lock_key is None else _ENC(lock_key)},' in body
    ):
        return None
    return _columns_parsed(ts, event, resource, lock_key, body)


def _keys_once(body: str) -> bool:
    return (
        body.count('"event":') == 1
        and body.count('"resource":') == 1
        and body.count('"lock_key":') == 1
    )


class _Seconds(dict[str, "int | None"]):
    """``"2026-05-01T00:00:01"`` → its epoch second (None if not such a text); bounded."""

    def __missing__(self, text: str) -> int | None:
        if len(self) > 4096:
            self.clear()
        try:
            sec = (
                int(parse_time(text + "Z"))
                if len(text) == 19 and text[10] == "T" and text[:4].isdigit()
                else None
            )
        except (ValueError, WritError):
            sec = None
        self[text] = sec
        return sec


_SECONDS = _Seconds()


def _columns_parsed(ts: Any, event: Any, resource: Any, lock_key: Any, body: str) -> str | None:
    try:
        data = json.loads(body)
        shown = parse_time(data["timestamp"])
    except (ValueError, KeyError, TypeError, WritError):
        return "row body cannot be read back"
    if not isinstance(ts, (int, float)) or not abs(ts - shown) <= 1e-6:
        # (ledgers written before rows kept their shown microsecond hold the raw clock
        # reading, within half a microsecond of it)
        return (
            f"the ts column ({ts!r}) disagrees with the hashed row's timestamp "
            f"({data['timestamp']!r}): the column was changed by hand"
        )
    for name, col, want in (
        ("event", event, data.get("event")),
        ("resource", resource, data.get("resource")),
        ("lock_key", lock_key, data.get("lock_key")),
    ):
        if col != want or type(col) is not type(want):
            return (
                f"the {name} column ({col!r}) disagrees with the hashed row ({want!r}): "
                "the column was changed by hand"
            )
    return None


async def verify_stream(
    chunks: AsyncIterable[list[Stored]] | AsyncIterable[list[Record]],
    kept: tuple[int, str] | None = None,
    each: Callable[[Any], None] | None = None,
    since: tuple[int, str] = (0, GENESIS),
) -> Verification:
    """:func:`verify` over a store's ``audit_stream`` batches, in constant memory; with
    ``kept``, the head the store keeps beside the chain (read before the chain), which the
    chain must reach, with the same hash at that seq; with ``each``, each chunk is handed to
    it once verified. ``since`` is ``(seq, hash)`` of the row the chunks follow (verified
    before); the answer counts the rows through the last one verified, those included."""
    seq, head, total = since[0] + 1, since[1], since[0]
    kept = kept or (0, GENESIS)
    if (odd := kept_stored_oddly(kept)) is not None:
        return Verification(False, total, head, None, odd)
    if 0 < kept[0] == since[0] and kept[1] != since[1]:
        return Verification(False, total, head, kept[0], _NOT_THE_HEAD.format(kept[0]))
    async for chunk in chunks:
        began = time.perf_counter()
        part = verify(chunk, seq, head)
        await make_way(time.perf_counter() - began)
        total += part.rows
        if not part.ok:
            return Verification(False, total, part.head, part.first_bad_seq, part.reason)
        if (why := kept_row_differs(chunk, kept)) is not None:
            return Verification(False, total, part.head, kept[0], why)
        if each is not None:
            each(chunk)
        seq, head = seq + part.rows, part.head
    if (why := chain_short_of(total, kept)) is not None:
        return Verification(False, total, head, total + 1, why)
    return Verification(True, total, head, None)


_NOT_THE_HEAD = "row {} is not the row the store's head names (another hash)"


def kept_stored_oddly(kept: tuple[Any, Any]) -> str | None:
    """Why the head a store keeps is not ``(int, str)`` (a BLOB, text in the seq), or None:
    check it before :func:`kept_row_differs` or :func:`chain_short_of` use it."""
    if kept[0].__class__ is not int or kept[1].__class__ is not str:
        what = stored_name(kept[0] if kept[0].__class__ is not int else kept[1])
        return f"the store's head (audit_head) is stored as {what}: it was changed by hand"
    return None


def kept_row_differs(
    chunk: Sequence[Stored] | Sequence[Record], kept: tuple[int, str]
) -> str | None:
    """Why a verified chunk's row at the store's kept head seq is not the row it names, or
    None (also when the chunk does not hold that seq)."""
    first = chunk[0][0] if chunk else 0
    if chunk and first <= kept[0] <= chunk[-1][0] and chunk[kept[0] - first][2] != kept[1]:
        return _NOT_THE_HEAD.format(kept[0])
    return None


def chain_short_of(total: int, kept: tuple[int, str]) -> str | None:
    """Why a chain of ``total`` rows falls short of the store's kept head, or None."""
    if total < kept[0]:
        return (
            f"the chain ends at seq {total}, but the store's head is seq {kept[0]}: rows "
            f"{total + 1}..{kept[0]} were removed"
        )
    return None


async def text_pages(pages: AsyncIterator[list[Any]]) -> AsyncIterator[list[Stored]]:
    """Pages of stored ``(seq, body, hash)`` as text: a body or hash stored as something
    else (a SQLite BLOB) as :class:`NotText`, so a reader can show or export it (JSON) and
    :func:`verify` and :func:`row_from` still name the row."""
    async for rows in pages:
        yield [
            r
            if r[1].__class__ is str and r[2].__class__ is str
            else (r[0], as_text(r[1]), as_text(r[2]))
            for r in rows
        ]


def iter_rows(stored: Iterable[tuple[int, str, str]]) -> Iterator[dict[str, Any]]:
    for seq, body, hash_ in stored:
        yield row_from(body, hash_, seq)
