"""What a server remembers of the tokens it accepted (:class:`AuthCache`), and the word it
gives the requests that wait when a principal changes here.

A server that reads principals from a remote store remembers an accepted token briefly
(:data:`AUTH_CACHE_S`) and forgets every one when a principal changes (see
:mod:`writ.engine.principals`). A request that waits (a long poll, up to five minutes) was
checked once, when it arrived: it watches its principal (:meth:`AuthCache.watch`), and
checks its credential again when a change to it commits on this server
(:meth:`AuthCache.changed`), so a rotate or a disable ends it at once rather than when it
answers (:func:`writ.api.middleware.waiting`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from writ.core.models import Principal

__all__ = ["AUTH_CACHE_S", "AuthCache"]

#: How long a server that reads principals from a remote store may reuse what it read
#: (seconds): the bound on a missed notification. Within a process, changes made here
#: and notifications clear it at once.
AUTH_CACHE_S = 0.5


@dataclass(slots=True)
class _Remembered:
    principal: Principal
    until: float  # time.monotonic()


class AuthCache:
    """Token hash → principal, for stores whose reads are remote. Entries live at most
    :data:`AUTH_CACHE_S`; :meth:`forget` drops them all and makes reads that began before
    it unable to store what they read (a generation counter)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.generation = 0
        self.store_generation: int | None = None  # the store's count of principal changes
        self._entries: dict[str, _Remembered] = {}
        # by principal name: set (and dropped) at its next change here; one per principal
        # that has a request waiting, so as many as there are principals at most
        self._watched: dict[str, asyncio.Event] = {}

    def get(self, token_hash: str) -> Principal | None:
        if not self.enabled:
            return None
        e = self._entries.get(token_hash)
        if e is None:
            return None
        if time.monotonic() >= e.until:
            del self._entries[token_hash]
            return None
        return e.principal

    def put(self, token_hash: str, p: Principal, generation: int) -> None:
        if not self.enabled or generation != self.generation or p.token_expires_at is not None:
            return  # an expiring token is checked against the store's clock every time
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[token_hash] = _Remembered(p, time.monotonic() + AUTH_CACHE_S)

    def forget(self) -> None:
        self.generation += 1
        self._entries.clear()

    def watch(self, name: str) -> asyncio.Event:
        """An event set when a change to principal ``name`` next commits on this server."""
        ev = self._watched.get(name)
        if ev is None:
            ev = self._watched[name] = asyncio.Event()
        return ev

    def changed(self, name: str) -> None:
        """A change to principal ``name`` committed here: wake whoever :meth:`watch` es it."""
        ev = self._watched.pop(name, None)
        if ev is not None:
            ev.set()
