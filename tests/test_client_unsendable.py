"""A request the client cannot send is the client's ``Invalid``, before anything is sent:
a number JSON cannot carry (NaN, an infinity, ``1e400`` as read) and a URL httpx will not
build (a resource of 70,000 characters). Before, httpx's own ValueError and InvalidURL
escaped: a traceback from the CLI, an opaque error from an MCP tool."""

from __future__ import annotations

import httpx
import pytest

import writ
from writ.core.errors import Invalid

CASES = [
    ("status", ("x" * 70_000,), {}, "cannot be sent"),
    ("acquire", ("a/b", "scale"), {"ttl_s": float("inf")}, "not finite"),
    ("change", ("ls_x", "n", "scaled"), {"before": {"n": float("nan")}}, "not finite"),
]


def _recording() -> tuple[list[httpx.Request], httpx.MockTransport]:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    return sent, httpx.MockTransport(answer)


@pytest.mark.parametrize(("method", "args", "kw", "says"), CASES)
def test_the_sync_client_refuses_what_it_cannot_send(
    method: str, args: tuple[object, ...], kw: dict[str, object], says: str
) -> None:
    sent, transport = _recording()
    with writ.Client("http://writ.test", token="t", transport=transport) as c:
        with pytest.raises(Invalid, match=says):
            getattr(c, method)(*args, **kw)
    assert sent == []


@pytest.mark.parametrize(("method", "args", "kw", "says"), CASES)
async def test_the_async_client_refuses_what_it_cannot_send(
    method: str, args: tuple[object, ...], kw: dict[str, object], says: str
) -> None:
    sent, _ = _recording()

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    transport = httpx.MockTransport(answer)
    async with writ.AsyncClient("http://writ.test", token="t", transport=transport) as c:
        with pytest.raises(Invalid, match=says):
            await getattr(c, method)(*args, **kw)
    assert sent == []
