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

__all__ = [
    "BACKENDS",
    "DEFAULT_URL",
    "SECRET_OPTIONS",
    "OlderSchema",
    "Store",
    "Tx",
    "check_schema",
    "open_store",
    "redact",
]

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


class OlderSchema(Invalid):
    """A store an older writ made, opened ``read_only``: upgrade it first (``writ migrate
    --upgrade``), which a command that only reads never does for it."""


def check_schema(url: str, versions: set[int] | None, expected: int) -> None:
    """Refuse to read, without changing it, a store that is not writ's (``versions`` None: it
    has no ``writ_migrations`` table) or whose schema is not this writ's (``versions``: the
    migrations it records; ``expected``: how many this writ has)."""
    where = redact(url)
    if versions is None:
        raise Invalid(
            f"{where} is not a writ store (it has no writ_migrations table): check the URL; "
            "nothing was changed"
        )
    have = max(versions, default=0)
    if not versions >= set(range(1, expected + 1)):
        raise OlderSchema(
            f"the store {where} has an older schema (migration {have}; this writ's is "
            f"{expected}): stop its servers and run 'writ migrate --upgrade {where}' first"
        )
    if have > expected:
        raise Invalid(
            f"the store {where} has a newer schema (migration {have}; this writ's is "
            f"{expected}): use the writ that upgraded it"
        )


def open_store(url: str, **options: Any) -> Store:
    """Build (not yet open) the store for ``url``; ``await store.open()`` before use.
    ``read_only=True``: opening creates, migrates and changes nothing (it refuses, as
    :func:`check_schema` says, a store that is not writ's or not at this writ's schema)."""
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
