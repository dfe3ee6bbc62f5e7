"""Settings and response decoding shared by both clients: URL, token, timeout, the typed errors."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from writ._version import __version__
from writ.client._routes import _Req
from writ.client._wire import object_of
from writ.core.errors import (
    Invalid,
    LeaseLost,
    Unauthenticated,
    Unavailable,
    WritError,
    error_from_body,
)

log = logging.getLogger("writ.client")
log.addHandler(logging.NullHandler())  # a library: silent unless the application logs

DEFAULT_URL = "http://127.0.0.1:7411"
DEFAULT_TIMEOUT = 10.0
WATCH_WAIT_S = 25.0  # long-poll length of watch(): under the server's 300 s cap
OnLost = Callable[[LeaseLost], None]


def _normalize_url(url: str) -> str:
    """The server's URL, as httpx will use it; :class:`Invalid` (``field`` ``url``) for one it
    will not build (``http://127.0.0.1:abc``, ``http://[::1``: httpx's ``InvalidURL`` was a
    traceback), one with no host (``//host``, ``http:////user:pw@host``) or one carrying
    credentials. The URL is never quoted in these errors: it may hold a password."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise _credentials()
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded here: "xn--.com" is an IDNAError, a ValueError
    except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError (a bad IDNA label) too
        raise Invalid(
            f"the writ server's URL cannot be used: {exc} (set WRIT_URL or --url to a URL "
            "like http://127.0.0.1:7411)",
            field="url",
        ) from None
    if parsed.userinfo:
        raise _credentials()
    if not host:
        # "//user:pw@host" became "http:////user:pw@host": no host, and the rest a path
        raise Invalid(
            "the writ server's URL names no host (set WRIT_URL or --url to a URL like "
            "http://127.0.0.1:7411)",
            field="url",
        )
    return url


def _credentials() -> Invalid:
    # httpx sent them as Basic credentials in place of the bearer token, and every message
    # naming the server quoted the password; refused, never quoted
    return Invalid(
        "the writ server's URL carries credentials (user:password@): writ authenticates "
        "with the bearer token (--token, WRIT_TOKEN); remove them from the URL",
        field="url",
    )


def _seconds(value: float, field: str) -> float:
    """A timeout: a finite number of seconds above 0 (NaN made every call fail with a
    ``ValueError`` out of httpx, an infinity with an ``OverflowError``)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not (math.isfinite(out) and out > 0):
        raise Invalid(
            f"{field} must be a finite number of seconds above 0, not {value!r}", field=field
        )
    return out


def refused(exc: WritError) -> bool:
    """A refusal that asking again will not change: writ's own 4xx, but not 408 (the request
    took too long) nor 429 (too many requests), which are refusals for now, like a 5xx. A 4xx
    that is not writ's error object (an ingress's 404 page mid-deploy) is for now too."""
    foreign = vars(exc).get("foreign", False)
    return 400 <= exc.status < 500 and exc.status not in (408, 429) and not foreign


class _Base:
    """Settings and response decoding shared by both clients.

    A request that may wait (``wait_s`` > 0: a queued acquire, a long poll of events or of a
    consent) goes through a connection pool of its own, made at the first: sharing one, a
    hundred long polls took every connection, and a lease's renewal waited behind them until
    it failed "not reachable", and the lease was lost."""

    def __init__(
        self, url: str | None, token: str | None, timeout: float, headers: Mapping[str, str] | None
    ) -> None:
        self.url = _normalize_url(url or os.environ.get("WRIT_URL") or DEFAULT_URL)
        self.token = token if token is not None else (os.environ.get("WRIT_TOKEN") or None)
        self.timeout = _seconds(timeout, "timeout")
        self._headers = {"User-Agent": f"writ-python/{__version__}", **(headers or {})}
        if self.token:
            # a header value carries printable ASCII only; refused here, never echoed (the
            # HTTP library's own refusal, "Illegal header value b'Bearer writ_…\\r'", printed
            # the whole token in the error, and so in the CLI's output and MCP tool results)
            if not all("\x21" <= ch <= "\x7e" for ch in self.token):
                raise Invalid(
                    "the token has characters a bearer token cannot have (a space, a line end "
                    "or a character that is not ASCII: was it read with its newline?)",
                    field="token",
                )
            self._headers["Authorization"] = f"Bearer {self.token}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def _timeout_for(self, req: _Req) -> float:
        base = self.timeout if req.timeout is None else req.timeout
        return base + max(req.wait_s, 0.0)

    def _unavailable(self, req: _Req, exc: Exception) -> Unavailable:
        if isinstance(exc, httpx.PoolTimeout):  # the server was never asked
            why = f"no free connection in this client's pool within {self._timeout_for(req):g}s"
        elif isinstance(exc, httpx.TimeoutException | TimeoutError):
            why = f"no whole answer within {self._timeout_for(req):g}s"
        elif isinstance(exc, httpx.DecodingError):
            why = f"an answer that does not decode as its Content-Encoding says: {exc}"
        else:
            why = str(exc) or type(exc).__name__
        return Unavailable(
            f"writ server not reachable at {self.url} ({req.method} {req.path}: {why}); "
            "is `writ serve` running there? (set WRIT_URL or --url)",
            url=self.url,
        )

    def _decode(self, response: httpx.Response, content: bytes, req: _Req) -> Any:
        body = object_of(response, content, self.url, f"{req.method} {req.path}")
        if response.is_success:
            return body
        err = error_from_body(response.status_code, body)
        if isinstance(err, Unauthenticated) and not self.token:
            err.message = f"{err.message} (no token given: set WRIT_TOKEN or pass --token)"
            err.fact = err.message
            err.args = (err.message,)
        raise err
