"""The HTTP routes of authority (PROTOCOL.md v1.1): ``GET /v1/authority``,
``POST /v1/policy/reload`` and ``POST /v1/leases/{id}/wake``, over :mod:`writ.rules.authority`.

No ``from __future__ import annotations`` here: FastAPI reads these signatures at runtime,
and the dependencies they name.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from writ.api.deps import EngineDep, Me


class WakeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(examples=["p99 over the alert for 10 minutes; are you still on it?"])


router = APIRouter()


@router.get("/v1/authority", tags=["authority"])
async def authority(
    me: Me,
    engine: EngineDep,
    principal: Annotated[str, Query(min_length=1, max_length=64)],
    resource: Annotated[str, Query(min_length=1, max_length=256)],
) -> dict[str, Any]:
    """What PRINCIPAL may do on RESOURCE, and which line of which file says so (agents
    and portals may ask only about themselves)."""
    return await engine.authority.explain(me, principal, resource)


@router.post("/v1/policy/reload", tags=["meta"])
async def reload_policy(me: Me, engine: EngineDep) -> dict[str, Any]:
    """Read the policy file again (admin): new grants apply to new requests; held leases
    keep their term."""
    return await engine.authority.reload(me)


@router.post("/v1/leases/{lease_id}/wake", status_code=202, tags=["leases"])
async def wake(me: Me, engine: EngineDep, lease_id: str, body: WakeIn) -> dict[str, Any]:
    """Ask writ to wake the holder of LEASE_ID (anyone who may observe its resource);
    at most one call per 30 s per lease, later ones answer with ``already_woken_at``."""
    return await engine.authority.wake(me, lease_id, body.reason)
