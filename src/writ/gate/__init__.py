"""``writ gate``: a reverse proxy that makes write authority binding (PROTOCOL.md, Gate).

Put it in front of a production admin API and give the API's credentials only to the gate.
Reads and unmapped routes pass straight through. A mutating request on a route of the
routes file passes only when the caller shows a lease that writ says is held *right now* by
that caller on the route's resource, with that lease's fencing token, and the token is not
lower than one already passed for the resource::

    POST /admin/db/scale                       POST /admin/db/scale
    Authorization: Bearer <agent's writ token>  Writ-Fencing-Token: 8841
    Writ-Lease: 01J...                 ──gate──▶ Writ-Holder: perf-agent
    Writ-Fencing-Token: 8841                    Writ-Resource: prod/db
                                                (no writ token, no Writ-Lease)

The decision is writ's (``POST /v1/gate/check``), which writes the ``gate.passed`` or
``gate.refused`` audit row in the same transaction; the gate also remembers the highest
token it passed per resource and refuses anything lower, as a second guard. A refusal is
``423`` with ``{"error": {"code": "held" | "lease_lost" | "unauthenticated", "message",
"holder", ...}}`` and the upstream never sees the request, nor its body. When writ cannot
be reached the gate fails closed: ``503``, never an unchecked write.

Bodies stream both ways (nothing is buffered), connections to the upstream are pooled.
"""

from writ.gate.headers import FORWARDED as FORWARDED
from writ.gate.headers import HOP_BY_HOP as HOP_BY_HOP
from writ.gate.headers import METHOD_OVERRIDES as METHOD_OVERRIDES
from writ.gate.headers import WRIT_HEADERS as WRIT_HEADERS
from writ.gate.listen import DEFAULT_LISTEN as DEFAULT_LISTEN
from writ.gate.listen import serve as serve
from writ.gate.proxy import Gate as Gate
from writ.gate.routes import MUTATING as MUTATING
from writ.gate.routes import Route as Route
from writ.gate.routes import ambiguity as ambiguity
from writ.gate.routes import describe as describe
from writ.gate.routes import load_routes as load_routes
from writ.gate.routes import parse_routes as parse_routes
from writ.gate.routes import request_paths as request_paths
from writ.net.listen import parse_listen as parse_listen

__all__ = [
    "DEFAULT_LISTEN",
    "FORWARDED",
    "HOP_BY_HOP",
    "METHOD_OVERRIDES",
    "MUTATING",
    "WRIT_HEADERS",
    "Gate",
    "Route",
    "ambiguity",
    "describe",
    "load_routes",
    "parse_listen",
    "parse_routes",
    "request_paths",
    "serve",
]
