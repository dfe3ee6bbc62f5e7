"""The error answers (PROTOCOL.md): every :class:`WritError` with its own status and
``{"error": {"code", "message", ...}}``; malformed JSON, wrong types, unknown routes and
unexpected exceptions get the same shape. Never a 500 for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from writ.api.middleware import _INTERNAL_ERROR
from writ.core.errors import Invalid, WritError

log = logging.getLogger("writ.server")

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


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error raised by ``app``'s routes in the protocol's shape."""

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
