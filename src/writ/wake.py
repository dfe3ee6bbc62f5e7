"""Outbound calls: waking a holder, paging a queue, running a rollback route.

writ never blocks a decision on someone else's server. A call is scheduled after the
transaction that asked for it commits, runs in the background with a timeout and retries
with exponential backoff, and its outcome — the exact call and the answer, or the failure —
is an audit row of its own (``wake.delivered`` / ``wake.failed``, ``page.delivered`` /
``page.failed``). Rollback routes are called once (never retried: a rollback is not
idempotent) and their result is returned to the approver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from .errors import Invalid
from .routes import resolve

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("writ.wake")


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
            + (f" after {self.attempts} attempt(s)")
        )


class Caller:
    """Background HTTP calls with timeout, retry and backoff; outcomes become audit rows."""

    def __init__(
        self,
        engine: Engine,
        timeout: float = 3.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, transport=self.transport)
        return self._client

    async def post(self, url: str, payload: dict[str, Any], attempts: int) -> CallResult:
        """POST ``payload`` to ``url``; retry on network errors and 5xx up to ``attempts``."""
        last: CallResult = CallResult(url, False, None, 0, "not attempted")
        for i in range(1, attempts + 1):
            try:
                r = await self._http().post(url, json=payload, headers={"User-Agent": "writ"})
                last = CallResult(url, r.status_code < 400, r.status_code, i)
                if r.status_code < 500:
                    return last
            except httpx.HTTPError as exc:
                last = CallResult(url, False, None, i, f"{type(exc).__name__}: {exc}")
            if i < attempts:
                await asyncio.sleep(self.backoff * (2 ** (i - 1)))
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

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(
        self,
        kind: str,
        route: str | None,
        payload: dict[str, Any],
        row: dict[str, Any],
        after: Callable[[CallResult], Awaitable[None]] | None,
    ) -> None:
        target = payload.get("to", "?")
        if not route:
            result = CallResult("(none)", False, None, 0, f"{target} has no wake route registered")
        else:
            try:
                url = resolve(route, self.engine.policy.rollback_base_url)
            except Invalid as exc:
                result = CallResult(route, False, None, 0, exc.message)
            else:
                result = await self.post(url, payload, self.retries)
        verb = "delivered" if result.ok else "failed"
        fields = dict(row)
        fields["event"] = f"{kind}.{verb}"
        fields["notes"] = (f"{kind} {target} ({payload.get('reason', '')}): " + result.describe())[
            :2000
        ]
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
