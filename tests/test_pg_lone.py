"""The lone batch's call through libpq itself (``_Writer.lone``), where the network is in
the way: it never waits for the server on the event loop's thread.

Every test here needs ``WRIT_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.stores_fixtures import Backend
from writ.stores.postgres._writer import _Writer

pytestmark = pytest.mark.asyncio


# The proxy: its own process, as the client under test may hold the event loop (and the
# GIL, inside libpq's wait) until the server's answer has come through
_PROXY = """
import asyncio, struct, sys

host, port, stall = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    w.close()

async def messages(r, w):
    last = b""
    try:
        while True:
            head = await r.readexactly(5)
            body = await r.readexactly(struct.unpack("!i", head[1:])[0] - 4)
            if head[:1] == b"Z" and last == b"E":
                await asyncio.sleep(stall)
            w.write(head + body)
            await w.drain()
            last = head[:1]
    except Exception:
        pass
    w.close()

async def serve(cr, cw):
    sr, sw = await asyncio.open_connection(host, port)
    await asyncio.gather(pipe(cr, sw), messages(sr, cw))

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def _stalling_proxy(conninfo: str, stall: float) -> Iterator[str]:
    """A TCP proxy to the server of ``conninfo``, yielding a conninfo through it: it passes
    the server's messages on one by one and holds back a ReadyForQuery that follows an
    error for ``stall`` seconds (as a lost segment would), the error itself going at once
    (PostgreSQL flushes an error as soon as it is raised)."""
    params = conninfo_to_dict(conninfo)
    host, port = params.get("host") or "127.0.0.1", str(params.get("port") or 5432)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROXY, str(host), port, str(stall)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        through = int(proc.stdout.readline())
        yield make_conninfo(
            conninfo, host="127.0.0.1", port=through, sslmode="disable", gssencmode="disable"
        )
    finally:
        proc.kill()
        proc.wait()


async def _running(pg_backend: Backend, pid: int) -> None:
    """Return once PostgreSQL shows backend ``pid`` running a statement (10 s at most)."""
    async with await psycopg.AsyncConnection.connect(
        pg_backend._pg_conninfo(), autocommit=True
    ) as watch:
        look = "SELECT state FROM pg_stat_activity WHERE pid = %s"
        for _ in range(2000):
            if (await (await watch.execute(look, (pid,))).fetchone()) == ("active",):
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never ran the statement")


async def test_a_lone_call_waits_for_the_server_off_the_event_loop(pg_backend: Backend) -> None:
    """An error reaches the client before the ReadyForQuery that ends the statement; the
    lone call reads its results only while libpq has them all (as psycopg's own fetch
    does): asking libpq for the next one before then blocks the whole process in libpq's
    wait until the rest arrives (here 1.5 s; a lost segment, a stalled network: longer)."""
    stall = 1.5
    writer = _Writer()
    with _stalling_proxy(pg_backend._pg_conninfo(), stall) as through:
        conn = await psycopg.AsyncConnection.connect(through, autocommit=True)
        try:
            ticks: list[float] = []
            ticking = asyncio.Event()

            async def tick() -> None:
                while True:
                    await asyncio.sleep(0.01)
                    ticks.append(time.perf_counter())
                    ticking.set()

            ticker = asyncio.ensure_future(tick())
            await ticking.wait()  # the loop's heartbeat runs
            began = time.perf_counter()
            try:
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await writer.lone(conn, "SELECT $1::int / $2::int", (1, 0))
                ended = time.perf_counter()
            finally:
                ticker.cancel()
            assert ended - began >= stall * 0.9  # it did wait for the statement's end
            times = [began, *(t for t in ticks if t > began), ended]
            still = max(b - a for a, b in itertools.pairwise(times))
            assert still < stall / 3, f"the event loop stood still {still:.2f} s"
            assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            await writer.lone(conn, "SELECT $1::int / $2::int", (4, 2))  # still usable
        finally:
            await conn.close()


async def test_the_lone_call_goes_through_libpq_as_psycopg_would(pg_backend: Backend) -> None:
    """A lone batch's statement goes through libpq itself (``_Writer.lone``): its errors
    are psycopg's classes and leave the connection usable; a statement deallocated behind
    writ's back, or prepared as another query, is prepared again; an argument of a type it
    does not send is refused before anything is sent; and a call cancelled in the air is
    cancelled on the server too, as psycopg's own wait does, so the connection is left idle,
    not busy with an answer nobody reads."""
    writer = _Writer()
    conn = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True)
    try:
        add = "SELECT $1::bigint + $2::bigint, $3::text, $4::float8"
        await writer.lone(conn, add, (1, 2, "x", 0.1))
        with pytest.raises(psycopg.errors.DivisionByZero):
            await writer.lone(conn, "SELECT $1::int / $2::int", (1, 0))
        await writer.lone(conn, add, (1, 2, None, 1e300))  # the other query, prepared again
        await conn.execute("DEALLOCATE ALL")
        await writer.lone(conn, add, (3, 4, "y", 2.5))
        with pytest.raises(TypeError, match="bool"):
            await writer.lone(conn, add, (True, 1, "z", 1.0))
        with pytest.raises(psycopg.DataError, match="NUL"):  # libpq would cut it short
            await writer.lone(conn, add, (1, 1, "ab\x00cd", 1.0))
        # more than the socket takes at once: sent as psycopg sends it
        size = "SELECT length($1::text)"
        await writer.lone(conn, size, ("x" * 20_000_000,))
        cur = await conn.execute("SELECT name, statement FROM pg_prepared_statements")
        assert await cur.fetchall() == [("writ_lone", size)]

        sleeping = asyncio.ensure_future(writer.lone(conn, "SELECT pg_sleep($1::float8)", (60.0,)))
        await _running(pg_backend, conn.info.backend_pid)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sleeping, 10)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
        look = "SELECT state FROM pg_stat_activity WHERE pid = %s"
        rows = await pg_backend.sql(look, conn.info.backend_pid)
        assert rows == [("idle",)]  # nothing left running on the server
    finally:
        await conn.close()


async def test_a_lone_statement_prepared_unbeknown_is_prepared_again(pg_backend: Backend) -> None:
    """A call cancelled while its prepare was in the air (the server prepared it before the
    cancel landed) leaves the statement on the server with the writer not knowing: the next
    call's prepare finds it there, replaces it, and runs — where every lone batch on that
    connection failed with DuplicatePreparedStatement while it lived."""
    writer = _Writer()
    conn = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True)
    try:
        await conn.execute("PREPARE writ_lone AS SELECT 'stale'")  # as the cancelled call left it
        await writer.lone(conn, "SELECT $1::int / $2::int", (4, 2))
        cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
        assert await cur.fetchall() == [("SELECT $1::int / $2::int",)]
        await writer.lone(conn, "SELECT $1::int / $2::int", (6, 3))
    finally:
        await conn.close()


async def test_a_cancelled_lone_call_stays_cancelled_when_its_cancel_fails(
    pg_backend: Backend,
) -> None:
    """A call cancelled in the air whose cancel request fails (the server unreachable for
    it, or no answer within 5 s) closes its connection and is still cancelled, as
    psycopg's own wait does: the cancel's error must not replace the cancellation (the
    task would go on, its cancellation swallowed, with a TimeoutError or an
    OperationalError for the store to act on)."""
    writer = _Writer()
    conn = await psycopg.AsyncConnection.connect(pg_backend._pg_conninfo(), autocommit=True)

    async def unreachable(**_: Any) -> None:
        raise psycopg.OperationalError("the cancel request could not be sent")

    conn.cancel_safe = unreachable  # type: ignore[method-assign]
    try:
        sleeping = asyncio.ensure_future(writer.lone(conn, "SELECT pg_sleep($1::float8)", (30.0,)))
        await _running(pg_backend, conn.info.backend_pid)  # in the air, not before it
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sleeping, 10)
        assert conn.closed
    finally:
        await conn.close()
