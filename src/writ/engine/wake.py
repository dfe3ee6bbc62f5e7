"""Outbound calls: waking a holder, paging a queue, running a rollback route.

writ never blocks a decision on someone else's server. A call is scheduled after the
transaction that asked for it commits, runs in the background with a timeout and retries
with exponential backoff (honouring a ``Retry-After`` answer, up to ``max_delay``), and each
attempt is an audit row: a retried one ``wake.retry`` / ``page.retry``, the last its outcome
— the exact call and the answer, or the failure — ``wake.delivered`` / ``wake.failed``,
``page.delivered`` / ``page.failed``. Rollback routes are called once (never retried: a
rollback is not idempotent) and their result is returned to the approver.

What is sent depends on the route (:mod:`writ.engine.wake_payloads`): PagerDuty Events API v2, a Slack
message, or writ's JSON signed with ``Writ-Signature``. A PagerDuty incident is resolved
(:meth:`Caller.resolve`) when what it was about is answered or ends. Every request carries
the current trace context (``traceparent``) when tracing is on (:mod:`writ.telemetry.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx

from writ.core.errors import Invalid
from writ.engine import wake_payloads as paging
from writ.telemetry import tracing

if TYPE_CHECKING:
    from writ.engine import Engine

log = logging.getLogger("writ.wake")
T = TypeVar("T")
#: a call (connect, send, the answer's status and headers) ends within this many timeouts in
#: all: httpx's timeout bounds each of them, and each read of a head sent a byte at a time
CALL_SPAN = 3
#: attempts in flight at once: per kind, and per host within a kind. The kinds share no slot
#: and together need no more than the pool's connections, so wakes (to routes agents name)
#: never keep a page (a human's queue) or an approved rollback waiting for a connection; and
#: within a kind one host (a route that accepts and never answers) holds only its share.
LANES: dict[str, tuple[int, int]] = {"page": (40, 16), "rollback": (20, 8), "wake": (40, 8)}


class _Share:
    """A host's slots within a kind, and how many calls use or wait for them."""

    __slots__ = ("slots", "users")

    def __init__(self, n: int) -> None:
        self.slots, self.users = asyncio.Semaphore(n), 0


@dataclass(slots=True)
class CallResult:
    url: str
    ok: bool
    status: int | None
    attempts: int
    error: str | None = None

    def describe(self) -> str:
        head = f"POST {self.url}"
        if self.ok:
            return f"{head} -> {self.status}"
        return (
            f"{head} -> "
            + (f"HTTP {self.status}" if self.status else (self.error or "failed"))
            + (
                " (a redirect, which writ does not follow)"
                if 300 <= (self.status or 0) < 400
                else ""
            )
            + (f" after {self.attempts} attempt(s)")
        )


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit is also true of "²" (latin-1 \xb2)
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Caller:
    """Background HTTP calls with timeout, retry and backoff; outcomes become audit rows."""

    def __init__(
        self,
        engine: Engine,
        timeout: float = 3.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        max_delay: float = 30.0,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.transport = transport
        self.max_delay = max_delay  # the longest wait between attempts, Retry-After included
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # tests record the waits
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lanes = {kind: asyncio.Semaphore(n) for kind, (n, _) in LANES.items()}
        self._hosts: dict[tuple[str, str], _Share] = {}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                transport=self.transport,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=sum(n for n, _ in LANES.values())),
            )
        return self._client

    @contextlib.asynccontextmanager
    async def _slot(self, kind: str, url: str) -> AsyncIterator[None]:
        """Hold a slot of ``url``'s host within ``kind``, then of ``kind`` (:data:`LANES`):
        a call waiting for a busy host holds none of its kind's slots. Any other kind
        counts as a wake (a route writ was not told to trust)."""
        kind = kind if kind in LANES else "wake"
        try:
            host = urlsplit(url).netloc.lower()
        except ValueError:
            host = url
        key = (kind, host)
        share = self._hosts.get(key) or self._hosts.setdefault(key, _Share(LANES[kind][1]))
        share.users += 1
        try:
            async with share.slots, self._lanes[kind]:
                yield
        finally:
            share.users -= 1
            if not share.users:
                del self._hosts[key]

    def secret(self) -> str | None:
        """The ``webhook_secret`` that signs generic calls (policy, else the environment)."""
        return getattr(self.engine.policy, "webhook_secret", None) or (
            os.environ.get("WRIT_WEBHOOK_SECRET") or None
        )

    async def post(self, url: str, payload: dict[str, Any], attempts: int) -> CallResult:
        """POST ``payload`` as JSON to ``url`` (signed when a secret is set): a rollback route."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        out = paging.Outbound(url, body, url, {"Content-Type": "application/json"}, True)
        return await self.send(out, attempts, kind="rollback")

    async def send(
        self,
        out: paging.Outbound,
        attempts: int,
        on_retry: Callable[[CallResult, float], Awaitable[None]] | None = None,
        kind: str = "page",
    ) -> CallResult:
        """Make the request ``out``; retry on network errors, 429 and 5xx up to ``attempts``,
        waiting the backoff or the answer's ``Retry-After`` (at most ``max_delay``). Each
        attempt holds a slot of ``kind`` (:meth:`_slot`); a wait between attempts holds none."""
        last: CallResult = CallResult(out.shown, False, None, 0, "not attempted")
        secret = self.secret()
        for i in range(1, attempts + 1):
            delay = self.backoff * (2 ** (i - 1))
            headers = {"User-Agent": "writ", **out.headers}
            if out.signed and secret:
                headers[paging.SIGNATURE_HEADER] = paging.sign(secret, out.body)
            try:
                with tracing.span("writ.outbound", url=out.shown) as carrier:
                    headers.update(carrier)
                    # the whole call within CALL_SPAN timeouts, and the answer's body never
                    # read: its status is the answer (a route sending a byte a second, or
                    # gigabytes, held the call, an approver's request and writ's memory)
                    async with (
                        self._slot(kind, out.url),
                        asyncio.timeout(self.timeout * CALL_SPAN),
                        self._http().stream(
                            "POST", out.url, content=out.body, headers=headers
                        ) as r,
                    ):
                        pass
                # a redirect is not a delivery: writ never follows one (it would call a
                # host nobody chose: see routes.host_problem)
                last = CallResult(out.shown, 200 <= r.status_code < 300, r.status_code, i)
                if r.status_code < 500 and r.status_code != 429:
                    return last
                asked = retry_after_s(r.headers.get("retry-after"))
                if asked is not None:
                    delay = asked
            except (httpx.HTTPError, httpx.InvalidURL, TimeoutError) as exc:
                text = f"{type(exc).__name__}: {exc}".replace(out.url, out.shown)
                if isinstance(exc, TimeoutError):
                    text = f"no answer within {self.timeout * CALL_SPAN:g}s"
                last = CallResult(out.shown, False, None, i, text)
                if isinstance(exc, httpx.InvalidURL):  # no attempt can call it: failed now
                    return last
            if i < attempts:
                delay = min(delay, self.max_delay)
                if on_retry is not None:
                    with contextlib.suppress(Exception):
                        await on_retry(last, delay)
                await self.sleep(delay)
        return last

    def call(
        self,
        kind: str,
        route: str | None,
        payload: dict[str, Any],
        row: dict[str, Any],
        after: Callable[[CallResult], Awaitable[None]] | None = None,
    ) -> None:
        """Schedule a wake (``kind`` "wake") or page ("page") call; record its outcome.

        ``row`` holds the audit fields of the outcome row (resource, lock holder, ...).
        """
        self._spawn(self._call(kind, route, payload, row, after))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def carry(self, coro: Awaitable[T]) -> Awaitable[T]:
        """Run ``coro`` (a call and the row of its outcome) to its end whatever becomes of
        the request that started it: its client gone, or its task cancelled by a shutdown,
        which waits for it as for any call (:meth:`drain`)."""
        return asyncio.shield(self._spawn(coro))

    def resolve(self, route: str | None, payload: dict[str, Any], row: dict[str, Any]) -> None:
        """Resolve the PagerDuty incident a page on ``route`` opened (dedup key: the id in
        ``payload``); nothing for other routes. The outcome is a row (``page.resolved``)."""
        if route and paging.route_kind(route) == "pagerduty":
            self._spawn(self._call("page", route, payload, row, None, action="resolve"))

    async def _call(
        self,
        kind: str,
        route: str | None,
        payload: dict[str, Any],
        row: dict[str, Any],
        after: Callable[[CallResult], Awaitable[None]] | None,
        action: str = "trigger",
    ) -> None:
        target = payload.get("to", "?")
        reason = payload.get("reason", "")
        policy = self.engine.policy
        if not route:
            result = CallResult("(none)", False, None, 0, f"{target} has no wake route registered")
        else:
            try:
                out = paging.build(
                    kind,
                    route,
                    payload,
                    base_url=policy.rollback_base_url,
                    pagerduty_url=getattr(policy, "pagerduty_url", None),
                    secret=self.secret(),
                    action=action,
                )
            except Invalid as exc:
                result = CallResult(paging.redact(route), False, None, 0, exc.message)
            else:

                async def attempt_row(res: CallResult, delay: float) -> None:
                    fields = dict(row)
                    fields["event"] = f"{kind}.retry"
                    fields["notes"] = (
                        f"{kind} {target} ({reason}): attempt {res.attempts} of {self.retries}: "
                        f"{res.describe()}; retrying in {delay:g}s"
                    )[:2000]
                    await self.engine.store.transact(lambda tx: tx.append(fields))

                result = await self.send(out, self.retries, attempt_row, kind=kind)
        verb = "delivered" if result.ok else "failed"
        if action == "resolve" and result.ok:
            verb = "resolved"
        fields = dict(row)
        fields["event"] = f"{kind}.{verb}"
        fields["notes"] = (
            f"{kind} {target} ({reason}"
            + (", resolve" if action == "resolve" else "")
            + "): "
            + result.describe()
        )[:2000]
        with contextlib.suppress(Exception):
            await self.engine.store.transact(lambda tx: tx.append(fields))
        if after is not None:
            with contextlib.suppress(Exception):
                await after(result)

    async def drain(self) -> None:
        """Wait for every scheduled call (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._lanes = {kind: asyncio.Semaphore(n) for kind, (n, _) in LANES.items()}
