"""The ``writ`` command line, through click's CliRunner against a real server.

``writ run`` tests start real child processes (``python -c``) that write to a file, so the
tests can see what the child was given and which signals reached it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from tests.server_fixtures import (
    LiveServer,
    free_port,
    gone_within,
    in_background,
    serve,
    unique,
    wait_until,
)
from writ.cli import EXIT_LEASE_LOST, main
from writ.client import Client

# A child for `writ run`: records its lease, then works until told to stop.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    out = sys.argv[1]
    ignore_term = len(sys.argv) > 2 and sys.argv[2] == "ignore-term"
    def note(text):
        with open(out, "a") as f:
            f.write(text + "\\n")
    def on_term(signum, frame):
        note("SIGTERM")
        if not ignore_term:
            sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    note(" ".join(os.environ[k] for k in ("WRIT_LEASE_ID", "WRIT_FENCING_TOKEN", "WRIT_LOCK_KEY")))
    while True:
        time.sleep(0.02)
""")


Env = Mapping[str, str | None]


def cli(args: list[str], env: Env | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env, input=input, catch_exceptions=False)


def ok(args: list[str], env: Env | None = None) -> Result:
    result = cli(args, env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def child_started(path: Path) -> list[str] | None:
    """The child's first line (lease id, fencing token, lock key) once it is written."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return lines[0].split() if lines else None


@pytest.fixture
def agent_env(live_server: LiveServer) -> dict[str, str]:
    _, token = live_server.principal("agent")
    return live_server.env(token)


@pytest.fixture
def human_env(live_server: LiveServer) -> dict[str, str]:
    _, token = live_server.principal("human")
    return live_server.env(token)


# ----------------------------------------------------------------------------- help
def _walk(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            out += _walk(sub, f"{path} {name}")
    return out


def test_every_command_and_option_has_help() -> None:
    """Each command (recursively) has help text, and so does each of its options."""
    commands = _walk(main, "writ")
    assert len(commands) > 25
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"{path} has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{path} {param.opts[0]} has no help text"
        result = cli([*path.split()[1:], "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout, path


def test_usage_errors_exit_2() -> None:
    result = cli(["acquire", "prod/db"])
    assert result.exit_code == 2 and "--intent" in result.stderr
    result = cli(["rollback", "request", "--reason", "x"])
    assert result.exit_code == 2 and "exactly one of --lease" in result.stderr


def test_unreachable_server_is_one_line_exit_1() -> None:
    result = cli(["status", "--url", f"http://127.0.0.1:{free_port()}", "--token", "t"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "not reachable" in result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- serve
def test_serve_passes_its_options_to_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import writ.api.serve

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(writ.api.serve, "run", lambda *a, **kw: calls.append((*a, kw)))
    policy = tmp_path / "writ.toml"
    policy.write_text("")
    ok(
        [
            "serve",
            "--store",
            "sqlite:///x.db",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--policy",
            str(policy),
        ]
    )
    from writ.net.limits import Limits

    assert calls == [
        (
            "sqlite:///x.db",
            "0.0.0.0",
            9000,
            str(policy),
            {
                "log_level": "info",
                "log_format": "console",
                "shutdown_timeout": 10,
                "metrics": True,
                "metrics_token": None,
                "limits": Limits(),
                "verify_every": 60,
            },
        )
    ]
    ok(["serve"], env={"WRIT_STORE": "sqlite:///env.db"})
    assert calls[-1][:4] == ("sqlite:///env.db", "127.0.0.1", 7411, None)


# ----------------------------------------------------------------------------- principals
def test_principal_add_offline_then_use_the_token(tmp_path: Path) -> None:
    """`principal add --store` works on a store with no server; the token works later."""
    db = tmp_path / "offline.db"
    result = ok(
        ["principal", "add", "ops-lead", "--kind", "human", "--admin", "--store", f"sqlite:///{db}"]
    )
    token = result.stdout.split("token: ")[1].strip()
    assert token.startswith("writ_")
    assert "shown only once" in result.stderr
    with serve(db) as srv, srv.client(token) as c:
        me = c.whoami()
        assert me["name"] == "ops-lead" and me["admin"] is True


def test_principal_add_and_list_through_the_api(live_server: LiveServer) -> None:
    name = unique("queue")
    env = live_server.env()
    result = ok(
        [
            "principal",
            "add",
            name,
            "--kind",
            "queue",
            "--wake",
            "https://pager.example/wake",
            "--json",
        ],
        env,
    )
    assert json.loads(result.stdout)["token"].startswith("writ_")
    assert name in ok(["principal", "list"], env).stdout
    listed = json.loads(ok(["principal", "list", "--json"], env).stdout)["principals"]
    assert {"name": name, "kind": "queue"}.items() <= next(
        p for p in listed if p["name"] == name
    ).items()
    _, agent_token = live_server.principal("agent")
    refused = cli(
        ["principal", "add", unique("x"), "--kind", "agent"], live_server.env(agent_token)
    )
    assert refused.exit_code == 1 and "forbidden" in refused.stderr


# ----------------------------------------------------------------------------- leases
def test_acquire_renew_release(agent_env: dict[str, str], live_server: LiveServer) -> None:
    res = f"{unique('r')}/db"
    lease_id = ok(["acquire", res, "--intent", "resize", "--ttl", "20", "-q"], agent_env)
    lease_id = lease_id.stdout.strip()
    assert lease_id.startswith("ls_")
    renewed = json.loads(ok(["renew", lease_id, "--ttl", "40", "--json"], agent_env).stdout)
    assert renewed["ttl_s"] == 40 and renewed["state"] == "held"
    assert "released" in ok(["release", lease_id], agent_env).stdout
    gone = cli(["release", lease_id], agent_env)
    assert gone.exit_code == 1 and gone.stderr.startswith("writ: lease_lost:")


def test_held_refusal_names_the_holder(agent_env: dict[str, str], live_server: LiveServer) -> None:
    res = unique("r")
    lease = json.loads(ok(["acquire", res, "--intent", "first", "--json"], agent_env).stdout)
    _, other = live_server.principal("agent")
    result = cli(["acquire", f"{res}/child", "--intent", "second"], live_server.env(other))
    assert result.exit_code == 1
    assert result.stderr.startswith("writ: held:") and lease["holder"] in result.stderr
    assert result.stderr.count("\n") == 1


def test_revoke_needs_a_human(agent_env: dict[str, str], human_env: dict[str, str]) -> None:
    lease_id = ok(["acquire", unique("r"), "--intent", "x", "-q"], agent_env).stdout.strip()
    args = ["revoke", lease_id, "--runbook", "R-44", "--paged", "oncall", "--reason", "stuck"]
    assert cli(args, agent_env).exit_code == 1
    assert "revoked" in ok([*args, "--waive-lock-delay"], human_env).stdout


def test_status_table(agent_env: dict[str, str], live_server: LiveServer) -> None:
    res = unique("r")
    lease = json.loads(
        ok(["acquire", f"{res}/db", "--intent", "resize", "--json"], agent_env).stdout
    )
    table = ok(["status", res], {**agent_env, "COLUMNS": "200"}).stdout
    for column in ("RESOURCE", "HOLDER", "INTENT", "FENCING TOKEN", "EXPIRES", "WAITERS"):
        assert column in table
    row = next(line for line in table.splitlines() if f"{res}/db" in line)
    assert lease["holder"] in row and "resize" in row and str(lease["fencing_token"]) in row
    assert row.split()[-1] == "0"
    listed = json.loads(ok(["status", res, "--json"], agent_env).stdout)["leases"]
    assert [l["lease_id"] for l in listed] == [lease["lease_id"]]
    assert "no leases held under" in ok(["status", unique("empty")], agent_env).stdout


def test_who_now_and_at_a_past_time(agent_env: dict[str, str]) -> None:
    res = unique("r")
    assert "nobody" in ok(["who", res], agent_env).stdout
    lease = json.loads(ok(["acquire", res, "--intent", "x", "--json"], agent_env).stdout)
    during = ok(["who", res], agent_env).stdout
    assert lease["holder"] in during and lease["lock_key"] in during
    ok(["release", lease["lease_id"]], agent_env)
    at = json.loads(ok(["who", res, "--at", lease["acquired_at"], "--json"], agent_env).stdout)
    assert at["lock_holder"] == lease["holder"]


def test_fence(agent_env: dict[str, str]) -> None:
    res = unique("r")
    lease = json.loads(ok(["acquire", res, "--intent", "x", "--json"], agent_env).stdout)
    assert "current" in ok(["fence", res, str(lease["fencing_token"])], agent_env).stdout
    assert cli(["fence", res, str(lease["fencing_token"] - 1)], agent_env).exit_code == 1
    ok(["release", lease["lease_id"]], agent_env)
    gone = cli(["fence", res, str(lease["fencing_token"])], agent_env)
    # nothing holds it now: said so, not as Python's None
    assert gone.exit_code == 1 and gone.stdout == f"stale: nothing holds {res} now\n", gone.stdout


# ----------------------------------------------------------------------------- audit
def test_audit_verify_and_export_through_the_api(agent_env: dict[str, str], tmp_path: Path) -> None:
    res = unique("r")
    lease_id = ok(["acquire", res, "--intent", "x", "-q"], agent_env).stdout.strip()
    ok(["release", lease_id], agent_env)
    assert ok(["audit", "verify"], agent_env).stdout.startswith("ok: ")
    lines = ok(["audit", "export", "--resource", res], agent_env).stdout.splitlines()
    assert [json.loads(l)["event"] for l in lines] == ["lease.granted", "lease.released"]
    first = json.loads(lines[0])["seq"]
    out = tmp_path / "audit.jsonl"
    result = ok(
        ["audit", "export", "--resource", res, "--after-seq", str(first), "--out", str(out)],
        agent_env,
    )
    assert [json.loads(l)["event"] for l in out.read_text().splitlines()] == ["lease.released"]
    assert "exported 1 rows" in result.stderr


def test_audit_offline_verify_names_the_tampered_row(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    store = f"sqlite:///{db}"
    env = {"WRIT_ADMIN_TOKEN": None}  # no bootstrap row: the store holds exactly our rows
    for name in ("a", "b", "c"):
        ok(["principal", "add", name, "--kind", "agent", "--store", store], env)
    assert ok(["audit", "verify", "--store", store], env).stdout.startswith("ok: 3 rows")
    exported = ok(["audit", "export", "--store", store, "--after-seq", "1"], env).stdout
    assert [json.loads(l)["seq"] for l in exported.splitlines()] == [2, 3]
    only_b = ok(["audit", "export", "--store", store, "--resource", "principals/b"], env).stdout
    assert [json.loads(l)["resource"] for l in only_b.splitlines()] == ["principals/b"]
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER audit_no_update")
    con.execute("UPDATE audit SET body = replace(body, 'added agent', 'added AGENT') WHERE seq = 2")
    con.commit()
    con.close()
    result = cli(["audit", "verify", "--store", store])
    assert result.exit_code == 1 and "BROKEN at seq 2" in result.stderr
    assert (
        json.loads(cli(["audit", "verify", "--store", store, "--json"]).stdout)["first_bad_seq"]
        == 2
    )
    missing = cli(["audit", "verify", "--store", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 1 and "no store at" in missing.stderr


# ----------------------------------------------------------------------------- writ run
def run_args(res: str, out: Path, *extra: str, child: tuple[str, ...] = ()) -> list[str]:
    return [
        "run",
        res,
        "--intent",
        "batch job",
        *extra,
        "--",
        sys.executable,
        "-c",
        CHILD,
        str(out),
        *child,
    ]


def revoke_once_started(live_server: LiveServer, out: Path, reason: str) -> Callable[[], None]:
    """A human who revokes the `writ run` lease once its child has written its first line."""
    _, human_token = live_server.principal("human")

    def revoke() -> None:
        lease_id = wait_until(lambda: child_started(out))[0]
        with live_server.client(human_token) as human:
            human.revoke(lease_id, "R-44", "oncall", reason)

    return revoke


def test_run_passes_the_lease_and_the_exit_status(agent_env: dict[str, str]) -> None:
    res = unique("r")
    code = "import os, sys; print(os.environ['WRIT_LOCK_KEY']); sys.exit(3)"
    result = cli(["run", res, "--intent", "x", "--", sys.executable, "-c", code], agent_env)
    assert result.exit_code == 3
    after = json.loads(ok(["status", res, "--json"], agent_env).stdout)["leases"]
    assert after == []  # released when the command exited
    killed = cli(
        [
            "run",
            res,
            "--intent",
            "x",
            "--",
            sys.executable,
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        ],
        agent_env,
    )
    assert killed.exit_code == 128 + signal.SIGKILL
    missing = cli(["run", res, "--intent", "x", "--", "writ-no-such-command"], agent_env)
    assert missing.exit_code == 127 and "cannot run" in missing.stderr


def test_run_gives_the_child_its_lease(agent_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    code = (
        "import os, sys; open(sys.argv[1], 'w').write(' '.join(os.environ[k] for k in "
        "('WRIT_LEASE_ID', 'WRIT_FENCING_TOKEN', 'WRIT_LOCK_KEY')))"
    )
    res = unique("r")
    ok(["run", res, "--intent", "x", "--", sys.executable, "-c", code, str(out)], agent_env)
    lease_id, token, lock_key = out.read_text().split()
    assert lock_key == f"{res}/{token}" and lease_id.startswith("ls_")


def test_run_gives_the_child_no_credential_but_its_own(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The admin token (exported in the shell that runs writ run for an agent), writ's own
    store URL (the ledger and the leases, written directly), the metrics token and the
    webhook secret stay with writ run; WRIT_TOKEN is the holder's own token, even when
    --token named another than the environment's."""
    _, agent = live_server.principal("agent")
    secrets = {
        "WRIT_ADMIN_TOKEN": "admin-secret",
        "WRIT_STORE": "postgresql://writ:store-secret@db.internal/writ",
        "WRIT_METRICS_TOKEN": "metrics-secret",
        "WRIT_WEBHOOK_SECRET": "webhook-secret",
        "WRIT_GATE_TOKEN": "gate-secret",
        "WRIT_MCP_HTTP_TOKEN": "mcp-secret",
    }
    env = {**live_server.env(), **secrets}  # WRIT_TOKEN: the admin's
    out = tmp_path / "env.json"
    code = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    ok(
        [
            "run",
            unique("r"),
            "--intent",
            "x",
            "--token",
            agent,
            "--",
            sys.executable,
            "-c",
            code,
            str(out),
        ],
        env,
    )
    seen = json.loads(out.read_text())
    assert not secrets.keys() & seen.keys()
    assert seen["WRIT_TOKEN"] == agent
    assert seen["WRIT_URL"] == live_server.url


@pytest.mark.parametrize(
    "option", [("--grace", "inf"), ("--grace", "nan"), ("--grace", "-1"), ("--renew-every", "nan")]
)
def test_run_refuses_a_grace_or_renewal_that_is_no_time(
    agent_env: dict[str, str], tmp_path: Path, option: tuple[str, str]
) -> None:
    """--grace inf took the lease and ran COMMAND, then failed (OverflowError) when the
    lease was lost, leaving COMMAND's group running; nan renewed in a busy loop."""
    out = tmp_path / "ran"
    code = "import sys; open(sys.argv[1], 'w').write('ran')"
    result = cli(
        ["run", unique("r"), "--intent", "x", *option, "--", sys.executable, "-c", code, str(out)],
        agent_env,
    )
    assert result.exit_code == 2 and option[0] in result.stderr, result.stderr
    assert not out.exists()


def test_run_refused_exits_1_without_running(
    agent_env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    res = unique("r")
    ok(["acquire", res, "--intent", "x"], agent_env)
    _, other = live_server.principal("agent")
    out = tmp_path / "child.txt"
    result = cli(run_args(res, out, "--wait", "0"), live_server.env(other))
    assert result.exit_code == 1 and "held" in result.stderr
    assert not out.exists()


def test_run_kills_the_child_when_the_lease_is_revoked(
    agent_env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    """A human revokes the lease: the child gets SIGTERM, writ run exits 75."""
    out = tmp_path / "child.txt"
    with in_background(revoke_once_started(live_server, out, "runaway batch job")):
        result = cli(run_args(unique("r"), out, "--ttl", "1", "--grace", "5"), agent_env)
    assert result.exit_code == EXIT_LEASE_LOST
    assert "revoked" in result.stderr and "SIGTERM" in result.stderr
    assert out.read_text().splitlines()[1:] == ["SIGTERM"]


def test_run_stops_the_child_as_soon_as_the_lease_is_revoked(
    agent_env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    """A revoke stopped COMMAND only at writ run's next renewal (every ttl/3: 20 s at a ttl
    of 60, minutes at longer ones), and meanwhile it wrote under a lease a human had taken
    away. writ run watches its lease's rows: COMMAND is stopped at once, and writ run says
    who revoked it and by which runbook."""
    out = tmp_path / "child.txt"
    started = time.monotonic()
    with in_background(revoke_once_started(live_server, out, "runaway")):
        result = cli(run_args(unique("r"), out, "--ttl", "60", "--grace", "5"), agent_env)
    took = time.monotonic() - started
    assert result.exit_code == EXIT_LEASE_LOST
    assert took < 10, took  # the next renewal was 20 s away
    assert "revoked by" in result.stderr and "runbook R-44" in result.stderr, result.stderr
    assert out.read_text().splitlines()[1:] == ["SIGTERM"]


def test_run_kills_a_stubborn_child_after_the_grace(
    agent_env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    out = tmp_path / "child.txt"
    revoke = revoke_once_started(live_server, out, "runaway")
    started = time.monotonic()
    with in_background(revoke):
        result = cli(
            run_args(unique("r"), out, "--ttl", "1", "--grace", "0.3", child=("ignore-term",)),
            agent_env,
        )
    assert result.exit_code == EXIT_LEASE_LOST
    assert "SIGKILL" in result.stderr
    assert "SIGTERM" in out.read_text()
    assert time.monotonic() - started < 5


def test_run_kills_the_child_when_the_lease_cannot_be_renewed(tmp_path: Path) -> None:
    """The server goes away: at the lease's expiry the child is stopped (exit 75)."""
    out = tmp_path / "child.txt"
    with serve(tmp_path / "w.db") as srv:
        _, token = srv.principal("agent")

        def stop_server_once_the_child_runs() -> None:
            wait_until(lambda: child_started(out))
            srv.stop()

        with in_background(stop_server_once_the_child_runs):
            result = cli(run_args("prod/db", out, "--ttl", "1", "--grace", "2"), srv.env(token))
    assert result.exit_code == EXIT_LEASE_LOST
    assert "could not be renewed before it expired" in result.stderr
    assert out.read_text().splitlines()[1:] == ["SIGTERM"]


def test_run_kills_the_child_when_the_lease_expired_during_a_stall(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    """writ run is paused past the ttl (a GC pause, a stopped VM): the server expires the
    lease, the next renewal gets 410, and the child is stopped."""
    out = tmp_path / "child.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from writ.cli import main; main()",
            *run_args(unique("r"), out, "--ttl", "1", "--grace", "2"),
        ],
        env={**os.environ, **agent_env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: child_started(out))
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(1.6)  # the stall itself: longer than the ttl
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_LEASE_LOST, stderr
    assert "expired" in stderr and "SIGTERM" in stderr
    assert out.read_text().splitlines()[1:] == ["SIGTERM"]


# A grandchild for `writ run`: COMMAND (a shell) starts it in the background and waits.
# It ignores SIGTERM and notes its pid, then works on.
GRANDCHILD = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.02)
""")


def _shell_with_a_grandchild(out: Path) -> list[str]:
    script = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote(GRANDCHILD)} {shlex.quote(str(out))} & wait"
    )
    return ["sh", "-c", script]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd: Linux")
def test_run_stops_the_commands_children_when_the_lease_is_lost(
    agent_env: dict[str, str], live_server: LiveServer, tmp_path: Path
) -> None:
    """A lease lost stops what COMMAND started too, a grandchild that ignores SIGTERM
    included: it was left writing with no lease (only COMMAND itself was signalled)."""
    out = tmp_path / "grandchild.pid"
    res = unique("r")
    _, human_token = live_server.principal("human")

    def revoke() -> None:
        wait_until(lambda: out.exists() and out.read_text())
        with live_server.client(human_token) as human:
            lease_id = human.status(res)["leases"][0]["lease_id"]
            human.revoke(lease_id, "R-44", "oncall", "runaway")

    with in_background(revoke):
        result = cli(
            [
                "run",
                res,
                "--intent",
                "x",
                "--ttl",
                "1",
                "--grace",
                "0.3",
                "--",
                *_shell_with_a_grandchild(out),
            ],
            agent_env,
        )
    grandchild = int(out.read_text())
    try:
        assert result.exit_code == EXIT_LEASE_LOST, result.stderr
        assert gone_within(grandchild, 5), "the grandchild outlived the lease"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd: Linux")
def test_run_stops_what_the_command_left_running_before_releasing(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    """COMMAND exits and leaves a process of its own running: it is stopped before the
    lease is released (it went on writing while the next holder held the resource)."""
    out = tmp_path / "grandchild.pid"
    shell = _shell_with_a_grandchild(out)
    shell[-1] = shell[-1].replace(
        "& wait", "& while [ ! -s " + shlex.quote(str(out)) + " ]; do :; done"
    )
    result = cli(["run", unique("r"), "--intent", "x", "--grace", "0.3", "--", *shell], agent_env)
    grandchild = int(out.read_text())
    try:
        assert result.exit_code == 0, result.stderr
        assert "processes it started still run" in result.stderr
        assert gone_within(grandchild, 5), "the grandchild outlived the lease"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


# ----------------------------------------------------------------------------- safety
def test_change_consent_flow(live_server: LiveServer) -> None:
    res = f"{unique('r')}/db"
    _, perf = live_server.principal("agent")
    _, cost = live_server.principal("agent")
    perf_env, cost_env = live_server.env(perf), live_server.env(cost)
    lease_id = ok(
        ["acquire", res, "--intent", "double capacity", "--touches", "capacity", "-q"], perf_env
    ).stdout.strip()
    change = json.loads(
        ok(
            [
                "change",
                lease_id,
                "--attribute",
                "capacity",
                "--summary",
                "capacity 4→8",
                "--before",
                "4",
                "--after",
                "8",
                "--protect",
                "600",
                "--json",
            ],
            perf_env,
        ).stdout
    )
    assert change["attribute"] == "capacity"
    ok(["release", lease_id], perf_env)
    refused = cli(["acquire", res, "--intent", "consolidate", "--touches", "capacity"], cost_env)
    assert refused.exit_code == 1 and "consent_required" in refused.stderr
    denied = json.loads(
        ok(["consent", "ask", change["change_id"], "--reason", "x", "--json"], cost_env).stdout
    )
    assert "denied" in ok(["consent", "deny", denied["consent_id"]], perf_env).stdout
    asked = json.loads(
        ok(["consent", "ask", change["change_id"], "--reason", "x", "--json"], cost_env).stdout
    )
    no_answer = cli(["consent", "show", asked["consent_id"], "--wait", "0.2"], cost_env)
    assert no_answer.exit_code == 0 and "pending" in no_answer.stdout
    assert "granted" in ok(["consent", "grant", asked["consent_id"]], perf_env).stdout
    ok(
        [
            "acquire",
            res,
            "--intent",
            "consolidate",
            "--touches",
            "capacity",
            "--consent",
            asked["consent_id"],
        ],
        cost_env,
    )


def test_consent_ask_wait_exit_codes(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--wait: 0 when granted, 1 when denied, 3 when nobody answered in time."""
    _, perf = live_server.principal("agent")
    _, cost = live_server.principal("agent")
    with live_server.client(perf) as author:
        lease = author.acquire(unique("r"), "x", touches=["capacity"])
        change = author.change(lease["lease_id"], "capacity", "4→8")
        ask = ["consent", "ask", change["change_id"], "--reason", "undo", "--wait"]
        assert cli([*ask, "0.3"], live_server.env(cost)).exit_code == 3

        asked: list[str] = []
        real_ask = Client.ask_consent

        def ask_and_tell(self: Client, *args: Any) -> Any:
            out = real_ask(self, *args)
            asked.append(out["consent_id"])
            return out

        monkeypatch.setattr(Client, "ask_consent", ask_and_tell)
        for answer, code in ((author.deny_consent, 1), (author.grant_consent, 0)):
            n = len(asked)
            with in_background(lambda a=answer, n=n: a(wait_until(lambda: asked[n:])[0])):
                assert cli([*ask, "10"], live_server.env(cost)).exit_code == code


def test_rollback_and_freeze_commands(live_server: LiveServer) -> None:
    res = unique("r")
    queue, queue_token = live_server.principal("queue")
    _, agent_token = live_server.principal("agent")
    agent_env, queue_env = live_server.env(agent_token), live_server.env(queue_token)
    lease_id = ok(
        [
            "acquire",
            res,
            "--intent",
            "x",
            "--rollback-path",
            "/ops/rollback?txn=1",
            "--key-holder",
            queue,
            "--override-queue",
            queue,
            "-q",
        ],
        agent_env,
    ).stdout.strip()
    rb = json.loads(
        ok(
            ["rollback", "request", "--lease", lease_id, "--reason", "worse", "--json"], agent_env
        ).stdout
    )
    refused = cli(["rollback", "approve", rb["rollback_id"]], agent_env)
    assert refused.exit_code == 1 and "only the human queue holds the key" in refused.stderr
    assert "denied" in ok(["rollback", "deny", rb["rollback_id"]], queue_env).stdout
    assert rb["rollback_id"] in ok(["rollback", "show", rb["rollback_id"]], agent_env).stdout
    assert rb["rollback_id"] in ok(["rollback", "list", "--status", "denied"], agent_env).stdout
    ok(["release", lease_id], agent_env)

    f = json.loads(
        ok(["freeze", res, "--reason", "incident", "--until", "30m", "--json"], queue_env).stdout
    )
    frozen = cli(["acquire", f"{res}/db", "--intent", "x"], agent_env)
    assert frozen.exit_code == 1 and "frozen" in frozen.stderr
    assert f["freeze_id"] in ok(["freezes"], {**queue_env, "COLUMNS": "200"}).stdout
    assert "lifted" in ok(["unfreeze", f["freeze_id"]], queue_env).stdout
    ok(["acquire", f"{res}/db", "--intent", "x"], agent_env)


def test_watch_prints_rows_live_and_stops_on_ctrl_c(
    agent_env: dict[str, str], live_server: LiveServer
) -> None:
    res = unique("r")
    with live_server.client() as c:
        head = c.last_seq()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from writ.cli import main; main()",
            "watch",
            res,
            "--after-seq",
            str(head),
        ],
        env={**os.environ, **agent_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it, whatever the suite inherited: a shell's background
        # job ignores SIGINT, and a Python started with it ignored never raises
        # KeyboardInterrupt (the test then hung until its timeout)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ok(["acquire", res, "--intent", "watched"], agent_env)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "lease.granted" in line and res in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()


# ----------------------------------------------------------------------------- migrate
def test_migrate_copies_a_store_that_then_verifies(tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    env = {"WRIT_ADMIN_TOKEN": None}
    token = (
        ok(["principal", "add", "ops", "--kind", "human", "--admin", "--store", src], env)
        .stdout.split("token: ")[1]
        .strip()
    )
    result = ok(["migrate", "--from", src, "--to", dst], env)
    assert result.stdout.startswith("copied:") and "audit head seq 1" in result.stdout
    assert ok(["audit", "verify", "--store", dst], env).stdout.startswith("ok: 1 rows")
    with serve(tmp_path / "b.db") as srv, srv.client(token) as c:
        assert c.whoami()["name"] == "ops"  # the token hash came along
    again = cli(["migrate", "--from", src, "--to", dst], env)
    assert again.exit_code == 1 and again.stderr.startswith("writ: invalid:")
