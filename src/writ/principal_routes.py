"""The token lifecycle and queue membership routes (PROTOCOL.md v1.1) over
:mod:`writ.principals`: rotate, disable, enable, queues."""

# No ``from __future__ import annotations``: FastAPI must see the real types of the route
# parameters (``Me`` is local to add_routes), not strings it cannot resolve.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from .engine import Engine
from .models import Principal
from .principals import MAX_EXPIRES_S


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RotateIn(_Body):
    expires_in_s: float | None = Field(
        None,
        ge=1,
        le=MAX_EXPIRES_S,
        strict=True,  # a number, not true or "60"
        description="the new token is refused after this many seconds",
    )


class DisableIn(_Body):
    reason: str = Field(examples=["agent key leaked in a CI log"])


class QueuesIn(_Body):
    add: list[str] = Field(default_factory=list, examples=[["svc-ops-princess"]])
    remove: list[str] = Field(default_factory=list)


def add_routes(
    app: FastAPI, engine: Engine, auth: Callable[[Request], Awaitable[Principal]]
) -> None:
    """``POST /v1/principals/{name}/rotate|disable|enable|queues``."""
    Me = Annotated[Principal, Depends(auth)]
    tags: list[str | Any] = ["principals"]

    @app.post("/v1/principals/{name}/rotate", tags=tags)
    async def rotate(me: Me, name: str, body: RotateIn | None = None) -> dict[str, Any]:
        """A new token for NAME (an admin, or NAME itself); the old one is refused at once."""
        return await engine.principals.rotate(me, name, body.expires_in_s if body else None)

    @app.post("/v1/principals/{name}/disable", tags=tags)
    async def disable(me: Me, name: str, body: DisableIn) -> dict[str, Any]:
        """Refuse NAME's token, revoke its held leases, drop its queued requests (admin)."""
        return await engine.principals.disable(me, name, body.reason)

    @app.post("/v1/principals/{name}/enable", tags=tags)
    async def enable(me: Me, name: str, body: RotateIn | None = None) -> dict[str, Any]:
        """Accept NAME again, with a fresh token (admin)."""
        return await engine.principals.enable(me, name, body.expires_in_s if body else None)

    @app.post("/v1/principals/{name}/queues", tags=tags)
    async def queues(me: Me, name: str, body: QueuesIn) -> dict[str, Any]:
        """Add the human NAME to queues and take it off others (admin)."""
        return await engine.principals.set_queues(me, name, body.add, body.remove)
