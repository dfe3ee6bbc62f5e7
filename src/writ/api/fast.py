"""The lean path of the hot lease routes (:class:`FastLeases`) and the app class that puts
it, and the body limits, in front of FastAPI (:class:`WritApp`)."""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Coroutine, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ.api.middleware import (
    _INTERNAL_ERROR,
    MAX_BODY,
    MAX_HEADERS,
    LimitBody,
    _interrupted,
    _replay,
    _send_json,
    _unless_hung_up,
)
from writ.api.ops import (
    _GOOD_ID,
    FENCE,
    GONE,
    LEASES,
    RELEASE,
    STARTED,
    OpsFront,
    failed,
    record,
)
from writ.api.relay import Relay, identity_of
from writ.api.relay_wire import CANCEL_WAIT_S, LOST, NOT_RUN, Answer, _Link
from writ.api.url_text import TextURL, url_problem
from writ.api.waits import DEFAULT_CAP, Waits
from writ.core.errors import Invalid, Unavailable, WritError
from writ.core.models import Principal
from writ.engine import Engine
from writ.net.limits import direct_answer
from writ.telemetry import tracing
from writ.telemetry.observe import request_id

if TYPE_CHECKING:
    from writ.telemetry.metrics import Metrics

log = logging.getLogger("writ.server")

# the lean path's JSON, written as FastAPI's JSONResponse writes it (UTF-8, no spaces);
# built once: json.dumps builds an encoder per call
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON = (b"content-type", b"application/json")
# in place of a span when tracing is off (reusable: it holds nothing)
_UNTRACED: contextlib.nullcontext[dict[str, str]] = contextlib.nullcontext({})
# a Content-Length the shortest way in reads: digits, no more than MAX_BODY has
_LENGTH_DIGITS = len(str(MAX_BODY))
# a fencing token as the lean path takes it: what FastAPI's int parameter reads the same way
_TOKEN = re.compile(r"0|-?[1-9][0-9]{0,18}")
# a body longer than this is kept as what it says, written compactly, once it is read: a
# request that waits minutes holds no padding (see _compact)
_COMPACT_ABOVE = 4096


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
        waits: Waits | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.draining = draining
        self.relay = relay  # set: servers on this host relay lease writes to one writer
        self.waits = waits or Waits()  # each principal's requests that may wait, capped

    def route(self, scope: Scope) -> str | None:
        """The hot route an HTTP request asks for, as its route template (``FENCE``,
        ``LEASES``, ``RELEASE``), or None: anything else is FastAPI's."""
        path = scope["path"]
        method = scope["method"]
        if method == "GET":
            return FENCE if path == FENCE else None
        if method != "POST" or not path.startswith(LEASES):
            return None
        if path == LEASES:
            return LEASES
        parts = path.split("/")  # "", "v1", "leases", id, "release"
        if len(parts) == 5 and parts[2] == "leases" and parts[3] and parts[4] == "release":
            return RELEASE
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        taken = await self.take(route, scope, receive)
        if taken is None:
            return  # the client went away before sending its body
        out, receive = taken
        if out is None:
            await self.app(scope, receive, send)
        else:
            await _send_json(send, *out)

    async def take(
        self, route: str, scope: Scope, receive: Receive
    ) -> tuple[_Outcome | None, Receive] | None:
        """Read the body of a request for ``route`` and answer it: the answer (None when the
        lean path does not take it: FastAPI then answers it, nothing having been done) and
        the ``receive`` to pass it on with, which hands back what was read first; None if
        the client went away before its body. What the request holds while it works (and
        waits) is what it says (:func:`_compact`), not the bytes it came in."""
        if route == FENCE:  # a fencing check's body, if any, is left unread
            return await self._fence(scope, _bearer(scope)), receive
        body = await _body(receive)
        if body is None:
            return None
        taken = self._taken(route, scope, body)
        if taken is None:
            return None, _replay([_whole(_compact(body))], receive)
        del body
        return await self._answer(scope, receive, *taken), receive

    def _taken(
        self, route: str, scope: Scope, body: bytes
    ) -> tuple[str, str | None, dict[str, Any] | None, bytes] | None:
        """What the lean path takes of a write (``LEASES`` or ``RELEASE``) with this
        ``body`` — its bearer token, the lease id of a release, an acquire's request and the
        body to relay — or None (bad JSON, unknown, rare or repeated fields, a missing
        token...)."""
        token = _bearer(scope)
        lease_id = None if route == LEASES else scope["path"].split("/")[3]
        if lease_id is not None:
            body = b""  # a release's body, if any, is read by no one (FastAPI's route neither)
        req: dict[str, Any] | None = None
        # FastAPI refuses any other body type
        if lease_id is None and _is_json(_header(scope, b"content-type") or b""):
            req = self._acquire_request(body)
        if not (token and ((lease_id is not None and not body) or req is not None)):
            return None
        return token, lease_id, req, _compact(body, req)  # an acquire's, read once

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        token: str,
        lease_id: str | None,
        req: dict[str, Any] | None,
        body: bytes,
    ) -> _Outcome:
        """The answer to a write the lean path took (:meth:`_taken`)."""
        wait_s = req.get("wait_s", 0) if req is not None else 0
        if not wait_s:
            return await self._write(scope, receive, token, lease_id, req, body, 0)
        # it may wait, holding its connection meanwhile: counted against its principal
        # (writ.api.waits) here, where the connection is, wherever it is written — once
        # it is known to be a request that may wait (FastAPI checks the body first too)
        try:
            me = await self.engine.authenticate(token)
            assert req is not None
            self.engine.validate_request(me, **_asked(req))  # as engine.acquire will
            with self.waits.one(me.name):
                return await self._write(scope, receive, token, lease_id, req, body, wait_s, me)
        except WritError as err:  # an unknown token, a bad request, or enough waits
            return _refusal(err)

    async def _write(
        self,
        scope: Scope,
        receive: Receive,
        token: str,
        lease_id: str | None,
        req: dict[str, Any] | None,
        body: bytes,
        wait_s: Any,
        me: Principal | None = None,
    ) -> _Outcome:
        """Do the write, relayed or here; ``me`` when its token was already authenticated."""
        link = self.relay.link() if self.relay is not None else None
        # another server on this host writes: ask it (writ.api.relay), unless it cannot
        if link is not None:
            out = await self._relay(link, scope, receive, token, lease_id, body, wait_s)
            if out is not None:
                return out
        work = self._lease(scope, token, lease_id, req, receive, self.draining, me)
        return await _outcome(f"POST {scope['path']}", work)

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
        me: Principal | None = None,
    ) -> tuple[Any, int]:
        """Release ``lease_id``, or acquire as ``req`` asks, for the bearer of ``token``; what
        the access log names goes into ``note`` (the request's scope)."""
        me = me or await self.engine.authenticate(token)
        note["writ.principal"] = me.name  # for the access log (writ.api.ops)
        if lease_id is not None:
            return await self.engine.release(me, lease_id), 200
        assert req is not None
        # its fields are checked by the engine (validate_request) as FastAPI's are
        # by _Body: text only, nested at most 32 levels; the path by TextURL
        note["writ.lease"] = req
        work = self.engine.acquire(me, **_asked(req), consent_id=None, rollback=None)
        if req.get("wait_s"):
            out = await _unless_hung_up(receive, work, draining, self.engine.give_back)
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
        token: str,
        lease_id: str | None,
        body: bytes,
        wait_s: Any,
    ) -> _Outcome | None:
        """Ask the writer to do this request and give its answer; None if it was not done
        there (too large to relay, or the writer is going): it is for this server to do. A
        wait whose caller hangs up, or that this server's shutdown ends, is cancelled at the
        writer, and the writer's answer is still what is sent: it says what was done. With
        tracing on, the call is a span, and the writer's work on it continues it."""
        op = "acquire" if lease_id is None else "release"
        relay = self.relay
        assert relay is not None
        with tracing.span(f"writ.relay.{op}") if tracing.enabled() else _UNTRACED as carrier:
            try:
                trace = carrier.get("traceparent")
                sent = link.call(op, token, lease_id, body, request_id.get(), wait_s or 0, trace)
                if sent is None:
                    return None
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
            return None
        scope["writ.principal"] = a.principal
        scope["writ.lease"] = a.log
        return a.status, a.body, a.retry

    async def relayed(
        self,
        op: str,
        token: str,
        lease_id: str | None,
        body: bytes,
        rid: str | None,
        hung_up: asyncio.Event,
        drain: asyncio.Event,
        traceparent: str | None = None,
    ) -> Answer:
        """Do what another server relayed (``Relay.run``), as if asked here over HTTP; its
        request id (``X-Request-Id``, or the one that server made) names it in the logs,
        and with tracing on its work is a span of that server's trace (``traceparent``)."""
        if rid is not None and _GOOD_ID.match(rid):  # as writ.api.ops takes X-Request-Id
            request_id.set(rid)  # this call's task only
        with (
            tracing.continued(f"writ.relayed.{op}", traceparent) if tracing.enabled() else _UNTRACED
        ):
            return await self._relayed(op, token, lease_id, body, hung_up, drain)

    async def _relayed(
        self,
        op: str,
        token: str,
        lease_id: str | None,
        body: bytes,
        hung_up: asyncio.Event,
        drain: asyncio.Event,
    ) -> Answer:
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

    async def unheard(self, status: int, lease: Any) -> None:
        """A write's answer that reached nobody (its client hung up before it, or, relayed,
        its call was reported lost, or its link ended, first): a grant (201) is given back,
        as nobody holds it but the ledger."""
        if status == 201 and isinstance(lease, dict):
            await asyncio.shield(self.engine.give_back(lease))

    async def _fence(self, scope: Scope, token: str) -> _Outcome | None:
        """``GET /v1/fence?resource=R&token=N``: each parameter once, nothing else, a plain
        integer token and a bearer token; None for anything else (FastAPI answers it)."""
        params = QueryParams(scope.get("query_string", b"")).multi_items()
        asked = dict(params)
        fencing = asked.get("token", "")
        if not (
            token
            and len(params) == 2
            and asked.keys() == {"resource", "token"}
            and _TOKEN.fullmatch(fencing)
        ):
            return None

        async def fence() -> tuple[Any, int]:
            me = await self.engine.authenticate(token)
            scope["writ.principal"] = me.name  # for the access log (writ.api.ops)
            out = await self.engine.fence(asked["resource"], int(fencing), me)
            self.engine.authority.check_observe(me, asked["resource"])
            return out, 200

        return await _outcome(f"GET {FENCE}", fence())


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


async def _body(receive: Receive) -> bytes | None:
    """A request's whole body, or None if the client went away before sending it."""
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


def _asked(req: dict[str, Any]) -> dict[str, Any]:
    """An acquire's fields as the engine takes them (``Engine.validate_request``)."""
    return {
        "resource": req.get("resource"),
        "intent": req.get("intent"),
        "ttl_s": req.get("ttl_s", 30),
        "wait_s": req.get("wait_s", 0),
        "touches": req.get("touches"),
    }


def _whole(body: bytes) -> Message:
    return {"type": "http.request", "body": body, "more_body": False}


def _compact(body: bytes, said: dict[str, Any] | None = None) -> bytes:
    """``body`` as what it says: over ``_COMPACT_ABOVE`` bytes, JSON is written again
    compactly (the same value, as ``json.loads`` reads both: FastAPI's reading too), so a
    request padded to 1 MiB with spaces holds its few fields, not the padding, for the
    minutes it may wait. ``said``: the value already read from ``body`` (not read again).
    Anything else is kept as it came."""
    if len(body) <= _COMPACT_ABOVE:
        return body
    try:
        value = json.loads(body) if said is None else said
        return json.dumps(value, separators=(",", ":")).encode()
    except (ValueError, RecursionError):  # not JSON: FastAPI answers it as it is
        return body


def _plain(scope: Scope, max_headers: int) -> bool:
    """Whether :class:`LimitBody` and :class:`TextURL` would pass this request on untouched:
    its headers within ``max_headers``, at most one ``Authorization``, one plain
    ``Content-Length`` within ``MAX_BODY`` or none (and no ``Transfer-Encoding``: then
    there is no body), its path and query text. Anything else is theirs to answer."""
    size = 0
    auth = length = False
    for k, v in scope["headers"]:
        size += len(k) + len(v)
        if k == b"authorization":
            if auth:
                return False
            auth = True
        elif k == b"content-length":
            if length or not (v.isdigit() and len(v) <= _LENGTH_DIGITS and int(v) <= MAX_BODY):
                return False
            length = True
        elif k == b"transfer-encoding":
            return False
    return size <= max_headers and url_problem(scope["path"], scope["query_string"]) is None


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
    or ``application/*+json``, parameters allowed, read as FastAPI reads it (with
    ``email.message``: ``application/x/y+json`` is no type at all there). Anything else, or
    none, is for FastAPI to answer."""
    if content_type == b"application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class WritApp(FastAPI):
    """The FastAPI app, entered through :attr:`front` — :class:`writ.api.ops.OpsFront`
    (set by ``create_app``), :class:`LimitBody`, :class:`TextURL` and then
    :class:`FastLeases` (the lean path of the hot lease routes) — all in front of FastAPI's
    own middleware stack (error, telemetry and body-limit wrappers: ~5% of the server's CPU
    on the hot path). Whatever the lean path does not take goes on to :meth:`full_stack`,
    FastAPI as it is.

    A request for a hot route that those layers would only measure and pass on (no access
    log or trace to write, nothing for ``LimitBody`` or ``TextURL`` to refuse: see
    :func:`_plain`) is handed by the listener (``writ serve``'s protocol,
    :mod:`writ.net.limits`) to :meth:`writ_direct` instead: it goes straight to
    :class:`FastLeases`, is answered in one write on the connection, and is measured here as
    :class:`OpsFront` would measure it — the same answer, without the ASGI messages. If the
    lean path does not take it after all, it goes through :attr:`front` as before."""

    def __init__(
        self,
        engine: Engine,
        relay_dir: str | None = None,
        max_waits: int = DEFAULT_CAP,
        max_headers: int = MAX_HEADERS,
        **kwargs: Any,
    ) -> None:
        if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
            # FastAPI's own OpenTelemetry (where it has it, on by default) would add a
            # second server span per request, around the engine's: writ traces its own
            kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
        super().__init__(**kwargs)
        self.state.engine = engine
        # set when the server begins a graceful shutdown: waiting requests answer 503
        self.draining = asyncio.Event()
        # each principal's requests that may wait, at most max_waits (writ.api.waits)
        self.waits = Waits(max_waits)
        # servers on one host relay lease writes to one of them (writ.api.relay)
        self.relay = (
            Relay(relay_dir, self.draining, identity_of(engine), store=engine.store)
            if relay_dir
            else None
        )
        leases = FastLeases(self.full_stack, engine, self.draining, self.relay, self.waits)
        if self.relay is not None:
            self.relay.run, self.relay.unheard = leases.relayed, leases.unheard
        self.leases = leases
        self.max_headers = max_headers  # the listener's --max-header-bytes
        self.front: ASGIApp = LimitBody(TextURL(leases), max_headers)
        self.ops: OpsFront | None = None  # the outermost layer, once create_app puts it there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    def writ_direct(self, cycle: Any) -> Coroutine[Any, Any, None] | None:
        """The listener's hook (:func:`writ.net.limits.direct_answer`): for a plain request
        for a hot route, that the layers would only measure and pass on, the coroutine that
        answers it on the connection's ``cycle``; None for any other (the app as usual)."""
        ops = self.ops
        if ops is None or not ops.lean():
            return None
        scope = cycle.scope
        route = self.leases.route(scope)
        if route is None or not _plain(scope, self.max_headers):
            return None
        return cast(
            "Coroutine[Any, Any, None]",
            cycle.run_asgi(partial(self._direct, route, cycle, ops.metrics)),
        )

    async def _direct(
        self,
        route: str,
        cycle: Any,
        metrics: Metrics | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer a plain request for ``route`` by the lean path, measured as ``OpsFront``
        measures (a client gone before its answer is ``GONE`` there too); one the lean path
        does not take after all goes through the layers, which measure it."""
        start = time.perf_counter()
        status, answer = GONE, b""
        try:
            taken = await self.leases.take(route, scope, receive)
            if taken is None:
                return
            out, receive = taken
            if out is None:  # not the lean path's after all: the layers, which measure it
                metrics = None
                scope[STARTED] = start  # from here, as for any request they measure
                await self.front(scope, receive, send)
                return
            status, answer, retry = out
            headers = [_JSON] if retry is None else [_JSON, (b"retry-after", b"%d" % retry)]
            if not await direct_answer(cycle, status, answer, headers):
                await self._undelivered(route, status, scope)
        except BaseException:
            status = failed(status)
            raise
        finally:
            if metrics is not None:
                record(metrics, scope["method"], route, status, time.perf_counter() - start, answer)

    async def _undelivered(self, route: str, status: int, scope: Scope) -> None:
        """An answer its client was gone for: a grant (201) is given back, as nobody holds it
        but the ledger."""
        if route == LEASES:
            await self.leases.unheard(status, scope.get("writ.lease"))

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
