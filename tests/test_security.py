"""Bad input and security (issue 7): who may do what, secrets, and request limits.

* **The matrix** — every route of the app (read from ``create_app``'s routes, so a new
  route without a row here fails the test) is called by each kind of principal: agent,
  human, queue, portal, and an admin. Each answers 2xx where PROTOCOL.md allows that kind
  and 403 where it does not: no agent or portal approves or denies a rollback, revokes,
  freezes, lifts a freeze or adds principals; nobody renews, releases or records a change
  on somebody else's lease. Every route but ``/v1/health`` needs a valid token.
* **Acting as someone else** — a body that names another principal as the actor is
  refused as an unknown field (422) or ignored; every audit row a call writes names the
  caller, whatever the body said.
* **Secrets** — tokens are looked up by their SHA-256, never compared raw (the source has
  no ``==`` on a secret, and the MCP bearer check uses ``hmac.compare_digest``); no
  response but the one creating a principal and no audit row ever carries a token.
* **Limits over a real socket** — against ``writ.server.run`` (uvicorn, as ``writ serve``
  runs it): 413 for a body over 1 MiB, with Content-Length and chunked; 413 for a header
  block over 16 KiB; malformed framing is uvicorn's 400; never a 500.
"""

from __future__ import annotations

import ast
import hashlib
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

import writ
from tests.server_fixtures import ADMIN_TOKEN, ServerProcess, unique
from writ.api.app import create_app
from writ.api.middleware import MAX_BODY, MAX_HEADERS
from writ.core.policy import Policy, load
from writ.engine import Engine, hash_token
from writ.stores import open_store

KINDS = ("agent", "human", "queue", "portal", "admin")
ANY = frozenset(KINDS)
HUMANS = frozenset({"human", "queue", "admin"})  # humans and on-call queues hold keys
# a rollback's key: its key-holder queue and the humans on its rotation (v1.1); the matrix's
# human is a member of the matrix's queue, the admin is not
KEY_TURNERS = frozenset({"human", "queue"})
ADMINS = frozenset({"admin"})
HOLDER_ONLY = frozenset()  # the lease is somebody else's: only its holder may
PUBLIC = {("GET", "/v1/health")}
# FastAPI's own documentation route: the API's schema, no state, no secrets (its /docs and
# /redoc pages, which run a CDN's scripts in writ's origin, are off)
DOCS = {"/openapi.json"}


# ----------------------------------------------------------------------------- the world
@dataclass
class Req:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


@dataclass
class World:
    """An app with the principals of the matrix and the others it needs."""

    c: httpx.AsyncClient
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)  # name -> token
    callers: dict[str, str] = field(default_factory=dict)  # kind -> name

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    async def call(self, name: str, req: Req, **headers: str) -> httpx.Response:
        return await self.c.request(
            req.method,
            req.path,
            json=req.json,
            params=req.params,
            headers={**self.auth(name), **headers},
        )

    async def ok(self, name: str, req: Req) -> dict[str, Any]:
        r = await self.call(name, req)
        assert r.status_code in (200, 201), (req, r.status_code, r.text)
        out: dict[str, Any] = r.json()
        return out

    async def add(self, name: str, kind: str, admin: bool = False) -> str:
        r = await self.c.post(
            "/v1/principals",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"name": name, "kind": kind, "admin": admin},
        )
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]
        return name

    async def lease(self, holder: str = "owner", rollback: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"resource": f"sec/{unique('r')}", "intent": "matrix", "ttl_s": 300}
        if rollback:
            body["rollback"] = {
                "allowed": True,
                "path": "/internal/sec/rollback?txn=1",
                "key_holder": self.callers["queue"],
                "override_queue": self.callers["queue"],
            }
        return await self.ok(holder, Req("POST", "/v1/leases", body))

    async def change(self) -> dict[str, Any]:
        lease = await self.lease("author")
        return await self.ok(
            "author",
            Req(
                "POST",
                f"/v1/leases/{lease['lease_id']}/changes",
                {"attribute": "capacity", "summary": "4 -> 8"},
            ),
        )

    async def consent(self) -> dict[str, Any]:
        change = await self.change()
        return await self.ok(
            "requester",
            Req("POST", "/v1/consents", {"change_id": change["change_id"], "reason": "undo it"}),
        )

    async def rollback(self, ran: bool = False) -> dict[str, Any]:
        lease = await self.lease(rollback=True)
        rb = await self.ok(
            "requester",
            Req("POST", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "bad"}),
        )
        if ran:  # approved by another human: it runs (and fails: no base URL to call)
            await self.ok("approver", Req("POST", f"/v1/rollbacks/{rb['rollback_id']}/approve"))
        return rb

    async def freeze(self) -> dict[str, Any]:
        return await self.ok(
            "approver",
            Req("POST", "/v1/freezes", {"prefix": f"sec/{unique('f')}", "reason": "incident"}),
        )


@asynccontextmanager
async def world(
    store_url: str, monkeypatch: pytest.MonkeyPatch, policy: Policy | None = None
) -> AsyncIterator[World]:
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", ADMIN_TOKEN)
    engine = Engine(open_store(store_url), policy)
    app = create_app(engine)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://writ.test") as c,
    ):
        w = World(c, engine)
        w.app = app  # type: ignore[attr-defined]
        w.tokens["admin"] = ADMIN_TOKEN
        for kind in KINDS:
            if kind == "admin":
                w.callers[kind] = "admin"
            else:
                w.callers[kind] = await w.add(f"the-{kind}", kind)
        for name, kind in (
            ("owner", "agent"),
            ("author", "agent"),
            ("requester", "agent"),
            ("approver", "human"),
        ):
            await w.add(name, kind)
        for member in (w.callers["human"], "approver"):  # on the queue's rotation
            await w.ok(
                "admin",
                Req("POST", f"/v1/principals/{member}/queues", {"add": [w.callers["queue"]]}),
            )
        yield w


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}


# ----------------------------------------------------------------------------- the matrix
Build = Callable[[World], Awaitable[Req]]


async def _lease_id(w: World) -> str:
    return str((await w.lease())["lease_id"])


async def _fresh_resource(w: World) -> Req:
    return Req("POST", "/v1/leases", {"resource": f"sec/{unique('a')}", "intent": "matrix"})


async def _rollback_request(w: World) -> Req:
    lease = await w.lease(rollback=True)
    return Req("POST", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "bad"})


async def _consent_request(w: World) -> Req:
    change = await w.change()
    return Req("POST", "/v1/consents", {"change_id": change["change_id"], "reason": "undo"})


def _const(req: Req) -> Build:
    async def build(w: World) -> Req:
        return req

    return build


def _on_lease(suffix: str, body: Any = None) -> Build:
    async def build(w: World) -> Req:
        return Req("POST", f"/v1/leases/{await _lease_id(w)}/{suffix}", body)

    return build


def _on_consent(suffix: str) -> Build:
    async def build(w: World) -> Req:
        return Req("POST", f"/v1/consents/{(await w.consent())['consent_id']}/{suffix}")

    return build


def _on_rollback(suffix: str, ran: bool = False, body: Any = None) -> Build:
    async def build(w: World) -> Req:
        rb = await w.rollback(ran=ran)
        return Req("POST", f"/v1/rollbacks/{rb['rollback_id']}/{suffix}", body)

    return build


async def _get_lease(w: World) -> Req:
    return Req("GET", f"/v1/leases/{await _lease_id(w)}")


async def _get_change(w: World) -> Req:
    return Req("GET", f"/v1/changes/{(await w.change())['change_id']}")


async def _get_consent(w: World) -> Req:
    return Req("GET", f"/v1/consents/{(await w.consent())['consent_id']}")


async def _get_rollback(w: World) -> Req:
    return Req("GET", f"/v1/rollbacks/{(await w.rollback())['rollback_id']}")


async def _fence(w: World) -> Req:
    lease = await w.lease()
    return Req(
        "GET", "/v1/fence", params={"resource": lease["resource"], "token": lease["fencing_token"]}
    )


async def _lift(w: World) -> Req:
    return Req("POST", f"/v1/freezes/{(await w.freeze())['freeze_id']}/lift")


async def _gate_check(w: World) -> Req:
    lease = await w.lease()
    return Req(
        "POST",
        "/v1/gate/check",
        {
            "caller_token": w.tokens["owner"],
            "lease_id": lease["lease_id"],
            "fencing_token": lease["fencing_token"],
            "resource": lease["resource"],
            "method": "POST",
            "path": "/admin/x",
        },
    )


async def _rotate(w: World) -> Req:
    """Another principal's token (rotating one's own is allowed: tests/test_principals.py)."""
    return Req("POST", f"/v1/principals/{await w.add(unique('r'), 'agent')}/rotate")


async def _disable(w: World) -> Req:
    """A fresh agent to disable (the matrix's own principals must stay usable)."""
    name = await w.add(unique("d"), "agent")
    return Req("POST", f"/v1/principals/{name}/disable", {"reason": "matrix"})


async def _enable(w: World) -> Req:
    name = await w.add(unique("e"), "agent")
    await w.ok("admin", Req("POST", f"/v1/principals/{name}/disable", {"reason": "matrix"}))
    return Req("POST", f"/v1/principals/{name}/enable")


REVOKE = {"runbook": "R-1", "paged": "oncall", "reason": "stuck"}
ADD_PRINCIPAL = Req("POST", "/v1/principals", {"name": "x", "kind": "agent"})  # name made unique

# (method, path) -> (who may, how to build the request). Positive controls for the
# holder-only routes are in test_the_holder_may_do_what_others_may_not.
MATRIX: dict[tuple[str, str], tuple[frozenset[str], Build]] = {
    ("POST", "/v1/principals"): (ADMINS, _const(ADD_PRINCIPAL)),
    ("GET", "/v1/principals"): (ANY, _const(Req("GET", "/v1/principals"))),
    ("GET", "/v1/whoami"): (ANY, _const(Req("GET", "/v1/whoami"))),
    ("POST", "/v1/leases"): (ANY, _fresh_resource),
    ("POST", "/v1/leases/{lease_id}/renew"): (HOLDER_ONLY, _on_lease("renew")),
    ("POST", "/v1/leases/{lease_id}/release"): (HOLDER_ONLY, _on_lease("release")),
    ("POST", "/v1/leases/{lease_id}/revoke"): (HUMANS, _on_lease("revoke", REVOKE)),
    ("POST", "/v1/leases/{lease_id}/changes"): (
        HOLDER_ONLY,
        _on_lease("changes", {"attribute": "capacity", "summary": "4 -> 2"}),
    ),
    ("GET", "/v1/leases/{lease_id}"): (ANY, _get_lease),
    ("GET", "/v1/leases"): (ANY, _const(Req("GET", "/v1/leases"))),
    ("GET", "/v1/status"): (ANY, _const(Req("GET", "/v1/status"))),
    ("GET", "/v1/resources/{resource:path}"): (ANY, _const(Req("GET", "/v1/resources/sec/x"))),
    ("GET", "/v1/who"): (ANY, _const(Req("GET", "/v1/who", params={"resource": "sec/x"}))),
    ("GET", "/v1/fence"): (ANY, _fence),
    ("GET", "/v1/audit"): (ANY, _const(Req("GET", "/v1/audit"))),
    ("GET", "/v1/audit/verify"): (ANY, _const(Req("GET", "/v1/audit/verify"))),
    ("GET", "/v1/events"): (ANY, _const(Req("GET", "/v1/events", params={"wait_s": 0}))),
    ("GET", "/v1/changes/{change_id}"): (ANY, _get_change),
    ("POST", "/v1/consents"): (ANY, _consent_request),
    ("POST", "/v1/consents/{consent_id}/grant"): (HUMANS, _on_consent("grant")),
    ("POST", "/v1/consents/{consent_id}/deny"): (HUMANS, _on_consent("deny")),
    ("GET", "/v1/consents/{consent_id}"): (ANY, _get_consent),
    ("POST", "/v1/rollbacks"): (ANY, _rollback_request),
    ("GET", "/v1/rollbacks"): (ANY, _const(Req("GET", "/v1/rollbacks"))),
    ("GET", "/v1/rollbacks/{rollback_id}"): (ANY, _get_rollback),
    ("POST", "/v1/rollbacks/{rollback_id}/approve"): (KEY_TURNERS, _on_rollback("approve")),
    ("POST", "/v1/rollbacks/{rollback_id}/deny"): (KEY_TURNERS, _on_rollback("deny")),
    ("POST", "/v1/principals/{name}/rotate"): (ADMINS, _rotate),
    ("POST", "/v1/principals/{name}/disable"): (ADMINS, _disable),
    ("POST", "/v1/principals/{name}/enable"): (ADMINS, _enable),
    ("POST", "/v1/principals/{name}/queues"): (
        ADMINS,
        _const(Req("POST", "/v1/principals/approver/queues", {"add": ["the-queue"]})),
    ),
    ("POST", "/v1/rollbacks/{rollback_id}/defect"): (
        HUMANS,
        _on_rollback("defect", ran=True, body={"notes": "made it worse"}),
    ),
    ("POST", "/v1/freezes"): (
        HUMANS,
        _const(Req("POST", "/v1/freezes", {"prefix": "sec/frozen", "reason": "x"})),
    ),
    ("POST", "/v1/freezes/{freeze_id}/lift"): (HUMANS, _lift),
    ("GET", "/v1/freezes"): (ANY, _const(Req("GET", "/v1/freezes"))),
    ("POST", "/v1/gate/check"): (ANY, _gate_check),
    ("GET", "/v1/policy"): (ANY, _const(Req("GET", "/v1/policy"))),
    # authority (v1.1): an agent or portal may ask only about itself; anyone who may observe
    # a lease may ask writ to wake its holder; only an admin reloads the policy
    ("GET", "/v1/authority"): (
        HUMANS,
        _const(Req("GET", "/v1/authority", params={"principal": "owner", "resource": "sec/x"})),
    ),
    ("POST", "/v1/leases/{lease_id}/wake"): (ANY, _on_lease("wake", {"reason": "are you there"})),
    ("POST", "/v1/policy/reload"): (ADMINS, _const(Req("POST", "/v1/policy/reload"))),
}

# The matrix holds in closed mode too, under a policy that grants every kind the sec/ tree.
CLOSED_POLICY = """
[authority]
mode = "closed"

[[authority.grant]]
kinds = ["agent", "human", "queue", "portal"]
write = ["sec"]
"""


def _unique_body(req: Req) -> Req:
    """A request whose created object gets a name of its own (principals, freezes)."""
    if req.path == "/v1/principals" and req.method == "POST":
        return Req(req.method, req.path, {**req.json, "name": unique("p")})
    if req.path == "/v1/freezes" and req.method == "POST":
        return Req(req.method, req.path, {**req.json, "prefix": f"sec/{unique('f')}"})
    return req


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_every_kind_on_every_route(
    store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    """Each kind of principal on each route: 2xx where allowed, 403 ``forbidden`` where
    not. Every row a call writes names the caller (or writ itself), and no GET answer
    carries anybody's token. The same in closed mode, with every kind granted sec/."""
    policy = None
    if mode == "closed":
        (tmp_path / "writ.toml").write_text(CLOSED_POLICY)
        policy = load(tmp_path / "writ.toml")
    async with world(store_url, monkeypatch, policy) as w:
        routes = app_routes(w.app)  # type: ignore[attr-defined]
        assert routes - PUBLIC == set(MATRIX), (
            "routes without a row in MATRIX (say who may call them): "
            f"{sorted(routes - PUBLIC - set(MATRIX))}; rows without a route: "
            f"{sorted(set(MATRIX) - routes)}"
        )
        seen: list[str] = []
        for (method, path), (allowed, build) in MATRIX.items():
            for kind in KINDS:
                caller = w.callers[kind]
                req = _unique_body(await build(w))
                head = await _head(w)
                r = await w.call(caller, req)
                where = f"{kind} {method} {req.path}: {r.status_code} {r.text[:300]}"
                if kind in allowed:
                    assert r.status_code in (200, 201, 202), where
                else:
                    assert r.status_code == 403, where
                    err = r.json()["error"]
                    assert err["code"] == "forbidden" and len(err["message"]) > 20, where
                if method == "GET":
                    seen.append(r.text)
                # a call acts as its caller: every row it wrote says so (a gate check's row
                # names the principal whose own token the gate presented)
                acting = {caller, "writ"} | ({"owner"} if path == "/v1/gate/check" else set())
                for row in await _rows_after(w, head):
                    assert row["agent_id"] in acting, (where, row)
                    if row["event"].startswith("gate."):
                        assert f"via {caller}" in row["notes"], (where, row)
                if method == "GET" and path == "/v1/whoami":
                    assert r.json()["name"] == caller
        secrets = set(w.tokens.values())
        for text in seen:
            assert not any(s in text for s in secrets), text[:500]


async def _head(w: World) -> int:
    """The last row's seq, once the wake and page calls of earlier requests are recorded."""
    await w.engine.caller.drain()
    return int((await w.engine.store.read(lambda tx: tx.audit_head()))[0])


async def _rows_after(w: World, seq: int) -> list[dict[str, Any]]:
    """Rows after ``seq``, the outcome rows of this request's wake and page calls included."""
    await w.engine.caller.drain()
    return list((await w.engine.audit(seq, 10_000))["rows"])


async def test_the_holder_may_do_what_others_may_not(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The positive controls of the holder-only routes: the holder itself renews, records
    a change and releases; a queue that is not the rollback's key holder may not answer
    it, nor may the agent that asked for it (even a human one, whose key is a second key)."""
    async with world(store_url, monkeypatch) as w:
        lease = await w.lease()
        lid = lease["lease_id"]
        await w.ok("owner", Req("POST", f"/v1/leases/{lid}/renew"))
        await w.ok(
            "owner",
            Req(
                "POST", f"/v1/leases/{lid}/changes", {"attribute": "capacity", "summary": "4 -> 2"}
            ),
        )
        await w.ok("owner", Req("POST", f"/v1/leases/{lid}/release"))
        other_queue = await w.add("other-queue", "queue")
        rb = await w.rollback()
        r = await w.call(other_queue, Req("POST", f"/v1/rollbacks/{rb['rollback_id']}/approve"))
        assert r.status_code == 403, r.text
        lease = await w.lease(rollback=True)
        rb = await w.ok(
            "approver",
            Req("POST", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "mine"}),
        )
        r = await w.call("approver", Req("POST", f"/v1/rollbacks/{rb['rollback_id']}/approve"))
        assert r.status_code == 403 and "second key" in r.text, r.text
        # the author of a change may answer a consent about it (an agent, the one exception)
        consent = await w.consent()
        await w.ok("author", Req("POST", f"/v1/consents/{consent['consent_id']}/grant"))


IMPOSTOR_FIELDS = (
    "as",
    "me",
    "principal",
    "agent_id",
    "holder",
    "requester",
    "author",
    "actor",
    "on_behalf_of",
    "approved_by",
    "revoked_by",
    "caller",
)


async def test_nobody_names_another_principal_as_me(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every POST route, a body that names another principal as the actor is refused as
    an unknown field (422), or — on routes that take no body — ignored: the call still acts
    as the caller (an agent releasing the owner's lease "as" the owner is still 403)."""
    async with world(store_url, monkeypatch) as w:
        agent = w.callers["agent"]
        for (method, path), (allowed, build) in MATRIX.items():
            if method != "POST" or path == "/v1/gate/check":  # names a caller by its token
                continue
            for name in IMPOSTOR_FIELDS:
                req = _unique_body(await build(w))
                if isinstance(req.json, dict) and name in req.json:
                    continue  # a real field of this body
                head = await _head(w)
                forged = Req(method, req.path, {**(req.json or {}), name: "owner"}, req.params)
                r = await w.call(agent, forged)
                where = f"{method} {req.path} with {name}=owner: {r.status_code} {r.text[:300]}"
                if r.status_code == 422:
                    assert "not a known field" in r.json()["error"]["message"], where
                else:  # ignored: the same answer the agent gets without it
                    expected = (200, 201) if "agent" in allowed else (403,)
                    assert r.status_code in expected, where
                for row in await _rows_after(w, head):
                    assert row["agent_id"] in (agent, "writ"), (where, row)


async def test_every_route_but_health_needs_a_valid_token(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 without a token and with a wrong one, on every route but /v1/health (and the
    API's own documentation); the refusal never echoes the token it was given."""
    async with world(store_url, monkeypatch) as w:
        routes = app_routes(w.app)  # type: ignore[attr-defined]
        doc_paths = {r.path for r in w.app.routes if not isinstance(r, APIRoute)}  # type: ignore[attr-defined]
        assert doc_paths == DOCS, doc_paths
        for page in ("/docs", "/redoc"):  # no page running a CDN's scripts in writ's origin
            assert (await w.c.get(page)).status_code == 404
        wrong = "writ_" + "x" * 43
        for method, path in sorted(routes):
            req = (
                _unique_body(await MATRIX[(method, path)][1](w))
                if (method, path) in MATRIX
                else Req(method, path)
            )
            for headers in (
                {},
                {"Authorization": f"Bearer {wrong}"},
                {"Authorization": f"Bearer {w.tokens['owner']}x"},
                {"Authorization": f"Basic {w.tokens['owner']}"},
            ):
                r = await w.c.request(
                    req.method, req.path, json=req.json, params=req.params, headers=headers
                )
                if (method, path) in PUBLIC:
                    assert r.status_code == 200, r.text
                    continue
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["error"]["code"] == "unauthenticated"
                assert wrong not in r.text and w.tokens["owner"] not in r.text


# ----------------------------------------------------------------------------- secrets
async def test_tokens_are_looked_up_by_their_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is asked for a principal by the token's SHA-256 (an index lookup on a hash
    reveals nothing about the token), never by the token; the token itself is nowhere in
    the database file."""
    store_url = f"sqlite:///{tmp_path / 'writ.db'}"
    async with world(store_url, monkeypatch) as w:
        asked: list[str] = []
        real = w.engine.store.read

        async def spy(fn: Any, **kw: Any) -> Any:
            class Tx:
                def __init__(self, tx: Any) -> None:
                    self._tx = tx

                def __getattr__(self, name: str) -> Any:
                    attr = getattr(self._tx, name)
                    if name != "principal_by_token":
                        return attr

                    async def lookup(h: str) -> Any:
                        asked.append(h)
                        return await attr(h)

                    return lookup

            return await real(lambda tx: fn(Tx(tx)), **kw)

        monkeypatch.setattr(w.engine.store, "read", spy)
        w.engine.auth_cache.forget()
        token = w.tokens["owner"]
        assert (await w.ok("owner", Req("GET", "/v1/whoami")))["name"] == "owner"
        assert asked == [hashlib.sha256(token.encode()).hexdigest()] == [hash_token(token)]
        assert all(token not in key for key in w.engine.auth_cache._entries)
    raw = _files(tmp_path, "writ.db*")
    for name, tok in w.tokens.items():
        assert tok.encode() not in raw, f"{name}'s token is stored in the clear"
    with sqlite3.connect(tmp_path / "writ.db") as db:
        hashes = {h for (h,) in db.execute("SELECT token_hash FROM principals")}
    assert hashes == {hash_token(t) for t in w.tokens.values()}


def _files(folder: Path, pattern: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob(pattern)))


_SECRET_NAMES = ("token", "secret", "password", "passwd", "api_key", "apikey", "credential")
_PUBLIC_COMPARISONS = {
    "self._token != token0",  # stores/sqlite.py: the store's fencing-token counter
}
_NOT_SECRET = ("fencing", "token_hash", "tokens", "next_token", "_token_")


def _secret_name(node: ast.expr) -> str | None:
    name = (
        node.attr
        if isinstance(node, ast.Attribute)
        else node.id
        if isinstance(node, ast.Name)
        else None
    )
    if name is None:
        return None
    low = name.lower()
    if any(s in low for s in _SECRET_NAMES) and not any(n in low for n in _NOT_SECRET):
        return name
    return None


def test_no_secret_is_compared_with_equals() -> None:
    """No ``==``/``!=`` in the source compares a value named like a secret (a token, a
    password, a key) with something other than None or a literal: such comparisons stop at
    the first differing byte. Fencing tokens are public numbers and do not count; the MCP
    server's ``--http-token`` check uses ``hmac.compare_digest``."""
    src = Path(writ.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                continue
            if any(isinstance(o, ast.Constant) for o in operands):
                continue  # `token == ""`, `x != None`: no secret on the other side
            if any("fencing" in ast.unparse(o) for o in operands):
                continue  # a fencing token is a public number
            names = [n for n in map(_secret_name, operands) if n]
            if names and ast.unparse(node) not in _PUBLIC_COMPARISONS:
                found.append(f"{path.relative_to(src)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "compare secrets with hmac.compare_digest:\n" + "\n".join(found)
    mcp = (src / "mcp" / "http.py").read_text()
    assert "hmac.compare_digest(" in mcp


async def test_no_token_in_principals_or_audit_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/principals lists no token field; after principals are added (by the admin
    and offline) and used — through a gate check naming a caller's token too — no audit
    row contains any token, raw or hashed."""
    async with world(store_url, monkeypatch) as w:
        _, offline = await w.engine.add_principal(None, "offline-agent", "agent")
        w.tokens["offline-agent"] = offline
        await w.ok("admin", await _gate_check(w))
        await w.ok("owner", await _rollback_request(w))
        listed = await w.ok(w.callers["portal"], Req("GET", "/v1/principals"))
        shown = {"name", "kind", "vendor", "wake", "admin", "created_at"}
        shown |= {"disabled", "token_expires_at"}  # v1.1 token lifecycle (a time, not a token)
        assert listed["principals"] and all(
            set(p) == shown | ({"queues"} if p["kind"] == "human" else set())
            for p in listed["principals"]
        ), listed
        rows = json.dumps(await _rows_after(w, 0))
        for name, tok in w.tokens.items():
            assert tok not in rows, f"{name}'s token is in the ledger"
            assert hash_token(tok) not in rows, f"{name}'s token hash is in the ledger"


# ----------------------------------------------------------------------------- limits
@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``writ.server.run`` (uvicorn as ``writ serve`` runs it) in a child process."""
    tmp = tmp_path_factory.mktemp("limits")
    s = ServerProcess(f"sqlite:///{tmp / 'writ.db'}", tmp)
    try:
        yield s.start()
    finally:
        s.stop()


def exchange(
    port: int, head: bytes, body: Iterator[bytes] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request over a socket (``body`` chunk by chunk, stopping early if the
    server answers first); returns the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        s.setblocking(False)
        for chunk in body or ():
            view = memoryview(chunk)
            while view:
                try:
                    view = view[s.send(view) :]
                except BlockingIOError:
                    pass
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break  # the server answered before reading it all
                except BlockingIOError:
                    pass
            else:
                continue
            break
        s.setblocking(True)
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(65536)
            assert more, f"connection closed after {data!r}"
            data += more
        raw_head, _, rest = data.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            more = s.recv(65536)
            assert more, "connection closed mid-body"
            rest += more
        return int(lines[0].split()[1]), headers, rest[:length]


def _head_of(method: str, path: str, *extra: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: writ.test",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _too_large(status: int, body: bytes) -> str:
    assert status == 413, (status, body[:300])
    err = json.loads(body)["error"]
    assert err["code"] == "too_large"
    return str(err["message"])


def _chunks(total: int, size: int = 64 << 10, end: bool = True) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b"%x\r\n" % n + b" " * n + b"\r\n"
        sent += n
    if end:
        yield b"0\r\n\r\n"


def test_a_body_over_1_mib_is_413_before_it_is_read(real_server: ServerProcess) -> None:
    """Content-Length over the limit: 413 on the headers alone; exactly the limit is read
    (and is then bad JSON, 422)."""
    port = real_server.port
    status, _, body = exchange(
        port,
        _head_of(
            "POST",
            "/v1/leases",
            "Content-Type: application/json",
            f"Content-Length: {MAX_BODY + 1}",
        ),
        iter([b" " * (64 << 10)]),
    )
    assert str(MAX_BODY) in _too_large(status, body)
    status, _, body = exchange(
        port,
        _head_of(
            "POST", "/v1/leases", "Content-Type: application/json", f"Content-Length: {MAX_BODY}"
        ),
        iter([b" " * MAX_BODY]),
    )
    assert status == 422 and json.loads(body)["error"]["code"] == "invalid", body[:300]


def test_a_chunked_body_over_1_mib_is_413(real_server: ServerProcess) -> None:
    """No Content-Length (chunked): 413 once more than the limit has arrived; a chunked
    body under the limit is served as usual."""
    port = real_server.port
    status, _, body = exchange(
        port,
        _head_of(
            "POST", "/v1/leases", "Content-Type: application/json", "Transfer-Encoding: chunked"
        ),
        _chunks(MAX_BODY + (256 << 10)),
    )
    _too_large(status, body)
    good = json.dumps({"resource": f"sec/{unique('c')}", "intent": "chunked"}).encode()
    pieces = [good[:10], good[10:]]
    status, _, body = exchange(
        port,
        _head_of(
            "POST", "/v1/leases", "Content-Type: application/json", "Transfer-Encoding: chunked"
        ),
        iter([*(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces), b"0\r\n\r\n"]),
    )
    assert status == 201, body[:300]


@pytest.mark.parametrize("shape", ["one huge header", "many headers", "a megabyte"])
def test_huge_headers_are_413(real_server: ServerProcess, shape: str) -> None:
    """A header block over 16 KiB — one long value, many small headers, or a megabyte —
    is 413 ``too_large``; 10 KiB of headers is fine."""
    extra = {
        "one huge header": [f"X-Big: {'a' * (MAX_HEADERS + 1)}"],
        "many headers": [f"X-H{i}: {'a' * 100}" for i in range(MAX_HEADERS // 100)],
        "a megabyte": [f"X-Big: {'a' * (1 << 20)}"],
    }[shape]
    status, _, body = exchange(real_server.port, _head_of("GET", "/v1/whoami", *extra))
    assert "headers" in _too_large(status, body)
    status, _, body = exchange(
        real_server.port, _head_of("GET", "/v1/whoami", f"X-Ok: {'a' * (10 << 10)}")
    )
    assert status == 200 and json.loads(body)["name"] == "admin"


def test_malformed_requests_never_get_a_500(real_server: ServerProcess) -> None:
    """Broken framing is refused by uvicorn itself (400, before writ sees it); odd but
    well-formed requests get writ's own answers; the server stays up and logs no error."""
    port = real_server.port
    framing = [
        ("Content-Length: abc",),
        ("Content-Length: -5",),
        ("Content-Length: 5", "Transfer-Encoding: chunked"),  # request smuggling shape
        ("Content-Length: 2", f"Content-Length: {MAX_BODY * 3}"),
    ]
    for extra in framing:
        status, _, _ = exchange(port, _head_of("POST", "/v1/leases", *extra))
        assert status == 400, extra
    odd = [
        (_head_of("GET", "/v1/resources/a%00b"), 422),
        (_head_of("GET", f"/v1/resources/{'a' * 20000}"), 422),
        (_head_of("GET", "/v1/whoami", "X-Latin: \xff\xfe"), 200),
        (b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", 401),
        (b"GET /v1/health HTTP/1.0\r\n\r\n", 200),
        (
            _head_of(
                "POST", "/v1/leases", "Content-Type: application/json", "Content-Length: 200000"
            )
            + b"[" * 100000
            + b"]" * 100000,
            422,
        ),
    ]
    for head, want in odd:
        status, _, body = exchange(port, head)
        assert status == want, (head[:80], status, body[:300])
    status, _, _ = exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    logs = real_server.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs
