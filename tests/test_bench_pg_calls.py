"""``python -m bench.pg_calls``: its lines call the real ``writ_batch`` (schemas made by the
store's own migrations) as a lone server does — an acquire's call and a release's, the
version checked — and it leaves nothing behind. The figures are a benchmark's, never
asserted here."""

from __future__ import annotations

import os

import psycopg
import pytest

from bench import pg_calls

URL = os.environ.get("WRIT_TEST_POSTGRES_URL")
needs_pg = pytest.mark.skipif(not URL, reason="WRIT_TEST_POSTGRES_URL is not set")


def _left(tag: str) -> list[str]:
    """What run ``tag`` made that is still there: its own names, exactly (another run's,
    under another worker's process id, may share a prefix with them)."""
    assert URL
    table, schemas = pg_calls._names(tag)
    with psycopg.connect(URL) as c:
        got = c.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)"
            " UNION ALL SELECT relname FROM pg_class WHERE relname = %s",
            (schemas, table),
        ).fetchall()
    return [r[0] for r in got]


def test_a_postgresql_it_cannot_reach_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pg_calls.main(["--pg-url", "postgresql://nobody@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench.pg_calls: PostgreSQL: ") and "Traceback" not in err
    with pytest.raises(SystemExit):
        pg_calls.main(["--calls", "0"])
    assert "--calls: at least 1" in capsys.readouterr().err


@needs_pg
def test_its_calls_are_the_stores_and_what_it_made_is_dropped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert URL
    tag = f"{os.getpid()}"
    assert pg_calls.main(["--calls", "100", "--pg-url", URL]) == 0
    text = capsys.readouterr().out
    for title in ("round trip", "UPDATE, commit flushed", "+ head check and update"):
        assert f"| {title} |" in text
    assert "| as writ sends it (flushed) |" in text and "| + the rows (not flushed) |" in text
    assert _left(tag) == []


@needs_pg
def test_each_batch_line_moves_the_head_and_the_leases_as_the_store_would() -> None:
    assert URL
    tag = f"t{os.getpid()}"
    lines: list[pg_calls.Line] = []
    try:
        lines = pg_calls.make_lines(URL, tag)
        pg_calls.run(lines, pg_calls.BLOCK * 2)  # a failed call (a version moved) raises
        *_, head, rows, flushed = lines
        for line, held_after in ((rows, 0), (flushed, 0)):
            got = line.conn.execute(
                "SELECT (SELECT count(*) FROM audit), (SELECT count(*) FROM leases),"
                " (SELECT count(*) FROM leases WHERE state = 'held'), (SELECT version FROM audit_head)"
            ).fetchone()
            assert got is not None
            audit, leases, held, version = got
            # 100 calls: 50 acquires and 50 releases, each with its audit row
            assert (audit, leases, held) == (100, 50, held_after)
            assert version >= 100
        got = head.conn.execute(
            "SELECT (SELECT count(*) FROM audit), version FROM audit_head"
        ).fetchone()
        assert got is not None and got[0] == 0 and got[1] >= 100  # the head only
    finally:
        for line in lines:
            line.close()
        pg_calls.drop(URL, tag)
    assert _left(tag) == []
