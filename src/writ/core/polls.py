"""Long polls that wait for the same answer share one reader (:class:`Polls`).

A long poll waits for something the store will say after some commit (a row under a prefix,
a consent no longer pending). Each poll re-reading the store after every commit costs, for N
polls, N reads per commit on the event loop: one principal's thousand polls slowed every
writer tenfold. Here the polls asking the same question (the same key) share one task that
reads once after each commit and answers all of them; it ends when it has an answer, or
when nobody is waiting any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Polls", "Watch"]

T = TypeVar("T")


class Watch(Generic[T]):
    """The polls waiting for one key's answer, and the task that looks for it."""

    __slots__ = ("answer", "idle", "task", "waiters")

    def __init__(self, answer: asyncio.Future[T]) -> None:
        self.answer = answer
        self.task: asyncio.Task[None]
        self.waiters = 0
        self.idle = False  # waiting for a commit (not reading the store)


class Polls(Generic[T]):
    """Shared long polls: :meth:`wait` for ``probe``'s first answer that is not None, read
    once after each commit (``changed()``: the event the next commit sets) for every poll
    of the same ``key``."""

    def __init__(self, changed: Callable[[], asyncio.Event]) -> None:
        self.changed = changed
        self.watches: dict[Hashable, Watch[T]] = {}

    async def wait(
        self, key: Hashable, probe: Callable[[], Awaitable[T | None]], within_s: float
    ) -> T | None:
        """``probe``'s first answer (the probe of the first poll of ``key`` serves them
        all), or None after ``within_s`` seconds. A store error reaches every poll."""
        loop = asyncio.get_running_loop()
        watch = self.watches.get(key)
        if watch is None or watch.answer.done():
            watch = self.watches[key] = Watch(loop.create_future())
            watch.task = loop.create_task(self._run(key, watch, probe))
        watch.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(watch.answer), within_s)
        except TimeoutError:
            return None
        finally:
            watch.waiters -= 1
            if watch.waiters == 0 and not watch.answer.done():  # nobody is waiting any more
                if self.watches.get(key) is watch:
                    del self.watches[key]
                if watch.idle:  # between reads; a read in progress ends the task after it
                    watch.task.cancel()

    async def _run(
        self, key: Hashable, watch: Watch[T], probe: Callable[[], Awaitable[T | None]]
    ) -> None:
        """Probe after every commit until there is an answer; answer the polls. Each probe
        starts after the latest commit it was told of, so nothing committed is missed."""
        try:
            while True:
                changed = self.changed()
                found = await probe()
                if found is not None:
                    watch.answer.set_result(found)
                    return
                if watch.waiters == 0:
                    return
                watch.idle = True
                try:
                    await changed.wait()
                finally:
                    watch.idle = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a store error reaches every poll, as it would one
            watch.answer.set_exception(exc)
            watch.answer.exception()  # retrieved: the polls may all have timed out
        finally:
            if self.watches.get(key) is watch:
                del self.watches[key]
