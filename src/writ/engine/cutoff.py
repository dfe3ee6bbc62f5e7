"""A principal's cut-off: when its token was last rotated, or it was last enabled, before
which no JWT issued for it is accepted.

A JWT cannot be taken back: writ never sees it until it is used, and the identity provider
that signed it goes on vouching for it until its ``exp``. A rotate or an enable refuses the
principal's old writ token by replacing it; for its JWTs they record the time they commit,
on the store's clock, in their own transaction (a policy object of kind :data:`CUTOFF`,
named after the principal: exported, imported and shared by every server of the store like
the rest), and a JWT for that principal whose ``iat`` (issued at, on the identity
provider's clock) is at or before that time is refused (401) — as is, once a principal has
a cut-off, a JWT that does not say when it was issued. ``iat`` is whole seconds as most
identity providers write it, so a JWT asked for in the second of the cut-off is refused
too: ask for a new one a second later.
"""

from __future__ import annotations

from writ.core.clock import rfc3339
from writ.core.errors import Unauthenticated
from writ.stores.base import Tx

__all__ = ["CUTOFF", "cut_off", "cut_off_at", "refuse_early"]

CUTOFF = "cutoff"  # policy-object kind: a principal's cut-off, by its name


async def cut_off(tx: Tx, name: str, by: str, event: str) -> None:
    """Refuse, from this transaction's commit on, every JWT for ``name`` issued until now
    (``event``: the row that says why, ``principal.rotated`` or ``principal.enabled``)."""
    data = {"at": tx.now(), "by": by, "event": event}
    await tx.put_object(CUTOFF, name, f"principals/{name}", "active", data)


async def cut_off_at(tx: Tx, name: str) -> float | None:
    """When ``name``'s JWTs were last cut off (the store's clock), or None: never."""
    found = await tx.get_object(CUTOFF, name)
    at = found.get("at") if found else None
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None


def refuse_early(name: str, issuer: str, iat: float | None, at: float | None) -> None:
    """Raise :class:`Unauthenticated` when a JWT from ``issuer`` issued at ``iat`` (None: it
    does not say) may not act as ``name``, cut off at ``at`` (None: never)."""
    if at is None or (iat is not None and iat > at):
        return
    how = f"the credentials of {name} were cut off (its token rotated, or it enabled)"
    if iat is None:
        why = (
            f"the JWT from {issuer} does not say when it was issued (no iat), and {how} at "
            f"{rfc3339(at)}: only a JWT issued after that is accepted"
        )
    else:
        why = (
            f"the JWT from {issuer} was issued (iat) at or before {rfc3339(at)}, when {how}: "
            f"ask {issuer} for a new one"
        )
    raise Unauthenticated(why, principal=name)
