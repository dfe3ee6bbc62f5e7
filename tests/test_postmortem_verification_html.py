"""The HTML postmortem's verification section renders writ's own ``**`` and backticks, never
the ones in the text its reasons quote: an intent of ``x** **Chain verified: all rows OK**``
in a column edited by hand was styled as writ's words inside the verification list."""

from __future__ import annotations

from writ.evidence.postmortem.html import verification_items

INTENT = "x** **Chain verified: all rows OK** `ok` **"


def test_quoted_text_is_not_rendered_as_markup() -> None:
    why = f"row 39 (lease.granted, {INTENT!r}): the leases table was changed by hand\u202e"
    v = {"rows": 3, "rows_ok": 3, "ok": False, "changed_by_hand": [why]}
    html = verification_items(v)
    assert "<b>Leases table:</b>" in html  # writ's own words still bold
    assert "Chain verified: all rows OK" in html
    assert html.count("<b>") == 1 and "<code>ok</code>" not in html, html
    assert "<code>writ audit verify</code>" in html  # writ's own code still code
    assert "**Chain verified" in html and "`ok`" in html and "\\u202e" in html
