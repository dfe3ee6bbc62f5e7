"""``writ demo``: the DB goes down without writ and stays up with it, the same way every run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from writ.cli import main
from writ.demo import SimDB, run, run_uncoordinated


def _run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    monkeypatch.chdir(folder)
    buf = io.StringIO()
    result = run(console=Console(file=buf, width=160, color_system=None, force_terminal=False))
    out = folder / "writ-demo"
    steps = "\n".join(t for _, t, _ in result.coordinated.events)
    return (
        buf.getvalue() + "\n" + steps,
        (out / "postmortem.md").read_text(),
        (out / "postmortem.html").read_text(),
    )


def test_two_runs_print_and_write_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _run(tmp_path / "a", monkeypatch)
    second = _run(tmp_path / "b", monkeypatch)
    assert first == second  # the printout, the Markdown and the HTML, byte for byte


def test_down_without_writ_up_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, md, html = _run(tmp_path, monkeypatch)
    assert "Without writ: the DB went down at 02:19:00" in text
    assert "With writ:    the DB stayed up" in text
    assert "hash chain verified" in text
    assert "\n  writ-demo/postmortem.md\n  writ-demo/postmortem.html" in text
    for step in (
        "REFUSED consent_required",
        "QUEUED behind perf-agent",
        "EXPIRED unanswered (not a denial)",
        "svc-ops-princess (on call) DENIES",
        "routing-agent GRANTED",
    ):
        assert step in text, step
    # the postmortem names each refusal, wait and consent answer with its exact second
    assert "| 02:17:40 | 8 | cost-agent | prod/db | consent_required | perf-agent |" in md
    assert (
        "| 02:17:30 | 7 | routing-agent | routing/db-tier | 1 | perf-agent | granted at "
        "02:18:40" in md
    )
    assert (
        "expired unanswered at 02:19:40 (escalated to svc-ops-princess), then denied by "
        "svc-ops-princess at 02:20:00"
    ) in md
    assert "| prod/db | perf-agent | prod/db/1 | 02:17:10 | 02:18:40 |" in md
    assert "<svg" in html and "perf-agent · token 1" in html


def test_cli_names_the_files_whole_however_long_their_path(tmp_path: Path) -> None:
    """The files' paths are printed whole, never broken over lines where the terminal is
    narrower than they are (a path broken in two cannot be copied)."""
    out = tmp_path / ("deep-" * 20) / "out"
    res = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "postmortem.html").exists()
    assert str(out / "postmortem.md") in res.output
    assert str(out / "postmortem.html") in res.output


def test_the_simulated_db_falls_over_after_40s_above_capacity() -> None:
    db = SimDB(instances=4, base_rps=380)
    assert round(db.p99_ms or 0) == 400 and db.state() == "4× 380rps 400ms"
    db.rerouted_rps = 240  # 155 %
    assert db.advance(0) == [] and db.down_at is None
    assert db.advance(30) == [] and db.down_at is None
    assert db.advance(40)[0].startswith("DB DOWN") and db.down_at == 40
    assert db.state() == "DOWN"
    ok = SimDB(instances=8, base_rps=620)
    for t in range(0, 300, 10):
        ok.advance(t)
    assert ok.down_at is None and round(ok.p99_ms or 0) == 89


def test_uncoordinated_run_is_the_seed_story() -> None:
    run1 = run_uncoordinated()
    texts = [t for _, t, _ in run1.events]
    assert texts[0].startswith("ALERT")
    assert any("perf-agent doubles capacity 4→8" in t for t in texts)
    assert any("cost-agent" in t and "consolidates 8→4" in t for t in texts)
    assert any("routing-agent" in t and "reroutes" in t for t in texts)
    assert run1.db.down_at == 120  # 02:19:00


def test_closed_mode_refuses_the_consolidation_before_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``writ demo --mode closed``: cost-agent's consolidation is refused as not its
    authority (403 forbidden, with the policy line), no consent is asked or answered, the
    DB stays up, and the run is as deterministic as the open one."""
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        buf = io.StringIO()
        result = run(
            console=Console(file=buf, width=160, color_system=None, force_terminal=False),
            mode="closed",
        )
        out = tmp_path / name / "writ-demo"
        outs.append((buf.getvalue(), (out / "postmortem.md").read_text(), result))
    (text, md, result), (text2, md2, _) = outs
    assert (text, md) == (text2, md2)
    steps = "\n".join(t for _, t, _ in result.coordinated.events)
    assert "REFUSED forbidden: not its authority (demo-policy.toml:24" in steps
    assert "consent" not in steps.replace("no consent asked", "")
    assert "With writ:    the DB stayed up" in text and "run 2: through writ, closed mode" in text
    assert "| 02:17:40 | 8 | cost-agent | prod/db | forbidden | perf-agent |" in md
    res = CliRunner().invoke(main, ["demo", "--mode", "closed", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0 and "forbidden" in res.output, res.output
