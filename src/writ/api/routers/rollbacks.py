"""The rollback routes: request, list, read, approve, deny and report a defect (:mod:`writ.rules.rollbacks`).

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from writ.api.deps import EngineDep, Me
from writ.api.schemas import (
    DefectIn,
    RollbackIn,
)

router = APIRouter()


@router.post("/v1/rollbacks", status_code=201, tags=["rollback"])
async def request_rollback(me: Me, engine: EngineDep, body: RollbackIn) -> dict[str, Any]:
    return await engine.rollbacks.request(me, body.lease_id, body.change_id, body.reason)


@router.get("/v1/rollbacks", tags=["rollback"])
async def list_rollbacks(
    me: Me,
    engine: EngineDep,
    status: Literal["pending", "approved", "denied", "executed", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    return {"rollbacks": engine.authority.visible(me, await engine.rollbacks.list(status, limit))}


@router.get("/v1/rollbacks/{rollback_id}", tags=["rollback"])
async def get_rollback(me: Me, engine: EngineDep, rollback_id: str) -> dict[str, Any]:
    rollback = await engine.rollbacks.get(rollback_id)
    engine.authority.check_observe(me, rollback["resource"], f"rollback {rollback_id}")
    return rollback


@router.post("/v1/rollbacks/{rollback_id}/approve", tags=["rollback"])
async def approve_rollback(me: Me, engine: EngineDep, rollback_id: str) -> dict[str, Any]:
    return await engine.rollbacks.answer(me, rollback_id, True)


@router.post("/v1/rollbacks/{rollback_id}/deny", tags=["rollback"])
async def deny_rollback(me: Me, engine: EngineDep, rollback_id: str) -> dict[str, Any]:
    return await engine.rollbacks.answer(me, rollback_id, False)


@router.post("/v1/rollbacks/{rollback_id}/defect", tags=["rollback"])
async def defect_rollback(
    me: Me, engine: EngineDep, rollback_id: str, body: DefectIn
) -> dict[str, Any]:
    return await engine.rollbacks.defect(me, rollback_id, body.notes)
