"""The ASGI pieces in front of the app: the body and header limits (:class:`LimitBody`), the
raw JSON answers they send, the answer to an unexpected exception, and :func:`_unless_hung_up`
(a wait that ends when its caller hangs up or the server drains), counted against its
principal by :func:`waiting`, which also ends a read's wait once its caller's credential is
refused (:func:`_while_accepted`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ.api.deps import principal
from writ.core.errors import Invalid, TooLarge, Unavailable, WritError
from writ.core.models import Principal
from writ.engine.queue import SHUTTING_DOWN
from writ.net.credentials import Twice, sole

T = TypeVar("T")

MAX_BODY = 1 << 20  # 1 MiB
MAX_HEADERS = 16 << 10  # 16 KiB of request headers in all


# ----------------------------------------------------------------------------- middleware
class LimitBody:
    """Before the app reads anything: refuse request bodies over ``MAX_BODY`` and header
    blocks over ``max_headers`` (413; the listener's ``--max-header-bytes``, by default
    ``MAX_HEADERS``), and more than one ``Authorization`` header (422)."""

    def __init__(self, app: ASGIApp, max_headers: int = MAX_HEADERS) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) for k, v in headers) > self.max_headers:
            await _send_error(send, TooLarge(f"request headers exceed {self.max_headers} bytes"))
            return
        try:
            sole(headers)  # one credential, or none (writ.net.credentials)
        except Twice as twice:
            await _send_error(send, Invalid(str(twice), field="authorization"))
            return
        declared = False
        for k, v in headers:
            if k == b"content-length":
                declared = True
                try:
                    n = int(v)
                except ValueError:
                    await _send_error(send, Invalid("content-length is not a number"))
                    return
                if n > MAX_BODY:
                    await _send_error(
                        send, TooLarge(f"request body of {n} bytes exceeds {MAX_BODY}")
                    )
                    return
        if not declared:
            # no declared length (chunked): read the body here, up to the limit, so an
            # oversized one gets 413 (raising from receive() reaches FastAPI as a 400)
            buffered: list[Message] = []
            size = 0
            while True:
                msg = await receive()
                buffered.append(msg)
                if msg["type"] != "http.request":
                    break
                size += len(msg.get("body", b""))
                if size > MAX_BODY:
                    await _send_error(send, TooLarge(f"request body exceeds {MAX_BODY} bytes"))
                    return
                if not msg.get("more_body", False):
                    break
            await self.app(scope, _replay(buffered, receive), send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > MAX_BODY:
                    raise TooLarge(f"request body exceeds {MAX_BODY} bytes")
            return msg

        await self.app(scope, limited, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands back ``messages`` (already read from it), in order."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


async def _send_json(send: Send, status: int, body: bytes, retry_after: int | None = None) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, err: WritError) -> None:
    await _send_json(send, err.status, json.dumps(err.to_body()).encode(), err.retry_after())


# the answer to an unexpected exception, from the app's catch-all handler and the lean path
_INTERNAL_ERROR = {
    "error": {
        "code": "internal",
        "message": "writ hit an internal error. The request may or may not have taken effect: "
        "read the state back (the resource, the lease, /v1/audit) before retrying. The server "
        "log has the details.",
    }
}


async def waiting(
    request: Any,
    who: str,
    work: Callable[[], Awaitable[T]],
    give_back: Callable[[T, bool], Awaitable[None]] | None = None,
    caller: Principal | None = None,
) -> T:
    """A FastAPI route's request that may wait: ``work()`` counted against principal
    ``who``'s waiting requests (:mod:`writ.api.waits`: at its cap, 503 and ``work`` is never
    called), and ended if its caller hangs up or the server drains (:func:`_unless_hung_up`).
    With ``caller`` (who the request's credential named when it arrived: a long poll, whose
    answer is data) it is answered only while that credential still authenticates
    (:func:`_while_accepted`)."""
    app = request.app
    with app.waits.one(who):
        job = work() if caller is None else _while_accepted(request, caller, work())
        return await _unless_hung_up(request.receive, job, app.draining, give_back)


async def _while_accepted(request: Any, caller: Principal, work: Awaitable[T]) -> T:
    """Await ``work`` while the credential the request arrived with still authenticates,
    and answer with its result only if it still does. It was checked once, at arrival; the
    wait may last minutes, and a caller disabled or rotated meanwhile, or whose token or
    JWT expired meanwhile, must not be answered with what was written since. It is
    checked again as a fresh request with it would be (:func:`writ.api.deps.principal`:
    the same 401) each time a change to ``caller`` commits on this server, which so ends
    the wait at once, and when ``work`` is done, which covers a change made on another
    server sharing the store (heard of as a fresh request would hear of it) or by hand. A
    refusal ends ``work`` and is raised."""
    cache = request.app.state.engine.auth_cache
    seen = caller.checked_gen  # the principals this server knew of when it was checked
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            change = cache.watch(caller.name)
            if seen != cache.generation:  # a principal changed since: maybe before the watch
                seen = cache.generation
                with contextlib.suppress(Unavailable):  # the store or the JWKS, for now
                    await principal(request)
                continue
            changed = asyncio.ensure_future(change.wait())
            try:
                await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
    except asyncio.CancelledError as stop:  # its caller went, or the server drains
        task.cancel(stop.args[0] if stop.args else None)
        raise
    except BaseException:
        task.cancel()
        raise
    out = task.result()
    await principal(request)
    return out


async def _unless_hung_up(
    receive: Receive,
    work: Awaitable[T],
    draining: asyncio.Event | None = None,
    give_back: Callable[[T, bool], Awaitable[None]] | None = None,
) -> T:
    """Await ``work`` (maybe a wait in the queue), cancelling it if the client disconnects
    (``receive`` is the request's): a caller who hung up gives up its place in the queue, and
    any lease granted meanwhile (the engine's cancellation path). Servers do not cancel a
    handler on disconnect. The same happens when ``draining`` is set (a graceful shutdown):
    the wait ends, its request leaves the queue, and the caller gets 503 with Retry-After.
    Work that was done as the caller went (both in one turn of the loop) is ``give_back``'s,
    with whether the server drains: its answer would reach nobody."""
    task = asyncio.ensure_future(work)
    try:
        why = await _interrupted(task, receive, draining)
    except BaseException:
        task.cancel()
        raise
    if why is None:
        return task.result()
    task.cancel(SHUTTING_DOWN if why == "drain" else None)  # (the ledger says which)
    with contextlib.suppress(asyncio.CancelledError):
        done = await task
        if give_back is not None:  # it ended as its caller went: nobody takes its answer
            await asyncio.shield(give_back(done, why == "drain"))
    if why == "drain":
        raise Unavailable(
            "writ is shutting down: this wait ended (an acquire waiting in the queue left it); "
            "retry (on another server, or once this one is back)"
        )
    raise Unavailable("the caller hung up while waiting; its place in the queue was given up")


async def _interrupted(
    fut: asyncio.Future[Any], receive: Receive, draining: asyncio.Event | None
) -> str | None:
    """Wait for ``fut``; None once it is done, or why the wait must end first: "hangup"
    (the caller went away: ``receive`` is its request's) or "drain" (``draining`` is set,
    a graceful shutdown)."""

    async def hung_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    drain = asyncio.ensure_future(draining.wait()) if draining is not None else None
    try:
        await asyncio.wait(
            {fut, watch} if drain is None else {fut, watch, drain},
            return_when=asyncio.FIRST_COMPLETED,
        )
        gone = watch.done()  # (with fut, maybe: its answer would reach nobody)
    finally:
        watch.cancel()
        if drain is not None:
            drain.cancel()
    if fut.done() and not gone:
        return None
    return "drain" if draining is not None and draining.is_set() else "hangup"
