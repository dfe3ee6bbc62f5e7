"""One contract suite over every store: fixtures that run a test on SQLite and PostgreSQL.

``store_url`` is parametrised over ``["sqlite", "postgres"]``: SQLite in a temp file,
PostgreSQL from ``WRIT_TEST_POSTGRES_URL`` (skipped when unset), each test in a fresh schema
of its own (``?schema=``) that is dropped afterwards. ``backend`` adds what a test needs
beyond the contract: a clock it can move, raw SQL, and ways to tamper with the ledger.

Time: the SQLite store takes a :class:`~writ.core.clock.ManualClock`. PostgreSQL's clock is the
database's and cannot be moved, so :meth:`Backend.advance` moves the *stored* times back
instead (every lease, waiter and object time, by the same amount) — the same thing, seen
from the engine, except that ledger timestamps stay where they were.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import pytest

from writ.core.clock import ManualClock
from writ.core.policy import Policy, parse
from writ.engine import Engine
from writ.stores import Store, open_store

__all__ = [
    "PG_ENV",
    "Backend",
    "backend",
    "engine",
    "make_engine",
    "no_admin_env",
    "pg_backend",
    "pg_schemas",
    "pg_url",
    "store",
    "store_url",
    "with_query",
]

PG_ENV = "WRIT_TEST_POSTGRES_URL"


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters added (or replaced)."""
    parts = urlparse(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunparse(parts._replace(query=urlencode(query)))


def pg_url() -> str:
    """The PostgreSQL test URL, or skip the test."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set (scripts/test sets it to the local PostgreSQL)")
    return url


class Backend:
    """The store under test, and the test's levers on it."""

    def __init__(self, kind: str, url: str, clock: ManualClock | None) -> None:
        self.kind = kind
        self.url = url
        self.clock = clock
        parsed = urlparse(url)
        self.schema = dict(parse_qsl(parsed.query)).get("schema")

    @property
    def is_pg(self) -> bool:
        return self.kind == "postgres"

    def open_store(self, **options: Any) -> Store:
        """A new (unopened) store on this backend's database."""
        if self.clock is not None:
            options.setdefault("clock", self.clock)
        return open_store(self.url, **options)

    # -- raw access, outside writ ------------------------------------------------------
    def _pg_conninfo(self) -> str:
        parts = urlparse(self.url)
        return urlunparse(parts._replace(query=""))

    async def sql(self, query: str, *args: Any, replica: bool = False) -> list[tuple[Any, ...]]:
        """Run one statement on the database directly (raises the driver's errors)."""
        if self.is_pg:
            import psycopg

            async with await psycopg.AsyncConnection.connect(
                self._pg_conninfo(), autocommit=True
            ) as c:
                await c.execute(f'SET search_path TO "{self.schema}"')
                if replica:
                    await c.execute("SET session_replication_role = replica")
                cur = await c.execute(query, args or None)
                return list(await cur.fetchall()) if cur.description else []
        path = urlparse(self.url).path[1:]
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            cur = conn.execute(query.replace("%s", "?"), args)
            return list(cur.fetchall())
        finally:
            conn.close()

    async def tamper(self, seq: int, body: str) -> None:
        """Rewrite an audit row's body the way an intruder with database rights would."""
        if self.is_pg:
            await self.sql(
                "ALTER TABLE audit DISABLE TRIGGER audit_no_update;"
                f" UPDATE audit SET body = '{body.replace(chr(39), chr(39) * 2)}'"
                f" WHERE seq = {int(seq)};"
                " ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_no_update"
            )
        else:
            await self.sql("DROP TRIGGER audit_no_update")
            await self.sql("UPDATE audit SET body = ? WHERE seq = ?", body, seq)

    async def cut_tail(self, after_seq: int) -> None:
        """Delete the audit rows after ``after_seq``, as an intruder with database rights
        would (the store's own refusal switched off), leaving the rest as it is."""
        if self.is_pg:
            await self.sql(
                "ALTER TABLE audit DISABLE TRIGGER audit_no_update;"
                f" DELETE FROM audit WHERE seq > {int(after_seq)};"
                " ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_no_update"
            )
        else:
            await self.sql("DROP TRIGGER IF EXISTS audit_no_delete")
            await self.sql("DELETE FROM audit WHERE seq > ?", after_seq)

    async def tamper_column(self, seq: int, column: str, value: Any) -> None:
        """Set one lookup column of an audit row (``ts``, ``event``, ``resource``,
        ``lock_key``) by hand, leaving its hashed body alone."""
        assert column in ("ts", "event", "resource", "lock_key"), column
        if self.is_pg:
            await self.sql("ALTER TABLE audit DISABLE TRIGGER audit_no_update")
            await self.sql(f"UPDATE audit SET {column} = %s WHERE seq = %s", value, int(seq))
            await self.sql("ALTER TABLE audit ENABLE ALWAYS TRIGGER audit_no_update")
        else:
            await self.sql("DROP TRIGGER IF EXISTS audit_no_update")
            await self.sql(f"UPDATE audit SET {column} = ? WHERE seq = ?", value, seq)

    async def advance(self, seconds: float) -> None:
        """Move the store's clock forward by ``seconds``."""
        if self.clock is not None:
            self.clock.advance(seconds)
            return
        s = float(seconds)
        await self.sql(
            f"UPDATE leases SET acquired_at = acquired_at - {s}, expires_at = expires_at - {s},"
            f" ended_at = ended_at - {s};"
            f" UPDATE waiters SET enqueued_at = enqueued_at - {s}, deadline = deadline - {s};"
            f" UPDATE objects SET created_at = created_at - {s}, expires_at = expires_at - {s}"
            # behind the servers' backs: they load their live replica afresh (PostgreSQL)
            + ("; UPDATE audit_head SET epoch = epoch + 1" if self.is_pg else "")
        )


def _drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as c:
        c.execute("SET lock_timeout = '10s'")
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_schemas() -> Iterator[Callable[[pytest.FixtureRequest], str]]:
    """``new(request)`` → the URL of a fresh schema, dropped when the requesting fixture
    is torn down — in the background (a DROP costs as much as a short test); every one is
    gone when the session ends."""
    base = pg_url()
    janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writ-test-drop")

    def new(request: pytest.FixtureRequest) -> str:
        schema = "writ_t_" + secrets.token_hex(6)
        request.addfinalizer(lambda: janitor.submit(_drop_schema, base, schema))
        return with_query(base, schema=schema)

    yield new
    janitor.shutdown(wait=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh store URL on each backend (a temp SQLite file; a new PostgreSQL schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'writ.db'}"
    new: Callable[[pytest.FixtureRequest], str] = request.getfixturevalue("pg_schemas")
    return new(request)


@pytest.fixture
def pg_backend(
    request: pytest.FixtureRequest, pg_schemas: Callable[[pytest.FixtureRequest], str]
) -> Backend:
    """PostgreSQL only (for what only a shared server database has), in a fresh schema."""
    return Backend("postgres", pg_schemas(request), None)


@pytest.fixture
def backend(store_url: str) -> Backend:
    kind = "postgres" if store_url.startswith("postgres") else "sqlite"
    return Backend(kind, store_url, ManualClock() if kind == "sqlite" else None)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An opened store on each backend."""
    s = backend.open_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def no_admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines started in this test create no bootstrap admin, whatever the environment."""
    monkeypatch.delenv("WRIT_ADMIN_TOKEN", raising=False)


@pytest.fixture
async def make_engine(backend: Backend, no_admin_env: None) -> AsyncIterator[Callable[..., Any]]:
    """``await make_engine(policy=None)``: a started engine (no background sweeper) on the
    test's store; call it twice for two "servers" sharing one PostgreSQL store."""
    engines: list[Engine] = []

    async def make(policy: Policy | str | None = None) -> Engine:
        if isinstance(policy, str):
            policy = parse(policy)
        e = Engine(backend.open_store(), policy)
        await e.start(background=False)
        engines.append(e)
        return e

    try:
        yield make
    finally:
        for e in reversed(engines):
            await e.stop()


@pytest.fixture
async def engine(make_engine: Callable[..., Any]) -> Engine:
    """A started engine (default policy, no background sweeper) on each backend."""
    e: Engine = await make_engine()
    return e
