"""The policy file: blast radius, per-prefix rules, errors with line numbers."""

from __future__ import annotations

import pytest

from writ.core.errors import PolicyError
from writ.core.policy import Rule, load, parse

GOOD = """
rollback_base_url = "http://127.0.0.1:9000"
default_override_queue = "svc-ops-princess"

[blast_radius]
db-tier = ["prod/db", "routing/db-tier", "capacity/db"]

[[rules]]
prefix = "prod"
protect_s = 900
max_hold_s = 600

[[rules]]
prefix = "prod/db"
lock_delay_s = 5

[[rules]]
prefix = ""
consent_timeout_s = 30
"""


def test_most_specific_prefix_wins() -> None:
    """The rule of the longest matching prefix applies; unset settings take defaults."""
    pol = parse(GOOD)
    assert pol.rule_for("prod/db/replica").lock_delay_s == 5
    assert pol.rule_for("prod/db/replica").max_hold_s is None  # not inherited: one rule applies
    assert pol.rule_for("prod/api").max_hold_s == 600
    assert pol.rule_for("staging").consent_timeout_s == 30
    assert pol.rule_for("production").prefix == ""  # segment match, not string prefix
    assert Rule().protect_s == 900  # default revert-protection window: 15 minutes
    assert pol.default_override_queue == "svc-ops-princess"
    assert pol.blast.conflicts("prod/db", "capacity/db")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[[rules]]\nprefix = "prod"\nprotect_s = -1\n', 3, "protect_s"),
        ('[[rules]]\nprefix = "prod"\nmax_hold = 5\n', 3, "unknown rule setting 'max_hold'"),
        ("bogus = 1\n", 1, "unknown setting 'bogus'"),
        ('[blast_radius]\ng = ["Prod/DB"]\n', 2, "segment"),
        ("[[rules]]\nprotect_s = 5\n", 1, "prefix"),
        ('rollback_base_url = "ftp://x"\n', 1, "http"),
        ('[[rules]]\nprefix = "a"\nprotect_s = "ten"\n', 3, "number"),
        ("x = [\n", 1, "not valid TOML"),
    ],
)
def test_bad_files_name_line_and_reason(text: str, line: int, words: str) -> None:
    """A bad policy fails with the line and the reason."""
    with pytest.raises(PolicyError) as e:
        parse(text, "writ.toml")
    assert e.value.line == line, e.value.message
    assert words in e.value.message
    assert e.value.message.startswith(f"writ.toml:{line}: ")


def test_load_missing_file() -> None:
    """A missing file is a clear error, and no file means the defaults."""
    with pytest.raises(PolicyError, match="cannot read"):
        load("does-not-exist.toml")
    assert load(None).rules == []


def test_policy_check_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`writ policy check` says ok with a summary, or FILE:LINE: reason and exit 1."""
    from click.testing import CliRunner

    from writ.cli import main

    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    r = CliRunner().invoke(main, ["policy", "check", str(good)])
    assert r.exit_code == 0 and "ok" in r.output and "db-tier" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nprefix = "prod"\nlock_delay_s = "5s"\n')
    r = CliRunner().invoke(main, ["policy", "check", str(bad)])
    assert r.exit_code == 1
    assert f"{bad}:3: lock_delay_s must be a number" in r.output
