"""A real writ server on a free port, for tests of the client and the CLI.

``live_server`` (session scope) runs ``create_app`` under uvicorn in a background thread over
a temporary SQLite store, with ``admin`` bootstrapped from :data:`ADMIN_TOKEN`. Tests share
it, so each names its own resources and principals (:func:`unique`). ``serve()`` starts a
private one for tests that stop the server on purpose.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ADMIN_TOKEN = "test-admin-token-live"

__all__ = ["ADMIN_TOKEN", "LiveServer", "in_background", "live_server", "serve", "unique"]


def unique(prefix: str = "t") -> str:
    """A fresh name that is a valid principal name and resource segment."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def in_background(fn: Callable[[], object], delay: float = 0.0) -> Iterator[None]:
    """Run ``fn`` in a thread while the block runs; join it after, re-raising its error."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            if delay:
                time.sleep(delay)
            fn()
        except BaseException as exc:  # handed to the test after the join
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(15)
    if errors:
        raise errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A running server: its URL, its engine, and helpers to make principals."""

    def __init__(self, url: str, engine: Any, store_url: str, stop: Any) -> None:
        self.url = url
        self.engine = engine
        self.store_url = store_url
        self.admin_token = ADMIN_TOKEN
        self.stop = stop  # stop(): shut the server down now (idempotent)

    def client(self, token: str | None = None, **kw: Any) -> Any:
        from writ.client import Client

        return Client(self.url, token if token is not None else self.admin_token, **kw)

    def principal(self, kind: str = "agent", name: str | None = None, **kw: Any) -> tuple[str, str]:
        """Register a principal; returns ``(name, token)``."""
        name = name or unique(kind)
        with self.client() as admin:
            out = admin.add_principal(name, kind, **kw)
        return name, str(out["token"])

    def env(self, token: str | None = None) -> dict[str, str]:
        """``WRIT_URL``/``WRIT_TOKEN`` for a CLI invocation acting as ``token``."""
        return {"WRIT_URL": self.url, "WRIT_TOKEN": token or self.admin_token}


@contextmanager
def serve(store_path: Path, policy: Any = None) -> Iterator[LiveServer]:
    """Run a server over the SQLite file ``store_path`` until the block ends."""
    import uvicorn

    from writ.engine import Engine
    from writ.server import create_app
    from writ.stores import open_store

    store_url = f"sqlite:///{store_path}"
    engine = Engine(open_store(store_url), policy)
    port = free_port()
    config = uvicorn.Config(
        create_app(engine),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    saved = os.environ.get("WRIT_ADMIN_TOKEN")
    os.environ["WRIT_ADMIN_TOKEN"] = ADMIN_TOKEN  # read when the engine starts
    thread = threading.Thread(target=server.run, name=f"writ-server-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
    finally:
        if saved is None:
            os.environ.pop("WRIT_ADMIN_TOKEN", None)
        else:
            os.environ["WRIT_ADMIN_TOKEN"] = saved

    def stop() -> None:
        server.should_exit = True
        thread.join(15)

    try:
        yield LiveServer(f"http://127.0.0.1:{port}", engine, store_url, stop)
    finally:
        stop()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the session (client and CLI tests)."""
    with serve(tmp_path_factory.mktemp("live") / "writ.db") as srv:
        yield srv
