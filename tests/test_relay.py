"""The write relay (writ.api.relay): servers on one host elect a writer and the others
relay lease writes to it. Real ``writ serve`` processes on a real PostgreSQL database, with
``--no-handoff`` (each keeps its connections: the hand-off is tests/test_handoff.py); the
history checker over relayed load is in tests/test_multiserver.py (``relayed``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_fixtures import ADMIN_TOKEN, add_principals, verify, writ_servers
from tests.stores_fixtures import Backend
from writ.api.relay import MAX_SOCKET_PATH, check_directory
from writ.core.errors import Invalid

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _log(tmp: Path, i: int) -> str:
    return (tmp / f"server-{i}.log").read_text(errors="replace")


async def _roles(tmp: Path, n: int, within: float = 10.0) -> tuple[int, list[int]]:
    """Which server is the writer and which relay to it, from their logs."""
    deadline = time.monotonic() + within
    while True:
        logs = [_log(tmp, i) for i in range(n)]
        writers = [i for i, text in enumerate(logs) if "this server is the writer" in text]
        relaying = [i for i, text in enumerate(logs) if "relays lease writes" in text]
        if len(writers) == 1 and len(relaying) == n - 1:
            return writers[0], relaying
        assert time.monotonic() < deadline, logs
        await asyncio.sleep(0.05)


def _sample(metrics: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


async def _metric(c: httpx.AsyncClient, url: str, name: str) -> float:
    r = await c.get(f"{url}/metrics", headers=ADMIN)
    assert r.status_code == 200, r.text
    return _sample(r.text, name)


def _rows_written(tmp: Path, i: int) -> int:
    """The ledger rows server ``i`` committed, by its decision log (one line a row; its
    store's commit count also moves with its own sweeps when they expire something)."""
    return _log(tmp, i).count("writ.decision:")


def _acquire(resource: str, **more: Any) -> dict[str, Any]:
    return {"resource": resource, "intent": "relay test", "ttl_s": 30, **more}


def _same(a: httpx.Response, b: httpx.Response) -> None:
    """The same answer byte for byte, ``Retry-After`` included (for the same request)."""
    assert (a.status_code, a.content) == (b.status_code, b.content)
    assert a.headers.get("retry-after") == b.headers.get("retry-after")
    assert a.headers.get("content-type") == b.headers.get("content-type")


def _alike(a: httpx.Response, b: httpx.Response) -> None:
    """The same answer but for what two grants differ in (ids, times, tokens, names)."""
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.json().keys() == b.json().keys(), (a.text, b.text)


async def test_relayed_writes_are_answered_as_the_writers_own(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """Each answer through the relaying server is the one the writer gives for the same
    request — a grant, a refusal naming the holder, an unknown or missing token, a field
    the engine refuses, another's lease, an unknown lease — and the relaying server's
    store commits nothing: the writer did every write."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=False
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        writer, follower = urls[w], urls[f]
        a, b = await add_principals(writer, "agent", ["agent-a", "agent-b"])
        auth_a = {"Authorization": f"Bearer {a}"}
        auth_b = {"Authorization": f"Bearer {b}"}
        async with httpx.AsyncClient(timeout=10) as c:
            before = _rows_written(tmp_path, f)
            grants = {}
            for name, url in (("w", writer), ("f", follower)):
                r = await c.post(f"{url}/v1/leases", json=_acquire(f"db/{name}"), headers=auth_a)
                assert r.status_code == 201, r.text
                grants[name] = r.json()
            _same(
                await c.post(f"{writer}/v1/leases", json=_acquire("db/w"), headers=auth_b),
                r_f := await c.post(f"{follower}/v1/leases", json=_acquire("db/w"), headers=auth_b),
            )
            assert r_f.status_code == 409 and r_f.json()["error"]["holder"]["holder"] == "agent-a"
            assert r_f.headers.get("retry-after") is not None
            refused: list[tuple[dict[str, Any], dict[str, str]]] = [
                (_acquire("db/x"), {"Authorization": "Bearer not-a-token"}),
                ({"resource": "db/x", "ttl_s": 30}, auth_a),  # no intent: the engine's 422
                (_acquire("db/x", ttl_s=-1), auth_a),
                (_acquire("db/x", touches=[7]), auth_a),
                (_acquire("x" * 70_000), auth_a),  # too long a resource, answered and named
            ]
            for body, headers in refused:
                r_w, r_f = [
                    await c.post(f"{url}/v1/leases", json=body, headers=headers)
                    for url in (writer, follower)
                ]
                assert r_w.status_code >= 400, r_w.text
                _same(r_w, r_f)
            granted: list[tuple[dict[str, Any], dict[str, str]]] = [
                (_acquire("db/x", ttl_s=10**9), auth_a),  # the policy's maximum
                (_acquire("db/x", touches=["db/y"]), auth_b),
            ]
            for i, (body, headers) in enumerate(granted):
                r_w, r_f = [
                    await c.post(
                        f"{url}/v1/leases",
                        json=body | {"resource": f"{body['resource']}/{i}/{name}"},
                        headers=headers,
                    )
                    for name, url in (("w", writer), ("f", follower))
                ]
                _alike(r_w, r_f)
            for lease_id, headers in (
                (grants["w"]["lease_id"], auth_b),  # another's lease
                ("ls_unknown", auth_a),
                # a call too large for a frame is not relayed but answered here, the same
                ("x" * 60_000, {"Authorization": "Bearer " + "t" * 10_000}),
            ):
                _same(
                    await c.post(f"{writer}/v1/leases/{lease_id}/release", headers=headers),
                    await c.post(f"{follower}/v1/leases/{lease_id}/release", headers=headers),
                )
            # each server releases the lease the other granted
            for name, url in (("w", follower), ("f", writer)):
                lease_id = grants[name]["lease_id"]
                r = await c.post(f"{url}/v1/leases/{lease_id}/release", headers=auth_a)
                assert r.status_code == 200 and r.json()["state"] == "released", r.text
            assert _rows_written(tmp_path, f) == before  # the writer wrote every row
            tokens = [g["fencing_token"] for g in grants.values()]
            assert tokens == sorted(tokens) and len(set(tokens)) == 2
            # 12 lease writes went through the relaying server, each answered by the writer
            relayed = 'writ_relay_calls_total{outcome="relayed"}'
            served = 'writ_relay_calls_total{outcome="served"}'
            assert await _metric(c, follower, relayed) == 12
            assert await _metric(c, writer, served) == 12
            assert await _metric(c, follower, 'writ_relay_role{role="relaying"}') == 1
            assert await _metric(c, writer, 'writ_relay_role{role="writer"}') == 1
            assert await _metric(c, writer, 'writ_relay_role{role="relaying"}') == 0
        assert (await verify(follower))["ok"] is True


@contextlib.asynccontextmanager
async def _one_held(pg_backend: Backend, tmp_path: Path, resource: str) -> AsyncIterator[Any]:
    """Two relayed servers, two agents, and ``resource`` held by the first: the servers'
    URLs, the writer's and the relaying server's index, the two tokens, the grant and a
    client."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=False
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        a, b = await add_principals(urls[w], "agent", ["agent-a", "agent-b"])
        async with httpx.AsyncClient(timeout=10) as c:
            held = await c.post(
                f"{urls[w]}/v1/leases",
                json=_acquire(resource),
                headers={"Authorization": f"Bearer {a}"},
            )
            assert held.status_code == 201, held.text
            yield urls, w, f, a, b, held, c


async def _queued(c: httpx.AsyncClient, url: str, resource: str) -> int:
    r = await c.get(f"{url}/v1/resources/{resource}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return len(r.json().get("queue") or [])


async def _until(check: Any, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_relayed_wait_whose_caller_hangs_up_leaves_the_queue(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """A caller waiting through the relaying server hangs up: the writer takes its place
    in the queue back, so the next release hands the resource to nobody and a later
    acquire gets it at once."""
    async with _one_held(pg_backend, tmp_path, "db/q") as (urls, w, f, a, b, held, c):
        port = int(urls[f].rsplit(":", 1)[1])
        body = json.dumps(_acquire("db/q", wait_s=30)).encode()
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/leases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {b}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

        async def queued(n: int) -> bool:
            return await _queued(c, urls[w], "db/q") == n

        await _until(lambda: queued(1), "the relayed wait never queued")
        writer.close()  # the caller hangs up
        await _until(lambda: queued(0), "the relayed wait stayed in the queue")
        r = await c.post(
            f"{urls[w]}/v1/leases/{held.json()['lease_id']}/release",
            headers={"Authorization": f"Bearer {a}"},
        )
        assert r.status_code == 200, r.text
        r = await c.post(
            f"{urls[w]}/v1/leases",
            json=_acquire("db/q"),
            headers={"Authorization": f"Bearer {a}"},
        )
        assert r.status_code == 201, r.text  # nobody else was handed it


@pytest.mark.parametrize("handoff", [False, True], ids=["relayed", "handed"])
async def test_when_the_writer_dies_another_server_takes_over(
    pg_backend: Backend, tmp_path: Path, handoff: bool
) -> None:
    """SIGKILL the writer: the relaying server writes itself at once (503 only for a call
    that was in the air, never a wrong answer), then becomes the writer; every grant it
    acknowledged is in the ledger, which verifies. Handed: the client's connection was the
    writer's and goes with it, as a lone server's crash takes it. Before the hand-off was
    acknowledged, so did the next one in 4 of 25 runs (and 5 of 43): handed over in the
    instant the writer was dying, its descriptor went with the socket; the relaying server
    now serves those itself (0 of 25 runs). One the writer said it took in its very last
    instant still goes with it: at most two calls fail."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=handoff
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        (a,) = await add_principals(urls[f], "agent", ["agent-a"])
        auth = {"Authorization": f"Bearer {a}"}
        pid = int(re.findall(r"Started server process \[(\d+)\]", _log(tmp_path, w))[0])
        granted = []
        async with httpx.AsyncClient(timeout=10) as c:
            for i in range(5):
                r = await c.post(f"{urls[f]}/v1/leases", json=_acquire(f"db/k{i}"), headers=auth)
                assert r.status_code == 201, r.text
                granted.append(r.json()["lease_id"])
            os.kill(pid, signal.SIGKILL)
            statuses = []
            deadline = time.monotonic() + 15
            i = 5
            while "this server is the writer" not in _log(tmp_path, f):
                assert time.monotonic() < deadline, _log(tmp_path, f)[-3000:]
                try:
                    r = await c.post(
                        f"{urls[f]}/v1/leases", json=_acquire(f"db/k{i}"), headers=auth
                    )
                except httpx.TransportError:  # its connection went with the writer
                    assert handoff
                    statuses.append(503)
                    continue
                statuses.append(r.status_code)
                if r.status_code == 201:
                    granted.append(r.json()["lease_id"])
                else:
                    assert r.status_code == 503, r.text
                i += 1
                await asyncio.sleep(0.05)
            assert statuses.count(503) <= (2 if handoff else 1), statuses
            r = await c.post(f"{urls[f]}/v1/leases", json=_acquire("db/after"), headers=auth)
            assert r.status_code == 201, r.text
            granted.append(r.json()["lease_id"])
            for lease_id in granted:
                r = await c.get(f"{urls[f]}/v1/leases/{lease_id}", headers=auth)
                assert r.status_code == 200 and r.json()["state"] == "held", r.text
        assert (await verify(urls[f]))["ok"] is True


async def test_a_stopped_writer_is_let_go_and_its_servers_answer_again(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """SIGSTOP the writer, the hand-off on: the relaying server kept handing it each new
    connection, which waited for an ``a`` that never came — every client hung, with no
    bound, while readiness said 200. Now hand-offs left unsettled past SETTLE_S, the writer
    silent, end the link: what was handed is shut down (the client sees its end, not a hang:
    the stopped writer's copy would have kept it open), and the relaying server serves what
    it accepts next itself (its lease writes relayed, within the relay's own 30-s bound)."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=True
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        pid = int(re.findall(r"Started server process \[(\d+)\]", _log(tmp_path, w))[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            answered = None
            deadline = time.monotonic() + 25
            async with httpx.AsyncClient(timeout=20) as c:
                while answered is None:
                    assert time.monotonic() < deadline, _log(tmp_path, f)[-3000:]
                    try:
                        r = await c.get(f"{urls[f]}/v1/health")
                    except httpx.TimeoutException:  # a handed connection left hanging
                        raise
                    except httpx.TransportError:  # handed to the stopped writer: shut down
                        continue
                    answered = r.status_code
            assert answered == 200
            assert "the writer settled no connection handed to it" in _log(tmp_path, f)
        finally:
            os.kill(pid, signal.SIGCONT)


async def _wait_through(url: str, token: str, resource: str) -> asyncio.Task[httpx.Response]:
    """An acquire that queues for ``resource`` (held by someone else), in the background."""
    client = httpx.AsyncClient(timeout=30)

    async def ask() -> httpx.Response:
        async with client:
            return await client.post(
                f"{url}/v1/leases",
                json=_acquire(resource, wait_s=25),
                headers={"Authorization": f"Bearer {token}"},
            )

    return asyncio.ensure_future(ask())


@pytest.mark.parametrize("stopping", ["writer", "relaying"])
async def test_a_relayed_wait_ends_503_when_either_server_shuts_down(
    pg_backend: Backend, tmp_path: Path, stopping: str
) -> None:
    """SIGTERM, with a caller waiting through the relaying server: whichever of the two
    stops, the wait ends as a graceful shutdown ends one on a single server — 503 saying so,
    and its request is gone from the queue."""
    async with _one_held(pg_backend, tmp_path, "db/s") as (urls, w, f, _a, b, _held, c):
        waiting = await _wait_through(urls[f], b, "db/s")

        async def queued_once() -> bool:
            return await _queued(c, urls[w], "db/s") == 1

        await _until(queued_once, "the relayed wait never queued")
        stop, stay = (w, f) if stopping == "writer" else (f, w)
        pid = int(re.findall(r"Started server process \[(\d+)\]", _log(tmp_path, stop))[0])
        os.kill(pid, signal.SIGTERM)
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.status_code == 503, answer.text
        assert "shutting down" in answer.json()["error"]["message"], answer.text

        async def queue_empty() -> bool:
            return await _queued(c, urls[stay], "db/s") == 0

        await _until(queue_empty, "the ended wait stayed in the queue")


class _Channel:
    """The store's channel as an outsider hears it (LISTEN): :meth:`notes` are the kinds
    of the notes sent on it since the last call, hellos and the principals trigger's left
    out — read up to a mark of its own (tests/test_pg_scaleout.py's ``_heard``), so every
    NOTIFY committed before is in, with no waiting on the clock."""

    def __init__(self, pg_backend: Backend) -> None:
        self.backend = pg_backend

    async def __aenter__(self) -> _Channel:
        import psycopg
        from psycopg import sql

        from tests.test_pg_scaleout import _MARK

        self.conn = await psycopg.AsyncConnection.connect(
            self.backend._pg_conninfo(), autocommit=True
        )
        channel = f"writ_{self.backend.schema}" if self.backend.schema else "writ"
        for name in (channel, _MARK):
            await self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        return self

    async def notes(self) -> list[str]:
        from tests.test_pg_scaleout import _heard

        return [k for _, k in await _heard(self.conn) if k not in ("hello", "principals")]

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()


def _telling(line: str) -> bool:
    """A server's log line worth a failure message: all but its decisions and its access log."""
    return "writ.decision:" not in line and "HTTP/1.1" not in line


async def test_the_writer_tells_the_relaying_server_over_the_relay_not_by_notify(
    pg_backend: Backend, tmp_path: Path
) -> None:
    """While the only other process the writer hears is a server relaying to it, its
    commits' notes go over the relay, not by NOTIFY (which costs each commit): nothing but
    hellos on the channel, and still a long poll on the relaying server for the next audit
    row is answered when the writer commits it. Once that server is gone, the writer
    notifies again."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=False
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        async with _Channel(pg_backend) as channel, httpx.AsyncClient(timeout=30) as c:
            n = 0

            async def pair(url: str) -> None:
                nonlocal n
                n += 1
                r = await c.post(f"{url}/v1/leases", json=_acquire(f"db/n{n}"), headers=ADMIN)
                assert r.status_code == 201, r.text
                lease_id = r.json()["lease_id"]
                r = await c.post(f"{url}/v1/leases/{lease_id}/release", headers=ADMIN)
                assert r.status_code == 200, r.text

            async def quiet() -> bool:  # the servers' start (each wrote) is behind us
                await pair(urls[f])
                return await channel.notes() == []

            await _until(quiet, "the writer kept notifying with only a relaying server")
            taken = 'writ_relay_notes_total{way="taken"}'
            sent = 'writ_relay_notes_total{way="sent"}'
            before = (await _metric(c, urls[f], taken), await _metric(c, urls[w], sent))
            for url in (urls[f], urls[w]) * 5:
                await pair(url)  # two commits each, wherever they were asked
            after = [0.0, await _metric(c, urls[w], sent)]

            async def taken_all() -> bool:  # (the last notes may be on their way yet)
                after[0] = await _metric(c, urls[f], taken)
                return after[0] - before[0] >= after[1] - before[1]

            await _until(taken_all, "the relaying server did not take every note sent")
            # (CI failed here twice, 7 and 3 of 20 sent, and a loaded run once, 1 of 20:
            # quiet() had ended early, on another test's mark read as its own (the channel
            # reader, tests/test_pg_scaleout.py's _heard), while the writer still notified.
            # Should it fail again: whether the relaying server wrote any itself, which makes
            # the writer notify for a while, and what the channel saw)
            all_told = after[0] - before[0] == after[1] - before[1] == 20
            calls = {
                (i, way): await _metric(c, urls[i], f'writ_relay_calls_total{{outcome="{way}"}}')
                for i in (w, f)
                for way in ("relayed", "spilled", "lost", "served")
                if not all_told  # (only a failure's message needs them)
            }
            # (a text, which pytest shows whole: it cuts a tuple's repr short)
            assert all_told, (
                f"taken/sent before {before}, after {after}; writer {w}, relaying {f}; "
                f"calls {calls}; channel {await channel.notes()}; logs "
                f"{[(i, ln) for i in (w, f) for ln in _log(tmp_path, i).splitlines() if _telling(ln)]}"
            )
            # a long poll on the relaying server is woken by the writer's note
            r = await c.get(f"{urls[f]}/v1/audit", params={"limit": 100_000}, headers=ADMIN)
            head = r.json()["rows"][-1]["seq"]
            poll = asyncio.ensure_future(
                c.get(
                    f"{urls[f]}/v1/events",
                    params={"after_seq": head, "wait_s": 20},
                    headers=ADMIN,
                )
            )
            t0 = time.monotonic()
            await pair(urls[w])
            answer = await asyncio.wait_for(poll, 25)
            assert answer.status_code == 200 and answer.json()["rows"], answer.text
            assert time.monotonic() - t0 < 10  # woken by the note, not at its wait_s
            assert await channel.notes() == []

            pid = int(re.findall(r"Started server process \[(\d+)\]", _log(tmp_path, f))[0])
            os.kill(pid, signal.SIGTERM)

            async def notified() -> bool:
                await pair(urls[w])
                return await channel.notes() != []

            # its graceful shutdown closes the relay last: under a loaded machine (the suite
            # runs on every core) that took longer than ten seconds once
            left = "the writer did not notify once its relaying server left"
            await _until(notified, left, within=30.0)


async def test_a_server_writes_itself_while_the_writer_has_enough_of_its_calls() -> None:
    """Past ``SPILL`` calls that do not wait in the air at the writer, a server writes the
    next itself (the writer is falling behind); waits do not count (sixteen agents queued
    through one server leave its other writes relayed); the link is used again once
    answers come back."""
    from writ.api.relay import SPILL, Relay
    from writ.api.relay_wire import _Link

    relay = Relay("unused")
    link = _Link("me")
    relay._link = link
    assert relay.link() is link
    link.quick.update(range(SPILL - 1))
    assert relay.link() is link
    link.quick.add(SPILL)
    assert relay.link() is None and relay.counts["spilled"] == 1
    link.quick.discard(0)
    assert relay.link() is link
    link.closed = True
    assert relay.link() is None


def _frame(header: Any, body: bytes = b"", sizes: tuple[int, int] | None = None) -> bytes:
    head = json.dumps(header).encode()
    n_head, n_body = sizes or (len(head), len(body))
    return struct.pack(">II", n_head, n_body) + head + body


@pytest.mark.parametrize(
    ("greet", "garbage"),
    [
        (False, _frame([1, "acquire", "t", None, None, None])),  # a call before any hello
        (False, _frame([0, "hello", 7, ""])),  # a hello that is not text
        (False, _frame([0, "hello", "x"])),  # a hello that does not say its instance
        (False, _frame([0, "hello", "x", 7])),  # an instance that is not text
        (False, _frame([0, "hello", "x", "i" * 65])),  # an instance too long to be one
        (True, _frame([1, "acquire", "t", None, None, None], sizes=(1 << 30, 0))),  # too large
        (True, struct.pack(">II", 3, 0) + b"{{{"),  # not JSON
        (True, struct.pack(">II", 60_000, 0) + b"[" * 30_000 + b"]" * 30_000),  # too deep
        (True, _frame({"id": 1, "op": "acquire"})),  # not an array
        (True, _frame(["1", "acquire", "t", None, None, None])),  # an id that is not an integer
        (True, _frame([1, "delete", "t", None, None, None])),  # an unknown call
        (True, _frame([1, "acquire", 7, None, None, None])),  # a token that is not text
        (True, _frame([1, "release", "t", ["ls_x"], None, None])),  # a lease id, not text
        (True, _frame([1, "release", "t", "ls_x", {"id": 1}, None])),  # a request id, not text
        (True, _frame([1, "acquire", "t", None, None, 7])),  # a traceparent that is not text
        (True, _frame([1, "acquire", "t", None, None, "0" * 100])),  # too long to be one
        (True, _frame([1, "acquire", "t", None, None])),  # a call of the old shape
        (True, _frame([1, 200, None, None, {}])),  # an answer, sent to the writer
        (True, _frame([0, "notes"], b"[]")),  # notes, sent to the writer
    ],
    ids=[
        "no-hello",
        "int-hello",
        "no-instance",
        "int-instance",
        "long-instance",
        "huge",
        "not-json",
        "deep",
        "object",
        "text-id",
        "unknown-op",
        "int-token",
        "list-lease",
        "object-request-id",
        "int-traceparent",
        "long-traceparent",
        "old-call",
        "answer",
        "notes",
    ],
)
async def test_the_writer_closes_a_connection_that_sends_garbage_and_serves_on(
    pg_backend: Backend, tmp_path: Path, greet: bool, garbage: bytes
) -> None:
    """A frame no writ server sends — before the hello, or after it — closes that
    connection, and nothing else: the writer still answers the relaying server's calls."""
    relay = tmp_path / "relay"
    async with writ_servers(
        pg_backend.url, 2, tmp_path, relay=relay, log_level="info", handoff=False
    ) as urls:
        w, (f,) = await _roles(tmp_path, 2)
        sock = str(relay / "writer.sock")
        reader, writer = await asyncio.open_unix_connection(sock)
        if greet:  # learn the writer's identity (it says it when it refuses), then say it
            writer.write(_frame([0, "hello", "someone else", ""]))
            refused = await _read_frame(reader)
            assert refused[:2] == [0, "refused"], refused
            reader, writer = await asyncio.open_unix_connection(sock)
            writer.write(_frame([0, "hello", refused[2], ""]))
            assert (await _read_frame(reader))[:2] == [0, "welcome"]
        writer.write(garbage)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
        relayed = 'writ_relay_calls_total{outcome="relayed"}'
        async with httpx.AsyncClient(timeout=10) as c:
            before = await _metric(c, urls[f], relayed)
            r = await c.post(f"{urls[f]}/v1/leases", json=_acquire("db/g"), headers=ADMIN)
            assert r.status_code == 201, r.text
            # the writer wrote it (counted as such: the relaying server's own commits may
            # include a sweep of its own at any moment)
            assert await _metric(c, urls[f], relayed) == before + 1
        assert "closed a connection that sent" in _log(tmp_path, w)


async def _read_frame(reader: asyncio.StreamReader) -> list[Any]:
    n_head, n_body = struct.unpack(">II", await asyncio.wait_for(reader.readexactly(8), 5))
    header: list[Any] = json.loads(await reader.readexactly(n_head))
    await reader.readexactly(n_body)
    return header


def test_the_relay_directory_must_be_this_users_and_closed(tmp_path: Path) -> None:
    """It carries bearer tokens: a directory open to others, a file, or a symlink is
    refused; a missing one is made, mode 0700."""
    made = tmp_path / "new"
    assert check_directory(str(made)) == str(made)
    assert made.stat().st_mode & 0o777 == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(Invalid, match="open to other users"):
        check_directory(str(open_dir))
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(Invalid):
        check_directory(str(a_file))
    with pytest.raises(Invalid, match="too long"):
        check_directory(str(tmp_path / ("d" * 120)))
    # as long as the writer's socket may be, one byte too long for the hand-off's
    edge = str(tmp_path / "e")
    edge += "e" * (MAX_SOCKET_PATH - len(os.path.join(edge, "handoff.sock")) + 1)
    assert len(os.path.join(edge, "writer.sock")) <= MAX_SOCKET_PATH
    with pytest.raises(Invalid, match="too long"):
        check_directory(edge)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(Invalid, match="symlink"):
        check_directory(str(link))
    if os.getuid() == 0:  # as root, a directory of another user can be made
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(Invalid, match="another user"):
            check_directory(str(theirs))


def test_a_relay_needs_a_postgresql_store(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from writ.cli import main

    out = CliRunner().invoke(
        main,
        ["serve", "--store", f"sqlite:///{tmp_path / 'w.db'}", "--relay", str(tmp_path / "r")],
    )
    assert out.exit_code != 0
    assert "--relay needs a PostgreSQL store" in out.output


def test_same_user_check_reads_the_peers_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from writ.api.relay_wire import _same_user

    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert _same_user(a) is True
        monkeypatch.setattr(os, "getuid", lambda: os.geteuid() + 1)  # as another user would
        assert _same_user(a) is False
    finally:
        a.close()
        b.close()
    assert _same_user(None) is False


async def test_a_writer_that_cannot_listen_lets_the_lock_go(tmp_path: Path) -> None:
    """Its socket cannot be made (here: a directory is in its place): the server serves
    anyway, writing itself, and frees the lock for another server to take."""
    from writ.api.relay import Relay

    where = tmp_path / "relay"
    where.mkdir(mode=0o700)
    (where / "writer.sock").mkdir()
    first = Relay(str(where))
    await first.start()
    try:
        assert first.role() == "alone"
        (where / "writer.sock").rmdir()
        second = Relay(str(where))
        await second.start()
        try:
            assert second.role() == "writer"
        finally:
            await second.stop()
    finally:
        await first.stop()


async def test_a_writer_elected_as_its_server_begins_to_drain_takes_no_hand_offs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its graceful shutdown begins while the election makes the writer's socket: it does
    not then listen for hand-offs (it listened, after its server had stopped listening, and
    took connections from relaying servers into a drain that had shut its own down)."""
    from writ.api.handoff import SOCKET as HANDOFF
    from writ.api.handoff import Handoff
    from writ.api.relay import Relay

    where = tmp_path / "relay"
    where.mkdir(mode=0o700)
    relay = Relay(str(where))
    handoff = Handoff(str(where), "writ test", {})
    handoff.attach(lambda s, first, late: s.close(), lambda: 0, 100, {})
    relay.handoff = handoff
    loop = asyncio.get_running_loop()
    made = loop.create_unix_server

    async def draining_meanwhile(*args: Any, **kwargs: Any) -> Any:
        server = await made(*args, **kwargs)
        relay.draining.set()  # the server began its graceful shutdown meanwhile
        return server

    monkeypatch.setattr(loop, "create_unix_server", draining_meanwhile)
    await relay.start()
    try:
        assert relay.role() == "writer"
        assert handoff._listening is None and not (where / HANDOFF).exists()
    finally:
        await relay.stop()


@contextlib.asynccontextmanager
async def _pair(
    tmp_path: Path, run: Any, identity: str = "same", **writer_options: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """A writer and a server relaying to it, in this process (``run`` is the writer's),
    stopped after."""
    from writ.api.relay import Relay

    where = tmp_path / "relay"
    where.mkdir(mode=0o700, exist_ok=True)
    stores = writer_options.pop("stores", (None, None))
    writer = Relay(str(where), identity="same", store=stores[0])
    relaying = Relay(str(where), identity=identity, store=stores[1])
    for k, v in writer_options.items():
        setattr(writer, k, v)
    writer.run = run
    await writer.start()
    await relaying.start()
    try:
        yield writer, relaying
    finally:
        await relaying.stop()
        await writer.stop()


def _send(
    relaying: Any,
    op: str = "acquire",
    lease: str | None = None,
    body: bytes = b"{}",
    rid: str | None = None,
    waits: float = 0,
    traceparent: str | None = None,
) -> tuple[Any, int, asyncio.Future[Any]]:
    """One call through ``relaying``'s link: the link, the call's id and its answer."""
    link = relaying.link()
    assert link is not None
    sent = link.call(op, "tok", lease, body, rid, waits, traceparent)
    assert sent is not None
    return link, *sent


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _never(*_: Any) -> Any:
    """A writer's ``run`` that never answers, and ignores a hang-up (a stuck engine)."""
    await asyncio.Event().wait()


async def test_calls_cross_the_socket_both_ways_in_process(tmp_path: Path) -> None:
    """What the relaying end sends is what the writer's ``run`` gets (the request id and
    the trace's ``traceparent`` too), its answer comes back whole, and a cancel reaches the
    call it names."""
    from writ.api.relay_wire import Answer

    seen: list[tuple[str, str, str | None, bytes, str | None, str | None]] = []
    cancelled = asyncio.Event()

    async def run(
        op: str,
        token: str,
        lease: str | None,
        body: bytes,
        rid: str | None,
        hung_up: asyncio.Event,
        drain: asyncio.Event,
        traceparent: str | None,
    ) -> Answer:
        seen.append((op, token, lease, body, rid, traceparent))
        if op == "acquire" and b"wait" in body:
            await hung_up.wait()
            cancelled.set()
            return Answer(503, b'{"gone":true}')
        return Answer(201, body[::-1], 7, "agent-a", {"resource": "db/x" + "x" * 1000})

    async with _pair(tmp_path, run) as (writer, relaying):
        assert (writer.role(), relaying.role()) == ("writer", "relaying")
        link, _, answer = _send(relaying, body=b'{"resource":"db/x"}', rid="rid-1")
        a = await asyncio.wait_for(answer, 5)
        assert (a.status, a.body, a.retry, a.principal) == (
            201,
            b'{"resource":"db/x"}'[::-1],
            7,
            "agent-a",
        )
        assert a.log == {"resource": ("db/x" + "x" * 1000)[:256]}  # named, cut short
        _, call_id, answer = _send(relaying, body=b'{"wait":1}', waits=30)
        link.cancel(call_id, "hangup")  # after the call on the same connection: it is seen
        a = await asyncio.wait_for(answer, 5)
        assert a.status == 503 and cancelled.is_set()
        _, _, answer = _send(relaying, "release", "ls_1", b"", traceparent=TRACEPARENT)
        assert (await asyncio.wait_for(answer, 5)).status == 201
        assert seen[0][4] == "rid-1" and seen[0][5] is None
        assert seen[-1] == ("release", "tok", "ls_1", b"", None, TRACEPARENT)
        assert writer.counts["served"] == 3
        # too large to send: not sent at all, and the link is fine
        assert link.call("release", "t" * (70 << 10), "ls_1", b"") is None
        assert link.call("acquire", "t", None, b"x" * ((8 << 20) + 1)) is None
        assert relaying.link() is link and not link.closed


async def test_a_server_of_another_store_or_policy_is_not_relayed_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Servers that share a directory but not a store, a policy or a writ version do not
    relay to each other: the writer refuses the hello and the other writes itself; trying
    again, it is refused again, and neither says so twice. A refused link never carried the
    writer's notes, so its end is no notes lost: the refused server once looked up what it
    had missed (two database reads, and an info line) after every retry, twice a second."""

    async def run(*_: Any) -> Any:
        raise AssertionError("nothing may be relayed")

    caplog.set_level("WARNING", "writ.relay")
    ws, rs = _NoteStore("w-inst"), _NoteStore("r-inst")
    async with _pair(tmp_path, run, identity="another store", stores=(ws, rs)) as (writer, other):
        assert (writer.role(), other.role()) == ("writer", "alone")
        assert other.link() is None
        for _ in range(3):
            await other._elect()  # as its keeper does, twice a second
        assert other.role() == "alone" and writer._refused == {"another store"}
        await asyncio.sleep(0.05)  # each refused link's end has been seen
        assert not rs.lost.is_set() and ws.note_peers == set()
        said = [r.getMessage() for r in caplog.records]
        assert sum("refused a server of another store" in m for m in said) == 1, said
        assert sum("serves another store" in m for m in said) == 1, said

        # a process inventing identities is refused every time; the writer logs and keeps
        # MAX_REFUSED of them, not one per invention
        from writ.api.relay import MAX_REFUSED

        for i in range(MAX_REFUSED + 20):
            reader, w = await asyncio.open_unix_connection(str(tmp_path / "relay" / "writer.sock"))
            w.write(_frame([0, "hello", f"invented-{i}", ""]))
            assert (await _read_frame(reader))[:2] == [0, "refused"]
            w.close()
        assert len(writer._refused) == MAX_REFUSED
        said = [r.getMessage() for r in caplog.records]
        assert sum("refused a server of another store" in m for m in said) == MAX_REFUSED


async def test_a_writer_that_is_going_answers_new_calls_not_run(tmp_path: Path) -> None:
    """While the writer stops, the call it is running is answered, and a call that arrives
    meanwhile is answered *not run* (its server writes it itself), never lost."""
    from writ.api.relay_wire import NOT_RUN, Answer

    started, finish = asyncio.Event(), asyncio.Event()

    async def run(op: str, *_: Any) -> Answer:
        started.set()
        await finish.wait()
        return Answer(201, b"{}")

    async with _pair(tmp_path, run) as (writer, relaying):
        _, _, first = _send(relaying)
        await started.wait()
        stopping = asyncio.ensure_future(writer.stop())
        await writer._stopped.wait()  # stop() has begun
        _, _, second = _send(relaying)
        assert (await asyncio.wait_for(second, 5)).status == NOT_RUN
        finish.set()
        assert (await asyncio.wait_for(first, 5)).status == 201
        await asyncio.wait_for(stopping, 5)


async def test_a_going_writer_tells_its_servers_and_nothing_sent_is_lost(tmp_path: Path) -> None:
    """The writer says ``going`` as its shutdown begins: its servers relay no new call (they
    write it themselves), and it reads what they sent before they read that, answering it
    *not run*, until they close their links. Before, it closed its connections at once: a
    call sent but unread was reset, one still queued on the relaying side was dropped, and
    both failed 503 "outcome unknown" (one of them granted all the same)."""
    from writ.api.relay_wire import NOT_RUN, Answer

    async def run(op: str, *_: Any) -> Answer:
        return Answer(201, b"{}")

    async with _pair(tmp_path, run) as (writer, relaying):
        link = relaying.link()
        assert link is not None
        stopping = asyncio.ensure_future(writer.stop())
        await writer._stopped.wait()
        _, _, raced = _send(relaying)  # sent before it read "going"
        assert (await asyncio.wait_for(raced, 5)).status == NOT_RUN
        deadline = time.monotonic() + 5
        while not link.retired:  # the writer's "going", read
            assert time.monotonic() < deadline, "the writer's going was never read"
            await asyncio.sleep(0.01)
        assert relaying.link() is None  # new calls: written here
        await asyncio.wait_for(stopping, 5)


async def test_a_call_never_sent_when_its_link_ends_is_not_run(tmp_path: Path) -> None:
    """A call still queued on the relaying side when its link ends never reached the writer:
    it is answered *not run* (its server writes it), not 503 "outcome unknown"."""
    from writ.api.relay_wire import NOT_RUN

    async with _pair(tmp_path, _never, stop_wait_s=0.1) as (_writer, relaying):
        link, _, unsent = _send(relaying)  # queued for this step of the loop, not written
        assert link.transport is not None
        link.transport.abort()  # the link ends before the step's flush
        assert (await asyncio.wait_for(unsent, 5)).status == NOT_RUN


async def test_a_writer_that_does_not_answer_in_time_is_left(tmp_path: Path) -> None:
    """A writer that stops answering (a stopped process, a blocked loop) keeps its socket
    open: past the deadline the call fails 503 (outcome unknown) and the link ends, so the
    server writes itself instead of hanging its callers."""
    from writ.core.errors import Unavailable

    async with _pair(tmp_path, _never, stop_wait_s=0.1) as (_writer, relaying):
        link = relaying.link()
        assert link is not None
        link.deadline_s = 0.1
        _, _, answer = _send(relaying)
        with pytest.raises(Unavailable, match="may or may not"):
            await asyncio.wait_for(answer, 5)
        assert link.closed and relaying.link() is None


async def test_the_writer_checks_a_relayed_release_path_as_the_front_would() -> None:
    """A relayed call is checked again at the writer: a release whose lease id is not text
    (a NUL), or that carries a body, and an acquire whose body the lean path would not have
    taken (not an object, an unknown field, nested 100,000 deep), are refused 422 without
    reaching the engine."""
    from writ.api.fast import FastLeases

    class NoEngine:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was asked for {name}")

    leases = FastLeases(None, NoEngine())  # type: ignore[arg-type]
    never = asyncio.Event()
    for op, lease, body in (
        ("release", "ls_\x00x", b""),
        ("release", "ls_x", b"{}"),
        ("acquire", None, b"[]"),
        ("acquire", None, b'{"resource": "r", "admin": true}'),
        ("acquire", None, b"[" * 100_000 + b"]" * 100_000),  # nested past any parser
    ):
        a = await leases.relayed(op, "tok", lease, body, None, never, never)
        assert a.status == 422, (op, lease, body, a)


async def test_a_writer_stops_within_its_bound_whatever_a_call_does(tmp_path: Path) -> None:
    """A call that never ends (a stuck engine) does not hold the writer's shutdown: past
    ``stop_wait_s`` it is cancelled."""
    started = asyncio.Event()

    async def run(*_: Any) -> Any:
        started.set()
        await _never()

    async with _pair(tmp_path, run, stop_wait_s=0.1) as (writer, relaying):
        _send(relaying)
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(writer.stop(), 5)


async def test_a_relayed_call_that_fails_unexpectedly_is_answered_500(tmp_path: Path) -> None:
    """Whatever goes wrong at the writer, the call is answered (500, the app's own body),
    not left to its deadline."""
    from writ.api.middleware import _INTERNAL_ERROR

    async def run(*_: Any) -> Any:
        raise RuntimeError("boom")

    async with _pair(tmp_path, run) as (_writer, relaying):
        link, _, answer = _send(relaying)
        a = await asyncio.wait_for(answer, 5)
        assert a.status == 500 and json.loads(a.body) == _INTERNAL_ERROR
        assert relaying.link() is link  # the link is fine


class _NoteStore:
    """What the relay asks of a store for notes (writ.stores.base.Store): its instance, the
    peers given its notes and the way, what it takes, and when that way broke."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.note_peers: set[str] = set()
        self.note_sink: Any = None
        self.taken: list[Any] = []
        self.lost = asyncio.Event()

    def take_notes(self, notes: Any) -> None:
        self.taken.append(list(notes))

    def notes_lost(self) -> None:
        self.lost.set()


async def test_notes_cross_to_the_relaying_server_and_stop_with_its_link(tmp_path: Path) -> None:
    """The writer's store counts the relaying server among those it tells over the relay
    (by its store's instance), for as long as the link lasts; a commit's notes arrive there
    whole; a link that breaks says so to the relaying server's store (it looks up what it
    missed) and takes the server out of the writer's count (the writer notifies again)."""
    ws, rs = _NoteStore("w-inst"), _NoteStore("r-inst")
    async with _pair(tmp_path, _never, stores=(ws, rs)) as (writer, relaying):
        assert ws.note_peers == {"r-inst"} and ws.note_sink is not None
        notes = [("audit", {"seq": 7}), ("granted", {"waiter_id": "wt_1", "lease_id": "ls_1"})]
        ws.note_sink(notes)

        async def arrived() -> bool:
            return bool(rs.taken)

        await _until(arrived, "the notes never arrived")
        assert rs.taken == [notes]
        assert (writer.notes["sent"], relaying.notes["taken"]) == (1, 1)
        assert not rs.lost.is_set()
        await writer.stop()
        await asyncio.wait_for(rs.lost.wait(), 5)
        assert ws.note_peers == set() and ws.note_sink is None


@pytest.mark.parametrize(
    "body",
    [b"{}", b"[[1, {}]]", b'[["audit", 7]]', b'[["audit"]]', b"[" * 100_000, b"not json"],
    ids=["object", "int-kind", "int-payload", "short", "deep", "not-json"],
)
async def test_notes_no_writer_sends_close_the_link(tmp_path: Path, body: bytes) -> None:
    """Notes that are not a list of [kind, object] close the link (the server writes
    itself, and looks up what it may have missed), and are not taken."""
    ws, rs = _NoteStore("w-inst"), _NoteStore("r-inst")
    async with _pair(tmp_path, _never, stores=(ws, rs)) as (writer, relaying):
        link = relaying.link()
        assert link is not None
        (conn,) = writer._conns
        conn.send([0, "notes"], body)
        await asyncio.wait_for(rs.lost.wait(), 5)
        assert link.closed and rs.taken == []


async def test_a_server_that_does_not_read_its_notes_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Notes are sent whether or not a server asked anything: one that stops reading (a
    stopped process) would have them pile up at the writer with every commit. Past
    ``max_unread`` bytes its connection is closed; once it reads again it finds the link
    gone, looks up what it missed, and the writer no longer counts it."""
    ws, rs = _NoteStore("w-inst"), _NoteStore("r-inst")
    async with _pair(tmp_path, _never, stores=(ws, rs), max_unread=256 << 10) as (
        writer,
        relaying,
    ):
        link = relaying.link()
        assert link is not None and link.transport is not None
        link.transport.pause_reading()
        (conn,) = writer._conns
        big = [("audit", {"seq": 1, "pad": "x" * (32 << 10)})]
        for _ in range(10_000):
            if conn.closed:
                break
            ws.note_sink(big)
            await asyncio.sleep(0)  # let the socket take what it will
        assert conn.closed, "the writer kept sending to a server that does not read"
        assert "does not read" in caplog.text
        link.transport.resume_reading()
        await asyncio.wait_for(rs.lost.wait(), 5)
        assert ws.note_peers == set()


async def test_the_frames_of_one_step_leave_in_one_send(tmp_path: Path) -> None:
    """Calls made in one step of the loop (the requests that arrived together) leave in
    one write, and so do the answers the writer gives in one step: one system call and one
    wake-up of the other end for all of them (the two servers' CPU per pair at 16 clients
    0.58 ms against 0.63, bench/RESULTS.md)."""
    from writ.api.relay_wire import Answer

    async def run(*_: Any) -> Answer:
        await go.wait()
        return Answer(201, b"{}")

    go = asyncio.Event()

    class Counted:
        def __init__(self, transport: Any) -> None:
            self.transport, self.writes = transport, 0

        def write(self, data: bytes) -> None:
            self.writes += 1
            self.transport.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.transport, name)

    async with _pair(tmp_path, run) as (writer, relaying):
        link = relaying.link()
        assert link is not None
        out = link.transport = Counted(link.transport)
        answers = [_send(relaying)[2] for _ in range(5)]
        await _until(lambda: _asked(writer, 5), "the calls never arrived")
        assert out.writes == 1
        (conn,) = writer._conns
        back = conn.transport = Counted(conn.transport)
        go.set()
        assert [a.status for a in await asyncio.wait_for(asyncio.gather(*answers), 5)] == [201] * 5
        assert back.writes == 1


async def _asked(writer: Any, n: int) -> bool:
    return sum(len(c.calls) for c in writer._conns) == n


async def test_large_notes_are_cut_short_not_the_link(tmp_path: Path) -> None:
    """A grant's note carries its lease, and a lease what its caller put in it (a rollback
    plan up to the body limit): a commit granting several such is cut note by note to the
    short fields (the other server reads the database anyway), and the link stays."""
    ws, rs = _NoteStore("w-inst"), _NoteStore("r-inst")
    async with _pair(tmp_path, _never, stores=(ws, rs)) as (_writer, relaying):
        link = relaying.link()
        big = {"waiter_id": "wt_1", "lease_id": "ls_1", "lease": {"rollback": "x" * (1 << 20)}}
        ws.note_sink([("granted", big)] * 12 + [("audit", {"seq": 9})])

        async def arrived() -> bool:
            return bool(rs.taken)

        await _until(arrived, "the notes never arrived")
        (notes,) = rs.taken
        assert notes[0] == ("granted", {"truncated": True, "waiter_id": "wt_1", "lease_id": "ls_1"})
        assert notes[-1] == ("audit", {"seq": 9}) and len(notes) == 13
        assert relaying.link() is link and not rs.lost.is_set()


def test_a_link_that_said_its_instance_looks_up_what_it_missed_once() -> None:
    """From its hello on, the writer may count a server as told over the relay — before
    the welcome arrives (a slow writer): whenever that link ends, welcomed or not, the
    server looks up what it missed, once (a deadline and the close after it both end it)."""
    from writ.api.relay_wire import _Link

    class Wire:
        def write(self, data: bytes) -> None: ...

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str) -> Any:
            return None

        def close(self) -> None: ...

    async def run() -> None:
        store = _NoteStore("r-inst")
        link = _Link("me", store=store)  # type: ignore[arg-type]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("writ.api.relay_wire._same_user", lambda sock: True)
            link.connection_made(Wire())  # type: ignore[arg-type]
        calls = []
        store.notes_lost = lambda: calls.append(1)  # type: ignore[method-assign]
        link.lost()
        link.lost()
        assert calls == [1] and not link.welcome.result()

    asyncio.run(run())


async def test_a_link_retired_when_the_hand_off_ends_keeps_its_calls_in_the_air(
    tmp_path: Path,
) -> None:
    """The writer ending the hand-off (it died, or drains) retires the relaying server's
    link: no new call is relayed (the server writes it), the call in the air still gets the
    writer's answer on it (a draining writer gives one; a closed link would fail it 503,
    outcome unknown), and once it has it the keeper links again."""
    from writ.api.relay_wire import Answer

    release = asyncio.Event()

    async def run(op: str, *_: Any) -> Answer:
        await release.wait()
        return Answer(201, b"{}")

    async with _pair(tmp_path, run) as (_writer, relaying):
        relaying.retry_s = 0.01
        link, _, answer = _send(relaying)
        relaying.writer_gone()
        assert relaying.link() is None and not link.closed  # new calls: written here
        assert relaying.role() == "alone"  # (writ_relay_role says so)
        await asyncio.sleep(0.05)  # the keeper looks (a few times): the call is still out
        assert not link.closed
        release.set()
        assert (await asyncio.wait_for(answer, 5)).status == 201

        async def linked_again() -> bool:
            return relaying.link() not in (None, link)

        await _until(linked_again, "it did not link again")


async def test_a_link_retired_by_a_cut_off_hand_off_relays_again_once_it_links_again(
    tmp_path: Path,
) -> None:
    """The writer cuts off a relaying server's hand-off (it read nothing it was told, or
    could not say its give-back) and lives on: the hand-off links again at once, and so the
    relay link is no longer retired, though a long wait is still in the air on it (before,
    every call was written here, beside the writer, until that wait's answer: up to an
    hour)."""
    from writ.api.handoff import Handoff
    from writ.api.relay import Relay
    from writ.api.relay_wire import Answer

    where = tmp_path / "relay"
    where.mkdir(mode=0o700)
    release = asyncio.Event()

    async def run(op: str, *_: Any) -> Answer:
        await release.wait()
        return Answer(201, b"{}")

    writer, relaying = Relay(str(where), identity="same"), Relay(str(where), identity="same")
    writer.run = run
    for relay in (writer, relaying):
        relay.retry_s = 0.01
        relay.handoff = Handoff(str(where), "same", {})
        relay.handoff.attach(lambda s, first, late: s.close(), lambda: 0, 100, {})
    assert relaying.handoff is not None and writer.handoff is not None
    gone: list[bool] = []
    await writer.start()
    await relaying.start()
    try:
        assert relaying.handoff._out is not None
        link, _, answer = _send(relaying, waits=3600)  # a long wait, in the air

        def writer_gone() -> None:
            relaying.writer_gone()
            gone.append(link.retired)

        relaying.handoff.on_gone = writer_gone
        for peer in list(writer.handoff._peers.values()):
            peer.drain()  # as Handoff cuts one off: the writer lives on

        async def retired() -> bool:
            return bool(gone)

        await _until(retired, "the cut-off did not reach the relay", 2.0)
        assert gone == [True]  # retired: written here, until the hand-off links again

        async def relays_again() -> bool:
            return relaying.link() is link

        await _until(relays_again, "the link stayed retired while the writer lived", 2.0)
        assert relaying.role() == "relaying"
        release.set()
        assert (await asyncio.wait_for(answer, 5)).status == 201
    finally:
        release.set()
        await relaying.stop()
        await writer.stop()
