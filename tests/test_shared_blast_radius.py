"""Servers sharing a PostgreSQL store agree on the blast radius, or the newcomer does not
serve. Before, a server started with another ``[blast_radius]`` (or none) on the same store
granted ``bl/cache`` while the other held ``bl/db``, though the first's policy made them
conflict: two holders on one blast radius, no log line, readiness 200, verify ok."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable

import psycopg
import pytest

from writ.core.errors import Conflict, Held, Unavailable
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.postgres import PostgresStore

GROUPED = '[blast_radius]\ndbtier = ["bl/db", "bl/cache"]\n'
RENAMED = '[blast_radius]\ntier = ["bl/cache", "bl/db"]\n'  # the same members: the same radius


def _engine(url: str, policy: str) -> Engine:
    """An engine as ``writ serve`` starts one: its store says its blast radius."""
    engine = Engine(PostgresStore(url), parse(policy))
    engine.store.fingerprint = engine.blast.digest()
    return engine


async def test_a_server_with_another_blast_radius_refuses_to_start(
    pg_schemas: Callable[[pytest.FixtureRequest], str], request: pytest.FixtureRequest
) -> None:
    url = pg_schemas(request)
    first = _engine(url, GROUPED)
    await first.start(background=False)
    try:
        agent, _ = await first.add_principal(None, "ag1", "agent")
        await first.acquire(agent, resource="bl/db", intent="scale up")
        for other in ("", '[blast_radius]\nother = ["bl/db", "bl/api"]\n'):
            second = _engine(url, other)
            with pytest.raises(Conflict, match="another blast radius"):
                await second.start(background=False)
        same = _engine(url, RENAMED)  # the same members under another name
        await same.start(background=False)
        try:
            ag2, _ = await same.add_principal(None, "ag2", "agent")
            with pytest.raises(Held):
                await same.acquire(ag2, resource="bl/cache", intent="trim", wait_s=0)
        finally:
            await same.stop()
    finally:
        await first.stop()
    # once the first is gone, a server of another blast radius may start
    alone = _engine(url, "")
    await alone.start(background=False)
    await alone.stop()


def test_a_start_refused_is_logged_as_its_one_line() -> None:
    """Starlette hands uvicorn the traceback of a failed start as the message: a refusal writ
    words itself is logged as ``writ cannot start: …``, one line."""
    import logging

    from writ.telemetry.logs import ConsoleFormatter, StartFailed

    trace = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in open\n'
        "writ.core.errors.Conflict: another writ server on this store runs another blast radius"
    )
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, trace, None, None)
    assert StartFailed().filter(record)
    line = ConsoleFormatter().format(record)
    assert (
        line.endswith(
            "writ cannot start: another writ server on this store runs another blast radius"
        )
        and "Traceback" not in line
    )
    other = logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "Traceback (most recent call last):\nValueError: x",
        None,
        None,
    )
    assert StartFailed().filter(other) and other.getMessage().endswith("ValueError: x")


async def test_an_offline_command_neither_minds_nor_blocks_a_blast_radius(
    pg_schemas: Callable[[pytest.FixtureRequest], str], request: pytest.FixtureRequest
) -> None:
    """``writ audit verify --store``, ``writ principal add --store`` and the like run an
    engine of the empty policy that grants nothing: it says no blast radius, so it neither
    fails beside a server of one nor keeps one from starting."""
    url = pg_schemas(request)
    server = _engine(url, GROUPED)
    await server.start(background=False)
    offline = Engine(PostgresStore(url), parse(""))  # as writ.cli._helpers runs one
    await offline.start(background=False)
    try:
        await offline.add_principal(None, "x-agent", "agent")
        assert (await offline.verify()).ok
        late = _engine(url, RENAMED)
        await late.start(background=False)
        await late.stop()
    finally:
        await offline.stop()
        await server.stop()


async def _listener_pid(store: PostgresStore, url: str) -> int:
    """The backend holding ``store``'s blast-radius lock: its LISTEN connection."""
    async with await psycopg.AsyncConnection.connect(_conninfo(url), autocommit=True) as c:
        for _ in range(200):
            cur = await c.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
                " AND classid::int8 = %s AND objid::int8 = %s",
                (_space(store), int((store.fingerprint or "")[:8], 16) & 0x7FFFFFFF),
            )
            row = await cur.fetchone()
            if row:
                return int(row[0])
            await asyncio.sleep(0.02)
    raise AssertionError("no listener holds the blast radius's lock")


def _space(store: PostgresStore) -> int:
    return zlib.crc32(f"writ-blast-radius:{store.channel}".encode()) & 0x7FFFFFFF


def _conninfo(url: str) -> str:
    return url.split("?", 1)[0]


async def test_another_radius_found_after_a_reconnect_stops_the_writes(
    pg_schemas: Callable[[pytest.FixtureRequest], str],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another blast radius that came up while this server's LISTEN connection was down
    (its lock let go with it) is found when it reconnects: an ERROR line, readiness says
    why, and every write is refused 503 while it stands; once it is gone — its connection
    closed, this server's own left as it is — writes again."""
    from writ.stores.postgres import _listen

    monkeypatch.setattr(_listen, "HELLO_EVERY", 0.1)  # how often the listener looks again
    url = pg_schemas(request)
    server = _engine(url, GROUPED)
    await server.start(background=False)
    store = server.store
    assert isinstance(store, PostgresStore)
    agent, _ = await server.add_principal(None, "ag1", "agent")
    other = await psycopg.AsyncConnection.connect(_conninfo(url), autocommit=True)
    try:
        await other.execute("SELECT pg_advisory_lock_shared(%s, %s)", (_space(store), 12345))
        async with await psycopg.AsyncConnection.connect(_conninfo(url), autocommit=True) as c:
            with caplog.at_level(logging.WARNING, logger="writ.stores.postgres"):
                await c.execute(
                    "SELECT pg_terminate_backend(%s)", (await _listener_pid(store, url),)
                )
                for _ in range(300):
                    if store.differs is not None and store._listening.is_set():
                        break
                    await asyncio.sleep(0.02)
        assert store.differs is not None and "another blast radius" in store.differs
        assert any("writes nothing meanwhile" in r.getMessage() for r in caplog.records)
        assert "another blast radius" in (await store.ready() or "")
        with pytest.raises(Unavailable, match="another blast radius"):
            await server.acquire(agent, resource="bl/db", intent="scale up")
    finally:
        await other.close()  # the other radius is gone: the next look (HELLO_EVERY) sees it
    for _ in range(300):
        if store.differs is None:
            break
        await asyncio.sleep(0.02)
    try:
        assert store.differs is None and await store.ready() is None
        await server.acquire(agent, resource="bl/db", intent="scale up")
    finally:
        await server.stop()
