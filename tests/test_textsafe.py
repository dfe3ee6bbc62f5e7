"""Hostile free text (intents, summaries, reasons, notes) never forges output.

A newline in a summary must not print as a fake row, an ANSI escape must not reach the
terminal, a bidi override must not reorder what a reader sees — in `writ watch`, CLI lines and
tables, the Markdown postmortem and `writ lint`'s text. The HTML postmortem escapes all it shows.
"""

from __future__ import annotations

import json
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from tests.server_fixtures import LiveServer, unique
from writ.cli import main
from writ.cli.commands.watch import _row_line
from writ.core.clock import ManualClock, parse_time
from writ.core.textsafe import _IGNORABLE, json_printable, printable
from writ.engine import Engine
from writ.evidence.postmortem import Query, StoreSource, collect, to_html, to_markdown
from writ.stores.sqlite import SQLiteStore

FAKE_ROW = "\n   999 2026-05-16T10:00:00Z lease.granted        prod/db holder=evil by=evil"
HOSTILE = "resize" + FAKE_ROW + "\x1b[2J\x1b]0;pwned\x07\u202egnp.exe | 1 | 2 |"
# what writ takes in: newlines, tabs and bidi characters are text; other control characters are
# refused at the door (tests/test_trust.py), yet may sit in an older store or another system's rows
TYPED = "resize" + FAKE_ROW + "\t\u202egnp.exe | 1 | 2 |"
MARKUP = '</text></svg><script>alert(1)</script><img src=x onerror="alert(2)"> [bold]x[/bold]'
T0 = parse_time("2026-05-16T10:00:00Z")


def _clean(text: str) -> None:
    """No raw control or bidi character survives, and no line is a forged row."""
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    for line in text.splitlines():
        assert not line.lstrip().startswith("999 "), line


def test_printable_escapes_controls_separators_and_bidi() -> None:
    assert printable("a\nb\tc\r") == "a\\nb\\tc\\r"
    assert printable("\x1b[31m\x00\x7f\x9b") == "\\x1b[31m\\x00\\x7f\\x9b"
    assert printable("\u2028\u202e\u2066\ufeff\ud800") == "\\u2028\\u202e\\u2066\\ufeff\\ud800"
    assert printable("capacity 4→8 · café") == "capacity 4→8 · café"
    assert printable(42) == "42"


def test_printable_escapes_every_format_and_ignorable_character() -> None:
    """What a reader sees nothing of is written as an escape, so two attributes that differ
    by one such character never print alike (U+034F, the combining grapheme joiner, did)."""
    assert printable("capa\u034fcity") == "capa\\u034fcity"
    assert printable("a\u2800b\U0001d173") == "a\\u2800b\\U0001d173"
    # the emoji presentation selectors stay: "❤️" is one symbol, as written
    kept = {"\ufe0e", "\ufe0f"}
    missed = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if (unicodedata.category(ch := chr(code)) == "Cf" or _IGNORABLE.match(ch))
        and ch not in kept
        and printable(ch) == ch
    ]
    assert missed == []
    assert json.loads(json_printable(json.dumps("capa\u034fcity", ensure_ascii=False))) == (
        "capa\u034fcity"
    )
    assert "\u034f" not in json_printable(json.dumps("capa\u034fcity", ensure_ascii=False))


def test_watch_line_is_one_line() -> None:
    row = {
        "seq": 7,
        "timestamp": "2026-05-16T10:00:00Z",
        "event": "change.recorded",
        "resource": "prod/db",
        "lock_holder": "perf-agent",
        "agent_id": "perf-agent",
        "notes": HOSTILE,
    }
    line = _row_line(row)
    assert "\n" not in line
    _clean(line)
    assert "\\n   999" in line and "\\x1b[2J" in line and "\\u202e" in line


def test_cli_lines_and_tables_escape_hostile_text(live_server: LiveServer) -> None:
    """status (a rich table, where [bold] is text, not markup), a granted line, a change line
    and a refusal naming the holder's intent each stay on their rows."""
    _, token = live_server.principal("agent")
    _, other = live_server.principal("agent")
    resource = f"{unique('ts')}/db"
    run = CliRunner().invoke
    granted = run(
        main, ["acquire", resource, "--intent", TYPED + MARKUP], env=live_server.env(token)
    )
    assert granted.exit_code == 0, granted.output
    _clean(granted.stdout)
    assert granted.stdout.count("\n") == 1
    lease_id = granted.stdout.split("lease ")[1].split(",")[0]
    change = run(
        main,
        ["change", lease_id, "--attribute", "capacity", "--summary", TYPED],
        env=live_server.env(token),
    )
    assert change.exit_code == 0, change.output
    _clean(change.stdout)
    assert change.stdout.count("\n") == 1
    status = run(main, ["status", resource], env={**live_server.env(token), "COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    _clean(status.stdout)
    assert "[bold]x[/bold]" in status.stdout  # shown as typed, not taken as rich markup
    refused = run(main, ["acquire", resource, "--intent", "mine"], env=live_server.env(other))
    assert refused.exit_code == 1
    _clean(refused.stderr)
    assert refused.stderr.count("\n") == 1


async def _hostile_report(tmp_path: Path) -> dict[str, Any]:
    clock = ManualClock(T0)
    engine = Engine(SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}", clock=clock))
    engine.caller.transport = httpx.MockTransport(lambda r: httpx.Response(200))
    await engine.start(background=False)
    try:
        a = (await engine.add_principal(None, "perf-agent", "agent"))[0]
        b = (await engine.add_principal(None, "cost-agent", "agent"))[0]
        q = (await engine.add_principal(None, "ops-queue", "queue"))[0]
        lease = await engine.acquire(
            a, resource="prod/db", intent=TYPED + MARKUP, touches=["capacity"]
        )
        change = await engine.consents.record_change(
            a, lease["lease_id"], "capacity", TYPED + MARKUP, 4, 8
        )
        clock.t += 5
        await engine.consents.ask(b, change["change_id"], TYPED + MARKUP)
        await engine.freezes.freeze(q, "prod", TYPED + MARKUP)
        clock.t += 5
        return await collect(StoreSource(engine), Query(["prod"], T0 - 10, T0 + 60))
    finally:
        await engine.stop()


async def test_markdown_postmortem_keeps_every_row_a_row(tmp_path: Path) -> None:
    md = to_markdown(await _hostile_report(tmp_path))
    _clean(md)
    for line in md.splitlines():
        if line.startswith("|"):
            # every table row has the header's number of cells: nothing split a row
            assert line.replace("\\|", "").count("|") >= 3, line
    assert "\\n   999" in md


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]


async def test_html_postmortem_escapes_everything_it_shows(tmp_path: Path) -> None:
    rep = await _hostile_report(tmp_path)
    page = to_html(rep)
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert not [a for a in parser.attrs if a.startswith("on")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\u202e" not in page
    assert json.loads(json.dumps(rep))  # the JSON form keeps the text itself, escaped by JSON


def test_chart_escapes_hostile_names_and_texts() -> None:
    """Names reach the chart from the ledger; even ones writ would never register are shown as
    text (principal names are validated, but a report is data and may come from anywhere)."""
    from writ.evidence.postmortem.chart import timeline_svg

    evil = '<script>alert(1)</script>"\n\x1b[31m'
    at = "2026-05-16T02:17:40.000000Z"
    rep: dict[str, Any] = {
        "window": {
            "from": at,
            "to": "2026-05-16T02:19:00.000000Z",
            "first_row": at,
            "last_row": at,
            "multi_day": False,
        },
        "lanes": ["prod/db"],
        "holders": [
            {
                "resource": "prod/db",
                "holder": evil,
                "from": at,
                "to": None,
                "fencing_token": 1,
                "ended": "held",
                "intent": evil,
            }
        ],
        "refusals": [
            {
                "resource": "prod/db",
                "at": at,
                "seq": 1,
                "agent": evil,
                "kind": "held",
                "reason": evil,
            }
        ],
        "consents": [],
        "rollbacks": [],
        "revocations": [],
        "stuck": [],
        "waits": [],
        "changes": [],
        "freezes": [],
    }
    for geometry in ("wide", "narrow"):
        svg = timeline_svg(rep, geometry)
        parser = _Tags()
        parser.feed(svg)
        assert "script" not in parser.tags
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;\\n\\x1b[31m" in svg
        assert "\x1b" not in svg
