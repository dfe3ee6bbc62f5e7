"""The lean path of the hot lease routes (:class:`FastLeases`) and the app class that puts
it, and the body limits, in front of FastAPI (:class:`WritApp`)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ.api.middleware import (
    _INTERNAL_ERROR,
    LimitBody,
    _interrupted,
    _replay,
    _send_json,
    _unless_hung_up,
)
from writ.api.ops import _GOOD_ID, FENCE
from writ.api.relay import Relay, identity_of
from writ.api.relay_wire import CANCEL_WAIT_S, LOST, NOT_RUN, Answer, _Link
from writ.api.url_text import TextURL, url_problem
from writ.core.errors import Invalid, Unavailable, WritError
from writ.engine import Engine
from writ.telemetry.observe import request_id

log = logging.getLogger("writ.server")

# the lean path's JSON, written as FastAPI's JSONResponse writes it (UTF-8, no spaces);
# built once: json.dumps builds an encoder per call
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# a fencing token as the lean path takes it: what FastAPI's int parameter reads the same way
_TOKEN = re.compile(r"0|-?[1-9][0-9]{0,18}")


class FastLeases:
    """The hot routes — ``POST /v1/leases``, ``POST /v1/leases/{id}/release`` and the
    fencing check a resource asks before each write, ``GET /v1/fence`` — without FastAPI:
    same engine calls, same bodies, same error shape. Every other request, and anything
    unusual on these (bad JSON, unknown, rare or repeated fields, a missing or odd token),
    goes on untouched to ``app`` (FastAPI's full stack), which answers it exactly as before.
    This is the one place that decides what the lean path takes."""

    ACQUIRE_KEYS = frozenset({"resource", "intent", "ttl_s", "wait_s", "touches"})

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        draining: asyncio.Event | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.draining = draining
        self.relay = relay  # set: servers on this host relay lease writes to one writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "GET" and path == FENCE:
            await self._fence(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith("/v1/leases")
        ):
            await self.app(scope, receive, send)
            return
        lease_id = None
        if path != "/v1/leases":
            parts = path.split("/")
            if len(parts) != 5 or parts[4] != "release" or not parts[3]:
                await self.app(scope, receive, send)
                return
            lease_id = parts[3]
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        req: dict[str, Any] | None = None
        # FastAPI refuses any other body type
        if lease_id is None and _is_json(_header(scope, b"content-type") or b""):
            req = self._acquire_request(body)
        token = _bearer(scope)
        if not (token and ((lease_id is not None and not body) or req is not None)):
            whole: Message = {"type": "http.request", "body": body, "more_body": False}
            await self.app(scope, _replay([whole], receive), send)
            return
        link = self.relay.link() if self.relay is not None else None
        # another server on this host writes: ask it (writ.api.relay), unless it cannot
        wait_s = req.get("wait_s", 0) if req is not None else 0
        if link is not None and await self._relay(
            link, scope, receive, send, token, lease_id, body, wait_s
        ):
            return
        work = self._lease(scope, token, lease_id, req, receive, self.draining)
        await _send_json(send, *await _outcome(f"POST {path}", work))

    def _acquire_request(self, body: bytes) -> dict[str, Any] | None:
        """An acquire's JSON body as the lean path takes it, else None (FastAPI answers)."""
        try:
            req = json.loads(body)
        except (ValueError, RecursionError):  # FastAPI answers these
            return None
        if (
            type(req) is dict
            and req.keys() <= self.ACQUIRE_KEYS
            # numbers as numbers (not booleans, not strings): FastAPI's strict 422
            and type(req.get("ttl_s", 30)) in (int, float)
            and type(req.get("wait_s", 0)) in (int, float)
        ):
            return req
        return None

    async def _lease(
        self,
        note: MutableMapping[str, Any],
        token: str,
        lease_id: str | None,
        req: dict[str, Any] | None,
        receive: Receive,
        draining: asyncio.Event | None,
    ) -> tuple[Any, int]:
        """Release ``lease_id``, or acquire as ``req`` asks, for the bearer of ``token``; what
        the access log names goes into ``note`` (the request's scope)."""
        me = await self.engine.authenticate(token)
        note["writ.principal"] = me.name  # for the access log (writ.api.ops)
        if lease_id is not None:
            return await self.engine.release(me, lease_id), 200
        assert req is not None
        # its fields are checked by the engine (validate_request) as FastAPI's are
        # by _Body: text only, nested at most 32 levels; the path by TextURL
        note["writ.lease"] = req
        work = self.engine.acquire(
            me,
            resource=req.get("resource"),
            intent=req.get("intent"),
            ttl_s=req.get("ttl_s", 30),
            wait_s=req.get("wait_s", 0),
            touches=req.get("touches"),
            consent_id=None,
            rollback=None,
        )
        if req.get("wait_s"):
            out = await _unless_hung_up(receive, work, draining)
        else:
            out = await work
        note["writ.lease"] = out
        return out, 201

    # -- the write relay (writ.api.relay) ------------------------------------------------
    async def _relay(
        self,
        link: _Link,
        scope: Scope,
        receive: Receive,
        send: Send,
        token: str,
        lease_id: str | None,
        body: bytes,
        wait_s: Any,
    ) -> bool:
        """Ask the writer to do this request and send its answer; False if it was not done
        there (too large to relay, or the writer is going): it is for this server to do. A
        wait whose caller hangs up, or that this server's shutdown ends, is cancelled at the
        writer, and the writer's answer is still what is sent: it says what was done."""
        op = "acquire" if lease_id is None else "release"
        relay = self.relay
        assert relay is not None
        try:
            sent = link.call(op, token, lease_id, body, request_id.get(), wait_s or 0)
            if sent is None:
                return False
            relay.counts["relayed"] += 1
            call_id, fut = sent
            if wait_s:
                why = await _interrupted(fut, receive, self.draining)
                if why is not None:
                    link.cancel(call_id, why)
                    try:
                        await asyncio.wait_for(asyncio.shield(fut), CANCEL_WAIT_S)
                    except TimeoutError:
                        link.forget(call_id)
                        raise Unavailable(LOST) from None
            a = await fut
        except Unavailable as err:
            relay.counts["lost"] += 1
            a = Answer(*_refusal(err))
        if a.status == NOT_RUN:
            return False
        scope["writ.principal"] = a.principal
        scope["writ.lease"] = a.log
        await _send_json(send, a.status, a.body, a.retry)
        return True

    async def relayed(
        self,
        op: str,
        token: str,
        lease_id: str | None,
        body: bytes,
        rid: str | None,
        hung_up: asyncio.Event,
        drain: asyncio.Event,
    ) -> Answer:
        """Do what another server relayed (``Relay.run``), as if asked here over HTTP; its
        request id (``X-Request-Id``, or the one that server made) names it in the logs."""
        if rid is not None and _GOOD_ID.match(rid):  # as writ.api.ops takes X-Request-Id
            request_id.set(rid)  # this call's task only
        req = None
        if op == "acquire":
            req, lease_id = self._acquire_request(body), None
        if (req is None) == (lease_id is None) or (
            lease_id is not None and (body or url_problem(lease_id, b"") is not None)
        ):  # the path of a release is checked here as TextURL checks it there
            err = Invalid("a relayed call the lean path would not have taken")
            return Answer(*_refusal(err))

        async def receive() -> Message:
            await hung_up.wait()
            return {"type": "http.disconnect"}

        note: dict[str, Any] = {}
        work = self._lease(note, token, lease_id, req, receive, drain)
        status, answer, retry = await _outcome(f"relayed {op}", work)
        lease = note.get("writ.lease")
        logged = {}
        if type(lease) is dict:
            logged = {k: lease[k] for k in ("resource", "lease_id", "fencing_token") if k in lease}
        return Answer(status, answer, retry, note.get("writ.principal"), logged)

    async def _fence(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/fence?resource=R&token=N``: each parameter once, nothing else, a plain
        integer token and a bearer token; anything else goes to FastAPI."""
        params = QueryParams(scope.get("query_string", b"")).multi_items()
        asked = dict(params)
        token = _bearer(scope)
        fencing = asked.get("token", "")
        if not (
            token
            and len(params) == 2
            and asked.keys() == {"resource", "token"}
            and _TOKEN.fullmatch(fencing)
        ):
            await self.app(scope, receive, send)
            return

        async def fence() -> tuple[Any, int]:
            me = await self.engine.authenticate(token)
            scope["writ.principal"] = me.name  # for the access log (writ.api.ops)
            out = await self.engine.fence(asked["resource"], int(fencing), me)
            self.engine.authority.check_observe(me, asked["resource"])
            return out, 200

        await _send_json(send, *await _outcome(f"GET {FENCE}", fence()))


_Outcome = tuple[int, bytes, "int | None"]


async def _outcome(what: str, work: Awaitable[tuple[Any, int]]) -> _Outcome:
    """``work``'s status, answer and ``Retry-After`` as the app gives them: a writ error in
    its shape (with ``Retry-After`` when it says when), anything unexpected as the catch-all
    handler's 500."""
    try:
        out, status = await work
    except WritError as err:
        return _refusal(err)
    except Exception:
        log.exception("unhandled error on %s", what)
        out, status = _INTERNAL_ERROR, 500
    return status, _COMPACT.encode(out).encode(), None


def _refusal(err: WritError) -> _Outcome:
    """A writ error as the app answers it: its status, its shape, ``Retry-After``."""
    return err.status, _COMPACT.encode(err.to_body()).encode(), err.retry_after()


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first ``name`` header, as FastAPI's routes read it (``request.headers.get``); a
    request with two ``Authorization`` headers never gets here (``LimitBody`` refuses it)."""
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


def _bearer(scope: Scope) -> str:
    """The bearer token of the first ``Authorization`` header, or ``""``."""
    auth = (_header(scope, b"authorization") or b"").decode("latin-1")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def _is_json(content_type: bytes) -> bool:
    """Whether FastAPI reads a body of this ``Content-Type`` as JSON: ``application/json``
    or ``application/*+json``, parameters allowed (anything else, or none, is 422 there)."""
    if content_type == b"application/json":
        return True
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (
        kind.startswith(b"application/") and kind.endswith(b"+json")
    )


class WritApp(FastAPI):
    """The FastAPI app, entered through :class:`LimitBody` and then :class:`FastLeases`
    (the lean path of the hot lease routes), both in front of FastAPI's own middleware stack
    (error, telemetry and body-limit wrappers: ~5% of the server's CPU on the hot path).
    Whatever the lean path does not take goes on to :meth:`full_stack`, FastAPI as it is."""

    def __init__(self, engine: Engine, relay_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state.engine = engine
        # set when the server begins a graceful shutdown: waiting requests answer 503
        self.draining = asyncio.Event()
        # servers on one host relay lease writes to one of them (writ.api.relay)
        self.relay = (
            Relay(relay_dir, self.draining, identity_of(engine), store=engine.store)
            if relay_dir
            else None
        )
        leases = FastLeases(self.full_stack, engine, self.draining, self.relay)
        if self.relay is not None:
            self.relay.run = leases.relayed
        self.front: ASGIApp = LimitBody(TextURL(leases))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
