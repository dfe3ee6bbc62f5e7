"""``writ serve --workers N``: N server processes on one port, for a PostgreSQL store.

uvicorn's supervisor binds the socket once and starts N worker processes that accept on
it (and starts a new one if a worker dies). Each worker is a whole ``writ serve``: its own
engine, connection pool and live replica; PostgreSQL is where they agree, exactly as
several servers on several machines do (docs/scaling.md). An SQLite store has one writer
per file, so it takes one process only.

The workers elect one of them the *writer* of leases, and the others relay their lease
writes to it (:mod:`writ.api.relay`), in a directory made for them (mode 0700, removed when
the supervisor exits) unless ``--relay`` names one or says ``off``.

The workers are started afresh (not forked), so they learn the store, the policy file and
the app's settings (logs, metrics, the relay) from the environment this module sets before
starting them. A worker serves like a single ``writ serve`` but for SIGHUP: it does not reload
its policy (SIGHUP to the supervisor replaces the workers one at a time, each replacement
reading the policy afresh); on SIGTERM it shuts down as a single server does, its waiters
answered 503 at once (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from writ.api.middleware import MAX_HEADERS
from writ.api.waits import DEFAULT_CAP
from writ.core.errors import Invalid

__all__ = ["AppSettings", "check_relay", "check_workers", "create_app_from_env", "run_workers"]

ENV_STORE = "WRIT_WORKER_STORE"
ENV_POLICY = "WRIT_WORKER_POLICY"
ENV_APP = "WRIT_WORKER_APP"


@dataclass(frozen=True, slots=True)
class AppSettings:
    """What each worker's app and logs are built with (``writ serve``'s own flags)."""

    log_format: str = "console"
    log_level: str = "info"
    metrics: bool = True
    metrics_token: str | None = None
    relay_dir: str | None = None
    max_waits: int = DEFAULT_CAP
    verify_every: float = 0.0
    handoff: bool = True
    max_headers: int = MAX_HEADERS  # the listener's --max-header-bytes


MAX_WORKERS = 256


def check_workers(store_url: str, workers: int) -> None:
    """Refuse a worker count the store cannot take."""
    if not 1 <= workers <= MAX_WORKERS:
        raise Invalid(f"--workers {workers}: use 1 to {MAX_WORKERS}")
    scheme = store_url.split(":", 1)[0].lower()
    if workers > 1 and not scheme.startswith("postgres"):
        raise Invalid(
            f"--workers {workers} needs a PostgreSQL store: an SQLite file has one writer, "
            "so one writ serve per file (see docs/scaling.md)"
        )


def check_relay(store_url: str, relay: str) -> str:
    """``--relay``'s directory, made if missing and checked (:mod:`writ.api.relay`), or
    ``"off"``; refused for a store that has one server only."""
    if relay.strip().lower() == "off":
        return "off"
    if not store_url.split(":", 1)[0].lower().startswith("postgres"):
        raise Invalid(
            "--relay needs a PostgreSQL store: an SQLite file has one server, which writes "
            "itself (see docs/scaling.md)"
        )
    from writ.api.relay import check_directory

    return check_directory(relay)


def create_app_from_env() -> Any:
    """The app of one worker (uvicorn calls this factory in each worker process)."""
    from writ.api.app import create_app
    from writ.core.policy import load
    from writ.engine import Engine
    from writ.stores import open_store
    from writ.telemetry import logs, tracing

    store_url = os.environ[ENV_STORE]
    policy = load(os.environ.get(ENV_POLICY) or None)
    app = AppSettings(**json.loads(os.environ.get(ENV_APP) or "{}"))
    secrets = [
        os.environ.get("WRIT_ADMIN_TOKEN"),
        os.environ.get("WRIT_WEBHOOK_SECRET"),
        policy.webhook_secret,
        app.metrics_token,
    ]
    logs.setup(app.log_format, app.log_level, [s for s in secrets if s])
    engine = Engine(open_store(store_url), policy)
    if tracing.configure():
        tracing.instrument(engine)
    logs.log_decisions(engine)
    return create_app(
        engine,
        metrics=app.metrics,
        metrics_token=app.metrics_token,
        relay_dir=app.relay_dir,
        settle=True,
        max_waits=app.max_waits,
        verify_every=app.verify_every,
        handoff=app.handoff,
        max_headers=app.max_headers,
    )


def _run_supervised(workers: int, uvicorn_options: dict[str, Any]) -> None:
    """uvicorn's supervisor over ``workers`` processes on one socket, each serving with
    writ's :class:`~writ.api.lifecycle.DrainingServer` (its graceful drain, the relay's
    hand-off) where uvicorn's worker lets it be chosen; else uvicorn's own server."""
    import uvicorn
    from uvicorn.supervisors import multiprocess

    worker = getattr(multiprocess, "Process", None)
    if not isinstance(getattr(worker, "server", None), property):  # another uvicorn
        uvicorn.run(
            "writ.api.workers:create_app_from_env",
            factory=True,
            workers=workers,
            **uvicorn_options,
        )
        return
    config = uvicorn.Config(
        "writ.api.workers:create_app_from_env", factory=True, workers=workers, **uvicorn_options
    )
    multiprocess.Process = _worker()  # type: ignore[misc]  # in this supervisor process only
    multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()


def _worker() -> type[Any]:
    """The worker class (made once: pickled by name, ``writ.api.workers._Worker``, into
    each worker process, which makes it again through the module's ``__getattr__``)."""
    made = globals().get("_Worker")
    if made is not None:
        return cast(type[Any], made)
    from uvicorn.supervisors.multiprocess import Process

    from writ.api.lifecycle import DrainingServer

    class Worker(Process):
        """uvicorn's worker process, serving with writ's server."""

        @property
        def server(self) -> Any:
            if self._server is None:
                self._server = DrainingServer(self.config)
            return self._server

    Worker.__qualname__ = Worker.__name__ = "_Worker"
    globals()["_Worker"] = Worker
    return Worker


def __getattr__(name: str) -> Any:  # made on first use: importing uvicorn costs a CLI's start
    if name == "_Worker":
        return _worker()
    raise AttributeError(name)


def run_workers(
    store_url: str,
    workers: int,
    policy_path: str | None,
    settings: AppSettings | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve with ``workers`` processes behind one listening socket until interrupted."""

    from writ.api import app as api_app

    check_workers(store_url, workers)
    if api_app.EXTENSIONS:  # installed in this process only (e.g. --checkpoint-every)
        raise Invalid(
            "--workers runs fresh processes that would not carry this server's extensions "
            "(--checkpoint-every): run checkpoints from a single-process writ serve"
        )
    settings = settings or AppSettings()
    made = None
    if settings.relay_dir is None:  # the workers elect a writer in a directory of their own
        made = tempfile.mkdtemp(prefix="writ-relay-")  # mode 0700
        settings = replace(settings, relay_dir=made)
    elif settings.relay_dir == "off":
        settings = replace(settings, relay_dir=None)
    os.environ[ENV_STORE] = store_url
    os.environ[ENV_APP] = json.dumps(asdict(settings))
    if policy_path:
        os.environ[ENV_POLICY] = os.path.abspath(policy_path)
    else:
        os.environ.pop(ENV_POLICY, None)
    try:
        _run_supervised(workers, uvicorn_options)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
