"""The engine: write authority, decided in store transactions (no HTTP, no SQL).

:class:`Engine` (``writ.engine.kernel``) runs the lease lifecycle and the FIFO queue; the rules it
applies are :class:`writ.engine.hooks.Rule` subclasses listed in ``writ.engine.defaults``. Inside
this package, modules import each other by their full submodule path, never through this file.
"""

from writ.core.models import NAME as NAME
from writ.engine.hooks import MAX_TTL_S as MAX_TTL_S
from writ.engine.hooks import MAX_WAIT_S as MAX_WAIT_S
from writ.engine.hooks import SYSTEM as SYSTEM
from writ.engine.hooks import Request as Request
from writ.engine.hooks import lock_row as lock_row
from writ.engine.kernel import DISPATCH_PAGE as DISPATCH_PAGE
from writ.engine.kernel import RESERVED_NAMES as RESERVED_NAMES
from writ.engine.kernel import Engine as Engine
from writ.engine.kernel import hash_token as hash_token
from writ.engine.kernel import new_token as new_token

__all__ = [
    "DISPATCH_PAGE",
    "MAX_TTL_S",
    "MAX_WAIT_S",
    "NAME",
    "RESERVED_NAMES",
    "SYSTEM",
    "Engine",
    "Request",
    "hash_token",
    "lock_row",
    "new_token",
]
