"""writ lint: each rule on both sides, the seed's rows and verdicts, the reader, the CLI."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import pytest
from click.testing import CliRunner

from writ.cli.commands.lint import lint_command
from writ.core.errors import Invalid
from writ.evidence.lint import (
    RULES,
    VERDICTS,
    Linter,
    Unreadable,
    check_row,
    guess_kind,
    iter_rows,
    load_principals,
    worst,
)
from writ.evidence.lint.rules import object_pairs

# --------------------------------------------------------------------------- the seed's rows
# Copied from shared/seed/000_c10cdcec91e9a8fa.txt as posted (fragments: --fragment mode).

SEED_LITERAL_ROUTE = {
    "agent_id": "checkout-refund-runner",
    "lock_key": "orders/checkout-write/8841",
    "lock_acquired_at": "2026-05-16T10:11:21Z",
    "rollback_allowed": True,
    "rollback_path": "/internal/checkout/admin/rollback?txn=8841&agent=checkout-refund-runner",
    "rollback_key_holder": "svc-ops-princess",
    "approved_by": "svc-ops-princess",
    "human_override_agent": "svc-ops-princess",
    "notes": "if rollback_path is a dashboard, it’s not a rollback_path",
}
SEED_HUMAN_QUEUE = {
    "rollback_path": "https://ops.internal/checkout/rollback?txn=8841&agent=checkout-refund-runner",
    "rollback_key_holder": "svc-ops-princess",
    "approved_by": "svc-ops-princess",
    "human_override_queue": "svc-ops-princess",
    "notes": "agent may request rollback; agent may not hold the key",
}
SEED_SCRIPT_KEY = {  # "i'd reject this row because the key holder is still a script"
    "rollback_path": "https://ops.internal/rollback?txn=8841",
    "rollback_key_holder": "agent-autocleanup-7",
}
SEED_ACCEPT = {  # "and accept this one"
    "rollback_path": "https://ops.internal/rollback?txn=8841",
    "rollback_key_holder": "svc-ops-princess",
    "human_override_queue": "svc-ops-princess",
}
SEED_DEFECT = {  # passes the key-holder rule; the denominator is "the quiet trap door"
    "rollback_path": "/ops/rollback?txn=8841&agent=checkout-refund-runner",
    "rollback_key_holder": "svc-ops-princess",
    "rollback_allowed": True,
    "rollback_denominator": "incident_minutes",
    "rollback_denominator_is_defect": True,
    "approved_by": "svc-ops-princess",
    "notes": "vendor may sell fog; ops-princess keeps the knife",
}
SEED_PROVENANCE = "svc-ops-princess revoked via runbook R-44 at 04:12Z after page to oncall-jane"

# A full row the way writ's own ledger writes it.
FULL = {
    "seq": 7,
    "timestamp": "2026-05-16T02:17:03.120000Z",
    "event": "lease.granted",
    "agent_id": "perf-agent",
    "resource": "prod/db",
    "lock_holder": "perf-agent",
    "lock_key": "prod/db/8841",
    "lock_acquired_at": "2026-05-16T02:17:03.120000Z",
    "fencing_token": 8841,
    "rollback_allowed": True,
    "rollback_path": "/internal/db/rollback?txn=8841",
    "rollback_key_holder": "svc-ops-princess",
    "approved_by": None,
    "human_override_queue": "svc-ops-princess",
    "rollback_denominator": "incident_minutes",
    "rollback_denominator_is_defect": False,
    "second_key_revoke_provenance": None,
    "notes": "granted",
    "prev_hash": "0" * 64,
    "hash": "a" * 64,
}


def rules_of(result: Any) -> set[str]:
    return {f.rule for f in result.findings}


@pytest.mark.parametrize(
    ("row", "verdict", "fired", "quiet"),
    [
        (
            SEED_LITERAL_ROUTE,
            "accept",
            {"queue-field-variant"},
            {"rollback-path-not-route", "rollback-path-without-queue"},
        ),
        (SEED_HUMAN_QUEUE, "accept", set(), set()),
        (SEED_SCRIPT_KEY, "reject", {"key-holder-agent", "rollback-path-without-queue"}, set()),
        (SEED_ACCEPT, "accept", set(), set()),
        (
            SEED_DEFECT,
            "reject",
            {"denominator-is-defect", "rollback-path-without-queue"},
            {"key-holder-agent", "key-holder-portal", "key-holder-unknown", "key-holder-person"},
        ),
        ({"rollback_key_holder": "agent-autocleanup-7"}, "suspicious", {"key-holder-agent"}, set()),
        ({"rollback_key_holder": "svc-ops-princess"}, "accept", set(), set()),
        ({"rollback_key_holder": "vendor-portal-button"}, "reject", {"key-holder-portal"}, set()),
        ({"second_key_revoke_provenance": SEED_PROVENANCE}, "accept", set(), set()),
        ({"second_key_revoked": True}, "reject", {"revoke-without-provenance"}, set()),
    ],
    ids=[
        "literal-route",
        "human-queue",
        "script-key",
        "accepted",
        "defect",
        "table-agent",
        "table-queue",
        "table-portal",
        "provenance",
        "bare-boolean",
    ],
)
def test_seed_rows_get_the_seeds_verdicts(row, verdict, fired, quiet):
    """Every row the seed posts gets the seed's verdict, for the seed's reasons."""
    result = check_row(row, fragment=True)
    assert result.verdict == verdict
    assert fired <= rules_of(result)
    assert not quiet & rules_of(result)
    if verdict == "accept":
        assert all(f.verdict == "accept" for f in result.findings)


def test_the_seeds_literal_route_row_reads_its_variant_queue_field():
    """human_override_agent stands in for human_override_queue, with a warning naming it."""
    (finding,) = check_row(SEED_LITERAL_ROUTE, fragment=True).findings
    assert (finding.rule, finding.field, finding.verdict) == (
        "queue-field-variant",
        "human_override_agent",
        "accept",
    )
    assert "human_override_queue" in finding.reason


def test_a_defective_rollback_never_reads_as_clean_even_with_a_queue():
    row = {**SEED_DEFECT, "human_override_queue": "svc-ops-princess"}
    result = check_row(row, fragment=True)
    assert result.verdict == "suspicious"
    assert rules_of(result) == {"denominator-is-defect"}


def test_a_full_row_from_writs_ledger_is_accepted():
    assert check_row(FULL).verdict == "accept"
    assert check_row(FULL).findings == ()


def test_a_full_row_missing_lock_holder_is_contaminated():
    row = {k: v for k, v in FULL.items() if k != "lock_holder"}
    result = check_row(row)
    assert result.verdict == "contaminated"
    assert [(f.rule, f.field) for f in result.findings] == [("missing-lock-holder", "lock_holder")]


def test_seed_fragments_are_contaminated_when_judged_as_full_rows():
    """Without --fragment the pasted rows lack the boring columns: each is named."""
    result = check_row(SEED_ACCEPT)
    assert result.verdict == "contaminated"
    assert {f.field for f in result.findings if f.rule.startswith("missing")} == {
        "timestamp",
        "agent_id",
        "resource",
        "lock_holder",
        "rollback_allowed",
    }


# --------------------------------------------------------------------------- each rule, both sides


def F(**fields: Any) -> dict[str, Any]:
    """A full, clean row with some fields replaced (``...`` deletes one)."""
    row = {**FULL, **fields}
    return {k: v for k, v in row.items() if v is not ...}


CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # rule id: (a row that triggers it, a row that does not)
    "duplicate-field": (
        object_pairs([*F(lock_holder="").items(), ("lock_holder", "perf-agent")]),
        object_pairs(list(F().items())),
    ),
    "missing-lock-holder": (F(lock_holder=...), F(lock_holder="none")),
    "missing-column": (F(timestamp=...), F()),
    "key-holder-portal": (F(rollback_key_holder="vendor-portal-button"), F()),
    "key-holder-agent": (F(rollback_key_holder="agent-autocleanup-7"), F()),
    "key-holder-unknown": (F(rollback_key_holder="x7"), F()),
    "key-holder-person": (F(rollback_key_holder="ops-princess"), F()),
    "rollback-without-key-holder": (
        F(rollback_key_holder=None),
        F(rollback_key_holder=None, rollback_allowed=False),
    ),
    "rollback-without-path": (F(rollback_path=None), F(rollback_path=None, rollback_allowed=False)),
    "rollback-path-not-route": (
        F(rollback_path="Vendor Console > Rollback"),
        F(rollback_path="https://ops.internal/rollback?txn=8841"),
    ),
    "rollback-path-without-queue": (F(human_override_queue=None), F()),
    "queue-field-variant": (
        F(human_override_queue=..., human_override_agent="svc-ops-princess"),
        F(),
    ),
    "override-queue-not-human": (F(human_override_queue="cost-agent"), F()),
    "approver-agent": (F(approved_by="cost-agent"), F(approved_by="svc-ops-princess")),
    "approver-portal": (F(approved_by="vendor-dashboard"), F(approved_by="jane.doe")),
    "denominator-is-defect": (
        F(rollback_denominator_is_defect=True),
        F(rollback_denominator_is_defect=False),
    ),
    "revoke-without-provenance": (
        F(second_key_revoked=True),
        F(second_key_revoked=True, second_key_revoke_provenance=SEED_PROVENANCE),
    ),
    "revoke-provenance-incomplete": (
        F(second_key_revoke_provenance={"revoked_by": "jane"}),
        F(
            second_key_revoke_provenance={
                "revoked_by": "svc-ops-princess",
                "via_runbook": "R-44",
                "at": "2026-05-16T04:12:00Z",
                "after_paging": "oncall-jane",
            }
        ),
    ),
}


def test_every_rule_has_a_case_and_a_unique_stable_id():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(CASES)
    assert all(r.verdict in VERDICTS and r.description and r.field for r in RULES)


@pytest.mark.parametrize("rule", [r for r in RULES], ids=[r.id for r in RULES])
def test_rule_fires_on_its_case_and_not_on_the_clean_one(rule):
    bad, good = CASES[rule.id]
    hit = [f for f in check_row(bad).findings if f.rule == rule.id]
    assert hit, f"{rule.id} did not fire"
    assert all(f.verdict == rule.verdict and f.reason for f in hit)
    assert worst(check_row(bad).verdict, rule.verdict) == check_row(bad).verdict
    assert rule.id not in rules_of(check_row(good))


@pytest.mark.parametrize(
    ("key_holder", "rule", "verdict"),
    [
        ("svc-ops-princess", None, "accept"),
        ("ops-princess", "key-holder-person", "accept"),
        ("agent-autocleanup-7", "key-holder-agent", "suspicious"),
        ("vendor-portal-button", "key-holder-portal", "reject"),
        ("the platform", "key-holder-unknown", "suspicious"),
    ],
)
def test_key_holder_kinds_set_the_verdict(key_holder, rule, verdict):
    result = check_row(F(rollback_key_holder=key_holder))
    assert result.verdict == verdict
    assert rules_of(result) == ({rule} if rule else set())


def test_a_named_person_is_accepted_with_a_warning_that_says_it_was_guessed():
    result = check_row(F(rollback_key_holder="ops-princess"))
    assert result.verdict == "accept"
    (w,) = result.warnings
    assert w.guessed and "guessed" in w.reason and "rotation" in w.reason


def test_empty_lock_holder_is_contaminated_even_in_a_fragment():
    assert check_row({"lock_holder": ""}, fragment=True).verdict == "contaminated"
    assert check_row({"lock_holder": None}, fragment=True).verdict == "contaminated"
    assert check_row({"agent_id": "perf-agent"}, fragment=True).verdict == "accept"


@pytest.mark.parametrize(
    "path",
    [
        "Rollback button",
        "https://vendor.example/ui/rollback",
        "/ops/dashboard/rollback",
        "open the console",
        "rollback",
    ],
)
def test_rollback_paths_that_are_not_routes_are_rejected(path):
    result = check_row({"rollback_path": path, "human_override_queue": "q-oncall"}, fragment=True)
    assert rules_of(result) == {"rollback-path-not-route"}
    assert result.verdict == "reject"


@pytest.mark.parametrize(
    ("provenance", "missing"),
    [
        (SEED_PROVENANCE, ""),
        ("revoked by jane via runbook R-7 at 2026-05-16T04:12Z, paged oncall-db", ""),
        ("svc-ops-princess revoked it", "runbook, when, paged"),
        (
            {"revoked_by": "jane", "via_runbook": "R-44", "at": "04:12Z", "after_paging": []},
            "paged",
        ),
        (True, "who, runbook, when, paged"),
    ],
)
def test_revocation_provenance_must_name_who_runbook_when_and_paged(provenance, missing):
    result = check_row({"second_key_revoke_provenance": provenance}, fragment=True)
    if not missing:
        assert result.verdict == "accept"
    else:
        (f,) = result.findings
        assert f.rule == "revoke-provenance-incomplete" and f.verdict == "reject"
        assert f"does not say {missing}:" in f.reason


def test_rollback_allowed_accepts_the_strings_people_write_for_true():
    assert "rollback-without-path" in rules_of(
        check_row({"rollback_allowed": "true"}, fragment=True)
    )
    assert check_row({"rollback_allowed": "false"}, fragment=True).verdict == "accept"


def test_a_non_object_row_is_contaminated():
    result = Linter().check([1, 2])
    assert result.verdict == "contaminated" and result.error


# --------------------------------------------------------------------------- principal kinds


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("svc-ops-princess", "queue"),
        ("oncall-jane", "queue"),
        ("db-ops", "queue"),
        ("platform-sre", "queue"),
        ("ops-princess", "human"),
        ("Marco", "human"),
        ("jane.doe", "human"),
        ("agent-autocleanup-7", "agent"),
        ("perf-agent", "agent"),
        ("checkout-refund-runner", "agent"),
        ("nightly-cron", "agent"),
        ("dependabot", "agent"),
        ("vendor-portal-button", "portal"),
        ("acme-dashboard", "portal"),
        ("vendor-ui", "portal"),
        ("the platform", "unknown"),
        ("none", "unknown"),
        ("x7", "unknown"),
        ("", "unknown"),
    ],
)
def test_name_heuristics(name, kind):
    assert guess_kind(name) == kind


def test_a_principals_map_overrides_the_heuristics_and_is_not_a_guess():
    kinds = {"agent-autocleanup-7": "queue", "svc-ops-princess": "agent"}
    assert (
        check_row(
            {"rollback_key_holder": "agent-autocleanup-7"}, fragment=True, kinds=kinds
        ).verdict
        == "accept"
    )
    (f,) = check_row(
        {"rollback_key_holder": "svc-ops-princess"}, fragment=True, kinds=kinds
    ).findings
    assert (f.rule, f.guessed) == ("key-holder-agent", False)
    assert "principals map" in f.reason


def test_load_principals_reads_json_and_toml(tmp_path):
    (tmp_path / "p.json").write_text('{"svc-ops-princess": "queue", "bot-x": "human"}')
    (tmp_path / "p2.toml").write_text('[principals]\nagent-autocleanup-7 = "queue"\n')
    (tmp_path / "list").write_text('[{"name": "a", "kind": "portal"}]')
    assert load_principals(tmp_path / "p.json") == {"svc-ops-princess": "queue", "bot-x": "human"}
    assert load_principals(tmp_path / "p2.toml") == {"agent-autocleanup-7": "queue"}
    assert load_principals(tmp_path / "list") == {"a": "portal"}


@pytest.mark.parametrize("text", ['{"a": "robot"}', "not = [valid", '["a"]'])
def test_load_principals_refuses_bad_files_with_invalid(tmp_path, text):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(Invalid):
        load_principals(tmp_path / "p.txt")


DEEP = 100_000


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("p.json", b'{"svc-ops-princess": "queue", "bad\xff": "human"}', "not UTF-8"),
        ("p.toml", b'"caf\xe9" = "queue"\n', "not UTF-8"),
        ("p.json", b"[" * DEEP, "nested too deeply"),
        ("p", b'{"a":' * DEEP, "nested too deeply"),
        ("p.toml", b"a = " + b"[" * DEEP, "nested too deeply"),
    ],
)
def test_a_principals_file_that_is_not_utf8_or_nests_too_deep_is_invalid(
    tmp_path, name, body, says
):
    """Not a UnicodeDecodeError or RecursionError traceback: writ's Invalid, saying why."""
    (tmp_path / name).write_bytes(body)
    with pytest.raises(Invalid, match=says):
        load_principals(tmp_path / name)


# --------------------------------------------------------------------------- reading rows


def read(data: str | bytes) -> list[tuple[int, Any]]:
    stream = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    return list(iter_rows(stream))


def test_jsonl_skips_blank_lines_and_keeps_going_past_malformed_lines():
    rows = read('{"a": 1}\n\n   \n{"a": 2\n{bad}\n42\n{"a": 3}\n')
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]
    assert rows[0][1] == {"a": 1} and rows[4][1] == {"a": 3}
    errors = [item for _, item in rows[1:4]]
    assert all(isinstance(e, Unreadable) for e in errors)
    assert [e.line for e in errors] == [4, 5, 6]


def test_pretty_printed_objects_and_arrays_of_rows_are_read():
    text = '{\n  "a": 1,\n  "b": {"c": 2}\n}\n[{"a": 2},\n {"a": 3}]\n{"rows": [{"a": 4}]}\n'
    assert read(text) == [(1, {"a": 1, "b": {"c": 2}}), (2, {"a": 2}), (3, {"a": 3}), (4, {"a": 4})]


def test_a_json_array_streams_across_chunks_with_line_numbers():
    rows = [{"i": i, "pad": "x" * 100} for i in range(2000)]
    text = "[\n" + ",\n".join(json.dumps(r) for r in rows) + ",\n7,\n{oops}\n]\n"
    out = read(text.encode())
    assert [item for _, item in out[:2000]] == rows
    assert isinstance(out[2000][1], Unreadable) and out[2000][1].line == 2002
    assert isinstance(out[2001][1], Unreadable) and out[2001][1].line == 2003


def test_pretty_printed_rows_are_read_across_chunk_boundaries():
    rows = [{"i": i, "notes": "y" * 80, "nested": {"k": [1, 2]}} for i in range(1500)]
    text = "\n".join(json.dumps(r, indent=2) for r in rows)
    assert len(text) > 3 * 65536
    assert [item for _, item in read(text)] == rows


def test_a_broken_pretty_printed_row_is_one_error_and_the_next_row_is_read():
    text = '{\n  "a": 1,\n  "b" 2,\n  "c": 3\n}\n{\n  "d": 4\n}\n'
    (_, err), (n2, row) = read(text)
    assert isinstance(err, Unreadable) and err.line == 1 and "line 3" in err.message
    assert (n2, row) == (2, {"d": 4})


def test_reading_is_lazy():
    """The first row arrives after one chunk, not after the whole input was read."""

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            Counting.consumed += len(data)
            return data

    body = b'{"a": 1}\n' * 200_000
    stream = Counting(body)
    first = next(iter_rows(stream))
    assert first == (1, {"a": 1})
    assert Counting.consumed < len(body) // 10


def test_invalid_utf8_and_a_bom_are_handled_per_line():
    rows = read(b'\xef\xbb\xbf{"a": 1}\n{"a": "\xff"}\n{"a": 2}\n')
    assert rows[0] == (1, {"a": 1}) and rows[2] == (3, {"a": 2})
    assert isinstance(rows[1][1], Unreadable) and "UTF-8" in rows[1][1].message


def test_an_unterminated_array_is_reported():
    (row, (_, err)) = read('[{"a": 1},\n')
    assert row == (1, {"a": 1})
    assert isinstance(err, Unreadable) and "unterminated" in err.message


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def write(tmp_path, name: str, rows: list[Any]) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_jsonl_prints_one_object_per_row_in_order(runner, tmp_path):
    path = write(tmp_path, "a.jsonl", [FULL, SEED_SCRIPT_KEY, FULL])
    res = runner.invoke(lint_command, ["--format", "jsonl", path])
    assert res.exit_code == 1
    out = jsonl(res.stdout)
    assert [(o["row"], o["verdict"]) for o in out] == [
        (1, "accept"),
        (2, "contaminated"),
        (3, "accept"),
    ]
    assert out[0] == {"row": 1, "verdict": "accept", "findings": []}
    assert all(set(f) == {"rule", "field", "verdict", "reason"} for f in out[1]["findings"])


def test_cli_fragment_judges_only_present_fields(runner, tmp_path):
    path = write(tmp_path, "seed.jsonl", [SEED_ACCEPT, SEED_SCRIPT_KEY, SEED_HUMAN_QUEUE])
    res = runner.invoke(lint_command, ["--fragment", "--format", "jsonl", path])
    assert [o["verdict"] for o in jsonl(res.stdout)] == ["accept", "reject", "accept"]
    assert res.exit_code == 1


def test_cli_exit_zero_when_every_row_is_accepted(runner, tmp_path):
    path = write(tmp_path, "ok.jsonl", [FULL, F(rollback_key_holder="ops-princess")])
    res = runner.invoke(lint_command, [path])
    assert res.exit_code == 0, res.output
    assert "row 2: accept (1 warning)" in res.stdout
    assert "warning" in res.stdout and "key-holder-person" in res.stdout
    assert "2 rows: 2 accept, 0 suspicious, 0 reject, 0 contaminated" in res.stdout


def test_cli_text_shows_each_finding_and_a_summary(runner, tmp_path):
    path = write(tmp_path, "t.jsonl", [F(rollback_key_holder="vendor-portal-button")])
    res = runner.invoke(lint_command, ["--format", "text", path])
    assert res.exit_code == 1
    assert "row 1: reject" in res.stdout
    assert "key-holder-portal" in res.stdout and "rollback_key_holder" in res.stdout
    assert "1 row: 0 accept, 0 suspicious, 1 reject, 0 contaminated" in res.stdout


def test_cli_json_is_one_document_with_a_summary(runner, tmp_path):
    path = write(tmp_path, "j.jsonl", [FULL, F(approved_by="cost-agent")])
    res = runner.invoke(lint_command, ["--format", "json", path])
    doc = json.loads(res.stdout)
    assert [r["verdict"] for r in doc["rows"]] == ["accept", "suspicious"]
    assert doc["rows"][1]["findings"][0]["guessed"] is True
    assert doc["summary"]["suspicious"] == 1 and doc["summary"]["exit"] == 1


@pytest.mark.parametrize("args", [["-"], []])
def test_cli_reads_stdin(runner, args):
    res = runner.invoke(lint_command, ["--format", "jsonl", *args], input=json.dumps(FULL) + "\n")
    assert res.exit_code == 0
    assert jsonl(res.stdout) == [{"row": 1, "verdict": "accept", "findings": []}]


def test_cli_reports_malformed_lines_as_rows_and_exits_2(runner):
    body = json.dumps(FULL) + "\n{not json\n" + json.dumps(FULL) + "\n"
    res = runner.invoke(lint_command, ["--format", "jsonl", "-"], input=body)
    assert res.exit_code == 2
    out = jsonl(res.stdout)
    assert [o["verdict"] for o in out] == ["accept", "contaminated", "accept"]
    assert out[1]["error"].startswith("line 2:")
    assert out[1]["findings"][0]["rule"] == "unreadable"


def test_cli_text_names_the_line_of_a_malformed_row(runner):
    res = runner.invoke(lint_command, ["-"], input="\n\n{oops\n")
    assert res.exit_code == 2
    assert "line 3" in res.stdout and "1 unreadable" in res.stdout


def test_cli_missing_file_exits_2_and_still_lints_the_others(runner, tmp_path):
    path = write(tmp_path, "a.jsonl", [FULL])
    res = runner.invoke(lint_command, ["--format", "jsonl", str(tmp_path / "nope.jsonl"), path])
    assert res.exit_code == 2
    assert "cannot read" in res.stderr and "nope.jsonl" in res.stderr
    assert jsonl(res.stdout) == [{"file": path, "row": 1, "verdict": "accept", "findings": []}]


def test_cli_reads_a_json_array(runner, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([FULL, SEED_ACCEPT, FULL], indent=2))
    res = runner.invoke(lint_command, ["--format", "jsonl", "--fragment", str(path)])
    assert res.exit_code == 0
    assert [o["row"] for o in jsonl(res.stdout)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("p.toml", '"agent-autocleanup-7" = "queue"\n'),
        ("p.json", '{"agent-autocleanup-7": "queue"}'),
    ],
)
def test_cli_principals_file_overrides_heuristics(runner, tmp_path, name, body):
    rows = write(tmp_path, "r.jsonl", [{**SEED_SCRIPT_KEY, "human_override_queue": "q-oncall"}])
    (tmp_path / name).write_text(body)
    plain = runner.invoke(lint_command, ["--fragment", "--format", "jsonl", rows])
    assert jsonl(plain.stdout)[0]["verdict"] == "suspicious"
    res = runner.invoke(
        lint_command,
        ["--fragment", "--format", "jsonl", "--principals", str(tmp_path / name), rows],
    )
    assert res.exit_code == 0, res.output
    assert jsonl(res.stdout)[0]["verdict"] == "accept"


def test_cli_bad_principals_file_exits_2(runner, tmp_path):
    (tmp_path / "p.json").write_text('{"x": "wizard"}')
    res = runner.invoke(lint_command, ["--principals", str(tmp_path / "p.json"), "-"], input="")
    assert res.exit_code == 2
    assert "wizard" in res.stderr


@pytest.mark.parametrize("body", [b"\xff\xfe{", b"[" * DEEP])
def test_cli_principals_file_not_utf8_or_too_deep_exits_2_with_one_line(runner, tmp_path, body):
    (tmp_path / "p.json").write_bytes(body)
    res = runner.invoke(lint_command, ["--principals", str(tmp_path / "p.json"), "-"], input="")
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert res.stderr.startswith("writ lint: principals: p.json is ")
    assert "Traceback" not in res.output


def test_cli_a_server_answering_json_nested_too_deep_exits_2(runner):
    from tests.server_fixtures import hostile

    def deep(conn, stop):
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {DEEP}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + b"[" * DEEP)

    with hostile(deep) as url:
        res = runner.invoke(lint_command, ["--server", url, "-"], input="")
    assert res.exit_code == 2, res.output
    assert "nested too deeply" in res.stderr


def test_cli_takes_kinds_from_a_server_registry(runner):
    seen: dict[str, str] = {}

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["path"], seen["auth"] = self.path, self.headers.get("Authorization", "")
            body = json.dumps([{"name": "ops-princess", "kind": "queue", "vendor": None}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        res = runner.invoke(
            lint_command,
            ["--server", url, "--format", "jsonl", "--fragment", "-"],
            input='{"rollback_key_holder": "ops-princess"}',
            env={"WRIT_TOKEN": "tok-123"},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert res.exit_code == 0, res.output
    assert jsonl(res.stdout) == [{"row": 1, "verdict": "accept", "findings": []}]
    assert seen == {"path": "/v1/principals", "auth": "Bearer tok-123"}


def test_cli_unreachable_server_exits_2(runner):
    res = runner.invoke(lint_command, ["--server", "http://127.0.0.1:9", "-"], input="")
    assert res.exit_code == 2
    assert "cannot reach" in res.stderr


def test_cli_has_help_on_the_command_and_every_option():
    assert lint_command.name == "lint"
    assert lint_command.help and "Exit status" in lint_command.help
    for param in lint_command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{param.name} has no help"
    res = CliRunner().invoke(lint_command, ["--help"])
    assert res.exit_code == 0 and "--fragment" in res.stdout
