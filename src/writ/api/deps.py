"""The dependencies every route shares: the caller (:func:`principal`, ``Me``) and the engine
of the app serving the request (:func:`get_engine`, ``EngineDep``).

No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.
"""

from typing import Annotated

from fastapi import Depends, Request

from writ.core.errors import Unauthenticated
from writ.core.models import Principal
from writ.engine import Engine


async def principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 otherwise. A request that
    waits asks again before it answers (:func:`writ.api.middleware.waiting`)."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    engine: Engine = request.app.state.engine
    me = await engine.authenticate(token.strip())
    request.scope["writ.principal"] = me.name  # for the access log (writ.api.ops)
    return me


Me = Annotated[Principal, Depends(principal)]


async def get_engine(request: Request) -> Engine:
    """The engine of the app serving ``request`` (set by :class:`writ.api.fast.WritApp`)."""
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
