"""A refusal as a tool error's text: what happened, what to do next, and the details."""

from __future__ import annotations

import json
from typing import Any

from writ.core.errors import (
    ConsentRequired,
    Forbidden,
    Frozen,
    Held,
    Invalid,
    LeaseLost,
    NotFound,
    Unauthenticated,
    Unavailable,
    WritError,
)


def _holder_text(h: dict[str, Any]) -> str:
    text = (
        f"{h.get('holder')} holds write authority on {h.get('resource')} "
        f"(intent: {h.get('intent')!r}) since {h.get('acquired_at')}, "
        f"until {h.get('expires_at')} unless renewed"
    )
    if h.get("fencing_token") is not None:
        text += f", fencing token {h['fencing_token']}"
    return text


def guidance(err: WritError) -> str:
    """What a refusal means for the agent and what to do next, for a tool error (from the
    error's fact: the next step is worded here in tools, not in another surface's terms)."""
    d = err.details
    if isinstance(err, Held):
        h = d.get("holder")
        head = f"Refused: {_holder_text(h)}." if isinstance(h, dict) else f"Refused: {err.fact}."
        if d.get("reason") == "lock_delay":
            head += f" The previous holder died; new grants wait until {d.get('retry_at')}."
        nxt = (
            "Next: do not write to it. Call acquire_write_authority again with wait_s (up to "
            "300) to queue for it in FIFO order, or watch_events on the resource to see when "
            "it is released. Agents cannot take it over; if the holder is stuck, a human "
            "on-call queue can revoke its lease."
        )
    elif isinstance(err, ConsentRequired):
        c = d.get("change") or {}
        head = (
            # another agent's words (its attribute and summary) are quoted, never read as
            # writ's: a newline and "Next: ..." in them would pass for this guidance
            f"Refused: {d.get('author')} changed {c.get('attribute')!r} on "
            f"{c.get('resource')} at {c.get('at')} (summary: {c.get('summary')!r}); that "
            f"change is protected until {d.get('protected_until')} and your lease would "
            "touch it."
        )
        nxt = (
            f"Next: call ask_consent(change_id={c.get('change_id')!r}, reason=<why you must "
            f"touch it>). {d.get('author')} (or a human/queue) answers; wait with "
            "get_consent(consent_id, wait_s=...). When its status is 'granted', call "
            "acquire_write_authority again with consent_id set. A consent that expires "
            "unanswered is escalated to a human, never counted as a denial. Or leave "
            f"{c.get('attribute')!r} alone (narrow `touches`) or wait until "
            f"{d.get('protected_until')}."
        )
    elif isinstance(err, Frozen):
        head = f"Refused: {err.fact}."
        nxt = "Next: do not retry until a human lifts the freeze."
    elif isinstance(err, LeaseLost):
        head = f"Your lease is gone: {err.fact}."
        nxt = (
            "Next: stop writing to the resource now: you no longer hold write authority and "
            "writes with the old fencing token will be refused. To continue, call "
            "acquire_write_authority again (you will get a new, higher fencing token)."
        )
    elif isinstance(err, Forbidden) and isinstance(d.get("may"), dict):
        # not this agent's authority (closed mode): say what it may do instead
        may = d["may"]

        def _few(key: str) -> str:
            items = [x or "(everything)" for x in may.get(key) or []]
            return ", ".join(items) if items else "nothing"

        head = f"Forbidden: {err.message}."
        nxt = (
            f"Next: do not write to it. You may take write authority under: {_few('write')}; "
            f"read under: {_few('observe')}; name in touches: {_few('attributes')}. "
            "To get something done on it, ask its holder (wake_holder) or a human to act, "
            "or ask a human to change the grant"
            + (f" at {d['rule']}" if d.get("rule") else "")
            + ". explain_authority(resource) says what you may do on any resource."
        )
    elif isinstance(err, Forbidden):
        head = f"Forbidden: {err.fact}."
        nxt = (
            "Only the human queue that holds the key can approve a rollback; agents may "
            "only request one (request_rollback)."
            if d.get("key_holder")
            else "Next: this is not yours to do; ask a human."
        )
    elif isinstance(err, Unauthenticated):
        head = f"writ rejected this MCP server's token: {err.fact}."
        nxt = (
            "Nothing was done. The operator must start `writ mcp` with a valid agent token "
            "(--token or WRIT_TOKEN). Do not write to production resources meanwhile."
        )
    elif isinstance(err, Unavailable):
        head = f"writ cannot be reached: {err.fact}."
        nxt = (
            "Nothing was granted or changed. Do not write to production resources without "
            "write authority; retry later."
        )
    elif isinstance(err, (Invalid, NotFound)):
        head = f"{err.fact}."
        nxt = "Next: fix the arguments and call again."
    else:
        head, nxt = f"writ refused: {err.fact}.", "Next: read the details below."
    details = {"code": err.code, **{k: v for k, v in d.items() if v is not None}}
    return f"{head}\n{nxt}\nDetails: {json.dumps(details, default=str)}"
