"""How the gate reads a header's name: as the upstream will; and the headers it owns.

WSGI/CGI upstreams read ``Writ_Holder`` and ``WRIT-HOLDER`` alike (``HTTP_WRIT_HOLDER``), so the
gate compares names in lower case with ``_`` as ``-``: a header spelled with underscores is the
same header everywhere the gate looks (what it drops, what it reads, whom it trusts).
"""

from __future__ import annotations

__all__ = ["FORWARDED", "HOP_BY_HOP", "METHOD_OVERRIDES", "WRIT_HEADERS", "header_name"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# headers only the gate may set towards the upstream, or only writ may read
WRIT_HEADERS = frozenset(
    {
        "writ-lease",
        "writ-fencing-token",
        "writ-holder",
        "writ-resource",
        "writ-authorization",
    }
)
# set by the gate itself towards the upstream, never passed on from the caller (an
# X-Forwarded-For from a --trust-forwarded-for address is extended instead)
FORWARDED = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# headers an upstream may take as the request's real method: judged as that method
METHOD_OVERRIDES = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override", "x-original-method"}
)


def header_name(name: bytes | str) -> str:
    """A header name the way WSGI/CGI upstreams read it (``HTTP_WRIT_HOLDER``): lower
    case, ``_`` as ``-`` — so ``Writ_Holder`` and ``WRIT-HOLDER`` are one header."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.lower().replace("_", "-")
