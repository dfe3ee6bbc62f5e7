"""The HTTP request bodies (PROTOCOL.md): one pydantic model per body, each refusing unknown
fields and non-text strings."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from writ.core.validate import check_body
from writ.engine.hooks import MAX_WAIT_S


class _Body(BaseModel):
    """Every body: no unknown fields; every string in it (keys and free-form values
    included) is text, nested at most 32 levels (:func:`writ.core.validate.check_body`, the same
    check the lean path, the MCP tools and the CLI apply); numbers are numbers, never
    booleans or strings (``strict`` on each numeric field)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        check_body(data)  # raises Invalid (422, naming the field), answered as it is
        return data


class PrincipalIn(_Body):
    name: str = Field(description="1-64 of a-z 0-9 . _ -", examples=["perf-agent"])
    kind: Literal["agent", "human", "queue", "portal"]
    vendor: str | None = None
    wake: str | None = Field(None, description="the exact call that wakes this principal")
    admin: bool = False
    queues: list[str] | None = Field(
        None, description="humans only: the on-call queues it is a member of (v1.1)"
    )
    expires_in_s: float | None = Field(
        None,
        ge=1,
        strict=True,
        description="the token is refused this many seconds from now (v1.1)",
    )


class RollbackPlan(_Body):
    allowed: bool = False
    path: str | None = Field(None, examples=["/internal/db/rollback?txn=8841"])
    key_holder: str | None = Field(None, examples=["svc-ops-princess"])
    override_queue: str | None = Field(None, examples=["svc-ops-princess"])
    denominator: str | None = Field(None, examples=["incident_minutes"])


class AcquireIn(_Body):
    resource: str = Field(examples=["prod/db"])
    intent: str = Field(examples=["double capacity"])
    ttl_s: float = Field(30, ge=1, le=3600, strict=True)
    wait_s: float = Field(0, ge=0, le=MAX_WAIT_S, strict=True)
    touches: list[str] | None = Field(None, examples=[["capacity"]])
    consent_id: str | None = None
    rollback: RollbackPlan | None = None


class RenewIn(_Body):
    ttl_s: float | None = Field(None, ge=1, le=3600, strict=True)


class RevokeIn(_Body):
    runbook: str = Field(examples=["R-44"])
    paged: str = Field(examples=["oncall-jane"])
    reason: str = Field(examples=["holder stuck after 02:17 alert"])
    waive_lock_delay: bool = False


class GateCheckIn(_Body):
    caller_token: str | None = Field(None, description="the caller's own writ bearer token")
    lease_id: str | None = None
    fencing_token: StrictInt | str | None = None
    resource: str
    method: str = "POST"
    path: str = "/"
    attribute: str | None = Field(
        None, description="the route's attribute: the lease's touches must name it"
    )


class ChangeIn(_Body):
    attribute: str = Field(examples=["capacity"])
    summary: str = Field(examples=["capacity 4→8"])
    before: Any = None
    after: Any = None
    protect_s: float | None = Field(None, ge=0, le=86_400, strict=True)
    fencing_token: int | None = Field(
        None, description="checked against the lease's, if given", strict=True
    )


class ConsentIn(_Body):
    change_id: str
    reason: str


class RollbackIn(_Body):
    lease_id: str | None = None
    change_id: str | None = None
    reason: str


class DefectIn(_Body):
    notes: str


class FreezeIn(_Body):
    prefix: str = Field(examples=["prod"])
    reason: str
    until: str | None = Field(None, description="RFC 3339 time, or a duration like 30m")
    allow: list[str] | None = None
