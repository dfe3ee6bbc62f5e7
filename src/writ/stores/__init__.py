"""Backends, chosen by URL scheme and imported lazily.

============================  =========================================
``sqlite:///path/writ.db``    :class:`writ.stores.sqlite.SQLiteStore`
``postgresql://user@host/db`` :class:`writ.stores.postgres.PostgresStore`
============================  =========================================
"""

from __future__ import annotations

import importlib
from typing import Any

from writ.core.errors import Invalid
from writ.stores.base import Store, Tx

__all__ = ["BACKENDS", "DEFAULT_URL", "Store", "Tx", "open_store"]

DEFAULT_URL = "sqlite:///writ.db"
BACKENDS: dict[str, str] = {
    "sqlite": "writ.stores.sqlite:SQLiteStore",
    "postgresql": "writ.stores.postgres:PostgresStore",
    "postgres": "writ.stores.postgres:PostgresStore",
}


def open_store(url: str, **options: Any) -> Store:
    """Build (not yet open) the store for ``url``; ``await store.open()`` before use."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    target = BACKENDS.get(scheme)
    if target is None:
        raise Invalid(
            f"store URL {url!r}: scheme must be one of "
            + ", ".join(sorted(f"{s}://" for s in BACKENDS))
            + " (e.g. sqlite:///writ.db)"
        )
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    store: Store = cls(url, **options)
    return store
