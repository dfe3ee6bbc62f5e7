"""``python -m bench.pg_calls`` — what one call of a lone batch costs PostgreSQL, piece by
piece: the round trip, a commit and its WAL flush, and ``writ_batch`` (the store's one
statement per batch when a server writes alone) with more of its work each line.

No writ server and no HTTP: each line is its own connection (schemas made afresh by the
store's own migrations, so the function is the one writ runs) calling one prepared statement
in autocommit, as the store's lone call does, and the lines take turns in blocks of 50 calls,
so a drift of a shared machine falls on all of them. An acquire's call and a release's
alternate on the ``writ_batch`` lines: a lease row and its audit row inserted, then the lease
ended and the release's audit row. The table shows each line's p50 and p90 per call and what
it adds to the line it builds on:

    round trip                  SELECT 1
    UPDATE, commit not flushed  one row of a table of its own (synchronous_commit off)
    UPDATE, commit flushed      the same, as PostgreSQL commits by default: + the WAL flush
    writ_batch: the call        nothing to do (no check, no rows, no head), not flushed
    + head check and update     the version check and the chain head moved, no rows
    + the rows                  an acquire's (release's) rows too: the whole call, not flushed
    as writ sends it            the whole call, flushed: what one lone batch costs

    python -m bench.pg_calls                 # 3,000 calls a line
    python -m bench.pg_calls --calls 10000 --pg-url postgresql://user@host/db
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

import psycopg
from psycopg import pq

from bench.peers import DEFAULT_PG_URL
from writ.core.errors import Unavailable
from writ.stores import open_store
from writ.stores.postgres._schema import _WRIT_BATCH_TYPED
from writ.stores.postgres._writer import _text

BLOCK = 50  # calls of one line before the next line's turn

# an audit row's body, as long as a grant's (its content is not checked by writ_batch)
_BODY = json.dumps({"event": "lease.granted", "notes": "x" * 600, "seq": 0}, sort_keys=True)
_HASH = "0" * 64

Params = list[Any]  # bytes, or None for NULL (libpq's text parameters)


class Line:
    """One line of the table: a connection, a prepared statement and the next arguments."""

    base: Line | None = None  # the line this one adds to (the table's "adds" column)

    def __init__(self, title: str, url: str, query: str, setup: list[str]) -> None:
        self.title = title
        self.conn = psycopg.connect(url, autocommit=True)
        for statement in setup:
            self.conn.execute(statement)
        self.conn.pgconn.prepare(b"line", query.encode())
        self.took: list[int] = []

    def args(self) -> Params:
        return []

    def call(self) -> None:
        params = self.args()
        t = time.perf_counter_ns()
        r = self.conn.pgconn.exec_prepared(b"line", params)
        self.took.append(time.perf_counter_ns() - t)
        if r.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise RuntimeError(f"{self.title}: {r.error_message.decode(errors='replace')}")

    def close(self) -> None:
        self.conn.close()


class Update(Line):
    """A one-row ``UPDATE`` of a table of its own, the time as its value."""

    def args(self) -> Params:
        return [repr(time.time()).encode()]


class Batch(Line):
    """``writ_batch`` on a writ schema of its own, called as a lone server's batches call it:
    the version the head holds, the next token drawn by an acquire (``rows``) or nothing
    (``head`` only, or neither: the call alone)."""

    def __init__(
        self, title: str, url: str, schema: str, head: bool, rows: bool, setup: list[str]
    ) -> None:
        super().__init__(title, url, _WRIT_BATCH_TYPED, [f"SET search_path = {schema}", *setup])
        self.head, self.rows = head, rows
        got = self.conn.execute(
            "SELECT seq, version, coalesce(pg_sequence_last_value('fencing_token'), 0)"
            " FROM audit_head"
        ).fetchone()
        assert got is not None
        self.seq, self.version, self.token = (int(v) for v in got)
        self.lease: str | None = None  # held: the next call releases it
        self.n = 0

    def args(self) -> Params:
        now = time.time()
        a: list[Any] = [None] * 19
        a[17] = "writ_bench"  # the channel (no notes: nobody else to tell)
        a[13], a[14], a[15], a[16] = self.token, 0, 0, 0
        if not self.head:
            return _params(a)
        self.seq += 1
        self.version += 1
        a[0], a[1] = self.version - 1, 0  # what the batch decided on
        a[7:13] = [self.seq, _HASH, now, self.version, 0, 0]
        if self.rows and self.lease is None:  # an acquire: a lease and its grant's row
            self.n += 1
            self.token += 1
            self.lease = f"ls_bench_{os.getpid()}_{self.n}"
            a[2] = json.dumps(
                [
                    [
                        self.lease,
                        "bench/r0",
                        "bench-agent",
                        "bench",
                        self.token,
                        now,
                        now + 30,
                        30.0,
                        '["*"]',
                        "held",
                        None,
                        None,
                        None,
                        self.version,
                    ]
                ]
            )
            a[6] = self._audit(now, "lease.granted")
            a[13], a[14] = self.token, 1
        elif self.rows:  # a release: the lease ended and its row
            a[3] = json.dumps([[self.lease, "released", now, 30.0, now, self.version]])
            a[6] = self._audit(now, "lease.released")
            self.lease = None
        return _params(a)

    def _audit(self, now: float, event: str) -> str:
        """The call's one audit row, as ``writ_batch`` takes it."""
        row = [self.seq, now, event, "bench/r0", f"bench/r0/{self.token}", _BODY, _HASH]
        return json.dumps([row])


def _params(values: list[Any]) -> Params:
    """The arguments as the store's lone call sends them (libpq's text parameters)."""
    return [_text(v) for v in values]


async def _schema(url: str, schema: str) -> None:
    store = open_store(f"{url}{'&' if '?' in url else '?'}schema={schema}")
    await store.open()
    await store.close()


def _names(tag: str) -> tuple[str, list[str]]:
    """The table and the schemas the lines of run ``tag`` use."""
    return f"bench_calls_{tag}_row", [f"bench_calls_{tag}_{i}" for i in range(4)]


def make_lines(url: str, tag: str) -> list[Line]:
    """The table's lines, on a table and writ schemas made for them (see :func:`drop`)."""
    table, schemas = _names(tag)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, ts float8)")
        c.execute(f"INSERT INTO {table} VALUES (1, 0)")
    for s in schemas:
        asyncio.run(_schema(url, s))
    off = ["SET synchronous_commit = off"]
    update = f"UPDATE {table} SET ts = $1::float8 WHERE id = 1"

    trip = Line("round trip", url, "SELECT 1", [])
    update_off = Update("UPDATE, commit not flushed", url, update, off)
    call = Batch("writ_batch: the call", url, schemas[0], False, False, off)
    head = Batch("+ head check and update", url, schemas[1], True, False, off)
    rows = Batch("+ the rows (not flushed)", url, schemas[2], True, True, off)
    lines: list[Line] = [
        trip,
        update_off,
        Update("UPDATE, commit flushed", url, update, []),
        call,
        head,
        rows,
        Batch("as writ sends it (flushed)", url, schemas[3], True, True, []),
    ]
    for line, base in zip(lines[1:], [trip, update_off, trip, call, head, rows], strict=True):
        line.base = base
    return lines


def drop(url: str, tag: str) -> None:
    """Drop what run ``tag`` made (whatever of it was made)."""
    table, schemas = _names(tag)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        for s in schemas:
            c.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")


def run(lines: list[Line], calls: int) -> None:
    for _ in range(max(1, calls // BLOCK)):
        for line in lines:
            for _ in range(BLOCK):
                line.call()


def table(lines: list[Line]) -> str:
    out = ["| line | p50 µs | p90 µs | adds to | p50 adds µs |", "|---|---|---|---|---|"]
    for line in lines:
        p50, p90 = _p(line, 50), _p(line, 90)
        base = line.base
        adds = ("", "") if base is None else (base.title, f"{p50 - _p(base, 50):+.1f}")
        out.append(f"| {line.title} | {p50:.1f} | {p90:.1f} | {adds[0]} | {adds[1]} |")
    return "\n".join(out)


def _p(line: Line, q: int) -> float:
    """The ``q``-th percentile of ``line``'s calls in µs, past the first tenth (warm-up)."""
    took = sorted(line.took[len(line.took) // 10 :])
    return took[min(len(took) - 1, len(took) * q // 100)] / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.pg_calls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--calls", type=int, default=3000, help="calls a line (default 3,000)")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="the PostgreSQL to measure")
    a = ap.parse_args(argv)
    if a.calls < 1:
        ap.error("--calls: at least 1")
    tag = f"{os.getpid()}"
    lines: list[Line] = []
    try:
        lines = make_lines(a.pg_url, tag)
        run(lines, a.calls)
        print(table(lines))
    except (psycopg.OperationalError, Unavailable) as exc:  # not reachable: say so, plainly
        print(f"bench.pg_calls: PostgreSQL: {exc}".rstrip(), file=sys.stderr)
        return 2
    finally:
        for line in lines:
            line.close()
        with contextlib.suppress(psycopg.OperationalError):  # nothing made, or unreachable
            drop(a.pg_url, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
