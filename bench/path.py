"""Where one request's time goes: a writ server's critical path at one client, segment by
segment, measured inside the server.

``python -m bench.run --peers writ-postgres --scenarios c1 --path`` runs the first server
of each writ peer through this file (``serve``), which wraps a few of writ's functions to
stamp the time (``time.perf_counter_ns``) as each request passes them, and writes the stamps
when the server stops; the run then prints, for acquires and releases apart, the median and
90th percentile of each segment and its share of the request:

    in → lean     HTTP: the request parsed (from its first byte parsed), its task started
    lean → store  the lean path: token, JSON body, the engine up to the store
    store → sent  the store: the decision, the ledger seal, the batch's one statement built
    sent → back   PostgreSQL's round trip: its CPU, the commit's WAL flush, two wake-ups
    back → done   after the commit: results read, callers settled, the request's task resumed
    done → answer the answer built (the lease's dict, JSON)
    answer → out  the answer's one write (a loader woken on the same CPU runs inside it)
    out → next    until the next request begins: the loader, the kernel, the event loop

On the SQLite store ``store → done`` is one segment (its COMMIT runs in a worker thread).
Only a serial client gives a path: a request whose lean path begins while another is open
(clients at once) is counted as overlapped and left out. Each wrapper costs about 0.8 µs
(two stamps around an async call, measured apart); the segments are the server's own, not
the loader's view (``pairs/s`` and ``p50`` stay the loader's). ``python -m bench.path FILE``
prints a written file's table again."""

from __future__ import annotations

import functools
import inspect
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

_SEGMENTS = [
    ("in", "lean", "HTTP in, task started"),
    ("lean", "store", "lean path + engine to the store"),
    ("store", "sent", "store: decide, seal, build"),
    ("sent", "back", "PostgreSQL round trip"),
    ("back", "done", "after the commit, task resumed"),
    ("store", "done", "store: decide + commit"),
    ("done", "answer", "answer built"),
    ("answer", "out", "answer written"),
    ("out", "next", "loader + kernel to the next"),
]
_ROUTES = {"/v1/leases": "acquire", "/v1/leases/{lease_id}/release": "release"}
_CAP = 400_000  # requests kept (the first ones): a 10-s window at one client is ~20,000

rows: list[dict[str, Any]] = []
_open: dict[str, Any] | None = None
overlapped = 0


def _stamp(name: str) -> None:
    if _open is not None and name not in _open:
        _open[name] = time.perf_counter_ns()


def _begin() -> None:
    """A request's message begins (the parser's first callback for it): the one before, if
    answered on the lean path, is kept; one that was not (another route) is dropped."""
    global _open
    now = time.perf_counter_ns()
    _close(now)
    _open = {"in": now}


def _close(now: int | None) -> None:
    if _open is not None and "out" in _open and len(rows) < _CAP:
        if now is not None:
            _open["next"] = now
        rows.append(_open)


def _lean(route: str) -> None:
    global _open, overlapped
    if _open is None or "lean" in _open:  # a second request in the air: no serial path
        overlapped += 1
        _open = None
        return
    _open["route"] = _ROUTES.get(route, route)
    _stamp("lean")


def _around(owner: Any, name: str, before: Callable[..., None], after: str | None) -> None:
    orig = getattr(owner, name)
    if inspect.iscoroutinefunction(orig):

        async def wrapped(*a: Any, **k: Any) -> Any:
            before(*a, **k)
            try:
                return await orig(*a, **k)
            finally:
                if after:
                    _stamp(after)

    else:

        def wrapped(*a: Any, **k: Any) -> Any:  # type: ignore[misc]
            before(*a, **k)
            try:
                return orig(*a, **k)
            finally:
                if after:
                    _stamp(after)

    setattr(owner, name, functools.wraps(orig)(wrapped))


def install() -> None:
    """Wrap the functions the stamps are taken at (in the server process, before it runs)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    import writ.api.fast as fast
    from writ.stores.postgres import _store as pg_store
    from writ.stores.postgres import _writer
    from writ.stores.sqlite import _store as sqlite_store

    _around(HttpToolsProtocol, "on_message_begin", lambda *a, **k: _begin(), None)
    _around(fast.FastLeases, "take", lambda _self, route, *a, **k: _lean(route), None)
    for store in (pg_store.PostgresStore, sqlite_store.SQLiteStore):
        _around(store, "transact", lambda *a, **k: _stamp("store"), "done")
    _around(_writer, "_round_trip", lambda *a, **k: _stamp("sent"), "back")
    _around(fast, "direct_answer", lambda *a, **k: _stamp("answer"), "out")


def dump(path: str) -> None:
    global _open
    _close(None)  # the last request, answered: no next one
    _open = None
    with open(path, "w") as f:
        json.dump({"rows": rows, "overlapped": overlapped}, f)


def table(path: str) -> str:
    """The written stamps' segments as a Markdown table per route (acquire, release)."""
    with open(path) as f:
        got = json.load(f)
    out: list[str] = []
    for route in ("acquire", "release"):
        rs = [r for r in got["rows"] if r.get("route") == route and "out" in r]
        rs = rs[len(rs) // 10 :]  # past the warm-up
        if not rs:
            continue
        total = sorted(r["out"] - r["in"] for r in rs)
        med_total = total[len(total) // 2]
        out.append(f"#### {route}: {len(rs):,} requests, in → out p50 {med_total / 1000:.1f} µs")
        out.append("| segment | what | p50 µs | p90 µs | share of p50 |")
        out.append("|---|---|---|---|---|")
        for a, b, what in _SEGMENTS:
            if (a, b) == ("store", "done") and any("sent" in r for r in rs):
                continue  # PostgreSQL: its parts are shown
            d = sorted(r[b] - r[a] for r in rs if a in r and b in r and r[b] >= r[a])
            if not d or len(d) < len(rs) // 2:  # not on this store's path (or this route's)
                continue
            p50, p90 = d[len(d) // 2] / 1000, d[len(d) * 9 // 10] / 1000
            share = f"{100 * p50 * 1000 / med_total:.0f} %" if b != "next" else "—"
            out.append(f"| {a} → {b} | {what} | {p50:.1f} | {p90:.1f} | {share} |")
        out.append("")
    if got.get("overlapped"):
        out.append(f"({got['overlapped']:,} requests overlapped another: left out)")
    return "\n".join(out) if out else "no serial requests stamped (one client only)"


def _serve(out: str, argv: list[str]) -> None:
    """Run ``argv`` (``python -c CODE ARGS...``, a writ server) in this process, stamped."""
    if len(argv) < 3 or argv[1] != "-c":
        raise SystemExit("bench/path.py serve OUT python -c CODE [ARGS...]")
    install()
    # uvicorn raises the SIGTERM it stopped on again once shut down: end here, stamps written
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = ["-c", *argv[3:]]
    try:
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
    finally:
        dump(out)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 2:
        print(table(sys.argv[1]))
    else:
        raise SystemExit(__doc__)
