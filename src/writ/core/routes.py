"""Routes that writ calls: rollback routes and wake routes.

A route is *literal* when it is a path beginning with ``/`` or an ``http(s)://`` URL, with no
spaces, that names what it calls — not a dashboard, console or button label, nor a page of a
well-known dashboard product even without the word (:mod:`writ.core.dashboards`). The same test
decides at acquire time (a rollback plan) and in ``writ lint`` (``rollback_path``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from writ.core.dashboards import dashboard_page
from writ.core.errors import Invalid

# a path or an http(s) URL with a host, and no whitespace anywhere. Written so that no two
# quantifiers take the same characters: "[^\s/]+" before "\S*" took time in the square of
# the length on a route with a space at its end (100 KB: 32 s of the event loop)
_ROUTE = re.compile(r"^(?:/|https?://[^\s/])\S*$")
MAX_ROUTE = 4096  # characters: a route is a URL, and every check of it is linear up to here
_SMELL = re.compile(r"\b(dashboard|console|button|portal|click|ui)\b", re.I)


def route_problem(value: Any) -> str | None:
    """Why ``value`` is not a literal route, or None when it is one."""
    if isinstance(value, str) and len(value) > MAX_ROUTE:
        return f"is longer than {MAX_ROUTE} characters, which no route writ calls needs"
    if not isinstance(value, str) or not _ROUTE.match(value.strip()):
        return "is not a literal route (a path beginning with '/' or an http(s):// URL)"
    try:
        urlsplit(value.strip())
    except ValueError as exc:  # "http://[::1": a bracketed host that does not end
        return f"is not a valid URL ({exc})"
    if _SMELL.search(value.replace("_", " ").replace("-", " ")):
        return "is a dashboard, console or button, not the rollback entry point"
    page = dashboard_page(value.strip())
    if page:
        return f"is {page}, a page to look at, not the rollback entry point"
    return None


def check_route(value: Any, field: str) -> str:
    """``value`` stripped, or :class:`Invalid` saying why it is not a literal route."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(
            f"{field} must be a route like /ops/rollback?txn=8841 or https://...", field=field
        )
    problem = route_problem(value)
    if problem:
        shown = value if len(value) <= 200 else value[:200] + "..."
        raise Invalid(
            f"{field} {shown!r} {problem}: name the literal route writ should call",
            field=field,
        )
    return value.strip()


def resolve(route: str, base_url: str | None) -> str:
    """An absolute URL for a route (relative ones are called against ``base_url``)."""
    if route.startswith(("http://", "https://")):
        return route
    if not base_url:
        raise Invalid(
            f"route {route!r} is relative and the policy sets no rollback_base_url to call it against"
        )
    return base_url.rstrip("/") + "/" + route.lstrip("/")
