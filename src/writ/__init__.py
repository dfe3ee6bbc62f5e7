"""writ — vendor-neutral write authority for autonomous agents.

Only one agent holds write authority on a resource (and its blast radius) at a time, with
fencing tokens; every decision lands in a hash-chained audit row that names the lock holder.
"""

from __future__ import annotations

from writ._version import __version__ as __version__
from writ.core.errors import (
    ConsentRequired,
    Forbidden,
    Frozen,
    Held,
    Invalid,
    LeaseLost,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    WritError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ConsentRequired",
    "Forbidden",
    "Frozen",
    "Held",
    "Invalid",
    "LeaseLost",
    "NotFound",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "WritError",
    "__version__",
]


def __getattr__(name: str) -> object:  # the client pulls in httpx: import it on first use
    if name in ("Client", "AsyncClient"):
        from writ import client

        return getattr(client, name)
    raise AttributeError(f"module 'writ' has no attribute {name!r}")
