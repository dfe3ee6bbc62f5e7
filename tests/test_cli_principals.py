"""``writ principal rotate|disable|enable|queues`` and ``add --queue/--expires-in``, through
click's CliRunner against a real server, and offline on a store."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from tests.server_fixtures import LiveServer, unique
from writ.cli import main


def cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def ok(args: list[str], env: dict[str, str] | None = None) -> Result:
    r = cli(args, env)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r


def _whoami(live_server: LiveServer, token: str) -> int:
    import httpx

    return httpx.get(
        f"{live_server.url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def test_rotate_disable_enable_through_a_server(live_server: LiveServer) -> None:
    admin = live_server.env()
    name, token = live_server.principal("agent")
    out = json.loads(
        ok(["principal", "rotate", name, "--expires-in", "12h", "--json"], admin).stdout
    )
    assert out["name"] == name and out["token_expires_at"]
    assert _whoami(live_server, token) == 401 and _whoami(live_server, out["token"]) == 200
    # a principal rotates its own token; not another's
    mine = ok(["principal", "rotate", name], live_server.env(out["token"]))
    assert "token: writ_" in mine.stdout and "shown only once" in mine.stderr
    now = mine.stdout.split("token: ")[1].strip()
    assert _whoami(live_server, out["token"]) == 401 and _whoami(live_server, now) == 200
    other, _ = live_server.principal("agent")
    r = cli(["principal", "rotate", other], live_server.env(now))
    assert r.exit_code == 1 and "forbidden" in r.stderr

    r = cli(["principal", "disable", name], admin)
    assert r.exit_code == 2 and "--reason" in r.stderr
    r = ok(["principal", "disable", name, "--reason", "key in a CI log"], admin)
    assert f"disabled {name}: 0 lease(s) revoked" in r.stdout
    listed = json.loads(ok(["principal", "list", "--json"], admin).stdout)
    assert {p["name"]: p["disabled"] for p in listed["principals"]}[name] is True
    r = ok(["principal", "enable", name], admin)
    fresh = r.stdout.split("token: ")[1].strip()
    assert _whoami(live_server, fresh) == 200
    r = cli(["principal", "rotate", name, "--expires-in", "soon"], admin)
    assert r.exit_code == 2 and "--expires-in" in r.stderr


def test_queue_membership_from_the_command_line(live_server: LiveServer) -> None:
    admin = live_server.env()
    q1, _ = live_server.principal("queue")
    q2, _ = live_server.principal("queue")
    human = unique("jane")
    out = json.loads(
        ok(["principal", "add", human, "--kind", "human", "--queue", q1, "--json"], admin).stdout
    )
    assert out["queues"] == [q1]
    r = ok(["principal", "queues", human, "--add", q2, "--remove", q1], admin)
    assert f"{human} is a member of: {q2}" in r.stdout
    r = cli(["principal", "queues", human], admin)
    assert r.exit_code == 2
    r = cli(["principal", "add", unique("a"), "--kind", "agent", "--queue", q1], admin)
    assert r.exit_code == 2 and "only a human" in r.stderr


def test_offline_rotation_of_admin_on_the_store(tmp_path: Path) -> None:
    """With --store, an operator rotates admin on the store itself (no token needed): the
    way to replace WRIT_ADMIN_TOKEN when it is lost or leaked."""
    store = f"sqlite:///{tmp_path / 'writ.db'}"
    ok(["principal", "add", "admin", "--kind", "human", "--admin", "--store", store])
    out = json.loads(ok(["principal", "rotate", "admin", "--store", store, "--json"]).stdout)
    assert out["token"].startswith("writ_")
    ok(["principal", "add", "bot", "--kind", "agent", "--store", store])
    r = ok(["principal", "disable", "bot", "--reason", "retired", "--store", store])
    assert "disabled bot" in r.stdout
    ok(["principal", "enable", "bot", "--store", store])


def test_rollback_approve_help_says_who_may() -> None:
    r = ok(["rollback", "approve", "--help"])
    text = " ".join(r.stdout.split())
    assert "key holder only" not in text
    assert "human member of that queue" in text
