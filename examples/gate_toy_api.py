"""``writ gate`` in front of a toy admin API: a refused write and a passed one.

    python examples/gate_toy_api.py

Starts a toy admin API (it prints every request that reaches it), writes a routes file
mapping ``/admin/db/*`` to a resource, and starts ``writ gate`` in front of the API. Then an
agent writes without a lease (423, the API never sees it), takes the lease and writes again
(the API sees Writ-Fencing-Token and Writ-Holder, not the agent's writ token), and the audit
log shows both decisions.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from _setup import ADMIN_TOKEN, URL, register, resource
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import writ


async def admin_api(request: Request) -> JSONResponse:
    """The toy admin API: applies nothing, prints what reached it."""
    shown = {k: v for k, v in request.headers.items() if k.startswith("writ-")}
    print(
        f"    [admin API] {request.method} {request.url.path} {shown} "
        f"authorization={request.headers.get('authorization')!r}"
    )
    return JSONResponse({"applied": True})


def start_api() -> tuple[str, Callable[[], None]]:
    """The toy admin API on a free port, in a thread: its URL, and how to stop it (a server
    left running in a thread when Python exits can take the interpreter down with it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/{path:path}", admin_api, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def start_gate(token: str, upstream: str, routes: Path) -> tuple[subprocess.Popen[str], str]:
    """`WRIT_GATE_TOKEN=... writ gate --url ... --upstream ... --listen ... --routes ...`

    The token goes in the environment: a command line is readable by every user of the host,
    and writ gate warns of one given as --token."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "writ.cli",
            "gate",
            "--url",
            URL,
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--routes",
            str(routes),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WRIT_GATE_TOKEN": token},
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # "writ gate: listening on http://127.0.0.1:PORT -> ..."
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return proc, found.group(1)
        print(f"    {line.rstrip()}")  # what the gate says first: whom it acts as, any warning
    sys.exit(f"writ gate did not start (exit {proc.wait()})")


def main() -> None:
    db = resource("db")
    _, gate_token = register("admin-api-gate", kind="portal")
    agent, agent_token = register("perf-agent")
    routes = Path(tempfile.mkdtemp()) / "routes.toml"
    routes.write_text(f'[[route]]\npath = "/admin/db/*"\nresource = "{db}"\n')
    print(f"routes.toml:\n{routes.read_text()}")

    api, stop_api = start_api()
    proc, gate = start_gate(gate_token, api, routes)
    print(f"admin API at {api}, writ gate at {gate}\n")
    try:
        with httpx.Client(base_url=gate) as http, writ.Client(URL, agent_token) as client:
            me = {"Authorization": f"Bearer {agent_token}"}
            print(f"{agent}: POST /admin/db/scale without a lease")
            r = http.post("/admin/db/scale", json={"to": 8}, headers=me)
            print(
                f"  -> {r.status_code} {r.json()['error']['code']}: "
                f"{r.json()['error']['message']}\n"
            )

            print(f"{agent}: GET /admin/db/status (reads pass through)")
            print(f"  -> {http.get('/admin/db/status').status_code}\n")

            with client.lease(db, intent="double capacity", ttl_s=30) as lease:
                print(
                    f"{agent}: POST /admin/db/scale with lease {lease.lease_id} "
                    f"(fencing token {lease.fencing_token})"
                )
                r = http.post("/admin/db/scale", json={"to": 8}, headers={**me, **lease.headers()})
                print(f"  -> {r.status_code} {r.json()}\n")

        with writ.Client(URL, ADMIN_TOKEN) as admin:
            print("audit rows of the gate:")
            for row in admin.iter_audit(resource=db):
                if row["event"].startswith("gate."):
                    print(
                        f"  #{row['seq']} {row['event']:<13} agent={row['agent_id']} "
                        f"lock_holder={row['lock_holder']} notes={row['notes'][:90]!r}"
                    )
    finally:
        proc.terminate()
        proc.wait(10)
        stop_api()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
