"""The embedded store: ``sqlite:///path/writ.db`` (``sqlite:///:memory:`` for tests).

WAL mode with ``synchronous=FULL``: a commit writ acknowledged is on disk, across a killed
process and a power cut. Writes go through one connection as *group commits*: every
transaction that arrives while a commit is being flushed joins the next batch, each inside
its own savepoint, and the whole batch costs one fsync. Statements run on the event loop
(they touch only pages in memory); the COMMIT — the fsync — runs in a worker thread, so
the loop does not wait on the disk while a batch is flushed. A batch of a single
transaction commits on the loop instead while the disk is quick (recent commits under
``INLINE_COMMIT_MAX_S``): for a lone request the two thread hops cost more than the fsync.

Caveat: one ``writ serve`` process per file. Other processes (``writ principal add`` on the
store, ``writ audit verify``) may open it at the same time; they take SQLite's write lock
and see a consistent chain, but a server does not hear their notifications.

The package: :mod:`._schema` (MIGRATIONS), :mod:`._sql` (SQL helpers), :mod:`._tx` (the
transaction) and :mod:`._store` (:class:`SQLiteStore`).
"""

from writ.stores.sqlite._schema import MIGRATIONS as MIGRATIONS
from writ.stores.sqlite._sql import _held_related_sql as _held_related_sql
from writ.stores.sqlite._store import INLINE_COMMIT_MAX_S as INLINE_COMMIT_MAX_S
from writ.stores.sqlite._store import SQLiteStore as SQLiteStore
from writ.stores.sqlite._tx import SQLiteTx as SQLiteTx

__all__ = [
    "INLINE_COMMIT_MAX_S",
    "MIGRATIONS",
    "SQLiteStore",
    "SQLiteTx",
    "_held_related_sql",
]
