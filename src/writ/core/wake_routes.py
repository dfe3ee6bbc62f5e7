"""Wake and page routes: the kinds a principal's ``wake`` may name, how one is checked, and how
rows and logs show it (:func:`redact`: routing keys and webhook URLs are secrets). What writ sends
to each kind is :mod:`writ.engine.wake_payloads`.
"""

from __future__ import annotations

import re
from typing import Any

from writ.core.errors import Invalid
from writ.core.routes import check_route

_PD_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_SLACK = re.compile(r"^https?://[^\s/]+/\S*$")


def route_kind(route: str) -> str:
    """``pagerduty``, ``slack`` or ``http``."""
    if route.startswith("pagerduty:"):
        return "pagerduty"
    if route.startswith("slack:"):
        return "slack"
    return "http"


def wake_route_problem(route: str) -> str | None:
    """Why ``route`` is not a pagerduty: or slack: route (None if it is one, or neither)."""
    kind = route_kind(route)
    if kind == "pagerduty" and not _PD_KEY.match(route[len("pagerduty:") :]):
        return "pagerduty: needs the integration's routing key (8-128 of A-Z a-z 0-9 _ -)"
    if kind == "slack" and not _SLACK.match(route[len("slack:") :]):
        return "slack: needs the incoming webhook's https:// URL"
    return None


def check_wake_route(value: Any, field: str = "wake") -> str:
    """A principal's wake route: a literal route (:func:`writ.core.routes.check_route`), or
    ``pagerduty:<routing_key>`` or ``slack:<webhook URL>``; :class:`Invalid` otherwise."""
    if isinstance(value, str) and route_kind(value.strip()) != "http":
        problem = wake_route_problem(value.strip())
        if problem:
            raise Invalid(f"{field} {redact(value.strip())}: {problem}", field=field)
        return value.strip()
    return check_route(value, field)


def redact(route: str | None) -> str:
    """A route as rows and logs may show it: secrets (routing keys, webhook paths) hidden."""
    if not route:
        return "(none)"
    kind = route_kind(route)
    if kind == "pagerduty":
        return "pagerduty:…" + route[-4:]
    if kind == "slack":
        m = re.match(r"^slack:(https?://[^\s/]+)", route)
        return f"slack:{m.group(1) if m else ''}/…"
    return route
