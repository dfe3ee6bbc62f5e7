"""The batches' connection: one, kept between batches (they run one at a time)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import AsyncRawCursor, pq
from psycopg_pool import AsyncConnectionPool

_Pool = AsyncConnectionPool[Any]


class _Writer:
    """The connection the store's batches run on. Batches run one at a time (in the drain
    task), so one connection serves them all and is kept between them: a checkout from the
    pool and its return cost more than a small batch's own work (measured: 125-140 µs a
    call through the pool against 69-74 µs on a kept connection and cursor). It goes back
    to the pool after anything went wrong (the pool rolls it back or discards it), when the
    pool was replaced, and whenever ``keep`` says no (the store is closing; the pool holds
    one connection only, which reads need)."""

    def __init__(self) -> None:
        self.held: tuple[_Pool, psycopg.AsyncConnection[Any]] | None = None
        self._raw: AsyncRawCursor[Any] | None = None

    @contextlib.asynccontextmanager
    async def use(
        self, pool: _Pool, keep: Callable[[_Pool], bool]
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        held, self.held = self.held, None
        if held is not None and held[0] is not pool:
            await self._give_back(held)
            held = None
        conn = held[1] if held is not None else await pool.getconn()
        kept = False
        try:
            yield conn
            kept = (
                self.held is None
                and keep(pool)
                and conn.info.transaction_status == pq.TransactionStatus.IDLE
            )
        finally:
            if kept:
                self.held = (pool, conn)
            else:
                self._raw = None
                await pool.putconn(conn)

    def cursor(self, conn: psycopg.AsyncConnection[Any]) -> AsyncRawCursor[Any]:
        """One raw cursor of ``conn``, used again for every lone batch (a cursor made per
        call, and the query's conversion from ``%s``, cost 15-20 µs a call)."""
        if self._raw is None or self._raw.connection is not conn:
            self._raw = AsyncRawCursor(conn)
        return self._raw

    async def close(self) -> None:
        held, self.held, self._raw = self.held, None, None
        if held is not None:
            await self._give_back(held)

    @staticmethod
    async def _give_back(held: tuple[_Pool, psycopg.AsyncConnection[Any]]) -> None:
        with contextlib.suppress(Exception):
            await held[0].putconn(held[1])
