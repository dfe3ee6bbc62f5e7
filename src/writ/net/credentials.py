"""The credential a request carries, read one way by every listener: ``writ serve`` (its API
and ``/metrics``), ``writ mcp --transport http`` and ``writ gate``.

``Authorization`` is not a list (RFC 9110, 11.6.2): a request with two of them says two
things, and a proxy in front may have checked one and not the other. Which one a listener
believed used to depend on the code path (FastAPI reads the first, a ``dict`` of the headers
the last). Now a request with more than one is refused, never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Twice", "sole"]


class Twice(ValueError):
    """The request carries the header more than once."""

    def __init__(self, name: bytes) -> None:
        self.name = name.decode("latin-1").title()  # Authorization, Writ-Authorization
        super().__init__(f"more than one {self.name} header: send exactly one")


def sole(headers: Iterable[tuple[bytes, bytes]], name: bytes = b"authorization") -> bytes | None:
    """The value of the one ``name`` header (ASGI names: lower case), None when there is
    none; :class:`Twice` when there are several."""
    found: bytes | None = None
    for k, v in headers:
        if k == name:
            if found is not None:
                raise Twice(name)
            found = bytes(v)
    return found
