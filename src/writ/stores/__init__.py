"""Backends, chosen by URL scheme and imported lazily.

============================  =========================================
``sqlite:///path/writ.db``    :class:`writ.stores.sqlite.SQLiteStore`
``postgresql://user@host/db`` :class:`writ.stores.postgres.PostgresStore`
============================  =========================================
"""

from __future__ import annotations

import importlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from writ.core.errors import Invalid
from writ.stores.base import Store, Tx

__all__ = ["BACKENDS", "DEFAULT_URL", "SECRET_OPTIONS", "Store", "Tx", "open_store", "redact"]

DEFAULT_URL = "sqlite:///writ.db"
BACKENDS: dict[str, str] = {
    "sqlite": "writ.stores.sqlite:SQLiteStore",
    "postgresql": "writ.stores.postgres:PostgresStore",
    "postgres": "writ.stores.postgres:PostgresStore",
}


# URL options that carry a secret (libpq's), shown as *** like the password before the host
SECRET_OPTIONS = frozenset({"password", "sslpassword"})
_USERINFO = re.compile(r"(://[^/?#@:]*:)[^/?#]*@")


def redact(url: str) -> str:
    """``url`` as a message, a log line or a report may show it: a password in it
    (``user:PASSWORD@host``, or a ``password=`` option) is ``***``. Every message that
    names a store URL shows it this way (the URL given on the command line, or in
    ``WRIT_STORE``, holds the password in plain text)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # does not parse (an unclosed [ in the host): hide what may be one
        return _USERINFO.sub(r"\1***@", url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***"
        if unquote(pair.split("=", 1)[0]).lower() in SECRET_OPTIONS
        else pair
        for pair in parts.query.split("&")
    )
    if netloc != parts.netloc:  # in place: urlunsplit would respell sqlite:///x as sqlite:/x
        url = url.replace(f"//{parts.netloc}", f"//{netloc}", 1)
    if query != parts.query:
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    return url


def open_store(url: str, **options: Any) -> Store:
    """Build (not yet open) the store for ``url``; ``await store.open()`` before use."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    target = BACKENDS.get(scheme)
    try:
        urlsplit(url)
    except ValueError as exc:
        raise Invalid(f"store URL {redact(url)!r} does not parse: {exc}") from None
    if target is None:
        raise Invalid(
            f"store URL {redact(url)!r}: scheme must be one of "
            + ", ".join(sorted(f"{s}://" for s in BACKENDS))
            + " (e.g. sqlite:///writ.db)"
        )
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    store: Store = cls(url, **options)
    return store
