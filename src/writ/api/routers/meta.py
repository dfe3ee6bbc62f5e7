"""The meta routes: ``GET /v1/health`` (first of all routes) and ``GET /v1/policy`` (after the gate route), hence two routers.

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Any

from fastapi import APIRouter

from writ._version import __version__
from writ.api.deps import EngineDep, Me

health_router = APIRouter()
policy_router = APIRouter()


@health_router.get("/v1/health", tags=["meta"])
async def health(engine: EngineDep) -> dict[str, Any]:
    return {"ok": True, "version": __version__, "store": engine.store.url.split("://")[0]}


@policy_router.get("/v1/policy", tags=["meta"])
async def policy(me: Me, engine: EngineDep) -> dict[str, Any]:
    return engine.authority.policy_view(me, engine.policy.to_dict())
