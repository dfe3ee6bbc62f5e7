"""The exception tree at its documented path: everything is defined in :mod:`writ.core.errors`
(the one root, :class:`WritError`, and its tree are drawn there)."""

from writ.core.errors import Conflict as Conflict
from writ.core.errors import ConsentRequired as ConsentRequired
from writ.core.errors import Forbidden as Forbidden
from writ.core.errors import Frozen as Frozen
from writ.core.errors import Held as Held
from writ.core.errors import Invalid as Invalid
from writ.core.errors import LeaseLost as LeaseLost
from writ.core.errors import NotFound as NotFound
from writ.core.errors import PolicyError as PolicyError
from writ.core.errors import TooLarge as TooLarge
from writ.core.errors import Unauthenticated as Unauthenticated
from writ.core.errors import Unavailable as Unavailable
from writ.core.errors import WritError as WritError
from writ.core.errors import error_from_body as error_from_body
from writ.core.errors import next_step as next_step

__all__ = [
    "Conflict",
    "ConsentRequired",
    "Forbidden",
    "Frozen",
    "Held",
    "Invalid",
    "LeaseLost",
    "NotFound",
    "PolicyError",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "WritError",
    "error_from_body",
    "next_step",
]
