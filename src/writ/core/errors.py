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

A refusal's *fact* (who holds it, whose change stands in the way) is the same everywhere; the
*next step* is phrased by each surface in its own terms (:func:`next_step`): HTTP names a
route and a field (``retry with wait_s > 0``), the CLI a command and a flag (``--wait``), the
Python client a call (``client.lease(..., wait_s=30)``); the MCP server words its own tool
guidance from the same details. The engine's messages end with the HTTP step (that is the
wire's ``message``); ``err.fact`` is the message without it, and the client puts its own step on.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any, ClassVar, Literal

__all__ = [
    "Conflict",
    "ConsentRequired",
    "Forbidden",
    "Frozen",
    "Held",
    "Invalid",
    "LeaseLost",
    "NotFound",
    "PolicyError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "WritError",
    "error_from_body",
    "next_step",
]

Surface = Literal["http", "cli", "python"]


class WritError(Exception):
    """Root of every writ error. ``code`` and ``status`` are the wire contract."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.fact = message  # the message without its next step (see phrased())
        http = next_step(self, "http")
        for sep, step in (("; ", http), (" ", http and http[0].upper() + http[1:])):
            if step and message.endswith(sep + step):
                self.fact = message[: -len(step) - len(sep)]
                break

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.details.items() if v is not None)
        return f"{type(self).__name__}({self.message!r}{', ' + shown if shown else ''})"

    def phrased(self, surface: Surface, **context: Any) -> str:
        """The fact, then the next step in ``surface``'s own terms (see :func:`next_step`)."""
        step = next_step(self, surface, **context)
        if not step:
            return self.fact
        return (
            f"{self.fact} {step[0].upper()}{step[1:]}"
            if self.fact.endswith(".")
            else (f"{self.fact}; {step}")
        )

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of PROTOCOL.md: ``{"error": {"code", "message", ...details}}``;
        the message ends with the next step in HTTP terms."""
        return {"error": {"code": self.code, "message": self.phrased("http"), **self.details}}

    def retry_after(self) -> int | None:
        """Seconds for the ``Retry-After`` header of this answer (503, and 409 ``held``:
        until the blocker's expiry, at least 1, at most an hour), or None."""
        if self.status == 503:
            return 1
        if self.code == "held":
            at = self.details.get("retry_at")
            if not at:
                return 1
            try:  # an RFC 3339 time we wrote (writ.core.clock.rfc3339): no import of clock,
                # which imports this module
                when = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
                left = when.timestamp() - time.time()
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


class PolicyError(Invalid):
    """A policy file that cannot be used; ``line`` is 1-based when known."""

    def __init__(self, path: str, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}", path=path, line=line)
        self.line = line
        self.reason = reason


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


def _change_id(details: dict[str, Any]) -> str:
    change = details.get("change")
    if isinstance(change, dict) and isinstance(change.get("change_id"), str):
        return str(change["change_id"])
    return "CHANGE_ID"


def next_step(err: WritError, surface: Surface, **context: Any) -> str | None:
    """What to do next after ``err``, phrased for ``surface`` (None: no step to suggest).

    ``context`` (CLI): ``resource`` asked for, ``waited`` seconds already spent in the queue,
    ``me`` the caller's name (a held answer naming the caller says so).
    """
    d = err.details
    if isinstance(err, Held):
        given = d.get("holder")
        holder: dict[str, Any] = given if isinstance(given, dict) else {}
        delay = d.get("reason") == "lock_delay"
        if surface == "http":
            return (
                "retry with wait_s > 0; the lock-delay ends by itself"
                if delay
                else "retry with wait_s > 0 to queue for it"
            )
        if surface == "python":
            return "pass wait_s (up to 300) to client.lease() or client.acquire() to wait" + (
                " for the lock-delay to end" if delay else " in the FIFO queue for it"
            )
        if context.get("me") and holder.get("holder") == context["me"]:
            return (
                f"that is you ({context['me']}): release your lease first "
                f"(writ release {holder.get('lease_id', 'LEASE_ID')})"
                if holder.get("lease_id")
                else f"that is you ({context['me']}): release your own lease first (writ release)"
            )
        waited = context.get("waited") or 0
        if waited:
            return (
                f"still held after --wait {waited:g}s: wait longer (--wait, up to 300), or ask "
                "a human on-call queue to revoke a stuck holder (writ revoke)"
            )
        return (
            "wait with --wait SECONDS (up to 300) for the lock-delay to end"
            if delay
            else "add --wait SECONDS (up to 300) to queue for it in arrival order"
        )
    if isinstance(err, ConsentRequired):
        cid = _change_id(d)
        if surface == "http":
            return (
                f'ask first: POST /v1/consents {{"change_id": "{cid}", "reason": ...}}, '
                "then retry with the granted consent_id"
            )
        if surface == "python":
            return (
                f"ask first: client.ask_consent({cid!r}, reason=...), wait with "
                "client.consent(consent_id, wait_s=...), then retry with consent_id=..."
            )
        return (
            f'ask first: writ consent ask {cid} --reason "..." --wait 120, then retry with '
            "--consent CONSENT_ID"
        )
    return None


def error_from_body(status: int, body: Any, surface: Surface = "python") -> WritError:
    """Rebuild the typed error from a response body (used by the client): its ``message``
    is the fact and ``surface``'s next step instead of the HTTP one."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):  # not writ's words (a proxy's page, say): for now only
        out = _answered(WritError(f"HTTP {status}: {str(body)[:200]}"), status, None)
        vars(out)["foreign"] = True
        return out
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    code = err.get("code")
    cls = _BY_CODE.get(str(code), WritError)
    out = cls(str(err.get("message", "")), **details)
    if out.fact != out.message:  # it ends with the HTTP step: word it for this surface
        out.message = out.phrased(surface)
        out.args = (out.message,)
    return _answered(out, status, code if cls is WritError else None)


def _answered(err: WritError, status: int, code: Any) -> WritError:
    """``err`` with the answer's own HTTP status, and the code of one no class has
    (``too_many_requests`` 429, ``timeout`` 408): they read as ``error`` 500."""
    if 400 <= status <= 599:
        vars(err)["status"] = status  # on this error only: the class keeps its own
    if isinstance(code, str) and code:
        vars(err)["code"] = code
    return err
