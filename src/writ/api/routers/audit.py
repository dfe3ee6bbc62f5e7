"""The ledger routes: ``GET /v1/audit`` (streamed page by page, :mod:`writ.api.streaming`), ``/v1/audit/verify`` and ``/v1/events``.

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from writ.api.deps import EngineDep, Me
from writ.api.middleware import waiting
from writ.api.streaming import audit_response
from writ.core.clock import parse_time
from writ.engine.hooks import MAX_WAIT_S

router = APIRouter()


@router.get("/v1/audit", tags=["audit"])
async def audit(
    me: Me,
    engine: EngineDep,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    resource: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Any:
    engine.authority.check_filter(me, resource)
    return await audit_response(
        engine,
        after_seq,
        limit,
        resource,
        parse_time(since) if since else None,
        parse_time(until) if until else None,
        view=lambda page: engine.authority.visible_page(me, page),
    )


@router.get("/v1/audit/verify", tags=["audit"])
async def audit_verify(me: Me, engine: EngineDep) -> dict[str, Any]:
    return engine.authority.verification(me, (await engine.verify()).to_dict())


@router.get("/v1/events", tags=["audit"])
async def events(
    me: Me,
    engine: EngineDep,
    request: Request,
    resource: str | None = None,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    def work() -> Awaitable[dict[str, Any]]:
        return engine.authority.events(me, resource, after_seq, wait_s, limit)

    # a long poll is answered only while its caller's credential still authenticates
    return await (work() if wait_s <= 0 else waiting(request, me.name, work, caller=me))
