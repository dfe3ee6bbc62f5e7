"""The policy file (``writ serve --policy writ.toml``): blast radius and per-prefix rules.

::

    rollback_base_url = "http://127.0.0.1:9000"  # relative rollback routes are called here
    rollback_hosts = ["ops.internal"]             # the only hosts a rollback URL may name
    default_override_queue = "svc-ops-princess"   # paged when a lease names no queue

    [blast_radius]                                # groups of resources that conflict as one
    db-tier = ["prod/db", "routing/db-tier", "capacity/db"]

    [[rules]]                                     # per prefix; the most specific prefix wins
    prefix = "prod"
    protect_s = 900
    max_hold_s = 600
    page_after_s = 60
    lock_delay_s = 5
    consent_timeout_s = 120

A lease is held to the strictest settings among the rules of all it holds back
(:meth:`Policy.governing`): a lease on ``prod`` meets the rule of ``prod/db`` too.

``[authority]`` (who may ever be a writer, on what) is described in :mod:`writ.rules.authority`.

A bad file fails with its line and the reason (:class:`PolicyError`), at ``writ serve``
and in ``writ policy check FILE``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from writ.core.errors import Invalid
from writ.core.errors import PolicyError as PolicyError  # lives in core.errors; re-exported
from writ.core.grants import Settings as AuthoritySettings
from writ.core.grants import parse_section as parse_authority
from writ.core.identity import JwtIssuer, parse_identity
from writ.core.resources import BlastRadius, under, validate
from writ.core.routes import parse_host


@dataclass(frozen=True, slots=True)
class Rule:
    """The settings in force for one prefix (defaults are the built-in rule)."""

    prefix: str = ""
    protect_s: float = 900.0
    max_hold_s: float | None = None
    page_after_s: float = 60.0
    lock_delay_s: float = 0.0
    consent_timeout_s: float = 120.0
    # the settings the policy file names for this prefix (the rest are the built-in ones):
    # only those count when a lease is held to the rules of all it holds back (governing)
    named: frozenset[str] = field(default=frozenset(), compare=False)


RULE_KEYS = {f.name for f in fields(Rule)} - {"named"}
# The longest any rule setting may be: a day, the API's own bound on a change's protect_s.
# Unbounded, the times worked out from them (a lock delay's end, a window's end) left what
# a timestamp can hold: inf, nan or 1e20 made change, revoke, acquire and the sweep fail.
MAX_RULE_S = 86_400
_LONG_NUMBER = re.compile(r"[0-9][0-9_]{4300,}")
TOP_KEYS = {
    "rollback_base_url",
    "default_override_queue",
    "blast_radius",
    "rules",
    "authority",
    "identity",
}
TOP_KEYS |= {"webhook_secret", "pagerduty_url"}  # outbound calls (docs/operations.md)
TOP_KEYS |= {"rollback_hosts"}


@dataclass(slots=True)
class Policy:
    rollback_base_url: str | None = None
    # the hosts an agent's absolute rollback route may call, parsed (routes.parse_host);
    # None: any host (v1), [] none (relative routes only)
    rollback_hosts: tuple[tuple[str, int | None], ...] | None = None
    default_override_queue: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # signs outbound calls
    pagerduty_url: str | None = None  # the Events API v2 endpoint (tests, proxies)
    blast: BlastRadius = field(default_factory=BlastRadius)
    rules: list[Rule] = field(default_factory=list)  # most specific prefix first
    source: str | None = None
    authority: AuthoritySettings = field(default_factory=AuthoritySettings)  # see authority.py
    identity: list[JwtIssuer] = field(default_factory=list)  # [[identity.jwt]] (identity.py)
    # governing's answers, for the blast radius they were worked out with (a reload makes a
    # new Policy, so a new cache)
    _governs: tuple[BlastRadius | None, dict[str, Rule]] = field(
        default_factory=lambda: (None, {}), init=False, repr=False, compare=False
    )

    def rule_for(self, resource: str) -> Rule:
        """The rule of the most specific prefix covering ``resource`` (or the defaults)."""
        for rule in self.rules:
            if under(resource, rule.prefix):
                return rule
        return Rule()

    def governing(self, resource: str) -> Rule:
        """The settings a lease on ``resource`` is held to: the strictest of the rules of all
        it holds back — its own (:meth:`rule_for`), that of every other member of its blast
        radius (``expand``), and those of prefixes below any of them. A lease on ``prod``, or
        on ``capacity/db`` grouped with ``prod/db``, writes ``prod/db`` too, and is held to
        ``prod/db``'s rule. Strictest: the longest lock delay and protect window, the shortest
        max hold, page delay and consent timeout — of what each of the others names: a rule
        for ``prod/db/replica`` that sets only ``lock_delay_s`` leaves a lease on ``prod``
        its own protection, page delay and consent timeout. Cached per resource (the
        acquire path)."""
        blast, cache = self._governs
        if blast is not self.blast:
            cache = {}
            self._governs = (self.blast, cache)
        hit = cache.get(resource)
        if hit is not None:
            return hit
        paths = self.blast.expand(resource)
        own = self.rule_for(resource)
        below = tuple(p + "/" for p in paths)  # the rules of prefixes under any of them
        found = {
            own,
            *map(self.rule_for, paths),
            *(r for r in self.rules if r.prefix.startswith(below)),
        }
        rule = own
        if len(found) > 1:

            def values(key: str) -> list[Any]:  # own's, and what the others name
                return [getattr(r, key) for r in found if r is own or key in r.named]

            holds = [v for v in values("max_hold_s") if v]  # 0 and None: never stuck
            rule = replace(
                own,
                protect_s=max(values("protect_s")),
                max_hold_s=min(holds, default=own.max_hold_s),
                page_after_s=min(values("page_after_s")),
                lock_delay_s=max(values("lock_delay_s")),
                consent_timeout_s=min(values("consent_timeout_s")),
            )
        if len(cache) >= 100_000:  # bounded; a policy's hot resources come back at once
            cache.clear()
        cache[resource] = rule
        return rule

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollback_base_url": self.rollback_base_url,
            "rollback_hosts": None
            if self.rollback_hosts is None
            else [_host_text(h, p) for h, p in self.rollback_hosts],
            "default_override_queue": self.default_override_queue,
            "webhook_secret": "(set)" if self.webhook_secret else None,  # never the secret
            "pagerduty_url": self.pagerduty_url,
            "blast_radius": {
                "+".join(sorted(names)): list(members) for names, members in self.blast.groups
            },
            "rules": [{k: getattr(r, k) for k in sorted(RULE_KEYS)} for r in self.rules],
            "source": self.source,
            "authority": self.authority.to_dict(),
            "identity": {"jwt": [i.to_dict() for i in self.identity]},
        }


def _line_of(text: str, needle: str, start_line: int = 1) -> int | None:
    pattern = re.compile(rf"^\s*\"?{re.escape(needle)}\"?\s*=", re.M)
    for i, line in enumerate(text.splitlines(), start=1):
        if i >= start_line and pattern.match(line):
            return i
    return None


def _rule_lines(text: str) -> list[int]:
    return [
        i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith("[[rules]]")
    ]


def parse(text: str, path: str = "<policy>") -> Policy:
    """Parse and check a policy text; raise :class:`PolicyError` with line and reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else (len(text.rstrip().splitlines()) or 1)
        raise PolicyError(path, f"not valid TOML: {exc}", line) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise PolicyError(path, "not a policy: values nested too deeply") from None
    except ValueError:  # an integer past Python's limit of digits to read (int_max_str_digits)
        long = _LONG_NUMBER.search(text)
        at = text.count("\n", 0, long.start()) + 1 if long else None
        raise PolicyError(path, "not a policy: a number with thousands of digits", at) from None
    for key in data:
        if key not in TOP_KEYS:
            raise PolicyError(
                path,
                f"unknown setting {key!r}; known: {', '.join(sorted(TOP_KEYS))}",
                _line_of(text, key) or _line_of(text, key.strip("[]")),
            )
    pol = Policy(source=path)
    for key in ("rollback_base_url", "default_override_queue", "webhook_secret", "pagerduty_url"):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise PolicyError(path, f"{key} must be a non-empty string", _line_of(text, key))
        setattr(pol, key, value)
    if pol.rollback_base_url and not re.match(r"^https?://[^/\s]+", pol.rollback_base_url):
        raise PolicyError(
            path,
            "rollback_base_url must be an http(s):// URL like http://127.0.0.1:9000",
            _line_of(text, "rollback_base_url"),
        )
    if pol.pagerduty_url and not re.match(r"^https?://[^/\s]+", pol.pagerduty_url):
        raise PolicyError(
            path,
            "pagerduty_url must be an http(s):// URL like https://events.pagerduty.com/v2/enqueue",
            _line_of(text, "pagerduty_url"),
        )
    pol.rollback_hosts = _rollback_hosts(data, text, path)
    groups = data.get("blast_radius", {})
    if not isinstance(groups, dict):
        raise PolicyError(path, "[blast_radius] must be a table of name = [resources]", None)
    for name, members in groups.items():
        gline = _line_of(text, name)
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) for m in members)
        ):
            raise PolicyError(
                path, f"blast_radius.{name} must be a non-empty list of resource paths", gline
            )
        for m in members:
            try:
                validate(m, f"blast_radius.{name}")
            except Invalid as exc:
                raise PolicyError(path, exc.message, gline) from None
    pol.blast = BlastRadius(groups)
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise PolicyError(
            path, "rules must be written as [[rules]] tables", _line_of(text, "rules")
        )
    starts = _rule_lines(text)
    seen: set[str] = set()
    for i, raw in enumerate(rules):
        start = starts[i] if i < len(starts) else None
        if not isinstance(raw, dict):
            raise PolicyError(path, "each [[rules]] entry must be a table", start)
        unknown = set(raw) - RULE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise PolicyError(
                path,
                f"unknown rule setting {key!r}; known: {', '.join(sorted(RULE_KEYS))}",
                _line_of(text, key, start or 1) or start,
            )
        prefix = raw.get("prefix")
        if prefix is None:
            raise PolicyError(
                path, 'a [[rules]] entry needs prefix = "..." ("" for everything)', start
            )
        if not isinstance(prefix, str):
            raise PolicyError(path, "prefix must be a string", _line_of(text, "prefix", start or 1))
        if prefix:
            try:
                validate(prefix, "prefix")
            except Invalid as exc:
                raise PolicyError(path, exc.message, _line_of(text, "prefix", start or 1)) from None
        if prefix in seen:
            raise PolicyError(path, f"two rules for prefix {prefix!r}", start)
        seen.add(prefix)
        values: dict[str, Any] = {"prefix": prefix}
        for key, v in raw.items():  # in the file's order: the first bad one is reported
            if key == "prefix":
                continue
            # a comparison refuses nan and inf too, and an integer past a float's range
            # (whose float() would raise) before any conversion
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_RULE_S:
                raise PolicyError(
                    path,
                    f"{key} must be a number of seconds from 0 to {MAX_RULE_S} (a day), "
                    f"not {_shown(v)}",
                    _line_of(text, key, start or 1) or start,
                )
            values[key] = float(v) + 0.0  # (-0.0 reads as 0)
        pol.rules.append(replace(Rule(), **values, named=frozenset(values) - {"prefix"}))
    pol.authority = parse_authority(data.get("authority"), text, path)
    pol.rules.sort(key=lambda r: (-len(r.prefix.split("/")) if r.prefix else 1, r.prefix))
    pol.identity = parse_identity(data.get("identity"), text, path)
    return pol


def _shown(value: Any) -> str:
    """A refused value as the message quotes it: a long one cut short."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _host_text(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _rollback_hosts(
    data: dict[str, Any], text: str, path: str
) -> tuple[tuple[str, int | None], ...] | None:
    if "rollback_hosts" not in data:
        return None
    value, line = data["rollback_hosts"], _line_of(text, "rollback_hosts")
    if not isinstance(value, list) or len(value) > 1000:
        raise PolicyError(
            path, 'rollback_hosts must be a list of host names like ["ops.internal"]', line
        )
    hosts = []
    for entry in value:
        try:
            hosts.append(parse_host(entry))
        except ValueError as exc:
            raise PolicyError(path, f"rollback_hosts: {exc}", line) from None
    return tuple(hosts)


def load(path: str | Path | None) -> Policy:
    """Read a policy file (``None`` gives the defaults)."""
    if path is None:
        return Policy()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise PolicyError(str(path), f"not UTF-8 text (byte {exc.start})", line) from None
    return parse(text, str(path))
