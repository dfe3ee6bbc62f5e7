"""The synchronous client (``httpx.Client``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from writ.client import _pages
from writ.client._base import DEFAULT_TIMEOUT, WATCH_WAIT_S, OnLost, _Base
from writ.client._leases import Lease
from writ.client._routes import JSON, _check, _Req, _Routes, _unsendable
from writ.client._wire import Cancel, bounded, capped, deadline


class Client(_Base, _Routes[Any]):
    """Synchronous client (``httpx.Client``). Thread-safe; close it or use ``with``.

    ``url`` and ``token`` default to ``WRIT_URL`` and ``WRIT_TOKEN`` (then
    ``http://127.0.0.1:7411``). ``transport`` is passed to httpx (for tests and proxies).
    """

    _cancel: Cancel | None = None  # ends this client's requests at once (a lease's watch)

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
        self._transport = transport
        self._http = self._new_pool()
        self._waits: httpx.Client | None = None  # for requests that wait (see _Base)
        self._waits_made = threading.Lock()

    def _pool(self, req: _Req) -> httpx.Client:
        if req.wait_s <= 0:
            return self._http
        with self._waits_made:
            if self._waits is None:
                self._waits = self._new_pool()
            return self._waits

    def _new_pool(self) -> httpx.Client:
        client = httpx.Client(
            base_url=self.url,
            headers=self._headers,
            transport=self._transport,
            follow_redirects=False,
        )
        # a transport passed is used as is
        return client if self._transport else bounded(client, self._cancel)

    def _send(self, req: _Req) -> Any:
        _check(req)
        timeout = self._timeout_for(req)
        # the whole exchange ends by then (writ.client._wire), not each read
        at = deadline.set(time.monotonic() + timeout)
        try:
            with self._pool(req).stream(
                req.method, req.path, params=req.params, json=req.body, timeout=timeout
            ) as response:
                content = capped(response.iter_bytes(), self.url, f"{req.method} {req.path}")
        except httpx.RequestError as exc:  # TransportError, and DecodingError (a bad gzip)
            raise self._unavailable(req, exc) from exc
        except UnicodeError as exc:  # a host IDNA cannot encode ("a..b"), from the resolver
            raise self._unavailable(req, exc) from exc
        except httpx.InvalidURL as exc:
            raise _unsendable(req, exc) from exc
        finally:
            deadline.reset(at)
        return self._decode(response, content, req)

    def _own(self) -> Client:
        """A client like this one with connections of its own, whose requests its ``_cancel``
        ends at once from any thread (a lease's watch). With a transport passed, this client:
        the transport is used as is, and nothing could end its requests."""
        if self._transport is not None:
            return self
        return _Own(self.url, self.token, self.timeout, headers=self._headers)

    def close(self) -> None:
        self._http.close()
        if self._waits is not None:
            self._waits.close()

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
        watch: bool = False,
    ) -> Lease:
        """A lease held for a ``with`` block, renewed in a background thread.

        ``renew_every`` defaults to ``ttl_s / 3``. ``on_lost(error)`` is called (from the
        renewal or the watch thread) when the lease is lost. ``watch=True`` also long-polls
        the resource's rows in a thread of its own, so a revoke or an expiry marks the lease
        lost at once rather than at the next renewal; it holds one request waiting on the
        server while the lease is held, counted among the principal's waits.
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
            watch,
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
            rows, nxt = _pages.page(self.audit(after_seq, page, resource, since, until), after_seq)
            yield from rows
            if not rows or nxt <= after_seq:
                return
            after_seq = nxt

    def last_seq(self) -> int:
        """The seq of the newest audit row (0 when empty), in O(log n) small requests."""
        search = _pages.head_search()
        probe = next(search)
        try:
            while True:
                probe = search.send(_pages.after(probe, self.audit(probe, 1)))
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
        Polls that bring no rows are at least a second apart.
        """
        cursor = self.last_seq() if after_seq is None else after_seq
        while True:
            sent = time.monotonic()
            rows, cursor = _pages.page(self.events(resource, cursor, wait_s), cursor)
            yield from rows
            if not rows:
                time.sleep(max(0.0, sent + _pages.QUIET_POLL_S - time.monotonic()))


class _Own(Client):
    """:meth:`Client._own`: a client whose requests its ``_cancel`` ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cancel = Cancel()  # before the pools are made
        super().__init__(*args, **kwargs)
