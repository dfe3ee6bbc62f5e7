"""writ lint's reader at the limits of what it can hold (a security review): a value deeper than
Python's stack or an integer longer than its digit limit is an unreadable row, not a traceback,
and judging goes on at the next line; no read asks for more than the 64 MiB a value may span, a
line over that is reported and dropped in pieces, and blanks without a newline take no memory.
A reason quotes at most 200 characters of a value, however long the value."""

from __future__ import annotations

import io
import json
import re
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from writ.cli.commands.lint import lint_command, run
from writ.evidence.lint import Linter, Unreadable, iter_rows
from writ.evidence.lint import rows as rows_module

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


# --------------------------------------------------------------------------- memory

T = TypeVar("T")
MiB = 1 << 20
CAP = 64 * MiB  # docs/lint.md: a JSON value may span 64 MiB


class Generated:
    """A binary stream made up as it is read: literal bytes, and runs of one byte given as
    ``(byte, count)`` (never held whole). It records the size each read and readline asked
    for (None: "all of it") and how many bytes it served."""

    def __init__(self, *parts: bytes | tuple[bytes, int]) -> None:
        self.parts = [[p, len(p)] if isinstance(p, bytes) else [p[0], p[1]] for p in parts]
        self.size = sum(left for _, left in self.parts)
        self.asked: list[int | None] = []
        self.served = 0

    def _take(self, size: int | None, line: bool) -> bytes:
        self.asked.append(size if size is not None and size >= 0 else None)
        want = size if size is not None and size >= 0 else self.size
        out: list[bytes] = []
        while want and self.parts:
            piece, left = self.parts[0]
            if len(piece) == 1:  # a run of one byte
                chunk = piece * (1 if line and piece == b"\n" else min(want, left))
            else:
                chunk = piece[len(piece) - left :][:want]
                if line and b"\n" in chunk:
                    chunk = chunk[: chunk.index(b"\n") + 1]
            out.append(chunk)
            want -= len(chunk)
            self.parts[0][1] -= len(chunk)
            if not self.parts[0][1]:
                self.parts.pop(0)
            if line and chunk.endswith(b"\n"):
                break
        self.served += sum(map(len, out))
        return b"".join(out)

    def read(self, size: int | None = -1) -> bytes:
        return self._take(size, line=False)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(size, line=True)


def _peak(fn: Callable[[], T]) -> tuple[T, int]:
    """What ``fn()`` returns, and the most memory Python held for it (tracemalloc)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_generated_stream_is_what_it_says():
    parts = (b'{"a": "', (b"x", 10), b'"}\n{"b": 1}\n', (b" ", 5))
    whole = b'{"a": "' + b"x" * 10 + b'"}\n{"b": 1}\n' + b" " * 5
    for sizes in ([3, 100], [1] * 40, [7, 2, 5, 9, 100]):
        for line in (False, True):
            g, ref = Generated(*parts), io.BytesIO(whole)
            for n in sizes:
                assert (g.readline(n) if line else g.read(n)) == (
                    ref.readline(n) if line else ref.read(n)
                )


def test_a_line_over_64_mib_is_refused_and_dropped_in_pieces_never_read_whole():
    """A 200 MB line used to be read whole (readline() with no limit) and parsed (the review
    measured 462 MB of RSS): now no read asks for more than the cap, the line is reported as over it, and the rest
    of it is read in pieces and dropped; the next line is judged."""
    stream = Generated(b'{"seq": 1, "pad": "', (b"x", CAP + 16 * MiB), b'"}\n{"seq": 2}\n')
    rows = list(iter_rows(stream))
    assert rows == [(1, Unreadable(1, "JSON value over 64 MiB")), (2, {"seq": 2})]
    assert None not in stream.asked, "a read with no limit"
    assert max(stream.asked) <= CAP  # type: ignore[type-var]
    assert stream.served == stream.size


def test_blanks_with_no_newline_are_read_in_small_pieces_and_not_held():
    """600 MB of spaces with no newline were one readline (the review measured 1.29 GB of
    RSS): now they are
    read a piece at a time and dropped as they are skipped."""
    stream = Generated((b" ", 80 * MiB))
    rows, peak = _peak(lambda: list(iter_rows(stream)))
    assert rows == [] and stream.served == 80 * MiB
    assert None not in stream.asked and max(stream.asked) <= MiB  # type: ignore[type-var]
    assert peak < 16 * MiB, peak


def test_a_long_line_skipped_after_a_broken_value_is_not_held():
    """After a value that broke on a later line, reading looks for the next line that begins
    with '{' or '['; a long line that begins otherwise is dropped in pieces, not gathered."""
    stream = Generated(b'{\n  "a": oops\n', (b"x", 80 * MiB), b'\n{"seq": 2}\n')
    rows, peak = _peak(lambda: list(iter_rows(stream)))
    assert rows == [(1, Unreadable(1, "Expecting value (line 2)")), (2, {"seq": 2})]
    assert None not in stream.asked and stream.served == stream.size
    assert peak < 16 * MiB, peak


def test_cli_reports_a_line_over_the_cap_as_a_row_and_exits_2(monkeypatch):
    monkeypatch.setattr(rows_module, "_MAX_VALUE", 2 * MiB)  # the same path, at a 2 MiB cap
    body = b'{"seq": 1}\n{"pad": "' + b"y" * (3 * MiB) + b'"}\n{"seq": 2}\n'
    out = io.StringIO()
    state = run(
        ["-"], Linter(fragment=True), "json", out=out, open_input=lambda _: io.BytesIO(body)
    )
    doc = json.loads(out.getvalue())
    assert [r.get("error") for r in doc["rows"]] == [None, "line 2: JSON value over 2 MiB", None]
    assert state.exit_code == 2 and doc["summary"]["exit"] == 2


# Reads that stop anywhere inside a line must not change what is read: the same inputs at tiny
# read sizes (a line in pieces of 1 to 16 characters) give the same rows as at the real sizes.
CORPUS: list[str | bytes] = [
    '{"a": 1}\n\n   \n{"a": 2\n{bad}\n42\n{"a": 3}\n',
    '{\n  "a": 1,\n  "b": {"c": 2}\n}\n[{"a": 2},\n {"a": 3}]\n{"rows": [{"a": 4}, 5]}\n',
    "[\n"
    + ",\n".join(json.dumps({"i": i, "s": "é" * i}) for i in range(40))
    + ",\n7,\n{oops}\n]\n",
    '{\n  "a": 1,\n  "b" 2,\n  "c": 3\n}\n{\n  "d": 4\n}\n',
    '{\n"a": 1,\noops\nfoo bar\n  \t {"b": 2}\n[{"c": 3}]\n',
    b'\xef\xbb\xbf{"a": 1}\n{"a": "\xff"}\n{"a": 2}\n',
    b'{"a": "' + b"x" * 50 + b'\xff"}\n{"b": "\xe2\x82\xac\xf0\x9f\x98\x80"}\n',
    '[{"a": 1},\n',
    '{"\u00e9": "ü€😀", "s": "\\ud83d\\ude00 \\u00e9 \\n \\"q\\""}\r\n{"b": 2}\r\n',
    "[1, -2.5e+10, 3, true, false, null, -Infinity, NaN, 12345678901234567890, {}]\n-0.0e-0\n",
    '{"a":1} {"b":2}   {"c":\n3}\n',
    '{"a": 1}',
    '{"a": ',
    '{"a": tru',
    '{"a": "never closed\n{"b": 1}\n',
    "[" * 3000 + "\n" + '{"seq": 2}\n',
]


@pytest.mark.parametrize("sizes", [(1, 1), (2, 3), (3, 1), (5, 7), (16, 16)])
def test_tiny_reads_that_cut_lines_anywhere_give_the_same_rows(monkeypatch, sizes):
    expected = [read(data) for data in CORPUS] + [
        read(d.encode()) for d in CORPUS if isinstance(d, str)
    ]
    monkeypatch.setattr(rows_module, "_CHUNK", sizes[0])
    monkeypatch.setattr(rows_module, "_LINE", sizes[1])
    got = [read(data) for data in CORPUS] + [read(d.encode()) for d in CORPUS if isinstance(d, str)]
    for want, have in zip(expected, got, strict=True):
        assert have == want


MB = 1_000_000
# one row per rule that quotes a field's value in its reason, the value 1 MB long
HUGE_VALUES = {
    "key-holder-agent": {"rollback_key_holder": "agent-" + "x" * MB},
    "key-holder-unknown": {"rollback_key_holder": ["9" * MB]},  # not a string: its repr
    "approver-portal": {"approved_by": "vendor-portal-" + "x" * MB},
    "rollback-path-not-route": {
        "rollback_path": "/x" * (MB // 2),
        "human_override_queue": "svc-oncall",
    },
    "override-queue-not-human": {"human_override_queue": "bot-" + "x" * MB},
    "denominator-is-defect": {
        "rollback_denominator_is_defect": True,
        "rollback_denominator": "x" * MB,
    },
}


@pytest.mark.parametrize("rule", sorted(HUGE_VALUES))
def test_a_reason_quotes_at_most_200_characters_of_a_value(rule: str):
    """A hostile 1 MB field makes a short reason: the value's first 200 characters, then how
    long it was."""
    result = Linter(fragment=True).check(HUGE_VALUES[rule])
    (finding,) = [f for f in result.findings if f.rule == rule]
    assert len(finding.reason) < 600, (rule, len(finding.reason))
    assert re.search(r"… \(1,000,0\d\d characters\)", finding.reason), finding.reason


def test_a_short_value_is_quoted_whole():
    result = Linter(fragment=True).check({"rollback_key_holder": "agent-autocleanup-7"})
    assert result.findings[0].reason.startswith("rollback_key_holder 'agent-autocleanup-7' is an")


def test_the_json_output_keeps_its_shape_with_a_short_reason():
    body = json.dumps(HUGE_VALUES["key-holder-agent"]) + "\n"
    res = CliRunner().invoke(lint_command, ["--format", "jsonl", "--fragment", "-"], input=body)
    assert res.exit_code == 1, res.output[:500]
    (line,) = res.stdout.splitlines()
    assert len(line) < 1000
    doc = json.loads(line)
    assert list(doc) == ["row", "verdict", "findings"]
    assert [list(f) for f in doc["findings"]] == [["rule", "field", "verdict", "reason"]]
    assert doc["findings"][0]["reason"].endswith(
        "… (1,000,006 characters) is an agent: agents may request rollback; only a human queue"
        " holds the key (kind guessed from the name; give --principals or --server to be sure)"
    )


def test_a_value_of_too_many_objects_is_one_unreadable_row(monkeypatch):
    """A line of 22 million ``{}`` (``{"a":[{},...]}``, 63 MiB) took 1.7 GB, and the same
    as ``{"rows":[{},...]}`` ran 12 minutes, each empty object a row: the 64 MiB cap counts
    characters, and an object costs Python 64 bytes and more for its 2. Now a value that
    builds more objects than the bound stops being read there: one unreadable row, and the
    next line is judged. (The bound, 1,000,000, is lowered here.)"""
    monkeypatch.setattr(rows_module, "_MAX_CONTAINERS", 1000)
    many = ",".join(["{}"] * 1001)
    for line in ('{"a":[' + many + "]}", '{"rows":[' + many + "]}"):
        rows = read(line + '\n{"seq": 2}\n')
        why = "JSON value of over 1,000 objects (more than writ lint holds)"
        assert rows == [(1, Unreadable(1, why)), (2, {"seq": 2})], rows[:3]
    at_the_bound = ",".join(['{"seq": 1}'] * 999)  # and the object that holds them
    assert len(read('{"rows":[' + at_the_bound + "]}\n")) == 999
    # an array of rows is read element by element: each row is a value of its own
    assert len(read("[" + many + "]\n")) == 1001


def test_a_value_of_too_many_arrays_is_one_unreadable_row(monkeypatch):
    """Arrays are built without a hook: a value in more text than ``_SCAN`` whose ``[`` from
    where it starts pass the bound is read by Python's own scanner, which counts them; a long
    value with few arrays is read as before, and so is what follows it."""
    monkeypatch.setattr(rows_module, "_MAX_CONTAINERS", 1000)
    monkeypatch.setattr(rows_module, "_SCAN", 1000)
    many = '{"a":[' + ",".join(["[]"] * 1001) + "]}"
    few = '{"b":[' + ",".join(["[]"] * 999) + '], "pad": "' + "x" * 5000 + '"}'
    for binary in (False, True):
        text = "\n".join([many, few, '{"c": [[1], [2]]}', ""])
        rows = read(text.encode() if binary else text)
        why = "JSON value of over 1,000 arrays (more than writ lint holds)"
        assert rows[0] == (1, Unreadable(1, why))
        assert len(rows) == 3 and len(rows[1][1]["b"]) == 999
        assert rows[2] == (3, {"c": [[1], [2]]})


def test_a_value_of_too_many_strings_or_numbers_is_one_unreadable_row(monkeypatch):
    """A 63 MiB line of short strings (``["ab","ab",...]``) took 1.1 GB, of ``1.5`` 790 MB:
    a value in more text than ``_SCAN`` with more ``,`` than the bound is read by Python's
    own scanner, which counts strings and numbers too; one with fewer is read as before."""
    monkeypatch.setattr(rows_module, "_MAX_VALUES", 1000)
    monkeypatch.setattr(rows_module, "_SCAN", 1000)
    keys = "{" + ",".join(f'"k{i}":null' for i in range(1100)) + "}"  # keys count too
    for item in ('"ab"', "1.5", "7", keys):
        many = '{"a":[' + ",".join([item] * 1100) + "]}" if item != keys else keys
        rows = read(many + '\n{"seq": 2}\n')
        why = "JSON value of over 1,000 strings and numbers (more than writ lint holds)"
        assert rows == [(1, Unreadable(1, why)), (2, {"seq": 2})], rows[:2]
    few = '{"a":[' + ",".join(['"ab"'] * 400) + '], "pad": "' + "x" * 5000 + '"}'
    [(_, row)] = read(few + "\n")
    assert len(row["a"]) == 400 and row["pad"] == "x" * 5000
