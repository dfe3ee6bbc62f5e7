"""The freeze routes: freeze a prefix, lift a freeze, list them (:mod:`writ.rules.freezes`).

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Any

from fastapi import APIRouter

from writ.api.deps import EngineDep, Me
from writ.api.schemas import (
    FreezeIn,
)

router = APIRouter()


@router.post("/v1/freezes", status_code=201, tags=["freeze"])
async def freeze(me: Me, engine: EngineDep, body: FreezeIn) -> dict[str, Any]:
    return await engine.freezes.freeze(me, body.prefix, body.reason, body.until, body.allow)


@router.post("/v1/freezes/{freeze_id}/lift", tags=["freeze"])
async def lift(me: Me, engine: EngineDep, freeze_id: str) -> dict[str, Any]:
    return await engine.freezes.lift(me, freeze_id)


@router.get("/v1/freezes", tags=["freeze"])
async def list_freezes(me: Me, engine: EngineDep, all: bool = False) -> dict[str, Any]:
    return {"freezes": engine.authority.visible_freezes(me, await engine.freezes.list(all))}
