"""The principal routes (PROTOCOL.md): add, the token lifecycle and queue membership (v1.1,
over :mod:`writ.engine.principals`: rotate, disable, enable, queues), list, whoami."""

# No ``from __future__ import annotations``: FastAPI must see the real types of the route
# parameters, not strings it cannot resolve.
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from writ.api.deps import EngineDep, Me
from writ.api.schemas import PrincipalIn
from writ.engine.principals import MAX_EXPIRES_S


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


router = APIRouter()


@router.post("/v1/principals", status_code=201, tags=["principals"])
async def add_principal(me: Me, engine: EngineDep, body: PrincipalIn) -> dict[str, Any]:
    p, token = await engine.add_principal(
        me,
        body.name,
        body.kind,
        body.vendor,
        body.wake,
        body.admin,
        queues=body.queues,
        expires_in_s=body.expires_in_s,
    )
    return {**p.to_dict(), "token": token}


@router.post("/v1/principals/{name}/rotate", tags=["principals"])
async def rotate(
    me: Me, engine: EngineDep, name: str, body: RotateIn | None = None
) -> dict[str, Any]:
    """A new token for NAME (an admin, or NAME itself); the old one is refused at once."""
    return await engine.principals.rotate(me, name, body.expires_in_s if body else None)


@router.post("/v1/principals/{name}/disable", tags=["principals"])
async def disable(me: Me, engine: EngineDep, name: str, body: DisableIn) -> dict[str, Any]:
    """Refuse NAME's token, revoke its held leases, drop its queued requests (admin)."""
    return await engine.principals.disable(me, name, body.reason)


@router.post("/v1/principals/{name}/enable", tags=["principals"])
async def enable(
    me: Me, engine: EngineDep, name: str, body: RotateIn | None = None
) -> dict[str, Any]:
    """Accept NAME again, with a fresh token (admin)."""
    return await engine.principals.enable(me, name, body.expires_in_s if body else None)


@router.post("/v1/principals/{name}/queues", tags=["principals"])
async def queues(me: Me, engine: EngineDep, name: str, body: QueuesIn) -> dict[str, Any]:
    """Add the human NAME to queues and take it off others (admin)."""
    return await engine.principals.set_queues(me, name, body.add, body.remove)


@router.get("/v1/principals", tags=["principals"])
async def list_principals(me: Me, engine: EngineDep) -> dict[str, Any]:
    return {"principals": engine.authority.wake_urls(me, await engine.list_principals())}


@router.get("/v1/whoami", tags=["principals"])
async def whoami(me: Me, engine: EngineDep) -> dict[str, Any]:
    return me.to_dict()
