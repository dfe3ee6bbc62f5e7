"""Resource paths and blast radius."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from writ.core.errors import Invalid
from writ.core.resources import BlastRadius, ancestors, related, related_clauses, validate

SEG = st.text(alphabet="abc", min_size=1, max_size=2)
PATH = st.lists(SEG, min_size=1, max_size=4).map("/".join)


@pytest.mark.parametrize(
    "good", ["prod/db", "orders/checkout-write", "a", "a.b_c-d/0", "/".join("a" * 16)]
)
def test_valid_paths(good: str) -> None:
    """Lowercase segments of a-z 0-9 . _ - joined by '/' are resources."""
    assert validate(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Prod/db",
        "prod//db",
        "/prod",
        "prod/",
        "prod db",
        "prod/db*",
        "/".join("a" * 17),
        "a" * 257,
        7,
        None,
    ],
)
def test_invalid_paths_say_why(bad: object) -> None:
    """Anything else is invalid, with a message naming the field."""
    with pytest.raises(Invalid) as e:
        validate(bad)
    assert "resource" in e.value.message


def test_ancestors_and_related() -> None:
    """Ancestors nearest last; related means equal, ancestor or descendant — by segment."""
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert related("prod", "prod/db") and related("prod/db", "prod") and related("x", "x")
    assert not related("prod", "production") and not related("prod/db", "prod/dbx")


def test_blast_radius_groups_conflict_as_one() -> None:
    """Members of a group conflict; so do their ancestors and descendants."""
    br = BlastRadius({"db-tier": ["prod/db", "routing/db-tier", "capacity/db"]})
    assert br.conflicts("prod/db", "routing/db-tier")
    assert br.conflicts("capacity/db", "prod/db/replica")
    assert br.conflicts("prod", "routing/db-tier")  # prod covers prod/db
    assert br.conflicts("routing", "prod/db/replica")
    assert not br.conflicts("routing/edge", "prod/db")
    assert not br.conflicts("staging/db", "prod/db")
    assert br.group_names("prod/db/x") == ["db-tier"]
    # a lease on any of these holds write authority over prod/db/x; not one on a descendant
    assert br.covering("prod/db/x") == {
        "prod",
        "prod/db",
        "prod/db/x",
        "routing",
        "routing/db-tier",
        "capacity",
        "capacity/db",
    }


def test_touching_groups_are_merged() -> None:
    """Groups linked through related members merge, so conflicts stay symmetric."""
    br = BlastRadius({"g1": ["a", "c/1"], "g2": ["c", "d"]})
    assert br.conflicts("a", "d") and br.conflicts("d", "a")


@given(
    PATH, PATH, st.dictionaries(st.sampled_from(["g", "h"]), st.lists(PATH, min_size=1, max_size=3))
)
def test_conflict_is_symmetric_and_matches_store_lookup(
    a: str, b: str, groups: dict[str, list[str]]
) -> None:
    """conflicts(a, b) == conflicts(b, a), and equals the stores' indexed lookup."""
    br = BlastRadius(groups)
    assert br.conflicts(a, b) == br.conflicts(b, a)
    exact, ranges = related_clauses(br.expand(a))
    by_lookup = b in exact or any(lo <= b < hi for lo, hi in ranges)
    assert by_lookup == br.conflicts(a, b)


def test_a_member_covers_its_neighbours_not_their_ancestors() -> None:
    """A lease on capacity/db holds prod/db (its neighbour) and below, not prod above it:
    prod/web beside prod/db may be leased to someone else meanwhile."""
    br = BlastRadius({"db-tier": ["prod/db", "routing/db-tier", "capacity/db"]})
    assert "capacity/db" in br.covering("prod/db/x")
    assert br.covering("prod") == {"prod"}
    assert br.covering("capacity") == {"capacity"}
    assert br.conflicts("capacity/db", "prod") and not br.conflicts("capacity/db", "prod/web")


@given(
    PATH,
    PATH,
    st.dictionaries(st.sampled_from(["g", "h"]), st.lists(PATH, min_size=1, max_size=3)),
    st.data(),
)
def test_whoever_covers_a_resource_excludes_all_that_overlaps_it(
    other: str, below: str, groups: dict[str, list[str]], data: st.DataObject
) -> None:
    """A lease holding write authority over r (any path of covering(r)) conflicts with every
    resource that overlaps r (r, above it, below it), so no second lease can be current over
    any part of r — r drawn among the groups' members and their ancestors too."""
    br = BlastRadius(groups)
    near = sorted({a for ms in groups.values() for m in ms for a in (m, *ancestors(m))})
    r = data.draw(st.sampled_from([other, *near]))
    for s in br.covering(r):
        for t in (*ancestors(r), r, f"{r}/{below}"):
            assert br.conflicts(s, t), (s, r, t)
