"""Checks `writ gate` and `writ mcp` run before they listen: is writ there, and is the token right?

A proxy that starts with a mistyped token, a human's token or no server behind it would report
"listening" and then refuse (or, worse, act with a human's authority) on every request. So each
asks writ who its token belongs to (``GET /v1/whoami``) first and exits non-zero with the reason:

- the token is unknown to writ (401): exit, naming the server asked;
- the token is a human's, a queue's or an admin's: exit, unless ``--allow-human-token``
  (a model or a proxy must not hold human authority by accident);
- writ cannot be reached: exit, unless ``--allow-server-down``, which starts anyway; every
  request is then refused as writ being unreachable (503 at the gate, a tool error naming it in
  MCP) and writ is asked again on each one, so both recover by themselves once it answers.
"""

from __future__ import annotations

from typing import Any

from writ.client import Client
from writ.core.errors import Invalid, Unauthenticated, Unavailable, WritError

HUMAN_KINDS = ("human", "queue")

__all__ = ["PreflightFailed", "check_token"]


class PreflightFailed(Exception):
    """The proxy must not start; the message says why and what to do."""


def check_token(
    url: str,
    token: str,
    what: str,
    *,
    allow_human: bool = False,
    allow_down: bool = False,
    timeout: float = 5.0,
) -> str:
    """Ask writ at ``url`` whose ``token`` this is; return a line to print on stderr, or raise
    :class:`PreflightFailed`."""
    try:
        with Client(url, token, timeout=timeout) as client:
            me: dict[str, Any] = client.whoami()
    except Unauthenticated as exc:
        raise PreflightFailed(
            f"{what}: writ at {url} refused this token ({exc.message}). Start it with the "
            "token `writ principal add NAME --kind ...` printed for its own principal."
        ) from exc
    except Unavailable as exc:
        if allow_down:
            return (
                f"{what}: warning: writ at {url} cannot be reached ({exc.message}); starting "
                "anyway (--allow-server-down): requests are refused until writ answers, and "
                "the token is checked then"
            )
        raise PreflightFailed(
            f"{what}: writ at {url} cannot be reached ({exc.message}). Start `writ serve` "
            "(or fix --url / WRIT_URL), or pass --allow-server-down to start anyway."
        ) from exc
    except Invalid as exc:  # refused before asking: the URL (never quoted) or the token
        raise PreflightFailed(f"{what}: {exc.message}") from exc
    except WritError as exc:
        raise PreflightFailed(f"{what}: writ at {url} answered {exc.code}: {exc.message}") from exc
    name, kind = me.get("name"), me.get("kind")
    if (kind in HUMAN_KINDS or me.get("admin")) and not allow_human:
        who = "an admin" if me.get("admin") else f"a {kind}"
        raise PreflightFailed(
            f"{what}: the token is {name}'s, {who}: this process must not hold human "
            "authority (approving rollbacks, answering consents, revoking). Register its own "
            "principal (`writ principal add NAME --kind agent` or `--kind portal`) and use that "
            "token, or pass --allow-human-token deliberately."
        )
    return f"{what}: acting as {name} ({kind}) at {url}"
