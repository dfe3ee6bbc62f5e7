"""External identity: JWTs from configured issuers act as registered principals.

::

    [[identity.jwt]]
    issuer = "https://id.vendor-a.example"
    audience = "writ"
    jwks_url = "https://id.vendor-a.example/.well-known/jwks.json"   # or jwks_file = "keys.json"
    claim = "sub"                                                    # names the principal

A bearer token that is a JWT whose ``iss`` is a configured issuer acts as the registered
principal its ``claim`` names — if that principal exists and is not disabled. The token's
signature (by a key of the issuer's JWKS, chosen by ``kid``), ``exp``, ``nbf``, ``iss`` and
``aud`` are checked by PyJWT; anything else is 401. Only asymmetric algorithms are
accepted (``none`` and the HMAC family never are: a JWKS publishes public keys, and an
HMAC "signed" with one proves nothing).

Keys are fetched with PyJWT's :class:`jwt.PyJWKClient` (no redirects, http(s) only), kept
for :data:`JWKS_LIFESPAN_S`, and fetched again for an unknown ``kid`` at most once per
:data:`REFRESH_COOLDOWN_S` per issuer — a failed fetch counts too — so tokens with made-up
``kid`` values cannot make writ hammer the issuer. An issuer that cannot be reached leaves
the last good set in use (503 only while writ never had one). An ``http://`` ``jwks_url`` is accepted
only on a loopback address; a ``jwks_file`` (relative to the policy file) is re-read
for an unknown ``kid`` when it changed, with the same bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from writ.core.errors import Unauthenticated, Unavailable
from writ.core.models import KINDS, Principal

__all__ = ["Identity", "JwtIssuer", "looks_like_jwt", "parse_identity"]

log = logging.getLogger("writ.identity")

JWKS_LIFESPAN_S = 300.0
REFRESH_COOLDOWN_S = 30.0
FETCH_TIMEOUT_S = 5.0
LEEWAY_S = 5.0  # clock skew allowed on exp and nbf
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_NAME = re.compile(r"[a-z0-9._-]{1,64}")  # a principal's name
KEYS = {
    *("issuer", "audience", "jwks_url", "jwks_file", "claim", "algorithms"),
    *("vendors", "kinds", "admin"),
}


@dataclass(frozen=True, slots=True)
class JwtIssuer:
    """One ``[[identity.jwt]]`` table."""

    issuer: str
    audience: str
    claim: str = "sub"
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = ALGORITHMS
    # whom it may vouch for: principals of these vendors / kinds (None: any), admins or not
    vendors: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    admin: bool = False
    line: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": self.audience,
            "claim": self.claim,
            "jwks_url": self.jwks_url,
            "jwks_file": self.jwks_file,
            "algorithms": list(self.algorithms),
            "vendors": None if self.vendors is None else list(self.vendors),
            "kinds": None if self.kinds is None else list(self.kinds),
            "admin": self.admin,
        }

    def refuses(self, p: Principal) -> str | None:
        """Why this issuer may not act as ``p`` (one vendor's identity provider names its
        own principals, never an admin unless its table says so), or None."""
        where = f"[[identity.jwt]] {self.issuer}"
        if p.admin and not self.admin:
            return f"{p.name} is an admin, and {where} does not set admin = true"
        if self.vendors is not None and p.vendor not in self.vendors:
            return f"{p.name} is of vendor {p.vendor!r}, not of {where}'s vendors"
        if self.kinds is not None and p.kind not in self.kinds:
            return f"{p.name} is a {p.kind}, not of {where}'s kinds"
        return None


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_identity(data: Any, text: str, path: str) -> list[JwtIssuer]:
    """The ``identity`` table of a policy file; :class:`~writ.core.policy.PolicyError` when bad."""
    from urllib.parse import urlparse

    from writ.core.errors import PolicyError

    lines = [i for i, line in enumerate(text.splitlines(), 1) if line.strip() == "[[identity.jwt]]"]
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"jwt"}:
        raise PolicyError(path, "identity takes only [[identity.jwt]] tables", None)
    tables = data.get("jwt", [])
    if not isinstance(tables, list):
        raise PolicyError(path, "write issuers as [[identity.jwt]] tables", None)
    out: list[JwtIssuer] = []
    for i, raw in enumerate(tables):
        line = lines[i] if i < len(lines) else None

        def bad(reason: str, line: int | None = line) -> PolicyError:
            return PolicyError(path, f"[[identity.jwt]]: {reason}", line)

        if not isinstance(raw, dict):
            raise bad("each entry must be a table")
        unknown = set(raw) - KEYS
        if unknown:
            raise bad(f"unknown setting {sorted(unknown)[0]!r}; known: {', '.join(sorted(KEYS))}")
        for key in ("issuer", "audience"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise bad(f"{key} is required (a non-empty string)")
        claim = raw.get("claim", "sub")
        if not isinstance(claim, str) or not claim:
            raise bad("claim must be the name of a claim, like sub")
        url, file_ = raw.get("jwks_url"), raw.get("jwks_file")
        if (url is None) == (file_ is None):
            raise bad("give exactly one of jwks_url and jwks_file")
        if url is not None:
            if not isinstance(url, str):
                raise bad("jwks_url must be a string")
            parts = urlparse(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise bad(f"jwks_url {url!r} must be an https:// URL")
            if parts.scheme == "http" and not _loopback(parts.hostname):
                raise bad(
                    f"jwks_url {url!r} is plain http on a non-loopback host: use https:// "
                    "(anyone on the path could swap the keys)"
                )
        if file_ is not None:
            if not isinstance(file_, str) or not file_:
                raise bad("jwks_file must be a path")
            if not os.path.isabs(file_) and path not in ("<policy>", ""):
                file_ = os.path.join(os.path.dirname(os.path.abspath(path)), file_)
        algs = raw.get("algorithms", list(ALGORITHMS))
        if (
            not isinstance(algs, list)
            or not algs
            or not all(isinstance(a, str) and a in ALGORITHMS for a in algs)
        ):
            raise bad(f"algorithms must be a list of: {', '.join(ALGORITHMS)}")
        issuer = JwtIssuer(
            issuer=raw["issuer"],
            audience=raw["audience"],
            claim=claim,
            jwks_url=url,
            jwks_file=file_,
            algorithms=tuple(algs),
            **_bounds(raw, bad),
            line=line,
        )
        if any(o.issuer == issuer.issuer for o in out):
            raise bad(f"two [[identity.jwt]] tables for issuer {issuer.issuer!r}")
        out.append(issuer)
    return out


def _bounds(raw: dict[str, Any], bad: Callable[[str], Exception]) -> dict[str, Any]:
    """An issuer table's ``vendors``, ``kinds`` and ``admin``: whom it may vouch for."""
    out: dict[str, Any] = {}
    for key, allowed in (("vendors", None), ("kinds", KINDS)):
        names = raw.get(key)
        if names is None:
            continue
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad(f"{key} must be a non-empty list of names")
        wrong = [n for n in names if allowed is not None and n not in allowed]
        if wrong:
            raise bad(f"kinds: {wrong[0]!r} is not one of {', '.join(KINDS)}")
        out[key] = tuple(names)
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise bad("admin must be true or false")
    out["admin"] = admin
    return out


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (three base64url parts), not a writ token."""
    return token.count(".") == 2 and not token.startswith("writ_")


class _Keys:
    """One issuer's keys: the last good JWK Set, fetched (through PyJWT's
    :class:`~jwt.PyJWKClient`) or read again when it is older than
    :data:`JWKS_LIFESPAN_S` or lacks a ``kid`` asked for — at most once per
    :data:`REFRESH_COOLDOWN_S`, failed attempts included. While the issuer cannot be
    reached, the last good set stays in use."""

    def __init__(self, issuer: JwtIssuer) -> None:
        self.issuer = issuer
        self.clock: Callable[[], float] = time.monotonic  # tests move it by hand
        self._lock = asyncio.Lock()
        self._set: PyJWKSet | None = None
        self._got = float("-inf")  # when the set was last fetched or read (clock)
        self._tried = float("-inf")  # when it was last tried, ok or not
        self._client: PyJWKClient | None = None
        self._file_mtime: float | None = None
        if issuer.jwks_url:
            self._client = PyJWKClient(
                issuer.jwks_url,
                cache_jwk_set=False,  # the set is kept here, with the refresh bound
                timeout=FETCH_TIMEOUT_S,
                headers={"User-Agent": "writ"},
            )

    def _match(self, kid: str) -> PyJWK | None:
        if self._set is None:
            return None
        for k in self._set.keys:
            if k.key_id == kid and k.public_key_use in ("sig", None):
                return k
        return None

    def _load(self) -> PyJWKSet:
        """Fetch (or re-read) the set — in a worker thread."""
        if self._client is not None:
            return self._client.get_jwk_set(refresh=True)
        assert self.issuer.jwks_file is not None
        mtime = os.stat(self.issuer.jwks_file).st_mtime
        if self._set is not None and mtime == self._file_mtime:
            return self._set
        with open(self.issuer.jwks_file, encoding="utf-8") as f:
            keys = PyJWKSet.from_dict(json.load(f))
        self._file_mtime = mtime
        return keys

    async def key(self, kid: str) -> PyJWK:
        found = self._match(kid)
        if found is not None and self.clock() - self._got < JWKS_LIFESPAN_S:
            return found
        async with self._lock:  # one fetch at a time per issuer
            now = self.clock()
            found = self._match(kid)
            if found is not None and now - self._got < JWKS_LIFESPAN_S:
                return found
            if now - self._tried < REFRESH_COOLDOWN_S:
                if found is not None:
                    return found  # due for a refresh, which failed a moment ago
                if self._set is None:
                    raise Unavailable(
                        f"cannot read the JWKS of {self.issuer.issuer} (last tried "
                        f"{now - self._tried:.0f}s ago); try again later"
                    )
                raise Unauthenticated(
                    f"no key {kid!r} in the JWKS of {self.issuer.issuer} (read "
                    f"{now - self._tried:.0f}s ago; at most once per {REFRESH_COOLDOWN_S:g}s)"
                )
            self._tried = now
            try:
                keys = await asyncio.to_thread(self._load)
            except (jwt.PyJWKClientError, jwt.PyJWKSetError, OSError, ValueError) as exc:
                if found is not None:
                    log.warning(
                        "JWKS of %s: %s; keeping the last good set", self.issuer.issuer, exc
                    )
                    return found
                raise Unavailable(
                    f"cannot read the JWKS of {self.issuer.issuer}: {exc}; try again later"
                ) from exc
            self.fetches += 1
            self._set, self._got = keys, now
            found = self._match(kid)
        if found is None:
            raise Unauthenticated(f"no key {kid!r} in the JWKS of {self.issuer.issuer}")
        return found

    fetches = 0  # successful fetches or reads (for tests)


class Identity:
    """The configured issuers; :meth:`verify` turns a JWT into a principal's name."""

    def __init__(self, issuers: list[JwtIssuer]) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.keys = {i.issuer: _Keys(i) for i in issuers}

    def handles(self, token: str) -> bool:
        return bool(self.issuers) and looks_like_jwt(token)

    async def verify(self, token: str) -> tuple[str, JwtIssuer]:
        """The principal name a JWT vouches for, and its issuer (whose :meth:`~JwtIssuer.refuses`
        the principal must pass); :class:`Unauthenticated` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed JWT: {exc}") from None
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated(
                f"JWT issuer {str(iss)[:200]!r} is not configured ([[identity.jwt]] in the policy)"
            )
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise Unauthenticated(
                f"JWT algorithm {str(alg)[:20]!r} is not accepted from {issuer.issuer} "
                f"(accepted: {', '.join(issuer.algorithms)})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise Unauthenticated("the JWT names no key (kid) of its issuer's JWKS")
        key = await self.keys[issuer.issuer].key(kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"JWT from {issuer.issuer} refused: {exc}") from None
        name = claims.get(issuer.claim)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise Unauthenticated(
                f"the JWT's {issuer.claim!r} claim names no principal (1-64 of a-z 0-9 . _ -)"
            )
        return name, issuer
