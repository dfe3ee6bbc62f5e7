"""``writ gate`` under uvicorn: bind the listen address and serve a :class:`~writ.gate.Gate`."""

from __future__ import annotations

import sys

from writ.gate.proxy import Gate
from writ.net.limits import GATE_LIMITS, Limits
from writ.net.listen import DEFAULT_LISTEN as DEFAULT_LISTEN
from writ.net.listen import bind, listening_url, parse_listen


def serve(
    gate: Gate,
    listen: str = DEFAULT_LISTEN,
    log_level: str = "warning",
    limits: Limits | None = None,
) -> None:
    """Serve ``gate`` until interrupted; announce the address on stderr once listening."""
    import uvicorn

    host, port = parse_listen(listen)
    sock = bind(host, port)
    config = uvicorn.Config(
        gate,
        log_level=log_level,
        access_log=False,
        server_header=False,
        # the gate sets X-Forwarded-For itself (Gate.forwarded): uvicorn must not rewrite the
        # client address from the caller's own header
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        **(limits or GATE_LIMITS).uvicorn_options(),
    )
    server = uvicorn.Server(config)
    print(
        f"writ gate: listening on {listening_url(sock)} -> {gate.upstream} "
        f"({len(gate.routes)} route(s), writ at {gate.url})",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])
