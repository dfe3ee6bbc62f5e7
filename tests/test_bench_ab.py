"""``python -m bench.ab`` (two builds in alternating rounds): what it reads from each
``bench.run`` document and how it sums them up — the figures bench/RESULTS.md quotes. The
rounds themselves are benchmarks, run on demand, never here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import ab


def _doc(pairs: float, p50: float) -> dict:
    return {
        "results": {
            "writ-postgres": {
                "d16": {
                    "pairs_per_s": pairs,
                    "pair_p50_ms": p50,
                    "pair_p99_ms": 9.0,
                    "server_cpu_ms_per_pair": None,
                },
                "held": {"before": 1.0},  # not a scenario's figures: left out
            },
        }
    }


def test_summary_pairs_round_i_of_one_build_with_round_i_of_the_other() -> None:
    before = [ab.figures(_doc(p, 6.0)) for p in (2000, 2400, 2100)]
    after = [ab.figures(_doc(p, 5.5)) for p in (2200, 2400, 2520)]
    assert list(before[0]) == [("writ-postgres", "d16")]
    assert "server_cpu_ms_per_pair" not in before[0][("writ-postgres", "d16")]
    (row,) = ab.summary({"A": before, "B": after})
    assert row["before"] == [2000, 2400, 2100] and row["after"] == [2200, 2400, 2520]
    assert row["mean"] == pytest.approx((2166.67, 2373.33), rel=1e-4)
    assert row["paired_change"] == pytest.approx(0.10)  # +10 %, +0 %, +20 %: the median
    assert row["p50"] == ([6.0] * 3, [5.5] * 3) and row["cpu"] == ([], [])
    text = ab.table("A", "B", [row])
    assert "| writ-postgres | d16 | 2,000, 2,400, 2,100 | 2,200, 2,400, 2,520 |" in text
    assert "+10.0%" in text and "2,167 → 2,373" in text


def test_a_scenario_one_build_lacks_is_left_out() -> None:
    only_a = [ab.figures(_doc(2000, 6.0))]
    assert ab.summary({"A": only_a, "B": [{}]}) == []


def test_a_round_one_build_lacks_leaves_the_others_paired_by_round() -> None:
    """Round 2 of A lost its scenario (a peer skipped, say): rounds 1 and 3 are still
    paired with rounds 1 and 3 of B (+10 %, +10 %), not shifted (+5 %)."""
    before = [ab.figures(_doc(1000, 6.0)), {}, ab.figures(_doc(2000, 6.0))]
    after = [ab.figures(_doc(p, 6.0)) for p in (1100, 2000, 2200)]
    (row,) = ab.summary({"A": before, "B": after})
    assert row["paired_change"] == pytest.approx(0.10)
    assert row["before"] == [1000, 2000] and row["after"] == [1100, 2000, 2200]


def test_the_working_tree_and_a_commit_are_exported_as_src(tmp_path: Path) -> None:
    here = ab.export(".", tmp_path / "tree")
    assert (here / "writ" / "__init__.py").is_file()
    assert not list(here.rglob("__pycache__"))
    assert (tmp_path / "tree" / "COMMIT").read_text().strip().endswith("+tree")
    head = ab.export("HEAD", tmp_path / "head")
    assert (head / "writ" / "server.py").is_file()
    # the build bench.run records: HEAD's commit, resolved
    assert (tmp_path / "head" / "COMMIT").read_text().strip() == ab.resolve("HEAD")
    for bad in ("no-such-commit", "--output=x"):  # a typo, and an option: refused
        with pytest.raises(subprocess.CalledProcessError):
            ab.export(bad, tmp_path / "none")
    assert not (tmp_path / "none" / "src").exists()


def test_the_same_build_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ab.parse(["HEAD", "HEAD"])
    assert "the same" in capsys.readouterr().err
