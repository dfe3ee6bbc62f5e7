"""The CLI against whatever answers at --url with something writ never sends: one line
`writ: unavailable: ...` and exit 1 — never a false success, a `None` in the output, or a
traceback. And bad arguments: one line `writ: invalid: ...` and exit 2."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.server_fixtures import hostile
from tests.test_client_settings import UNUSABLE_URLS
from writ.cli import main
from writ.core.errors import Unavailable


def _answering(body: bytes) -> Any:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        conn.sendall(head.encode() + body)

    return handler


@pytest.fixture(scope="module")
def empty() -> Iterator[str]:
    """A server answering ``{}`` to everything."""
    with hostile(_answering(b"{}")) as url:
        yield url


@pytest.fixture(scope="module")
def weird() -> Iterator[str]:
    body = {
        "ok": "yes",
        "rows": "many",
        "head": 5,
        "first_bad_seq": "x",
        "lease_id": 5,
        "resource": [1],
        "holder": {},
        "state": None,
        "lock_holder": [],
        "fencing_token": "NaN",
        "current": "yes",
    }
    with hostile(_answering(json.dumps(body).encode())) as url:
        yield url


def writ(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, [*args], env={"WRIT_URL": url, "WRIT_TOKEN": "t"})


COMMANDS = [
    ["acquire", "prod/db", "--intent", "x"],
    ["acquire", "prod/db", "--intent", "x", "--json"],
    ["acquire", "prod/db", "--intent", "x", "-q"],
    ["renew", "ls_x"],
    ["renew", "ls_x", "--json"],
    ["release", "ls_x"],
    ["revoke", "ls_x", "--runbook", "R-1", "--paged", "p", "--reason", "r"],
    ["who", "prod/db"],
    ["who", "prod/db", "--json"],
    ["fence", "prod/db", "3"],
    ["policy", "explain", "a", "prod/db"],
    ["policy", "reload"],
    ["wake", "ls_x", "--reason", "r"],
    ["audit", "verify"],
    ["audit", "verify", "--json"],
    ["change", "ls_x", "--attribute", "a", "--summary", "s"],
    ["consent", "ask", "chg_x", "--reason", "r"],
    ["consent", "show", "cns_x"],
    ["consent", "grant", "cns_x"],
    ["rollback", "show", "rb_x"],
    ["rollback", "approve", "rb_x"],
    ["freeze", "prod", "--reason", "r"],
    ["unfreeze", "frz_x"],
    ["principal", "add", "bob", "--kind", "human"],
    ["principal", "add", "bob", "--kind", "human", "-q"],
]


@pytest.mark.parametrize("server", ["empty", "weird"])
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_an_answer_writ_never_sends_is_unavailable_in_one_line(request, server, args):
    res = writ(request.getfixturevalue(server), *args)
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.stdout == ""  # nothing shown as if it were an answer
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: unavailable: the server answered"), line
    assert "Traceback" not in res.output and "None" not in line.split(":")[2]


@pytest.mark.parametrize(
    "body",
    [
        {"ok": "yes", "rows": 5, "head": "a" * 64, "first_bad_seq": None},
        {"ok": True, "rows": "many", "head": "a" * 64, "first_bad_seq": None},
        {"ok": True, "rows": 5, "head": 5, "first_bad_seq": None},
        {"ok": True, "rows": 5, "head": "xyz", "first_bad_seq": None},
        {"ok": 1, "rows": 5, "head": "a" * 64, "first_bad_seq": None},
        {"ok": False, "rows": 5, "head": "a" * 64, "first_bad_seq": "x"},
    ],
)
def test_audit_verify_needs_a_boolean_ok_whole_rows_and_a_hex_head(body):
    with hostile(_answering(json.dumps(body).encode())) as url:
        res = writ(url, "audit", "verify")
    assert res.exit_code == 1 and "writ: unavailable:" in res.stderr, res.output
    assert not res.stdout.startswith("ok")


def test_audit_verify_with_nan_rows_is_unavailable_not_ok_inf():
    with hostile(_answering(b'{"ok": NaN, "rows": Infinity, "head": "x"}')) as url:
        res = writ(url, "audit", "verify")
    assert res.exit_code == 1 and "writ: unavailable:" in res.stderr
    assert "inf" not in res.stdout


def test_a_real_answers_shape_still_passes():
    good = {"ok": True, "rows": 7, "head": "ab" * 32, "first_bad_seq": None}
    with hostile(_answering(json.dumps(good).encode())) as url:
        res = writ(url, "audit", "verify")
    assert res.exit_code == 0 and res.stdout.startswith("ok: 7 rows, head abab"), res.output


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "args",
    [
        ["acquire", "prod/db", "--intent", "x", "--ttl", "nan"],
        ["acquire", "prod/db", "--intent", "x", "--ttl", "inf"],
        ["acquire", "prod/db", "--intent", "x", "--wait", "-inf"],
        ["renew", "ls_x", "--ttl", "1e400"],
        ["run", "prod/db", "--intent", "x", "--ttl", "nan", "--", "true"],
        ["change", "ls_x", "--attribute", "a", "--summary", "s", "--protect", "nan"],
        ["change", "ls_x", "--attribute", "a", "--summary", "s", "--before", '{"a":NaN}'],
        ["change", "ls_x", "--attribute", "a", "--summary", "s", "--after", "[1e400]"],
        ["consent", "ask", "chg_x", "--reason", "r", "--wait", "nan"],
        ["consent", "show", "cns_x", "--wait", "inf"],
        ["principal", "add", "bob", "--kind", "human", "--expires-in", "nan"],
        ["watch", "--after-seq", "99999999999999999999999"],
        ["fence", "prod/db", "99999999999999999999999"],
        ["audit", "export", "--after-seq", "99999999999999999999999"],
        ["audit", "export", "--after-seq", "-1"],
        ["audit", "export", "--out", "/nonexistent/dir/x"],
        ["postmortem", "--since", "2026-12-07T02:00:00Z", "--until", "2026-12-07T01:00:00Z"],
        ["postmortem", "--around", "2026-12-07T02:00:00Z", "--window", "99999999999d"],
        ["postmortem", "--around", "2026-12-07T02:00:00Z", "--window", "soon"],
        ["postmortem", "--out", "/nonexistent/dir/x.html"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_bad_argument_is_one_line_and_exit_2_before_any_request(args):
    # the URL is a port nothing listens on: a check that came after a request would say
    # "unavailable", not "invalid"
    res = writ("http://127.0.0.1:9", *args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: "), line
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "args", [["audit", "export", "--store", "{store}"], ["postmortem", "--store", "{store}"]]
)
def test_a_full_disk_for_out_is_one_line_and_exit_2(args, tmp_path, monkeypatch):
    """/dev/full takes the open and refuses the write (ENOSPC)."""
    if not __import__("os").path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    import writ.cli.commands.audit as audit_mod
    import writ.cli.commands.evidence as evidence_mod

    # the store is not the point: an empty export and an empty report are still written
    monkeypatch.setattr(audit_mod, "_export_offline", lambda *a: (a[-1].write("x\n" * 9999), 0)[1])

    async def nothing(*a: Any) -> dict[str, Any]:
        from writ.evidence.postmortem import Query

        return {"query": Query()}

    monkeypatch.setattr(evidence_mod, "_with_store", nothing)
    monkeypatch.setattr(evidence_mod, "existing_store", lambda url: url, raising=False)
    monkeypatch.setattr(audit_mod, "existing_store", lambda url: url)
    store = f"sqlite:///{tmp_path}/w.db"
    argv = [a.format(store=store) for a in args] + ["--out", "/dev/full"]
    if args[0] == "postmortem":
        monkeypatch.setattr("writ.evidence.postmortem.to_markdown", lambda report: "# x\n" * 9999)
    res = writ("http://127.0.0.1:9", *argv)
    assert res.exit_code == 2, (res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: --out /dev/full: cannot write"), line


# --------------------------------------------------------------------------- wrong types
# A field of the wrong type inside an answer (a lease's expires_at a number, queues a number,
# names that are numbers) was an AttributeError or TypeError traceback from the table or the
# line built from it.
LEASE = {
    "lease_id": "ls_1",
    "lock_key": "prod/db",
    "resource": "prod/db",
    "holder": "me",
    "state": "held",
    "fencing_token": 1,
    "ttl_s": 30,
    "expires_at": "2999-01-01T00:00:00Z",
}
WRONG_TYPES = [
    (["status"], {"leases": [{"resource": "prod/db", "holder": "a", "expires_at": 5}]}),
    (["principal", "list"], {"principals": [{"name": "bob", "kind": "human", "queues": 7}]}),
    (["principal", "list"], {"principals": [{"name": "bob", "kind": "human", "queues": [1]}]}),
    (["freezes"], {"freezes": [{"freeze_id": "frz_1", "prefix": "prod", "allow": 5}]}),
    (
        ["freeze", "prod", "--reason", "r"],
        {"freeze_id": "frz_1", "prefix": "prod", "allow": [1, 2]},
    ),
    (["principal", "queues", "bob", "--add", "oncall"], {"name": "bob", "queues": [1, 2]}),
    (["principal", "queues", "bob", "--add", "oncall"], {"name": "bob", "queues": "oncall"}),
    (["policy", "reload"], {"mode": "open", "grants": 1, "rules": 1, "warnings": 5}),
    (["acquire", "prod/db", "--intent", "x"], {**LEASE, "rollback": 5}),
    (["acquire", "prod/db", "--intent", "x"], {**LEASE, "rollback": {"warnings": 5}}),
    # --wait reads GET /v1/resources/... first (is the caller the holder?)
    (["acquire", "prod/db", "--intent", "x", "--wait", "5"], {"name": "me", "conflicting": 5}),
    (["acquire", "prod/db", "--intent", "x", "--wait", "5"], {"name": "me", "lease": [1]}),
    (
        ["acquire", "prod/db", "--intent", "x", "--wait", "5"],
        {"name": "me", "queue": [{"position": "x"}]},
    ),
    (
        ["run", "prod/db", "--intent", "x", "--wait", "5", "--", "true"],
        {"name": "me", "conflicting": 5},
    ),
]


@pytest.mark.parametrize(
    ("args", "body"), WRONG_TYPES, ids=[" ".join(a) + f" {b}" for a, b in WRONG_TYPES]
)
def test_a_field_of_the_wrong_type_is_unavailable_in_one_line(
    args: list[str], body: dict[str, Any]
) -> None:
    with hostile(_answering(json.dumps(body).encode())) as url:
        res = writ(url, *args)
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: unavailable: the server answered"), line
    assert "which writ never sends" in line


def test_the_wait_line_reads_only_a_state_writ_sends() -> None:
    from writ.cli import answers
    from writ.cli.wait import status_line

    good = {"conflicting": [LEASE], "queue": [{"position": 2, "principal": "me"}]}
    line = status_line(answers.resource(good, "prod/db"), "me", "prod/db", 10)
    assert "held by me" in line and "2nd of 1 in queue" in line
    with pytest.raises(Unavailable, match="a conflicting that is not a list of objects"):
        answers.resource({"conflicting": [5]}, "prod/db")


# --------------------------------------------------------------------------- bad URLs, ids
@pytest.mark.parametrize(("url", "says"), UNUSABLE_URLS)
def test_a_url_that_cannot_be_used_is_one_line_and_exit_2(url: str, says: str) -> None:
    res = writ(url, "status")
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: the writ server's URL") and says in line, line
    assert line.endswith("(option --url)") and "s3cret" not in res.output


def test_a_host_idna_cannot_encode_is_unavailable_in_one_line() -> None:
    res = writ("http://a..b", "status")
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: unavailable: writ server not reachable at http://a..b"), line


@pytest.mark.parametrize(
    "args", [["consent", "show", ""], ["renew", ""], ["release", ""], ["rollback", "show", ""]]
)
def test_an_empty_id_is_invalid_before_any_request(args: list[str]) -> None:
    res = writ("http://127.0.0.1:9", *args)  # nothing listens: a request would be unavailable
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    (line,) = res.stderr.splitlines()
    assert line.startswith("writ: invalid: the id is empty"), line
