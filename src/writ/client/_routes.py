"""The protocol routes of PROTOCOL.md as one generic class shared by the sync and async clients,
and the request value and quoting helpers they use."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from writ.core.errors import (
    Invalid,
)
from writ.core.validate import check_body, check_text

JSON = dict[str, Any]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Req:
    """One protocol call: what :meth:`_Routes._send` turns into an HTTP request."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: Any = None
    wait_s: float = 0.0  # the server may hold the request this long: added to the timeout
    timeout: float | None = None  # overrides the client's timeout


def _check(req: _Req) -> None:
    """Refuse, before anything is sent, a query or body holding a string that is not text
    (:func:`writ.core.validate.check_body`, the server's own check) or a number JSON has no
    word for (NaN, an infinity, ``1e400`` as read), in a body, a query, a wait or a timeout:
    the CLI and the MCP tools get a 422's message without a request, and no encoder fails
    half-way (``wait_s=inf`` was an ``OverflowError`` out of httpx)."""
    waits = {"wait_s": req.wait_s, "timeout": req.timeout}
    for name, value in {**waits, **(req.params or {})}.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(
                f"{req.method} {req.path}: {name} is {value}, not a finite number", field=name
            )
    if req.params:
        check_body(dict(req.params))
    if req.body is not None:
        check_body(req.body)
        try:
            json.dumps(req.body, allow_nan=False)
        except ValueError:
            raise Invalid(
                f"{req.method} {req.path}: a number in the request is not finite (NaN or an "
                "infinity), which JSON cannot carry"
            ) from None


def _unsendable(req: _Req, exc: Exception) -> Invalid:
    """A request httpx will not build (a URL too long: a resource of 70,000 characters)."""
    return Invalid(f"{req.method} {req.path[:200]}: this request cannot be sent ({exc})")


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _path(value: str) -> str:
    """Quote a resource for a URL path (it keeps its ``/``). A ``.`` or ``..`` segment is
    refused here, as the server would: sent as is, the URL would be resolved on the way
    (``prod/../secrets`` asking about ``secrets``)."""
    text = str(value)
    check_text(text, "resource")
    if any(seg in (".", "..") for seg in text.split("/")):
        raise Invalid(
            f"resource {text!r}: a segment may not be '.' or '..' (paths are never resolved)",
            field="resource",
        )
    return quote(text, safe="/")


def _id(value: str) -> str:
    """Quote an id for one URL path segment: ``/``, ``?``, ``#`` and ``%`` are escaped, and
    an id that is ``.`` or ``..`` is sent with its dots escaped, so no id is ever resolved
    into another path. An empty id is refused: sent, ``/v1/leases/`` was answered with a
    redirect, blamed on the URL."""
    check_text(str(value), "id")
    if not str(value):
        raise Invalid("the id is empty: give the id writ answered with", field="id")
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


def _names(value: Iterable[str] | None, field: str) -> list[str] | None:
    """A list argument (``touches``, ``queues``, ``allow``, ...) as a list; a lone string is
    refused, never read one name per character (``touches="capacity"`` was sent as
    ``["c", "a", "p", ...]``, and a consent check on ``capacity`` was never made)."""
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray | memoryview):
        raise Invalid(
            f"{field} is one string ({reprlib.repr(value)}), not a list of names: "
            f"pass {field}=[...]",
            field=field,
        )
    try:
        return list(value)
    except TypeError:
        raise Invalid(
            f"{field} must be a list of names, not {type(value).__name__}", field=field
        ) from None


def _renew_req(lease_id: str, ttl_s: float | None = None, timeout: float | None = None) -> _Req:
    body = _drop_none({"ttl_s": ttl_s})
    return _Req("POST", f"/v1/leases/{_id(lease_id)}/renew", body=body, timeout=timeout)


class _Routes(Generic[R]):
    """The protocol routes of PROTOCOL.md, one method each, shared by both clients."""

    url: str
    token: str | None
    timeout: float

    def _send(self, req: _Req) -> R:  # pragma: no cover - defined by each client
        raise NotImplementedError

    # ---- health and principals -------------------------------------------------------
    def health(self) -> R:
        """``GET /v1/health`` (no token needed)."""
        return self._send(_Req("GET", "/v1/health"))

    def add_principal(
        self,
        name: str,
        kind: str,
        vendor: str | None = None,
        wake: str | None = None,
        admin: bool = False,
        queues: list[str] | None = None,
        expires_in_s: float | None = None,
    ) -> R:
        """``POST /v1/principals`` (admin only): the answer carries the token, shown once.
        ``queues``: a human's on-call queues; ``expires_in_s``: when its token ends."""
        body = _drop_none(
            {
                "name": name,
                "kind": kind,
                "vendor": vendor,
                "wake": wake,
                "queues": _names(queues, "queues") or None,
                "expires_in_s": expires_in_s,
            }
        )
        if admin:
            body["admin"] = True
        return self._send(_Req("POST", "/v1/principals", body=body))

    def rotate_principal(self, name: str, expires_in_s: float | None = None) -> R:
        """``POST /v1/principals/{name}/rotate`` (an admin, or the principal itself): a new
        token, shown once; the old one is refused from now on."""
        body = _drop_none({"expires_in_s": expires_in_s})
        return self._send(_Req("POST", f"/v1/principals/{_id(name)}/rotate", body=body))

    def disable_principal(self, name: str, reason: str) -> R:
        """``POST /v1/principals/{name}/disable`` (admin): its token is refused, its held
        leases revoked, its queued requests dropped."""
        return self._send(
            _Req("POST", f"/v1/principals/{_id(name)}/disable", body={"reason": reason})
        )

    def enable_principal(self, name: str, expires_in_s: float | None = None) -> R:
        """``POST /v1/principals/{name}/enable`` (admin): back, with a fresh token."""
        body = _drop_none({"expires_in_s": expires_in_s})
        return self._send(_Req("POST", f"/v1/principals/{_id(name)}/enable", body=body))

    def principal_queues(
        self, name: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> R:
        """``POST /v1/principals/{name}/queues`` (admin): a human's queue membership."""
        body = {"add": _names(add, "add") or [], "remove": _names(remove, "remove") or []}
        return self._send(_Req("POST", f"/v1/principals/{_id(name)}/queues", body=body))

    def principals(self) -> R:
        """``GET /v1/principals``: every principal, without tokens."""
        return self._send(_Req("GET", "/v1/principals"))

    def whoami(self) -> R:
        """``GET /v1/whoami``: the principal this client's token belongs to."""
        return self._send(_Req("GET", "/v1/whoami"))

    def policy(self) -> R:
        """``GET /v1/policy``: the policy the server runs with."""
        return self._send(_Req("GET", "/v1/policy"))

    # ---- leases ----------------------------------------------------------------------
    def acquire(
        self,
        resource: str,
        intent: str,
        ttl_s: float = 30,
        wait_s: float = 0,
        touches: list[str] | None = None,
        consent_id: str | None = None,
        rollback: Mapping[str, Any] | None = None,
    ) -> R:
        """``POST /v1/leases``: the Lease, after waiting up to ``wait_s`` in the FIFO queue.

        Raises :class:`~writ.Held` (``holder``, ``queue_position``),
        :class:`~writ.ConsentRequired` or :class:`~writ.Frozen` when refused.
        """
        body = _drop_none(
            {
                "resource": resource,
                "intent": intent,
                "ttl_s": ttl_s,
                "wait_s": wait_s,
                "touches": _names(touches, "touches"),
                "consent_id": consent_id,
                "rollback": dict(rollback) if rollback is not None else None,
            }
        )
        return self._send(_Req("POST", "/v1/leases", body=body, wait_s=float(wait_s or 0)))

    def renew(self, lease_id: str, ttl_s: float | None = None) -> R:
        """``POST /v1/leases/{id}/renew``; :class:`~writ.LeaseLost` once it is gone."""
        return self._send(_renew_req(lease_id, ttl_s))

    def release(self, lease_id: str) -> R:
        """``POST /v1/leases/{id}/release``; :class:`~writ.LeaseLost` if already lost."""
        # no body: a release as plain as the lean path takes (and relays to a host's writer)
        return self._send(_Req("POST", f"/v1/leases/{_id(lease_id)}/release"))

    def revoke(
        self,
        lease_id: str,
        runbook: str,
        paged: str,
        reason: str,
        waive_lock_delay: bool = False,
    ) -> R:
        """``POST /v1/leases/{id}/revoke``: force-release, humans and queues only."""
        body: dict[str, Any] = {"runbook": runbook, "paged": paged, "reason": reason}
        if waive_lock_delay:
            body["waive_lock_delay"] = True
        return self._send(_Req("POST", f"/v1/leases/{_id(lease_id)}/revoke", body=body))

    def get_lease(self, lease_id: str) -> R:
        """``GET /v1/leases/{id}``: one Lease in any state."""
        return self._send(_Req("GET", f"/v1/leases/{_id(lease_id)}"))

    def leases(
        self, resource: str | None = None, state: str | None = None, limit: int | None = None
    ) -> R:
        """``GET /v1/leases``: ``{"leases": [...]}`` under a resource prefix."""
        params = _drop_none({"resource": resource, "state": state, "limit": limit})
        return self._send(_Req("GET", "/v1/leases", params=params))

    def status(self, resource: str | None = None, limit: int | None = None) -> R:
        """``GET /v1/status``: held leases under a prefix, each with its ``waiters`` count."""
        params = _drop_none({"resource": resource, "limit": limit})
        return self._send(_Req("GET", "/v1/status", params=params))

    def resource(self, resource: str) -> R:
        """``GET /v1/resources/{resource}``: its lease, queue, protected changes, freeze."""
        return self._send(_Req("GET", f"/v1/resources/{_path(resource)}"))

    def who(self, resource: str, at: str | float | None = None) -> R:
        """``GET /v1/who``: who held ``resource`` at ``at`` (default now), from the ledger."""
        params = _drop_none({"resource": resource, "at": at})
        return self._send(_Req("GET", "/v1/who", params=params))

    def fence(self, resource: str, token: int) -> R:
        """``GET /v1/fence``: is ``token`` the current fencing token of ``resource``?"""
        return self._send(_Req("GET", "/v1/fence", params={"resource": resource, "token": token}))

    # ---- changes, consent, rollback ----------------------------------------------------
    def change(
        self,
        lease_id: str,
        attribute: str,
        summary: str,
        before: Any = None,
        after: Any = None,
        protect_s: float | None = None,
    ) -> R:
        """``POST /v1/leases/{id}/changes``: record a (protected) change, holder only."""
        body = _drop_none(
            {
                "attribute": attribute,
                "summary": summary,
                "before": before,
                "after": after,
                "protect_s": protect_s,
            }
        )
        return self._send(_Req("POST", f"/v1/leases/{_id(lease_id)}/changes", body=body))

    def get_change(self, change_id: str) -> R:
        """``GET /v1/changes/{id}``: a recorded change and its protection."""
        return self._send(_Req("GET", f"/v1/changes/{_id(change_id)}"))

    def ask_consent(self, change_id: str, reason: str) -> R:
        """``POST /v1/consents``: ask a change's author to let you undo it."""
        body = {"change_id": change_id, "reason": reason}
        return self._send(_Req("POST", "/v1/consents", body=body))

    def grant_consent(self, consent_id: str) -> R:
        """``POST /v1/consents/{id}/grant``: by the author, or a human or queue."""
        return self._send(_Req("POST", f"/v1/consents/{_id(consent_id)}/grant", body={}))

    def deny_consent(self, consent_id: str) -> R:
        """``POST /v1/consents/{id}/deny``: by the author, or a human or queue."""
        return self._send(_Req("POST", f"/v1/consents/{_id(consent_id)}/deny", body={}))

    def consent(self, consent_id: str, wait_s: float = 0) -> R:
        """``GET /v1/consents/{id}``; with ``wait_s`` long-polls until it is answered."""
        params = {"wait_s": wait_s} if wait_s else None
        return self._send(
            _Req("GET", f"/v1/consents/{_id(consent_id)}", params=params, wait_s=float(wait_s))
        )

    def request_rollback(
        self, reason: str, lease_id: str | None = None, change_id: str | None = None
    ) -> R:
        """``POST /v1/rollbacks``: anyone may ask; only the key-holder queue approves."""
        if (lease_id is None) == (change_id is None):
            raise Invalid("give exactly one of lease_id or change_id", field="lease_id")
        body = _drop_none({"lease_id": lease_id, "change_id": change_id, "reason": reason})
        return self._send(_Req("POST", "/v1/rollbacks", body=body))

    def get_rollback(self, rollback_id: str) -> R:
        """``GET /v1/rollbacks/{id}``: a rollback request and its outcome."""
        return self._send(_Req("GET", f"/v1/rollbacks/{_id(rollback_id)}"))

    def rollbacks(self, status: str | None = None, limit: int | None = None) -> R:
        """``GET /v1/rollbacks``: ``{"rollbacks": [...]}``, optionally by ``status``."""
        params = _drop_none({"status": status, "limit": limit})
        return self._send(_Req("GET", "/v1/rollbacks", params=params))

    def approve_rollback(self, rollback_id: str) -> R:
        """``POST /v1/rollbacks/{id}/approve``: the key-holder queue, or a human member of
        it, approves; writ runs the frozen route once."""
        return self._send(_Req("POST", f"/v1/rollbacks/{_id(rollback_id)}/approve", body={}))

    def deny_rollback(self, rollback_id: str) -> R:
        """``POST /v1/rollbacks/{id}/deny``: the key-holder queue, or a member, refuses."""
        return self._send(_Req("POST", f"/v1/rollbacks/{_id(rollback_id)}/deny", body={}))

    def rollback_defect(self, rollback_id: str, notes: str) -> R:
        """``POST /v1/rollbacks/{id}/defect``: an executed rollback was a new defect."""
        return self._send(
            _Req("POST", f"/v1/rollbacks/{_id(rollback_id)}/defect", body={"notes": notes})
        )

    # ---- freezes ------------------------------------------------------------------------
    def freeze(
        self,
        prefix: str,
        reason: str,
        until: str | None = None,
        allow: list[str] | None = None,
    ) -> R:
        """``POST /v1/freezes``: refuse new grants under ``prefix`` (humans and queues).

        ``until`` is an RFC 3339 time or a duration like ``30m``; ``allow`` names principals
        that may still be granted leases under the prefix.
        """
        body = _drop_none(
            {
                "prefix": prefix,
                "reason": reason,
                "until": until,
                "allow": _names(allow, "allow"),
            }
        )
        return self._send(_Req("POST", "/v1/freezes", body=body))

    def lift_freeze(self, freeze_id: str) -> R:
        """``POST /v1/freezes/{id}/lift``."""
        return self._send(_Req("POST", f"/v1/freezes/{_id(freeze_id)}/lift", body={}))

    def freezes(self, include_lifted: bool = False) -> R:
        """``GET /v1/freezes``: ``{"freezes": [...]}`` standing now (or also lifted ones)."""
        params = {"all": "true"} if include_lifted else None
        return self._send(_Req("GET", "/v1/freezes", params=params))

    # ---- audit and events -------------------------------------------------------------
    def audit(
        self,
        after_seq: int = 0,
        limit: int | None = None,
        resource: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> R:
        """``GET /v1/audit``: ``{"rows": [...], "next_after_seq"}`` (one page)."""
        params = _drop_none(
            {
                "after_seq": after_seq,
                "limit": limit,
                "resource": resource,
                "since": since,
                "until": until,
            }
        )
        return self._send(_Req("GET", "/v1/audit", params=params))

    def verify(self) -> R:
        """``GET /v1/audit/verify``: ``{"ok", "rows", "head", "first_bad_seq", "reason"?,
        "lease_id"?, "principal"?, "waiter_id"?, "policy_object"?}`` (``lease_id``: a held
        lease the ledger does not account for; ``principal``: a principal it does not account
        for; ``waiter_id``: a queued request it does not account for; ``policy_object``: a
        change, consent or freeze it does not account for, as ``KIND ID``)."""
        return self._send(_Req("GET", "/v1/audit/verify"))

    def events(self, resource: str | None = None, after_seq: int = 0, wait_s: float = 0) -> R:
        """``GET /v1/events``: rows under a prefix after ``after_seq``, long-polling ``wait_s``."""
        params = _drop_none({"resource": resource, "after_seq": after_seq, "wait_s": wait_s})
        return self._send(_Req("GET", "/v1/events", params=params, wait_s=float(wait_s)))

    # ---- authority (v1.1) --------------------------------------------------------------
    def authority(self, principal: str, resource: str) -> R:
        """``GET /v1/authority``: may ``principal`` write / observe ``resource``, which
        attributes, and which FILE:LINE of the policy says so."""
        params = {"principal": principal, "resource": resource}
        return self._send(_Req("GET", "/v1/authority", params=params))

    def wake(self, lease_id: str, reason: str) -> R:
        """``POST /v1/leases/{id}/wake``: ask writ to wake the lease's holder (at most one
        call per 30 s per lease; later ones answer with ``already_woken_at``)."""
        return self._send(_Req("POST", f"/v1/leases/{_id(lease_id)}/wake", body={"reason": reason}))

    def reload_policy(self) -> R:
        """``POST /v1/policy/reload`` (admin): apply the policy file to new requests."""
        return self._send(_Req("POST", "/v1/policy/reload"))
