"""Moving a store to another backend: ``writ migrate --from URL --to URL``; upgrading one
in place: ``writ migrate --upgrade URL``.

Everything is copied — principals with their token hashes, leases, the wait queue, the
policy objects, the fencing-token counter, and the audit ledger row for row (body and hash
as stored) — into an empty destination, in one destination transaction. The source is
opened read-only (nothing created, migrated or written). Its chain is checked as it streams
out, up to the head the source keeps beside it, and then its tables against the rows, as
``writ audit verify`` checks them: a broken source chain, one whose last rows were removed,
or tables changed by hand abort the copy before anything is committed. The destination's
fencing-token counter is raised to at least the largest token a grant row names. The whole
store is verified again, read back from the destination, after commit.

Stop the servers on the source first: rows written to the source after the export's
snapshot are not copied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from writ.core.bulk import PAGE
from writ.core.errors import Invalid
from writ.core.ledger import (
    GENESIS,
    Record,
    Verification,
    chain_short_of,
    kept_row_differs,
    verify,
    verify_stream,
)
from writ.stores import OlderSchema, Store, open_store, redact
from writ.stores.accounted import Opened, tables_disagree
from writ.stores.tables import TABLES

__all__ = ["migrate", "upgrade", "verify_store"]

Progress = Callable[[str, int], None]


async def verify_store(
    store: Store,
    since: tuple[int, str] = (0, GENESIS),
    opened: Opened | None = None,
    each: Callable[[list[Record]], None] | None = None,
    tables: bool = True,
) -> Verification:
    """Recompute a store's whole hash chain, in constant memory, up to the head the store
    keeps beside it (rows removed from the end are found); then check every held lease
    against the rows of its life and every lease the rows leave open against the table
    (:mod:`writ.stores.held`), every principal against its ``principal.*`` rows
    (:mod:`writ.stores.enrolled`), every queued request against its ``lease.queued`` row
    (:mod:`writ.stores.queued`), and the policy objects that hold authority back against the
    rows that record them (:mod:`writ.stores.policy_objects`).

    From ``since`` (``(seq, hash)`` of a row verified before, and ``opened``, what the
    rows up to it left open) only the rows after it are walked (``writ serve``'s standing
    verify: :mod:`writ.evidence.sentinel`); ``each`` sees each chunk once verified.
    ``tables=False``: the chain alone (what a checkpoint signs)."""
    kept = await store.read(lambda tx: tx.audit_head())
    found_open = Opened() if opened is None else opened

    def step(chunk: list[Record]) -> None:
        found_open.feed(chunk)
        if each is not None:
            each(chunk)

    rows = store.audit_records(after_seq=since[0], batch=PAGE)
    chain = await verify_stream(rows, kept, step, since)
    if not chain.ok or not tables:
        return chain
    found = await tables_disagree(store, found_open)
    if found is not None:
        field, name, why = found
        return Verification(False, chain.rows, chain.head, None, why, **{field: name})
    return chain


class _Copy:
    """The export stream on its way to the destination: counts rows, reports progress,
    verifies the ledger as it passes, then the source's tables against it (raising before
    the destination commits)."""

    def __init__(self, src: Store, progress: Progress | None) -> None:
        self.src = src
        self.progress = progress
        self.opened = Opened()  # what the rows verified leave open, and the largest grant
        self.counts: dict[str, int] = {}
        self.seq, self.head = 1, GENESIS
        self.last: tuple[int, str] = (0, GENESIS)
        # the head the source keeps beside its chain (its dump's meta row): the chain must
        # reach it, or rows were removed from its end, and the copy would hide that
        self.kept: tuple[int, str] = (0, GENESIS)

    def _refuse(self, first_bad_seq: int, reason: str) -> Invalid:
        return Invalid(
            f"the source ledger does not verify at seq {first_bad_seq}: {reason}; nothing "
            "was copied (run 'writ audit verify' on the source)",
            first_bad_seq=first_bad_seq,
        )

    async def tap(
        self, batches: AsyncIterator[tuple[str, list[dict[str, Any]]]]
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        async for table, rows in batches:
            if table == "meta" and rows and rows[0].get("audit_head"):
                seq, hash_ = rows[0]["audit_head"]
                self.kept = (int(seq), str(hash_))
            if table == "audit" and rows:
                triples: list[Record] = [
                    (
                        int(r["seq"]),
                        str(r["body"]),
                        str(r["hash"]),
                        r["ts"],
                        r["event"],
                        r["resource"],
                        r["lock_key"],
                    )
                    for r in rows
                ]
                part = verify(triples, self.seq, self.head)
                if not part.ok:
                    raise self._refuse(part.first_bad_seq or self.seq, part.reason or "")
                if (why := kept_row_differs(triples, self.kept)) is not None:
                    raise self._refuse(self.kept[0], why)
                self.opened.feed(triples)  # lookup columns checked against the bodies
                self.seq, self.head = self.seq + part.rows, part.head
                self.last = triples[-1][0], triples[-1][2]
            if table != "meta":
                self.counts[table] = self.counts.get(table, 0) + len(rows)
                if self.progress is not None:
                    self.progress(table, self.counts[table])
            yield table, rows
        if (why := chain_short_of(self.seq - 1, self.kept)) is not None:
            raise self._refuse(self.seq, why)  # before the destination commits
        found = await tables_disagree(self.src, self.opened)
        if found is not None:
            raise Invalid(
                f"the source's tables do not verify: {found[2]}; nothing was copied (run "
                "'writ audit verify' on the source)",
                **{found[0]: found[1]},
            )
        # a counter lowered by hand below a granted token must not come along (the next
        # grant would hand that token out again): at least the largest the ledger granted
        yield "meta", [{"fencing_token": self.opened.leases.top[0]}]


async def migrate(
    src_url: str, dst_url: str, progress: Progress | None = None, batch: int = 10_000
) -> dict[str, Any]:
    """Copy the store at ``src_url`` into the empty store at ``dst_url`` and verify it there.

    ``progress(table, rows_copied_so_far)`` is called after each batch. Returns
    ``{"ok", "source", "destination", "tables": {table: rows}, "fencing_token",
    "head": {"seq", "hash"}, "verify": {...}, "reason"}``; ``ok`` is true when the
    destination verifies and its chain ends at the source's last row (``reason``, None then,
    says why not). Raises :class:`~writ.errors.Invalid` when the source is no writ store at
    this writ's schema, the destination is not empty, or the source does not verify (nothing
    is copied), :class:`~writ.errors.Unavailable` when a store cannot be reached.
    """
    if src_url == dst_url:
        raise Invalid("--from and --to name the same store")
    src, dst = open_store(src_url, read_only=True), open_store(dst_url)
    await src.open()
    try:
        await dst.open()
        try:
            copy = _Copy(src, progress)
            loaded = await dst.import_rows(copy.tap(src.export_rows(batch)))
            checked = await verify_store(dst)
            dst_head = await dst.read(lambda tx: tx.audit_head())
        finally:
            await dst.close()
    finally:
        await src.close()
    tables = {t: loaded.get(t, 0) for t in TABLES}
    reason = _differs(checked, dst_head, copy, tables)
    return {
        "ok": reason is None,
        "reason": reason and f"the destination {redact(dst_url)}: {reason}",
        "source": redact(src_url),
        "destination": redact(dst_url),
        "tables": tables,
        "fencing_token": loaded.get("meta", 0),
        "head": {"seq": dst_head[0], "hash": dst_head[1]},
        "verify": checked.to_dict(),
    }


def _differs(
    checked: Verification, head: tuple[int, str], copy: _Copy, tables: dict[str, int]
) -> str | None:
    """Why the destination, read back after commit, is not the source's copy, or None."""
    sent = {t: copy.counts.get(t, 0) for t in tables}
    if not checked.ok:
        at = f" at seq {checked.first_bad_seq}" if checked.first_bad_seq else ""
        return f"it does not verify{at}: {checked.reason}"
    if head != copy.last:
        return f"its chain ends at seq {head[0]}, the source's at seq {copy.last[0]}"
    if tables != sent:
        return f"it holds {tables} rows, the source sent {sent}"
    return None


async def upgrade(url: str) -> dict[str, Any]:
    """Bring the store at ``url`` up to this writ's schema in place — the migrations it
    lacks, each in the store's migration table — then verify its whole chain.

    Stop every server on the store first (a server of the older writ is refused once the
    PostgreSQL store is upgraded). Returns ``{"ok", "store", "applied": [names],
    "head": {"seq", "hash"}, "verify": {...}}``; ``ok`` when the chain verifies. Raises
    :class:`~writ.errors.Invalid` when there is no writ store at ``url`` (nothing is created)
    or its schema is newer than this writ's.
    """
    probe = open_store(url, read_only=True)
    try:
        await probe.open()  # refuses what is no writ store, or a newer one's
    except OlderSchema:
        pass  # what an upgrade is for
    else:
        await probe.close()
    store = open_store(url)
    await store.open()  # opening a store applies the migrations it lacks
    try:
        checked = await verify_store(store)
        head = await store.read(lambda tx: tx.audit_head())
    finally:
        await store.close()
    return {
        "ok": checked.ok,
        "store": redact(url),
        "applied": list(getattr(store, "applied", [])),
        "head": {"seq": head[0], "hash": head[1]},
        "verify": checked.to_dict(),
    }
