"""Argument types shared by the MCP tools: resources, ids, numbers that are numbers, the
rollback plan, and the read/write tool annotations."""

from __future__ import annotations

from typing import Annotated, Any

from mcp_types import ToolAnnotations
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

Resource = Annotated[
    str,
    Field(
        description="resource path: segments of a-z 0-9 . _ - joined by '/', e.g. 'prod/db'",
        examples=["prod/db"],
        min_length=1,
        max_length=256,
    ),
]


def _number(value: Any) -> Any:
    """A JSON number, as the HTTP API takes one: a boolean is refused (``ttl_s: true`` is
    never a 1-second lease), and so is a string (``"30"``), which pydantic would convert."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    kind = "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"
    raise ValueError(f"a number is required, not {kind}")


#: After the ``Field`` in ``Annotated[...]``, never before it: placed first, it hid the type
#: from the constraints, so the schema published "ge"/"le" (no client reads them) instead of
#: "minimum"/"maximum", and a ``null`` for an optional number failed in the constraint with
#: no message ("Error executing tool").
NUMBER = BeforeValidator(_number)

# An id as writ hands them out (``ls_3kq9…``: letters, digits, ``_`` and ``-``), checked
# before it goes into a URL path: never a ``/``, ``..``, ``?``, ``#`` or ``%``.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
LeaseId = Annotated[
    str,
    Field(
        description="the lease_id returned by acquire_write_authority",
        min_length=1,
        pattern=ID_PATTERN,
    ),
]


class RollbackPlan(BaseModel):
    """How to undo what you are about to do, and which human queue holds the key."""

    model_config = ConfigDict(extra="forbid")

    allowed: bool = Field(
        description="true if this change can be rolled back by calling `path`; then path, "
        "key_holder and override_queue are required"
    )
    path: str | None = Field(
        None,
        description="the literal route that rolls it back: a path beginning with '/' or an "
        "http(s) URL (not a dashboard or button name)",
        examples=["/internal/db/rollback?txn=8841"],
    )
    key_holder: str | None = Field(
        None,
        description="the human on-call queue that may approve the rollback",
        examples=["svc-ops-princess"],
    )
    override_queue: str | None = Field(
        None,
        description="the human queue paged if this lease gets stuck",
        examples=["svc-ops-princess"],
    )
    denominator: str | None = Field(
        None, description="what the rollback is measured against", examples=["incident_minutes"]
    )
