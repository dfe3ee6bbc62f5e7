"""The batches' connection: one, kept between batches (they run one at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg import errors, generators, pq
from psycopg_pool import AsyncConnectionPool

_Pool = AsyncConnectionPool[Any]
# the name of the lone batch's statement, prepared once on each connection it runs on
_LONE = b"writ_lone"
_ACTIVE = pq.TransactionStatus.ACTIVE
_IDLE = pq.TransactionStatus.IDLE


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
        # the query the lone statement is prepared as, on each connection (forgotten with it)
        self._prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], str] = (
            weakref.WeakKeyDictionary()
        )

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
                # libpq's own answer: conn.info's makes an object and an enum (1.6 % of a
                # lone server's samples at one client)
                and conn.pgconn.transaction_status == _IDLE
            )
        finally:
            if kept:
                self.held = (pool, conn)
            else:
                await pool.putconn(conn)

    async def lone(
        self, conn: psycopg.AsyncConnection[Any], query: str, args: Sequence[Any]
    ) -> None:
        """Run ``query`` (``$n`` placeholders, each typed in the query) with ``args`` on
        ``conn`` as a prepared statement on its own, through libpq itself: a lone batch's
        one round trip. psycopg's cursor (adapting each argument, its prepared-statement
        bookkeeping, its result handling) cost 20-25 µs more a call than this, measured with
        the batch's 19 arguments (68 against 45 µs of this process's CPU). The arguments go
        as text: ``None``, ``int``, ``float`` (``repr`` reads back exactly) or ``str``."""
        params = [_text(a) for a in args]
        async with conn.lock:
            if self._prepared.get(conn) != query:
                await self._prepare(conn, query)
            try:
                await _round_trip(conn, lambda pg: pg.send_query_prepared(_LONE, params))
            except errors.InvalidSqlStatementName:  # deallocated behind writ's back
                self._prepared.pop(conn, None)
                await self._prepare(conn, query)
                await _round_trip(conn, lambda pg: pg.send_query_prepared(_LONE, params))

    async def _prepare(self, conn: psycopg.AsyncConnection[Any], query: str) -> None:
        def prepare(pg: Any) -> None:
            pg.send_prepare(_LONE, query.encode())

        if self._prepared.pop(conn, None) is not None:  # prepared as another query
            await _round_trip(conn, _deallocate)
        try:
            await _round_trip(conn, prepare)
        except errors.DuplicatePreparedStatement:
            # a call cancelled while its prepare (or DEALLOCATE) was in the air, done on the
            # server before the cancel landed: there, unbeknown to this writer
            await _round_trip(conn, _deallocate)
            await _round_trip(conn, prepare)
        self._prepared[conn] = query

    async def close(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            await self._give_back(held)

    @staticmethod
    async def _give_back(held: tuple[_Pool, psycopg.AsyncConnection[Any]]) -> None:
        with contextlib.suppress(Exception):
            await held[0].putconn(held[1])


def _deallocate(pg: Any) -> None:
    pg.send_query(b"DEALLOCATE " + _LONE)


def _text(value: Any) -> bytes | None:
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        if "\x00" in value:  # libpq would end a text argument there: refuse it, as psycopg does
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode()  # type: ignore[no-any-return]
    if kind is int:
        return str(value).encode()
    if kind is float:
        return repr(value).encode()
    raise TypeError(f"a lone batch's argument cannot be a {kind.__name__}")


async def _round_trip(conn: psycopg.AsyncConnection[Any], send: Callable[[Any], None]) -> None:
    """Send one command with ``send(pgconn)`` and read its results (``conn.lock`` held),
    raising the first error as psycopg would. Interrupted while the command is in the air
    (its task cancelled), it does as psycopg's own wait does: asks the server to cancel it
    and reads its end, so the connection is not left busy; failing that, closes it."""
    pg = conn.pgconn
    send(pg)
    try:
        if pg.flush():  # not all sent at once (a full socket buffer): psycopg's way
            results = await conn.wait(generators.execute(pg))
        else:
            results = await _results(pg)
    except BaseException:
        if pg.transaction_status == _ACTIVE:
            try:
                await asyncio.wait_for(_cancel(conn), 5.0)
            except BaseException as ex:
                pg.finish()
                # a new interruption goes up; an error of the cancel (or its 5 s) does not
                # replace the one being handled (as psycopg's wait)
                if not isinstance(ex, Exception):
                    raise
        raise
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(result, encoding=conn.info.encoding)


async def _results(pg: Any) -> list[Any]:
    """The results of the command in the air on ``pg`` (nonblocking), once all are in.
    Each is taken only once libpq has it whole (``is_busy`` false, as psycopg's own fetch
    does): ``get_result`` while busy waits for the server inside libpq, blocking the event
    loop — and an error comes before the ReadyForQuery that ends its statement (PostgreSQL
    sends an error at once), so after one the rest may not be here yet."""
    loop = asyncio.get_running_loop()
    results: list[Any] = []
    pg.consume_input()
    while True:
        while pg.is_busy():
            readable = loop.create_future()
            loop.add_reader(pg.socket, _wake, readable)
            try:
                await readable
            finally:
                loop.remove_reader(pg.socket)
            pg.consume_input()
        if (result := pg.get_result()) is None:
            return results
        results.append(result)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _cancel(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.cancel_safe(timeout=5.0)
    await conn.wait(generators.execute(conn.pgconn))
