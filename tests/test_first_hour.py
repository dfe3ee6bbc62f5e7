"""The first hour of a newcomer: waits that say what they wait for, refusals that name the
next step in the surface's own terms, and no wait for one's own lease."""

from __future__ import annotations

import io
import os
import threading
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.server_fixtures import LiveServer, unique, wait_until
from writ.cli import main
from writ.cli.wait import live_line, status_line
from writ.client import Client
from writ.core.errors import ConsentRequired, Held, error_from_body


def cli(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_run_refuses_at_once_to_wait_for_the_callers_own_lease(live_server: LiveServer) -> None:
    """The README's path: `writ acquire R` then `writ run R -- CMD` as the same agent. It
    used to wait its --wait out in silence behind the caller's own lease; now it says so."""
    name, token = live_server.principal("agent")
    env = live_server.env(token)
    resource = f"{unique('self')}/db"
    lease_id = cli(["acquire", resource, "--intent", "mine", "-q"], env).stdout.strip()
    for args in (
        ["run", resource, "--intent", "resize", "--", "true"],
        ["acquire", resource, "--intent", "again", "--wait", "30"],
    ):
        result = cli(args, env)
        assert result.exit_code == 1, result.output
        assert f"{name} (you) already holds {resource} under lease {lease_id}" in result.stderr
        assert f"writ release {lease_id}" in result.stderr
    with live_server.client() as admin:
        rows = admin.audit(resource=resource, limit=100)["rows"]
    assert [r["event"] for r in rows] == ["lease.granted"]  # no stuck wait, no queue rows
    # without --wait the held answer says plainly that the holder is the caller
    result = cli(["acquire", resource, "--intent", "again"], env)
    assert result.exit_code == 1
    assert f"that is you ({name})" in result.stderr


def test_held_and_consent_hints_speak_each_surfaces_terms(live_server: LiveServer) -> None:
    _, perf = live_server.principal("agent")
    _, cost = live_server.principal("agent")
    resource = f"{unique('hint')}/db"
    with Client(live_server.url, perf) as a, Client(live_server.url, cost) as b:
        lease = a.acquire(resource, "double capacity", touches=["capacity"])
        # HTTP: the wire message is as it was (route and field)
        raw = httpx.post(
            f"{live_server.url}/v1/leases",
            json={"resource": resource, "intent": "consolidate"},
            headers={"Authorization": f"Bearer {cost}"},
        ).json()["error"]
        assert raw["message"].endswith("; retry with wait_s > 0 to queue for it")
        # Python: a call and its argument
        with pytest.raises(Held) as held:
            b.acquire(resource, "consolidate")
        assert "wait_s > 0" not in held.value.message
        assert "client.lease() or client.acquire()" in held.value.message
        assert held.value.fact == raw["message"].rsplit("; retry", 1)[0]
        assert "Held(" in repr(held.value) and "queue_position=" in repr(held.value)
        # CLI: the flag, and after a wait ran out, that it did
        env = live_server.env(cost)
        out = cli(["acquire", resource, "--intent", "consolidate"], env)
        assert "add --wait SECONDS" in out.stderr and "wait_s" not in out.stderr
        out = cli(["acquire", resource, "--intent", "consolidate", "--wait", "0.2"], env)
        assert "still held after --wait 0.2s" in out.stderr and "wait_s" not in out.stderr
        change = a.change(lease["lease_id"], "capacity", "capacity 4→8")
        a.release(lease["lease_id"])
        with pytest.raises(ConsentRequired) as cr:
            b.acquire(resource, "consolidate", touches=["capacity"])
        assert f"client.ask_consent({change['change_id']!r}" in cr.value.message
        assert "POST /v1/consents" not in cr.value.message
        out = cli(["acquire", resource, "--intent", "consolidate", "--touches", "capacity"], env)
        assert out.exit_code == 1
        assert f"writ consent ask {change['change_id']} --reason" in out.stderr
        assert "POST /v1/consents" not in out.stderr and "--consent CONSENT_ID" in out.stderr


def test_error_from_body_keeps_a_message_without_a_known_step() -> None:
    err = error_from_body(409, {"error": {"code": "held", "message": "held by x"}})
    assert err.message == "held by x" == err.fact


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_names_holder_queue_place_and_time_left(live_server: LiveServer) -> None:
    holder, htoken = live_server.principal("agent")
    me, mtoken = live_server.principal("agent")
    resource = f"{unique('live')}/db"
    with Client(live_server.url, htoken) as a, Client(live_server.url, mtoken) as b:
        lease = a.acquire(resource, "consolidate", ttl_s=60)
        tty = _Tty()
        got: dict[str, Any] = {}

        def wait() -> None:
            with live_line(
                live_server.url, mtoken, resource, 30, me, stream=tty, every=0.05, columns=300
            ):
                got["lease"] = b.acquire(resource, "reroute", wait_s=30)

        t = threading.Thread(target=wait)
        t.start()
        wait_until(lambda: "1st of 1 in queue" in tty.getvalue())
        a.release(lease["lease_id"])
        t.join(30)
    text = tty.getvalue()
    assert got["lease"]["holder"] == me
    line = text.split("\r\x1b[K")[-2]
    assert f"waiting for {resource}: held by {holder} ('consolidate') until " in line
    assert "1st of 1 in queue" in line and "giving up in " in line
    assert text.endswith("\r\x1b[K")  # the line is cleared once the wait ends


def test_live_line_is_silent_off_a_terminal(live_server: LiveServer) -> None:
    plain = io.StringIO()
    with live_line(live_server.url, None, "x/y", 30, None, stream=plain):
        pass
    assert plain.getvalue() == ""


def test_status_line_escapes_and_orders() -> None:
    state = {
        "conflicting": [
            {"holder": "cost-agent", "resource": "prod", "intent": "a\nb", "expires_at": "x"}
        ],
        "queue": [{"principal": "o", "position": 1}, {"principal": "me", "position": 2}],
    }
    line = status_line(state, "me", "prod/db", 12.4)
    assert line == (
        "waiting for prod/db: held by cost-agent on prod ('a\\nb') until x · 2nd of 2 in queue"
        " · giving up in 12s"
    )


# ----------------------------------------------------------------------------- exit status
def test_exit_status_table_is_one_in_code_help_and_docs() -> None:
    import re
    from pathlib import Path

    from writ.cli import EXIT_STATUS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    section = doc.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    statuses = re.findall(r"^\| (\S+) \|", section, re.M)
    assert [s.strip("*") for s in statuses if s != "status"] == list(EXIT_STATUS)
    help_text = CliRunner().invoke(main, ["--help"], terminal_width=200).stdout
    for code, meaning in EXIT_STATUS.items():
        assert f"{code:>4}  {meaning.replace('`', '')}" in help_text


def test_bad_values_exit_2_with_the_option_named(live_server: LiveServer) -> None:
    _, token = live_server.principal("agent")
    env = live_server.env(token)
    resource = f"{unique('exit')}/db"
    ttl0 = cli(["acquire", resource, "--intent", "x", "--ttl", "0"], env)
    assert ttl0.exit_code == 2, ttl0.output
    assert ttl0.stderr.startswith("writ: invalid: ") and "(option --ttl)" in ttl0.stderr
    wait = cli(["acquire", resource, "--intent", "x", "--wait", "100000"], env)
    assert wait.exit_code == 2 and "(option --wait)" in wait.stderr
    bad = cli(["acquire", "prod//db", "--intent", "x"], env)
    assert bad.exit_code == 2 and bad.stderr.startswith("writ: invalid: ")
    assert cli(["acquire", resource], env).exit_code == 2  # --intent missing
    assert cli(["acquire", resource, "--intent", "x"], env).exit_code == 0
    assert (
        cli(
            ["acquire", resource, "--intent", "x"],
            live_server.env(live_server.principal("agent")[1]),
        ).exit_code
        == 1
    )  # held: a refusal, not a usage error


# ----------------------------------------------------------------------------- gate start-up
def test_gate_checks_its_token_and_server_before_listening(
    live_server: LiveServer, tmp_path: Any
) -> None:
    """A wrong token, a human's token or no writ behind it: `writ gate` exits 1 with the
    reason rather than announcing "listening"; --allow-server-down starts it anyway."""
    import os
    import subprocess
    import sys

    from tests.server_fixtures import free_port, run_writ

    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "gated/db"\n')
    _, portal = live_server.principal("portal")
    _, human = live_server.principal("human")
    dead = f"http://127.0.0.1:{free_port()}"

    def gate(url: str, token: str, *extra: str) -> list[str]:
        return [
            "gate",
            "--url",
            url,
            "--token",
            token,
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--routes",
            str(routes),
            *extra,
        ]

    def start(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "writ.cli", *args],
            env={k: v for k, v in os.environ.items() if not k.startswith("WRIT_")},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, reason in (
        (gate(live_server.url, "writ_wrong"), "refused this token"),
        (gate(live_server.url, human), "must not hold human authority"),
        (gate(dead, portal), "cannot be reached"),
    ):
        done = start(args)
        assert done.returncode == 1, done.stderr
        assert reason in done.stderr and "listening" not in done.stderr
    with run_writ(gate(dead, portal, "--allow-server-down")) as url:
        r = httpx.post(f"{url}/admin/x", headers={"Authorization": "Bearer writ_x"})
        assert r.status_code == 503  # fails closed while writ is down
    with run_writ(gate(live_server.url, portal)) as url:
        assert url.startswith("http://127.0.0.1:")


# ----------------------------------------------------------------------------- scripts/serve
def test_scripts_serve_warns_only_when_the_store_has_no_admin(tmp_path: Any) -> None:
    """First start without WRIT_ADMIN_TOKEN: the warning. A restart of a store whose admin was
    bootstrapped, without the variable: no warning (it used to say "no admin is bootstrapped")."""
    import os
    from pathlib import Path

    from tests.server_fixtures import serve_script

    base = {k: v for k, v in os.environ.items() if not k.startswith("WRIT_")}

    def start(store: Path, **env: str) -> str:
        with serve_script({**base, "WRIT_STORE": f"sqlite:///{store}", **env}) as (_, seen):
            return "".join(seen)

    assert "has no admin" in start(tmp_path / "bare.db")
    assert "has no admin" not in start(tmp_path / "w.db", WRIT_ADMIN_TOKEN="change-me")
    assert "has no admin" not in start(tmp_path / "w.db")


# ----------------------------------------------------------------------------- small things
TYPO_POLICY = """
[blast_radius]
db-tier = ["prod/db", "routing/db-tier"]

[[rules]]
prefix = "capacity"
protect_s = 60
"""


def test_a_resource_outside_every_policy_prefix_is_granted_with_a_warning(tmp_path: Any) -> None:
    from tests.server_fixtures import serve
    from writ.core.policy import parse
    from writ.core.resources import outside_known

    assert outside_known("prod/db", []) is None
    assert outside_known("prod", ["prod/db"]) is None  # above a named prefix
    assert outside_known("capacity/db/x", ["capacity"]) is None
    assert "did you mean prod/db?" in (outside_known("prdo/db", ["prod/db", "capacity"]) or "")
    # the prefixes as the policy names them: capacity/uni is under 'capacity', which the
    # warning once listed (the first segment of capacity/db) as a prefix it lies outside
    under_top = outside_known("capacity/uni", ["capacity/db", "prod/db", "routing/db-tier"])
    assert under_top is not None and "(capacity/db, prod/db, routing/db-tier)" in under_top
    with serve(tmp_path / "w.db", parse(TYPO_POLICY)) as srv:
        _, token = srv.principal("agent")
        env = srv.env(token)
        typo = cli(["acquire", "prdo/db", "--intent", "resize"], env)
        assert typo.exit_code == 0  # a warning, not a refusal
        assert typo.stderr.startswith("writ: warning: prdo/db is outside every prefix")
        assert "did you mean prod/db?" in typo.stderr
        with srv.client(token) as c:
            assert "warning" not in c.acquire("prod/db/replica", "x")
            assert "warning" not in c.acquire("capacity/pool", "x")
            got = c.acquire("prdo/cache", "x")
            assert got["state"] == "held" and "outside every prefix" in got["warning"]
            lease = c.lease("prdo/other", "x")
            with lease:
                assert lease.data is not None and "warning" in lease.data
        ran = cli(["run", "prdo/x", "--intent", "x", "--", "true"], env)
        assert ran.exit_code == 0 and "writ run: warning: prdo/x is outside" in ran.stderr


def test_lease_and_error_reprs_say_what_they_are(live_server: LiveServer) -> None:
    import asyncio

    from writ.client import AsyncClient

    name, token = live_server.principal("agent")
    resource = f"{unique('repr')}/db"
    with Client(live_server.url, token) as c:
        lease = c.lease(resource, "resize")
        assert repr(lease) == f"<Lease {resource} 'resize': not acquired>"
        with lease:
            shown = repr(lease)
            assert shown.startswith(f"<Lease {resource} held by {name}: ls_")
            assert f"fencing token {lease.fencing_token}, expires " in shown
        assert f"{resource} released by {name}" in repr(lease)

    async def go() -> str:
        async with AsyncClient(live_server.url, token) as ac, ac.lease(resource, "x") as al:
            return repr(al)

    assert asyncio.run(go()).startswith(f"<AsyncLease {resource} held by {name}: ls_")
    err = Held("prod/db is held by x", holder={"holder": "x"}, queue_position=None)
    assert repr(err) == "Held('prod/db is held by x', holder={'holder': 'x'})"


def test_who_at_lists_the_accepted_forms(live_server: LiveServer) -> None:
    result = cli(["who", "prod/db", "--at", "yesterday"], live_server.env())
    assert result.exit_code == 2
    for form in ("RFC 3339", "2026-05-16T02:17:00Z", "epoch seconds", "now", "-15m", "-1d"):
        assert form in result.stderr
    assert cli(["who", "prod/db", "--at", "-15m"], live_server.env()).exit_code == 0


def test_an_agent_is_an_agent(live_server: LiveServer) -> None:
    _, token = live_server.principal("agent")
    with Client(live_server.url, token) as c:
        lease = c.acquire(f"{unique('art')}/db", "x")
        with pytest.raises(Exception) as refused:
            c.revoke(lease["lease_id"], "R-1", "oncall", "stuck")
    assert "is an agent:" in str(refused.value) and "is a agent" not in str(refused.value)


def test_mcp_guidance_words_its_own_next_step() -> None:
    pytest.importorskip("mcp")
    from writ.mcp import guidance

    for body in (
        {"code": "held", "message": "prod/db is held; retry with wait_s > 0 to queue for it"},
        {
            "code": "consent_required",
            "message": "perf-agent changed capacity; it is protected until T. Ask first: POST "
            '/v1/consents {"change_id": "CHANGE_ID", "reason": ...}, then retry with the '
            "granted consent_id",
        },
    ):
        text = guidance(error_from_body(409, {"error": body}))
        assert "POST /v1/consents" not in text and "wait_s > 0" not in text
        assert "client." not in text and "--wait" not in text
        assert "acquire_write_authority" in text or "ask_consent" in text


def test_the_live_line_stays_on_one_terminal_line() -> None:
    from writ.cli.wait import _fit

    line = "waiting for prod/db: held by cost-agent ('consolidate') until 10:11:51Z (in 23s)"
    assert _fit(line, 200) == line
    short = _fit(line, 40)
    assert len(short) < 40 and short.endswith("…") and line.startswith(short[:-1])
    assert short[:-1] == line[: len(short) - 1] and line[len(short) - 1] == " "  # at a word


def test_no_token_hint_survives_the_cli_phrasing(live_server: LiveServer) -> None:
    result = cli(["status"], {"WRIT_URL": live_server.url, "WRIT_TOKEN": ""})
    assert result.exit_code == 1
    assert "no token given: set WRIT_TOKEN or pass --token" in result.stderr


def test_known_prefixes_include_authority_grants(tmp_path: Any) -> None:
    """Once a policy has [authority] grants, their prefixes count as known too."""
    from types import SimpleNamespace

    from writ.core.policy import parse
    from writ.engine import Engine
    from writ.stores.sqlite import SQLiteStore

    e = Engine(SQLiteStore(f"sqlite:///{tmp_path / 'k.db'}"), parse(TYPO_POLICY))
    grant = SimpleNamespace(write=("billing/ledger",), observe=("audit",))
    e.policy = SimpleNamespace(  # type: ignore[assignment]
        rules=e.policy.rules, authority=SimpleNamespace(grants=[grant])
    )
    assert {"billing/ledger", "audit", "capacity", "prod/db"} <= set(e.known_prefixes())


def test_the_live_lines_width_is_columns_or_the_terminals_or_80(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the tables' (cli.md): ``COLUMNS``, else the terminal's width, else 80. A terminal
    that says it has no columns (a pty nobody sized: ``script``, ``docker exec -t``) cut the
    live line to its first letter, 'w…'."""
    from writ.cli import wait

    class Sized(_Tty):
        def fileno(self) -> int:
            return 2

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(wait.os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert wait._columns(Sized()) == 80
    monkeypatch.setattr(wait.os, "get_terminal_size", lambda fd: os.terminal_size((132, 40)))
    assert wait._columns(Sized()) == 132
    monkeypatch.setenv("COLUMNS", "100")
    assert wait._columns(Sized()) == 100
    monkeypatch.setenv("COLUMNS", "wide")
    assert wait._columns(Sized()) == 132
