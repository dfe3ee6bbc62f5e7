"""Bulk work on the event loop: long reads taken in page-sized steps that give way.

A server answers everyone on one event loop, and a step of Python work holds it: a verify of
the whole ledger, or a list of 100,000 leases, read and encoded at once, held it for a second
while other clients' fence checks waited. Bulk work is therefore done a page at a time, the
pages of all bulk reads take turns (:class:`Turns`: one page at a time among them), and after
each page whoever else is waiting goes first, for as long as that page took
(:func:`make_way`): bulk work takes at most about half of a busy loop, and all of an idle one.
A verify is its own turn (one runs at a time: evidence.history) and gives way the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

K = TypeVar("K")
R = TypeVar("R")

#: Rows a bulk read takes per step: a page of leases or audit rows is 5-15 ms of the loop
#: (10,000 rows a step were 60-90 ms, and eight verifies at once held a fence check up to a
#: second), at the same rows a second.
PAGE = 1000
#: The loop came back later than this after a bare yield: someone else was waiting.
LATE_S = 0.0005


async def make_way(took: float) -> None:
    """Between two steps of bulk work: let whoever is waiting on the loop go first. When
    someone was (the loop came back late), give them as long as the step took."""
    t = time.perf_counter()
    await asyncio.sleep(0)
    if time.perf_counter() - t > LATE_S:
        await asyncio.sleep(took)


async def first_in_pages(
    keys: Sequence[K], size: int, judge: Callable[[Sequence[K]], Awaitable[R | None]]
) -> R | None:
    """``judge`` each page of ``size`` keys in turn, giving way between pages
    (:func:`make_way`): the first answer that is not None, or None."""
    for i in range(0, len(keys), size):
        began = time.perf_counter()
        found = await judge(keys[i : i + size])
        if found is not None:
            return found
        await make_way(time.perf_counter() - began)
    return None


class Turns:
    """The pages of every bulk read of one server, one at a time (created on the loop that
    uses it)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[None]:
        """Hold the turn while one page is read and encoded, and while giving way after it
        (so the next bulk page does not take the loop from those it gave way to)."""
        async with self._lock:
            began = time.perf_counter()
            yield
            await make_way(time.perf_counter() - began)
