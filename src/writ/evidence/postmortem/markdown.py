"""The report as Markdown and JSON, and the tables it shares with the HTML report (columns, cells, empty text)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from writ.core.textsafe import dumps, printable
from writ.evidence.postmortem.notes import duration, when
from writ.evidence.postmortem.report import _consent_outcome

if TYPE_CHECKING:
    pass


# ----------------------------------------------------------------------------- markdown
# Tables drawn alike in the Markdown and the HTML report: columns, cells, empty text. Where
# a cell is a status word, ``tag`` draws it (Markdown: as it is; HTML: a coloured badge).
Cells = list[tuple[Any, ...]]
Clock = Callable[[str | None], str]
Tag = Callable[[str], Any]

TIMELINE_COLUMNS = ["time", "seq", "event", "by", "resource", "lock holder", "what the row says"]
HOLDER_COLUMNS = ["resource", "holder", "lock key", "from", "to", "held", "ended", "intent"]
NO_HOLDERS = "Nobody held write authority on these resources in the window."
CHANGE_COLUMNS = [
    "time",
    "seq",
    "author",
    "resource",
    "token",
    "attribute",
    "change",
    "protected until",
]
NO_CHANGES = "No changes were recorded."
REFUSAL_COLUMNS = ["time", "seq", "who asked", "resource", "refused", "holder then", "why"]
NO_REFUSALS = "writ refused nothing in the window."
WAITS_INTRO = "Made to wait (FIFO queue, blast radius included):"
WAIT_COLUMNS = ["queued", "seq", "who", "resource", "position", "behind", "outcome", "waited"]
CONSENT_COLUMNS = ["asked", "seq", "requester", "author", "to undo", "reason", "answer", "took"]
NO_CONSENTS = "No consent was asked in the window."
ROLLBACK_COLUMNS = [
    "asked",
    "seq",
    "requested by",
    "lock key",
    "key holder",
    "route",
    "reason",
    "decision",
    "result",
]
NO_ROLLBACKS = "No rollback was requested in the window."
STUCK_COLUMNS = ["time", "seq", "event", "holder", "resource", "what happened"]
NO_STUCK = "No lock was stuck, and nobody was woken or paged about one."
REVOCATION_COLUMNS = [
    "time",
    "seq",
    "lease of",
    "resource",
    "lock key",
    "revoked by",
    "runbook",
    "after paging",
    "reason",
]
NO_REVOCATIONS = "No lease was revoked in the window."
FREEZE_COLUMNS = ["time", "seq", "event", "by", "prefix", "notes"]
LINT_COLUMNS = ["seq", "time", "event", "verdict", "findings"]
NO_LINT = "writ lint is not available in this build; rows were not judged."
LINT_CLEAN = "No row is contaminated, rejected or suspicious."
LINT_SHOWN = 200  # flagged rows listed at most


def timeline_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(e["at"]), e["seq"], e["event"], e["agent"], e["resource"], e["holder"], e["notes"])
        for e in rep["timeline"]
    ]


def change_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (
            t(c["at"]),
            c["seq"],
            c["agent"],
            c["resource"],
            c["fencing_token"],
            c["attribute"],
            c["summary"],
            t(c["protected_until"]),
        )
        for c in rep["changes"]
    ]


def refusal_cells(rep: dict[str, Any], t: Clock, tag: Tag) -> Cells:
    return [
        (t(r["at"]), r["seq"], r["agent"], r["resource"], tag(r["kind"]), r["holder"], r["reason"])
        for r in rep["refusals"]
    ]


def stuck_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(s["at"]), s["seq"], s["event"], s["holder"], s["resource"], s["notes"])
        for s in rep["stuck"]
    ]


def revocation_cells(rep: dict[str, Any], t: Clock) -> Cells:
    out: Cells = []
    for r in rep["revocations"]:
        p = r["provenance"] or {}
        out.append(
            (
                t(r["at"]),
                r["seq"],
                r["holder"],
                r["resource"],
                r["lock_key"],
                p.get("revoked_by"),
                p.get("via_runbook"),
                p.get("after_paging"),
                r["notes"],
            )
        )
    return out


def freeze_cells(rep: dict[str, Any], t: Clock) -> Cells:
    return [
        (t(f["at"]), f["seq"], f["event"], f["agent"], f["resource"], f["notes"])
        for f in rep["freezes"]
    ]


def lint_cells(rep: dict[str, Any], t: Clock, tag: Tag) -> Cells:
    return [
        (
            f["seq"],
            t(f["at"]),
            f["event"],
            tag(f["verdict"]),
            "; ".join(f"{x['rule']} ({x['field']}): {x['reason']}" for x in f["findings"]),
        )
        for f in rep["lint"]["rows"][:LINT_SHOWN]
    ]


def _as_is(word: str) -> str:
    return word


# Agent text (intents, notes, reasons, names) is inert in the Markdown: a viewer that renders
# raw HTML, links and images must show it as the text it is, never fetch or run it.
# escapes, code, emphasis, links and images, cell borders; an underscore inside a word
# (consent_required) never makes emphasis and is left as it is
_MD_INLINE = re.compile(r"[\\`*\[\]|~]|(?<![^\W_])_|_(?![^\W_])")
_MD_BLOCK = re.compile(r"^(\s*)(?:([#+-])|(\d{1,9})([.)]))")  # a heading or list at its start


# GitHub's autolink extension (cmark-gfm) links bare text too: a scheme's ``://``, a ``www.``
# after a space or ``*_~(``, and an e-mail address (``mailto:``/``xmpp:`` ones included). A
# backslash before the ``:`` or the ``.`` stops the first two (the scheme and www are matched
# in the source, where an escape is not the character). E-mail addresses are matched after
# escapes and entities are decoded, in the text as a reader sees it, so the ``@`` is followed
# by a word joiner (U+2060, written ``&#8288;``): invisible, and no address character.
_GFM_URL = re.compile(r"(?=://)|(?<![A-Za-z0-9])(?i:www)(?=\.)")
_GFM_AT = re.compile(r"@(?=[\w.@+-])")


def _block_start(m: re.Match[str]) -> str:
    lead, mark, digits, delim = m.groups()
    return f"{lead}\\{mark}" if mark else f"{lead}{digits}\\{delim}"


def md_text(value: Any) -> str:
    """``value`` as inert Markdown text: one line (controls and newlines shown as escapes,
    :func:`~writ.core.textsafe.printable`), Markdown syntax that would make a link, an
    image, emphasis, code or a table cell backslash-escaped, a heading or list marker at its
    start escaped too, ``& < >`` written as HTML entities (no tag, comment or autolink), and
    what GitHub would link in bare text (``https://``, ``www.``, ``ops@example.com``) broken
    where a reader does not see it: ``https\\://``, ``www\\.``, ``@&#8288;``."""
    text = _MD_INLINE.sub(lambda m: "\\" + m.group(), printable(value))
    text = _GFM_URL.sub(lambda m: m.group() + "\\", text)
    text = html.escape(_MD_BLOCK.sub(_block_start, text, count=1), quote=False)
    return _GFM_AT.sub("@&#8288;", text)


class Md(str):
    """A cell already written as Markdown: writ's own words (a ``[seq]`` citation) around
    agent text that went through :func:`md_text`."""


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    return v if isinstance(v, Md) else md_text(v)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def to_markdown(rep: dict[str, Any]) -> str:
    d = bool(rep["window"]["multi_day"])

    def t(ts: str | None) -> str:
        return when(ts, d)

    L = _md_head(rep, t) + _md_holders(rep, t) + _md_answers(rep, t) + _md_tail(rep, t)
    return "\n".join(L)


def _md_head(rep: dict[str, Any], t: Clock) -> list[str]:
    """Title, provenance, summary, impact window and timeline."""
    w, src = rep["window"], rep["source"]
    d = bool(w["multi_day"])
    day = (w["from"] or "")[:10]
    L: list[str] = [f"# {md_text(rep['title'])}", ""]
    L.append(
        f"*Drafted by `writ postmortem` from the audit ledger ({md_text(src['ledger'])}), rows "
        f"{src['first_seq']}–{src['last_seq']}; every fact below cites its row as [seq]. "
        f"Times are UTC{'' if d else ' on ' + day}.*"
    )
    if src["truncated"]:
        L.append(
            f"\n> **Truncated:** only the first {src['rows']} rows were read; narrow the "
            "window or the resources."
        )
    L += ["", "## Summary", ""] + [f"- {md_text(s)}" for s in rep["summary"]]
    imp = rep["impact"]
    L += ["", "## Impact window", ""]
    L.append(
        f"- Window: {t(w['from'])} – {t(w['to'])} ({duration(w['seconds'])}); rows from "
        f"{t(w['first_row'])} to {t(w['last_row'])}."
    )
    for name, m in imp["moments"].items():
        L.append(f"- {name.replace('_', ' ').capitalize()}: {t(m['at'])} [{m['seq']}]")
    for res, secs in imp["held_seconds"].items():
        L.append(f"- Write authority on {md_text(res)} held for {duration(secs)} of the window.")
    L.append(
        "- Customer impact, detection and root cause: *not in the ledger — to be written "
        "by the responders.*"
    )

    L += ["", "## Timeline", ""]
    L += _table(TIMELINE_COLUMNS, timeline_cells(rep, t))
    if rep["timeline_quiet"]:
        L.append("")
        L.append(
            "Not listed: "
            + ", ".join(f"{n} {md_text(e)}" for e, n in rep["timeline_quiet"].items())
            + " rows."
        )
    return L


def _md_holders(rep: dict[str, Any], t: Clock) -> list[str]:
    """Who held write authority, the changes made, and what writ refused (and who waited)."""
    L: list[str] = []
    L += ["", "## Who held write authority when", ""]
    if rep["holders"]:
        L += _table(
            HOLDER_COLUMNS,
            [
                (
                    h["resource"],
                    h["holder"],
                    h["lock_key"],
                    t(h["from"]) + (" (before window)" if h["before_window"] else ""),
                    t(h["to"]) if h["to"] else "still held",
                    duration(h.get("seconds")),
                    Md(md_text(h["ended"]) + (f" [{h['end_seq']}]" if h["end_seq"] else "")),
                    h["intent"],
                )
                for h in rep["holders"]
            ],
        )
    else:
        L.append(NO_HOLDERS)

    L += ["", "## Changes made", ""]
    L += _table(CHANGE_COLUMNS, change_cells(rep, t)) if rep["changes"] else [NO_CHANGES]

    L += ["", "## What writ refused, and why", ""]
    if rep["refusals"]:
        L += _table(REFUSAL_COLUMNS, refusal_cells(rep, t, _as_is))
    else:
        L.append(NO_REFUSALS)
    if rep["waits"]:
        L += ["", WAITS_INTRO, ""]
        L += _table(
            WAIT_COLUMNS,
            [
                (
                    t(q["at"]),
                    q["seq"],
                    q["agent"],
                    q["resource"],
                    q["position"],
                    q["holder"],
                    Md(
                        md_text(q["outcome"])
                        + (f" at {t(q['until'])} [{q['end_seq']}]" if q["until"] else "")
                    ),
                    duration(q.get("seconds")),
                )
                for q in rep["waits"]
            ],
        )
    return L


def _md_answers(rep: dict[str, Any], t: Clock) -> list[str]:
    """Consents and rollbacks, with their answers."""
    L: list[str] = []
    L += ["", "## Consents and their answers", ""]
    if rep["consents"]:
        L += _table(
            CONSENT_COLUMNS,
            [
                (
                    t(c["at"]),
                    c["seq"],
                    c["requester"],
                    c["author"],
                    f"{c['attribute']} ({c['change']})",
                    c["reason"],
                    _consent_outcome(c),
                    duration(c.get("seconds")),
                )
                for c in rep["consents"]
            ],
        )
        L.append("")
        L.append(
            "An unanswered request *expires*: it is never recorded as a denial, and it "
            "escalates to the override queue, which may still answer."
        )
    else:
        L.append(NO_CONSENTS)

    L += ["", "## Rollbacks and who approved them", ""]
    if rep["rollbacks"]:
        L += _table(
            ROLLBACK_COLUMNS,
            [
                (
                    t(r["at"]),
                    r["seq"],
                    r["requested_by"],
                    r["lock_key"],
                    r["key_holder"],
                    r["path"],
                    r["reason"],
                    Md(
                        md_text(r["status"])
                        + (
                            f" by {md_text(r['decided_by'])} at {t(r['decided_at'])} "
                            f"[{r['decision_seq']}]"
                            if r["decided_by"]
                            else ""
                        )
                    ),
                    (r["result"] or "-")
                    + (" — marked a defect by " + r["defect"]["by"] if r.get("defect") else ""),
                )
                for r in rep["rollbacks"]
            ],
        )
    else:
        L.append(NO_ROLLBACKS)
    return L


def _md_tail(rep: dict[str, Any], t: Clock) -> list[str]:
    """Stuck locks, revocations, freezes, lint, chain verification and the questions left."""
    L: list[str] = []
    L += ["", "## Stuck locks, wakes and pages", ""]
    L += _table(STUCK_COLUMNS, stuck_cells(rep, t)) if rep["stuck"] else [NO_STUCK]

    L += ["", "## Revocations (with provenance)", ""]
    L += (
        _table(REVOCATION_COLUMNS, revocation_cells(rep, t))
        if rep["revocations"]
        else [NO_REVOCATIONS]
    )

    if rep["freezes"]:
        L += ["", "## Freezes", ""]
        L += _table(FREEZE_COLUMNS, freeze_cells(rep, t))

    L += ["", "## Contaminated or suspicious rows (lint)", ""]
    lint = rep["lint"]
    if not lint.get("available"):
        L.append(NO_LINT)
    else:
        L.append(
            f"{lint['checked']} rows judged by `writ lint` ("
            + ", ".join(f"{n} {k}" for k, n in sorted(lint["verdicts"].items()))
            + (f", {lint['warnings']} warning(s)" if lint["warnings"] else "")
            + "); "
            + (
                "principal kinds from the server's registry."
                if lint["registry"]
                else "principal kinds guessed from names (no registry)."
            )
        )
        L.append("")
        if lint["rows"]:
            L += _table(LINT_COLUMNS, lint_cells(rep, t, _as_is))
        else:
            L.append(LINT_CLEAN)

    L += ["", "## Chain verification", ""]
    L += verification_text(rep["verification"])

    L += [
        "",
        "## For the responders to write",
        "",
        "- Detection: how and when did people learn of it?",
        "- Customer impact and its duration.",
        "- Root cause and contributing factors (the rows above say *who* and *when*, not *why*).",
        "- Action items, each with an owner.",
        "",
    ]
    return L


def verification_text(v: dict[str, Any], esc: Callable[[Any], str] = md_text) -> list[str]:
    """Plain statements of what was verified, and what was not; the reasons (which quote
    rows) through ``esc`` (the HTML report escapes its own)."""
    hand = ((v or {}).get("changed_by_hand") or [])[:20]
    changed = [f"- **Leases table:** {esc(why)}" for why in hand]
    if not v or not v.get("rows"):
        return ["No rows, nothing to verify.", *changed]
    out = [
        f"- Each of the {v['rows']} rows used was re-hashed: hash = sha256(prev_hash + "
        f"canonical JSON of the row); {v['rows_ok']} match."
    ]
    if v.get("links"):
        out.append(
            f"- {v['links_ok']} of {v['links']} adjacent pairs with consecutive seqs link "
            "(each row's prev_hash is the hash of the row before)."
        )
    seg = v.get("segment")
    if seg and seg.get("contiguous"):
        out.append(
            f"- The rows are the whole, unbroken run of seq {seg['first']}–{seg['last']}: "
            "no row in that range is missing."
        )
    elif seg:
        out.append(
            f"- The full seq range {seg['first']}–{seg['last']} ({seg['rows']} rows, "
            "including rows on other resources) was re-verified link by link: "
            + (
                "it is unbroken, so no row in the window was removed, inserted or edited "
                "without re-hashing everything after it."
                if seg["ok"]
                else f"BROKEN — {esc(seg['reason'])}."
            )
        )
    else:
        out.append(
            "- The rows are a filtered subset too far apart to re-verify the seq range "
            "between them here; gaps between their seqs hold other resources' rows."
        )
    for b in (v.get("bad") or [])[:20]:
        out.append(f"- **Problem:** {esc(b['reason'])}")
    out += changed
    out.append(
        "- Not proven here: that rows before and after this range are intact, or that "
        "the whole chain was not rewritten and re-hashed. `writ audit verify` checks the "
        "whole chain; `writ audit verify --checkpoint FILE` proves it still extends a "
        "signed checkpoint kept elsewhere."
    )
    return out


def to_json(rep: dict[str, Any]) -> str:
    return dumps(rep, indent=2) + "\n"
