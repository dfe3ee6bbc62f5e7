"""writ lint against hostile rows and a hostile registry: a value that is not text names
nobody, 1.0 is true where 1 is, a key given twice makes a row contaminated, and neither a
principals file nor a --server answer can grow memory or hold the run past its timeout."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner

from tests.server_fixtures import hostile
from writ.cli.commands.lint import fetch_principals, lint_command
from writ.core.errors import Invalid
from writ.evidence.lint import Linter, check_row, iter_rows, load_principals
from writ.evidence.lint.kinds import MAX_PRINCIPALS_FILE

FULL: dict[str, Any] = {
    "timestamp": "2026-05-16T02:17:00Z",
    "agent_id": "perf-agent",
    "resource": "prod/db",
    "lock_holder": "perf-agent",
    "rollback_allowed": False,
}


def judged(text: str, **kw: Any) -> list[dict[str, Any]]:
    """Each row of ``text`` as ``writ lint --format jsonl`` reports it (the real reader)."""
    linter = Linter(**kw)
    return [linter.check(row).to_dict(n) for n, row in iter_rows(io.BytesIO(text.encode("utf-8")))]


def rules(result: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in result["findings"]}


# --------------------------------------------------------------------------- values that are not text
@pytest.mark.parametrize(
    "value", ["[]", "{}", "0", "false", "true", "NaN", "1.5", '["perf-agent"]']
)
def test_a_lock_holder_that_is_not_text_is_contaminated_and_says_so(value):
    row = json.dumps(FULL)[:-1] + f', "lock_holder": {value}}}'
    (out,) = judged(row.replace('"lock_holder": "perf-agent", ', ""))
    assert out["verdict"] == "contaminated"
    (f,) = [f for f in out["findings"] if f["rule"] == "missing-lock-holder"]
    assert "not text" in f["reason"]


def test_the_reviewers_row_of_nan_object_false_and_zero_is_contaminated_on_each_column():
    (out,) = judged(
        '{"timestamp":NaN,"agent_id":{},"resource":false,"lock_holder":0,"rollback_allowed":false}'
    )
    assert out["verdict"] == "contaminated"
    fields = {f["field"] for f in out["findings"] if "not text" in f["reason"]}
    assert fields == {"timestamp", "agent_id", "resource", "lock_holder"}


def test_an_empty_string_is_still_said_to_be_empty():
    (f,) = check_row({**FULL, "lock_holder": "  "}).findings
    assert f.rule == "missing-lock-holder" and "lock_holder is empty" in f.reason


@pytest.mark.parametrize("value", [[], {}, 2, "maybe", float("nan"), None, ""])
def test_rollback_allowed_that_says_neither_true_nor_false_is_contaminated(value):
    result = check_row({**FULL, "rollback_allowed": value})
    assert result.verdict == "contaminated"
    assert [f.field for f in result.findings] == ["rollback_allowed"]


@pytest.mark.parametrize("value", [True, False, 0, 1, 1.0, 0.0, "yes", "no", "false", "1"])
def test_rollback_allowed_accepts_what_people_write_for_true_and_false(value):
    findings = check_row({**FULL, "rollback_allowed": value}).findings
    assert not [f for f in findings if f.rule == "missing-column"]


@pytest.mark.parametrize("queue", [[], {}, 0, False, ["svc-ops-princess"]])
def test_an_override_queue_that_is_not_text_is_no_queue(queue):
    """No queue name? No rollback: a list or an object is not a queue's name."""
    row = {
        **FULL,
        "rollback_allowed": True,
        "rollback_path": "/db/rollback?txn=1",
        "rollback_key_holder": "svc-ops-princess",
        "human_override_queue": queue,
    }
    result = check_row(row)
    assert result.verdict == "reject"
    (f,) = [f for f in result.findings if f.rule == "rollback-path-without-queue"]
    assert "not text" in f.reason


def test_a_variant_queue_field_that_is_not_text_is_no_queue_either():
    row = {**FULL, "rollback_path": "/db/rollback", "human_override_agent": {}}
    assert "rollback-path-without-queue" in {f.rule for f in check_row(row).findings}


@pytest.mark.parametrize("holder", [[], {}, 0])
def test_a_key_holder_that_is_not_text_names_nobody(holder):
    row = {
        **FULL,
        "rollback_allowed": True,
        "rollback_path": "/rb",
        "human_override_queue": "q-ops",
    }
    result = check_row({**row, "rollback_key_holder": holder})
    fired = {f.rule: f for f in result.findings}
    assert result.verdict == "suspicious"  # as with no key holder at all
    assert "rollback-without-key-holder" in fired
    assert "not text" in fired["key-holder-unknown"].reason


# --------------------------------------------------------------------------- numbers equal to 1
@pytest.mark.parametrize("flag", [1, 1.0, True, "true"])
def test_a_number_equal_to_one_is_true_for_the_denominator_flag(flag):
    result = check_row({**FULL, "rollback_denominator_is_defect": flag})
    assert result.verdict == "suspicious"


@pytest.mark.parametrize("flag", [1.0, 1])
def test_a_number_equal_to_one_is_true_for_rollback_allowed_and_second_key_revoked(flag):
    assert "rollback-without-path" in {
        f.rule for f in check_row({**FULL, "rollback_allowed": flag}).findings
    }
    assert "revoke-without-provenance" in {
        f.rule for f in check_row({**FULL, "second_key_revoked": flag}).findings
    }


@pytest.mark.parametrize("flag", [1.5, 0.0, float("nan"), 2])
def test_numbers_other_than_one_are_not_true(flag):
    row = {**FULL, "rollback_denominator_is_defect": flag}
    assert "denominator-is-defect" not in {f.rule for f in check_row(row).findings}


def test_provenance_values_that_are_not_text_name_nothing():
    prov = {"revoked_by": {}, "via_runbook": [], "at": 0, "after_paging": False}
    result = check_row({**FULL, "second_key_revoke_provenance": prov})
    (f,) = [f for f in result.findings if f.rule == "revoke-provenance-incomplete"]
    assert "who, runbook, when, paged" in f.reason


# --------------------------------------------------------------------------- duplicate keys
def test_a_key_given_twice_makes_the_row_contaminated_naming_both_values():
    (out,) = judged(
        '{"timestamp":"2026-05-16T02:17:00Z","agent_id":"perf-agent","resource":"prod/db",'
        '"lock_holder":"","lock_holder":"perf-agent","rollback_allowed":false}'
    )
    assert out["verdict"] == "contaminated"
    (f,) = out["findings"]
    assert (f["rule"], f["field"]) == ("duplicate-field", "lock_holder")
    assert "''" in f["reason"] and "'perf-agent'" in f["reason"]


def test_duplicates_are_seen_in_arrays_and_in_a_rows_wrapper_too():
    dup = '{"lock_holder": "a", "lock_holder": "a"}'
    for text in (f"[{dup}, {dup}]", f'{{"rows": [{dup}]}}'):
        outs = judged(text, fragment=True)
        assert outs and all(o["verdict"] == "contaminated" for o in outs)
        assert all("duplicate-field" in rules(o) for o in outs)


def test_a_row_with_thousands_of_duplicate_keys_makes_a_short_report():
    text = "{" + ",".join(f'"k{i}": 1, "k{i}": 2' for i in range(5000)) + "}"
    (out,) = judged(text, fragment=True)
    assert out["verdict"] == "contaminated"
    assert len(out["findings"]) == 21
    assert "4,980 more" in out["findings"][-1]["reason"]


def test_the_reviewers_hostile_file_has_no_accepted_row(tmp_path):
    rows = [
        dict(FULL, lock_holder=[]),
        '{"timestamp":NaN,"agent_id":{},"resource":false,"lock_holder":0,"rollback_allowed":false}',
        dict(
            FULL,
            rollback_allowed=True,
            rollback_path="/db/rollback?txn=1",
            rollback_key_holder="svc-ops-princess",
            human_override_queue=[],
        ),
        json.dumps(FULL).replace('"lock_holder"', '"lock_holder": "", "lock_holder"'),
        dict(FULL, rollback_denominator_is_defect=1.0),
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    res = CliRunner().invoke(lint_command, ["--format", "jsonl", str(path)])
    verdicts = [json.loads(line)["verdict"] for line in res.stdout.splitlines()]
    assert verdicts == ["contaminated", "contaminated", "reject", "contaminated", "suspicious"]
    assert res.exit_code == 1


# --------------------------------------------------------------------------- principals
def test_a_principals_file_past_the_cap_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_PRINCIPALS_FILE + 1))
    with pytest.raises(Invalid, match="larger than"):
        load_principals(big)


def test_principals_from_dev_zero_is_one_line_and_exit_2():
    res = CliRunner().invoke(lint_command, ["--principals", "/dev/zero", "-"], input="")
    assert res.exit_code == 2
    assert "larger than" in res.stderr and "Traceback" not in res.output


def _endless(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b"[" * 65536
    while not stop.is_set():
        conn.sendall(chunk)


def _dribble(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        if stop.wait(0.2):
            return
        conn.sendall(b" ")


def _escapes(conn: socket.socket, stop: threading.Event) -> None:
    body = b'{"error": "\x1b[31mRED\x1b[0m \x1b]0;title\x07"}'
    head = f"HTTP/1.1 401 Unauthorized\r\nContent-Length: {len(body)}\r\n\r\n"
    conn.sendall(head.encode() + body)


def test_a_server_sending_an_endless_body_is_refused_at_the_clients_cap(monkeypatch):
    monkeypatch.setattr("writ.client._wire.MAX_ANSWER_BYTES", 1 << 20)
    with hostile(_endless) as url, pytest.raises(Invalid, match="longer than"):
        fetch_principals(url, None)


def test_a_server_sending_a_byte_at_a_time_is_cut_at_the_whole_requests_timeout():
    started = time.monotonic()
    with hostile(_dribble) as url, pytest.raises(Invalid, match="within 1s"):
        fetch_principals(url, None, timeout=1.0)
    assert time.monotonic() - started < 5


def test_a_servers_error_text_is_escaped_on_the_terminal():
    with hostile(_escapes) as url:
        res = CliRunner().invoke(lint_command, ["--server", url, "-"], input="")
    assert res.exit_code == 2
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr
    assert "401" in res.stderr and "RED" in res.stderr
