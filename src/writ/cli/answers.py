"""A server's answers as the CLI shows them, once their shape is what writ sends (PROTOCOL.md).

The client already refuses an answer that is not a JSON object (:mod:`writ.client._wire`);
these checks go on from there, for each field a command prints or decides by. Whatever
answers at ``--url`` (a proxy, another service, a broken server) and says ``{}`` to everything
made ``writ acquire`` print ``granted None for None`` and exit 0, ``writ who`` say "nobody",
``writ policy explain`` end in a ``KeyError`` traceback, and ``writ audit verify`` print
``ok: many rows`` for ``{"ok": "yes", "rows": "many"}``. Each checker returns the answer
unchanged, or raises :class:`~writ.Unavailable`, which the CLI shows as one line,
``writ: unavailable: the server answered ... which writ never sends: {...}`` (exit 1), in the
text and ``--json`` output alike.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from typing import Any

from writ.client._leases import _checked_lease
from writ.core.errors import Unavailable
from writ.core.textsafe import printable

__all__ = ["authority", "fields", "lease", "resource", "verify", "wake", "who"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _shown(body: Any) -> str:
    return printable(reprlib.repr(body))


def bad(what: str, problem: str, body: Any) -> Unavailable:
    """The error for an answer to ``what`` with ``problem`` (one line, its text escaped)."""
    return Unavailable(
        f"the server answered {what} with {problem}, which writ never sends: {_shown(body)}; "
        "is --url (WRIT_URL) a writ server?"
    )


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) for i in v)


def _objects(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, dict) for i in v)


def fields(
    body: Any,
    what: str,
    *,
    text: Iterable[str] = (),
    maybe_text: Iterable[str] = (),
    ints: Iterable[str] = (),
    maybe_ints: Iterable[str] = (),
    bools: Iterable[str] = (),
    maybe_names: Iterable[str] = (),
) -> dict[str, Any]:
    """``body`` once it is an object whose ``text`` fields are non-empty strings, ``ints``
    whole numbers of 0 or more, ``bools`` JSON booleans and ``maybe_names`` lists of strings
    (queues, an allow list, warnings); the ``maybe_`` ones may also be absent or ``null``."""
    if not isinstance(body, dict):
        raise bad(what, "something that is not a JSON object", body)
    checks = (
        (text, False, _text, "text"),
        (maybe_text, True, _text, "text"),
        (ints, False, _int, "a whole number"),
        (maybe_ints, True, _int, "a whole number"),
        (bools, False, lambda v: isinstance(v, bool), "true or false"),
        (maybe_names, True, _names, "a list of names"),
    )
    for names, optional, ok, kind in checks:
        for name in names:
            v = body.get(name)
            if not (ok(v) or (optional and v is None)):
                said = "no " + name if name not in body else f"a {name} that is not {kind}"
                raise bad(what, said, body)
    return body


def lease(body: Any, what: str) -> dict[str, Any]:
    """A Lease (acquire, renew, release, revoke): :func:`_checked_lease`'s fields (the checks
    ``writ run`` makes), and a resource, holder and state that are text."""
    if not isinstance(body, dict):
        raise bad(what, "something that is not a JSON object", body)
    _checked_lease(body)
    plan = body.get("rollback")
    if plan is not None:
        fields(plan, f"{what}'s rollback plan", maybe_names=("warnings",))
    return fields(body, what, text=("resource", "holder", "state"))


def resource(answer: Any, name: str) -> dict[str, Any]:
    """``GET /v1/resources/{resource}`` as a wait reads it (:mod:`writ.cli.wait`): the leases
    it conflicts with and its queue lists of objects, its lease an object or ``null``, a place
    in the queue a whole number."""
    what = f"the state of {name}"
    body = fields(answer, what)
    for key in ("conflicting", "queue"):
        if body.get(key) is not None and not _objects(body[key]):
            raise bad(what, f"a {key} that is not a list of objects", body)
    if body.get("lease") is not None and not isinstance(body["lease"], dict):
        raise bad(what, "a lease that is not an object", body)
    for place in body.get("queue") or []:
        if place.get("position") is not None and not _int(place["position"]):
            raise bad(what, "a queue position that is not a whole number", body)
    return body


def who(answer: Any) -> dict[str, Any]:
    """``GET /v1/who``: a time, and a lock_holder that is a name, ``"none"``, or ``null`` (the
    row naming the holder is unreadable, or it is hidden)."""
    body = fields(answer, "who", text=("at",), maybe_text=("lock_key",))
    if "lock_holder" not in body:
        raise bad("who", "no lock_holder", body)
    holder, lease_ = body["lock_holder"], body.get("lease")
    if not (holder is None or _text(holder)):
        raise bad("who", "a lock_holder that is not a name", body)
    if lease_ is not None and not isinstance(lease_, dict):
        raise bad("who", "a lease that is not an object", body)
    unreadable = body.get("unreadable_rows") or []
    if not isinstance(unreadable, list) or not all(_int(s) for s in unreadable):
        raise bad("who", "unreadable_rows that are not a list of row numbers", body)
    return body


def authority(body: Any) -> dict[str, Any]:
    """``GET /v1/authority``: who, where, the mode, whether it may write and observe, and why."""
    return fields(
        body,
        "the authority question",
        text=("principal", "resource", "mode", "message"),
        maybe_text=("rule",),
        bools=("write", "observe"),
    )


def wake(body: Any) -> dict[str, Any]:
    """``POST /v1/leases/{id}/wake``: the lease, its resource and holder, when it was woken."""
    return fields(
        body,
        "the wake",
        text=("lease_id", "resource", "holder"),
        maybe_text=("already_woken_at",),
    )


def verify(answer: Any) -> dict[str, Any]:
    """``GET /v1/audit/verify``: ``ok`` true or false (never "yes", never ``NaN``), a whole
    number of rows, a head that is a SHA-256 in hex, and the first bad seq a whole number or
    ``null``."""
    body = fields(answer, "the audit verification", ints=("rows",), maybe_ints=("first_bad_seq",))
    if body.get("ok") is not True and body.get("ok") is not False:
        raise bad("the audit verification", "an ok that is not true or false", body)
    head = body.get("head")
    if not (isinstance(head, str) and _HEX64.fullmatch(head)):
        raise bad("the audit verification", "a head that is not a SHA-256 in hex", body)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise bad("the audit verification", "a reason that is not text", body)
    return body
