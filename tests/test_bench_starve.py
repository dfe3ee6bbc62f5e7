"""``python -m bench.starve_bench`` (one client must not starve the rest): it starts a real
``writ serve``, runs the honest agent alone and under the attacks it is asked for, prints its
one table, and leaves no process behind. Tiny sizes: the figures are a benchmark's, never
asserted here."""

from __future__ import annotations

import re

import pytest

from bench import starve_bench


def test_it_runs_the_attacks_asked_for_and_prints_one_row_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--rows", "2000", "--resources", "20", "--seconds", "0.3", "--waiters", "20"]
    assert starve_bench.main([*argv, "--attacks", "audit-prefix,events-polls,waiters"]) == 0
    out = capsys.readouterr().out
    head = "| attack | honest pairs/s | p50 ms | p99 ms | max ms | server RSS MiB (peak) |"
    assert head in out
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| baseline", "| audit-prefix", "| events-polls", "| waiters"]
    assert "attack not in place" not in out
    queued = re.search(r"queued at start (\d+)", out)
    assert queued and int(queued[1]) >= 19  # the waiters were queued before the window opened
    assert starve_bench._PROCS == []  # the servers and attackers it started are stopped


def test_an_unknown_attack_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        starve_bench.main(["--attacks", "pipeline,flood"])
    assert "--attacks: unknown flood" in capsys.readouterr().err
