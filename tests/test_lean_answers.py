"""The lean path (writ.api.fast) answers as FastAPI would, and holds no more than it must:
a Content-Type FastAPI reads as no type is not JSON here either; an acquire that could not
wait is refused as invalid before it is counted as a wait; a request that waits holds what
it says, not the padding it came in; and the listener's --max-header-bytes is the app's
limit too. Over real HTTP through the protocol ``writ serve`` runs, and against FastAPI's
own stack (``WritApp.full_stack``) in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.server_fixtures import server_process, unique
from tests.stores_fixtures import Backend
from tests.test_authority import ADMIN_TOKEN, World, world
from tests.test_lean_path import as_served, served
from writ.api.fast import _compact
from writ.api.ops import LEASES

__all__ = ["as_served"]  # the autouse fixture of the lean path's tests, used here too


@contextlib.asynccontextmanager
async def fastapi(w: World) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``w``'s app with FastAPI's own stack only: no lean path in front."""
    transport = httpx.ASGITransport(app=w.app.full_stack)
    async with httpx.AsyncClient(transport=transport, base_url="http://writ") as c:
        yield c


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "APPLICATION/JSON; charset=utf-8",
        "application/vnd.writ+json",
        "application/x/y+json",  # two slashes: no type at all to FastAPI (email.message)
        "application/json/x",
        "application/+json",
        "application/jsonx",
        "text/json",
        "application",
    ],
)
async def test_a_content_type_is_json_here_exactly_when_it_is_to_fastapi(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content_type: str
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w, fastapi(w) as full:
        statuses = []
        for client in (w.http, full):
            body = {"resource": f"prod/db/{unique('ct')}", "intent": "content type"}
            r = await client.post(
                LEASES,
                content=json.dumps(body),
                headers={**w.h("perf-agent"), "content-type": content_type},
            )
            statuses.append(r.status_code)
        assert statuses[0] == statuses[1], (content_type, statuses)


@pytest.mark.parametrize(
    "fields",
    [{"wait_s": 500}, {"wait_s": -1}, {"wait_s": 5, "ttl_s": 0}, {"wait_s": 5, "intent": " "}],
)
async def test_an_acquire_that_cannot_wait_is_invalid_even_when_its_principal_waits_enough(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, object]
) -> None:
    """With its principal at its cap of waits, FastAPI answers a bad wait 422 (its body is
    checked first): the lean path too, not 503 with Retry-After (a client obeying it would
    retry a bad request for ever); a good wait is 503 there, nothing done."""
    async with world(backend, tmp_path, monkeypatch) as w:
        waits = w.app.waits
        with contextlib.ExitStack() as full:
            for _ in range(waits.cap):
                full.enter_context(waits.one("admin"))
            bad = await w.lease("admin", "prod/db/cap", **fields)
            assert bad.status_code == 422, bad.text
            good = await w.lease("admin", "prod/db/cap", wait_s=5)
            assert good.status_code == 503 and good.headers["retry-after"] == "1", good.text
        assert waits.held("admin") == 0


async def test_a_waiting_acquire_holds_what_it_says_not_its_padding(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight acquires padded with spaces to 1 MiB wait on a held resource, by the shortest
    way and through FastAPI (a field only FastAPI takes): while they wait, the server holds
    a few kB for them, not 8 MiB (before, each held its whole body for up to wait_s)."""
    async with world(backend, tmp_path, monkeypatch) as w, served(w) as port:
        held = await w.lease("perf-agent", "prod/db/mem", ttl_s=300)
        assert held.status_code == 201, held.text
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            writers = []
            for i in range(8):
                asked = {"resource": "prod/db/mem", "intent": "padded", "wait_s": 60}
                if i % 2:
                    asked["consent_id"] = None  # FastAPI's to answer
                body = json.dumps(asked).encode()
                body = body[:-1] + b" " * ((1 << 20) - len(body) - 64) + b"}"
                head = (
                    f"POST {LEASES} HTTP/1.1\r\nhost: writ\r\nauthorization: Bearer "
                    f"{ADMIN_TOKEN}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                )
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head.encode() + body)
                await writer.drain()
                writers.append(writer)
                del body
            deadline = asyncio.get_running_loop().time() + 20
            while w.app.waits.held("admin") < 8:
                assert asyncio.get_running_loop().time() < deadline, w.app.waits.held("admin")
                await asyncio.sleep(0.02)
            holding = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            for writer in writers:
                writer.close()
        assert holding < 2 << 20, f"{holding:,} bytes held by 8 waiting acquires"


def test_compact_keeps_what_a_body_says_and_anything_else_as_it_came() -> None:
    small = b'{"resource": "a",   "intent": "b"}'
    assert _compact(small) is small  # short bodies are kept as they are
    padded = b'{"resource":"a\\ud800","n":1.0,"big":' + b"9" * 30 + b"}" + b" " * 5000
    assert json.loads(_compact(padded)) == json.loads(padded)
    assert len(_compact(padded)) < 100
    not_json = b"{" * 5000
    assert _compact(not_json) is not_json
    # what was already read from the body is written, not the body read again
    assert _compact(b"{}" + b" " * 5000, {"resource": "a"}) == b'{"resource":"a"}'


def test_the_listeners_header_limit_is_the_apps(tmp_path: Path) -> None:
    """``writ serve --max-header-bytes 65536``: 20 kB of headers pass (the app's own check
    took 16 KiB whatever the flag said), on the hot routes' shortest way too; 70 kB do not."""
    limits = "__import__('writ.net.limits', fromlist=['Limits']).Limits(max_header_bytes=65536)"
    url = f"sqlite:///{tmp_path / 'writ.db'}"
    with server_process(url, tmp_path, run_args=f"limits={limits}") as srv, srv.client() as c:
        pad = {"x-pad": "p" * 20_000}
        assert c.get("/v1/health", headers=pad).status_code == 200
        r = c.post(LEASES, json={"resource": "a/b", "intent": "big headers"}, headers=pad)
        assert r.status_code == 201, r.text
        assert c.get("/v1/health", headers={"x-pad": "p" * 70_000}).status_code == 413
