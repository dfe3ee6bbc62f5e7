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
    # a lone string for a list: never one name per character (a consent check on "capacity"
    # was skipped for touches ["c", "a", "p", ...])
    ("acquire", ("t/z", "undo"), {"touches": "capacity"}, "touches is one string"),
    ("acquire", ("t/z", "undo"), {"touches": b"capacity"}, "touches is one string"),
    ("acquire", ("t/z", "undo"), {"touches": 5}, "touches must be a list of names, not int"),
    ("lease", ("t/z", "undo"), {"touches": "capacity"}, "touches is one string"),
    ("freeze", ("prod", "r"), {"allow": "agent2"}, "allow is one string"),
    ("principal_queues", ("bob",), {"add": "oncall"}, "add is one string"),
    ("principal_queues", ("bob",), {"remove": "oncall"}, "remove is one string"),
    ("add_principal", ("bob", "human"), {"queues": "q"}, "queues is one string"),
    # a wait that is not finite (httpx's ValueError or OverflowError escaped)
    ("events", ("t", 0, float("inf")), {}, "wait_s is inf"),
    ("consent", ("cns_x", float("nan")), {}, "wait_s is nan"),
    ("leases", (), {"limit": float("nan")}, "limit is nan"),
    # an empty id: sent, a redirect blamed on the URL
    ("get_lease", ("",), {}, "the id is empty"),
    ("consent", ("",), {}, "the id is empty"),
    ("renew", ("",), {}, "the id is empty"),
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
        with pytest.raises(Invalid, match=says) as caught:
            getattr(c, method)(*args, **kw)
    assert sent == []
    if "is one string" in says:  # the field is named, for the CLI and the MCP tools
        assert caught.value.field == says.split()[0]


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
            out = getattr(c, method)(*args, **kw)
            await (out.__aenter__() if method == "lease" else out)
    assert sent == []
