"""Routes that writ calls: rollback routes and wake routes.

A route is *literal* when it is a path beginning with ``/`` or an ``http(s)://`` URL, with no
spaces, that names what it calls — not a dashboard, console or button label, nor a page of a
well-known dashboard product even without the word (:mod:`writ.core.dashboards`) in any way a
caller, a server or a person reads it (:func:`_readings`), and one httpx, which calls it, can
call. The same test decides at acquire time (a rollback plan) and in ``writ lint``
(``rollback_path``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

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
    hosts, paths, queried = _readings(value.strip())
    if any(_smells(text) for text in (value, *hosts, *paths)):
        return "is a dashboard, console or button, not the rollback entry point"
    page = dashboard_page(value.strip(), hosts, paths, queried)
    if page:
        return f"is {page}, a page to look at, not the rollback entry point"
    absolute = value.strip().startswith(("http://", "https://"))
    try:  # and one writ can call: as httpx, which calls it, reads a URL
        _origin(value.strip() if absolute else "http://writ.invalid" + value.strip())
    except ValueError as exc:
        return f"is not a URL writ can call ({exc})"
    return None


def _smells(text: str) -> bool:
    return bool(_SMELL.search(text.replace("_", " ").replace("-", " ")))


def _readings(route: str) -> tuple[list[str], list[str], list[str]]:
    """The hosts, the paths and the decoded paths with their decoded ``?query`` a literal
    ``route`` may be read as. A dashboard in any reading is a dashboard, so each is judged:

    * the host as httpx, which calls it, connects to it (:func:`_origin`: IDNA, lower case,
      no trailing dot, no user, no port), and percent-decoded, as a browser opens it;
    * the path as given (with its ``?query`` as given), and as a server reads it:
      percent-decoded once, a backslash taken for a slash (as browsers and some servers
      do), runs of slashes merged (as nginx does), its dot segments resolved. A decoded
      query is the call's arguments, where an encoded path or words are data
      (``?target=svc%2Fd%2Fapi`` names no Grafana dashboard), so it is judged only as the
      Prometheus UI's (:func:`writ.core.dashboards.dashboard_page`);
    * the route with every backslash a slash (a browser opens ``https://host\\d\\uid`` at
      ``/d/uid``);
    * a relative route as :func:`resolve` calls it, a path, and one beginning with ``//``
      also as the URL a browser takes it for.
    """
    hosts: list[str] = []
    paths: list[str] = []
    queried: list[str] = []
    for text in dict.fromkeys((route, route.replace("\\", "/"))):
        if text.startswith(("http://", "https://")):
            urls = [(text, True)]
        else:
            urls = [("http://writ.invalid/" + text.lstrip("/"), False)]
            if text.startswith("//"):
                urls.append(("https:" + text, True))
        for url, has_host in urls:
            try:
                parts = urlsplit(url)
            except ValueError:  # only another reading of the route can fail here
                continue
            if has_host:
                try:
                    host = _origin(url)[0]
                except ValueError:  # not callable (refused as such) yet judged by its name
                    host = (parts.hostname or "").rstrip(".")
                hosts += [host, unquote(host).lower().rstrip(".")]
            query = f"?{parts.query}" if parts.query else ""
            decoded = re.sub(r"/{2,}", "/", unquote(parts.path).replace("\\", "/"))
            paths += [parts.path + query, decoded, _resolved(decoded)]
            if query:
                decoded_query = "?" + unquote(parts.query)
                queried += [decoded + decoded_query, _resolved(decoded) + decoded_query]
    return (
        [h for h in dict.fromkeys(hosts) if h],
        list(dict.fromkeys(paths)),
        list(dict.fromkeys(queried)),
    )


def _resolved(path: str) -> str:
    """``path`` with its ``.`` and ``..`` segments resolved (RFC 3986 5.2.4)."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    return "/".join(out) or "/"


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


def _origin(url: str) -> tuple[str, int | None]:
    """The host (IDNA, lower case, no trailing dot) and port (None: the scheme's own) that
    a call to ``url`` connects to, as httpx, which makes the call, reads them. Raises
    ValueError for a URL httpx would not call."""
    import httpx  # here: the readers of routes (writ lint) start without it

    try:
        u = httpx.URL(url)
        return u.raw_host.decode("ascii").lower().rstrip("."), u.port
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValueError(str(exc)) from None


def parse_host(entry: Any) -> tuple[str, int | None]:
    """An entry of the policy's ``rollback_hosts``: ``host``, ``host:port``, ``[v6]:port``,
    or ``*.domain`` (any name below domain, not domain itself), as (host, port). Raises
    ValueError saying what is wrong with it."""
    if not isinstance(entry, str) or not entry or len(entry) > 260:
        raise ValueError("must be a host name like ops.internal or ops.internal:8443")
    if not re.fullmatch(r"(\*\.)?[^\s/?#@\\*]+", entry):
        raise ValueError(
            f"{entry!r} is not a host name: write only the host and, if not the scheme's "
            "own, its port (ops.internal:8443); no scheme, path or user"
        )
    try:
        host, port = _origin("http://" + entry.removeprefix("*.") + "/")
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not a host name ({exc})") from None
    if not host:
        raise ValueError(f"{entry!r} names no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{entry!r}: a port is 1 to 65535")
    return ("*." if entry.startswith("*.") else "") + host, port


def host_problem(
    url: str, hosts: Sequence[tuple[str, int | None]] | None, base_url: str | None
) -> str | None:
    """Why writ may not call ``url`` (absolute) under the policy's ``rollback_hosts``
    (parsed by :func:`parse_host`; None: any host), or None when it may. The host of
    ``rollback_base_url`` is always allowed: relative routes are called there."""
    if hosts is None:
        return None
    try:
        host, port = _origin(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if base_url:
        with contextlib.suppress(ValueError):  # a base URL httpx cannot read allows nothing
            if (host, port) == _origin(base_url):
                return None
    for want, want_port in hosts:
        name_ok = host.endswith(want[1:]) if want.startswith("*.") else host == want
        if name_ok and port == want_port:
            return None
    shown = host if port is None else f"{host}:{port}"
    return (
        f"calls {shown}, which the policy's rollback_hosts does not list "
        "(writ calls rollback routes only on the hosts the policy names)"
    )
