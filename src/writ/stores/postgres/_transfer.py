"""Export and import of the PostgreSQL store: a whole-store dump from one snapshot, and the
load of such a dump into an empty store (``writ migrate``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from writ.core.errors import Invalid
from writ.stores.postgres._batch import _Live
from writ.stores.postgres._sql import _translate
from writ.stores.rows import (
    export_row,
    export_sql,
    import_row,
    kept,
)
from writ.stores.tables import TABLES, check_empty


def _unstorable(url: str, table: str, exc: psycopg.Error) -> Invalid:
    """A dump's row PostgreSQL refuses (a NUL byte in a text, a number that is not one, a
    duplicate key): the data is at fault, not the connection, so no retry would help and no
    traceback says more than the driver's line (writ writes no such value itself)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Invalid(
        f"the {table} rows cannot be stored in {url}: {reason}. The data is bad (changed by "
        "hand?): nothing was imported; run 'writ audit verify' on the source and repair it"
    )


class _Transfer:
    """The export/import half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    url: str
    _write_lock: asyncio.Lock
    _live: _Live | None

    if TYPE_CHECKING:

        def _pool_or_fail(self) -> AsyncConnectionPool[Any]: ...

    # -- export and import -----------------------------------------------------------------
    async def export_rows(
        self, batch: int = 10_000
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        pool = self._pool_or_fail()
        with _translate("export the store"):
            async with pool.connection() as conn:
                # one snapshot for the whole dump
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    # the consumer may take its time between batches (it is writing them)
                    await conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                    cur = await conn.execute("SELECT last_value, is_called FROM fencing_token")
                    last, called = await cur.fetchone()
                    cur = await conn.execute("SELECT seq, hash FROM audit_head")
                    head = await cur.fetchone()
                    yield "meta", [{"fencing_token": int(last) if called else 0, **kept(head)}]
                    for table in TABLES:
                        async with conn.cursor(name=f"writ_export_{table}") as scur:
                            await scur.execute(export_sql(table))
                            while True:
                                rows = await scur.fetchmany(batch)
                                if not rows:
                                    break
                                yield table, [export_row(table, r) for r in rows]

    async def import_rows(
        self, batches: AsyncIterable[tuple[str, list[dict[str, Any]]]]
    ) -> dict[str, int]:
        pool = self._pool_or_fail()
        counts: dict[str, int] = {}
        with _translate("import into the store"):
            async with self._write_lock, pool.connection() as conn, conn.transaction():
                cur = await conn.execute("SELECT seq, hash, ts FROM audit_head FOR UPDATE")
                head = await cur.fetchone()
                existing = {}
                for table in TABLES:
                    cur = await conn.execute(f"SELECT count(*) FROM {table}")
                    existing[table] = int((await cur.fetchone())[0])
                check_empty(self.url, existing)
                token = 0
                last_audit: tuple[int, str, float] | None = None
                async for table, rows in batches:
                    if table == "meta":
                        for r in rows:
                            token = max(token, int(r.get("fencing_token") or 0))
                        continue
                    if table not in TABLES:
                        raise Invalid(f"cannot import unknown table {table!r}")
                    cols = TABLES[table]
                    try:
                        async with conn.cursor().copy(
                            f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                        ) as copy:
                            for r in rows:
                                await copy.write_row(import_row(table, r))
                    except (psycopg.DataError, psycopg.IntegrityError) as exc:
                        raise _unstorable(self.url, table, exc) from None
                    counts[table] = counts.get(table, 0) + len(rows)
                    if table == "leases" and rows:
                        token = max(token, max(int(r["fencing_token"]) for r in rows))
                    if table == "audit" and rows:
                        r = rows[-1]
                        last_audit = (int(r["seq"]), r["hash"], float(r["ts"]))
                if last_audit is not None:
                    ts = max(float(head[2]) if head else 0.0, last_audit[2])
                    await conn.execute(
                        "UPDATE audit_head SET seq = %s, hash = %s, ts = %s, epoch = epoch + 1",
                        (*last_audit[:2], ts),
                    )
                else:
                    await conn.execute("UPDATE audit_head SET epoch = epoch + 1")
                # every server (this one too) loads its live replica afresh
                self._live = None
                if token > 0:
                    await conn.execute("SELECT setval('fencing_token', %s, true)", (token,))
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence('waiters', 'seq'),"
                    " greatest((SELECT max(seq) FROM waiters), 1),"
                    " (SELECT max(seq) FROM waiters) IS NOT NULL)"
                )
                counts["meta"] = token
        return counts
