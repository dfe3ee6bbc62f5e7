"""The HTTP protocol (PROTOCOL.md) over the engine: FastAPI routes, auth, errors.

Thin by design: each route authenticates, hands its validated body to one engine call and
returns the engine's answer. Errors are mapped in one place: every :class:`WritError` is
answered with its own status and ``{"error": {"code", "message", ...}}``; malformed JSON,
wrong types, unknown routes and oversized bodies get the same shape. Never a 500 for bad
input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from writ._version import __version__
from writ.audit_pages import audit_response
from writ.core.clock import parse_time
from writ.core.errors import Invalid, TooLarge, Unauthenticated, Unavailable, WritError
from writ.core.models import Principal
from writ.core.validate import check_body
from writ.engine import MAX_WAIT_S, Engine
from writ.net.limits import Limits
from writ.ops import OpsFront
from writ.telemetry.metrics import Metrics
from writ.url_text import TextURL

log = logging.getLogger("writ.server")
T = TypeVar("T")

MAX_BODY = 1 << 20  # 1 MiB
MAX_HEADERS = 16 << 10  # 16 KiB of request headers in all


# ----------------------------------------------------------------------------- bodies
class _Body(BaseModel):
    """Every body: no unknown fields; every string in it (keys and free-form values
    included) is text, nested at most 32 levels (:func:`writ.validate.check_body`, the same
    check the lean path, the MCP tools and the CLI apply); numbers are numbers, never
    booleans or strings (``strict`` on each numeric field)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        check_body(data)  # raises Invalid (422, naming the field), answered as it is
        return data


class PrincipalIn(_Body):
    name: str = Field(description="1-64 of a-z 0-9 . _ -", examples=["perf-agent"])
    kind: Literal["agent", "human", "queue", "portal"]
    vendor: str | None = None
    wake: str | None = Field(None, description="the exact call that wakes this principal")
    admin: bool = False
    queues: list[str] | None = Field(
        None, description="humans only: the on-call queues it is a member of (v1.1)"
    )
    expires_in_s: float | None = Field(
        None,
        ge=1,
        strict=True,
        description="the token is refused this many seconds from now (v1.1)",
    )


class RollbackPlan(_Body):
    allowed: bool = False
    path: str | None = Field(None, examples=["/internal/db/rollback?txn=8841"])
    key_holder: str | None = Field(None, examples=["svc-ops-princess"])
    override_queue: str | None = Field(None, examples=["svc-ops-princess"])
    denominator: str | None = Field(None, examples=["incident_minutes"])


class AcquireIn(_Body):
    resource: str = Field(examples=["prod/db"])
    intent: str = Field(examples=["double capacity"])
    ttl_s: float = Field(30, ge=1, le=3600, strict=True)
    wait_s: float = Field(0, ge=0, le=MAX_WAIT_S, strict=True)
    touches: list[str] | None = Field(None, examples=[["capacity"]])
    consent_id: str | None = None
    rollback: RollbackPlan | None = None


class RenewIn(_Body):
    ttl_s: float | None = Field(None, ge=1, le=3600, strict=True)


class RevokeIn(_Body):
    runbook: str = Field(examples=["R-44"])
    paged: str = Field(examples=["oncall-jane"])
    reason: str = Field(examples=["holder stuck after 02:17 alert"])
    waive_lock_delay: bool = False


class GateCheckIn(_Body):
    caller_token: str | None = Field(None, description="the caller's own writ bearer token")
    lease_id: str | None = None
    fencing_token: StrictInt | str | None = None
    resource: str
    method: str = "POST"
    path: str = "/"
    attribute: str | None = Field(
        None, description="the route's attribute: the lease's touches must name it"
    )


class ChangeIn(_Body):
    attribute: str = Field(examples=["capacity"])
    summary: str = Field(examples=["capacity 4→8"])
    before: Any = None
    after: Any = None
    protect_s: float | None = Field(None, ge=0, le=86_400, strict=True)
    fencing_token: int | None = Field(
        None, description="checked against the lease's, if given", strict=True
    )


class ConsentIn(_Body):
    change_id: str
    reason: str


class RollbackIn(_Body):
    lease_id: str | None = None
    change_id: str | None = None
    reason: str


class DefectIn(_Body):
    notes: str


class FreezeIn(_Body):
    prefix: str = Field(examples=["prod"])
    reason: str
    until: str | None = Field(None, description="RFC 3339 time, or a duration like 30m")
    allow: list[str] | None = None


# ----------------------------------------------------------------------------- middleware
class LimitBody:
    """Refuse request bodies over ``MAX_BODY`` and header blocks over ``MAX_HEADERS``
    with 413 before the app reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) for k, v in headers) > MAX_HEADERS:
            await _send_error(send, TooLarge(f"request headers exceed {MAX_HEADERS} bytes"))
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
# the lean path's JSON, written as FastAPI's JSONResponse writes it (UTF-8, no spaces);
# built once: json.dumps builds an encoder per call
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class FastLeases:
    """The two hot routes — ``POST /v1/leases`` and ``POST /v1/leases/{id}/release`` —
    without FastAPI: same engine calls, same bodies, same error shape. Every other request,
    and anything unusual on these (bad JSON, unknown or rare fields, a missing or odd token),
    goes on untouched to ``app`` (FastAPI's full stack), which answers it exactly as before.
    This is the one place that decides what the lean path takes."""

    ACQUIRE_KEYS = frozenset({"resource", "intent", "ttl_s", "wait_s", "touches"})

    def __init__(self, app: ASGIApp, engine: Engine, draining: asyncio.Event | None = None) -> None:
        self.app = app
        self.engine = engine
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
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
        auth = ""
        ctype = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"content-type":
                ctype = v
        req: Any = None
        retry: int | None = None
        if lease_id is None and _is_json(ctype):  # FastAPI refuses any other body type
            try:
                req = json.loads(body)
            except (ValueError, RecursionError):  # FastAPI answers these below
                req = None
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not (
            token
            and (
                (lease_id is not None and not body)
                or (
                    type(req) is dict
                    and req.keys() <= self.ACQUIRE_KEYS
                    # numbers as numbers (not booleans, not strings): FastAPI's strict 422
                    and type(req.get("ttl_s", 30)) in (int, float)
                    and type(req.get("wait_s", 0)) in (int, float)
                )
            )
        ):
            whole: Message = {"type": "http.request", "body": body, "more_body": False}
            await self.app(scope, _replay([whole], receive), send)
            return
        try:
            me = await self.engine.authenticate(token)
            scope["writ.principal"] = me.name  # for the access log (writ.ops)
            if lease_id is not None:
                out, status = await self.engine.release(me, lease_id), 200
            else:
                # its fields are checked by the engine (validate_request) as FastAPI's are
                # by _Body: text only, nested at most 32 levels; the path by TextURL
                scope["writ.lease"] = req
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
                    out = await _unless_hung_up(receive, work, self.draining)
                else:
                    out = await work
                scope["writ.lease"] = out
                status = 201
        except WritError as err:
            out, status, retry = err.to_body(), err.status, err.retry_after()
        except Exception:  # the same answer as the app's catch-all handler
            log.exception("unhandled error on POST %s", path)
            out, status = _INTERNAL_ERROR, 500
        await _send_json(send, status, _COMPACT.encode(out).encode(), retry)


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

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state.engine = engine
        # set when the server begins a graceful shutdown: waiting requests answer 503
        self.draining = asyncio.Event()
        self.front: ASGIApp = LimitBody(TextURL(FastLeases(self.full_stack, engine, self.draining)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


async def _unless_hung_up(
    receive: Receive, work: Awaitable[T], draining: asyncio.Event | None = None
) -> T:
    """Await ``work`` (maybe a wait in the queue), cancelling it if the client disconnects
    (``receive`` is the request's): a caller who hung up gives up its place in the queue, and
    any lease granted meanwhile (the engine's cancellation path). Servers do not cancel a
    handler on disconnect. The same happens when ``draining`` is set (a graceful shutdown):
    the wait ends, its request leaves the queue, and the caller gets 503 with Retry-After."""
    task = asyncio.ensure_future(work)

    async def hung_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    drain = asyncio.ensure_future(draining.wait()) if draining is not None else None
    try:
        await asyncio.wait(
            {task, watch} if drain is None else {task, watch, drain},
            return_when=asyncio.FIRST_COMPLETED,
        )
    except BaseException:
        task.cancel()
        raise
    finally:
        watch.cancel()
        if drain is not None:
            drain.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if draining is not None and draining.is_set():
            raise Unavailable(
                "writ is shutting down: this wait ended and left the queue; retry (on another "
                "server, or once this one is back)"
            )
        raise Unavailable("the caller hung up while waiting; its place in the queue was given up")
    return task.result()


# ----------------------------------------------------------------------------- auth
async def principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 otherwise."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    engine: Engine = request.app.state.engine
    me = await engine.authenticate(token.strip())
    request.scope["writ.principal"] = me.name  # for the access log (writ.ops)
    return me


Me = Annotated[Principal, Depends(principal)]


# ----------------------------------------------------------------------------- app
def create_app(
    engine: Engine,
    start_engine: bool = True,
    metrics: bool = True,
    metrics_token: str | None = None,
) -> FastAPI:
    """The ASGI app. Starts and stops ``engine`` with the app's lifespan. ``/livez``,
    ``/readyz`` and ``/metrics`` (:mod:`writ.ops`) sit in front of it; ``metrics=False``
    measures nothing (``/metrics`` is then 404), ``metrics_token`` guards ``/metrics``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            await engine.start()
        try:
            yield
        finally:
            if start_engine:
                if app.draining.is_set():  # a graceful shutdown: let outbound calls land
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(engine.caller.drain()), 5)
                await engine.stop()

    app = WritApp(
        engine,
        title="writ",
        version=__version__,
        summary="Vendor-neutral write authority for autonomous agents (protocol v1).",
        lifespan=lifespan,
    )
    app.front = OpsFront(
        app.front, engine, Metrics.for_engine(engine) if metrics else None, metrics_token
    )

    @app.exception_handler(WritError)
    async def _writ_error(request: Request, exc: WritError) -> JSONResponse:
        retry = exc.retry_after()
        return JSONResponse(
            exc.to_body(),
            status_code=exc.status,
            headers=None if retry is None else {"Retry-After": str(retry)},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, fields = [], []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            if loc:
                fields.append(loc)
            if e.get("type") == "json_invalid":
                problems.append("the body is not valid JSON")
            elif e.get("type") == "missing":
                problems.append(f"{loc} is required")
            elif e.get("type") == "extra_forbidden":
                problems.append(f"{loc} is not a known field")
            else:
                problems.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        err = Invalid("; ".join(dict.fromkeys(problems)) or "invalid request", problems=problems)
        if fields:
            err.details["field"] = fields[0]
        return JSONResponse(err.to_body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "invalid", 401: "unauthenticated", 403: "forbidden"}.get(
            exc.status_code, "invalid"
        )
        status = 422 if exc.status_code == 400 else exc.status_code  # `invalid` is 422
        msg = (
            f"no route {request.method} {request.url.path}; see /openapi.json"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return JSONResponse({"error": {"code": code, "message": msg}}, status_code=status)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_INTERNAL_ERROR, status_code=500)

    # -- health and principals ---------------------------------------------------------
    @app.get("/v1/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "store": engine.store.url.split("://")[0]}

    @app.post("/v1/principals", status_code=201, tags=["principals"])
    async def add_principal(me: Me, body: PrincipalIn) -> dict[str, Any]:
        p, token = await engine.add_principal(
            me,
            body.name,
            body.kind,
            body.vendor,
            body.wake,
            body.admin,
            queues=body.queues,
            expires_in_s=body.expires_in_s,
        )
        return {**p.to_dict(), "token": token}

    from writ.principal_routes import add_routes as add_principal_routes

    add_principal_routes(app, engine, principal)

    @app.get("/v1/principals", tags=["principals"])
    async def list_principals(me: Me) -> dict[str, Any]:
        return {"principals": engine.authority.wake_urls(me, await engine.list_principals())}

    @app.get("/v1/whoami", tags=["principals"])
    async def whoami(me: Me) -> dict[str, Any]:
        return me.to_dict()

    # -- leases ------------------------------------------------------------------------
    @app.post("/v1/leases", status_code=201, tags=["leases"])
    async def acquire(me: Me, body: AcquireIn, request: Request) -> dict[str, Any]:
        request.scope["writ.lease"] = {"resource": body.resource}
        lease: dict[str, Any] = await _unless_hung_up(
            request.receive,
            engine.acquire(
                me,
                resource=body.resource,
                intent=body.intent,
                ttl_s=body.ttl_s,
                wait_s=body.wait_s,
                touches=body.touches,
                consent_id=body.consent_id,
                rollback=body.rollback.model_dump() if body.rollback else None,
            ),
            app.draining,
        )
        request.scope["writ.lease"] = lease
        return lease

    @app.post("/v1/leases/{lease_id}/renew", tags=["leases"])
    async def renew(
        me: Me, lease_id: str, body: Annotated[RenewIn | None, Body()] = None
    ) -> dict[str, Any]:
        return await engine.renew(me, lease_id, body.ttl_s if body else None)

    @app.post("/v1/leases/{lease_id}/release", tags=["leases"])
    async def release(me: Me, lease_id: str) -> dict[str, Any]:
        return await engine.release(me, lease_id)

    @app.post("/v1/leases/{lease_id}/revoke", tags=["leases"])
    async def revoke(me: Me, lease_id: str, body: RevokeIn) -> dict[str, Any]:
        return await engine.revoke(
            me, lease_id, body.runbook, body.paged, body.reason, body.waive_lock_delay
        )

    @app.get("/v1/leases/{lease_id}", tags=["leases"])
    async def get_lease(me: Me, lease_id: str) -> dict[str, Any]:
        lease = await engine.get_lease(lease_id)
        engine.authority.check_observe(me, lease["resource"], f"lease {lease_id}")
        return lease

    @app.get("/v1/leases", tags=["leases"])
    async def list_leases(
        me: Me,
        resource: str | None = None,
        state: Literal["held", "released", "expired", "revoked"] | None = None,
        holder: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> dict[str, Any]:
        leases = await engine.list_leases(resource, state, limit, holder)
        return {"leases": engine.authority.visible(me, leases)}

    @app.get("/v1/status", tags=["leases"])
    async def status(
        me: Me, resource: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 1000
    ) -> dict[str, Any]:
        return {"leases": engine.authority.visible(me, await engine.status(resource, limit))}

    @app.get("/v1/resources/{resource:path}", tags=["leases"])
    async def resource_status(me: Me, resource: str) -> dict[str, Any]:
        out = await engine.resource_status(resource)
        engine.authority.check_observe(me, resource)
        for key in ("conflicting", "queue", "protected_changes"):  # its blast radius
            out[key] = engine.authority.visible(me, out[key])
        if out["lease"] is not None and not engine.authority.observable(
            me, out["lease"]["resource"]
        ):
            out["lease"] = None  # a neighbour's lease, shown when the resource itself is free
        return out

    @app.get("/v1/who", tags=["leases"])
    async def who(me: Me, resource: str, at: str | None = None) -> dict[str, Any]:
        out = await engine.who(resource, parse_time(at) if at else None)
        engine.authority.check_observe(me, resource)
        return engine.authority.unseen_holder(me, out)

    @app.get("/v1/fence", tags=["leases"])
    async def fence(me: Me, resource: str, token: int) -> dict[str, Any]:
        out = await engine.fence(resource, token, me)
        engine.authority.check_observe(me, resource)
        return out

    # -- ledger ------------------------------------------------------------------------
    @app.get("/v1/audit", tags=["audit"])
    async def audit(
        me: Me,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
        resource: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Any:
        return await audit_response(
            engine,
            after_seq,
            limit,
            resource,
            parse_time(since) if since else None,
            parse_time(until) if until else None,
            view=lambda page: engine.authority.visible_page(me, page),
        )

    @app.get("/v1/audit/verify", tags=["audit"])
    async def audit_verify(me: Me) -> dict[str, Any]:
        return (await engine.verify()).to_dict()

    @app.get("/v1/events", tags=["audit"])
    async def events(
        me: Me,
        request: Request,
        resource: str | None = None,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        work = engine.authority.events(me, resource, after_seq, wait_s, limit)
        return await (work if wait_s <= 0 else _unless_hung_up(request.receive, work, app.draining))

    # -- changes and consent ---------------------------------------------------------------
    @app.post("/v1/leases/{lease_id}/changes", status_code=201, tags=["consent"])
    async def record_change(me: Me, lease_id: str, body: ChangeIn) -> dict[str, Any]:
        return await engine.consents.record_change(
            me,
            lease_id,
            body.attribute,
            body.summary,
            body.before,
            body.after,
            body.protect_s,
            body.fencing_token,
        )

    @app.get("/v1/changes/{change_id}", tags=["consent"])
    async def get_change(me: Me, change_id: str) -> dict[str, Any]:
        change = await engine.consents.get_change(change_id)
        engine.authority.check_observe(me, change["resource"], f"change {change_id}")
        return change

    @app.post("/v1/consents", status_code=201, tags=["consent"])
    async def ask_consent(me: Me, body: ConsentIn) -> dict[str, Any]:
        return await engine.consents.ask(me, body.change_id, body.reason)

    @app.post("/v1/consents/{consent_id}/grant", tags=["consent"])
    async def grant_consent(me: Me, consent_id: str) -> dict[str, Any]:
        return await engine.consents.answer(me, consent_id, True)

    @app.post("/v1/consents/{consent_id}/deny", tags=["consent"])
    async def deny_consent(me: Me, consent_id: str) -> dict[str, Any]:
        return await engine.consents.answer(me, consent_id, False)

    @app.get("/v1/consents/{consent_id}", tags=["consent"])
    async def get_consent(
        me: Me,
        consent_id: str,
        request: Request,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
    ) -> dict[str, Any]:
        consent = await engine.consents.get(consent_id, 0)
        engine.authority.check_observe(me, consent["resource"], f"consent {consent_id}")
        if wait_s <= 0:
            return consent
        work = engine.consents.get(consent_id, wait_s)
        return await _unless_hung_up(request.receive, work, app.draining)

    # -- rollbacks ---------------------------------------------------------------------------
    @app.post("/v1/rollbacks", status_code=201, tags=["rollback"])
    async def request_rollback(me: Me, body: RollbackIn) -> dict[str, Any]:
        return await engine.rollbacks.request(me, body.lease_id, body.change_id, body.reason)

    @app.get("/v1/rollbacks", tags=["rollback"])
    async def list_rollbacks(
        me: Me,
        status: Literal["pending", "approved", "denied", "executed", "failed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        return {
            "rollbacks": engine.authority.visible(me, await engine.rollbacks.list(status, limit))
        }

    @app.get("/v1/rollbacks/{rollback_id}", tags=["rollback"])
    async def get_rollback(me: Me, rollback_id: str) -> dict[str, Any]:
        rollback = await engine.rollbacks.get(rollback_id)
        engine.authority.check_observe(me, rollback["resource"], f"rollback {rollback_id}")
        return rollback

    @app.post("/v1/rollbacks/{rollback_id}/approve", tags=["rollback"])
    async def approve_rollback(me: Me, rollback_id: str) -> dict[str, Any]:
        return await engine.rollbacks.answer(me, rollback_id, True)

    @app.post("/v1/rollbacks/{rollback_id}/deny", tags=["rollback"])
    async def deny_rollback(me: Me, rollback_id: str) -> dict[str, Any]:
        return await engine.rollbacks.answer(me, rollback_id, False)

    @app.post("/v1/rollbacks/{rollback_id}/defect", tags=["rollback"])
    async def defect_rollback(me: Me, rollback_id: str, body: DefectIn) -> dict[str, Any]:
        return await engine.rollbacks.defect(me, rollback_id, body.notes)

    # -- freezes -----------------------------------------------------------------------------
    @app.post("/v1/freezes", status_code=201, tags=["freeze"])
    async def freeze(me: Me, body: FreezeIn) -> dict[str, Any]:
        return await engine.freezes.freeze(me, body.prefix, body.reason, body.until, body.allow)

    @app.post("/v1/freezes/{freeze_id}/lift", tags=["freeze"])
    async def lift(me: Me, freeze_id: str) -> dict[str, Any]:
        return await engine.freezes.lift(me, freeze_id)

    @app.get("/v1/freezes", tags=["freeze"])
    async def list_freezes(me: Me, all: bool = False) -> dict[str, Any]:
        return {"freezes": engine.authority.visible_freezes(me, await engine.freezes.list(all))}

    @app.post("/v1/gate/check", tags=["gate"])
    async def gate_check(me: Me, body: GateCheckIn) -> dict[str, Any]:
        """For `writ gate`: decide one mutating request and record it (gate.passed/refused)."""
        return await engine.gate_check(
            me,
            body.caller_token,
            body.lease_id,
            body.fencing_token,
            body.resource,
            body.method,
            body.path,
            body.attribute,
        )

    @app.get("/v1/policy", tags=["meta"])
    async def policy(me: Me) -> dict[str, Any]:
        return engine.authority.policy_view(me, engine.policy.to_dict())

    from writ.authority_api import register as _authority_routes

    _authority_routes(app, engine, principal)
    for extend in EXTENSIONS:
        extend(app, engine, principal)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_errors(generate())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# Error answers every route may give (PROTOCOL.md), documented in /openapi.json.
ERROR_RESPONSES: dict[int, str] = {
    401: "unauthenticated: missing or unknown bearer token",
    403: "forbidden: the caller's kind or identity may not do this",
    404: "not_found: no such lease, principal, consent, ...",
    409: "held / consent_required / conflict",
    410: "lease_lost: the lease expired, was revoked or released",
    413: "too_large: request body or headers too large",
    422: "invalid: bad input; the message says what was wrong",
    423: "frozen: a human froze the resource",
    503: "unavailable: the store cannot be reached right now",
}


def _document_errors(schema: dict[str, Any]) -> None:
    """Give every operation the real error shape instead of FastAPI's ``detail`` one."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "additionalProperties": True,
            }
        },
    }
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for status, text in ERROR_RESPONSES.items():
                if path == "/v1/health" and status not in (413, 503):
                    continue
                responses[str(status)] = {"description": text, "content": ref}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)


# Route modules of later features register here: extend(app, engine, auth_dependency).
EXTENSIONS: list[Callable[[FastAPI, Engine, Callable[[Request], Awaitable[Principal]]], None]] = []


def run(
    store_url: str,
    host: str = "127.0.0.1",
    port: int = 7411,
    policy_path: str | None = None,
    log_level: str = "info",
    limits: Limits | None = None,
    *,
    log_format: str = "console",
    shutdown_timeout: int = 10,
    metrics: bool = True,
    metrics_token: str | None = None,
    workers: int = 1,
) -> None:
    """Serve writ until SIGTERM or SIGINT (``writ serve``), then shut down gracefully
    (:mod:`writ.lifecycle`) within ``shutdown_timeout`` seconds, each connection within
    ``limits``; ``workers`` > 1 runs that many processes on one port (PostgreSQL stores
    only, :mod:`writ.workers`)."""
    import os

    import uvicorn

    from writ.core.policy import load
    from writ.lifecycle import DrainingServer
    from writ.stores import open_store
    from writ.telemetry import logs, tracing

    policy = load(policy_path)
    secrets = [
        os.environ.get("WRIT_ADMIN_TOKEN"),
        os.environ.get("WRIT_WEBHOOK_SECRET"),
        policy.webhook_secret,
        metrics_token,
    ]
    logs.setup(log_format, log_level, [s for s in secrets if s])
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": None,  # logs.setup configured uvicorn's loggers
        "access_log": False,  # writ.access logs each request instead
        "server_header": False,
        "proxy_headers": False,  # writ never uses the client's address: skip rewriting it
        "timeout_graceful_shutdown": shutdown_timeout,
        **(limits or Limits(max_header_bytes=MAX_HEADERS)).uvicorn_options(),
    }
    if workers != 1:
        from .workers import AppSettings, run_workers

        settings = AppSettings(log_format, log_level, metrics, metrics_token)
        run_workers(store_url, workers, policy_path, settings, **options)
        return
    traced = tracing.configure()
    engine = Engine(open_store(store_url), policy)
    engine.authority.on_sighup()  # SIGHUP reloads the policy file (see writ.authority)
    if traced:
        tracing.instrument(engine)
        log.info("tracing on: OTEL_TRACES_EXPORTER=%s", traced)
    logs.log_decisions(engine)
    app = create_app(engine, metrics=metrics, metrics_token=metrics_token)
    config = uvicorn.Config(app, **options)
    DrainingServer(config, app.draining).run()  # type: ignore[attr-defined]
