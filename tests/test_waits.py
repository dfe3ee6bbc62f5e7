"""Each principal's waiting requests are counted and capped (writ.api.waits); the listener
test (tests/test_limits.py) proves it over HTTP against a real server."""

from __future__ import annotations

import pytest

from writ.api.waits import Waits, default_cap
from writ.core.errors import Unavailable


def test_a_principal_at_its_cap_is_refused_and_others_are_not() -> None:
    waits = Waits(2)
    with waits.one("a"), waits.one("a"):
        with pytest.raises(Unavailable, match="already has 2 requests waiting"):
            with waits.one("a"):
                pytest.fail("a third wait ran")  # pragma: no cover
        with waits.one("b"):
            assert (waits.held("a"), waits.held("b")) == (2, 1)
    assert (waits.held("a"), waits.held("b")) == (0, 0)


def test_a_wait_that_fails_is_no_longer_counted() -> None:
    waits = Waits(1)
    with pytest.raises(RuntimeError), waits.one("a"):
        raise RuntimeError("the wait failed")
    with waits.one("a"):
        assert waits.held("a") == 1


def test_the_default_cap_is_a_quarter_of_the_connections() -> None:
    assert [default_cap(n) for n in (4096, 8, 3)] == [1024, 2, 1]
    with pytest.raises(ValueError):
        Waits(0)
