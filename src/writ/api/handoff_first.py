"""Which connections a relaying server hands to the writer (:mod:`writ.api.handoff`), told by
the first bytes read of each: every one but those whose first request is for an ops route
(``/livez``, ``/readyz``, ``/metrics``), which say how *this* process is."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from writ.api.ops import OPS_PATHS

__all__ = ["OPS", "away"]

OPS = frozenset(path.encode() for path in OPS_PATHS)  # answered by the server asked
_TARGET = 64  # of a target, what is read to tell an ops route from the rest


def away(first: bytes) -> bool | None:
    """Whether a connection whose first bytes are ``first`` goes to the writer: not when its
    first request is for one of :data:`OPS`, nor when it is nothing this can read as HTTP
    (the listener here answers that); None while its target is not read far enough."""
    method_end = first.find(b" ", 0, 32)
    if method_end < 0:
        return None if len(first) < 32 and b"\n" not in first else False
    target = first[method_end + 1 : method_end + 1 + _TARGET]
    if target[:8].lower().startswith((b"http://", b"https://")):  # absolute form: its path
        path = target.find(b"/", target.index(b"//") + 2)
        if path < 0:  # the authority not read to its end, or no path (the root)
            return True if any(c in target for c in b" \r\n") or len(target) >= _TARGET else None
        target = target[path:]
    for end, char in enumerate(target):
        if char in b" ?#\r\n":  # (a fragment: the app reads the path before it)
            return unquote_to_bytes(target[:end]) not in OPS  # as the app reads a path
    return None if len(target) < _TARGET else True
