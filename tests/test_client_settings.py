"""The client's settings and the errors it rebuilds, whatever they are given: a URL httpx will
not build or naming no host is ``Invalid`` (``field`` ``url``) and never quoted; a host IDNA
cannot encode is ``Unavailable``; a timeout that is not a finite number of seconds is
``Invalid``; an error answer keeps its own HTTP status and code (writ's 429
``too_many_requests`` and 408 ``timeout`` read as ``error`` 500), and a held lease's renewal
refused for now (429) is asked again, not counted as the lease lost."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import writ
from writ.cli import main
from writ.core.errors import Invalid, Unavailable, WritError, error_from_body

CLIENTS = [writ.Client, writ.AsyncClient]


# URLs a client cannot use, and what its refusal says (the CLI's too: test_cli_bad_answers)
UNUSABLE_URLS = [
    ("http://127.0.0.1:abc", "cannot be used: Invalid port"),
    ("http://[::1", "cannot be used"),
    ("http://xn--.com", "cannot be used"),
    ("//user:s3cret@127.0.0.1:1", "names no host"),
    ("http:////user:s3cret@127.0.0.1:1", "names no host"),
    ("http://user:s3cret@127.0.0.1:1", "carries credentials"),
    ("http://a@user:s3cret@127.0.0.1:1", "carries credentials"),
    ("http://:7411", "names no host"),
]


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize(("url", "says"), UNUSABLE_URLS)
def test_a_url_that_cannot_be_used_is_invalid_and_never_quoted(
    cls: type[Any], url: str, says: str
) -> None:
    with pytest.raises(Invalid, match=says) as caught:
        cls(url, token="t")
    assert caught.value.field == "url"
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(caught.value)


def test_a_host_idna_cannot_encode_is_unavailable_when_sent() -> None:
    with writ.Client("http://a..b", token="t") as c, pytest.raises(Unavailable, match=r"a\.\.b"):
        c.health()


async def test_the_async_client_too_says_unavailable_for_such_a_host() -> None:
    async with writ.AsyncClient("http://a..b", token="t") as c:
        with pytest.raises(Unavailable, match=r"a\.\.b"):
            await c.health()


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 0, "soon"])
def test_a_timeout_must_be_finite_seconds_above_zero(cls: type[Any], timeout: Any) -> None:
    with pytest.raises(Invalid, match="finite number of seconds") as caught:
        cls("http://writ.test", token="t", timeout=timeout)
    assert caught.value.field == "timeout"


# --------------------------------------------------------------------------- error answers
def _answering(status: int, body: Any) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer)


BUSY = {"error": {"code": "too_many_requests", "message": "too many requests: slow down"}}


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (429, BUSY, "too_many_requests"),
        (408, {"error": {"code": "timeout", "message": "no body within 10 s"}}, "timeout"),
        (418, {"error": {"code": "teapot", "message": "short and stout"}}, "teapot"),
        (502, "<html>bad gateway</html>", "error"),
    ],
)
def test_an_error_answer_keeps_its_status_and_code(status: int, body: Any, code: str) -> None:
    with writ.Client("http://writ.test", token="t", transport=_answering(status, body)) as c:
        with pytest.raises(WritError) as caught:
            c.whoami()
    assert (caught.value.status, caught.value.code) == (status, code)
    assert (WritError.status, WritError.code) == (500, "error")  # the class keeps its own


def test_a_known_code_keeps_its_class_and_status() -> None:
    err = error_from_body(410, {"error": {"code": "lease_lost", "message": "gone"}})
    assert isinstance(err, writ.LeaseLost) and (err.status, err.code) == (410, "lease_lost")


def test_the_cli_names_the_servers_own_code() -> None:
    transport = _answering(429, BUSY)
    real = writ.Client.__init__

    def via_mock(self: writ.Client, *args: Any, **kw: Any) -> None:
        real(self, *args, **{**kw, "transport": transport})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writ.Client, "__init__", via_mock)
        res = CliRunner().invoke(main, ["status"], env={"WRIT_URL": "http://writ.test"})
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines() == ["writ: too_many_requests: too many requests: slow down"]


REFUSED = {
    429: BUSY,
    408: {"error": {"code": "timeout", "message": "no body within 10 s"}},
    403: {"error": {"code": "forbidden", "message": "not yours"}},
}
LEASE = {
    "lease_id": "ls_1",
    "lock_key": "t/z",
    "resource": "t/z",
    "holder": "a",
    "state": "held",
    "fencing_token": 1,
    "ttl_s": 1,
    "expires_at": "2999-01-01T00:00:00Z",
}


def _renewals(statuses: list[int]) -> tuple[httpx.MockTransport, threading.Event, list[int]]:
    """A server granting ``LEASE`` and answering its renewals with ``statuses`` in turn, then
    200; ``done`` is set at the first renewal past them."""
    done, seen = threading.Event(), []
    left = list(statuses)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/renew"):
            status = left.pop(0) if left else 200
            seen.append(status)
            if status == 404:  # not writ's answer: an ingress's page while it redeploys
                return httpx.Response(404, html="<html>404 Not Found</html>")
            if status != 200:
                return httpx.Response(status, json=REFUSED[status])
            done.set()
        return httpx.Response(200, json=LEASE)

    return httpx.MockTransport(answer), done, seen


@pytest.mark.parametrize("status", [429, 408, 404])
def test_a_renewal_refused_for_now_is_asked_again(status: int) -> None:
    """429 and 408 are writ's refusals for now; a 4xx that is no writ answer at all (an
    ingress's page) is not writ refusing the lease: each is asked again, as a 5xx is."""
    transport, done, seen = _renewals([status, status])
    lost: list[WritError] = []
    on_lost: Callable[[Any], None] = lost.append
    with writ.Client("http://writ.test", token="t", transport=transport) as c:
        with c.lease("t/z", "x", ttl_s=1, renew_every=0.05, on_lost=on_lost) as lease:
            assert done.wait(5), seen
            assert not lease.lost.is_set(), lease.error
    assert seen[:3] == [status, status, 200] and lost == []


def test_a_renewal_refused_for_good_loses_the_lease() -> None:
    transport, _, seen = _renewals([403])
    with writ.Client("http://writ.test", token="t", transport=transport) as c:
        lease = c.lease("t/z", "x", ttl_s=1, renew_every=0.05)
        lease.acquire()
        try:
            assert lease.lost.wait(5)
        finally:
            with pytest.raises(writ.LeaseLost):
                lease.close()
    assert seen == [403]


@pytest.mark.parametrize(("status", "goes_on"), [(429, True), (408, True), (403, False)])
def test_a_watch_refused_for_now_asks_again(status: int, goes_on: bool) -> None:
    """A lease's watch stops quietly at a 4xx (not its rows to read), but a 429 or 408 is a
    refusal for now: it pauses and polls again, as after a 5xx."""
    from writ.client._watch import Ask, steps

    transport, _, _ = _renewals([])
    with writ.Client("http://writ.test", token="t", transport=transport) as c:
        lease = c.lease("t/z", "x", ttl_s=1, renew_every=3600).acquire()
        watch = steps(lease)
        assert next(watch) == Ask("last_seq")
        assert watch.send(5) == Ask("get_lease", ("ls_1",))
        assert watch.send(LEASE).method == "events"
        refusal = error_from_body(status, REFUSED[status])
        if goes_on:
            assert watch.throw(refusal).method == "pause"
        else:
            with pytest.raises(StopIteration):
                watch.throw(refusal)
        lease.close()
