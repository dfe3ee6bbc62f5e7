"""The deployment recipe in deploy/ (issue 14), checked as far as this machine can: the
compose file parses with the services it promises, the alert rules and Prometheus config
pass ``promtool``, the systemd unit passes ``systemd-analyze verify``, and the Dockerfile
is multi-stage, runs as a non-root user and checks /livez. No container engine runs here,
so the image itself is never built in CI (docs/operations.md says so)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

DEPLOY = Path(__file__).parents[1] / "deploy"


def test_compose_runs_writ_on_postgres_with_prometheus() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"writ", "postgres", "prometheus"}
    writ = services["writ"]
    assert writ["build"]["dockerfile"] == "deploy/Dockerfile"
    assert writ["environment"]["WRIT_STORE"].startswith("postgresql://")
    assert writ["environment"]["WRIT_STORE"].split("@")[1].startswith("postgres:5432/")
    assert writ["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert writ["stop_signal"] == "SIGTERM"
    # the grace period outlasts writ's own shutdown bound
    grace = int(writ["stop_grace_period"].rstrip("s"))
    assert grace > int(writ["environment"]["WRIT_SHUTDOWN_TIMEOUT"])
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "prometheus.yml" in mounts and "alerts.yml" in mounts
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["writ:7411"]
    assert prom["rule_files"] == ["alerts.yml"]


def test_alert_rules_cover_what_matters() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "writ_stuck_total" in exprs["WritStuckLocks"]
    assert 'kind="page",outcome="failed"' in exprs["WritPagesFailing"]
    assert 'outcome="expired"' in exprs["WritConsentExpiringUnanswered"]
    assert "writ_store_commit_seconds_bucket" in exprs["WritStoreCommitSlow"]
    assert exprs["WritLedgerTampered"] == "writ_audit_verify_ok == 0"


def test_alert_metrics_exist() -> None:
    """Every writ_* name the rules use is a family /metrics serves."""
    from writ.core.ledger import Verification
    from writ.telemetry.metrics import Metrics

    metrics = Metrics()  # with a standing verify that has made a pass (its families show then)
    metrics.sentinel = SimpleNamespace(last=Verification(True, 1, "h", None), at=(1, "h"))
    metrics.sentinel.last_end = 0.0
    asyncio.run(metrics.render())
    served = {m.name for m in metrics.registry.collect()}
    used = set(re.findall(r"\b(writ_[a-z_]+)", (DEPLOY / "alerts.yml").read_text()))
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in served, name


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does)",
)
def test_promtool_checks_rules_and_config() -> None:
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        r = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, its ExecStart pointed at this venv's writ
    (verify insists that the executable exists)."""
    writ = Path(sys.executable).parent / "writ"
    unit = (DEPLOY / "writ.service").read_text()
    assert "/opt/writ/venv/bin/writ serve" in unit
    (tmp_path / "writ.service").write_text(unit.replace("/opt/writ/venv/bin/writ", str(writ)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "writ.service")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "KillSignal=SIGTERM" in unit
        and "ExecStartPre=/opt/writ/venv/bin/writ serve --check" in unit
    )


def test_dockerfile_is_multi_stage_non_root_with_a_livez_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    assert "COPY --from=build" in text
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER\s+(\S+)", final, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert final.index("USER") < final.index("ENTRYPOINT")
    health = re.search(r"^HEALTHCHECK(?:[^\n]*\\\n)*[^\n]*", final, re.M)
    assert health and "/livez" in health.group(0)
    assert 'ENTRYPOINT ["writ", "serve"]' in final
