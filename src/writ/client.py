"""The Python client for writ's HTTP protocol (``docs/client.md``), sync and async.

::

    import writ

    client = writ.Client()                      # WRIT_URL / WRIT_TOKEN, else 127.0.0.1:7411
    with client.lease("prod/db", intent="double capacity", ttl_s=30, wait_s=10) as lease:
        lease.check()                           # raises writ.LeaseLost once the lease is gone
        httpx.post(admin_url, headers=lease.headers())

Every protocol route is one method returning the JSON body as a dict. A refusal raises the
typed error of :mod:`writ.errors` (``Held``, ``LeaseLost``, ``Forbidden``, ...); a server that
cannot be reached raises :class:`writ.errors.Unavailable`. :class:`Client` and
:class:`AsyncClient` share one definition of the routes (:class:`_Routes`): the sync client
returns dicts, the async one awaitables of dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from . import __version__
from .errors import (
    Invalid,
    LeaseLost,
    Unauthenticated,
    Unavailable,
    WritError,
    error_from_body,
)
from .validate import check_body, check_text

__all__ = ["DEFAULT_URL", "AsyncClient", "AsyncLease", "Client", "Lease"]

log = logging.getLogger("writ.client")
log.addHandler(logging.NullHandler())  # a library: silent unless the application logs

DEFAULT_URL = "http://127.0.0.1:7411"
DEFAULT_TIMEOUT = 10.0
WATCH_WAIT_S = 25.0  # long-poll length of watch(): under the server's 300 s cap

JSON = dict[str, Any]
R = TypeVar("R")
OnLost = Callable[[LeaseLost], None]


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
    (:func:`writ.validate.check_body`, the server's own check): the CLI and the MCP tools
    get the server's 422 message without a request, and no encoder fails half-way."""
    if req.params:
        check_body(dict(req.params))
    if req.body is not None:
        check_body(req.body)


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
    into another path."""
    check_text(str(value), "id")
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


def _renew_req(lease_id: str, ttl_s: float | None = None, timeout: float | None = None) -> _Req:
    body = _drop_none({"ttl_s": ttl_s})
    return _Req("POST", f"/v1/leases/{_id(lease_id)}/renew", body=body, timeout=timeout)


def _normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


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
                "queues": queues or None,
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
        body = {"add": list(add or []), "remove": list(remove or [])}
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
                "touches": list(touches) if touches is not None else None,
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
        return self._send(_Req("POST", f"/v1/leases/{_id(lease_id)}/release", body={}))

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
                "allow": list(allow) if allow is not None else None,
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
        """``GET /v1/audit/verify``: ``{"ok", "rows", "head", "first_bad_seq"}``."""
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


class _Base:
    """Settings and response decoding shared by both clients."""

    def __init__(
        self, url: str | None, token: str | None, timeout: float, headers: Mapping[str, str] | None
    ) -> None:
        self.url = _normalize_url(url or os.environ.get("WRIT_URL") or DEFAULT_URL)
        self.token = token if token is not None else (os.environ.get("WRIT_TOKEN") or None)
        self.timeout = float(timeout)
        self._headers = {"User-Agent": f"writ-python/{__version__}", **(headers or {})}
        if self.token:
            self._headers["Authorization"] = f"Bearer {self.token}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def _timeout_for(self, req: _Req) -> float:
        base = self.timeout if req.timeout is None else req.timeout
        return base + max(req.wait_s, 0.0)

    def _unavailable(self, req: _Req, exc: Exception) -> Unavailable:
        if isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {self._timeout_for(req):g}s"
        else:
            why = str(exc) or type(exc).__name__
        return Unavailable(
            f"writ server not reachable at {self.url} ({req.method} {req.path}: {why}); "
            "is `writ serve` running there? (set WRIT_URL or --url)",
            url=self.url,
        )

    def _decode(self, response: httpx.Response) -> Any:
        try:
            body: Any = response.json() if response.content else {}
        except ValueError:
            body = response.text
        if response.is_success:
            return body
        err = error_from_body(response.status_code, body)
        if isinstance(err, Unauthenticated) and not self.token:
            err.message = f"{err.message} (no token given: set WRIT_TOKEN or pass --token)"
            err.fact = err.message
            err.args = (err.message,)
        raise err


class Client(_Base, _Routes[Any]):
    """Synchronous client (``httpx.Client``). Thread-safe; close it or use ``with``.

    ``url`` and ``token`` default to ``WRIT_URL`` and ``WRIT_TOKEN`` (then
    ``http://127.0.0.1:7411``). ``transport`` is passed to httpx (for tests and proxies).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        _Base.__init__(self, url, token, timeout, headers)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, transport=transport)

    def _send(self, req: _Req) -> Any:
        _check(req)
        try:
            response = self._http.request(
                req.method,
                req.path,
                params=req.params,
                json=req.body,
                timeout=self._timeout_for(req),
            )
        except httpx.TransportError as exc:
            raise self._unavailable(req, exc) from exc
        return self._decode(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lease(
        self,
        resource: str,
        intent: str,
        ttl_s: float = 30,
        wait_s: float = 0,
        touches: list[str] | None = None,
        rollback: Mapping[str, Any] | None = None,
        consent_id: str | None = None,
        renew_every: float | None = None,
        on_lost: OnLost | None = None,
    ) -> Lease:
        """A lease held for a ``with`` block, renewed in a background thread.

        ``renew_every`` defaults to ``ttl_s / 3``. ``on_lost(error)`` is called (from the
        renewal thread) when the lease is lost.
        """
        return Lease(
            self,
            resource,
            intent,
            ttl_s,
            wait_s,
            touches,
            rollback,
            consent_id,
            renew_every,
            on_lost,
        )

    def iter_audit(
        self,
        after_seq: int = 0,
        resource: str | None = None,
        since: str | None = None,
        until: str | None = None,
        page: int = 1000,
    ) -> Iterator[JSON]:
        """Every audit row after ``after_seq``, paging through ``GET /v1/audit``."""
        while True:
            out = self.audit(after_seq, page, resource, since, until)
            rows = out.get("rows") or []
            yield from rows
            nxt = int(out.get("next_after_seq") or after_seq)
            if not rows or nxt <= after_seq:
                return
            after_seq = nxt

    def last_seq(self) -> int:
        """The seq of the newest audit row (0 when empty), in O(log n) small requests."""
        search = _head_search()
        probe = next(search)
        try:
            while True:
                probe = search.send(bool(self.audit(probe, 1).get("rows")))
        except StopIteration as done:
            return int(done.value)

    def watch(
        self,
        resource: str | None = None,
        after_seq: int | None = None,
        wait_s: float = WATCH_WAIT_S,
    ) -> Iterator[JSON]:
        """Audit rows under ``resource`` as they happen (long-polling ``GET /v1/events``).

        Starts after ``after_seq``, or at the newest row when None. Never ends by itself.
        """
        cursor = self.last_seq() if after_seq is None else after_seq
        while True:
            out = self.events(resource, cursor, wait_s)
            yield from out.get("rows") or []
            cursor = max(cursor, int(out.get("next_after_seq") or cursor))


class AsyncClient(_Base, _Routes[Awaitable[Any]]):
    """Asynchronous client (``httpx.AsyncClient``); every route method is awaitable."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        _Base.__init__(self, url, token, timeout, headers)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, transport=transport
        )

    async def _request(self, req: _Req) -> Any:
        _check(req)
        try:
            response = await self._http.request(
                req.method,
                req.path,
                params=req.params,
                json=req.body,
                timeout=self._timeout_for(req),
            )
        except httpx.TransportError as exc:
            raise self._unavailable(req, exc) from exc
        return self._decode(response)

    def _send(self, req: _Req) -> Awaitable[Any]:
        return self._request(req)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def lease(
        self,
        resource: str,
        intent: str,
        ttl_s: float = 30,
        wait_s: float = 0,
        touches: list[str] | None = None,
        rollback: Mapping[str, Any] | None = None,
        consent_id: str | None = None,
        renew_every: float | None = None,
        on_lost: OnLost | None = None,
    ) -> AsyncLease:
        """A lease held for an ``async with`` block, renewed by an asyncio task."""
        return AsyncLease(
            self,
            resource,
            intent,
            ttl_s,
            wait_s,
            touches,
            rollback,
            consent_id,
            renew_every,
            on_lost,
        )

    async def iter_audit(
        self,
        after_seq: int = 0,
        resource: str | None = None,
        since: str | None = None,
        until: str | None = None,
        page: int = 1000,
    ) -> AsyncIterator[JSON]:
        """Every audit row after ``after_seq``, paging through ``GET /v1/audit``."""
        while True:
            out = await self.audit(after_seq, page, resource, since, until)
            rows = out.get("rows") or []
            for row in rows:
                yield row
            nxt = int(out.get("next_after_seq") or after_seq)
            if not rows or nxt <= after_seq:
                return
            after_seq = nxt

    async def last_seq(self) -> int:
        """The seq of the newest audit row (0 when empty), in O(log n) small requests."""
        search = _head_search()
        probe = next(search)
        try:
            while True:
                probe = search.send(bool((await self.audit(probe, 1)).get("rows")))
        except StopIteration as done:
            return int(done.value)

    async def watch(
        self,
        resource: str | None = None,
        after_seq: int | None = None,
        wait_s: float = WATCH_WAIT_S,
    ) -> AsyncIterator[JSON]:
        """Audit rows under ``resource`` as they happen (long-polling ``GET /v1/events``)."""
        cursor = await self.last_seq() if after_seq is None else after_seq
        while True:
            out = await self.events(resource, cursor, wait_s)
            for row in out.get("rows") or []:
                yield row
            cursor = max(cursor, int(out.get("next_after_seq") or cursor))


def _head_search() -> Generator[int, bool, int]:
    """Find the newest seq (seqs run 1, 2, 3 ...): yields ``n``, is sent "are there rows
    after n?", returns the head. Exponential then binary search."""
    lo, hi = 0, 1
    while (yield hi):  # rows after hi: the head is further on
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # rows after lo (when lo > 0), none after hi
        mid = (lo + hi) // 2
        if (yield mid):
            lo = mid
        else:
            hi = mid
    if lo > 0:
        return hi
    return 1 if (yield 0) else 0


# ---------------------------------------------------------------------------- held leases
class _LeaseState:
    """What both lease handles know: the request, the granted Lease, the renewal clock."""

    def __init__(
        self,
        resource: str,
        intent: str,
        ttl_s: float,
        wait_s: float,
        touches: list[str] | None,
        rollback: Mapping[str, Any] | None,
        consent_id: str | None,
        renew_every: float | None,
        on_lost: OnLost | None,
    ) -> None:
        self.resource = resource
        self.intent = intent
        self.ttl_s = float(ttl_s)
        self.wait_s = float(wait_s)
        self.touches = touches
        self.rollback = rollback
        self.consent_id = consent_id
        self.renew_every = renew_every
        self.on_lost = on_lost
        self.data: JSON | None = None  # the latest Lease the server returned
        self.error: LeaseLost | None = None  # why the lease was lost
        self._deadline = 0.0  # local monotonic time by which the server will expire it

    def __repr__(self) -> str:
        """``<Lease prod/db held by perf-agent: ls_…, fencing token 8841, expires …>``."""
        name = type(self).__name__
        if self.data is None:
            return f"<{name} {self.resource} {self.intent!r}: not acquired>"
        state = "lost" if self.error is not None else self.data.get("state", "held")
        return (
            f"<{name} {self.data.get('resource')} {state} by {self.data.get('holder')}: "
            f"{self.data.get('lease_id')}, fencing token {self.data.get('fencing_token')}, "
            f"expires {self.data.get('expires_at')}>"
        )

    # ---- the Lease fields -------------------------------------------------------------
    def _field(self, name: str) -> Any:
        if self.data is None:
            raise RuntimeError("the lease is not acquired yet: enter the `with` block first")
        return self.data[name]

    @property
    def lease_id(self) -> str:
        return str(self._field("lease_id"))

    @property
    def fencing_token(self) -> int:
        return int(self._field("fencing_token"))

    @property
    def lock_key(self) -> str:
        return str(self._field("lock_key"))

    @property
    def expires_at(self) -> str:
        """RFC 3339 expiry from the last grant or renewal (the store's clock)."""
        return str(self._field("expires_at"))

    def env(self) -> dict[str, str]:
        """``WRIT_LOCK_KEY``, ``WRIT_FENCING_TOKEN``, ``WRIT_LEASE_ID`` for a child process."""
        return {
            "WRIT_LOCK_KEY": self.lock_key,
            "WRIT_FENCING_TOKEN": str(self.fencing_token),
            "WRIT_LEASE_ID": self.lease_id,
        }

    def headers(self) -> dict[str, str]:
        """``Writ-Lease`` and ``Writ-Fencing-Token`` for a request through ``writ gate``.

        Raises :class:`~writ.LeaseLost` if the lease is already known to be lost.
        """
        self.check()
        return {"Writ-Lease": self.lease_id, "Writ-Fencing-Token": str(self.fencing_token)}

    def check(self) -> None:
        """Raise :class:`~writ.LeaseLost` if the lease was lost (expired, revoked)."""
        if self.error is not None:
            raise self.error

    lost: threading.Event | asyncio.Event

    def _lose(self, err: LeaseLost) -> None:
        """Record the loss once: ``error``, the ``lost`` event, the ``on_lost`` callback."""
        if self.error is not None:
            return
        self.error = err
        self.lost.set()
        log.warning("%s", err.message)
        if self.on_lost is not None:
            try:
                self.on_lost(err)
            except Exception:
                log.exception("on_lost callback failed")

    # ---- renewal arithmetic -------------------------------------------------------------
    @property
    def _every(self) -> float:
        every = self.renew_every if self.renew_every is not None else self.ttl_s / 3
        return max(every, 0.01)

    def _granted(self, data: JSON, sent: float) -> None:
        """Record a grant or renewal whose request left at monotonic ``sent``."""
        self.data = data
        self.ttl_s = float(data.get("ttl_s") or self.ttl_s)
        self._deadline = sent + self.ttl_s

    def _acquired(self, data: JSON, sent: float) -> None:
        """Record the grant of an acquire sent at monotonic ``sent``; after a wait in the
        queue the clock starts at the answer."""
        self._granted(data, time.monotonic() if self.wait_s else sent)

    def _renew_failed(self, exc: WritError) -> float | None:
        """After a failed renewal: when to retry, or None once the lease is lost."""
        if self._fatal(exc):
            self._lose(self._lost_error(exc))
            return None
        if time.monotonic() >= self._deadline:
            self._lose(self._expired_error(exc))
            return None
        log.info("renewing %s failed, retrying: %s", self.lease_id, exc.message)
        return time.monotonic() + self._retry_pause()

    def _unreleased(self, exc: Unavailable) -> None:
        log.warning(
            "could not release %s (it expires by itself within %gs): %s",
            self.lease_id,
            self.ttl_s,
            exc.message,
        )

    def _retry_pause(self) -> float:
        return min(max(self.ttl_s / 10, 0.05), 1.0)

    def _renew_timeout(self, client_timeout: float) -> float:
        """A renewal must answer before the lease would expire, or it is no use."""
        left = self._deadline - time.monotonic()
        return max(0.25, min(client_timeout, left if left > 0 else client_timeout))

    def _lost_error(self, exc: WritError) -> LeaseLost:
        if isinstance(exc, LeaseLost):
            return exc
        return LeaseLost(
            f"lease {self.data and self.data.get('lease_id')} on {self.resource} was lost: "
            f"{exc.message}",
            lease_id=self.data.get("lease_id") if self.data else None,
            cause=exc.code,
        )

    def _expired_error(self, exc: WritError) -> LeaseLost:
        return LeaseLost(
            f"lease {self.lease_id} on {self.resource} could not be renewed before it expired "
            f"(ttl {self.ttl_s:g}s): {exc.message}; treat it as lost",
            lease_id=self.lease_id,
            state="unknown",
            fencing_token=self.fencing_token,
        )

    @staticmethod
    def _fatal(exc: WritError) -> bool:
        """A renewal refused (410 lost, 403, 404, ...) rather than failed in transit or 5xx."""
        return 400 <= exc.status < 500


class Lease(_LeaseState):
    """A lease held by :meth:`Client.lease`: acquire on enter, renew, release on exit.

    ``lost`` is a :class:`threading.Event` set when the lease is lost; ``check()`` then
    raises :class:`~writ.LeaseLost`, and leaving the ``with`` block raises it too. Use
    :meth:`acquire` and :meth:`close` to hold a lease outside a ``with`` block.
    """

    def __init__(self, client: Client, *args: Any) -> None:
        super().__init__(*args)
        self.client = client
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Acquire (waiting up to ``wait_s``) and start renewing in a daemon thread."""
        sent = time.monotonic()
        data = self.client.acquire(
            self.resource,
            self.intent,
            self.ttl_s,
            self.wait_s,
            self.touches,
            self.consent_id,
            self.rollback,
        )
        self._acquired(data, sent)
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"writ-renew-{self.lease_id}", daemon=True
        )
        self._thread.start()
        return self

    def renew(self) -> JSON:
        """Renew now (the background thread does this on its own)."""
        sent = time.monotonic()
        data: JSON = self.client._send(
            _renew_req(self.lease_id, timeout=self._renew_timeout(self.client.timeout))
        )
        self._granted(data, sent)
        return data

    def _renew_loop(self) -> None:
        due = time.monotonic() + self._every
        while not self._stop.wait(max(0.0, min(due, self._deadline) - time.monotonic())):
            try:
                self.renew()
                due = time.monotonic() + self._every
            except WritError as exc:
                retry = self._renew_failed(exc)
                if retry is None:
                    return
                due = retry

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def close(self) -> None:
        """Stop renewing and release. Raises :class:`~writ.LeaseLost` if it was lost."""
        self._stop_renewing()
        self.check()
        try:
            self.data = self.client.release(self.lease_id)
        except LeaseLost as exc:
            self._lose(exc)
            raise
        except Unavailable as exc:
            self._unreleased(exc)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(WritError):  # the body's exception is the one to see
            self.close()


class AsyncLease(_LeaseState):
    """A lease held by :meth:`AsyncClient.lease` (``async with``), renewed by a task.

    ``lost`` is an :class:`asyncio.Event`; otherwise the same as :class:`Lease`.
    """

    def __init__(self, client: AsyncClient, *args: Any) -> None:
        super().__init__(*args)
        self.client = client
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> AsyncLease:
        sent = time.monotonic()
        data = await self.client.acquire(
            self.resource,
            self.intent,
            self.ttl_s,
            self.wait_s,
            self.touches,
            self.consent_id,
            self.rollback,
        )
        self._acquired(data, sent)
        self._task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"writ-renew-{self.lease_id}"
        )
        return self

    async def renew(self) -> JSON:
        sent = time.monotonic()
        data: JSON = await self.client._send(
            _renew_req(self.lease_id, timeout=self._renew_timeout(self.client.timeout))
        )
        self._granted(data, sent)
        return data

    async def _renew_loop(self) -> None:
        due = time.monotonic() + self._every
        while True:
            await asyncio.sleep(max(0.0, min(due, self._deadline) - time.monotonic()))
            try:
                await self.renew()
                due = time.monotonic() + self._every
            except WritError as exc:
                retry = self._renew_failed(exc)
                if retry is None:
                    return
                due = retry

    async def _stop_renewing(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop renewing and release. Raises :class:`~writ.LeaseLost` if it was lost."""
        await self._stop_renewing()
        self.check()
        try:
            self.data = await self.client.release(self.lease_id)
        except LeaseLost as exc:
            self._lose(exc)
            raise
        except Unavailable as exc:
            self._unreleased(exc)

    async def __aenter__(self) -> AsyncLease:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        with contextlib.suppress(WritError):
            await self.close()
