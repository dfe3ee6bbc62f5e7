"""Placing a connection by its first request: served by the process whose listener
accepted it, or handed to another (the write relay's hand-off, :mod:`writ.api.handoff`),
parked there until the other says whether it took it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["Placed"]


class Placed:
    """A connection placed by its first request: served here, or by another process (the
    write relay's hand-off, :mod:`writ.api.handoff`) when the server running the listener
    sets ``OFFER`` on its protocol class: given the transport, the first bytes, the seconds
    since it connected and what settles it, True once handed to another process, False to
    serve it here, None to read more first. Handed, it is parked (nothing read, no deadline)
    until settled: True, the other process took it (this one lets its descriptor go), or
    False, served here after all."""

    OFFER: ClassVar[Callable[[Any, bytes, float, Callable[[bool], None]], bool | None] | None]
    OFFER = None
    _first: bytes | None = None  # what a connection not yet placed sent so far
    _since = 0.0  # when it connected (time.monotonic)
    _adopted = False  # handed over by another process: never placed again
    _read_there = b""  # and what that process read of it
    _late = 0.0  # and how long it had been connected there: gone from its head's deadline
    _parked: bytes | None = None  # handed, not settled yet: what was read of it
    _parked_at = 0.0  # since when (time.monotonic): no time of its client's
    _shut = False  # the server's graceful shutdown began while it was parked
    # the listener's connections with no request in progress (closed first for room: a
    # parked one is none of them), its head's deadline and how it is answered
    IDLE: ClassVar[dict[Any, None]]
    LIMITS: ClassVar[Any]
    HEAD_SLOW: ClassVar[bytes]
    transport: Any
    data_received: Callable[[bytes], None]  # the protocol's
    _arm: Callable[[float, bytes], None]  # (_Deadlines)
    _disarm: Callable[[], None]

    def _place(self) -> None:
        """Once connected: read first what the process that handed it over read, or begin
        placing it (:meth:`_placed`)."""
        if self._adopted:
            first, self._read_there = self._read_there, b""
            if first:
                self.data_received(first)
        elif type(self).OFFER is not None:
            self._first, self._since = b"", time.monotonic()

    def _placed(self, data: bytes) -> bytes:
        """What to serve here of the connection's first bytes so far, with ``data``;
        nothing while it is not placed yet, or once handed (parked until settled)."""
        data = (self._first or b"") + data
        offer = type(self).OFFER
        late = time.monotonic() - self._since
        placed = offer(self.transport, data, late, self._settle) if offer is not None else False
        if placed is None:
            self._first = data
            return b""
        self._first = None
        if placed:
            self._park(data)
            return b""
        return data

    def _park(self, data: bytes) -> None:
        """Handed: read nothing more and answer nothing (no deadline) until settled."""
        self._parked, self._parked_at = data, time.monotonic()
        self.IDLE.pop(self, None)
        self._disarm()
        self.transport.pause_reading()

    def shutdown(self) -> None:
        """The server's graceful shutdown: a parked connection is settled first (its client
        sent a request; closed now, it would be answered by nobody if the other process
        does not take it), then shut down as any other."""
        if self._parked is not None:
            self._shut = True
            return
        super().shutdown()  # type: ignore[misc]

    def _settle(self, taken: bool) -> None:
        """The other process took the connection (``taken``: let this copy go), or not
        (serve it here, from its first bytes)."""
        data, self._parked = self._parked, None
        transport = self.transport
        if data is None or transport is None or transport.is_closing():
            return  # (closed meanwhile: a shutdown)
        if taken:
            transport.abort()
            return
        self.IDLE[self] = None  # its head's deadline runs on from where it was handed
        late = self._parked_at - self._since
        self._arm(max(self.LIMITS.header_timeout - late, 0.0), self.HEAD_SLOW)
        transport.resume_reading()
        self.data_received(data)
        if self._shut:
            self.shutdown()  # (its answer, then the close)
