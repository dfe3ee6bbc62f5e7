"""Wire times and ids: the fast paths agree with the plain ones."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from hypothesis import example, given
from hypothesis import strategies as st

from writ.core import models
from writ.core.clock import parse_time, rfc3339, stamp

# the latest time writ accepts (parse_time's bound), less a second so that a fraction of a
# second after it stays inside; a float this large resolves ~30 us, so 23:59:59.999999
# itself would round into year 10000
MAX_TS = datetime(9999, 12, 31, 23, 59, 58, tzinfo=UTC).timestamp()


def plain(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@given(st.floats(min_value=-62_135_596_800.0, max_value=MAX_TS, allow_nan=False))
@example(0.0)
@example(0.9999995)  # rounds up into the next second
@example(1_700_000_000.0000005)  # half a microsecond: half to even
@example(1_700_000_000.0000015)
@example(1_778_926_620.5)
@example(-1.5)
@example(-62_135_596_800.0)  # year 1: four-digit year
def test_rfc3339_matches_datetime_to_the_character(ts: float) -> None:
    assert rfc3339(ts) == plain(ts)


@given(st.floats(min_value=0.0, max_value=MAX_TS, allow_nan=False))
def test_rfc3339_round_trips_through_parse_time(ts: float) -> None:
    text = rfc3339(ts)
    assert text is not None
    assert abs(parse_time(text) - ts) <= 5e-7 * max(1.0, abs(ts) / 1e9)


@given(st.floats(min_value=-62_135_596_800.0, max_value=MAX_TS, allow_nan=False))
@example(1_700_000_000.123456789)
@example(0.9999995)
def test_stamp_is_the_shown_text_and_the_time_it_parses_back_to(ts: float) -> None:
    text, at = stamp(ts)
    assert text == rfc3339(ts)
    assert at == parse_time(text)
    assert abs(at - ts) <= 5e-7 + abs(ts) * 2**-52


def test_rfc3339_of_none_is_none() -> None:
    assert rfc3339(None) is None


def test_ids_are_distinct_url_safe_and_differ_in_a_forked_child() -> None:
    ids = {models.new_id("ls") for _ in range(5000)}
    assert len(ids) == 5000
    assert all(i.startswith("ls_") and len(i) == 19 for i in ids)
    assert all(c.isalnum() or c in "-_" for i in ids for c in i[3:])
    models.new_id("ls")  # the pool is now partly used: a child must not reuse it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        os.write(w, models.new_id("ls").encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child != models.new_id("ls")
    assert child not in ids
