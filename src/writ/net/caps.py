"""At most so many of something at once for each key: each principal's waiting requests on
``writ serve`` (:mod:`writ.api.waits`), each client's requests in flight through ``writ gate``
(:mod:`writ.gate.proxy`). One count, so the two caps cannot drift apart in how they count."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["PerKey"]


class PerKey:
    """How many each key holds now, at most ``cap`` each. Not thread-safe: one event loop's."""

    __slots__ = ("_held", "cap")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("each key must be allowed at least one")
        self.cap = cap
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        """How many ``key`` holds now."""
        return self._held.get(key, 0)

    def take(self, key: str) -> bool:
        """Count one more for ``key``; False (nothing counted) when it holds ``cap`` already."""
        n = self._held.get(key, 0)
        if n >= self.cap:
            return False
        self._held[key] = n + 1
        return True

    def give(self, key: str) -> None:
        """Count one fewer for ``key`` (one :meth:`take` has ended)."""
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]

    @contextlib.contextmanager
    def hold(self, key: str, refused: Callable[[int], BaseException]) -> Iterator[None]:
        """Count one for ``key`` while the block runs; when it holds ``cap`` already, raise
        ``refused(held)`` and count nothing."""
        if not self.take(key):
            raise refused(self.held(key))
        try:
            yield
        finally:
            self.give(key)
