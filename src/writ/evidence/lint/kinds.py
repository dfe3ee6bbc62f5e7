"""Principal kinds: which names are agents, portals, queues or people, guessed or from a registry file."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from writ.core.errors import Invalid
from writ.core.models import KINDS

# --------------------------------------------------------------------------- principal kinds

AGENT_WORDS = frozenset(
    """agent agents bot robot script cron cronjob daemon runner job worker
    automation autopilot llm ai gpt copilot optimizer controller reconciler autoscaler scheduler
    pipeline ci terraform ansible jenkins argocd lambda""".split()
)
PORTAL_WORDS = frozenset(
    """portal button dashboard console ui gui webui widget vendor saas
    click integration marketplace""".split()
)
QUEUE_WORDS = frozenset(
    """svc oncall queue team sre rotation rota pager pagerduty escalation noc
    support duty triage squad""".split()
)
GENERIC_WORDS = frozenset(
    """the a platform system service default admin root unknown none
    nobody null tbd todo na everyone anyone all user users someone owner it""".split()
)
_SPLIT = re.compile(r"[\s._\-/@:]+")


@lru_cache(maxsize=8192)
def guess_kind(name: str) -> str:
    """Guess a principal's kind from its name: agent, portal, queue, human or unknown."""
    low = name.strip().lower().replace("on-call", "oncall")
    words = [w for w in _SPLIT.split(low) if w]
    if not words:
        return "unknown"
    if any(w in AGENT_WORDS or w.startswith("auto") or w.endswith(("bot", "agent")) for w in words):
        return "agent"
    if any(w in PORTAL_WORDS for w in words):
        return "portal"
    if any(w in QUEUE_WORDS for w in words) or words[-1].endswith("ops"):
        return "queue"
    if (
        len(words) <= 3
        and all(w.isalpha() and w.isascii() and w not in GENERIC_WORDS for w in words)
        and (len(words) > 1 or len(words[0]) > 1)
    ):
        return "human"
    return "unknown"


def parse_principals(data: Any) -> dict[str, str]:
    """name -> kind from ``{name: kind}``, ``[{"name", "kind"}]`` or ``{"principals": ...}``."""
    if (
        isinstance(data, Mapping)
        and "principals" in data
        and not isinstance(data["principals"], str)
    ):
        return parse_principals(data["principals"])
    if isinstance(data, list):
        pairs = []
        for item in data:
            if not isinstance(item, Mapping) or "name" not in item or "kind" not in item:
                raise Invalid("a principals list holds objects with a name and a kind")
            pairs.append((item["name"], item["kind"]))
    elif isinstance(data, Mapping):
        pairs = list(data.items())
    else:
        raise Invalid('principals must map name -> kind, like {"svc-ops-princess": "queue"}')
    out: dict[str, str] = {}
    for name, kind in pairs:
        if not isinstance(name, str) or not isinstance(kind, str) or kind not in KINDS:
            raise Invalid(f"principal {name!r} has kind {kind!r}; kinds are {', '.join(KINDS)}")
        out[name] = kind
    return out


#: The largest principals file read: a registry of 100,000 principals is a few MiB; a larger
#: file (or ``/dev/zero``) is refused unread past this, never read whole into memory.
MAX_PRINCIPALS_FILE = 16 << 20


def load_principals(path: str | Path) -> dict[str, str]:
    """Read a principals file, JSON or TOML (by extension; otherwise JSON, then TOML), of at
    most :data:`MAX_PRINCIPALS_FILE` bytes."""
    p = Path(path)
    with p.open("rb") as f:  # an OSError is the caller's "cannot read"
        data = f.read(MAX_PRINCIPALS_FILE + 1)
    if len(data) > MAX_PRINCIPALS_FILE:
        raise Invalid(
            f"{p.name} is larger than {MAX_PRINCIPALS_FILE >> 20} MiB: not a principals map"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(
            f"{p.name} is not UTF-8 text ({exc.reason} at byte {exc.start + 1})"
        ) from None
    parsers = (
        [tomllib.loads]
        if p.suffix.lower() == ".toml"
        else [json.loads]
        if p.suffix.lower() == ".json"
        else [json.loads, tomllib.loads]
    )
    for i, parse in enumerate(parsers, 1):
        try:
            return parse_principals(parse(text))
        except RecursionError:  # the parser's stack (or the "principals" key's) ran out
            raise Invalid(f"{p.name} is nested too deeply to be a principals map") from None
        except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            if i == len(parsers):
                raise Invalid(f"{p.name} is not a JSON or TOML principals map: {exc}") from None
    raise AssertionError("unreachable")
