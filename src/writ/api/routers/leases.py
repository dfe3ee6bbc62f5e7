"""The lease routes (PROTOCOL.md): acquire, renew, release, revoke, and the reads of leases, resources, who held what and fencing tokens.

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request

from writ.api.deps import EngineDep, Me
from writ.api.middleware import waiting
from writ.api.schemas import (
    AcquireIn,
    RenewIn,
    RevokeIn,
)
from writ.api.streaming import paged_response
from writ.core.clock import parse_time

router = APIRouter()


@router.post("/v1/leases", status_code=201, tags=["leases"])
async def acquire(me: Me, engine: EngineDep, body: AcquireIn, request: Request) -> dict[str, Any]:
    request.scope["writ.lease"] = {"resource": body.resource}

    def work() -> Awaitable[dict[str, Any]]:
        return engine.acquire(
            me,
            resource=body.resource,
            intent=body.intent,
            ttl_s=body.ttl_s,
            wait_s=body.wait_s,
            touches=body.touches,
            consent_id=body.consent_id,
            rollback=body.rollback.model_dump() if body.rollback else None,
        )

    # one that may wait holds its connection meanwhile: counted against its principal
    given_back = engine.give_back  # a grant its caller was gone for, when it was ready
    lease = await (waiting(request, me.name, work, given_back) if body.wait_s > 0 else work())
    request.scope["writ.lease"] = lease
    return lease


@router.post("/v1/leases/{lease_id}/renew", tags=["leases"])
async def renew(
    me: Me, engine: EngineDep, lease_id: str, body: Annotated[RenewIn | None, Body()] = None
) -> dict[str, Any]:
    return await engine.renew(me, lease_id, body.ttl_s if body else None)


@router.post("/v1/leases/{lease_id}/release", tags=["leases"])
async def release(me: Me, engine: EngineDep, lease_id: str) -> dict[str, Any]:
    return await engine.release(me, lease_id)


@router.post("/v1/leases/{lease_id}/revoke", tags=["leases"])
async def revoke(me: Me, engine: EngineDep, lease_id: str, body: RevokeIn) -> dict[str, Any]:
    return await engine.revoke(
        me, lease_id, body.runbook, body.paged, body.reason, body.waive_lock_delay
    )


@router.get("/v1/leases/{lease_id}", tags=["leases"])
async def get_lease(me: Me, engine: EngineDep, lease_id: str) -> dict[str, Any]:
    lease = await engine.get_lease(lease_id)
    engine.authority.check_observe(me, lease["resource"], f"lease {lease_id}")
    return lease


@router.get("/v1/leases", tags=["leases"], response_model=dict[str, Any])
async def list_leases(
    me: Me,
    engine: EngineDep,
    resource: str | None = None,
    state: Literal["held", "released", "expired", "revoked"] | None = None,
    holder: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> Any:
    return await paged_response(
        engine.bulk,
        "leases",
        limit,
        lambda n, before, whole: engine.lease_page(resource, state, n, holder, before, whole),
        lambda page: engine.authority.visible(me, page),
    )


@router.get("/v1/status", tags=["leases"], response_model=dict[str, Any])
async def status(
    me: Me,
    engine: EngineDep,
    resource: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> Any:
    return await paged_response(
        engine.bulk,
        "leases",
        limit,
        lambda n, before, whole: engine.status_page(resource, n, before, whole),
        lambda page: engine.authority.visible(me, page),
    )


@router.get("/v1/resources/{resource:path}", tags=["leases"])
async def resource_status(me: Me, engine: EngineDep, resource: str) -> dict[str, Any]:
    out = await engine.resource_status(resource)
    engine.authority.check_observe(me, resource)
    for key in ("conflicting", "queue", "protected_changes"):  # its blast radius
        out[key] = engine.authority.visible(me, out[key])
    out["freezes"] = engine.authority.visible_freezes(me, out["freezes"])
    if out["lease"] is not None and not engine.authority.observable(me, out["lease"]["resource"]):
        out["lease"] = None  # a neighbour's lease, shown when the resource itself is free
    return out


@router.get("/v1/who", tags=["leases"])
async def who(me: Me, engine: EngineDep, resource: str, at: str | None = None) -> dict[str, Any]:
    out = await engine.who(resource, parse_time(at) if at else None)
    engine.authority.check_observe(me, resource)
    return engine.authority.unseen_holder(me, out)


@router.get("/v1/fence", tags=["leases"])
async def fence(me: Me, engine: EngineDep, resource: str, token: int) -> dict[str, Any]:
    out = await engine.fence(resource, token, me)
    engine.authority.check_observe(me, resource)
    return out
