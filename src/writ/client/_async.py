"""The asynchronous client (``httpx.AsyncClient``): every route method is awaitable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import httpx

from writ.client import _pages, _wire
from writ.client._base import DEFAULT_TIMEOUT, WATCH_WAIT_S, OnLost, _Base
from writ.client._leases import AsyncLease
from writ.client._routes import JSON, _check, _Req, _Routes, _unsendable


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
        self._transport = transport
        self._http = self._new_pool()
        self._waits: httpx.AsyncClient | None = None  # for requests that wait (see _Base)

    def _pool(self, req: _Req) -> httpx.AsyncClient:
        if req.wait_s <= 0:
            return self._http
        if self._waits is None:
            self._waits = self._new_pool()
        return self._waits

    def _new_pool(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            transport=self._transport,
            follow_redirects=False,
        )

    async def _request(self, req: _Req) -> Any:
        _check(req)
        timeout = self._timeout_for(req)
        what = f"{req.method} {req.path}"
        try:
            async with (
                asyncio.timeout(timeout),  # the whole exchange, not each read (_wire)
                self._pool(req).stream(
                    req.method, req.path, params=req.params, json=req.body, timeout=timeout
                ) as response,
            ):
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > _wire.MAX_ANSWER_BYTES:
                        raise _wire.too_large(self.url, what)
        except (httpx.RequestError, TimeoutError) as exc:  # RequestError: DecodingError too
            raise self._unavailable(req, exc) from exc
        except UnicodeError as exc:  # a host IDNA cannot encode ("a..b"), from the resolver
            raise self._unavailable(req, exc) from exc
        except httpx.InvalidURL as exc:
            raise _unsendable(req, exc) from exc
        return self._decode(response, bytes(content), req)

    def _send(self, req: _Req) -> Awaitable[Any]:
        return self._request(req)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._waits is not None:
            await self._waits.aclose()

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
        watch: bool = False,
    ) -> AsyncLease:
        """A lease held for an ``async with`` block, renewed by an asyncio task (and with
        ``watch=True`` watched by another: see :meth:`Client.lease`)."""
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
            watch,
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
            rows, nxt = _pages.page(out, after_seq)
            for row in rows:
                yield row
            if not rows or nxt <= after_seq:
                return
            after_seq = nxt

    async def last_seq(self) -> int:
        """The seq of the newest audit row (0 when empty), in O(log n) small requests."""
        search = _pages.head_search()
        probe = next(search)
        try:
            while True:
                probe = search.send(_pages.after(probe, await self.audit(probe, 1)))
        except StopIteration as done:
            return int(done.value)

    async def watch(
        self,
        resource: str | None = None,
        after_seq: int | None = None,
        wait_s: float = WATCH_WAIT_S,
    ) -> AsyncIterator[JSON]:
        """Audit rows under ``resource`` as they happen (long-polling ``GET /v1/events``);
        polls that bring no rows are at least a second apart."""
        cursor = await self.last_seq() if after_seq is None else after_seq
        while True:
            sent = time.monotonic()
            rows, cursor = _pages.page(await self.events(resource, cursor, wait_s), cursor)
            for row in rows:
                yield row
            if not rows:
                await asyncio.sleep(max(0.0, sent + _pages.QUIET_POLL_S - time.monotonic()))
