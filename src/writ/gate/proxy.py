"""The gate itself: an ASGI reverse proxy that asks writ (``POST /v1/gate/check``) before a
mutating request on a mapped route reaches the upstream, and refuses it otherwise."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from writ._version import __version__
from writ.core.errors import Invalid, TooLarge
from writ.core.textsafe import counted
from writ.gate.bodies import MAX_FORM, body_kind, body_methods, method_fields
from writ.gate.forwarded import Forwarded
from writ.gate.headers import (
    FORWARDED,
    HOP_BY_HOP,
    METHOD_OVERRIDES,
    WRIT_HEADERS,
)
from writ.gate.headers import header_name as header_name
from writ.gate.routes import Route, ambiguity, loose_path, request_paths, route_of
from writ.net.caps import PerKey
from writ.net.credentials import Twice, sole
from writ.telemetry.metrics import CONTENT_TYPE_LATEST, GateMetrics

log = logging.getLogger("writ.gate")
# how long a passed write waits for a connection to the upstream before it is refused (504)
GATED_POOL_WAIT_S = 5.0
# a writ token anywhere in a header value, however it is spaced (Bearer\twrit_…, a list)
_WRIT_TOKEN = re.compile(rb"(?:^|[^A-Za-z0-9_-])writ_")
UPSTREAM_CONNECTIONS = 100  # to the upstream, for each of the two pools (and to writ)


def default_per_client(upstream_connections: int) -> int:
    """Each client's requests in flight by default: a quarter of the upstream pool, so that
    it takes four clients at their cap to fill it (as writ serve caps each principal's waits)."""
    return max(1, upstream_connections // 4)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **details}},
        status_code=status,
        headers={"Retry-After": "1"} if status in (429, 503) else None,  # PROTOCOL v1.1
    )


def _refusal_text(method: str, path: str, resource: str, decision: Mapping[str, Any]) -> str:
    code, reason = decision.get("code"), decision.get("reason") or "refused"
    holder = decision.get("holder")
    who = (
        f"{holder.get('holder')} holds {holder.get('resource')} ({holder.get('intent')!r}) since "
        f"{holder.get('acquired_at')} until {holder.get('expires_at')}"
        if isinstance(holder, dict)
        else f"Nobody holds {resource} right now"
    )
    if code == "unauthenticated":
        who = "Who holds it is told to callers writ knows"
        nxt = (
            "Send your own writ token as 'Authorization: Bearer <token>' (or "
            "'Writ-Authorization: Bearer <token>') with Writ-Lease and Writ-Fencing-Token"
        )
    elif code == "forbidden":
        nxt = (
            f"This route changes {decision.get('attribute') or 'an attribute'} of {resource}: "
            "acquire a lease whose touches name it"
        )
    elif code == "lease_lost":
        nxt = (
            f"Your write authority on {resource} is gone: acquire a new lease (a new fencing "
            "token) before writing again"
        )
    else:
        nxt = (
            f"Acquire a lease on {resource} (POST /v1/leases, waiting with wait_s if it is "
            "held) and send Writ-Lease and Writ-Fencing-Token with the request"
        )
    return f"{method} {path} needs write authority on {resource}: {reason}. {who}. {nxt}."


MAX_CHECK_ANSWER = 1 << 20  # writ's answer to a check names a lease: a few hundred bytes


def _is_check(answer: Any) -> bool:
    """An answer of POST /v1/gate/check as writ sends it: ``passed``, and when it passed, the
    integer fencing token (a missing or string token was a 500 of the gate's own)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("passed"), bool):
        return False
    token = answer.get("fencing_token")
    return not answer["passed"] or (isinstance(token, int) and not isinstance(token, bool))


# ----------------------------------------------------------------------------- the proxy
class Gate:
    """The gate as an ASGI app.

    ``url`` and ``token`` are writ's address and the gate's own writ token (a principal
    of its own; it needs no special rights). ``upstream`` is the base URL requests go to
    (a path prefix is kept). ``upstream_headers`` are set on every forwarded request
    (typically the upstream's own credentials, so that only the gate can write).
    ``timeout`` bounds the upstream (connect and each read); ``writ_timeout`` bounds
    one decision. ``trust_forwarded_for`` lists the client addresses or networks (CIDR)
    whose own ``X-Forwarded-For`` is kept and extended (default: none — the gate sets it
    from the connection alone). ``max_connections`` sizes each pool of connections to the
    upstream (and to writ); each client may have ``max_per_client`` requests in flight
    at once (default: a quarter of the pool), one more is answered 429 — a client being
    its address, or behind a trusted proxy the address that proxy saw. The transports are
    for tests.
    """

    def __init__(
        self,
        url: str,
        token: str,
        upstream: str,
        routes: list[Route],
        *,
        upstream_headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        writ_timeout: float = 5.0,
        max_connections: int = UPSTREAM_CONNECTIONS,
        max_per_client: int | None = None,
        trust_forwarded_for: Iterable[str] = (),
        upstream_transport: httpx.AsyncBaseTransport | None = None,
        writ_transport: httpx.AsyncBaseTransport | None = None,
        metrics_path: str | None = "/metrics",
    ) -> None:
        if not token:
            raise Invalid(
                "the gate needs its own writ token (--token or WRIT_TOKEN)", field="token"
            )
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        if "@" in self.url.split("://", 1)[1].split("/", 1)[0]:
            raise Invalid(
                "the writ server's URL carries credentials (user:password@): the gate "
                "authenticates with its token; remove them from the URL",
                field="url",
            )
        self.upstream = httpx.URL(upstream if "://" in upstream else "http://" + upstream)
        if self.upstream.userinfo:
            raise Invalid(
                "the upstream URL carries credentials (user:password@), which the gate printed "
                "and every user of the host read on its command line: give them as an "
                "Authorization header in --upstream-headers-file",
                field="upstream",
            )
        if self.upstream.scheme not in ("http", "https") or not self.upstream.host:
            raise Invalid(f"upstream must be an http(s) URL, not {upstream!r}", field="upstream")
        self._prefix = self.upstream.raw_path.split(b"?")[0].rstrip(b"/")
        self.routes = list(routes)
        self.upstream_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in (upstream_headers or {}).items()
        ]
        # what every forwarded request drops of the caller's headers (names compared as
        # header_name() reads them), and what it adds
        self._drop = HOP_BY_HOP | WRIT_HEADERS | FORWARDED | {"host"}
        self._drop |= {header_name(k) for k, _ in self.upstream_headers}
        self._add = [(k, v) for k, v in self.upstream_headers if header_name(k) not in FORWARDED]
        self.forwarded = Forwarded(trust_forwarded_for)
        self.highest: dict[str, int] = {}  # resource -> highest fencing token passed here
        self._token = token
        self._timeout = timeout
        self._writ_timeout = writ_timeout
        self._max_connections = max_connections
        # each client's requests between arriving and their answer's last byte (or failure)
        self.in_flight = PerKey(max_per_client or default_per_client(max_connections))
        self._upstream_transport = upstream_transport
        self._writ_transport = writ_transport
        self._upstream_client: httpx.AsyncClient | None = None
        # passed writes have a pool of their own, waited for briefly: requests that pass
        # through unchecked (slow bodies on an unmapped path) cannot hold a checked write
        # back until its lease is gone and someone else's write went first
        self._gated_client: httpx.AsyncClient | None = None
        self._writ_client: httpx.AsyncClient | None = None
        # GET metrics_path is the gate's own Prometheus metrics (docs/operations.md)
        self.metrics_path = metrics_path
        self.metrics = GateMetrics()

    # -- lifecycle ------------------------------------------------------------------------
    def _clients(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        if self._upstream_client is None or self._writ_client is None:
            limits = httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            )
            self._upstream_client = httpx.AsyncClient(
                transport=self._upstream_transport,
                limits=limits,
                follow_redirects=False,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)),
            )
            self._gated_client = httpx.AsyncClient(
                transport=self._upstream_transport,
                limits=limits,
                follow_redirects=False,
                timeout=httpx.Timeout(
                    self._timeout, connect=min(self._timeout, 10.0), pool=GATED_POOL_WAIT_S
                ),
            )
            self._writ_client = httpx.AsyncClient(
                base_url=self.url,
                transport=self._writ_transport,
                limits=limits,
                timeout=self._writ_timeout,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "User-Agent": f"writ-gate/{__version__}",
                },
            )
            for client in (self._upstream_client, self._gated_client):
                for name in ("accept", "accept-encoding", "user-agent"):
                    del client.headers[name]  # forward the caller's own, add none of httpx's
        return self._upstream_client, self._writ_client

    async def aclose(self) -> None:
        for c in (self._upstream_client, self._gated_client, self._writ_client):
            if c is not None:
                await c.aclose()
        self._upstream_client = self._gated_client = self._writ_client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] == self.metrics_path and scope["method"] == "GET":
                response: Response = Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
                await response(scope, receive, send)
                return
            client = self.forwarded.client_of(scope)
            if not self.in_flight.take(client):
                self.metrics.refused.labels("too_many_requests").inc()
                await self._too_many(client)(scope, receive, send)
                return
            try:  # counted until the answer's last byte is sent, or the client goes away
                response = await self.handle(scope, receive)
                await response(scope, receive, send)
            finally:
                self.in_flight.give(client)
        else:  # websocket: refuse the handshake, the gate cannot judge frames
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self._clients()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- each client's share --------------------------------------------------------------
    def _too_many(self, client: str) -> Response:
        cap = self.in_flight.cap
        log.info("refused a request of %s: %d in flight already", client, cap)
        return _error(
            429,
            "too_many_requests",
            f"{client} already has {counted(cap, 'request')} in flight through this gate, the "
            "most one client may have, so that no client holds every connection to the upstream; "
            "nothing was forwarded. Retry once one of them has been answered",
        )

    # -- one request ----------------------------------------------------------------------
    def route_for(
        self, method: str, path: str, headers: Headers, extra: Iterable[str] = ()
    ) -> Route | None:
        """The route this request falls under (:func:`writ.gate.routes.route_of`), or None.
        Every method the request may be taken as counts: its own, each method-override
        header (any spelling, comma lists) and ``extra`` (a ``_method`` query or form
        field); and every path an upstream may read it as. Raises ``Invalid`` when its
        readings fall under routes that no one lease covers."""
        methods = {method.upper(), *readings(headers, extra)}
        return route_of(self.routes, sorted(methods), request_paths(path))

    def mapped(self, path: str, raw_path: bytes | None = None) -> bool:
        """Whether ``path`` lies on a mapped prefix (any route's, whatever the method). With
        the ``raw_path`` of an ambiguous request, also whether it may once an upstream drops
        what makes it ambiguous: ``/adm%00in/db``, ``/admin/db%20/x`` and ``/admin/sc%u0061le``
        count as the prefixes they hide (no segment boundary needed)."""
        paths = request_paths(path)
        paths |= request_paths(re.sub(r";[^/]*", "", path))  # /admin/db;x/y as Tomcat reads it
        lows = {p.lower() for p in paths}
        if any(
            r.covers(paths)
            or any(low == pre or low.startswith(pre + "/") for low in lows for pre in r.prefixes())
            for r in self.routes
        ):
            return True
        if raw_path is None:
            return False
        loose = loose_path(raw_path)
        lows = {loose, *(p.lower() for p in request_paths(loose))}
        return any(low.startswith(pre) for low in lows for r in self.routes for pre in r.prefixes())

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        """Decide and forward one HTTP request; the answer to send back."""
        method = str(scope["method"]).upper()
        path = str(scope.get("path") or "")
        if not path.startswith("/"):  # asterisk-form (OPTIONS *), or no path at all
            return _error(
                400,
                "invalid",
                f"request target {path!r} is not a path: the gate forwards origin-form "
                "requests (/path?query) only",
            )
        if method == "CONNECT":  # a tunnel, not a request the gate can judge or forward
            return _error(405, "invalid", "CONNECT is not forwarded: the gate is no tunnel")
        if method == "TRACE":  # echoed back whole by the upstream, the gate's credentials too
            return _error(405, "invalid", "TRACE is not forwarded: the upstream would echo it")
        raw_path: bytes = scope.get("raw_path") or path.encode()
        why = ambiguity(raw_path)
        # behind an upstream path prefix, any of it may climb out of the prefix (/../x)
        if why and (self._prefix or self.mapped(path, raw_path)):
            log.info("refused %s %r: %s", method, raw_path, why)
            return _error(
                400,
                "invalid",
                f"path {raw_path.decode('latin-1')!r} has {why}, which an upstream may read "
                "as another path than the gate does; on a mapped route, or behind an "
                "upstream path prefix, it is refused: send the plain path (decoded, no ';' "
                "parameters, no empty or dot segments)",
            )
        headers = Headers(scope=scope)
        extra = method_fields(scope.get("query_string") or b"")
        body: bytes | None = None
        # every spelling a WSGI/CGI upstream may take for it (Content_Type too)
        types = [v.decode("latin-1") for k, v in headers.raw if header_name(k) == "content-type"]
        if (types or method == "POST") and self.mapped(path):
            try:
                kind = body_kind(method, types)
            except Invalid as exc:
                return _error(400, "invalid", exc.message)
            if kind is not None:
                # a body that may carry _method: read it (bounded) to judge the method it names
                try:
                    body = await _read_all(receive, MAX_FORM)
                except TooLarge as exc:
                    return _error(413, "too_large", exc.message)
                except httpx.ReadError:
                    return _error(400, "invalid", "the client went away before its body was read")
                try:
                    extra += body_methods(kind, types[0] if types else "", body)
                except Invalid as exc:
                    return _error(400, "invalid", exc.message)
        try:
            route = self.route_for(method, path, headers, extra)
        except Invalid as exc:
            return _error(400, "invalid", exc.message)
        if route is None:
            return await self._forward(scope, receive, headers, None, body)
        decision = await self.decide(route, _as_read(method, headers, extra), path, headers)
        if isinstance(decision, Response):
            self.metrics.refused.labels(_code_of(decision)).inc()
            return decision
        self.metrics.passed.inc()
        return await self._forward(scope, receive, headers, decision, body)

    async def decide(
        self, route: Route, method: str, path: str, headers: Headers
    ) -> dict[str, Any] | Response:
        """Ask writ; the passed decision, or the refusal (423, or 503 failing closed)."""
        _, writ = self._clients()
        # one credential, or none (writ.net.credentials), whatever the spelling of its name
        named = [(header_name(k).encode("latin-1"), v) for k, v in headers.raw]
        try:
            caller = _bearer(_text(sole(named, b"writ-authorization")))
            if caller is None:
                caller = _bearer(_text(sole(named)))
        except Twice as twice:
            return _error(400, "invalid", f"{twice}: the gate does not guess which is yours")
        if caller is None:  # refused here: writ is not asked, and no row names no one
            reason = "no writ token in Authorization"
            log.info("refused %s %s (unauthenticated): %s", method, path, reason)
            why = {"code": "unauthenticated", "reason": reason}
            text = _refusal_text(method, path, route.resource, why)
            return _error(
                423, "unauthenticated", text, holder=None, reason=reason, resource=route.resource
            )
        body = {
            "caller_token": caller,
            "lease_id": (headers.get("writ-lease") or "").strip()[:128] or None,
            "fencing_token": (headers.get("writ-fencing-token") or "").strip()[:32] or None,
            "resource": route.resource,
            "method": method,
            "path": path[:512],
        }
        if route.attribute:
            body["attribute"] = route.attribute
        try:  # writ_timeout for the whole decision, not each read; a check answer is small
            async with (
                asyncio.timeout(self._writ_timeout),
                writ.stream("POST", "/v1/gate/check", json=body) as r,
            ):
                raw = bytearray()
                async for chunk in r.aiter_bytes():
                    raw += chunk
                    if len(raw) > MAX_CHECK_ANSWER:
                        raise ValueError(f"an answer over {MAX_CHECK_ANSWER} bytes")
            answer = json.loads(raw) if raw else {}
        except (httpx.HTTPError, ValueError, RecursionError, TimeoutError) as exc:
            log.error("writ at %s unreachable, refusing %s %s: %s", self.url, method, path, exc)
            return _error(
                503,
                "unavailable",
                f"writ at {self.url} cannot be reached ({type(exc).__name__}), so "
                f"{method} {path} cannot be checked and is refused (the gate fails "
                "closed); retry once writ is back",
                resource=route.resource,
            )
        if r.status_code != 200 or not _is_check(answer):
            err = answer.get("error") if isinstance(answer, dict) else None
            err = err if isinstance(err, dict) else {}
            log.error("writ refused the gate's check (%s): %s", r.status_code, err)
            return _error(
                503,
                "unavailable",
                f"writ answered the gate's check with {r.status_code} "
                f"({err.get('code', 'error')}: {err.get('message', '')}); the gate is "
                f"misconfigured or writ is failing, so {method} {path} is refused",
                resource=route.resource,
            )
        if not answer["passed"]:
            code = answer.get("code") if isinstance(answer.get("code"), str) else "held"
            code = code or "held"
            log.info("refused %s %s (%s): %s", method, path, code, answer.get("reason"))
            return _error(
                403 if code == "forbidden" else 423,
                code,
                _refusal_text(
                    method, path, route.resource, {**answer, "attribute": route.attribute}
                ),
                holder=answer.get("holder"),
                reason=answer.get("reason"),
                resource=route.resource,
            )
        token = int(answer["fencing_token"])
        highest = self.highest.get(route.resource, 0)
        if token < highest:  # writ's store forgot a higher token this gate already passed
            log.error(
                "writ passed token %s on %s but this gate already passed %s: refusing",
                token,
                route.resource,
                highest,
            )
            reason = f"fencing token {token} is lower than {highest}, already passed by this gate"
            return _error(
                423,
                "lease_lost",
                _refusal_text(
                    method, path, route.resource, {"code": "lease_lost", "reason": reason}
                ),
                holder=answer.get("holder"),
                reason=reason,
                resource=route.resource,
            )
        self.highest[route.resource] = token
        log.info("passed %s %s for %s with token %s", method, path, answer.get("caller"), token)
        return {**answer, "resource": route.resource}

    def _upstream_headers(
        self, scope: Scope, headers: Headers, passed: Mapping[str, Any] | None
    ) -> list[tuple[bytes, bytes]]:
        connection = {
            header_name(t.strip())
            for k, v in headers.raw
            if header_name(k) == "connection"
            for t in v.decode("latin-1").split(",")
        }
        drop = self._drop | connection
        # Authorization is taken to carry the caller's writ token — which never leaves the
        # gate — unless the writ token came in Writ-Authorization (any spelling): then
        # Authorization is the caller's own for the upstream, unless it is a writ token too.
        own = any(header_name(k) == "writ-authorization" for k, _ in headers.raw)
        out = []
        for k, v in scope["headers"]:
            name = header_name(k)
            if name in drop:
                continue
            if name == "authorization" and (not own or _WRIT_TOKEN.search(v)):
                continue
            out.append((k, v))
        out += self._add
        forwarded = self.forwarded.chain(scope)
        if forwarded:
            out.append((b"x-forwarded-for", forwarded.encode("latin-1")))
        out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
        if "host" in headers:
            out.append((b"x-forwarded-host", headers["host"].encode("latin-1")))
        if passed is not None:
            out += [
                (b"writ-fencing-token", str(passed["fencing_token"]).encode()),
                (b"writ-holder", str(passed.get("caller", "")).encode("latin-1")),
                (b"writ-resource", str(passed["resource"]).encode("latin-1")),
            ]
        return out

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        headers: Headers,
        passed: Mapping[str, Any] | None,
        body: bytes | None = None,
    ) -> Response:
        upstream, _ = self._clients()
        if passed is not None and self._gated_client is not None:
            upstream = self._gated_client
        raw_path: bytes = scope.get("raw_path") or str(scope["path"]).encode()
        query: bytes = scope.get("query_string") or b""
        target = self._prefix + raw_path + (b"?" + query if query else b"")
        try:
            url = self.upstream.copy_with(raw_path=target)
        except UnicodeDecodeError:
            url = None
        # the path judged is the path sent, or nothing is (httpx removes dot segments)
        if url is None or url.raw_path.partition(b"?")[0] != target.partition(b"?")[0]:
            return _error(
                400, "invalid", f"the target {raw_path!r} would reach the upstream changed"
            )
        has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
        out_headers = self._upstream_headers(scope, headers, passed)
        if body is not None:  # read already (a form): sent as read, with its length
            out_headers = [(k, v) for k, v in out_headers if header_name(k) != "content-length"]
            out_headers.append((b"content-length", str(len(body)).encode()))
        request = upstream.build_request(
            scope["method"],
            url,
            headers=out_headers,
            content=body if body is not None else _body(receive) if has_body else None,
        )
        started = time.perf_counter()
        took = self.metrics.upstream.labels
        try:
            response = await upstream.send(request, stream=True)
        except httpx.TimeoutException as exc:
            took("timeout").observe(time.perf_counter() - started)
            return _error(
                504,
                "upstream_timeout",
                f"the upstream {self.upstream} did not answer in time ({exc!r})",
            )
        except httpx.HTTPError as exc:
            took("error").observe(time.perf_counter() - started)
            return _error(
                502, "bad_gateway", f"the upstream {self.upstream} cannot be reached: {exc!r}"
            )
        except Exception as exc:  # the HTTP library refused what it was to send (h11's own)
            took("error").observe(time.perf_counter() - started)
            log.warning("could not forward %s %s: %r", scope["method"], scope.get("path"), exc)
            return _error(502, "bad_gateway", f"the request could not be forwarded: {exc!r}")
        took("answered").observe(time.perf_counter() - started)
        connection = {
            t.strip().lower() for v in response.headers.get_list("connection") for t in v.split(",")
        }
        drop = HOP_BY_HOP | connection
        out = StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            background=BackgroundTask(response.aclose),
        )
        out.raw_headers = [
            (k.lower(), v)
            for k, v in response.headers.raw
            if k.decode("latin-1").lower() not in drop
        ]
        return out


async def _read_all(receive: Receive, limit: int) -> bytes:
    """The whole request body, up to ``limit`` bytes (:class:`TooLarge` beyond)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in _body(receive):
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"a body that may carry a _method field (a form, JSON, or a POST with no "
                f"Content-Type) on a mapped route is read whole, up to {limit} bytes"
            )
        parts.append(chunk)
    return b"".join(parts)


def readings(headers: Headers, extra: Iterable[str] = ()) -> list[str]:
    """The methods a request says it is besides its own: each method-override header (any
    spelling, comma lists) and ``extra`` (its ``_method`` query or body fields)."""
    methods = {m.strip().upper() for m in extra if m.strip()}
    for name, value in headers.raw:
        if header_name(name) in METHOD_OVERRIDES:
            methods.update(
                v.strip().upper() for v in value.decode("latin-1").split(",") if v.strip()
            )
    return sorted(methods)


def _as_read(method: str, headers: Headers, extra: Iterable[str]) -> str:
    """The method as the gate judged it, for writ's row: ``POST (as DELETE)`` when the
    request also says it is another."""
    others = [m for m in readings(headers, extra) if m != method.upper()]
    text = (f"{method} (as {', '.join(others)})" if others else method)[:64]
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text)


def _code_of(refusal: Response) -> str:
    """The error code of a refusal the gate built (:func:`_error`)."""
    try:
        code = json.loads(bytes(refusal.body))["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return code if code in REFUSAL_CODES else "unknown"


REFUSAL_CODES = frozenset(
    {"held", "lease_lost", "unauthenticated", "unavailable", "forbidden", "too_many_requests"}
)


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk as the client sends it."""
    while True:
        msg: Message = await receive()
        if msg["type"] == "http.disconnect":
            raise httpx.ReadError("the client went away mid-body")
        chunk = msg.get("body", b"")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return
