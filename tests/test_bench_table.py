"""``bench.run``'s table and its CPU columns: the database a writ server stands on is metered
apart (``db``), so ⚠ (other processes busy in the window) speaks of the rest of the machine
only. The figures are a benchmark's; here the table is made from given results."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench import peers, run

URL = os.environ.get("WRIT_TEST_POSTGRES_URL")


def _r(pairs: float, other: float, db: float | None) -> dict[str, Any]:
    return {
        "pairs_per_s": pairs,
        "pair_p50_ms": 1.5,
        "pair_p99_ms": 3.0,
        "errors": 0,
        "loader_cpu": 0.09,
        "server_cpu": 0.5,
        "db_cpu": db,
        "other_cpu": other,
    }


def test_the_database_has_a_column_and_only_other_work_is_flagged() -> None:
    results = {
        "writ-sqlite": {"c1": _r(700, 0.01, None)},
        "writ-postgres": {"c1": _r(600, 0.02, 0.31)},  # PostgreSQL busy: its own work
        "postgres": {"c1": _r(1500, 0.45, None)},  # something else busy on the machine
    }
    text = run.table(results, {})
    assert "| CPU loader/server/db/other |" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    assert rows["writ-postgres"].endswith("| 0.09/0.50/0.31/0.02 |")
    assert rows["writ-sqlite"].endswith("| 0.09/0.50/—/0.01 |")
    assert "postgres ⚠" in rows and "writ-postgres ⚠" not in rows
    assert "⚠ = other processes used > 0.3 cores" in text


def test_a_writ_peer_on_postgresql_meters_postgresqls_processes_as_its_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peers, "postgres_pids", lambda: [101, 102])
    assert peers.Writ("postgres").db_pids() == [101, 102]
    assert peers.Writ("sqlite").db_pids() == [] and peers.Postgres().db_pids() == []
    assert peers.cpu_seconds([]) is None  # no database of its own: no figure, not zero


@pytest.mark.skipif(not URL, reason="WRIT_TEST_POSTGRES_URL is not set")
def test_postgresqls_processes_are_found_by_name() -> None:
    """A backend this test holds open is among the processes metered as PostgreSQL's."""
    import psycopg

    assert URL
    with psycopg.connect(URL) as c:
        pid = c.info.backend_pid
        if not os.path.exists(f"/proc/{pid}"):
            pytest.skip("PostgreSQL runs in another process namespace: nothing to meter here")
        assert pid in peers.postgres_pids()
