"""How many requests each principal has waiting on one server.

A request that may wait — an acquire with ``wait_s`` > 0, a long poll of ``/v1/events`` or of
a consent — holds its connection for up to ``wait_s`` (five minutes at most), and a listener
has at most ``--max-connections`` of them. The listener makes room by closing connections
that are idle or held up by their own client (:mod:`writ.net.limits`), never one in which a
caller waits: so one principal opening waits on every connection would turn every other
caller away with 503. Each principal may therefore have at most ``cap`` such requests at once
on a server (``writ serve --max-waits-per-principal``; by default a quarter of the
connections). One more is answered 503 ``unavailable`` with ``Retry-After`` before anything
is done: it takes no place in a queue and writes no row, as a server too busy to take a
connection does not.
"""

from __future__ import annotations

import contextlib

from writ.core.errors import Unavailable
from writ.core.textsafe import counted
from writ.net.caps import PerKey

__all__ = ["DEFAULT_CAP", "Waits", "default_cap"]

DEFAULT_CAP = 1024  # a quarter of the listener's default 4,096 connections


def default_cap(max_connections: int) -> int:
    """The cap for a listener of ``max_connections``: a quarter of them, at least one."""
    return max(1, max_connections // 4)


class Waits(PerKey):
    """The requests each principal has waiting on this server, at most ``cap`` each."""

    __slots__ = ()

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        super().__init__(cap)

    def one(self, principal: str) -> contextlib.AbstractContextManager[None]:
        """Count one waiting request of ``principal`` while the block runs, or raise
        :class:`Unavailable` (nothing done) when it already has ``cap`` of them."""
        return self.hold(
            principal,
            lambda held: Unavailable(
                f"{principal} already has {counted(held, 'request')} waiting on this server, "
                "the most one principal may have, so that no caller holds every connection; "
                "nothing was done. Retry once one of them has ended, or ask without waiting "
                "(wait_s=0)"
            ),
        )
