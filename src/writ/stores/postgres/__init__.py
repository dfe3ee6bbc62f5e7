"""The server store: ``postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DBNAME[?OPTIONS]``.

Several ``writ serve`` processes may share one database; PostgreSQL is the only thing they
agree through. Options in the query string (every other one goes to libpq, e.g. ``sslmode``):

=======================  ==========================================================
``schema=NAME``          keep writ's tables in this schema (created if missing)
``pool_min=2``           connections kept open per process
``pool_max=10``          connections at most per process (plus one for LISTEN)
``pool_timeout=5``       seconds a request waits for a connection before 503
``statement_timeout=10`` seconds one statement (or one lock wait) may take
``idle_timeout=10``      seconds a transaction may sit idle before PostgreSQL ends it
=======================  ==========================================================

How the contract is kept (the reasoning lives in the comments of this package's modules and in
docs/postgres.md):

* **One serialization point, held briefly.** Every write is decided while holding the row
  lock of ``audit_head``, kept until COMMIT, so writes are serial across every process, in
  lock order, which is commit order. The write transactions that arrive together in one
  process share one PostgreSQL transaction (:class:`~._tx._Batch`: one lock, one fsync), decide on
  an in-memory replica of the held leases and the queue (:class:`~._batch._Live`) that is caught up
  under the lock first, and send their writes with COMMIT in one query (``writ_batch``). A
  grant decided on "nothing conflicting is held or queued" therefore cannot race another
  grant, even when no row yet exists to lock, and the FIFO queue is one queue.
* **Time** is the database's ``clock_timestamp()`` read under that lock (for an optimistic
  batch: learned under it at most ``optimistic_for`` seconds before), never earlier than the
  newest audit row's: ledger timestamps never run backwards.
* **Store methods** read with ``self._one``/``self._all`` and write after ``self._w()``
  (directly on ``self.c`` or buffered with ``self._exec``); in a batch both go through the
  batch, behind the transaction's savepoint. Anything that changes the tables outside writ
  must move ``audit_head.epoch`` in the same transaction (servers then reload their replica).
* **Caveat:** PostgreSQL's commit acknowledges durability on the primary; with asynchronous
  replication a failover can lose acknowledged grants. Use synchronous replication.

The package: :mod:`._schema` (MIGRATIONS and the fixed statements), :mod:`._migrations`
(applying them at open, or checking them for a command that only reads), :mod:`._sql` (SQL
helpers), :mod:`._batch` (the replica and the batch's connection), :mod:`._tx` (:class:`PgTx`
and the batch) and :mod:`._store` (:class:`PostgresStore`).
"""

from writ.stores.postgres._schema import MIGRATIONS as MIGRATIONS
from writ.stores.postgres._store import PostgresStore as PostgresStore
from writ.stores.postgres._tx import PgTx as PgTx

__all__ = [
    "MIGRATIONS",
    "PgTx",
    "PostgresStore",
]
