"""What writ sends when it wakes or pages someone: the request for each kind of route.

A wake or page route (a principal's ``wake``) is one of:

* ``pagerduty:<routing_key>`` — a PagerDuty Events API v2 event (``trigger``, later
  ``resolve``) with ``dedup_key`` = the lease, consent or rollback id, posted to
  ``https://events.pagerduty.com/v2/enqueue`` (or the policy's ``pagerduty_url``);
* ``slack:<incoming webhook URL>`` — a Slack message (``text`` plus one ``mrkdwn`` section)
  saying who holds what, since when, what waits, and the exact call that answers it;
* ``http(s)://…`` or ``/path`` — writ's own JSON payload, signed with
  ``Writ-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`` when the policy sets
  ``webhook_secret`` (or ``WRIT_WEBHOOK_SECRET``). Verify it with :func:`verify_signature`
  (docs/operations.md has the five lines for a receiver without writ installed).

Routing keys and webhook URLs are secrets: rows and logs show them through :func:`redact`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from writ.core.errors import Invalid
from writ.core.routes import resolve
from writ.core.wake_routes import check_wake_route as check_wake_route
from writ.core.wake_routes import redact as redact
from writ.core.wake_routes import route_kind as route_kind
from writ.core.wake_routes import wake_route_problem as wake_route_problem

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SIGNATURE_HEADER = "Writ-Signature"


@dataclass(slots=True)
class Outbound:
    """One HTTP request to make: where, what, and how to show it in a row."""

    url: str
    body: bytes
    shown: str  # the URL with its secret part hidden
    headers: dict[str, str] = field(default_factory=dict)
    signed: bool = False  # carry Writ-Signature (made per attempt, so ``t`` is fresh)


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``Writ-Signature`` header value for ``body``."""
    t = int(time.time() if now is None else now)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """True when ``header`` is a valid ``Writ-Signature`` of ``body`` made within
    ``tolerance_s`` of ``now`` (a replayed old request fails)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, given)


def subject_id(payload: dict[str, Any]) -> str | None:
    """The id a call is about (PagerDuty's ``dedup_key``): the lease, consent or rollback."""
    for key, id_key in (
        ("consent", "consent_id"),
        ("rollback", "rollback_id"),
        ("lease", "lease_id"),
    ):
        obj = payload.get(key)
        if isinstance(obj, dict) and obj.get(id_key):
            return str(obj[id_key])
    return None


def the_call(payload: dict[str, Any]) -> str:
    """The exact call that answers what a page or wake is about."""
    if isinstance(payload.get("consent"), dict):
        cid = payload["consent"].get("consent_id")
        return f"POST /v1/consents/{cid}/grant (or /deny)  ·  writ consent grant {cid}"
    if isinstance(payload.get("rollback"), dict):
        rid = payload["rollback"].get("rollback_id")
        return f"POST /v1/rollbacks/{rid}/approve (or /deny)  ·  writ rollback approve {rid}"
    lease = payload.get("lease") or {}
    lid = lease.get("lease_id")
    return (
        f'POST /v1/leases/{lid}/revoke {{"runbook": "...", "paged": "{payload.get("to")}", '
        f'"reason": "..."}}  ·  writ lease revoke {lid} --runbook ... --paged ... --reason ...'
    )


def summary(kind: str, payload: dict[str, Any]) -> str:
    """One line: who is paged or woken, why, and who holds what since when."""
    reason = payload.get("reason", "")
    line = f"writ {kind}: {payload.get('to')} — {reason}"
    lease = payload.get("lease")
    if isinstance(lease, dict):
        line += (
            f"; {lease.get('holder')} holds {lease.get('resource')} ({lease.get('lock_key')}) "
            f"since {lease.get('acquired_at')} for {lease.get('intent')!r}"
        )
    consent = payload.get("consent")
    if isinstance(consent, dict):
        line += (
            f"; {consent.get('requester')} asks to undo {consent.get('author')}'s change "
            f"{consent.get('change_id')} on {consent.get('resource')}"
        )
    rollback = payload.get("rollback")
    if isinstance(rollback, dict):
        line += (
            f"; {rollback.get('requested_by')} asks to roll back "
            f"{rollback.get('lock_key') or rollback.get('resource')} via {rollback.get('path')}"
        )
    return line


def build(
    kind: str,
    route: str,
    payload: dict[str, Any],
    *,
    base_url: str | None,
    pagerduty_url: str | None,
    secret: str | None,
    action: str = "trigger",
) -> Outbound:
    """The request for a wake/page ``route`` (see the module). Raises :class:`Invalid`
    for a route writ cannot call (relative with no base URL, a malformed pagerduty: key)."""
    rk = route_kind(route)
    problem = wake_route_problem(route)
    if problem:
        raise Invalid(f"route {redact(route)}: {problem}")
    if rk == "pagerduty":
        event: dict[str, Any] = {
            "routing_key": route[len("pagerduty:") :],
            "event_action": action,
            "dedup_key": (subject_id(payload) or "writ")[:255],
        }
        if action == "trigger":
            event["payload"] = {
                "summary": summary(kind, payload)[:1024],
                "source": "writ",
                "severity": "critical" if kind == "page" else "warning",
                "component": str(
                    (
                        payload.get("lease")
                        or payload.get("consent")
                        or payload.get("rollback")
                        or {}
                    ).get("resource", "")
                )[:255]
                or None,
                "group": "writ",
                "class": f"writ.{kind}",
                "custom_details": {**payload, "call": the_call(payload)},
            }
            event["payload"] = {k: v for k, v in event["payload"].items() if v is not None}
            event["client"] = "writ"
        url = pagerduty_url or PAGERDUTY_URL
        return Outbound(url, _json(event), redact(route), {"Content-Type": "application/json"})
    if rk == "slack":
        url = route[len("slack:") :]
        text = _slack_escaped(summary(kind, payload))
        waiting = payload.get("waiting")
        lines = [f"*{text}*"]
        if waiting is not None:
            lines.append(f"Waiting behind it: {_slack_escaped(str(waiting))}")
        lines.append(f"Answer with: `{_slack_escaped(the_call(payload))}`")
        message = {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}],
        }
        return Outbound(url, _json(message), redact(route), {"Content-Type": "application/json"})
    url = resolve(route, base_url)
    return Outbound(url, _json(payload), url, {"Content-Type": "application/json"}, bool(secret))


def _slack_escaped(text: str) -> str:
    """``text`` as Slack shows it literally: its control sequences (``<!channel>``,
    ``<@U123>``, ``<https://evil.example|approve here>``) are written with ``&``, ``<`` and
    ``>`` escaped, as Slack asks of text one does not control. A summary carries agents' words
    (an intent, a reason to wake): unescaped, they pinged the whole on-call channel or put a
    link of their choosing in writ's page."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()
