"""A field that must say something says something a reader sees. A revoke's runbook, who was
paged and why, a lease's intent, a freeze's or a rollback's reason, a plan's queue: zero-width
spaces, word joiners, bidi marks, soft hyphens, C1 controls or Hangul fillers alone were taken
as words (a revoke's "how" recorded as ``"\\u200b"``), a revoke's fields had no length bound
(900,000 characters stored), and ``writ lint`` accepted such rows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_safety import World, receiver, world  # noqa: F401 (fixtures)
from writ.core.textsafe import visible
from writ.evidence.lint import check_row

UNSEEN = ["\u200b", "\u2060", "\x9b", "\x80", "\u00ad", "\u202e", "\ufeff", "\u3164", " \u200b "]
# default-ignorable, whatever their category: selectors, the combining grapheme joiner
UNSEEN += ["\ufe0f", "\u034f", "\U000e0100", "\u17b4"]


@pytest.mark.parametrize("value", ["", " ", "\t\n", "\x7f", *UNSEEN])
def test_nothing_a_reader_sees_is_not_visible(value: str) -> None:
    assert not visible(value)


@pytest.mark.parametrize("value", ["a", " a ", "é", "日本", "\u200bx", "R-44", "0"])
def test_any_character_a_reader_sees_is_visible(value: str) -> None:
    assert visible(value)


async def _held(w: World) -> dict[str, Any]:
    r = await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": "scale up"})
    assert r.status_code == 201, r.text
    return r.json()


HOW = {"runbook": "R-44", "paged": "oncall-jane", "reason": "stuck holder"}


@pytest.mark.parametrize("field", ["runbook", "paged", "reason"])
async def test_a_revoke_must_say_how_in_words_a_reader_sees(
    world: World,  # noqa: F811
    field: str,
) -> None:
    w = world
    lease = await _held(w)
    before = len(await w.rows())
    for value in UNSEEN:
        body = {**HOW, field: value}
        r = await w.post("oncall-jane", f"/v1/leases/{lease['lease_id']}/revoke", body)
        assert r.status_code == 422, (value, r.text)
        assert field in r.json()["error"]["message"]
    assert len(await w.rows()) == before  # nothing written
    r = await w.get("perf-agent", f"/v1/leases/{lease['lease_id']}")
    assert r.json()["state"] == "held"


async def test_a_revoke_field_is_bounded(world: World) -> None:  # noqa: F811
    w = world
    lease = await _held(w)
    url = f"/v1/leases/{lease['lease_id']}/revoke"
    r = await w.post("oncall-jane", url, {**HOW, "runbook": "R" * 900_000})
    assert r.status_code == 422 and "at most 2000 characters" in r.text, r.text[:200]
    r = await w.post("oncall-jane", url, HOW)
    assert r.status_code == 200 and r.json()["state"] == "revoked", r.text


async def test_an_intent_or_a_reason_of_nothing_seen_is_refused(
    world: World,  # noqa: F811
) -> None:
    w = world
    for value in UNSEEN:
        r = await w.post("perf-agent", "/v1/leases", {"resource": "prod/db", "intent": value})
        assert r.status_code == 422 and "intent" in r.text, r.text
        r = await w.post("oncall-jane", "/v1/freezes", {"prefix": "prod/db", "reason": value})
        assert r.status_code == 422 and "reason" in r.text, r.text
        plan = {"allowed": False, "override_queue": value}
        r = await w.post("perf-agent", "/v1/leases", {**BASE_LEASE, "rollback": plan})
        assert r.status_code == 422 and "rollback.override_queue" in r.text, r.text
    assert not await w.rows("lease.granted") and not await w.rows("freeze.created")


BASE_LEASE = {"resource": "prod/db", "intent": "scale up"}


@pytest.mark.parametrize("value", UNSEEN)
def test_lint_reads_a_name_or_a_how_of_nothing_seen_as_missing(value: str) -> None:
    row = {
        "timestamp": "2026-05-16T02:17:03Z",
        "event": "lease.revoked",
        "agent_id": "oncall-jane",
        "resource": "prod/db",
        "lock_holder": value,
    }
    assert "missing-lock-holder" in {f.rule for f in check_row(row).findings}
    how = {"revoked_by": "oncall-jane", "via_runbook": value, "at": "04:12", "after_paging": value}
    row = {**row, "lock_holder": "perf-agent", "second_key_revoke_provenance": how}
    found = [f for f in check_row(row).findings if f.rule == "revoke-provenance-incomplete"]
    assert found and "runbook" in found[0].reason and "paged" in found[0].reason
