"""The principals against the ledger: the part of ``writ audit verify`` that covers the
principals table.

writ serves principals from the principals table (who may act, as what kind, as an
admin), and the table is outside the hash chain. So verify checks every principal against
the hashed ``principal.*`` rows of its life, found by their ``resource`` column
(``principals/NAME``; four index probes a principal, :meth:`~writ.stores.base.Tx.principal_lives`):
a ``principal.added`` row must name it and agree with the table on its kind, vendor, admin
flag and wake route; the latest of its ``principal.disabled`` and ``principal.enabled``
rows says whether it is disabled (and why, and its kind); the latest of its added and
``principal.queues`` rows gives its queues; the latest of its added, ``principal.rotated``
and ``principal.enabled`` rows its token's expiry (an enable's row does not say it: not
compared). What a row does not carry is not compared: a row without notes, or worded
otherwise than writ words it today, vouches only for the principal's existence (and the
kind it names); the chain vouches that writ wrote it. Token hashes are in no row.

The principals are read again with their rows in one snapshot, so one added, disabled or
rotated while verify runs is judged as it stood in that snapshot.

A principal whose name writ refuses to add (reserved for writ's own rows, or not a name) is
changed by hand whatever rows name it: rows appended after the last signed checkpoint may
be forged, and a principal ``writ`` acts as any other. One the table holds in a form writ
cannot read (queues that are not JSON, a time stored as text:
:class:`~writ.stores.rows.Unreadable`) is changed by hand too, named after any principal
that can be read and disagrees (:func:`~writ.stores.rows.told`): a decoy never hides an
admin written in by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from writ.core.bulk import first_in_pages
from writ.core.clock import rfc3339
from writ.core.models import NAME, Principal
from writ.core.wake_routes import redact
from writ.stores.base import Store, Tx
from writ.stores.rows import Unreadable, left_out, told

__all__ = ["PAGE", "principal_disagrees", "principals_disagree"]

PAGE = 200  # principals a snapshot
_ADDED, _ROTATED = "principal.added", "principal.rotated"
_DISABLED, _ENABLED, _QUEUES = "principal.disabled", "principal.enabled", "principal.queues"
_REFUSED = "; its token is refused"
#: The names writ writes into rows itself, which it never gives a principal
#: (:data:`writ.engine.principals.RESERVED_NAMES`, which a store does not import).
RESERVED = frozenset({"writ", "none", "operator", "unknown"})


async def principals_disagree(store: Store) -> tuple[str, str] | None:
    """``(name, why)`` of the first principal the ledger does not account for, or None."""

    async def listed(tx: Tx) -> tuple[list[str], list[Unreadable]]:
        return [p.name for p in await tx.list_principals()], list(left_out(tx))

    names, unread = await store.read(listed)

    async def judge(page: Sequence[str]) -> tuple[str, str] | None:
        async def check(tx: Tx) -> tuple[tuple[str, str] | None, list[Unreadable]]:
            # read again, from the table, with the rows in this snapshot
            for p, rows in await tx.principal_lives(list(page)):
                why = principal_disagrees(p, *rows)
                if why is not None:
                    return (p.name, why), left_out(tx)
            return None, left_out(tx)

        found, more = await store.read(check)
        unread.extend(more)
        return found

    return told(await first_in_pages(names, PAGE, judge), unread)


def principal_disagrees(
    p: Principal,
    added: dict[str, Any] | None,
    state: dict[str, Any] | None,
    queues: dict[str, Any] | None,
    token: dict[str, Any] | None,
) -> str | None:
    """Why the ledger's rows do not account for principal ``p``, or None: ``added`` is its
    ``principal.added`` row, ``state``, ``queues`` and ``token`` the latest rows saying
    whether it is disabled, its queues and its token's expiry (None: no such row)."""
    name = f"principal {p.name}"
    refused = _refused(p.name)
    if refused is not None:
        return (
            f"{name}: {refused}, which writ never gives a principal: the principal was written "
            "into the principals table by hand (and any row that names it after the last "
            "signed checkpoint)"
        )
    if added is None:
        return (
            f"{name}: no principal.added row names it (resource principals/{p.name}): the "
            "principal was written into the principals table by hand"
        )
    said = _added_says(p, added)
    if said is None:
        return (
            f"{name}: its row {added['seq']} (principal.added) does not read as writ words "
            f"one ({_shown(added.get('notes'))}), so it vouches for none of the kind, vendor, "
            "admin flag and wake route the principals table gives it: the table was changed "
            "by hand, or the row cannot tell"
        )
    checks: list[tuple[str, Any, Any, dict[str, Any]]] = [
        (f, have, said[f], added) for f, have in _added_fields(p, said) if f in said
    ]
    if state is None or state["event"] == _ENABLED:
        checks.append(("disabled", p.disabled_at is not None, False, state or added))
    if state is not None:
        checks += _state_fields(p, state)
    if queues is not None and queues["event"] == _QUEUES:
        set_to = _set_queues(p, queues)
        if set_to is not None:
            checks.append(("queues", ", ".join(p.queues) or "none", set_to, queues))
    elif "queues" in said:
        checks.append(("queues", ", ".join(p.queues), said["queues"], added))
    if token is not None and token["event"] == _ROTATED:
        notes = token.get("notes") or ""
        if notes.startswith(f"{token.get('agent_id')} rotated the token of {p.name}; "):
            after = notes.partition("; the new one expires at ")[2] or None
            checks.append(("token_expires_at", rfc3339(p.token_expires_at), after, token))
    elif token is not None and token["event"] == _ADDED and "token_expires_at" in said:
        want = said["token_expires_at"]
        checks.append(("token_expires_at", rfc3339(p.token_expires_at), want, added))
    for field, have, want, row in checks:
        if have != want:
            return (
                f"{name}: the {field} column ({have!r}) disagrees with its row {row['seq']} "
                f"({row['event']}, {want!r}): the principals table was changed by hand"
            )
    return None


def _refused(name: str) -> str | None:
    """Why writ refuses to add a principal named ``name`` (as ``add_principal`` does), or
    None."""
    if not NAME.fullmatch(name) or name.strip(".") == "":
        return f"its name {name!r} is not one writ takes (1-64 of a-z 0-9 . _ -, not only dots)"
    if name in RESERVED:
        return f"its name {name!r} is reserved for writ's own rows"
    return None


def _shown(notes: Any) -> str:
    text = repr(notes)
    return text if len(text) <= 120 else text[:119] + "…"


def _added_fields(p: Principal, said: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(field, table's)`` as the added row shows it (a wake route redacted, or whole as
    writ wrote it before it redacted them)."""
    wake = p.wake
    if wake is not None and said.get("wake") != wake:
        wake = redact(wake)
    return [("kind", p.kind), ("vendor", p.vendor), ("admin", p.admin), ("wake", wake)]


def _added_says(p: Principal, row: dict[str, Any]) -> dict[str, Any] | None:
    """What ``row`` (principal.added) says of ``p``, field by field, as writ words it:
    ``BY added KIND 'NAME'[ (vendor V)][ as admin][; wake W][; member of Q, ...][; its
    token expires at T]``. Notes worded otherwise from their start (none, or another
    writ's) say nothing, or only the kind when they go on otherwise right after the name:
    the chain vouches that writ wrote them, whatever they say. Notes that go on in writ's
    words after the name (a vendor, ``as admin``, ``; ``) but do not read to their end as
    writ's words are None: they vouch for nothing, and the principal disagrees with them.

    The vendor is free text, so its end is not told by the first ``)``: each ``)`` is tried,
    the table's own vendor first, and a reading counts only when the rest reads to its end
    (``(vendor Acme) as admin)`` is the vendor ``Acme) as admin``, never ``Acme`` and
    an admin flag)."""
    notes = row.get("notes") or ""
    head = f"{row.get('agent_id')} added "
    if not notes.startswith(head):
        return {}
    kind, _, rest = notes[len(head) :].partition(" ")
    if not rest.startswith(repr(p.name)):
        return {}
    rest = rest[len(repr(p.name)) :]
    if rest and not rest.startswith((_VENDOR, " as admin", "; ")):
        return {"kind": kind}  # worded otherwise after the name: an older writ's words
    if not rest.startswith(_VENDOR):
        tail = _tail(rest)
        return None if tail is None else {"kind": kind, "vendor": None, **tail}
    readings = []  # (vendor, what follows it) for each ")" after which the rest reads
    for i in range(len(_VENDOR) + 1, len(rest)):
        if rest[i] == ")" and (tail := _tail(rest[i + 1 :])) is not None:
            readings.append((rest[len(_VENDOR) : i], tail))
    if not readings:
        return None
    vendor, tail = next((r for r in readings if r[0] == p.vendor), readings[0])
    return {"kind": kind, "vendor": vendor, **tail}


_VENDOR = " (vendor "
_EXPIRES = re.compile(r"; its token expires at ([^;\s]+)\Z")
_MEMBER = re.compile(r"; member of ([a-z0-9._-]+(?:, [a-z0-9._-]+)*)\Z")


def _tail(rest: str) -> dict[str, Any] | None:
    """``[ as admin][; wake W][; member of Q, ...][; its token expires at T]`` read to its
    end (read from the end: a wake route may hold ``; ``), or None."""
    out: dict[str, Any] = {"admin": rest.startswith(" as admin")}
    rest = rest.removeprefix(" as admin")
    found = _EXPIRES.search(rest)
    out["token_expires_at"] = found[1] if found else None
    rest = rest[: found.start()] if found else rest
    found = _MEMBER.search(rest)
    out["queues"] = found[1] if found else ""
    rest = rest[: found.start()] if found else rest
    out["wake"] = rest[len("; wake ") :] if rest.startswith("; wake ") else None
    return out if rest == "" or out["wake"] else None


def _state_fields(p: Principal, row: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """What the latest disabled or enabled row says: the kind, and whether (and why) the
    principal is disabled."""
    verb = "disabled" if row["event"] == _DISABLED else "enabled"
    out: list[tuple[str, Any, Any, Any]] = []
    if verb == "disabled":
        out.append(("disabled", p.disabled_at is not None, True, row))
    notes = row.get("notes") or ""
    head = f"{row.get('agent_id')} {verb} "
    kind, _, rest = notes[len(head) :].partition(" ")
    if not notes.startswith(head) or not rest.startswith(f"{p.name}"):
        return out  # worded otherwise: its event alone is read
    out.append(("kind", p.kind, kind, row))
    if verb == "disabled" and rest.startswith(f"{p.name}: ") and rest.endswith(_REFUSED):
        why = rest[len(p.name) + 2 : -len(_REFUSED)]
        out.append(("disabled_reason", p.disabled_reason, why, row))
    return out


def _set_queues(p: Principal, row: dict[str, Any]) -> str | None:
    """The queues a ``principal.queues`` row set (``none`` for none), or None when it is
    worded otherwise."""
    notes = row.get("notes") or ""
    head = f"{row.get('agent_id')} set the queues of {p.name}: "
    if not notes.startswith(head) or " (was " not in notes:
        return None
    return notes[len(head) :].rpartition(" (was ")[0]
