"""writ lint's reader at the limits of what it can hold (a security review): a value deeper than
Python's stack or an integer longer than its digit limit is an unreadable row, not a traceback,
and judging goes on at the next line."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from writ.cli.commands.lint import lint_command
from writ.evidence.lint import Unreadable, iter_rows

DEEP = 100_000
DIGITS = sys.get_int_max_str_digits()  # 4300 unless the interpreter was told otherwise
HOSTILE = [
    "[" * DEEP,  # RecursionError in the JSON scanner
    '{"a":' * DEEP,
    '{"seq": 9, "n": ' + "9" * (DIGITS + 700) + "}",  # ValueError: over the int-digits limit
]


def read(data: str | bytes) -> list[tuple[int, Any]]:
    stream = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    return list(iter_rows(stream))


@pytest.mark.parametrize("binary", [False, True])
def test_a_value_too_deep_or_an_integer_too_long_is_an_unreadable_row(binary: bool):
    text = "\n".join(['{"seq": 1}', *HOSTILE, '{"seq": 2}', ""])
    rows = read(text.encode() if binary else text)
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]  # one row a line, nothing after the last
    assert rows[0][1] == {"seq": 1} and rows[4][1] == {"seq": 2}
    errors = [item for _, item in rows[1:4]]
    assert all(isinstance(e, Unreadable) for e in errors), errors
    assert [e.line for e in errors] == [2, 3, 4]
    assert [e.message for e in errors] == [
        "JSON value nested too deeply to read",
        "JSON value nested too deeply to read",
        f"JSON integer with over {DIGITS:,} digits",
    ]


def test_long_numbers_python_can_hold_are_still_read():
    rows = read('{"n": ' + "9" * DIGITS + '}\n{"x": 1' + "0" * 5000 + ".5}\n")
    assert rows[0] == (1, {"n": int("9" * DIGITS)})
    assert isinstance(rows[1][1], dict)


def test_a_value_too_deep_inside_an_array_of_rows_skips_that_element_only():
    text = "[\n" + "[" * DEEP + ",\n" + '{"seq": 2},\n{"seq": 3}\n]\n{"seq": 4}\n'
    rows = read(text)
    assert isinstance(rows[0][1], Unreadable) and rows[0][1].line == 2
    assert rows[1:] == [(2, {"seq": 2}), (3, {"seq": 3}), (4, {"seq": 4})]


def test_cli_reports_them_as_rows_exits_2_and_writes_complete_json():
    body = "\n".join(['{"seq": 1}', *HOSTILE, '{"seq": 2}', ""])
    res = CliRunner().invoke(lint_command, ["--format", "json", "--fragment", "-"], input=body)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 2  # unreadable input, not 1 ("a row was not accepted")
    doc = json.loads(res.stdout)
    assert [r["verdict"] for r in doc["rows"]] == ["accept", *["contaminated"] * 3, "accept"]
    assert [r.get("error", "")[:7] for r in doc["rows"]] == [
        "",
        "line 2:",
        "line 3:",
        "line 4:",
        "",
    ]
    assert doc["summary"]["unreadable"] == 3 and doc["summary"]["exit"] == 2
