"""Resource paths and blast radius: which resources conflict.

A resource is a path of segments ``a-z 0-9 . _ -`` joined by ``/`` (at most 16 segments,
256 characters); a segment is never ``.`` or ``..``. Two resources conflict when one is the other or an ancestor of it, or when
the policy puts them in the same blast-radius group.

Groups that touch each other (a member of one is related to a member of the other) are
merged when the policy is loaded. With merged groups the conflict test becomes a lookup:
``R`` conflicts with ``S`` exactly when ``S`` is related (equal, ancestor or descendant) to
some path of ``expand(R)``, where ``expand(R)`` is ``R`` plus every member of each group
that has a member related to ``R``. Stores answer "held leases related to these paths"
with index range scans, so the test costs the same with 10 or 100,000 leases held.

Write authority is narrower than exclusion (:meth:`BlastRadius.covering`): a lease on a
member holds the other members and what lies below them, never what lies above them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence

from writ.core.errors import Invalid

MAX_SEGMENTS = 16
MAX_LENGTH = 256
_SEGMENT = re.compile(r"[a-z0-9._-]+")


def validate(resource: object, field: str = "resource") -> str:
    """Return ``resource`` if it is a valid path, else raise :class:`Invalid` saying why."""
    if not isinstance(resource, str):
        raise Invalid(f"{field} must be a string like 'prod/db'", field=field)
    if not resource:
        raise Invalid(f"{field} is empty: give a path like 'prod/db'", field=field)
    if len(resource) > MAX_LENGTH:
        raise Invalid(f"{field} is {len(resource)} characters; at most {MAX_LENGTH}", field=field)
    segments = resource.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise Invalid(f"{field} has {len(segments)} segments; at most {MAX_SEGMENTS}", field=field)
    for seg in segments:
        if seg in (".", ".."):
            raise Invalid(
                f"{field} {resource!r}: a segment may not be {seg!r} (paths are taken as "
                "written, never resolved, so '.' and '..' would name one resource twice)",
                field=field,
            )
        if not _SEGMENT.fullmatch(seg):
            shown = seg if seg else "(empty)"
            raise Invalid(
                f"{field} {resource!r}: segment {shown!r} must be 1+ of a-z 0-9 . _ - "
                "(lowercase, joined by '/', no leading or trailing '/')",
                field=field,
            )
    return resource


def ancestors(resource: str) -> list[str]:
    """Proper ancestors, nearest last: ``a/b/c`` → ``['a', 'a/b']``."""
    parts = resource.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def related(a: str, b: str) -> bool:
    """True when ``a`` is ``b``, an ancestor of it, or a descendant of it."""
    if a == b:
        return True
    if len(a) < len(b):
        return b.startswith(a) and b[len(a)] == "/"
    return a.startswith(b) and a[len(b)] == "/"


def under(resource: str, prefix: str) -> bool:
    """True when ``resource`` is ``prefix`` or below it (an empty prefix matches all)."""
    return not prefix or resource == prefix or resource.startswith(prefix + "/")


class BlastRadius:
    """The policy's blast-radius groups, merged so that conflicts are a simple lookup."""

    def __init__(self, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        merged: list[tuple[set[str], set[str]]] = []  # (group names, members)
        for name, members in (groups or {}).items():
            names, paths = {name}, {validate(m, f"blast_radius.{name}") for m in members}
            keep = []
            for other_names, other_paths in merged:
                if any(related(p, q) for p in paths for q in other_paths):
                    names |= other_names
                    paths |= other_paths
                else:
                    keep.append((other_names, other_paths))
            merged = [*keep, (names, paths)]
        self._groups: list[tuple[frozenset[str], tuple[str, ...]]] = [
            (frozenset(n), tuple(sorted(p))) for n, p in merged
        ]
        self._cache: dict[str, tuple[str, ...]] = {}
        # each member -> every member of its (merged) group: covering's lookup
        self._group_of: dict[str, tuple[str, ...]] = {
            m: members for _names, members in self._groups for m in members
        }

    @property
    def groups(self) -> list[tuple[frozenset[str], tuple[str, ...]]]:
        return list(self._groups)

    def digest(self) -> str:
        """What conflicts with what, as a hex digest: the merged groups' members (their names
        do not matter). Servers sharing a store must agree on it."""
        members = sorted(m for _names, m in self._groups)
        return hashlib.sha256(json.dumps(members).encode()).hexdigest()

    def expand(self, resource: str) -> tuple[str, ...]:
        """``resource`` plus every member of each group related to it (sorted, unique)."""
        hit = self._cache.get(resource)
        if hit is not None:
            return hit
        out = {resource}
        for _names, members in self._groups:
            if any(related(resource, m) for m in members):
                out.update(members)
        result = tuple(sorted(out))
        if len(self._cache) < 100_000:
            self._cache[resource] = result
        return result

    def covering(self, resource: str) -> set[str]:
        """Where a lease holds write authority over ``resource``: on it or an ancestor, and,
        when ``resource`` is a member of a group or lies below one, on any member of that
        group or an ancestor of one. A group with a member only *below* ``resource`` does
        not count: a lease on another of its members keeps ``resource`` from everyone else,
        but holds none of it (``capacity/db`` holds ``prod/db``, not all of ``prod``)."""
        above = ancestors(resource)
        out = {resource, *above}
        for a in (resource, *above):  # the members at or above resource: their groups
            for m in self._group_of.get(a, ()):
                out.add(m)
                out.update(ancestors(m))
        return out

    def group_names(self, resource: str) -> list[str]:
        """Names of the groups whose blast radius ``resource`` falls in."""
        return sorted(
            n
            for names, members in self._groups
            if any(related(resource, m) for m in members)
            for n in names
        )

    def conflicts(self, a: str, b: str) -> bool:
        """True when write authority on ``a`` excludes ``b``."""
        return any(related(p, b) for p in self.expand(a))


def related_clauses(paths: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """For stores: exact matches and descendant ranges covering "related to any of paths".

    Returns ``(exact, ranges)``: a resource is related to some path when it is in ``exact``
    (the paths and all their ancestors) or in a half-open range ``[lo, hi)`` of ``ranges``
    (the descendants of a path: ``p + '/'`` up to ``p + '0'``, since ``'0'`` follows ``'/'``).
    """
    exact: set[str] = set()
    ranges: list[tuple[str, str]] = []
    for p in paths:
        exact.add(p)
        exact.update(ancestors(p))
        ranges.append((p + "/", p + "0"))
    return sorted(exact), ranges


def outside_known(resource: str, known: Iterable[str]) -> str | None:
    """A warning when ``resource`` lies outside every prefix in ``known`` (the prefixes a policy
    names: its rules, its blast-radius groups, its authority grants) — likely a typo such as
    ``prdo/db`` — or None when it is under, or above, one of them, or nothing is named."""
    names = sorted({p for p in known if p})
    if not names or any(related(resource, p) for p in names):
        return None
    import difflib

    near = difflib.get_close_matches(resource, names, n=1, cutoff=0.6)
    return (
        f"{resource} is outside every prefix the policy names ({', '.join(names[:8])}"
        + (", ..." if len(names) > 8 else "")
        + ")"
        + (f"; did you mean {near[0]}?" if near else "; a typo?")
        + " Granted all the same."
    )
