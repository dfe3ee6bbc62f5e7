"""The records writ keeps: principals, leases, waiters. Plain dataclasses, no I/O."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from writ.core.clock import rfc3339
from writ.core.wake_routes import redact

KINDS = ("agent", "human", "queue", "portal")
NAME = re.compile(r"[a-z0-9._-]{1,64}")  # a principal's name
LEASE_STATES = ("held", "released", "expired", "revoked")


_ID_BYTES = 12
_pool: list[bytes] = []


def new_id(prefix: str) -> str:
    """A short random identifier like ``ls_3kq9…`` (URL-safe, 96 bits from the OS's
    CSPRNG). The random bytes are drawn 4 KiB at a time — one system call per ~340 ids,
    on the grant path — and the pool is dropped in a forked child, so parent and child
    never hand out the same id."""
    if not _pool:
        raw = os.urandom(_ID_BYTES * 341)
        _pool.extend(raw[i : i + _ID_BYTES] for i in range(0, len(raw), _ID_BYTES))
    return f"{prefix}_{base64.urlsafe_b64encode(_pool.pop()).decode()}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.clear)


@dataclass(slots=True)
class Principal:
    name: str
    kind: str
    vendor: str | None = None
    wake: str | None = None
    admin: bool = False
    created_at: float = 0.0
    queues: list[str] = field(default_factory=list)  # a human's on-call queues (v1.1)
    disabled_at: float | None = None  # set while disabled: its token is refused
    disabled_reason: str | None = None
    token_expires_at: float | None = None  # its token is refused from then on
    # the JWT issuer this request's caller signed in through (never stored; None: a writ token)
    signed_in_by: str | None = field(default=None, compare=False)
    # the engine's count of principal changes when its token was checked (never stored;
    # None: not read for a token, e.g. handed in by a library caller)
    checked_gen: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "vendor": self.vendor,
            # a PagerDuty routing key or a Slack webhook URL is a secret: shown redacted
            "wake": redact(self.wake) if self.wake else None,
            "admin": self.admin,
            "created_at": rfc3339(self.created_at),
            "disabled": self.disabled_at is not None,
            "token_expires_at": rfc3339(self.token_expires_at),
        }
        if self.kind == "human":
            out["queues"] = list(self.queues)
        if self.disabled_at is not None:
            out["disabled_at"] = rfc3339(self.disabled_at)
            out["disabled_reason"] = self.disabled_reason
        return out

    @property
    def is_human(self) -> bool:
        """Humans and human on-call queues hold keys; agents and portals never do."""
        return self.kind in ("human", "queue")


@dataclass(slots=True)
class Lease:
    lease_id: str
    resource: str
    holder: str
    intent: str
    fencing_token: int
    acquired_at: float
    expires_at: float
    ttl_s: float
    touches: list[str] = field(default_factory=lambda: ["*"])
    state: str = "held"
    rollback: dict[str, Any] | None = None
    ended_at: float | None = None

    @property
    def lock_key(self) -> str:
        return f"{self.resource}/{self.fencing_token}"

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """The wire Lease. A held lease past its expiry reads as ``expired``."""
        state = self.state
        if state == "held" and now is not None and self.expires_at <= now:
            state = "expired"
        ttl = int(self.ttl_s) if float(self.ttl_s).is_integer() else self.ttl_s
        return {
            "lease_id": self.lease_id,
            "resource": self.resource,
            "holder": self.holder,
            "intent": self.intent,
            "fencing_token": self.fencing_token,
            "lock_key": self.lock_key,
            "acquired_at": rfc3339(self.acquired_at),
            "expires_at": rfc3339(self.expires_at),
            "ttl_s": ttl,
            "touches": list(self.touches),
            "state": state,
            "rollback": self.rollback,
            "ended_at": rfc3339(self.ended_at),
        }


@dataclass(slots=True)
class Waiter:
    """A request queued behind a conflicting lease (FIFO by ``seq``)."""

    waiter_id: str
    seq: int
    resource: str
    principal: str
    request: dict[str, Any]
    enqueued_at: float
    deadline: float
    lease_id: str | None = None  # set when granted by a handoff


def queued_as(w: Waiter) -> str:
    """What a ``lease.queued`` row says of the waiter it queued, at the end of its notes:
    ``; waiter ID, request sha256:HEX``, the digest of the request as the waiters table
    keeps it (see :func:`request_digest`). Verify checks the table against it
    (:mod:`writ.stores.queued`)."""
    return f"; waiter {w.waiter_id}, request {request_digest(w.request)}"


def waited_as(waiter_id: str | None) -> str:
    """What a row that ends a queued request's wait (its grant, refusal or withdrawal) says of
    it, at the end of its notes: ``; waiter ID`` (nothing for a request that never queued)."""
    return f"; waiter {waiter_id}" if waiter_id else ""


def named(kind: str, object_id: str) -> str:
    """What a row that lifts a freeze, answers a consent, or asks for or decides a rollback
    says of it, at the very end of its notes, after any human's or agent's words: ``; freeze
    ID``, ``; consent ID`` or ``; rollback ID`` (the id writ keeps it by). An older writ's rows
    end otherwise."""
    return f"; {kind} {object_id}"


_NAMED = re.compile(r"; (freeze|consent|rollback) ((?:frz|cns|rb)_[A-Za-z0-9_-]+)\Z")


def named_in(notes: str, kind: str) -> tuple[str, str | None]:
    """``(head, id)`` of notes that end as :func:`named` words it for ``kind``: writ's own
    suffix, the last thing in them (words before it that read so are the head's); ``(notes,
    None)`` for notes that name none (an older writ's row)."""
    m = _NAMED.search(notes)
    if m is None or m[1] != kind:
        return notes, None
    return notes[: m.start()], m[2]


LOCK_DELAYED = "; lock delay until "


def lock_delayed(until: float) -> str:
    """What a row that ends a lease with a lock delay (``lease.expired``, ``lease.revoked``)
    says of it, at the end of its notes: ``; lock delay until T`` (``T`` as
    :func:`~writ.core.clock.rfc3339` stamps it: its ``delay`` object's ``until`` and
    ``expires_at``). A row without it at its end wrote no delay (none, waived, or an older
    writ's row); writ ends one whose own words would read as a delay ``; no lock delay``."""
    return f"{LOCK_DELAYED}{rfc3339(until)}"


def request_digest(request: Any) -> str:
    """``sha256:HEX`` of a queued request's JSON, keys sorted, without spaces: the same for
    the request the engine queued and for the one read back from the waiters table."""
    body = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored policy object as shown on the wire (without the store's ``expires_at_ts``)."""
    return {k: v for k, v in obj.items() if k != "expires_at_ts"}


def data(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored policy object's own document, to write back (without the columns the store
    merged in: ``state`` and ``expires_at_ts``)."""
    return {k: v for k, v in obj.items() if k not in ("state", "expires_at_ts")}
