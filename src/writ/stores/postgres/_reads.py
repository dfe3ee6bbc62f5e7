"""Reads of the PostgreSQL store: on a REPEATABLE READ snapshot, or — a single read — one
statement and the clock in one round trip; and the ledger in keyset pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from writ.stores.base import Tx
from writ.stores.postgres._batch import _Retry
from writ.stores.postgres._schema import _BEGIN_READ
from writ.stores.postgres._sql import T, _broken, _translate
from writ.stores.postgres._tx import PgTx, _NotSingle

if TYPE_CHECKING:
    from writ.stores.postgres._store import PostgresStore


class _Reads:
    """The read half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    max_attempts: int
    retries: int
    single_misses: int

    if TYPE_CHECKING:

        def _pool_or_fail(self) -> AsyncConnectionPool[Any]: ...
        async def _shielded(self, coro: Awaitable[T]) -> T: ...
        async def _rollback(self, conn: psycopg.AsyncConnection[Any]) -> None: ...
        async def _check_pool(self) -> None: ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]], single: bool = False) -> T:
        self._pool_or_fail()
        if single:
            try:
                return await self._shielded(self._read(fn, True))
            except _NotSingle:
                self.single_misses += 1  # it asked for more: on a snapshot, as any read
        return await self._shielded(self._read(fn, False))

    async def _read(self, fn: Callable[[Tx], Awaitable[T]], single: bool) -> T:
        """``fn`` on a REPEATABLE READ snapshot: BEGIN and the clock, its statements, and
        COMMIT. A ``single`` read is one round trip: BEGIN, its one statement, the clock
        after it and COMMIT, in one query of the simple protocol (see PgTx)."""
        attempt = 0
        while True:
            attempt += 1
            pool = self._pool_or_fail()
            try:
                with _translate("read"):
                    async with pool.connection() as conn:
                        try:
                            if single:
                                return await fn(
                                    PgTx(cast("PostgresStore", self), conn, False, 0.0, single=True)
                                )
                            cur = conn.cursor()
                            await cur.execute(_BEGIN_READ)
                            cur.nextset()
                            row = await cur.fetchone()
                            assert row is not None
                            result = await fn(
                                PgTx(cast("PostgresStore", self), conn, False, float(row[0]))
                            )
                            await conn.execute("COMMIT")
                            return result
                        except BaseException as exc:
                            await self._rollback(conn)
                            if (
                                isinstance(exc, psycopg.OperationalError)
                                and _broken(conn)
                                and attempt < self.max_attempts
                            ):
                                raise _Retry(exc, True) from exc
                            raise
            except _Retry:
                self.retries += 1
                await self._check_pool()

    async def _audit_pages(
        self, columns: str, after_seq: int, batch: int
    ) -> AsyncIterator[list[Any]]:
        # Keyset pages by seq: seq order is commit order, so a later page never finds a
        # row that should have been in an earlier one.
        last = after_seq
        while True:
            pool = self._pool_or_fail()
            with _translate("read the ledger"):
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        f"SELECT {columns} FROM audit WHERE seq > %s ORDER BY seq LIMIT %s",
                        (last, batch),
                    )
                    rows = [(int(r[0]), *r[1:]) for r in await cur.fetchall()]
            if not rows:
                return
            last = rows[-1][0]
            yield rows
