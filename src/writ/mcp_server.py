"""``writ mcp``: writ's protocol as MCP tools and resources, for any MCP-speaking agent.

One server process speaks for one principal: it calls writ with the token it was started
with (``--token`` / ``WRIT_TOKEN``), so an agent can never act as somebody else, and no tool
takes a token or a principal name. It is stateless: lease ids and fencing tokens are
returned by one tool and passed as arguments to the next, never kept in a session.

There is deliberately no tool to approve or deny a rollback, revoke a lease, freeze a
prefix or add a principal: those belong to humans and their queues (and writ refuses an
agent's token for them anyway).

Refusals come back as tool errors (``isError``) whose text says what happened and what to
do next: who holds the resource and until when, whose consent is needed and how to ask,
that only the human queue can approve a rollback.

Transports: stdio (the default; the client starts ``writ mcp``) and streamable HTTP
(``--transport http``, endpoint ``/mcp``).
"""

from __future__ import annotations

import hmac
import inspect
import json
import sys
from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .client import AsyncClient
from .errors import (
    ConsentRequired,
    Forbidden,
    Frozen,
    Held,
    Invalid,
    LeaseLost,
    NotFound,
    Unauthenticated,
    Unavailable,
    WritError,
)
from .limits import Limits

__all__ = ["DEFAULT_HTTP_PORT", "INSTRUCTIONS", "TOOL_NAMES", "create_server", "serve"]

DEFAULT_HTTP_PORT = 7413
HUMAN_KINDS = ("human", "queue")
MAX_EVENTS = 200

INSTRUCTIONS = """\
writ decides which agent holds write authority on a production resource right now.
Before you change a resource (a path like `prod/db` or `orders/checkout-write`), call
acquire_write_authority and keep the returned lease_id and fencing_token: pass them to
renew_lease, record_change and release_lease, and send the fencing token with your writes
(HTTP header `Writ-Fencing-Token`, with `Writ-Lease: <lease_id>` through a writ gate).
If you are refused, read the error: it names who holds the resource and until when, or whose
consent you need. Do not write to a resource you do not hold. Renew before expires_at;
release as soon as you are done. Record each change you make (record_change) so nobody
silently undoes it. Undoing another agent's recent change needs its consent (ask_consent).
You may request a rollback, but only the human queue that holds the key can approve it.
"""

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

# The tools this server offers, in the order it registers them.
TOOL_NAMES = (
    "acquire_write_authority",
    "renew_lease",
    "release_lease",
    "get_lease",
    "who_holds",
    "resource_status",
    "list_held_leases",
    "record_change",
    "ask_consent",
    "get_consent",
    "answer_consent",
    "request_rollback",
    "get_rollback",
    "watch_events",
    "whoami",
    "explain_authority",
    "wake_holder",
)


Resource = Annotated[
    str,
    Field(
        description="resource path: segments of a-z 0-9 . _ - joined by '/', e.g. 'prod/db'",
        examples=["prod/db"],
        min_length=1,
        max_length=256,
    ),
]


def _not_bool(value: Any) -> Any:
    """Booleans are not numbers: ``ttl_s: true`` is refused, never a 1-second lease."""
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


NOT_BOOL = BeforeValidator(_not_bool)

# An id as writ hands them out (``ls_3kq9…``: letters, digits, ``_`` and ``-``), checked
# before it goes into a URL path: never a ``/``, ``..``, ``?``, ``#`` or ``%``.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
LeaseId = Annotated[
    str,
    Field(
        description="the lease_id returned by acquire_write_authority",
        min_length=1,
        pattern=ID_PATTERN,
    ),
]


class RollbackPlan(BaseModel):
    """How to undo what you are about to do, and which human queue holds the key."""

    model_config = ConfigDict(extra="forbid")

    allowed: bool = Field(
        description="true if this change can be rolled back by calling `path`; then path, "
        "key_holder and override_queue are required"
    )
    path: str | None = Field(
        None,
        description="the literal route that rolls it back: a path beginning with '/' or an "
        "http(s) URL (not a dashboard or button name)",
        examples=["/internal/db/rollback?txn=8841"],
    )
    key_holder: str | None = Field(
        None,
        description="the human on-call queue that may approve the rollback",
        examples=["svc-ops-princess"],
    )
    override_queue: str | None = Field(
        None,
        description="the human queue paged if this lease gets stuck",
        examples=["svc-ops-princess"],
    )
    denominator: str | None = Field(
        None, description="what the rollback is measured against", examples=["incident_minutes"]
    )


# ----------------------------------------------------------------------------- error text
def _holder_text(h: dict[str, Any]) -> str:
    text = (
        f"{h.get('holder')} holds write authority on {h.get('resource')} "
        f"(intent: {h.get('intent')!r}) since {h.get('acquired_at')}, "
        f"until {h.get('expires_at')} unless renewed"
    )
    if h.get("fencing_token") is not None:
        text += f", fencing token {h['fencing_token']}"
    return text


def guidance(err: WritError) -> str:
    """What a refusal means for the agent and what to do next, for a tool error (from the
    error's fact: the next step is worded here in tools, not in another surface's terms)."""
    d = err.details
    if isinstance(err, Held):
        h = d.get("holder")
        head = f"Refused: {_holder_text(h)}." if isinstance(h, dict) else f"Refused: {err.fact}."
        if d.get("reason") == "lock_delay":
            head += f" The previous holder died; new grants wait until {d.get('retry_at')}."
        nxt = (
            "Next: do not write to it. Call acquire_write_authority again with wait_s (up to "
            "300) to queue for it in FIFO order, or watch_events on the resource to see when "
            "it is released. Agents cannot take it over; if the holder is stuck, a human "
            "on-call queue can revoke its lease."
        )
    elif isinstance(err, ConsentRequired):
        c = d.get("change") or {}
        head = (
            f"Refused: {d.get('author')} changed {c.get('attribute')} on "
            f"{c.get('resource')} at {c.get('at')} ({c.get('summary')}); that change is "
            f"protected until {d.get('protected_until')} and your lease would touch it."
        )
        nxt = (
            f"Next: call ask_consent(change_id={c.get('change_id')!r}, reason=<why you must "
            f"touch it>). {d.get('author')} (or a human/queue) answers; wait with "
            "get_consent(consent_id, wait_s=...). When its status is 'granted', call "
            "acquire_write_authority again with consent_id set. A consent that expires "
            "unanswered is escalated to a human, never counted as a denial. Or leave "
            f"{c.get('attribute')} alone (narrow `touches`) or wait until "
            f"{d.get('protected_until')}."
        )
    elif isinstance(err, Frozen):
        head = f"Refused: {err.fact}."
        nxt = "Next: do not retry until a human lifts the freeze."
    elif isinstance(err, LeaseLost):
        head = f"Your lease is gone: {err.fact}."
        nxt = (
            "Next: stop writing to the resource now: you no longer hold write authority and "
            "writes with the old fencing token will be refused. To continue, call "
            "acquire_write_authority again (you will get a new, higher fencing token)."
        )
    elif isinstance(err, Forbidden) and isinstance(d.get("may"), dict):
        # not this agent's authority (closed mode): say what it may do instead
        may = d["may"]

        def _few(key: str) -> str:
            items = [x or "(everything)" for x in may.get(key) or []]
            return ", ".join(items) if items else "nothing"

        head = f"Forbidden: {err.message}."
        nxt = (
            f"Next: do not write to it. You may take write authority under: {_few('write')}; "
            f"read under: {_few('observe')}; name in touches: {_few('attributes')}. "
            "To get something done on it, ask its holder (wake_holder) or a human to act, "
            "or ask a human to change the grant"
            + (f" at {d['rule']}" if d.get("rule") else "")
            + ". explain_authority(resource) says what you may do on any resource."
        )
    elif isinstance(err, Forbidden):
        head = f"Forbidden: {err.fact}."
        nxt = (
            "Only the human queue that holds the key can approve a rollback; agents may "
            "only request one (request_rollback)."
            if d.get("key_holder")
            else "Next: this is not yours to do; ask a human."
        )
    elif isinstance(err, Unauthenticated):
        head = f"writ rejected this MCP server's token: {err.fact}."
        nxt = (
            "Nothing was done. The operator must start `writ mcp` with a valid agent token "
            "(--token or WRIT_TOKEN). Do not write to production resources meanwhile."
        )
    elif isinstance(err, Unavailable):
        head = f"writ cannot be reached: {err.fact}."
        nxt = (
            "Nothing was granted or changed. Do not write to production resources without "
            "write authority; retry later."
        )
    elif isinstance(err, (Invalid, NotFound)):
        head = f"{err.fact}."
        nxt = "Next: fix the arguments and call again."
    else:
        head, nxt = f"writ refused: {err.fact}.", "Next: read the details below."
    details = {"code": err.code, **{k: v for k, v in d.items() if v is not None}}
    return f"{head}\n{nxt}\nDetails: {json.dumps(details, default=str)}"


def _discard(aw: Awaitable[Any]) -> None:
    if inspect.iscoroutine(aw):
        aw.close()


# ----------------------------------------------------------------------------- the server
def create_server(
    client: AsyncClient, name: str = "writ", allow_human: bool = False
) -> MCPServer[Any]:
    """An :class:`MCPServer` whose tools call writ through ``client`` (one principal).

    Unless ``allow_human``, the tools refuse to work when the token belongs to a human, a
    queue or an admin: a model must never answer consents or act with a human's authority.
    """
    server: MCPServer[Any] = MCPServer(
        name,
        title="writ write authority",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
    )
    identity: dict[str, Any] = {}

    async def _guard() -> None:
        """Check once whose token this server holds (refusing human authority)."""
        if allow_human or identity.get("name"):
            return
        if "refusal" not in identity:
            me = await client.whoami()
            if me.get("kind") not in HUMAN_KINDS and not me.get("admin"):
                identity.update(me)
                return
            identity["refusal"] = (
                f"This MCP server holds the token of {me.get('name')}, a"
                f"{'n admin' if me.get('admin') else ' ' + str(me.get('kind'))}: a model must "
                "not act with a human's authority (answering consents, human-only routes). "
                "Nothing was done. The operator must start `writ mcp` with an agent's own token "
                "(or pass --allow-human-token deliberately)."
            )
        raise ToolError(identity["refusal"])

    async def _call(aw: Awaitable[Any]) -> dict[str, Any]:
        try:
            try:
                await _guard()
            except BaseException:
                _discard(aw)
                raise
            result = await aw
        except WritError as err:
            raise ToolError(guidance(err)) from err
        return dict(result) if isinstance(result, dict) else {"result": result}

    @server.tool(annotations=_WRITE)
    async def acquire_write_authority(
        resource: Resource,
        intent: Annotated[
            str,
            Field(
                description="what you are about to do, in a sentence a human on call understands",
                examples=["double capacity after the 02:17 latency alert"],
                min_length=1,
            ),
        ],
        ttl_s: Annotated[
            float,
            NOT_BOOL,
            Field(
                description="lease time-to-live in seconds; renew before it runs out (renew_lease) "
                "or you lose write authority. Pick more than your slowest step.",
                ge=1,
                le=3600,
            ),
        ] = 300,
        wait_s: Annotated[
            float,
            NOT_BOOL,
            Field(
                description="if someone else holds it, wait up to this many seconds in the FIFO "
                "queue instead of being refused at once",
                ge=0,
                le=300,
            ),
        ] = 0,
        touches: Annotated[
            list[str] | None,
            Field(
                description="attributes you may change, e.g. ['capacity']; default ['*'] "
                "(everything). Used to protect other agents' recent changes.",
            ),
        ] = None,
        consent_id: Annotated[
            str | None,
            Field(
                description="a granted consent (from ask_consent) when a protected change by "
                "another agent stands in the way",
                pattern=ID_PATTERN,
            ),
        ] = None,
        rollback: Annotated[
            RollbackPlan | None,
            Field(
                description="how your change can be undone and which human queue holds the key",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Acquire write authority (a lease) on a resource before changing it.

        Returns the lease: keep lease_id and fencing_token and pass them to the other
        tools; send the fencing token with every write (header Writ-Fencing-Token, plus
        Writ-Lease: <lease_id> through a writ gate). Write authority on a resource also
        covers its sub-paths and excludes its ancestors and blast-radius group. Refused
        with the holder's name and expiry if another agent holds it.
        """
        lease = await _call(
            client.acquire(
                resource,
                intent,
                ttl_s,
                wait_s,
                touches,
                consent_id,
                rollback.model_dump(exclude_none=True) if rollback else None,
            )
        )
        lease["next"] = (
            f"You hold write authority on {lease['resource']} until {lease['expires_at']}. "
            f"Renew with renew_lease(lease_id={lease['lease_id']!r}) before then, send "
            f"Writ-Fencing-Token: {lease['fencing_token']} with your writes, record each change "
            "with record_change, and release_lease as soon as you are done."
        )
        return lease

    @server.tool(annotations=_WRITE)
    async def renew_lease(
        lease_id: LeaseId,
        ttl_s: Annotated[
            float | None,
            NOT_BOOL,
            Field(
                description="new time-to-live from now, in seconds (default: the lease's own)",
                ge=1,
                le=3600,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Extend your lease (same fencing token). Fails with lease_lost if it already expired
        or was revoked: then stop writing and acquire again."""
        return await _call(client.renew(lease_id, ttl_s))

    @server.tool(annotations=_WRITE)
    async def release_lease(lease_id: LeaseId) -> dict[str, Any]:
        """Give write authority back as soon as you are done, so the next agent in line gets
        it. A lease that was already lost cannot be released (and never frees a successor's)."""
        return await _call(client.release(lease_id))

    @server.tool(annotations=_READ)
    async def get_lease(lease_id: LeaseId) -> dict[str, Any]:
        """One lease in any state (held, released, expired, revoked), with its expiry."""
        return await _call(client.get_lease(lease_id))

    @server.tool(annotations=_READ)
    async def who_holds(
        resource: Resource,
        at: Annotated[
            str | None,
            Field(
                description="an RFC 3339 time in the past; default now",
                examples=["2026-05-16T02:17:00Z"],
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Who holds (or held, at a past time) write authority on a resource, from the audit log.
        lock_holder is a principal name or "none"."""
        return await _call(client.who(resource, at))

    @server.tool(annotations=_READ)
    async def resource_status(resource: Resource) -> dict[str, Any]:
        """A resource right now: its lease (or null), the queue of waiters, changes still
        protected from being undone, and whether a human froze it."""
        return await _call(client.resource(resource))

    @server.tool(annotations=_READ)
    async def list_held_leases(
        resource: Annotated[
            str | None,
            Field(
                description="only leases on this resource path prefix; default all",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Every lease held right now (under a prefix), each with its holder, intent, expiry
        and number of waiters."""
        return await _call(client.status(resource))

    @server.tool(annotations=_WRITE)
    async def record_change(
        lease_id: LeaseId,
        attribute: Annotated[
            str,
            Field(
                description="what you changed, as one word other agents would use in `touches`",
                examples=["capacity"],
                min_length=1,
            ),
        ],
        summary: Annotated[
            str,
            Field(
                description="the change in a few words",
                examples=["capacity 4 -> 8"],
                min_length=1,
            ),
        ],
        before: Annotated[Any, Field(description="the value before (any JSON)")] = None,
        after: Annotated[Any, Field(description="the value after (any JSON)")] = None,
        protect_s: Annotated[
            float | None,
            NOT_BOOL,
            Field(
                description="how long other agents need your consent to undo it (default: policy)",
                ge=0,
                le=86400,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Record a change you made under your lease. For a while (protect_s) another agent
        whose lease would touch this attribute must first get your (or a human's) consent."""
        return await _call(client.change(lease_id, attribute, summary, before, after, protect_s))

    @server.tool(annotations=_WRITE)
    async def ask_consent(
        change_id: Annotated[
            str,
            Field(
                description="the protected change you need to touch (from the consent_required "
                "refusal, or resource_status)",
                min_length=1,
                pattern=ID_PATTERN,
            ),
        ],
        reason: Annotated[
            str,
            Field(
                description="why you must touch it, for its author or the human who answers",
                min_length=1,
            ),
        ],
        wait_s: Annotated[
            float,
            NOT_BOOL,
            Field(
                description="wait up to this many seconds for an answer before returning",
                ge=0,
                le=300,
            ),
        ] = 0,
    ) -> dict[str, Any]:
        """Ask the author of a protected change (or a human) to let you touch it. Returns the
        consent with its status (pending, granted, denied, expired); when granted, pass its
        consent_id to acquire_write_authority. It is single-use."""
        consent = await _call(client.ask_consent(change_id, reason))
        if wait_s and consent.get("status") == "pending":
            consent = await _call(client.consent(consent["consent_id"], wait_s))
        return consent

    @server.tool(annotations=_READ)
    async def get_consent(
        consent_id: Annotated[
            str, Field(description="the consent_id from ask_consent", pattern=ID_PATTERN)
        ],
        wait_s: Annotated[
            float,
            NOT_BOOL,
            Field(
                description="wait up to this many seconds while it is still pending",
                ge=0,
                le=300,
            ),
        ] = 0,
    ) -> dict[str, Any]:
        """A consent request and its status: pending, granted, denied, expired (nobody
        answered in time: escalated to a human, not a denial) or used."""
        return await _call(client.consent(consent_id, wait_s))

    @server.tool(annotations=_WRITE)
    async def answer_consent(
        consent_id: Annotated[str, Field(description="a consent asked of you", pattern=ID_PATTERN)],
        decision: Annotated[
            Literal["grant", "deny"],
            Field(
                description="grant lets the requester touch your change once; deny refuses",
            ),
        ],
    ) -> dict[str, Any]:
        """Answer a consent request about a change you authored."""
        if decision == "grant":
            return await _call(client.grant_consent(consent_id))
        return await _call(client.deny_consent(consent_id))

    @server.tool(annotations=_WRITE)
    async def request_rollback(
        reason: Annotated[str, Field(description="why it should be rolled back", min_length=1)],
        lease_id: Annotated[
            str | None,
            Field(
                description="the lease whose change to roll back (give this or change_id)",
                pattern=ID_PATTERN,
            ),
        ] = None,
        change_id: Annotated[
            str | None,
            Field(
                description="the recorded change to roll back (give this or lease_id)",
                pattern=ID_PATTERN,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Ask for a rollback of a lease's change, by the rollback route it declared. Anyone
        may ask; only the human queue holding the key (key_holder) can approve it, never you.
        Follow it with get_rollback."""
        if (lease_id is None) == (change_id is None):
            raise ToolError("Give exactly one of lease_id or change_id.")
        rb = await _call(client.request_rollback(reason, lease_id=lease_id, change_id=change_id))
        rb["next"] = (
            f"Rollback {rb.get('rollback_id')} is {rb.get('status')}. Only {rb.get('key_holder')} "
            "(the human queue holding the key) can approve it; agents cannot. Follow it with "
            "get_rollback."
        )
        return rb

    @server.tool(annotations=_READ)
    async def get_rollback(
        rollback_id: Annotated[
            str, Field(description="the rollback_id from request_rollback", pattern=ID_PATTERN)
        ],
    ) -> dict[str, Any]:
        """A rollback request and its outcome: pending, approved, denied, executed or failed."""
        return await _call(client.get_rollback(rollback_id))

    @server.tool(annotations=_READ)
    async def watch_events(
        resource: Annotated[
            str | None,
            Field(
                description="only events on this resource path prefix; default all",
            ),
        ] = None,
        after_seq: Annotated[
            int | None,
            NOT_BOOL,
            Field(
                description="return events after this seq (next_after_seq of your previous call); "
                "default: only events from now on",
                ge=0,
            ),
        ] = None,
        wait_s: Annotated[
            float,
            NOT_BOOL,
            Field(
                description="wait up to this many seconds for the first new event",
                ge=0,
                le=120,
            ),
        ] = 20,
        limit: Annotated[
            int, NOT_BOOL, Field(description="at most this many events", ge=1, le=MAX_EVENTS)
        ] = 50,
    ) -> dict[str, Any]:
        """Wait for audit events (grants, releases, expiries, changes, consents, rollbacks)
        under a resource. Returns {rows, next_after_seq}: pass next_after_seq back to continue
        where you left off."""
        cursor = await _call(client.last_seq()) if after_seq is None else {"result": after_seq}
        start = int(cursor["result"])
        out = await _call(client.events(resource, start, wait_s))
        rows = list(out.get("rows") or [])[:limit]
        nxt = int(rows[-1]["seq"]) if rows else max(start, int(out.get("next_after_seq") or start))
        return {"rows": rows, "next_after_seq": nxt}

    @server.tool(annotations=_READ)
    async def whoami() -> dict[str, Any]:
        """The principal this server acts as (fixed when it was started)."""
        return await _call(client.whoami())

    @server.tool(annotations=_READ)
    async def explain_authority(resource: Resource) -> dict[str, Any]:
        """What you may do on a resource: write (take a lease), observe (read its leases and
        events), which attributes you may name in touches, and which line of which policy
        file says so. Ask before acquiring when unsure."""
        me = await _call(client.whoami())
        return await _call(client.authority(str(me.get("name")), resource))

    @server.tool(annotations=_WRITE)
    async def wake_holder(
        lease_id: LeaseId,
        reason: Annotated[
            str,
            Field(
                description="why the holder should look now, in a sentence its operator "
                "understands",
                examples=["p99 has been over the alert for 10 minutes; are you still on it?"],
                min_length=1,
            ),
        ],
    ) -> dict[str, Any]:
        """Ask writ to wake the holder of a lease that stands in your way (the `wake` of a
        refusal's holder). writ calls the holder at most once per 30 s per lease; a later
        call answers with already_woken_at. It does not take the lease away: wait in the
        queue (acquire_write_authority with wait_s) for it."""
        return await _call(client.wake(lease_id, reason))

    # ---- resources -----------------------------------------------------------------------
    async def _read(aw: Awaitable[Any]) -> str:
        try:
            return json.dumps(await _call(aw), indent=2)
        except ToolError as err:
            raise ResourceError(str(err)) from err

    @server.resource(
        "writ://resources/{+path}",
        name="resource",
        mime_type="application/json",
        description="A resource's current lease, queue, protected changes and "
        "freeze, e.g. writ://resources/prod/db",
    )
    async def resource_state(path: str) -> str:
        return await _read(client.resource(path))

    @server.resource(
        "writ://leases",
        name="held-leases",
        mime_type="application/json",
        description="Every lease held right now",
    )
    async def held_leases() -> str:
        return await _read(client.status())

    @server.resource(
        "writ://whoami",
        name="whoami",
        mime_type="application/json",
        description="The principal this server acts as",
    )
    async def me() -> str:
        return await _read(client.whoami())

    return server


# ----------------------------------------------------------------------------- serving
class RequireBearer:
    """Refuse HTTP requests without ``Authorization: Bearer <token>`` (``--http-token``)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                body = json.dumps(
                    {
                        "error": {
                            "code": "unauthenticated",
                            "message": "this writ MCP endpoint needs 'Authorization: Bearer <token>' "
                            "(its --http-token)",
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve(
    client: AsyncClient,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    path: str = "/mcp",
    http_token: str | None = None,
    log_level: str = "warning",
    allow_human: bool = False,
    limits: Limits | None = None,
) -> None:
    """Run the MCP server until its client goes away (stdio) or it is interrupted (http);
    each HTTP connection within ``limits``."""
    server = create_server(client, allow_human=allow_human)
    try:
        if transport == "stdio":
            await server.run_stdio_async()
            return
        import uvicorn

        from .gate import bind, listening_url

        app: ASGIApp = server.streamable_http_app(streamable_http_path=path, host=host)
        if http_token:
            app = RequireBearer(app, http_token)
        sock = bind(host, port)
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=3,
            **(limits or Limits()).uvicorn_options(),
        )
        print(
            f"writ mcp: listening on {listening_url(sock)}{path} (writ at {client.url})",
            file=sys.stderr,
            flush=True,
        )
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await client.aclose()
