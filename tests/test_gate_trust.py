"""The gate owns its headers and its paths: what a WSGI upstream (which reads headers as
``HTTP_*`` environ variables, ``-`` and ``_`` alike) receives through ``writ gate``.

A real upstream (wsgiref, recording each request's environ) behind a real gate over HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import uvicorn

from tests.server_fixtures import LiveServer, free_port, hostile, run_writ, unique
from writ.gate import Gate, Route, ambiguity
from writ.gate.bodies import MAX_FORM
from writ.gate.routes import request_paths


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class WsgiUpstream:
    """A WSGI admin API that records the environ of every request that reaches it (one
    request at a time, or each in a thread of its own; ``accepted`` counts connections)."""

    def __init__(self, threaded: bool = False) -> None:
        self.seen: list[dict[str, Any]] = []
        self.accepted = threading.Semaphore(0)
        accepted = self.accepted

        class Handler(_Quiet):
            def setup(self) -> None:
                super().setup()
                accepted.release()

        self.server: WSGIServer = make_server(
            "127.0.0.1",
            free_port(),
            self.app,
            server_class=_Threaded if threaded else WSGIServer,
            handler_class=Handler,
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        self.seen.append(
            {
                k: v
                for k, v in environ.items()
                if k.startswith("HTTP_") or k in ("PATH_INFO", "REQUEST_METHOD", "QUERY_STRING")
            }
            | {"body": body}
        )
        start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    def __enter__(self) -> WsgiUpstream:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class GateRig:
    def __init__(self, live: LiveServer, upstream: WsgiUpstream, gate_url: str, res: str):
        self.live, self.upstream, self.res = live, upstream, res
        self.gate_url = gate_url
        self.host, port = gate_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.agent, self.token = live.principal("agent")

    def raw(self, request: bytes) -> bytes:
        """Send bytes as they are; the whole answer."""
        with socket.create_connection((self.host, self.port), timeout=10) as s:
            s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out

    def send(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def serve_gate(gate: Gate) -> Iterator[str]:
    """The gate under uvicorn in a thread, configured as `writ gate` serves it."""
    server = uvicorn.Server(
        uvicorn.Config(
            gate, host="127.0.0.1", port=free_port(), log_level="warning", proxy_headers=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def rig(live_server: LiveServer) -> Iterator[GateRig]:
    """An in-process gate (its log captured by caplog) in front of a WSGI upstream."""
    res = unique("trust")
    _, gate_token = live_server.principal("portal", unique("gate"))
    with WsgiUpstream() as upstream:
        routes = [
            Route("/admin/db/*", f"{res}/db"),
            Route("/admin/cache/*", f"{res}/cache", frozenset({"DELETE"})),
        ]
        gate = Gate(live_server.url, gate_token, upstream.url, routes)
        with serve_gate(gate) as url:
            yield GateRig(live_server, upstream, url, res)


def env(rig: GateRig) -> dict[str, Any]:
    return rig.upstream.seen[-1]


# ----------------------------------------------------------------------------- headers
def test_every_spelling_of_the_gate_headers_is_stripped(rig: GateRig) -> None:
    """Writ_Holder, WRIT-FENCING-TOKEN, writ_resource... never reach a WSGI upstream as
    HTTP_WRIT_*; nor do forwarding headers the caller made up."""
    status, _ = rig.send(
        "GET",
        "/public/x",
        {
            "Writ_Holder": "forged",
            "WRIT-FENCING-TOKEN": "999999",
            "writ_resource": "forged",
            "Writ_Lease": "x",
            "X_Forwarded_For": "6.6.6.6",
            "X-Forwarded-For": "6.6.6.6",
            "X_Real_IP": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
        },
    )
    assert status == 200
    e = env(rig)
    assert not [k for k in e if k.startswith("HTTP_WRIT_")], e
    assert e["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert "HTTP_X_REAL_IP" not in e and "HTTP_FORWARDED" not in e


def test_the_writ_token_never_reaches_the_upstream(rig: GateRig) -> None:
    """On an unmapped read, a mapped read and an unmapped write: Authorization (the writ
    token) is dropped; beside Writ-Authorization the caller's own Authorization passes,
    but never a writ token in it."""
    bearer = {"Authorization": f"Bearer {rig.token}"}
    for method, path in (("GET", "/public/x"), ("GET", "/admin/db/x"), ("POST", "/public/y")):
        assert rig.send(method, path, bearer)[0] == 200
        assert "HTTP_AUTHORIZATION" not in env(rig), (method, path)
    own = {"Writ-Authorization": f"Bearer {rig.token}", "Authorization": "Basic dXA6c3c="}
    assert rig.send("GET", "/public/x", own)[0] == 200
    assert env(rig)["HTTP_AUTHORIZATION"] == "Basic dXA6c3c="
    assert "HTTP_WRIT_AUTHORIZATION" not in env(rig)
    both = {"Writ_Authorization": "Bearer x", "Authorization": f"Bearer {rig.token}"}
    assert rig.send("GET", "/public/x", both)[0] == 200
    assert "HTTP_AUTHORIZATION" not in env(rig)
    # what the caller did not send, the upstream does not get either (no library defaults)
    seen = env(rig)
    assert not {"HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING"} & set(seen), seen
    for spelled in (f"Bearer\t{rig.token}", rig.token, f"Basic x, Bearer  {rig.token}"):
        odd = {"Writ-Authorization": f"Bearer {rig.token}", "Authorization": spelled}
        assert rig.send("GET", "/public/x", odd)[0] == 200
        assert "HTTP_AUTHORIZATION" not in env(rig), spelled


@pytest.mark.parametrize(
    "headers",
    [
        {"X-HTTP-Method-Override": "DELETE"},
        {"X_HTTP_Method_Override": "DELETE"},
        {"X-HTTP-Method-Override": "GET, DELETE"},
        {"X-HTTP-Method": "delete"},
        {"X-Method-Override": "DELETE"},
        {"X-Original-Method": "DELETE"},
        {"x_original_method": "DELETE"},
    ],
)
def test_method_overrides_in_every_form_are_judged(rig: GateRig, headers: dict[str, str]) -> None:
    """A POST that says (in any header spelling, or in a list) it is a DELETE is judged by
    the DELETE-only route: 423, and the upstream never sees it."""
    before = len(rig.upstream.seen)
    status, body = rig.send("POST", "/admin/cache/all", headers)
    assert status == 423, body
    assert len(rig.upstream.seen) == before


@pytest.mark.parametrize(
    ("path", "ctype", "body"),
    [
        ("/admin/cache/all?_method=DELETE", None, b""),
        ("/admin/cache/all?a=1&_METHOD=delete", None, b""),
        ("/admin/cache/all", "application/x-www-form-urlencoded", b"a=1&_method=DELETE"),
        # spellings PHP folds onto _method (Symfony, Laravel), and ';' between fields
        ("/admin/cache/all?.method=DELETE", None, b""),
        ("/admin/cache/all?%20_method=DELETE", None, b""),
        ("/admin/cache/all?a=1;_method=DELETE", None, b""),
        ("/admin/cache/all", "application/x-www-form-urlencoded", b".method=DELETE"),
        ("/admin/cache/all", "application/x-www-form-urlencoded", b"a=1;_method=DELETE"),
        (
            "/admin/cache/all",
            "multipart/form-data; boundary=XX",
            b'--XX\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XX--\r\n',
        ),
    ],
)
def test_a_method_field_is_judged_as_the_write_it_names(
    rig: GateRig, path: str, ctype: str | None, body: bytes
) -> None:
    before = len(rig.upstream.seen)
    headers = {"Content-Type": ctype} if ctype else {}
    status, answer = rig.send("POST", path, headers, body)
    assert status == 423, answer
    assert len(rig.upstream.seen) == before


@pytest.mark.parametrize(
    "disposition",
    [
        b'name="_method"\r\nContent-Type: text/plain',
        b"name='_method'",
        b"name=_method",
        b'name=".method"',
        b"name*=UTF-8''_method",
        b'name="%5Fmethod"',
    ],
)
def test_an_unreadable_multipart_method_is_refused_and_a_plain_form_passes_whole(
    rig: GateRig, disposition: bytes
) -> None:
    weird = (
        b"--XX\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\nDELETE\r\n--XX--\r\n"
    )
    before = len(rig.upstream.seen)
    ctype = {"Content-Type": "multipart/form-data; boundary=XX"}
    assert rig.send("POST", "/admin/cache/all", ctype, weird)[0] == 400
    assert len(rig.upstream.seen) == before
    # a form with no _method on a mapped path is read and passed on intact
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _ = rig.send("PATCH", "/admin/cache/all", form, b"a=1&b=" + b"x" * 5000)
    assert status == 200
    assert env(rig)["body"] == b"a=1&b=" + b"x" * 5000


@pytest.mark.parametrize("second", [b"Content-Type", b"Content_Type", b"CONTENT_TYPE"])
def test_two_content_types_on_a_mapped_path_are_refused(rig: GateRig, second: bytes) -> None:
    """The gate would read the first, the upstream may read the other (a form with _method),
    whatever its spelling: a WSGI or CGI upstream may take ``Content_Type`` for it."""
    before = len(rig.upstream.seen)
    out = rig.raw(
        b"POST /admin/cache/all HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        + second
        + b": application/x-www-form-urlencoded\r\nContent-Length: 14\r\n"
        b"Connection: close\r\n\r\n_method=DELETE"
    )
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert len(rig.upstream.seen) == before


def test_a_content_type_spelled_with_underscores_alone_is_read_as_one(rig: GateRig) -> None:
    """``Content_Type: application/x-www-form-urlencoded`` alone, on a PUT with
    ``_method=DELETE``: read as the form it may be to the upstream, and judged as a DELETE."""
    before = len(rig.upstream.seen)
    out = rig.raw(
        b"PUT /admin/cache/all HTTP/1.1\r\nHost: x\r\n"
        b"Content_Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n"
        b"Connection: close\r\n\r\n_method=DELETE"
    )
    assert out.startswith(b"HTTP/1.1 423 "), out[:200]
    assert len(rig.upstream.seen) == before


@pytest.mark.parametrize(
    ("ctype", "body", "status"),
    [
        # Rack reads a POST with no type as a form; its MethodOverride (Rails) then runs it
        (None, b"_method=DELETE", 423),
        ("", b"_method=DELETE", 423),
        # PHP cuts the type at ';', ',' or a space: a form to Symfony and Laravel
        ("application/x-www-form-urlencoded, text/plain", b"_method=DELETE", 400),
        ("application/x-www-form-urlencoded,x", b"_method=DELETE", 400),
        ("application/x-www-form-urlencoded x", b"_method=DELETE", 400),
        ("multipart/form-data, x; boundary=B", b"_method=DELETE", 400),
        ("; charset=utf-8", b"_method=DELETE", 400),
        # Laravel reads a JSON body's keys as the request's fields
        ("application/json", b'{"_method": "DELETE"}', 423),
        ("Application/Vnd.Api+JSON; charset=utf-8", b'{"a": 1, "_method": "delete"}', 423),
        ("application/json", b'{"_method": "GET", "_method": "DELETE"}', 423),
        ("text/json", b'{"_method": "DELETE"}', 423),
        ('text/plain; x="+json"', b'{"_method": "DELETE"}', 423),
        ("application/json", b'{"_method": ["DELETE"]}', 400),
        ("application/json", b'{"_method": {"x": "DELETE"}}', 400),
    ],
)
def test_a_method_field_in_any_body_an_upstream_reads_as_fields_is_judged(
    rig: GateRig, ctype: str | None, body: bytes, status: int
) -> None:
    """A POST on the DELETE-only route whose body names DELETE, in a body the gate once
    read as no form (no type, a type PHP cuts to a form's, JSON): judged as the DELETE it
    names (423: no lease), or refused when the gate cannot read it plainly; never passed on."""
    before = len(rig.upstream.seen)
    headers = {} if ctype is None else {"Content-Type": ctype}
    got, answer = rig.send("POST", "/admin/cache/all", headers, body)
    assert got == status, answer
    assert len(rig.upstream.seen) == before


@pytest.mark.parametrize(
    ("method", "ctype", "body"),
    [
        ("POST", None, b"a=1&method=DELETE"),
        ("POST", "application/json", b'{"method": "DELETE", "x": {"_method": "DELETE"}}'),
        ("POST", "application/json", b'{"_method": "DELETE"'),  # no JSON: no parser finds it
        ("POST", "text/plain", b"_method=DELETE"),  # no framework reads a field from it
        ("PUT", None, b"_method=DELETE" + b"x" * (MAX_FORM + 1)),  # not read: no 413
        ("PUT", "application/json", b'{"_method": "DELETE"}'),  # overrides are a POST's
    ],
)
def test_a_body_that_names_no_other_method_passes_whole(
    rig: GateRig, method: str, ctype: str | None, body: bytes
) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}
    status, answer = rig.send(method, "/admin/cache/all", headers, body)
    assert status == 200, answer
    assert env(rig)["REQUEST_METHOD"] == method and env(rig)["body"] == body


def test_a_json_post_over_the_bound_on_a_mapped_path_is_refused_413(rig: GateRig) -> None:
    before = len(rig.upstream.seen)
    body = b'{"x": "' + b"y" * MAX_FORM + b'"}'
    status, answer = rig.send(
        "POST", "/admin/cache/all", {"Content-Type": "application/json"}, body
    )
    assert status == 413, answer
    assert len(rig.upstream.seen) == before


def test_the_row_of_a_passed_override_names_the_method_it_was_judged_as(
    rig: GateRig, live_server: LiveServer
) -> None:
    """A POST that says it is a DELETE passes on a DELETE lease's route; writ's row says
    so, not just POST."""
    with live_server.client(rig.token) as c:
        lease = c.acquire(f"{rig.res}/cache", "flush")
    with live_server.client() as admin:
        seq = admin.last_seq()
    try:
        headers = {
            "Authorization": f"Bearer {rig.token}",
            "Writ-Lease": lease["lease_id"],
            "Writ-Fencing-Token": str(lease["fencing_token"]),
            "X-HTTP-Method-Override": "DELETE",
        }
        status, answer = rig.send("POST", "/admin/cache/all?_method=patch", headers)
        assert status == 200, answer
    finally:
        with live_server.client(rig.token) as c:
            c.release(lease["lease_id"])
    with live_server.client() as admin:
        rows = [r for r in admin.iter_audit(seq) if r["event"] == "gate.passed"]
    assert len(rows) == 1, rows
    assert rows[0]["notes"].startswith("POST (AS DELETE, PATCH) /admin/cache/all via "), rows


# ----------------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    "path",
    [
        "/admin/db;x=1/y",
        "/admin/db/x;jsessionid=1",
        "/admin/db/x%00",
        "/admin/db/x%0a",
        "/admin/db/x%20y",
        "/admin/db%2fx",
        "/admin%5cdb/x",
        "/admin/%2e%2e/admin/db/x",
        "/admin/db/%252e",
        "/admin/db//x",
        "/admin/db/./x",
        "/x/../admin/db/x",
        "/admin/db/%zz",
        # what makes them ambiguous hides the prefix: an upstream may drop it and find it
        "/admin/db%00/x",
        "/adm%00in/db/x",
        "/admin/db%20/x",
        "/admin%20/db/x",
        "/admin/db%09/x",
        "/admin/db%0d%0a/x",
        "/admin/db%00",
        "/admin/db%20",
        "/admin/db%c0%af",
        "/admin/d%u0062/x",
        # a network-path reference: a URL parser reads host x, path /admin/db/scale
        "//x/admin/db/scale",
        "/\\x/admin/db/scale",
        "/%5cx/admin/db/scale",
    ],
)
def test_ambiguous_paths_on_a_mapped_prefix_are_refused(rig: GateRig, path: str) -> None:
    """Reads too: what the upstream would make of them is not what the gate matched."""
    for method in ("GET", "POST"):
        before = len(rig.upstream.seen)
        status, body = rig.send(method, path)
        assert status == 400, (method, path, body)
        assert b'"invalid"' in body
        assert len(rig.upstream.seen) == before


def test_ambiguous_paths_elsewhere_pass_and_plain_ones_are_matched(rig: GateRig) -> None:
    assert rig.send("GET", "/public/a;b")[0] == 200
    assert env(rig)["PATH_INFO"] == "/public/a;b"
    # a route /admin/db/* covers /admin/db and /admin/db/ too
    for path in ("/admin/db", "/admin/db/", "/ADMIN/DB"):
        before = len(rig.upstream.seen)
        assert rig.send("POST", path)[0] == 423, path
        assert len(rig.upstream.seen) == before
    assert ambiguity(b"/admin/caf%C3%A9") is None  # UTF-8 escapes are plain text
    assert ambiguity(b"/admin/%ff") is not None


@pytest.mark.parametrize(
    "path",
    [
        "/admin/db.json",
        "/admin/db.",
        "/admin/db%20",
        "/admin/db./x",
        "/admin/db.%20.%20/x",
        "/%EF%BD%81dmin/db/x",
        "/adm%C4%B1n/db/x",  # dotless ı
        "/ADM%C4%B0N/DB/x",  # dotted İ
        "/admin/%C5%BF/../db/x",  # long s, then a dot segment
    ],
)
def test_paths_an_upstream_may_fold_onto_a_route_are_gated(rig: GateRig, path: str) -> None:
    """A format suffix (Rails reads /admin/db.json as /admin/db), trailing dots or spaces
    (Windows servers drop them), a full-width letter (NFKC), a letter a case-insensitive
    router takes for ASCII (Python's re and Java match ı and İ to i): a write needs the
    lease."""
    before = len(rig.upstream.seen)
    status, body = rig.send("POST", path)
    assert status in (400, 423), (path, status, body)
    assert len(rig.upstream.seen) == before


def test_reading_a_long_path_of_dots_and_spaces_takes_linear_work() -> None:
    """A path of 16,000 ". " pairs held the gate (one event loop) for minutes: the trim of
    trailing dots and spaces was a regex that backtracks quadratically. Now well under the
    bound; the old reading took 17 s for this one path."""
    path = "/x" + " ." * 30_000 + "y"
    forms: list[set[str]] = []
    done = threading.Event()
    threading.Thread(
        target=lambda: (forms.append(request_paths(path)), done.set()), daemon=True
    ).start()
    assert done.wait(5), "reading the path took more than 5 s"
    assert path in forms[0]


@pytest.mark.parametrize("method", ["MERGE", "MOVE", "COPY", "PROPPATCH", "LOCK", "PURGE"])
def test_a_route_without_methods_gates_every_method_but_the_safe_ones(
    rig: GateRig, method: str
) -> None:
    """OData's MERGE, WebDAV's MOVE, a cache's PURGE: a route that names no methods gates
    them all, not only POST, PUT, PATCH and DELETE."""
    before = len(rig.upstream.seen)
    status, body = rig.send(method, "/admin/db/x")
    assert status == 423, (method, status, body)
    assert len(rig.upstream.seen) == before
    # a route that names its methods gates those only
    assert rig.send(method, "/admin/cache/x")[0] == 200


def test_connect_is_refused_and_never_a_500(rig: GateRig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for path in (b"/admin/db/x", b"/public/x"):
        out = rig.raw(
            b"CONNECT " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\nhello"
        )
        assert out.startswith(b"HTTP/1.1 4"), out[:200]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_odd_request_targets_get_4xx_and_head_logs_no_error(
    rig: GateRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    out = rig.raw(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    r = httpx.head(rig.gate_url + "/admin/db/x", timeout=10)
    assert r.status_code == 200 and env(rig)["REQUEST_METHOD"] == "HEAD"
    r = httpx.head(rig.gate_url + "/public/x", timeout=10)
    assert r.status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_the_gate_process_refuses_absolute_form_and_trusts_forwarded_for_only_when_told(
    live_server: LiveServer, tmp_path: Any
) -> None:
    """`writ gate`: an absolute-form target is 400; X-Forwarded-For from a trusted address
    is extended, from any other replaced."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "trust/x"\n')
    _, gate_token = live_server.principal("portal", unique("gate"))
    with WsgiUpstream() as upstream:
        for trusted, want in ((None, "127.0.0.1"), ("127.0.0.0/8", "1.2.3.4, 127.0.0.1")):
            args = [
                "gate",
                "--url",
                live_server.url,
                "--token",
                gate_token,
                "--upstream",
                upstream.url,
                "--listen",
                "127.0.0.1:0",
                "--routes",
                str(routes),
            ]
            if trusted:
                args += ["--trust-forwarded-for", trusted]
            with run_writ(args) as url:
                host, port = url.removeprefix("http://").split(":")
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(
                        b"POST http://elsewhere/admin/x HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                    assert s.recv(65536).startswith(b"HTTP/1.1 400 ")
                r = httpx.get(url + "/public", headers={"X-Forwarded-For": "1.2.3.4"})
                assert r.status_code == 200
                assert upstream.seen[-1]["HTTP_X_FORWARDED_FOR"] == want


# ----------------------------------------------------------------------------- pools
def test_requests_passing_through_cannot_hold_a_checked_write_back(
    live_server: LiveServer,
) -> None:
    """Slow unchecked requests that fill the upstream pool (an anonymous client can send
    them) do not hold a passed write until its lease is gone: passed writes have their own
    connections to the upstream."""
    res = unique("pool")
    _, gate_token = live_server.principal("portal", unique("gate"))
    _, token = live_server.principal("agent")
    upstream = WsgiUpstream(threaded=True)
    gate = Gate(  # one client may fill this pool (its share is lifted): the pools are tested
        live_server.url,
        gate_token,
        upstream.url,
        [Route("/admin/db/*", res)],
        max_connections=2,
        max_per_client=4,
    )
    slow: list[socket.socket] = []
    with upstream, serve_gate(gate) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(2):  # the whole pool, each waiting for the rest of its body
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /public/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            slow.append(s)
        for _ in range(2):
            assert upstream.accepted.acquire(timeout=10), "the slow requests never reached it"
        with live_server.client(token) as c:
            lease = c.acquire(res, "scale")
        headers = {
            "Authorization": f"Bearer {token}",
            "Writ-Lease": lease["lease_id"],
            "Writ-Fencing-Token": str(lease["fencing_token"]),
        }
        r = httpx.post(f"{url}/admin/db/scale", headers=headers, content=b"{}", timeout=10)
        assert r.status_code == 200, r.text
        assert upstream.seen[-1]["PATH_INFO"] == "/admin/db/scale"
        for s in slow:
            s.close()


# ----------------------------------------------------------------------------- a broken writ
@pytest.mark.parametrize(
    "answer",
    [
        b'{"passed": true}',
        b'{"passed": true, "fencing_token": "12"}',
        b'{"passed": "yes", "fencing_token": 12}',
        b'{"passed": false, "code": ["held"], "holder": {"intent": "x"}}',
        b'{"error": "down"}',
        b"[" * 100_000,
        b"{" + b" " * (2 << 20) + b"}",
    ],
    ids=[
        "no-token",
        "string-token",
        "string-passed",
        "odd-refusal",
        "error-string",
        "deep",
        "2MiB",
    ],
)
async def test_a_check_answer_writ_never_sends_fails_closed_with_no_500(answer: bytes) -> None:
    """The gate read writ's answer whole and took int() of its token: a missing or string
    token, an error that is a string or a holder without a name was a 500 of the gate's own
    (a traceback in its log), and an answer of any size was held in memory."""
    forwarded: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        forwarded.append(request.url.path)
        return httpx.Response(200)

    gate = Gate(
        "http://writ",
        "gate-token",
        "http://upstream.test",
        [Route("/admin/db/*", "prod/db")],
        upstream_transport=httpx.MockTransport(upstream),
        writ_transport=httpx.MockTransport(lambda r: httpx.Response(200, content=answer)),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gate), base_url="http://gate"
    ) as client:
        r = await client.post("/admin/db/scale", headers={"Authorization": "Bearer t"})
    await gate.aclose()
    assert r.status_code in (423, 503), r.text
    assert forwarded == []


async def test_a_check_answer_trickled_a_byte_at_a_time_fails_closed_in_writ_timeout() -> None:
    """--writ-timeout bounds one decision: it bounded each read, and a writ (or a proxy in
    front of it) sending a byte every 0.1 s held every gated request for as long as it went on."""

    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n"
        )
        while not stop.wait(0.1):
            conn.sendall(b" ")

    with hostile(trickle) as url:
        gate = Gate(
            url,
            "gate-token",
            "http://upstream.test",
            [Route("/admin/db/*", "prod/db")],
            writ_timeout=0.5,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gate"
        ) as client:
            started = time.monotonic()
            r = await client.post("/admin/db/scale", headers={"Authorization": "Bearer t"})
        await gate.aclose()
    assert r.status_code == 503 and time.monotonic() - started < 2, r.text
