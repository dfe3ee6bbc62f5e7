"""How the gate reads a header's name: as the upstream will.

WSGI/CGI upstreams read ``Writ_Holder`` and ``WRIT-HOLDER`` alike (``HTTP_WRIT_HOLDER``), so the
gate compares names in lower case with ``_`` as ``-``: a header spelled with underscores is the
same header everywhere the gate looks (what it drops, what it reads, whom it trusts).
"""

from __future__ import annotations

__all__ = ["header_name"]


def header_name(name: bytes | str) -> str:
    """A header name the way WSGI/CGI upstreams read it (``HTTP_WRIT_HOLDER``): lower
    case, ``_`` as ``-`` — so ``Writ_Holder`` and ``WRIT-HOLDER`` are one header."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.lower().replace("_", "-")
