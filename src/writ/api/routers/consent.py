"""The revert-protection routes: changes recorded under a lease, and the consent to undo them (:mod:`writ.rules.consent`).

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from writ.api.deps import EngineDep, Me
from writ.api.middleware import waiting
from writ.api.schemas import (
    ChangeIn,
    ConsentIn,
)
from writ.engine.hooks import MAX_WAIT_S

router = APIRouter()


@router.post("/v1/leases/{lease_id}/changes", status_code=201, tags=["consent"])
async def record_change(me: Me, engine: EngineDep, lease_id: str, body: ChangeIn) -> dict[str, Any]:
    return await engine.consents.record_change(
        me,
        lease_id,
        body.attribute,
        body.summary,
        body.before,
        body.after,
        body.protect_s,
        body.fencing_token,
    )


@router.get("/v1/changes/{change_id}", tags=["consent"])
async def get_change(me: Me, engine: EngineDep, change_id: str) -> dict[str, Any]:
    change = await engine.consents.get_change(change_id)
    engine.authority.check_observe(me, change["resource"], f"change {change_id}")
    return change


@router.post("/v1/consents", status_code=201, tags=["consent"])
async def ask_consent(me: Me, engine: EngineDep, body: ConsentIn) -> dict[str, Any]:
    return await engine.consents.ask(me, body.change_id, body.reason)


@router.post("/v1/consents/{consent_id}/grant", tags=["consent"])
async def grant_consent(me: Me, engine: EngineDep, consent_id: str) -> dict[str, Any]:
    return await engine.consents.answer(me, consent_id, True)


@router.post("/v1/consents/{consent_id}/deny", tags=["consent"])
async def deny_consent(me: Me, engine: EngineDep, consent_id: str) -> dict[str, Any]:
    return await engine.consents.answer(me, consent_id, False)


@router.get("/v1/consents/{consent_id}", tags=["consent"])
async def get_consent(
    me: Me,
    engine: EngineDep,
    consent_id: str,
    request: Request,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> dict[str, Any]:
    consent = await engine.consents.get(consent_id, 0)
    engine.authority.check_observe(me, consent["resource"], f"consent {consent_id}")
    if wait_s <= 0:
        return consent
    # answered only while its caller's credential still authenticates
    return await waiting(
        request, me.name, lambda: engine.consents.get(consent_id, wait_s), caller=me
    )
