"""Who a gate's client is, behind the proxies it trusts (``--trust-forwarded-for``).

A request's client is the connection's address. From a trusted proxy, the gate keeps the
proxy's ``X-Forwarded-For`` and extends it; the client, for its share of the gate
(``--max-requests-per-client``), is the last address there that is not itself trusted —
the one the proxy saw, since what a client writes in the header comes before it. An IPv6
client is its /64 (:func:`writ.net.caps.client_key`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

from writ.core.errors import Invalid
from writ.gate.headers import header_name
from writ.net.caps import client_key

__all__ = ["Forwarded"]


class Forwarded:
    """The trusted proxies' addresses or networks, and what follows from them."""

    def __init__(self, trust_forwarded_for: Iterable[str]) -> None:
        try:
            self.trusted = [
                ipaddress.ip_network(a.strip(), strict=False) for a in trust_forwarded_for
            ]
        except ValueError as exc:
            raise Invalid(
                f"--trust-forwarded-for takes addresses or networks like 10.0.0.0/8: {exc}",
                field="trust_forwarded_for",
            ) from exc

    def trusts(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def client_of(self, scope: Scope) -> str:
        """Whose request this is (see the module)."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        if not self.trusts(peer):
            return client_key(peer)
        for hop in reversed(self._hops(scope)):
            if hop and not self.trusts(hop):
                return client_key(str(hop[:64]))
        return client_key(peer)

    def chain(self, scope: Scope) -> str | None:
        """The ``X-Forwarded-For`` to send on: a trusted proxy's, extended by the connection's
        address; else the connection's address alone."""
        client = scope.get("client")
        forwarded = None
        if client and self.trusts(str(client[0])):
            given = [
                v.decode("latin-1").strip()
                for k, v in scope["headers"]
                if header_name(k) == "x-forwarded-for"
            ]
            forwarded = ", ".join(g for g in given if g) or None
        if client:
            forwarded = f"{forwarded}, {client[0]}" if forwarded else str(client[0])
        return forwarded

    @staticmethod
    def _hops(scope: Scope) -> list[str]:
        return [
            hop.strip()
            for k, v in scope["headers"]
            if header_name(k) == "x-forwarded-for"
            for hop in v.decode("latin-1").split(",")
        ]
