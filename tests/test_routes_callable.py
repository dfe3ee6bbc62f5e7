"""A route writ will call must be one it can call: a URL httpx cannot read (a port that is
not a number, a soft hyphen in a host that shows as another name) is refused where it is
given (a rollback plan at acquire, a wake route at principal add), and one stored before
that check fails its call as a failed call (its row written, the rollback ``failed``),
never a 500 that leaves a rollback ``approved`` for ever. Real HTTP receivers record what
reached them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_rollback_hosts import _serving
from tests.test_safety import Receiver
from writ.core import routes

UNCALLABLE = ["http://127.0.0.1:abc/undo", "https://ops.inter\u00adnal/rollback"]


@pytest.fixture
def base() -> Any:
    r = Receiver()
    yield r
    r.close()


def _policy(base: Receiver) -> str:
    return f'rollback_base_url = "{base.base}"\n'  # no rollback_hosts: any host (v1)


NAMES = (("perf-agent", "agent"), ("cost-agent", "agent"), ("ops-queue", "queue"))


async def test_a_route_httpx_cannot_call_is_refused_where_it_is_given(
    tmp_path: Any, base: Receiver
) -> None:
    async with _serving(tmp_path, _policy(base), *NAMES) as w:
        for route in UNCALLABLE:
            r = await w.lease(route)
            assert r.status_code == 422, (route, r.text)
            err = r.json()["error"]
            assert err["field"] == "rollback.path" and "not a URL writ can call" in err["message"]
        assert await w.rows("lease.granted") == []
        for route in UNCALLABLE:
            with pytest.raises(Exception, match="not a URL writ can call"):
                await w.engine.add_principal(None, "waker", "agent", wake=route)
        r = await w.lease("/ops/rollback?txn=1")  # a plain one still is
        assert r.status_code == 201, r.text


async def test_a_stored_route_httpx_cannot_call_fails_its_rollback_and_says_so(
    tmp_path: Any, base: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written before the check (a writ of before, or a plan from another store), approved
    now: the approval answers 200 with the rollback ``failed``, and its row is written."""
    async with _serving(tmp_path, _policy(base), *NAMES) as w:
        with monkeypatch.context() as m:  # as a writ before the check took it
            m.setattr(routes, "_origin", lambda url: ("ops.internal", None))
            r = await w.lease(UNCALLABLE[1])
        assert r.status_code == 201, r.text
        done = await w.approve(r.json())  # asserts 200
        assert done["status"] == "failed" and done["response_status"] is None, done
        assert "InvalidURL" in (done["error"] or ""), done
        [row] = await w.rows("rollback.failed")
        assert "InvalidURL" in row["notes"], row
        assert base.calls == []
