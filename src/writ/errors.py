"""The one exception tree of writ.

Every error writ raises — in the engine, a store, the server or the client — is a
:class:`WritError`. Each protocol error code is one class, carrying its HTTP status as a
class attribute, so the server maps errors to responses in one place and the client maps
responses back to the same classes::

    WritError
    ├── Invalid            422  invalid           bad input: what was wrong and what to do
    ├── Unauthenticated    401  unauthenticated   missing or unknown token
    ├── Forbidden          403  forbidden         the caller's kind or identity may not do this
    ├── NotFound           404  not_found         no such lease, principal, consent, ...
    ├── Conflict           409                    (base of the two refusals below)
    │   ├── Held           409  held              a conflicting lease is held; names the holder
    │   └── ConsentRequired 409 consent_required  a protected change stands in the way
    ├── LeaseLost          410  lease_lost        the lease expired, was revoked or released
    ├── TooLarge           413  too_large         request body or header too large
    ├── Frozen             423  frozen            a human froze the prefix
    └── Unavailable        503  unavailable       the store cannot be reached right now

Errors take structured details (``holder=...``, ``queue_position=...``) which travel in
the JSON error body next to ``code`` and ``message``.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "ConsentRequired",
    "Forbidden",
    "Frozen",
    "Held",
    "Invalid",
    "LeaseLost",
    "NotFound",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "WritError",
    "error_from_body",
]


class WritError(Exception):
    """Root of every writ error. ``code`` and ``status`` are the wire contract."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of PROTOCOL.md: ``{"error": {"code", "message", ...details}}``."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}

    def retry_after(self) -> int | None:
        """Seconds for the ``Retry-After`` header of this answer (503, and 409 ``held``:
        until the blocker's expiry, at least 1, at most an hour), or None."""
        if self.status == 503:
            return 1
        if self.code == "held":
            at = self.details.get("retry_at")
            if not at:
                return 1
            from .clock import parse_time

            try:
                left = parse_time(str(at)) - time.time()
            except Exception:  # a detail we wrote ourselves; never fail an answer on it
                return 1
            return min(max(math.ceil(left), 1), 3600)
        return None

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(name)


class Invalid(WritError):
    code = "invalid"
    status = 422


class Unauthenticated(WritError):
    code = "unauthenticated"
    status = 401


class Forbidden(WritError):
    code = "forbidden"
    status = 403


class NotFound(WritError):
    code = "not_found"
    status = 404


class Conflict(WritError):
    code = "conflict"
    status = 409


class Held(Conflict):
    code = "held"


class ConsentRequired(Conflict):
    code = "consent_required"


class LeaseLost(WritError):
    code = "lease_lost"
    status = 410


class TooLarge(WritError):
    code = "too_large"
    status = 413


class Frozen(WritError):
    code = "frozen"
    status = 423


class Unavailable(WritError):
    code = "unavailable"
    status = 503


_BY_CODE: dict[str, type[WritError]] = {
    cls.code: cls
    for cls in (
        Invalid,
        Unauthenticated,
        Forbidden,
        NotFound,
        Held,
        ConsentRequired,
        LeaseLost,
        TooLarge,
        Frozen,
        Unavailable,
    )
}


def error_from_body(status: int, body: Any) -> WritError:
    """Rebuild the typed error from a response body (used by the client)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        exc = WritError(f"HTTP {status}: {str(body)[:200]}")
        return exc
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    cls = _BY_CODE.get(str(err.get("code")), WritError)
    return cls(str(err.get("message", "")), **details)
