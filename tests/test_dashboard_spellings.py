"""A dashboard page is a dashboard page however its route is spelled. The host is judged as
httpx, which calls it, connects to it (a trailing dot, a user, a port, an IDNA full stop
change nothing), and the path as a server reads it (percent-decoded once, a backslash as a
slash, runs of slashes merged, dot segments resolved): ``https://app.datadoghq.com./apm/home``
and ``/%64/<uid>`` were granted while their plain spellings were refused. A query is judged
as given, and decoded only as the Prometheus UI's: its encoded slashes and words are the
call's arguments (``?target=svc%2Fd%2Fapi`` is no Grafana dashboard). The acquire check
(a real app, over each store) and ``writ lint`` give one verdict on every route, a URL httpx
cannot call included."""

from __future__ import annotations

import pytest

from tests.test_http import Writ, admin_env, error, writ  # noqa: F401
from writ.core.routes import route_problem
from writ.evidence.lint import check_row

# (a spelling, and the plain route it is a spelling of: refused before and after)
SPELLINGS = [
    ("https://app.datadoghq.com./apm/home", "https://app.datadoghq.com/apm/home"),
    ("https://APP.datadoghq.com../apm/home", "https://app.datadoghq.com/apm/home"),
    ("https://app.datadoghq.com.:443/apm/home", "https://app.datadoghq.com/apm/home"),
    ("https://sentry.io./issues/", "https://sentry.io/issues/"),
    ("https://sentry.io%2e/issues/", "https://sentry.io/issues/"),
    ("https://app.datadoghq\u3002com/apm/home", "https://app.datadoghq.com/apm/home"),
    ("https://app.datadoghq.com\\apm\\home", "https://app.datadoghq.com/apm/home"),
    ("/\\app.datadoghq.com/apm/home", "//app.datadoghq.com/apm/home"),
    ("https://grafana.example.com/%64/aB3x/db", "https://grafana.example.com/d/aB3x/db"),
    ("https://grafana.example.com/d%2FaB3x/db", "https://grafana.example.com/d/aB3x/db"),
    ("https://grafana.example.com\\d\\aB3x\\db", "https://grafana.example.com/d/aB3x/db"),
    ("/grafana/%5Cd%5CaB3x", "/grafana/d/aB3x"),
    ("//d/aB3x/db", "/d/aB3x/db"),
    ("https://kibana.example.com//app//kibana", "https://kibana.example.com/app/kibana"),
    ("https://kibana.example.com/app/./kibana", "https://kibana.example.com/app/kibana"),
    ("https://kibana.example.com/app/%2e/kibana", "https://kibana.example.com/app/kibana"),
    ("https://h.example.com//en-US/app/search/x", "https://h.example.com/en-US/app/search/x"),
    ("/ops/%64ashboard", "/ops/dashboard"),
    ("/ops/%63onsole", "/ops/console"),
    ("/grafana/graph?%670.%65xpr=up", "/grafana/graph?g0.expr=up"),
]
# calls, in spellings that stay calls
CALLS = [
    "/internal/db/rollback?txn=8841",
    "/ops/rollback?ticket=%23123",
    "/ops/%2564ashboard",  # decoded once: the server reads "/ops/%64ashboard"
    "/data/d1/rollback",
    "https://api.datadoghq.com./api/v1/events",
    "https://ops.example.com:443/api/v1/deploys/842/../843/rollback",
    # a query's encoded slashes and words are the call's arguments, not a page's path or label
    "https://deploy.internal/v1/rollback?target=svc%2Fd%2Fapi",
    "https://rollback.internal/api/v2/rollback?path=%2Fapp%2Flogs%2Fx",
    "/undo?query=a%20ui%20b",
    "/ops/rollback?view=%64ashboard",
]
UNCALLABLE = ["http://127.0.0.1:abc/undo", "https://ops.inter\u00adnal/rollback"]


def _lint_rejects(route: str) -> bool:
    result = check_row({"rollback_path": route}, fragment=True)
    return result.verdict == "reject" and any(f.field == "rollback_path" for f in result.findings)


@pytest.mark.parametrize(("spelling", "plain"), SPELLINGS)
def test_a_spelling_of_a_dashboard_is_refused_as_the_plain_route_is(
    spelling: str, plain: str
) -> None:
    assert route_problem(plain) is not None, plain
    problem = route_problem(spelling)
    assert problem is not None, spelling
    assert "not a URL writ can call" not in problem, problem  # refused as a page
    assert _lint_rejects(spelling) and _lint_rejects(plain), spelling


def test_the_host_shown_is_the_one_httpx_connects_to() -> None:
    assert "(app.datadoghq.com)" in (route_problem("https://app.datadoghq.com./apm/home") or "")


@pytest.mark.parametrize("route", CALLS)
def test_calls_stay_calls_in_their_spellings(route: str) -> None:
    assert route_problem(route) is None, route_problem(route)
    assert not _lint_rejects(route)


@pytest.mark.parametrize("route", UNCALLABLE)
def test_lint_rejects_a_route_httpx_cannot_call_as_acquire_does(route: str) -> None:
    assert "not a URL writ can call" in (route_problem(route) or ""), route_problem(route)
    assert _lint_rejects(route)


async def test_acquire_and_lint_give_one_verdict_on_every_spelling(writ: Writ) -> None:  # noqa: F811
    """Through the real app: each spelling of a page is 422 on ``rollback.path`` and no
    lease is granted; each call is granted; ``writ lint`` says the same of every one."""
    agent = await writ.principal("agent-a")
    await writ.principal("ops-queue", "queue")
    plan = {"allowed": True, "key_holder": "ops-queue", "override_queue": "ops-queue"}
    for i, route in enumerate(
        [s for s, _ in SPELLINGS] + [p for _, p in SPELLINGS] + UNCALLABLE + CALLS
    ):
        r = await writ.acquire(agent, f"spell/db{i}", rollback={**plan, "path": route})
        refused = r.status_code == 422
        if refused:
            err = error(r, 422, "invalid")
            assert err["field"] == "rollback.path", err
        else:
            assert r.status_code == 201, (route, r.text)
        assert refused == (route not in CALLS), (route, r.text)
        assert _lint_rejects(route) == refused, route
    granted = [row for row in await writ.audit() if row["event"] == "lease.granted"]
    assert sorted(row["rollback_path"] for row in granted) == sorted(CALLS)
