"""External identity: JWTs from configured issuers act as registered principals.

::

    [[identity.jwt]]
    issuer = "https://id.vendor-a.example"
    audience = "writ"
    jwks_url = "https://id.vendor-a.example/.well-known/jwks.json"   # or jwks_file = "keys.json"
    claim = "sub"                                                    # names the principal

A bearer token that is a JWT whose ``iss`` is a configured issuer acts as the registered
principal its ``claim`` names — if that principal exists and is not disabled, and the JWT
was issued (``iat``) after the principal's last rotate or enable, if any
(:mod:`writ.engine.cutoff`). The token's
signature (by a key of the issuer's JWKS, chosen by ``kid``), ``exp``, ``nbf``, ``iss`` and
``aud`` are checked by PyJWT; anything else is 401. Only asymmetric algorithms are
accepted (``none`` and the HMAC family never are: a JWKS publishes public keys, and an
HMAC "signed" with one proves nothing), and no RSA key under 2048 bits.

Keys are fetched with httpx (no redirects; :data:`FETCH_TIMEOUT_S` for the whole fetch, not
per read; at most :data:`JWKS_MAX_BYTES`) and parsed by PyJWT's :class:`jwt.PyJWKSet`, kept
for :data:`JWKS_LIFESPAN_S`, and fetched again for an unknown ``kid`` at most once per
:data:`REFRESH_COOLDOWN_S` per issuer — a failed fetch counts too — so tokens with made-up
``kid`` values cannot make writ hammer the issuer. A JWT signed with a key writ knows never
waits for a fetch: once the set is older than its lifespan it is fetched again in the
background, and the last good set answers meanwhile; only an unknown ``kid`` waits (for a
key the issuer may just have added). An issuer that cannot be reached, or sends what is
not a key set, leaves the last good set in use (503 while writ never had one, and for an
unknown ``kid`` whose fetch failed; why is logged, not told to the caller). An ``http://``
``jwks_url`` is accepted only on a loopback address; a ``jwks_file`` (relative to the
policy file) is re-read for an unknown ``kid`` when it changed, with the same bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from writ.core.errors import Unauthenticated, Unavailable
from writ.core.models import KINDS, Principal

__all__ = ["Identity", "JwtIssuer", "looks_like_jwt", "parse_identity"]

log = logging.getLogger("writ.identity")

JWKS_LIFESPAN_S = 300.0
REFRESH_COOLDOWN_S = 30.0
FETCH_TIMEOUT_S = 5.0  # a whole fetch, connecting to the last byte
JWKS_MAX_BYTES = 1 << 20  # a JWK Set is a few KiB; writ reads no more than this
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


def _said(exc: Exception) -> str:
    """PyJWT's reason, cut short: it may quote the token (an unknown ``crit`` name, say),
    which the caller sent and need not read back at length."""
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _issued(iat: Any) -> float | None:
    """A verified ``iat`` as seconds, or None when it is no number (PyJWT takes a string of
    digits too, which is no NumericDate). PyJWT refused one in the future: an integer past
    a float's range is far in the past, after no cut-off, as good as none."""
    if not isinstance(iat, (int, float)) or isinstance(iat, bool):
        return None
    try:
        return float(iat)
    except OverflowError:
        return None


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (three base64url parts), not a writ token."""
    return token.count(".") == 2 and not token.startswith("writ_")


class _Unread(Exception):
    """The issuer's key set could not be had (why, for the log)."""


class _Keys:
    """One issuer's keys: the last good JWK Set, fetched or read again when it is older
    than :data:`JWKS_LIFESPAN_S` (in the background) or lacks a ``kid`` asked for (the
    request waits) — at most once per :data:`REFRESH_COOLDOWN_S`, failed attempts
    included. While the issuer cannot be reached, and while a fetch is under way, the last
    good set stays in use."""

    def __init__(self, issuer: JwtIssuer) -> None:
        self.issuer = issuer
        self.clock: Callable[[], float] = time.monotonic  # tests move it by hand
        self._lock = asyncio.Lock()
        self._set: PyJWKSet | None = None
        self._got = float("-inf")  # when the set was last fetched or read (clock)
        self._tried = float("-inf")  # when it was last tried, ok or not
        self._file_mtime: float | None = None
        self._tls: ssl.SSLContext | None = None  # made on the first fetch, then kept
        # the last background refresh, held here: the loop holds a task only weakly
        self.refreshing: asyncio.Task[None] | None = None

    def _match(self, kid: str) -> PyJWK | None:
        if self._set is None:
            return None
        for k in self._set.keys:
            if k.key_id == kid and k.public_key_use in ("sig", None):
                return k
        return None

    async def _fetch(self, url: str) -> bytes:
        """GET ``url``: no redirect, no content coding, :data:`FETCH_TIMEOUT_S` in all (not
        per read: a server sending a byte at a time is cut off), at most
        :data:`JWKS_MAX_BYTES`."""
        if self._tls is None:  # the system's CAs (where a private CA is installed)
            self._tls = ssl.create_default_context()
        body = bytearray()
        async with (
            asyncio.timeout(FETCH_TIMEOUT_S),
            httpx.AsyncClient(
                timeout=FETCH_TIMEOUT_S, verify=self._tls, follow_redirects=False
            ) as http,
            http.stream(
                "GET", url, headers={"User-Agent": "writ", "Accept-Encoding": "identity"}
            ) as r,
        ):
            if r.status_code != 200:
                moved = " (a redirect: not followed)" if 300 <= r.status_code < 400 else ""
                raise _Unread(f"HTTP {r.status_code}{moved}")
            if r.headers.get("content-encoding", "identity").lower() != "identity":
                raise _Unread(f"content-encoding {r.headers['content-encoding'][:40]!r}")
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise _Unread(f"longer than {JWKS_MAX_BYTES} bytes")
        return bytes(body)

    def _read_file(self, path: str) -> tuple[bytes | None, float]:
        """The file's bytes (None when unchanged since the last good read) and its mtime:
        in a worker thread."""
        mtime = os.stat(path).st_mtime
        if self._set is not None and mtime == self._file_mtime:
            return None, mtime
        with open(path, "rb") as f:
            raw = f.read(JWKS_MAX_BYTES + 1)
        if len(raw) > JWKS_MAX_BYTES:
            raise _Unread(f"longer than {JWKS_MAX_BYTES} bytes")
        return raw, mtime

    async def _load(self) -> PyJWKSet:
        """The set, fetched or read again; :class:`_Unread` when it cannot be had."""
        try:
            mtime = None
            if self.issuer.jwks_url is not None:
                raw = await self._fetch(self.issuer.jwks_url)
            else:
                assert self.issuer.jwks_file is not None
                read, mtime = await asyncio.to_thread(self._read_file, self.issuer.jwks_file)
                if read is None:
                    assert self._set is not None
                    return self._set
                raw = read
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise _Unread("not a JSON object")
            keys = PyJWKSet.from_dict(data)
            self._file_mtime = mtime
            return keys
        except _Unread:
            raise
        except TimeoutError:
            raise _Unread(f"no whole answer within {FETCH_TIMEOUT_S:g}s") from None
        except Exception as exc:  # whatever the issuer sends: a bad set, never a 500
            raise _Unread(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    async def key(self, kid: str) -> PyJWK:
        found = self._match(kid)
        if found is not None:
            if self.clock() - self._got >= JWKS_LIFESPAN_S:
                self._refresh_later()  # stale: the last good set meanwhile, never waited for
            return found
        # an unknown kid waits for a fetch (a new key of the issuer's), at most one at a time
        async with self._lock:
            now = self.clock()
            found = self._match(kid)
            if found is not None:
                return found  # the fetch it waited for brought it
            if now - self._tried < REFRESH_COOLDOWN_S:
                if self._set is None:
                    raise Unavailable(
                        f"cannot read the JWKS of {self.issuer.issuer} (last tried "
                        f"{now - self._tried:.0f}s ago); try again later"
                    )
                raise Unauthenticated(
                    f"no key {kid!r} in the JWKS of {self.issuer.issuer} (read "
                    f"{now - self._tried:.0f}s ago; at most once per {REFRESH_COOLDOWN_S:g}s)"
                )
            if not await self._refresh(now):
                raise Unavailable(
                    f"cannot read the JWKS of {self.issuer.issuer} (writ's log says why); "
                    "try again later"
                )
            found = self._match(kid)
        if found is None:
            raise Unauthenticated(f"no key {kid!r} in the JWKS of {self.issuer.issuer}")
        return found

    async def _refresh(self, now: float) -> bool:
        """Fetch or read the set again (holding the lock); whether a good set was had. A
        failure is logged, and the last good set stays in use."""
        self._tried = now
        try:
            keys = await self._load()
        except _Unread as exc:
            where = self.issuer.jwks_url or self.issuer.jwks_file
            kept = "; keeping the last good set" if self._set is not None else ""
            log.warning("JWKS of %s (%s): %s%s", self.issuer.issuer, where, exc, kept)
            return False
        self.fetches += 1
        self._set, self._got = keys, now
        return True

    def _refresh_later(self) -> None:
        """Refresh a stale set in the background, unless a fetch is under way or one was
        tried within :data:`REFRESH_COOLDOWN_S`."""
        under_way = self._lock.locked() or (self.refreshing and not self.refreshing.done())
        if under_way or self.clock() - self._tried < REFRESH_COOLDOWN_S:
            return

        async def refresh() -> None:
            async with self._lock:
                now = self.clock()
                if now - self._got >= JWKS_LIFESPAN_S and now - self._tried >= REFRESH_COOLDOWN_S:
                    await self._refresh(now)

        self.refreshing = asyncio.get_running_loop().create_task(refresh())

    fetches = 0  # successful fetches or reads (for tests)


class Identity:
    """The configured issuers; :meth:`verify` turns a JWT into a principal's name."""

    def __init__(self, issuers: list[JwtIssuer], kept: Identity | None = None) -> None:
        """``kept``: the identity this one replaces (a policy reload), whose keys an issuer
        with an unchanged table keeps."""
        self.issuers = {i.issuer: i for i in issuers}
        old = kept.keys if kept is not None else {}
        self.keys: dict[str, _Keys] = {}
        for i in issuers:
            if i.issuer in old and old[i.issuer].issuer == i:
                self.keys[i.issuer] = old[i.issuer]
                continue
            self.keys[i.issuer] = _Keys(i)
            if i.kinds is None:
                log.warning(
                    "[[identity.jwt]] %r lists no kinds: its JWTs may act as any registered "
                    "human or queue that is not an admin — who approve overrides and "
                    'rollbacks — as well as any agent; say kinds = ["agent"] (or the kinds '
                    "it is for) unless that is meant",
                    i.issuer,
                )

    def handles(self, token: str) -> bool:
        return bool(self.issuers) and looks_like_jwt(token)

    async def verify(self, token: str) -> tuple[str, JwtIssuer, float | None]:
        """The principal name a JWT vouches for, its issuer (whose :meth:`~JwtIssuer.refuses`
        the principal must pass) and when it was issued (its ``iat``; None when it has no
        number there); :class:`Unauthenticated` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed JWT: {_said(exc)}") from None
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
                # an RSA key under 2048 bits verifies nothing (PyJWT would only warn)
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"JWT from {issuer.issuer} refused: {_said(exc)}") from None
        name = claims.get(issuer.claim)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise Unauthenticated(
                f"the JWT's {issuer.claim!r} claim names no principal (1-64 of a-z 0-9 . _ -)"
            )
        return name, issuer, _issued(claims.get("iat"))
