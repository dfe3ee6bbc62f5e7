"""History: the ledger read back — who held what when, rows, live events, verification."""

from __future__ import annotations

import ast
import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from writ.core import resources
from writ.core.bulk import PAGE, make_way
from writ.core.clock import parse_time, rfc3339
from writ.core.errors import WritError
from writ.core.ledger import UNREADABLE, Verification
from writ.core.models import Lease
from writ.core.polls import Polls
from writ.core.validate import number
from writ.engine.blast_overlaps import latest_grant
from writ.engine.hooks import MAX_WAIT_S
from writ.stores.base import Tx
from writ.stores.migrate import verify_store

if TYPE_CHECKING:
    from writ.engine import Engine


#: Rows of the ledger a filtered read walks in one step (about a millisecond of the loop).
WINDOW = 5000


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # the events long polls asking the same question share one reader (writ.core.polls)
        self._polls: Polls[dict[str, Any]] = Polls(lambda: engine.audit_changed)
        self._watches = self._polls.watches
        self._verify_run: asyncio.Task[None] | None = None  # the verify running now
        self._verify_next: asyncio.Future[Verification] | None = None  # the one asked for next

    async def who(self, resource: str, at: float | None = None) -> dict[str, Any]:
        """Who held write authority on ``resource`` at ``at`` (default now), from the ledger.

        A lease on the resource, on an ancestor of it, or on a member of a blast-radius group
        it is in (or an ancestor of one) counts (``BlastRadius.covering``): the latest grant
        on them answers while its lease is held, and nobody after, even where a lease of a
        lower token covering it is still held (they overlap only when the groups changed
        under them). The fence and the gate follow the same rule:
        :mod:`writ.engine.blast_overlaps`.

        A row the answer rests on that the store cannot read back (a stub, event
        ``unreadable``: see :func:`~writ.core.ledger.row_from`) is named in an added
        ``unreadable_rows`` field (its seq). When it is the grant, which alone names the
        holder, ``lock_holder`` is null (not known), never ``"none"``. No extra read: these
        are the rows the answer reads anyway.
        """
        resources.validate(resource)
        covering = self.engine.blast.covering(resource)

        async def fn(tx: Tx) -> dict[str, Any]:
            t = tx.now() if at is None else at
            # a time from the wire names a whole microsecond (as rows are shown): include
            # the rows stamped within it, e.g. a grant asked about at its own acquired_at
            grant = await latest_grant(tx, covering, t if at is None else t + 5e-7)
            if grant is not None and grant["event"] == UNREADABLE:
                return {
                    "resource": resource,
                    "at": rfc3339(t),
                    "lock_holder": None,
                    "lock_key": None,
                    "lease": None,
                    "unreadable_rows": [grant["seq"]],
                }
            unread: dict[str, Any] = {}
            if grant is not None:
                # held over [grant, end): a release, revoke or expiry row stamped at t means
                # free at t. Leases on one resource never overlap, so the last such row on
                # the grant's resource after the grant is this lease's end (one index probe).
                end = await tx.audit_latest(
                    [grant["resource"]], _END_EVENTS, t if at is None else t + 5e-7
                )
                if end is not None and end["event"] == UNREADABLE and end["seq"] > grant["seq"]:
                    unread["unreadable_rows"] = [end["seq"]]
                if end is None or end["seq"] < grant["seq"]:
                    held = await _held_at(tx, grant, t, t if at is None else t + 5e-7)
                    if held.unread:
                        unread["unreadable_rows"] = sorted(set(held.unread))
                    if held.held:
                        return {
                            "resource": resource,
                            "at": rfc3339(t),
                            "lock_holder": grant["lock_holder"],
                            "lock_key": grant["lock_key"],
                            "lease": held.lease,
                            **unread,
                        }
            return {
                "resource": resource,
                "at": rfc3339(t),
                "lock_holder": "none",
                "lock_key": None,
                "lease": None,
                **unread,
            }

        return await self.engine.store.read(fn)

    async def audit(
        self,
        after_seq: int = 0,
        limit: int = 1000,
        prefix: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:
        if prefix:
            resources.validate(prefix, "resource")
        limit = int(number(limit, "limit", 1, 100_000))
        after = int(number(after_seq, "after_seq", 0, 2**62))
        if limit <= PAGE:
            rows = await self._rows(after, limit, prefix, since, until)
            return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after}
        # more than a page (a long poll's 10,000): read page by page, taking turns with the
        # other bulk reads (core.bulk). Rows only ever follow the last seq, so the pages
        # together are what one read would give, as of the last
        rows, last = [], after
        while len(rows) < limit:
            want = min(limit - len(rows), PAGE)
            async with self.engine.bulk.page():
                page = await self._rows(last, want, prefix, since, until)
            rows += page
            if len(page) < want:
                break
            last = page[-1]["seq"]
        return {"rows": rows, "next_after_seq": rows[-1]["seq"] if rows else after}

    async def _rows(
        self, after: int, n: int, prefix: str | None, since: float | None, until: float | None
    ) -> list[dict[str, Any]]:
        """Up to ``n`` rows after ``after`` under the filters, at a bounded cost a step. An
        index of a filter finds few rows at once, but a broad one (``resource=prod`` over
        most of the ledger) is walked whole and sorted to answer ``limit=1``: 90-200 ms of
        the loop on 300,000 rows. So a filtered read walks the rows after ``after`` in seq
        order when they are few, uses the index when it holds few, and otherwise walks the
        ledger :data:`WINDOW` rows a step, making way for others between steps."""
        store = self.engine.store
        if not prefix and since is None and until is None:
            return await store.read(lambda tx: tx.audit_rows(after, n))
        head = (await store.read(lambda tx: tx.audit_head()))[0]
        if head - after <= WINDOW:
            return await store.read(lambda tx: tx.audit_rows(after, n, prefix, since, until, head))
        many = await store.read(lambda tx: tx.audit_candidates(prefix, since, until, WINDOW))
        if many < WINDOW:
            return await store.read(lambda tx: tx.audit_rows(after, n, prefix, since, until))
        rows: list[dict[str, Any]] = []
        lo = after
        while lo < head and len(rows) < n:
            began, hi, want = time.perf_counter(), min(lo + WINDOW, head), n - len(rows)
            rows += await store.read(self._window(lo, hi, want, prefix, since, until))
            lo = hi
            await make_way(time.perf_counter() - began)
        return rows

    @staticmethod
    def _window(
        lo: int, hi: int, n: int, prefix: str | None, since: float | None, until: float | None
    ) -> Callable[[Tx], Awaitable[list[dict[str, Any]]]]:
        return lambda tx: tx.audit_rows(lo, n, prefix, since, until, hi)

    async def events(
        self, prefix: str | None = None, after_seq: int = 0, wait_s: Any = 0, limit: int = 1000
    ) -> dict[str, Any]:
        """Rows under ``prefix`` after ``after_seq``; long-polls up to ``wait_s`` for one."""
        wait = number(wait_s, "wait_s", 0, MAX_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        after = int(number(after_seq, "after_seq", 0, 2**62))
        out = await self.audit(after, limit, prefix)
        if out["rows"] or deadline <= loop.time():
            return out

        # Wait with every long-poll asking the same question: one task re-reads after each
        # commit for all of them, so 1,000 watchers cost one query per commit, and none of
        # them wakes up until a row matches (each waking on every commit starves the loop).
        async def found() -> dict[str, Any] | None:
            out = await self.audit(after, limit, prefix)
            return out if out["rows"] else None

        page = await self._polls.wait((prefix, after, limit), found, deadline - loop.time())
        if page is None:
            return {"rows": [], "next_after_seq": after}
        return {**page, "rows": list(page["rows"])}

    async def verify(self) -> Verification:
        """Recompute the whole hash chain, batch by batch (constant memory), up to the head
        the store keeps beside it.

        Callers share runs: one runs at a time, and those who ask while it runs share the
        next one, which starts when it ends — so each answer covers the chain as it stood
        when its caller asked (or later), and a hundred callers at once cost two runs, not
        a hundred (a whole-ledger read is seconds of the server's CPU on a large ledger)."""
        fut = self._verify_next
        if fut is None:
            fut = self._verify_next = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieved)  # every caller may have hung up
            if self._verify_run is None:
                self._verify_start()
        return await asyncio.shield(fut)

    def _verify_start(self) -> None:
        fut, self._verify_next = self._verify_next, None
        assert fut is not None
        self._verify_run = asyncio.get_running_loop().create_task(self._verify(fut))

    async def _verify(self, fut: asyncio.Future[Verification]) -> None:
        try:
            fut.set_result(await verify_store(self.engine.store))
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # a store error reaches every caller of this run
            fut.set_exception(exc)
        finally:
            self._verify_run = None
            if self._verify_next is not None:
                self._verify_start()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


_END_EVENTS = ("lease.released", "lease.expired", "lease.revoked")
_LIVE = ("lease.granted", "lease.renewed")
_GRANTED_ID = re.compile(r"granted (\S+) for ")
# what a grant row's notes say of its lease (Queue._grant): its id, intent (as repr), ttl
# (six significant digits) and touches, which the plan's warnings and a waiter may follow
_GRANT_NOTES = re.compile(
    r"granted (\S+) for ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"), ttl (\S+?)s, touches (.*)\Z",
    re.S,
)
_RENEWED = "renewed until "
_US = 5e-7  # half a microsecond: a time as rows show it names that whole microsecond


class _Held:
    """Whether the lease a grant row records was held at the asked time, the lease as its
    rows say (or None), and the seqs of rows it rests on that cannot be read back."""

    __slots__ = ("held", "lease", "unread")

    def __init__(self, held: bool, lease: dict[str, Any] | None, unread: list[int]) -> None:
        self.held, self.lease, self.unread = held, lease, unread


async def _held_at(tx: Tx, grant: dict[str, Any], t: float, probe: float) -> _Held:
    """Whether the lease ``grant`` records, which no row ended at or before ``probe``, had
    lapsed at ``t``: from the rows. Its expiry at ``t`` is the last of its grant (the
    acquisition plus the ttl it shows) and its renewals (``renewed until …``) at or before
    ``probe`` — one index probe, as the end's. The leases table is an index to the lease's
    other fields, each one its rows carry checked against them (:func:`_as_rows_say`)."""
    unread: list[int] = []
    key = grant["lock_key"]
    renewal = await tx.audit_latest([grant["resource"]], ["lease.renewed"], probe)
    if renewal is not None and renewal["event"] == UNREADABLE and renewal["seq"] > grant["seq"]:
        unread.append(renewal["seq"])
    if renewal is not None and (renewal["seq"] < grant["seq"] or renewal["lock_key"] != key):
        renewal = None  # an earlier lease's (or unreadable: its grant's expiry is told)
    table = await _granted_lease(tx, grant)
    said, last_live, why = await _as_rows_say(tx, grant, table, unread)
    live = renewal or grant
    expiry = _row_expiry(live, grant)
    if table is not None and (expiry is None or (live["seq"] == last_live and not why)):
        expiry = table.expires_at  # exact, and agreeing with the rows to the microsecond
    # a lease whose rows cannot say its expiry (older notes) is held until its end row; a
    # time from the wire names its whole microsecond, so an expiry within it has come
    held = expiry is None or expiry > probe
    return _Held(held, said, unread)


def _row_expiry(live: dict[str, Any], grant: dict[str, Any]) -> float | None:
    """The expiry the row ``live`` (the grant or a renewal of it) gives its lease, to the
    microsecond (a grant's ttl to six significant digits), or None when its notes do not
    say it."""
    notes = live.get("notes") or ""
    try:
        if live["event"] == "lease.renewed":
            return parse_time(notes[len(_RENEWED) :]) if notes.startswith(_RENEWED) else None
        m = _GRANT_NOTES.match(notes)
        return parse_time(grant["lock_acquired_at"]) + float(m.group(3)) if m else None
    except (ValueError, WritError):
        return None


async def _as_rows_say(
    tx: Tx, grant: dict[str, Any], lease: Lease | None, unread: list[int]
) -> tuple[dict[str, Any] | None, int, bool]:
    """``lease`` (the table's, found through ``grant``) as the wire shows it, with every
    field its rows carry as the rows say it: the grant's holder, resource, fencing token,
    acquisition, id, intent, touches, rollback plan and (until a renewal) ttl; the last
    row of its life's state and end time, and the expiry of its last grant or renewal.
    Each column that disagrees is named in ``changed_by_hand`` (as verify names a held
    lease's). Also the seq of its last grant or renewal, and whether its expiry
    disagreed. Three index probes (:meth:`Tx.audit_lease_life`, and for an ended lease
    its last renewal); an unreadable row of its life is added to ``unread``."""
    if lease is None:  # a ledger imported without its leases: its rows alone answer
        return None, grant["seq"], False
    _, last = await tx.audit_lease_life(grant["lock_key"])
    if last is None or last["seq"] < grant["seq"]:
        last = grant
    live: dict[str, Any] | None = last if last["event"] in _LIVE else None
    if last["event"] in _END_EVENTS:
        live = await _renewed_before(tx, grant, last)
    elif live is None:  # unreadable: its state and expiry are not told
        unread.append(last["seq"])
    m = _GRANT_NOTES.match(grant.get("notes") or "")
    out, found = lease.to_dict(), []
    rb = dict(lease.rollback or {})
    fields: list[tuple[str, Any, Any, dict[str, Any]]] = [
        ("resource", lease.resource, grant["resource"], grant),
        ("holder", lease.holder, grant["lock_holder"], grant),
        ("fencing_token", lease.fencing_token, grant["fencing_token"], grant),
        ("acquired_at", out["acquired_at"], grant["lock_acquired_at"], grant),
    ]
    for name in ("allowed", "path", "key_holder", "denominator"):
        want = grant.get(f"rollback_{name}")
        have = bool(rb.get(name)) if name == "allowed" else rb.get(name)
        fields.append((f"rollback.{name}", have, want, grant))
    if rb.get("override_queue"):  # else the policy's default queue, named in the row
        fields.append(
            (
                "rollback.override_queue",
                rb["override_queue"],
                grant.get("human_override_queue"),
                grant,
            )
        )
    if m:
        fields += _said_fields(lease, m, grant, renewed=live is not grant)
    if live is not None:
        if last["event"] in _END_EVENTS:
            state, ended = last["event"].removeprefix("lease."), last["timestamp"]
        else:
            state, ended = "held", None
        fields += [("state", lease.state, state, last), ("ended_at", out["ended_at"], ended, last)]
        expiry = _row_expiry(live, grant)
        if expiry is not None:
            fields.append(("expires_at", out["expires_at"], _shown_expiry(live, lease), live))
    bad_expiry = False
    for name, have, want, row in fields:
        if have == want:
            continue
        found.append(
            f"lease {lease.lease_id} on {lease.resource}: the {name} column ({have!r}) "
            f"disagrees with its row {row['seq']} ({row['event']}, {want!r}): the leases "
            "table was changed by hand; shown as the row says"
        )
        bad_expiry = bad_expiry or name in ("expires_at", "acquired_at", "ttl_s")
        _put(out, rb, name, want)
    if found:
        out["lock_key"] = f"{out['resource']}/{out['fencing_token']}"
        out["changed_by_hand"] = found
    return out, (live or grant)["seq"], bad_expiry


def _said_fields(
    lease: Lease, m: re.Match[str], grant: dict[str, Any], renewed: bool
) -> list[tuple[str, Any, Any, dict[str, Any]]]:
    """What only the grant row's notes say: the lease's id, intent, touches and (until a
    renewal, which may set another) ttl."""
    try:
        intent = ast.literal_eval(m.group(2))
    except (ValueError, SyntaxError):
        intent = lease.intent  # not a repr writ writes: not told
    tail, joined = m.group(4), ",".join(lease.touches)
    touches = tail.split("; ", 1)[0] if not tail.startswith(joined + "; ") else joined
    out: list[tuple[str, Any, Any, dict[str, Any]]] = [
        ("lease_id", lease.lease_id, m.group(1), grant),
        ("intent", lease.intent, intent, grant),
        ("touches", lease.touches, touches.split(","), grant),
    ]
    if not renewed:
        out.append(("ttl_s", f"{lease.ttl_s:g}", m.group(3), grant))
    return out


def _shown_expiry(live: dict[str, Any], lease: Lease) -> str | None:
    """The expiry the row ``live`` gives ``lease``, as shown: a renewal's own words; a
    grant's, the acquisition plus the ttl (the columns themselves, checked against the
    grant row above: a ttl shows six significant digits)."""
    if live["event"] == "lease.renewed":
        return str(live.get("notes") or "")[len(_RENEWED) :]
    return rfc3339(lease.acquired_at + lease.ttl_s)


def _put(out: dict[str, Any], rb: dict[str, Any], name: str, want: Any) -> None:
    """Show the row's value of field ``name`` in the wire lease ``out``."""
    if name.startswith("rollback."):
        rb[name.removeprefix("rollback.")] = want
        out["rollback"] = rb
    elif name == "ttl_s":
        ttl = float(want)
        out[name] = int(ttl) if ttl.is_integer() else ttl
    else:
        out[name] = want


async def _renewed_before(
    tx: Tx, grant: dict[str, Any], end: dict[str, Any]
) -> dict[str, Any] | None:
    """The last grant or renewal row of the lease ``grant`` records, before its ``end``
    row: one index probe (renewals on its resource up to the end's microsecond)."""
    renewal = await tx.audit_latest(
        [grant["resource"]], ["lease.renewed"], parse_time(end["timestamp"]) + 2 * _US
    )
    if renewal is not None and renewal["seq"] > end["seq"]:
        # a later lease's renewal within the same microsecond (a clock that stood still)
        rows = await tx.audit_for_lock_key(grant["lock_key"])
        found = [r for r in rows if r["event"] == "lease.renewed" and r["seq"] < end["seq"]]
        renewal = found[-1] if found else None
    if renewal is None or renewal["seq"] < grant["seq"] or renewal["lock_key"] != grant["lock_key"]:
        return grant
    return renewal


async def _granted_lease(tx: Tx, grant: dict[str, Any]) -> Lease | None:
    """The lease a ``lease.granted`` row records, as the leases table holds it: by the id
    in the row's notes (whatever its columns say now: they are checked against the rows),
    else by its resource and fencing token (a ledger imported without its leases, or notes
    in another form)."""
    m = _GRANTED_ID.match(grant.get("notes") or "")
    lease = await tx.get_lease(m.group(1)) if m else None
    if lease is None:
        found = await tx.list_leases(grant["resource"], None, 100)
        lease = next((l for l in found if l.fencing_token == grant["fencing_token"]), None)
    return lease
