"""``POST /v1/gate/check``: the decision `writ gate` asks for on each mutating request.

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Any

from fastapi import APIRouter

from writ.api.deps import EngineDep, Me
from writ.api.schemas import (
    GateCheckIn,
)

router = APIRouter()


@router.post("/v1/gate/check", tags=["gate"])
async def gate_check(me: Me, engine: EngineDep, body: GateCheckIn) -> dict[str, Any]:
    """For `writ gate`: decide one mutating request and record it (gate.passed/refused)."""
    return await engine.gate_check(
        me,
        body.caller_token,
        body.lease_id,
        body.fencing_token,
        body.resource,
        body.method,
        body.path,
        body.attribute,
    )
