"""Agent text is inert in the Markdown postmortem: intents, change summaries, reasons and
notes holding raw HTML, links, images, emphasis, code or a newline and a fake heading are
shown as the text they are when the ``.md`` is rendered by a viewer that allows raw HTML
(markdown-it-py, which rich brings, in CommonMark mode with HTML and tables on), and bare
URLs, ``www.`` names and e-mail addresses are not made links by GitHub's own renderer
(cmark-gfm through cmarkgfm, with its autolink extension)."""

from __future__ import annotations

import re
from typing import Any

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options
from markdown_it import MarkdownIt

from writ.core.errors import ConsentRequired
from writ.engine import Engine
from writ.evidence.postmortem import Query, StoreSource, collect, to_markdown
from writ.evidence.postmortem.markdown import md_text

HOSTILE = (
    "<img src=x onerror=alert(1)> [click](javascript:alert(1)) ![](https://evil/beacon.png)"
    " <https://evil/auto> *em* __strong__ `code` ~~gone~~ <!-- hidden --> &lt;b&gt; a|b"
    "\n# fake heading\n- fake item\n\n<script>alert(2)</script>"
)
# what a renderer must never make of it (each, when live, is a tag in the HTML it writes)
LIVE = ("<img", "<a ", "<script", "<!--", "<em>em", "<strong>strong", "<code>code", "<del>")


def _render(md: str) -> tuple[str, list[Any]]:
    parser = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    tokens = parser.parse(md)
    flat = [t for tok in tokens for t in [tok, *(tok.children or [])]]
    return parser.render(md), flat


def _gfm(md: str) -> str:
    """``md`` as GitHub renders it: cmark-gfm with its extensions (autolink among them)."""
    return cmarkgfm.github_flavored_markdown_to_html(md, options=Options.CMARK_OPT_UNSAFE)


async def _hostile_report(engine: Engine, hostile: str = HOSTILE) -> str:
    agent, _ = await engine.add_principal(None, "perf-agent", "agent")
    other, _ = await engine.add_principal(None, "cost-agent", "agent")
    lease = await engine.acquire(
        agent, resource="prod/db", intent=hostile, touches=["capacity"], ttl_s=300
    )
    change = await engine.consents.record_change(
        agent, lease["lease_id"], "capacity", hostile, 4, 8
    )
    with pytest.raises(ConsentRequired):
        await engine.acquire(other, resource="prod/db", intent=hostile, touches=["capacity"])
    await engine.consents.ask(other, change["change_id"], hostile)
    await engine.release(agent, lease["lease_id"])
    q = Query(["prod"])
    q.title = hostile
    return to_markdown(await collect(StoreSource(engine), q))


async def test_agent_text_is_inert_in_the_markdown(engine: Engine) -> None:
    md = await _hostile_report(engine)
    html, tokens = _render(md)
    for live in LIVE:
        assert live not in html, live
    kinds = {t.type for t in tokens}
    assert not kinds & {"html_inline", "html_block", "link_open", "image", "s_open"}, kinds
    # the only headings are writ's own: the title (one line) and the section names
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[0].startswith("&lt;img src=x") and "fake heading" in headings[0]
    assert all(h[:1].isupper() and "fake" not in h for h in headings[1:]), headings
    # no line of agent text became a list item or a block of its own
    assert "<li>fake item" not in html and "<h1>fake" not in html
    # ... and it is all still there, as text: the reader sees what the agent wrote
    assert html.count("&lt;img src=x onerror=alert(1)&gt; [click](javascript:alert(1))") >= 4
    assert "![](https://evil/beacon.png)" in html and "&amp;lt;b&amp;gt;" in html
    # a newline is shown as \n on the same line, not obeyed
    assert "a|b\\n# fake heading\\n- fake item" in html
    # the tables keep their columns: an agent's | does not add a cell
    tables = re.findall(r"<table>(.*?)</table>", html, re.S)
    assert len(tables) >= 4 and sum("fake heading" in t for t in tables) >= 4
    for table in tables:
        width = len(re.findall(r"<th[ >]", table))
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], re.S):
            assert len(re.findall(r"<td[ >]", row)) == width, row


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
        ("[click](javascript:x)", "\\[click\\](javascript:x)"),
        ("![](https://evil/b.png)", "!\\[\\](https\\://evil/b.png)"),
        ("*a* _b_ `c` ~d~ a|b", "\\*a\\* \\_b\\_ \\`c\\` \\~d\\~ a\\|b"),
        ("consent_required", "consent_required"),  # inside a word: never emphasis
        ("x\n# fake", "x\\\\n# fake"),  # one line: printable's \n, its backslash escaped
        ("# fake", "\\# fake"),
        ("  - item", "  \\- item"),
        ("12. item", "12\\. item"),
        ("&lt;", "&amp;lt;"),
        ("\u202eevil", "\\\\u202eevil"),
    ],
)
def test_md_text_escapes(text: str, escaped: str) -> None:
    assert md_text(text) == escaped


# what GFM's autolink extension makes a link of in plain text: a URL with a scheme, a www.
# name, an e-mail address (and mailto: / xmpp: ones); each is a link in GitHub's view of a
# report unless writ breaks the pattern (the scheme's ``:``, the ``.`` after ``www``, the ``@``)
AUTOLINKS = (
    "see https://evil.example/login?next=x and HTTP://evil.example, ftp://evil.example/f,"
    " www.evil.example/path (www.evil.example) *www.evil.example* a_www.evil.example,"
    " mail ops@evil.example, mailto:ops@evil.example, xmpp:ops@evil.example/r, a@b@evil.example"
)


def test_gfm_itself_links_the_unescaped_text() -> None:
    """The renderer under test does autolink (so the test below can fail)."""
    assert _gfm(AUTOLINKS).count("<a href=") == 11


async def test_bare_urls_www_and_emails_are_no_links_on_github(engine: Engine) -> None:
    md = await _hostile_report(engine, AUTOLINKS)
    html = _gfm(md)
    assert "<a " not in html and "href" not in html, re.findall(r"<a [^>]*>", html)
    # ... and a person reads what the agent wrote (a word joiner after each @, invisible)
    shown = html.replace("\u2060", "")
    assert shown.count(AUTOLINKS) >= 4


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("https://evil.example/x", "https\\://evil.example/x"),
        ("www.evil.example", "www\\.evil.example"),
        ("WWW.evil.example", "WWW\\.evil.example"),
        ("ops@evil.example", "ops@&#8288;evil.example"),
        ("a @ b, writ@", "a @ b, writ@"),  # an @ with no address after it is left alone
        ("time 12:30 a.www x.www.y", "time 12:30 a.www x.www\\.y"),
    ],
)
def test_md_text_breaks_autolinks(text: str, escaped: str) -> None:
    assert md_text(text) == escaped
    assert "<a " not in _gfm(md_text(text))
