"""Servers sharing a PostgreSQL store agree on the blast radius, or the newcomer does not
serve. Before, a server started with another ``[blast_radius]`` (or none) on the same store
granted ``bl/cache`` while the other held ``bl/db``, though the first's policy made them
conflict: two holders on one blast radius, no log line, readiness 200, verify ok."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from writ.core.errors import Conflict, Held
from writ.core.policy import parse
from writ.engine import Engine
from writ.stores.postgres import PostgresStore

GROUPED = '[blast_radius]\ndbtier = ["bl/db", "bl/cache"]\n'
RENAMED = '[blast_radius]\ntier = ["bl/cache", "bl/db"]\n'  # the same members: the same radius


def _engine(url: str, policy: str) -> Engine:
    return Engine(PostgresStore(url), parse(policy))


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
