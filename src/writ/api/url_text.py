"""The request line's text: a path or query parameter that is not text is 422 before any
route sees it.

Path and query parameters are ids, resources, principal names and times that go to the
store as they are. Percent-encoding lets them carry what no text field may hold — a NUL
(``/v1/leases/ls_%00``), which PostgreSQL refuses in any text value (today a 503 for a
request that is simply wrong), or other control characters. The same rule as for bodies
(:func:`writ.core.validate.text_problem`), applied once to the decoded path and to each query
parameter decoded as Starlette decodes it.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from writ.core.errors import Invalid
from writ.core.validate import text_problem

__all__ = ["TextURL"]


class TextURL:
    """ASGI middleware: 422 ``invalid`` naming ``path`` or the query parameter when either
    is not text; everything else goes on to ``app`` untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            err = url_problem(scope.get("path", ""), scope.get("query_string", b""))
            if err is not None:
                body = json.dumps(err.to_body()).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": err.status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def url_problem(path: str, query: bytes) -> Invalid | None:
    """The error for a decoded ``path`` or a raw ``query`` string that holds non-text."""
    problem = text_problem(path)
    if problem:
        return Invalid(f"the request path {problem}", field="path")
    if query and (
        b"%" in query or not query.isascii() or not query.decode("latin-1").isprintable()
    ):
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            for field, text in ((f"query parameter name {key!r}", key), (key, value)):
                problem = text_problem(text)
                if problem:
                    return Invalid(f"{field} {problem}", field=key)
    return None
