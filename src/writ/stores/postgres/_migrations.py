"""The PostgreSQL store's schema at open: the migrations it lacks applied (``writ serve``,
``writ migrate --upgrade``), or, for a command that only reads, checked and left alone."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from writ.stores import check_schema
from writ.stores.postgres import _schema
from writ.stores.postgres._schema import _MIGRATION_LOCK


class _Migrations:
    """The schema half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    url: str
    schema: str | None
    channel: str
    read_only: bool
    applied: list[str]

    async def _schema_at_open(self, c: psycopg.AsyncConnection[Any]) -> None:
        if self.read_only:
            check_schema(self.url, await self._versions(c), len(_schema.MIGRATIONS))
        else:
            await self._migrate(c)

    @staticmethod
    async def _versions(c: psycopg.AsyncConnection[Any]) -> set[int] | None:
        """The migrations the store records, or None when it has no migration table (in
        the URL's schema)."""
        cur = await c.execute("SELECT to_regclass('writ_migrations') IS NOT NULL")
        row = await cur.fetchone()
        if not (row and row[0]):
            return None
        cur = await c.execute("SELECT version FROM writ_migrations")
        return {r[0] for r in await cur.fetchall()}

    async def _migrate(self, c: psycopg.AsyncConnection[Any]) -> None:
        """Apply missing migrations, recorded in ``writ_migrations``, under an advisory
        transaction lock so that servers starting together do not race. Nothing is
        locked or created when the schema is current: a server may run as a role that is
        not allowed DDL (see docs/postgres.md, "Hardening the ledger")."""
        have = await self._versions(c)
        if have is not None and have >= set(range(1, len(_schema.MIGRATIONS) + 1)):
            return
        async with c.transaction():
            await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if self.schema:
                await c.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            await c.execute(
                "CREATE TABLE IF NOT EXISTS writ_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            cur = await c.execute("SELECT version FROM writ_migrations")
            have = {r[0] for r in await cur.fetchall()}
            for version, (name, script) in enumerate(_schema.MIGRATIONS, start=1):
                if version in have:
                    continue
                script = script.replace("WRIT_CHANNEL", self.channel)
                self.applied.append(name)
                await c.execute(script.encode())  # several statements: simple query protocol
                await c.execute(
                    "INSERT INTO writ_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
