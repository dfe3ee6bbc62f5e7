"""SQLiteStore: the connection, group commits, notifications, migrations, export and import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sqlite3
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote, urlparse

from writ.core.clock import Clock
from writ.core.errors import Invalid, Unavailable, WritError
from writ.core.ledger import GENESIS
from writ.stores import check_schema
from writ.stores.base import Store, Tx
from writ.stores.rows import (
    export_row,
    export_sql,
    import_row,
    kept,
)
from writ.stores.sqlite import _schema
from writ.stores.sqlite._sql import _HEADS, _IMPORTED_HEAD, T, _run_now, _tolerate
from writ.stores.sqlite._tx import SQLiteTx
from writ.stores.tables import TABLES, check_empty

# A batch of one transaction commits on the event loop while recent commits took less than
# this: handing a lone COMMIT to the worker thread and back cost more CPU than the fsync
# itself (bench/RESULTS.md). A slower disk, or a batch of several, commits in the thread.
INLINE_COMMIT_MAX_S = 0.002
log = logging.getLogger("writ.stores.sqlite")


def _owner_only(path: str) -> None:
    """Create the database file for its owner alone (0600), whatever the umask: it holds
    the token hashes, the wake routes (PagerDuty routing keys, Slack webhook URLs) and the
    ledger, and SQLite gives its -wal and -shm files the database's mode. A symlink that
    points nowhere is refused (SQLite would create its target with the umask's mode, where
    whoever planted it chose); an existing file other users may read is warned of."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    if not os.path.exists(path):
        raise Invalid(f"store {path}: a symlink to a file that does not exist; remove it")
    shown = [
        f"{name} ({os.stat(name).st_mode & 0o777:o})"
        for name in (path, f"{path}-wal", f"{path}-shm")
        if os.path.exists(name) and os.stat(name).st_mode & 0o004
    ]
    if shown:
        log.warning(
            "store %s: other users of this host may read %s, which hold the token hashes, "
            "wake routes and the ledger: chmod 600 %s",
            path,
            ", ".join(shown),
            " ".join(f"{shlex.quote(path)}{end}" for end in ("", "-wal", "-shm")),
        )


class SQLiteStore(Store):
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``."""

    def __init__(self, url: str, clock: Clock | None = None, read_only: bool = False) -> None:
        super().__init__()
        self.url = url
        # a command that only reads (audit verify, export, postmortem, migrate --from): the
        # file is neither created, nor migrated, nor switched to WAL, nor written
        self.read_only = read_only
        self.applied: list[str] = []  # migrations this store applied when it opened
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc:
            raise Invalid(f"store URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
        self.path = path[1:] if path.startswith("/") else path
        if not self.path:
            raise Invalid(f"store URL {url!r} names no file (e.g. sqlite:///writ.db)")
        self.memory = self.path == ":memory:"
        self.clock = clock or Clock()
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writ-sqlite-commit")
        self._head: tuple[int, str] = (0, GENESIS)
        self._token = 0
        # What the writer knows to be absent ("no waiter at all", "no live policy object"),
        # so the hot path can skip those lookups. Forgotten when another connection has
        # committed (PRAGMA data_version moved), a savepoint rolled back or a batch failed.
        self._known: dict[Any, bool] = {}
        self._data_version: int | None = None
        self._commit_s = 0.0  # recent COMMIT (fsync) time, a moving average
        self.batches = 0  # commits made (for tests and benchmarks)
        self.transactions = 0

    def _connect(self) -> sqlite3.Connection:
        read_only = self.read_only and not self.memory
        conn = sqlite3.connect(
            f"file:{quote(os.path.abspath(self.path))}?mode=ro" if read_only else self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=30.0,
            uri=read_only,
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.memory and not self.read_only:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def open(self) -> None:
        if self._w is not None:
            return
        if self.read_only and not self.memory and not os.path.isfile(self.path):  # noqa: ASYNC240
            raise Invalid(f"no store at {self.path} (from {self.url}): check the path")
        if not self.memory and not self.read_only:
            parent = os.path.dirname(os.path.abspath(self.path))  # noqa: ASYNC240 - once, at open
            os.makedirs(parent, exist_ok=True)
            _owner_only(self.path)
        try:
            self._w = self._connect()
            if self.read_only:
                check_schema(self.url, self._versions(self._w), len(_schema.MIGRATIONS))
            else:
                self._migrate(self._w)
            self._r = self._w if self.memory else self._connect()
            self._floor(self._w)
        except BaseException as exc:
            for conn in {id(x): x for x in (self._r, self._w) if x is not None}.values():
                conn.close()
            self._w = self._r = None
            if isinstance(exc, sqlite3.Error):
                raise Unavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
            raise

    @staticmethod
    def _versions(c: sqlite3.Connection) -> set[int] | None:
        """The migrations the store records, or None when it has no migration table."""
        if not c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'writ_migrations'"
        ).fetchone():
            return None
        versions = c.execute("SELECT version FROM writ_migrations").fetchall()
        return {v for (v,) in versions if isinstance(v, int)}

    def _floor(self, c: sqlite3.Connection) -> None:
        """Ledger time never runs backwards: not before the newest row, whoever wrote it
        (PostgreSQL's batch does the same with ``greatest(clock_timestamp(), head ts)``)."""
        row = c.execute("SELECT ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None and isinstance(row[0], int | float):
            self.clock.floor(float(row[0]))

    def _migrate(self, c: sqlite3.Connection) -> None:
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "CREATE TABLE IF NOT EXISTS writ_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            have = {r[0] for r in c.execute("SELECT version FROM writ_migrations")}
            applied = []
            for version, (name, sql) in enumerate(_schema.MIGRATIONS, start=1):
                if version in have:
                    continue
                for stmt in sql.split(";\n"):
                    if stmt.strip():
                        c.execute(stmt)
                applied.append(name)
                c.execute(
                    "INSERT INTO writ_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (version, name),
                )
            c.execute("COMMIT")
            self.applied += applied
        except BaseException:
            c.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        while self._draining:
            await self._idle.wait()
        for conn in {id(x): x for x in (self._r, self._w) if x is not None}.values():
            conn.close()
        self._w = self._r = None
        self._io.shutdown(wait=True)
        # the store may be opened again (an app's lifespan can run twice): a fresh executor
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writ-sqlite-commit")

    # -- writes: group commit ------------------------------------------------------------
    async def transact(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        if self._w is None:
            raise Unavailable("store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if not self._draining:
            self._draining = True
            self._idle.clear()
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the requests arriving in this tick join the batch
                batch, self._pending = self._pending, []
                try:
                    await self._commit_batch(loop, batch)
                except Exception as exc:  # never leave a caller waiting on a failed batch
                    self._known.clear()
                    if self._w is not None and self._w.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._w.execute("ROLLBACK")
                    self._fail_all(batch, exc)
        finally:
            self._draining = False
            self._idle.set()

    async def _commit_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]],
    ) -> None:
        c = self._w
        assert c is not None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        notes: list[tuple[str, dict[str, Any]]] = []
        done: list[SQLiteTx] = []
        began = time.perf_counter()
        try:
            c.execute("BEGIN IMMEDIATE")
            # another process may have written since our last batch: re-read the heads,
            # and forget what we knew if anyone else committed in between
            version = c.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._known.clear()
                self._data_version = version
                self._floor(c)  # its rows' time may be ahead of this process's clock
            r = c.execute(_HEADS).fetchone()
            self._head = (r[1], r[2]) if r[1] is not None else (0, GENESIS)
            self._token = int(r[0])
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        head0, token0 = self._head, self._token
        for fn, fut in batch:
            if fut.done():
                continue
            head = self._head
            failure: BaseException | None = None
            for attempt in (1, 2):
                c.execute("SAVEPOINT tx")
                tx = SQLiteTx(self, c, writable=True)
                try:
                    result: Any = _run_now(fn(tx))  # type: ignore[arg-type]
                except BaseException as exc:
                    c.execute("ROLLBACK TO tx")
                    c.execute("RELEASE tx")
                    self._known.clear()
                    # the chain head goes back; the token counter does not: a token drawn
                    # by a transaction that rolled back is never handed out again (contract)
                    self._head = head
                    if attempt == 1 and _tolerate(c, exc):
                        continue  # once more, reading hand-written bad text leniently
                    failure = exc
                break
            if failure is not None:
                if isinstance(failure, sqlite3.Error):
                    failure = Unavailable(f"store error: {failure}")
                outcomes.append((fut, None, failure))
                continue
            c.execute("RELEASE tx")
            outcomes.append((fut, result, None))
            notes.extend(tx.notes)
            done.append(tx)
        if self._token != token0:
            c.execute("UPDATE meta SET value = ? WHERE key = 'fencing_token'", (self._token,))
        if self._head != head0:  # the chain's head beside the chain, once per group commit
            c.execute("UPDATE audit_head SET seq = ?, hash = ?", self._head)
        try:
            started = time.perf_counter()
            if len(outcomes) <= 1 and self._commit_s < INLINE_COMMIT_MAX_S:
                c.execute("COMMIT")  # a lone transaction on a quick disk: no thread hop
            else:
                await loop.run_in_executor(self._io, c.execute, "COMMIT")
            self._commit_s = 0.8 * self._commit_s + 0.2 * (time.perf_counter() - started)
        except Exception as exc:  # sqlite3.Error, or the executor refusing work
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._head, self._token = head0, token0
            self._known.clear()
            self._fail_all([(None, f) for f, _, _ in outcomes], exc)
            return
        self.batches += 1
        self.transactions += len(outcomes)
        if self.commit_observers:
            took = time.perf_counter() - began
            for observe in self.commit_observers:
                observe(took)
        for fut, result, failure in outcomes:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(result)
        if self._head != head0:
            notes.append(("audit", {"seq": self._head[0]}))
        self._deliver(notes)
        for tx in done:
            tx.committed()

    @staticmethod
    def _fail_all(batch: Sequence[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
        err = Unavailable(f"store commit failed: {exc}; nothing of this request was kept")
        for _fn, fut in batch:
            if not fut.done():
                fut.set_exception(err)

    def principals_generation(self) -> int | None:
        # Triggers count every UPDATE and DELETE of principals, by writ or by hand in the
        # sqlite3 shell (migration 2): one indexed read, ~5 us, instead of the ~25 us of
        # looking the token up again on every request.
        if self.memory:
            return 0  # nobody else can reach an in-memory store; writ's own changes notify
        c = self._r
        if c is None:
            raise Unavailable("store is closed")
        try:
            r = c.execute("SELECT value FROM meta WHERE key = 'principals_gen'").fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"store read failed: {exc}") from exc
        return int(r[0]) if r else 0

    async def ready(self) -> str | None:
        async def version(tx: Tx) -> int:
            c = tx.c  # type: ignore[attr-defined]
            return int(
                c.execute("SELECT coalesce(max(version), 0) FROM writ_migrations").fetchone()[0]
            )

        try:
            have = await self.read(version)
        except WritError as exc:
            return exc.message
        if have != len(_schema.MIGRATIONS):
            return f"the schema is at migration {have}; this writ expects {len(_schema.MIGRATIONS)}"
        return None

    # -- reads ---------------------------------------------------------------------------
    async def read(self, fn: Callable[[Tx], Awaitable[T]], single: bool = False) -> T:
        c = self._r
        if c is None:
            raise Unavailable("store is closed")
        if c is self._w:  # in-memory: share the writer, between batches
            while self._draining:
                await self._idle.wait()
        try:
            if c is not self._w:
                c.execute("BEGIN")
            try:
                return _run_now(fn(SQLiteTx(self, c, writable=False)))  # type: ignore[arg-type]
            finally:
                if c is not self._w:
                    c.execute("COMMIT")
        except sqlite3.Error as exc:
            if _tolerate(c, exc):
                return await self.read(fn)  # once more, reading bad text leniently
            raise Unavailable(f"store read failed: {exc}") from exc

    async def _audit_pages(
        self, columns: str, after_seq: int, batch: int
    ) -> AsyncIterator[list[Any]]:
        if self._r is None:
            raise Unavailable("store is closed")
        conn = self._r if self.memory else self._connect()
        try:
            last = after_seq
            while True:
                query = f"SELECT {columns} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
                try:
                    rows = conn.execute(query, (last, batch)).fetchall()
                except sqlite3.OperationalError as exc:
                    if not _tolerate(conn, exc):
                        raise
                    # a hand-written body that is not UTF-8: read leniently, so the row's
                    # hash no longer matches and verify names it
                    rows = conn.execute(query, (last, batch)).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                yield rows
                await asyncio.sleep(0)
        finally:
            if conn is not self._r:
                conn.close()

    # -- export and import -----------------------------------------------------------------
    async def export_rows(
        self, batch: int = 10_000
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        if self._r is None:
            raise Unavailable("store is closed")
        conn = self._r if self.memory else self._connect()
        try:
            if not self.memory:
                conn.execute("BEGIN")  # one snapshot for the whole dump (WAL)
            r = conn.execute("SELECT value FROM meta WHERE key = 'fencing_token'").fetchone()
            head = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
            yield "meta", [{"fencing_token": int(r[0]) if r else 0, **kept(head)}]
            for table in TABLES:
                cur = conn.execute(export_sql(table))
                while True:
                    rows = cur.fetchmany(batch)
                    if not rows:
                        break
                    yield table, [export_row(table, r) for r in rows]
                    await asyncio.sleep(0)
        finally:
            if not self.memory:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")
                conn.close()

    async def import_rows(
        self, batches: AsyncIterable[tuple[str, list[dict[str, Any]]]]
    ) -> dict[str, int]:
        c = self._w
        if c is None:
            raise Unavailable("store is closed")
        while self._draining:  # take the writer between two group commits
            await self._idle.wait()
        self._draining = True
        self._idle.clear()
        counts: dict[str, int] = {}
        self._known.clear()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                check_empty(
                    self.url,
                    {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES},
                )
                token = 0
                async for table, rows in batches:
                    if table == "meta":
                        token = max([token, *(int(r.get("fencing_token") or 0) for r in rows)])
                        continue
                    if table not in TABLES:
                        raise Invalid(f"cannot import unknown table {table!r}")
                    cols = TABLES[table]
                    c.executemany(
                        f"INSERT INTO {table} ({', '.join(cols)})"
                        f" VALUES ({','.join('?' * len(cols))})",
                        [import_row(table, r) for r in rows],
                    )
                    counts[table] = counts.get(table, 0) + len(rows)
                    if table == "leases" and rows:
                        token = max(token, *(int(r["fencing_token"]) for r in rows))
                c.execute(
                    "UPDATE meta SET value = max(value, ?) WHERE key = 'fencing_token'", (token,)
                )
                c.execute(_IMPORTED_HEAD)
                counts["meta"] = token
                await asyncio.get_running_loop().run_in_executor(self._io, c.execute, "COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"import into {self.path!r} failed: {exc}") from exc
        finally:
            self._draining = False
            self._idle.set()
            if self._pending:
                self._draining = True
                self._idle.clear()
                asyncio.get_running_loop().create_task(self._drain())
        return counts
