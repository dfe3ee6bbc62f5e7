"""Reads of the PostgreSQL store, each on a REPEATABLE READ snapshot that begins with its
first statement (or, for a function that asks the time first, with BEGIN and the clock); a
single read is one round trip; and the ledger in keyset pages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from writ.stores.base import Tx
from writ.stores.postgres._batch import _Retry
from writ.stores.postgres._schema import _BEGIN_READ
from writ.stores.postgres._sql import T, _broken, _translate
from writ.stores.postgres._tx import PgTx, _Again

if TYPE_CHECKING:
    from writ.stores.postgres._store import PostgresStore


class _Reads:
    """The read half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    max_attempts: int
    retries: int
    single_misses: int
    _time_first: set[Any]  # the code of the read functions that ask the time first

    if TYPE_CHECKING:

        def _pool_or_fail(self) -> AsyncConnectionPool[Any]: ...
        async def _shielded(self, coro: Awaitable[T]) -> T: ...
        async def _rollback(self, conn: psycopg.AsyncConnection[Any]) -> None: ...
        async def _check_pool(self) -> None: ...
        def _store(self) -> PostgresStore: ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]], single: bool = False) -> T:
        """Begin the read with its first statement (one round trip for BEGIN, the statement
        and the clock; a single read's COMMIT too); a ``fn`` that asks the time first runs
        again with BEGIN and the clock first — and, remembered by its code, from then on."""
        self._pool_or_fail()
        code = getattr(fn, "__code__", None)
        if code not in self._time_first:
            try:
                return await self._shielded(self._read(fn, "single" if single else "lazy"))
            except _Again as again:
                self.single_misses += single  # a single read that asked for more
                if not again.time_first:  # a second statement: on a snapshot, as any read
                    return await self._shielded(self._read(fn, "lazy"))
                if code is not None:
                    self._time_first.add(code)
        return await self._shielded(self._read(fn, "time first"))

    async def _read(self, fn: Callable[[Tx], Awaitable[T]], how: str) -> T:
        """``fn`` on a REPEATABLE READ snapshot, ``how``: "time first" — BEGIN and the clock,
        its statements, COMMIT; "lazy" — its first statement begins the transaction (see
        PgTx), then the others and COMMIT; "single" — its one statement, COMMIT with it."""
        attempt = 0
        while True:
            attempt += 1
            pool = self._pool_or_fail()
            try:
                with _translate("read"):
                    async with pool.connection() as conn:
                        try:
                            store = self._store()
                            if how == "time first":
                                cur = conn.cursor()
                                await cur.execute(_BEGIN_READ)
                                cur.nextset()
                                row = await cur.fetchone()
                                assert row is not None
                                tx = PgTx(store, conn, False, float(row[0]))
                            else:
                                tx = PgTx(
                                    store, conn, False, 0.0, single=how == "single", begun=False
                                )
                            result = await fn(tx)
                            if tx.begun and how != "single":
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
