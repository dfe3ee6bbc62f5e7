"""Shared by the examples: where writ is, and a fresh principal registered with the admin token.

Every example runs against a local server started like this (see README.md)::

    export WRIT_ADMIN_TOKEN=example-admin-token
    writ serve --store sqlite:///examples.db --port 7421 &   # beside the README server on 7411
"""

from __future__ import annotations

import os
import sys
import uuid

import writ

URL = os.environ.get("WRIT_URL", "http://127.0.0.1:7421")
ADMIN_TOKEN = os.environ.get("WRIT_ADMIN_TOKEN", "")


def register(name: str, kind: str = "agent") -> tuple[str, str]:
    """Register ``name-<random>`` (so examples can run again); returns (name, token)."""
    if not ADMIN_TOKEN:
        sys.exit("set WRIT_ADMIN_TOKEN to the token `writ serve` was first started with")
    unique = f"{name}-{uuid.uuid4().hex[:6]}"
    with writ.Client(URL, ADMIN_TOKEN) as admin:
        try:
            out = admin.add_principal(unique, kind)
        except writ.Unavailable:
            sys.exit(
                f"no writ server at {URL}: start one with `writ serve --port 7421` (see examples/README.md)"
            )
    return unique, str(out["token"])


def resource(name: str) -> str:
    """A resource of its own for this run, under examples/."""
    return f"examples/{uuid.uuid4().hex[:6]}/{name}"
