"""At most so many of something at once for each key: each principal's waiting requests on
``writ serve`` (:mod:`writ.api.waits`), each client's requests in flight through ``writ gate``
(:mod:`writ.gate.proxy`), each client's open connections on a listener
(:mod:`writ.net.limits`). One count, so the caps cannot drift apart in how they count; and
one rule for who a client is, by its address (:func:`client_key`)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator

__all__ = ["PerKey", "client_key"]


def client_key(address: str) -> str:
    """The client an address counts as, for its share: an IPv4 address is itself; an IPv6
    address is its /64, the block one host or one subnet is given (whoever has one may
    write any of its 2**64 addresses as its source, so a share per address would be no
    share at all), and an IPv4-mapped one (``::ffff:192.0.2.1``) is the IPv4 address.
    Anything else (a Unix socket's empty name, a text a proxy wrote) is itself."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.is_loopback:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


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
