"""External identity (``[[identity.jwt]]``): JWTs from configured issuers act as registered
principals. Real keys (RSA and EC, made with ``cryptography``), a real JWKS server on
loopback (started here), and the attacks: wrong claims, alg confusion, made-up key ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from writ.api.app import create_app
from writ.core import identity
from writ.core.errors import PolicyError
from writ.core.identity import JWKS_LIFESPAN_S, REFRESH_COOLDOWN_S
from writ.core.policy import parse
from writ.engine import Engine

pytestmark = pytest.mark.usefixtures("no_admin_env")

RSA_ISS = "https://id.vendor-a.example"
EC_ISS = "https://id.vendor-b.example"


class Key:
    """A signing key with its ``kid`` and its public JWK."""

    def __init__(self, kind: str, bits: int = 2048) -> None:
        self.kid = f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "rsa":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            self.alg = "RS256"
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk.update(kid=self.kid, use="sig", alg=self.alg)

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, iss: str, sub: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": iss, "aud": "writ", "sub": sub, "iat": now, "exp": now + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid})


class Jwks:
    """A JWKS endpoint on loopback: serves ``keys``, counts fetches, can fail."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.fail = False
        self.redirect: str | None = None
        self.pad = 0  # spaces after the JSON: a valid set, that long
        self.body: bytes | None = None  # sent instead of the set
        self.hold: threading.Event | None = None  # answer only once it is set
        self.drip = False  # send the set a byte at a time, for as long as the test runs
        self.asked = threading.Event()  # set on each request
        self.closing = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.fetches += 1
                state.asked.set()
                if state.hold is not None:
                    state.hold.wait()
                if state.redirect and self.path != "/moved":
                    self.send_response(302)
                    self.send_header("Location", state.redirect)
                    self.end_headers()
                    return
                if state.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                body = json.dumps({"keys": state.keys}).encode() + b" " * state.pad
                body = body if state.body is None else state.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not state.drip:
                    with contextlib.suppress(OSError):  # writ may hang up at its cap
                        self.wfile.write(body)
                    return
                # a byte every 50 ms: no single read ever waits long, the whole never ends
                with contextlib.suppress(OSError):
                    for byte in body:
                        if state.closing.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    j = Jwks()
    yield j
    j.close()


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return Key("rsa")


@pytest.fixture(scope="module")
def ec_key() -> Key:
    return Key("ec")


class Clock:
    """The monotonic clock of the key cache, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class World:
    def __init__(self, engine: Engine, http: httpx.AsyncClient, admin: str) -> None:
        self.engine, self.http, self.admin = engine, http, admin

    async def call(
        self, token: str, method: str = "GET", path: str = "/v1/whoami", body: Any = None
    ) -> httpx.Response:
        return await self.http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )


@contextlib.asynccontextmanager
async def _world(
    make_engine: Callable[..., Any],
    jwks: Jwks,
    rsa_key: Key,
    ec_key: Key,
    tmp_path: Path,
    a_bounds: str = "",
    b_bounds: str = "",
) -> AsyncIterator[World]:
    jwks.keys = [rsa_key.jwk]
    (tmp_path / "b-keys.json").write_text(json.dumps({"keys": [ec_key.jwk]}))
    policy = tmp_path / "writ.toml"
    policy.write_text(
        f"""
[[identity.jwt]]
issuer = "{RSA_ISS}"
audience = "writ"
jwks_url = "{jwks.url}"
{a_bounds}

[[identity.jwt]]
issuer = "{EC_ISS}"
audience = "writ"
jwks_file = "b-keys.json"
claim = "writ_principal"
{b_bounds}
"""
    )
    from writ.core.policy import load

    engine: Engine = await make_engine(load(policy))
    _, admin = await engine.add_principal(None, "boss", "human", admin=True)
    await engine.add_principal(None, "perf-agent", "agent", vendor="vendor-a")
    await engine.add_principal(None, "cost-agent", "agent", vendor="vendor-b")
    app = create_app(engine, start_engine=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://writ"
    ) as http:
        yield World(engine, http, admin)


@pytest.fixture
async def world(
    make_engine: Callable[..., Any], jwks: Jwks, rsa_key: Key, ec_key: Key, tmp_path: Path
) -> AsyncIterator[World]:
    """Issuer A (RSA) publishes on the JWKS server; issuer B (EC) in a file next to the
    policy; agents perf-agent (vendor-a) and cost-agent (vendor-b) are registered; neither
    issuer's table bounds whom it vouches for."""
    async with _world(make_engine, jwks, rsa_key, ec_key, tmp_path) as w:
        yield w


def _refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "unauthenticated"
    for w in words:
        assert w in err["message"], err["message"]


async def test_a_jwt_acts_as_the_principal_its_claim_names(
    world: World, rsa_key: Key, ec_key: Key
) -> None:
    tok = rsa_key.sign(RSA_ISS, "perf-agent")
    r = await world.call(tok)
    assert r.status_code == 200 and r.json()["name"] == "perf-agent"
    lease = await world.call(tok, "POST", "/v1/leases", {"resource": "prod/db", "intent": "scale"})
    assert lease.status_code == 201 and lease.json()["holder"] == "perf-agent"
    # issuer B names the principal in its own claim; sub is ignored
    tok_b = ec_key.sign(EC_ISS, "someone-else", writ_principal="cost-agent")
    assert (await world.call(tok_b)).json()["name"] == "cost-agent"
    _refused(await world.call(ec_key.sign(EC_ISS, "cost-agent")), "writ_principal")
    # not registered
    _refused(await world.call(rsa_key.sign(RSA_ISS, "ghost-agent")), "not a registered")
    # a writ token with dots in it (WRIT_ADMIN_TOKEN may be anything) is still a writ token
    await world.engine.add_principal(None, "dotted", "human", token="three.part.token")
    assert (await world.call("three.part.token")).json()["name"] == "dotted"
    # disabled: refused though the JWT is good
    r = await world.call(
        world.admin, "POST", "/v1/principals/perf-agent/disable", {"reason": "off-boarded"}
    )
    assert r.status_code == 200, r.text
    _refused(await world.call(tok), "disabled")


async def test_an_issuer_vouches_only_for_whom_its_table_names(
    make_engine: Callable[..., Any], jwks: Jwks, rsa_key: Key, ec_key: Key, tmp_path: Path
) -> None:
    """Each vendor's own identity: an issuer names an admin only with ``admin = true``, and
    only principals of its ``vendors`` and ``kinds`` when its table lists them."""
    async with _world(
        make_engine,
        jwks,
        rsa_key,
        ec_key,
        tmp_path,
        a_bounds='vendors = ["vendor-a"]\nkinds = ["agent"]',
        b_bounds="admin = true",
    ) as w:
        await w.engine.add_principal(None, "jane", "human", vendor="vendor-a")
        assert (await w.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
        _refused(await w.call(rsa_key.sign(RSA_ISS, "cost-agent")), "vendor 'vendor-b'")
        _refused(await w.call(rsa_key.sign(RSA_ISS, "jane")), "is a human")
        _refused(await w.call(rsa_key.sign(RSA_ISS, "boss")), "admin = true")
        # B names no vendors or kinds, and may name an admin
        boss = ec_key.sign(EC_ISS, "x", writ_principal="boss")
        assert (await w.call(boss)).json()["name"] == "boss"
        assert (
            await w.call(ec_key.sign(EC_ISS, "x", writ_principal="perf-agent"))
        ).status_code == 200


async def test_an_unbounded_issuer_still_never_names_an_admin(world: World, rsa_key: Key) -> None:
    _refused(await world.call(rsa_key.sign(RSA_ISS, "boss")), "boss is an admin")
    r = await world.call(
        world.admin, "POST", "/v1/principals", {"name": "x-agent", "kind": "agent"}
    )
    assert r.status_code == 201, r.text
    assert (await world.call(rsa_key.sign(RSA_ISS, "x-agent"))).status_code == 200


async def test_a_jwts_caller_gets_no_writ_token(world: World, rsa_key: Key) -> None:
    """A writ token minted for a JWT's caller would outlive the identity provider's say."""
    tok = rsa_key.sign(RSA_ISS, "perf-agent")
    r = await world.call(tok, "POST", "/v1/principals/perf-agent/rotate", {})
    assert r.status_code == 403 and RSA_ISS in r.json()["error"]["message"], r.text
    # an admin with a writ token may still rotate it
    r = await world.call(world.admin, "POST", "/v1/principals/perf-agent/rotate", {})
    assert r.status_code == 200, r.text


async def test_signature_and_claims_are_checked(world: World, rsa_key: Key) -> None:
    now = int(time.time())
    bad = {
        "expired": rsa_key.sign(RSA_ISS, "perf-agent", exp=now - 60),
        "not yet valid": rsa_key.sign(RSA_ISS, "perf-agent", nbf=now + 600),
        "other audience": rsa_key.sign(RSA_ISS, "perf-agent", aud="not-writ"),
        "no exp": rsa_key.sign(RSA_ISS, "perf-agent", exp=None),
        "no aud": rsa_key.sign(RSA_ISS, "perf-agent", aud=None),
        "unknown issuer": rsa_key.sign("https://evil.example", "perf-agent"),
        "no issuer": rsa_key.sign(None, "perf-agent"),  # type: ignore[arg-type]
    }
    good = rsa_key.sign(RSA_ISS, "perf-agent")
    head, _body, sig = good.split(".")
    other = Key("rsa")
    other.kid = rsa_key.kid  # a stranger's key under the issuer's kid
    bad["forged signature"] = other.sign(RSA_ISS, "perf-agent")
    bad["swapped body"] = ".".join([head, rsa_key.sign(RSA_ISS, "cost-agent").split(".")[1], sig])
    bad["garbage"] = "eyJhbGciOiJSUzI1NiJ9.not-base64!.x"
    for what, token in bad.items():
        r = await world.call(token)
        assert r.status_code == 401, (what, r.text)
    assert (await world.call(good)).status_code == 200


async def test_a_malformed_jwt_is_401_and_not_echoed_at_length(world: World, rsa_key: Key) -> None:
    """Whatever the token's parts hold (not base64, not an object, nested past the parser,
    an unknown critical header of 10 KiB), the answer is a short 401."""

    def part(raw: bytes | Any) -> str:
        import base64

        raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    claims = part({"iss": RSA_ISS, "aud": "writ", "sub": "perf-agent", "exp": now + 300})
    header = {"alg": "RS256", "kid": rsa_key.kid}
    bad = {
        "not base64": "a!b.c!d.e!f",
        "empty parts": "..",
        "header a list": f"{part([1])}.{claims}.c2ln",
        "claims a string": f"{part(header)}.{part('x')}.c2ln",
        "deep header": f"{part(b'[' * 3000)}.{claims}.c2ln",
        "deep claims": f"{part(header)}.{part(b'{' + b'[' * 3000)}.c2ln",
        "kid a number": f"{part({**header, 'kid': 7})}.{claims}.c2ln",
        "unknown crit": f"{part({**header, 'crit': ['X' * 10_000]})}.{claims}.c2ln",
    }
    for what, token in bad.items():
        r = await world.call(token)
        _refused(r, "JWT")
        assert len(r.json()["error"]["message"]) < 300, (what, r.text[:400])


async def test_alg_confusion_is_refused(world: World, rsa_key: Key, jwks: Jwks) -> None:
    """HS256 "signed" with the issuer's public key (which anyone can fetch), and alg none,
    are refused before any key is looked up."""
    now = int(time.time())
    claims = {"iss": RSA_ISS, "aud": "writ", "sub": "perf-agent", "exp": now + 300}
    pem = rsa_key.public_pem()
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        import base64

        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    # pyjwt refuses to HMAC with a PEM key, as an attacker's library would not: sign by hand
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}).encode())
    payload = b64(json.dumps(claims).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    hs = f"{header}.{payload}.{b64(mac)}"
    none = jwt.encode(claims, None, algorithm="none", headers={"kid": rsa_key.kid})
    before = jwks.fetches
    _refused(await world.call(hs), "HS256")
    _refused(await world.call(none), "none")
    assert jwks.fetches == before


async def test_a_key_verifies_only_its_own_algorithm(
    world: World, rsa_key: Key, jwks: Jwks
) -> None:
    """The header's alg must be the key's: PS256 under an RS256 key is refused, and a
    symmetric (oct) key an issuer published by mistake — readable by anyone, so an HMAC
    secret no longer — verifies nothing, whatever alg the header claims."""
    world.engine.identity.keys[RSA_ISS].clock = clock = Clock()
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
    claims = {"iss": RSA_ISS, "aud": "writ", "sub": "perf-agent", "exp": int(time.time()) + 300}
    ps = jwt.encode(claims, rsa_key.private, algorithm="PS256", headers={"kid": rsa_key.kid})
    _refused(await world.call(ps), "PS256", "RS256")
    secret = b"s" * 32
    oct_jwk = {"kty": "oct", "kid": "shared", "k": jwt.utils.base64url_encode(secret).decode()}
    jwks.keys = [rsa_key.jwk, oct_jwk]
    clock.t += REFRESH_COOLDOWN_S
    hs = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "shared"})
    _refused(await world.call(hs), "HS256")
    # the same HMAC under a header that says RS256 (an attacker's own encoder would)
    head = jwt.utils.base64url_encode(
        json.dumps({"alg": "RS256", "kid": "shared"}).encode()
    ).decode()
    body = hs.split(".")[1]
    import hashlib
    import hmac

    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{jwt.utils.base64url_encode(mac).decode()}"
    _refused(await world.call(forged), "RS256", "HS256")


# PyJWT only warns of a short key (here, signing with it): not an error in this test, as in
# production, so that writ's own refusal is what is tested
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_short_rsa_key_is_refused(world: World, rsa_key: Key, jwks: Jwks) -> None:
    """An RSA key under 2048 bits in the issuer's set verifies nothing: a 1024-bit modulus
    can be factored, and then anyone signs as the issuer."""
    short = Key("rsa", bits=1024)
    jwks.keys = [rsa_key.jwk, short.jwk]
    _refused(await world.call(short.sign(RSA_ISS, "perf-agent")), "1024 bits", "2048")
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200


async def test_key_rotation_fetches_a_new_kid_with_a_bounded_refresh_rate(
    world: World, rsa_key: Key, jwks: Jwks
) -> None:
    keys = world.engine.identity.keys[RSA_ISS]
    clock = Clock()
    keys.clock = clock
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
    assert jwks.fetches == 1
    # the issuer rotates: a new key appears; tokens signed with it are accepted once the
    # cooldown since the last fetch has passed, with exactly one more fetch
    new = Key("rsa")
    jwks.keys = [rsa_key.jwk, new.jwk]
    _refused(await world.call(new.sign(RSA_ISS, "perf-agent")), new.kid)
    assert jwks.fetches == 1  # within the cooldown: no fetch
    clock.t += REFRESH_COOLDOWN_S + 1
    assert (await world.call(new.sign(RSA_ISS, "perf-agent"))).status_code == 200
    assert jwks.fetches == 2
    assert (await world.call(new.sign(RSA_ISS, "cost-agent"))).status_code == 200
    assert jwks.fetches == 2  # known now: no fetch
    # a flood of made-up kids: at most one fetch per cooldown
    liar = Key("rsa")
    for i in range(200):
        liar.kid = f"made-up-{i}"
        _refused(await world.call(liar.sign(RSA_ISS, "perf-agent")))
        if i == 100:
            clock.t += REFRESH_COOLDOWN_S + 1
    assert jwks.fetches == 3
    # the old key keeps working throughout
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200


async def test_an_unreachable_jwks_is_503_and_not_hammered(
    world: World, rsa_key: Key, jwks: Jwks
) -> None:
    jwks.fail = True
    for _ in range(20):
        r = await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert jwks.fetches == 1  # within the cooldown: not asked again
    # a writ token still works meanwhile
    assert (await world.call(world.admin)).status_code == 200


async def test_a_redirecting_jwks_is_not_followed(world: World, rsa_key: Key, jwks: Jwks) -> None:
    """The issuer's keys come from the configured URL only: a redirect (to keys an attacker
    chose, say) is not followed."""
    jwks.keys = [rsa_key.jwk]
    jwks.redirect = jwks.url.replace("/.well-known/jwks.json", "/moved")
    r = await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))
    assert r.status_code == 503, r.text
    assert jwks.fetches == 1  # the redirect target was never asked


async def test_a_jwks_over_its_size_cap_is_not_read(world: World, rsa_key: Key, jwks: Jwks) -> None:
    """An issuer's key set is a few KiB: writ stops reading at 1 MiB (an identity provider,
    or whoever answers for it, cannot make writ hold gigabytes)."""
    world.engine.identity.keys[RSA_ISS].clock = clock = Clock()
    jwks.pad = 2 << 20  # valid JSON, 2 MiB long
    r = await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert jwks.url not in r.text  # what went wrong is logged, not told to the caller
    jwks.pad = 0
    clock.t += REFRESH_COOLDOWN_S
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200


async def test_a_jwks_that_is_not_a_key_set_is_503(world: World, rsa_key: Key, jwks: Jwks) -> None:
    """Whatever an issuer's endpoint answers, a JWT from it is refused with 503 (the set
    cannot be had), never a 500; its keys are used once it serves a good set again."""
    world.engine.identity.keys[RSA_ISS].clock = clock = Clock()
    good = {**rsa_key.jwk}
    for body in [
        b"not json",
        b"[]",
        b'{"keys": "none"}',
        b"[" * 100_000,
        json.dumps({"keys": [{**good, "alg": ["RS256"]}]}).encode(),  # PyJWT: a TypeError
        json.dumps({"keys": [{**good, "n": 5}]}).encode(),
    ]:
        jwks.body = body
        r = await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))
        assert r.status_code == 503, (body[:60], r.text)
        clock.t += REFRESH_COOLDOWN_S
    jwks.body = None
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200


@pytest.fixture
def quick_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JWKS fetch gives up after 0.5 s in all (engines made after this one)."""
    monkeypatch.setattr(identity, "FETCH_TIMEOUT_S", 0.5)


async def test_a_jwks_that_never_finishes_is_given_up_on(
    quick_fetch: None, world: World, rsa_key: Key, jwks: Jwks
) -> None:
    """An issuer that sends its set a byte at a time, each read within the timeout, is cut
    off after FETCH_TIMEOUT_S in all: JWTs from it get 503, not a request that never ends."""
    jwks.drip = True
    r = await asyncio.wait_for(world.call(rsa_key.sign(RSA_ISS, "perf-agent")), 10)
    assert r.status_code == 503, r.text


async def test_a_known_key_does_not_wait_for_a_refresh(
    world: World, rsa_key: Key, jwks: Jwks
) -> None:
    """While the set is fetched again (its lifespan is over, the issuer is slow), JWTs
    signed with a key writ knows are answered with the last good set, not held up."""
    world.engine.identity.keys[RSA_ISS].clock = clock = Clock()
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
    clock.t += JWKS_LIFESPAN_S + 1
    jwks.hold, jwks.asked = threading.Event(), threading.Event()
    refreshing = asyncio.ensure_future(world.call(rsa_key.sign(RSA_ISS, "perf-agent")))
    assert await asyncio.to_thread(jwks.asked.wait, 10)  # the refresh is under way
    try:
        for _ in range(3):
            r = await asyncio.wait_for(world.call(rsa_key.sign(RSA_ISS, "cost-agent")), 2)
            assert r.status_code == 200, r.text
    finally:
        jwks.hold.set()
    assert (await refreshing).status_code == 200
    assert jwks.fetches == 2


async def test_a_reload_keeps_the_keys_of_unchanged_issuers(
    world: World, rsa_key: Key, jwks: Jwks, tmp_path: Path
) -> None:
    """A reload that changes one issuer's table leaves the others' fetched keys in use: no
    fetch, and no 503 if their identity provider is down just then."""
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
    policy = tmp_path / "writ.toml"
    policy.write_text(policy.read_text().replace('claim = "writ_principal"', 'claim = "sub"'))
    r = await world.call(world.admin, "POST", "/v1/policy/reload")
    assert r.status_code == 200, r.text
    assert world.engine.identity.issuers[EC_ISS].claim == "sub"  # the change is applied
    jwks.fail = True
    assert (await world.call(rsa_key.sign(RSA_ISS, "perf-agent"))).status_code == 200
    assert jwks.fetches == 1


async def test_a_jwks_file_is_read_again_for_a_new_kid(
    world: World, ec_key: Key, tmp_path: Path
) -> None:
    keys = world.engine.identity.keys[EC_ISS]
    clock = Clock()
    keys.clock = clock
    tok = ec_key.sign(EC_ISS, "x", writ_principal="cost-agent")
    assert (await world.call(tok)).status_code == 200
    new = Key("ec")
    (tmp_path / "b-keys.json").write_text(json.dumps({"keys": [ec_key.jwk, new.jwk]}))
    import os

    st = os.stat(tmp_path / "b-keys.json")
    os.utime(tmp_path / "b-keys.json", (st.st_atime, st.st_mtime + 5))
    clock.t += REFRESH_COOLDOWN_S + 1
    tok2 = new.sign(EC_ISS, "x", writ_principal="cost-agent")
    assert (await world.call(tok2)).status_code == 200


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('issuer = "a"\naudience = "w"\njwks_url = "http://id.example/jwks"', "loopback"),
        ('issuer = "a"\naudience = "w"\njwks_url = "ftp://127.0.0.1/jwks"', "https://"),
        ('issuer = "a"\naudience = "w"', "exactly one of jwks_url and jwks_file"),
        (
            'issuer = "a"\naudience = "w"\njwks_url = "https://x/j"\njwks_file = "k.json"',
            "exactly one",
        ),
        ('audience = "w"\njwks_file = "k.json"', "issuer is required"),
        ('issuer = "a"\njwks_file = "k.json"', "audience is required"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nalgorithms = ["HS256"]', "algorithms"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nalgorithms = ["none"]', "algorithms"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nsecret = "s"', "unknown setting"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nvendors = "a"', "vendors must be"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nvendors = []', "vendors must be"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nkinds = ["robot"]', "'robot'"),
        ('issuer = "a"\naudience = "w"\njwks_file = "k"\nadmin = "yes"', "admin must be"),
    ],
)
def test_bad_identity_tables_fail_with_their_line(table: str, says: str) -> None:
    text = 'default_override_queue = "ops"\n\n[[identity.jwt]]\n' + table + "\n"
    with pytest.raises(PolicyError) as err:
        parse(text, "writ.toml")
    assert says in err.value.reason and err.value.line == 3, err.value.message


def test_an_issuer_naming_no_kinds_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """Without ``kinds``, an issuer may name humans and queues — the approvers of overrides
    and rollbacks — as well as agents: said at start and on each reload that applies it."""
    from writ.core.identity import Identity

    pol = parse(
        '[[identity.jwt]]\nissuer = "a"\naudience = "w"\njwks_file = "k"\n'
        '[[identity.jwt]]\nissuer = "b"\naudience = "w"\njwks_file = "k"\nkinds = ["agent"]\n'
    )
    with caplog.at_level("WARNING", logger="writ.identity"):
        first = Identity(pol.identity)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "'a'" in said[0] and "kinds" in said[0], said
    assert "human" in said[0] and "approve" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="writ.identity"):
        Identity(pol.identity, first)  # a reload that changes neither table: said once already
    assert not caplog.records


def test_good_identity_tables() -> None:
    pol = parse(
        '[[identity.jwt]]\nissuer = "a"\naudience = "w"\njwks_url = "http://127.0.0.1:9/j"\n'
        '[[identity.jwt]]\nissuer = "b"\naudience = "w"\njwks_url = "https://id.example/j"\n'
        'claim = "email"\nalgorithms = ["ES256"]\n'
        '[[identity.jwt]]\nissuer = "c"\naudience = "w"\njwks_url = "http://[::1]:9/j"\n',
        "conf/writ.toml",
    )
    assert [(i.issuer, i.claim) for i in pol.identity] == [
        ("a", "sub"),
        ("b", "email"),
        ("c", "sub"),
    ]
    assert pol.identity[1].algorithms == ("ES256",)
    assert pol.to_dict()["identity"]["jwt"][0]["jwks_url"] == "http://127.0.0.1:9/j"
    with pytest.raises(PolicyError, match="two"):
        parse('[[identity.jwt]]\nissuer = "a"\naudience = "w"\njwks_file = "k"\n' * 2)
