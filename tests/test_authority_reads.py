"""Authority, a second look: in closed mode nothing an agent or portal can call tells it
about a resource it may not observe — a change, a consent, a rollback, another principal's
wake URL, a blast-radius neighbour's lease in a 409 ``held``, ``consent_required`` or a
resource's status, or the moment of a row the events long-poll would have woken on. And a
policy reload: a file that is not UTF-8 or nests too deeply changes nothing (422, not 500),
and reloads run one at a time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.stores_fixtures import Backend
from tests.test_authority import POLICY, World, world
from writ.api.fast import FastLeases
from writ.core.errors import Invalid
from writ.rules import authority as authority_rule

# prod/db and billing/db share a blast radius; perf-agent observes prod and routing only
BLAST = '[blast_radius]\ndb-tier = ["prod/db", "billing/db"]\n' + POLICY
# in closed mode a gate's principal observes what it guards (or its checks are 403)
GATE = '\n[[authority.grant]]\nprincipals = ["the-gate"]\nobserve = ["prod", "billing"]\n'
SECRET = "secret billing work"


async def _billing_change(w: World) -> tuple[dict[str, str], str]:
    lease = (
        await w.lease("admin", "billing/db", ttl_s=300, touches=["capacity"], intent=SECRET)
    ).json()
    r = await w.post(
        "admin",
        f"/v1/leases/{lease['lease_id']}/changes",
        {"attribute": "capacity", "summary": SECRET, "after": {"k": SECRET}},
    )
    assert r.status_code == 201, r.text
    return lease, r.json()["change_id"]


async def test_changes_consents_and_rollbacks_of_unobservable_resources_are_403(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        lease, change_id = await _billing_change(w)
        assert (await w.get("stranger", f"/v1/changes/{change_id}")).status_code == 403
        assert (await w.get("oncall-jane", f"/v1/changes/{change_id}")).status_code == 200
        r = await w.post("cost-agent", "/v1/consents", {"change_id": change_id, "reason": "x"})
        assert r.status_code == 403 and SECRET not in r.text, r.text
        assert await w.rows("consent.requested") == []
        consent = await w.post(
            "oncall-jane", "/v1/consents", {"change_id": change_id, "reason": "x"}
        )
        assert consent.status_code == 201, consent.text
        cid = consent.json()["consent_id"]
        assert (await w.get("stranger", f"/v1/consents/{cid}")).status_code == 403
        assert (await w.get("stranger", f"/v1/consents/{cid}", wait_s=5)).status_code == 403
        r = await w.post("stranger", "/v1/rollbacks", {"change_id": change_id, "reason": "x"})
        assert r.status_code == 403 and "billing" not in r.json()["error"]["message"], r.text
        r = await w.post(
            "stranger", "/v1/rollbacks", {"lease_id": lease["lease_id"], "reason": "x"}
        )
        assert r.status_code == 403, r.text
        # a rollback's own reads
        await w.engine.store.transact(
            lambda tx: tx.put_object(
                "rollback",
                "rb_test",
                "billing/db",
                "pending",
                {"rollback_id": "rb_test", "resource": "billing/db", "reason": SECRET},
            )
        )
        assert (await w.get("stranger", "/v1/rollbacks/rb_test")).status_code == 403
        listed = (await w.get("stranger", "/v1/rollbacks")).json()["rollbacks"]
        assert listed == []
        listed = (await w.get("oncall-jane", "/v1/rollbacks")).json()["rollbacks"]
        assert [r["rollback_id"] for r in listed] == ["rb_test"]


async def test_a_blast_radius_neighbour_is_not_named_to_who_may_not_observe_it(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf-agent may write prod/db; billing/db (same blast radius) is held by admin, who
    also recorded a protected change there. perf-agent learns that prod/db is not free and
    until when — not who holds what, for what, or what changed."""
    async with world(backend, tmp_path, monkeypatch, BLAST + GATE) as w:
        lease = (
            await w.lease("admin", "billing/db", ttl_s=300, touches=["labels"], intent=SECRET)
        ).json()
        for wait in (0, 0.01):
            r = await w.lease("perf-agent", "prod/db", wait_s=wait)
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "held" and err["holder"] is None, r.text
            assert "billing" not in r.text and SECRET not in r.text, r.text
            assert "you may not observe" in err["message"] and "retry_at" in err
        # nor do who, fence and a gate's answer (each counts a blast-radius holder)
        who = (await w.get("perf-agent", "/v1/who", resource="prod/db")).json()
        assert who["hidden"] is True and who["lock_holder"] is None, who
        assert "billing" not in json.dumps(who) and SECRET not in json.dumps(who), who
        fence = (await w.get("perf-agent", "/v1/fence", resource="prod/db", token=999)).json()
        assert fence["holder"] is None and fence["hidden"] is True, fence
        assert fence["current"] is False, fence
        await w.add("the-gate", "portal")
        body = {"caller_token": w.tokens["perf-agent"], "resource": "prod/db", "path": "/x"}
        gate = (await w.post("the-gate", "/v1/gate/check", body)).json()
        assert gate["passed"] is False and gate["holder"] is None, gate
        jane = (await w.get("oncall-jane", "/v1/who", resource="prod/db")).json()
        assert jane["lock_holder"] == "admin" and "hidden" not in jane, jane
        fence = (await w.get("oncall-jane", "/v1/fence", resource="prod/db", token=999)).json()
        assert fence["holder"] == "admin" and "hidden" not in fence, fence
        # a human still sees it all
        r = await w.lease("oncall-jane", "prod/db")
        assert r.status_code == 403  # no grant to lease, but admin does:
        r = await w.lease("admin", "prod/db")
        assert r.json()["error"]["holder"]["resource"] == "billing/db", r.text
        # the resource's status: neither the neighbour's lease nor its protected change
        status = (await w.get("perf-agent", "/v1/resources/prod/db")).json()
        assert status["lease"] is None and status["protected_changes"] == [], status
        await w.post("admin", f"/v1/leases/{lease['lease_id']}/release")
        await _billing_change(w)
        status = (await w.get("perf-agent", "/v1/resources/prod/db")).json()
        assert status["lease"] is None and status["protected_changes"] == [], status
        assert (await w.get("admin", "/v1/resources/prod/db")).json()["protected_changes"]
        r = await w.lease("perf-agent", "prod/db", touches=["capacity"])
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "consent_required" and "protected_until" in err, r.text
        assert "billing" not in r.text and SECRET not in r.text, r.text
        # nor do the rows of its own refusals (another's rows about prod/db still may)
        rows = (await w.get("perf-agent", "/v1/audit", resource="prod/db")).json()["rows"]
        rows = [x for x in rows if x["agent_id"] == "perf-agent"]
        assert rows and all("billing" not in x["notes"] for x in rows), rows
        assert all(SECRET not in x["notes"] for x in rows), rows


async def test_agents_see_no_other_principals_wake_url_in_closed_mode(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        await w.add("cost-agent-2", "agent", wake="https://cost2.example/wake")

        def wakes(who: str) -> dict[str, str | None]:
            return {p["name"]: p["wake"] for p in listed[who]}

        listed = {
            who: (await w.get(who, "/v1/principals")).json()["principals"]
            for who in ("cost-agent-2", "stranger", "oncall-jane")
        }
        assert wakes("stranger")["perf-agent"] is None
        assert wakes("cost-agent-2")["cost-agent-2"] == "https://cost2.example/wake"
        assert wakes("cost-agent-2")["perf-agent"] is None
        assert wakes("oncall-jane")["perf-agent"] == "https://perf.example/wake"


async def test_the_events_long_poll_does_not_end_on_a_row_it_may_not_read(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cost-agent long-polls every row; a row about billing (which it may not observe) is
    committed, then one about prod/db: the poll answers with the prod/db row, having not
    ended (empty-handed, telling of the billing row by its timing) at the first."""
    async with world(backend, tmp_path, monkeypatch) as w:
        after = (await w.get("admin", "/v1/audit", limit=100_000)).json()["next_after_seq"]
        poll = asyncio.create_task(w.get("cost-agent", "/v1/events", after_seq=after, wait_s=60))
        watches = w.engine.history._watches
        while not watches:  # until the long-poll waits for a row
            assert not poll.done(), poll.result().text
            await asyncio.sleep(0.005)
        (first,) = watches.values()
        assert (await w.lease("admin", "billing/x")).status_code == 201
        await asyncio.wait_for(asyncio.shield(first.answer), 30)  # it has seen that row
        assert (await w.lease("admin", "prod/db")).status_code == 201
        page = (await asyncio.wait_for(poll, 30)).json()
        assert [r["resource"] for r in page["rows"]] == ["prod/db"], page


async def test_the_events_long_poll_walks_past_unreadable_rows_in_steps_and_a_budget(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent's poll over rows it may not read walked them all in one go, never giving
    way (limit=1: one row a read), and then waited out its wait_s: 20 such polls held the
    server 27 s and cost another agent its lease. Now it reads them a step at a time,
    giving way between steps, and past a budget answers an empty page that keeps its place;
    the next poll goes on from there to the row it may read."""
    monkeypatch.setattr(authority_rule, "WALK", 10)
    monkeypatch.setattr(authority_rule, "WALK_BUDGET", 40)
    gave_way: list[float] = []
    real = authority_rule.make_way

    async def counted(took: float) -> None:
        gave_way.append(took)
        await real(took)

    monkeypatch.setattr(authority_rule, "make_way", counted)
    async with world(backend, tmp_path, monkeypatch) as w:
        after = (await w.get("admin", "/v1/audit", limit=100_000)).json()["next_after_seq"]
        for i in range(30):  # 60 rows cost-agent may not read
            lease = (await w.lease("admin", f"billing/x{i}")).json()
            await w.post("admin", f"/v1/leases/{lease['lease_id']}/release", {})
        assert (await w.lease("admin", "prod/db")).status_code == 201
        poll = w.get("cost-agent", "/v1/events", after_seq=after, limit=1, wait_s=60)
        page = (await asyncio.wait_for(poll, 30)).json()  # not at its 60-s deadline
        assert page["rows"] == [] and after + 40 <= page["next_after_seq"] < after + 60, page
        assert len(gave_way) >= 3
        seen: list[str] = []
        for _ in range(5):
            poll = w.get("cost-agent", "/v1/events", after_seq=page["next_after_seq"], limit=1)
            page = (await asyncio.wait_for(poll, 30)).json()
            seen += [r["resource"] for r in page["rows"]]
            if seen:
                break
        assert seen == ["prod/db"], page


@pytest.mark.parametrize(
    "bad",
    [b'[authority]\nmode = "open"\n\xff\n', b"a = " + b"[" * 5000 + b"]" * 5000],
    ids=["not-utf8", "too-deep"],
)
async def test_a_reload_of_a_file_that_is_not_utf8_or_too_deep_changes_nothing(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: bytes
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        w.path.write_bytes(bad)
        r = await w.post("admin", "/v1/policy/reload")
        assert r.status_code == 422, r.text
        assert str(w.path) in r.json()["error"]["message"]
        assert w.engine.authority.settings.closed
        assert (await w.lease("stranger", "prod/db")).status_code == 403
        assert await w.rows("policy.reloaded") == []


async def test_reloads_run_one_at_a_time_so_the_last_file_read_is_in_force(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reload A reads the file and stalls writing its row; the file changes and reload B
    runs. Without one-at-a-time, A would apply its older file after B: the policy in force
    would then be neither the file nor what the last row says."""
    async with world(backend, tmp_path, monkeypatch) as w:
        store = w.engine.store
        transact = store.transact
        stalled, go = asyncio.Event(), asyncio.Event()

        async def first_stalls(fn: Any) -> Any:
            if not stalled.is_set():
                stalled.set()
                await go.wait()
            return await transact(fn)

        monkeypatch.setattr(store, "transact", first_stalls)
        grant = '\n[[authority.grant]]\nprincipals = ["stranger"]\nwrite = ["{}"]\n'
        w.path.write_text(POLICY + grant.format("old"))
        a = asyncio.create_task(w.engine.authority.reload(None))
        await stalled.wait()
        w.path.write_text(POLICY + grant.format("new"))
        b = asyncio.create_task(w.engine.authority.reload(None))
        for _ in range(50):  # let B run as far as it can (without the lock: to the end)
            await asyncio.sleep(0)
        go.set()
        await asyncio.gather(a, b)
        monkeypatch.setattr(store, "transact", transact)
        assert (await w.lease("stranger", "new/x")).status_code == 201
        assert (await w.lease("stranger", "old/x")).status_code == 403


async def test_a_gate_answer_names_the_holder_only_to_a_caller_who_may_observe(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/v1/gate/check`` in closed mode: the refusal's ``holder`` is for a caller who may
    observe the resource (with writ's wake route, not the holder's URL); an unknown caller,
    or an agent that may not observe it, learns nothing of who holds it. (Any principal may
    call the route, so this was a way to read any resource's holder.)"""
    async with world(backend, tmp_path, monkeypatch, POLICY + GATE) as w:
        await w.add("the-gate", "portal")
        lease = (await w.lease("perf-agent", "prod/db", ttl_s=300, intent=SECRET)).json()

        async def holder(caller: str | None) -> Any:
            body = {
                "caller_token": w.tokens[caller] if caller else "writ_not_a_token",
                "resource": "prod/db",
                "method": "POST",
                "path": "/admin/db/scale",
            }
            r = await w.post("the-gate", "/v1/gate/check", body)
            assert r.status_code == 200 and r.json()["passed"] is False, r.text
            return r.json()["holder"]

        assert await holder(None) is None
        assert await holder("stranger") is None
        seen = await holder("cost-agent")
        assert seen["holder"] == "perf-agent"
        assert seen["wake"] == f"/v1/leases/{lease['lease_id']}/wake", seen
        assert (await holder("oncall-jane"))["wake"] == "https://perf.example/wake"
        r = await w.post(
            "the-gate",
            "/v1/gate/check",
            {"resource": "prod/db", "method": "POST", "path": "/x", "attribute": "a\u0000"},
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "attribute", r.text


async def test_in_closed_mode_only_a_gate_that_may_observe_adds_its_rows(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any principal could call ``/v1/gate/check``: in closed mode, one that may not observe
    prod/db appended gate.refused rows, with a method and path of its choosing, to prod/db's
    trail. Now its check is 403 and adds nothing; a gate granted observe decides as before."""
    async with world(backend, tmp_path, monkeypatch, POLICY + GATE) as w:
        await w.add("a-stranger-gate", "portal")
        body = {"resource": "prod/db", "method": "DELETE", "path": "/admin/db/drop"}
        before = await w.rows("gate.refused")
        r = await w.post("a-stranger-gate", "/v1/gate/check", body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        assert "a-stranger-gate" in r.json()["error"]["message"], r.text
        assert await w.rows("gate.refused") == before
        await w.add("the-gate", "portal")
        await w.add("a-caller", "agent")
        body["caller_token"] = w.tokens["a-caller"]
        r = await w.post("the-gate", "/v1/gate/check", body)
        assert r.status_code == 200 and r.json()["passed"] is False, r.text
        [row] = [x for x in await w.rows("gate.refused") if x not in before]
        assert row["resource"] == "prod/db" and "the-gate" in row["notes"], row


async def test_the_engine_refuses_a_gate_attribute_that_is_not_text(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        gate = await w.engine.principal("svc-ops")
        assert gate is not None
        with pytest.raises(Invalid) as e:
            await w.engine.gate_check(gate, None, None, None, "prod/db", "POST", "/x", "a\x00b")
        assert e.value.details["field"] == "attribute"


def test_grant_lines_survive_quotes_in_comments_and_one_line_strings() -> None:
    """The rule's FILE:LINE: a comment or a one-line string holding three quotes once made
    the scan think a multi-line string had begun, so every later grant lost its line."""
    from writ.core.policy import parse

    text = """\
# the DBA's \"\"\" style notes
[authority]
mode = "closed"
[[authority.grant]]
principals = ["a"]
write = ["x"]  # '''
[[ 'authority' . 'grant' ]]
principals = ['b']
vendors = ['v\"\"\"', '''
[[authority.grant]]
''']
[[authority.grant]]
kinds = ["agent"]
observe = [\"\"\"y\"\"\"]
"""
    s = parse(text, "w.toml").authority
    assert [g.line for g in s.grants] == [4, 7, 12]
    assert s.where(s.grants[1]) == "w.toml:7"


@pytest.mark.parametrize(
    ("grant", "words"),
    [
        ('principals = ["perf-agent\\nfake row"]', "not a principal name"),
        ('principals = ["Perf Agent"]', "not a principal name"),
        ('vendors = ["v\\u001b[2J"]', "control character"),
        ('principals = ["a"]\nattributes = ["cap\\u0000"]', "control character"),
    ],
)
def test_grant_names_are_names(grant: str, words: str) -> None:
    """A grant's principals are principal names, and its vendors and attributes are text: a
    name no principal can have never matches, and printed by `writ policy check` a newline
    in it forged a line of its own."""
    from writ.core.errors import PolicyError
    from writ.core.policy import parse

    with pytest.raises(PolicyError) as e:
        parse(f'[authority]\nmode = "closed"\n[[authority.grant]]\n{grant}\n', "w.toml")
    assert e.value.line == 3 and words in str(e.value), e.value


def test_policy_explain_offline_takes_only_a_principal_name(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from writ.cli import main

    (tmp_path / "p.toml").write_text(POLICY)
    args = ["policy", "explain", "--file", str(tmp_path / "p.toml")]
    r = CliRunner().invoke(main, [*args, "perf-agent\nfake-agent may write", "prod/db"])
    assert r.exit_code == 2 and "not a principal name" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "x", "prod/db", "--vendor", "v\x1b[2J"])
    assert r.exit_code == 2 and "vendor" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "perf-agent", "prod/db"])
    assert r.exit_code == 0 and r.output.startswith("perf-agent may write prod/db"), r.output


async def test_an_agent_reads_only_its_own_grants_in_the_policy(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/authority`` answers an agent only about itself; ``GET /v1/policy`` told it
    every grant of every principal."""
    async with world(backend, tmp_path, monkeypatch) as w:

        async def grants(who: str) -> list[dict[str, Any]]:
            r = await w.get(who, "/v1/policy")
            assert r.status_code == 200, r.text
            out: list[dict[str, Any]] = r.json()["authority"]["grants"]
            return out

        assert [g["principals"] for g in await grants("cost-agent")] == [["cost-agent"]]
        assert await grants("stranger") == []
        assert [g["vendors"] for g in await grants("vendor-p-button")] == [["vendor-p"]]
        assert len(await grants("oncall-jane")) == 4


async def test_omitted_touches_meet_the_grants_of_the_turn_at_hand_off(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf-agent queues for prod/db without naming touches (so: its attributes, capacity);
    a reload changes its attributes to labels; at its turn it is granted with touches
    labels, as a request made then would be — not refused for touches it never named."""
    async with world(backend, tmp_path, monkeypatch) as w:
        held = (await w.lease("admin", "prod/db", ttl_s=300)).json()
        seq = (await w.engine.audit(0, 10_000))["next_after_seq"]
        waiting = asyncio.ensure_future(w.lease("perf-agent", "prod/db", wait_s=60))
        await w.engine.events("prod/db", seq, wait_s=10)  # its lease.queued row
        assert (await w.rows("lease.queued"))[-1]["agent_id"] == "perf-agent"
        w.path.write_text(POLICY.replace('attributes = ["capacity"]', 'attributes = ["labels"]', 1))
        await w.engine.authority.reload(None)
        assert (await w.post("admin", f"/v1/leases/{held['lease_id']}/release")).status_code == 200
        r = await asyncio.wait_for(waiting, 30)
        assert r.status_code == 201, r.text
        assert r.json()["touches"] == ["labels"], r.text


async def test_a_sighup_reload_that_fails_unexpectedly_is_logged_and_changes_nothing(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import writ.core.policy

    async with world(backend, tmp_path, monkeypatch) as w:
        auth = w.engine.authority

        def broken(path: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(writ.core.policy, "load", broken)
        auth._spawn_reload()
        (task,) = auth._tasks
        await task
        assert task.exception() is None
        assert "SIGHUP: the policy was not reloaded" in caplog.text
        assert auth.settings.closed and await w.rows("policy.reloaded") == []


async def test_an_agent_lists_only_the_freezes_that_touch_what_it_may_observe(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(backend, tmp_path, monkeypatch) as w:
        for prefix in ("prod", "prod/db/main", "billing"):
            r = await w.post("oncall-jane", "/v1/freezes", {"prefix": prefix, "reason": SECRET})
            assert r.status_code == 201, r.text

        async def frozen(who: str) -> set[str]:
            r = await w.get(who, "/v1/freezes")
            assert r.status_code == 200, r.text
            return {f["prefix"] for f in r.json()["freezes"]}

        # cost-agent observes prod/db: the freeze above it and the one below it
        assert await frozen("cost-agent") == {"prod", "prod/db/main"}
        assert await frozen("stranger") == set()
        assert await frozen("oncall-jane") == {"prod", "prod/db/main", "billing"}


async def test_the_lean_fence_path_answers_byte_for_byte_like_the_full_one(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/fence`` with just ``resource`` and a plain integer ``token`` skips FastAPI
    (writ.api.fast); with any other parameter FastAPI answers it. Both write the same status
    and bytes for every caller — the holder's neighbour who may not observe it (hidden),
    one who may (named), one who may observe nothing there (403), an unknown token (401) —
    and every token: the current one, a stale one, zero, a negative one, the largest, and
    resources that are free, held, or not a resource at all."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        fastapi = _count_fastapi(w.app)
        lease = (await w.lease("admin", "billing/db", ttl_s=300, intent=SECRET)).json()
        w.tokens["nobody"] = "wrt_not-a-token-of-anyone"
        answers = 0
        for who in ("perf-agent", "oncall-jane", "stranger", "admin", "nobody"):
            for resource in ("prod/db", "billing/db", "routing/edge", "Not A Resource"):
                for token in (lease["fencing_token"], 999, 0, -1, 2**63 - 1):
                    before = len(fastapi)
                    lean = await w.get(who, "/v1/fence", resource=resource, token=token)
                    assert len(fastapi) == before, "the lean path passed it on"
                    full = await w.get(who, "/v1/fence", resource=resource, token=token, x="1")
                    assert len(fastapi) == before + 1, "FastAPI did not answer it"
                    assert (lean.status_code, lean.content) == (full.status_code, full.content)
                    answers += lean.status_code == 200
        assert answers > 0
        statuses = {
            (await w.get(who, "/v1/fence", resource="prod/db", token=1)).status_code
            for who in ("perf-agent", "stranger", "nobody")
        }
        assert statuses == {200, 403, 401}, statuses
        # what the lean path never takes: a resource that is not text is 422 before any
        # route (TextURL), a parameter twice or a token that is not a plain integer goes to
        # FastAPI, which answers as it always did
        h = w.h("perf-agent")
        before = len(fastapi)
        nul = await w.http.get("/v1/fence?resource=prod%2Fdb%00&token=1", headers=h)
        assert nul.status_code == 422 and nul.json()["error"]["field"] == "resource", nul.text
        assert len(fastapi) == before
        odd = [
            [("resource", "prod/db"), ("resource", "billing/db"), ("token", "1")],
            [("resource", "prod/db"), ("token", "1"), ("token", "2")],
            [("resource", "prod/db"), ("token", "true")],
            [("resource", "prod/db"), ("token", "+1")],
            [("resource", "prod/db"), ("token", "٣")],
        ]
        for params in odd:
            r = await w.http.get("/v1/fence", params=params, headers=h)
            assert r.status_code < 500, r.text
        assert len(fastapi) == before + len(odd), fastapi


def _count_fastapi(app: Any) -> list[str]:
    """The paths of the requests the lean path (writ.api.fast) passes on to FastAPI, from now."""
    front = app.front
    while not isinstance(front, FastLeases):
        front = front.app
    full, seen = front.app, []

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await full(scope, receive, send)

    front.app = counted
    return seen


@pytest.mark.parametrize("route", ["acquire", "fence", "principals"])
async def test_two_authorization_headers_are_refused_whichever_comes_first(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """Two ``Authorization`` headers — on the lean path or through FastAPI — are 422
    ``invalid``, whichever order the good and the forged one come in: a second header, which
    a proxy in front may not have checked, never authenticates instead of the first (the
    lean path used to read the last, FastAPI the first). One is still enough."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        good = f"Bearer {w.tokens['perf-agent']}"
        body = json.dumps({"resource": "prod/db", "intent": "test"})
        for auths in (["Bearer wrt_forged", good], [good, "Bearer wrt_forged"], [good, good]):
            headers = [("authorization", a) for a in auths]
            if route == "fence":
                params = {"resource": "prod/db", "token": 1}
                r = await w.http.get("/v1/fence", params=params, headers=headers)
            elif route == "principals":
                r = await w.http.get("/v1/principals", headers=headers)
            else:
                ctype = [("content-type", "application/json")]
                r = await w.http.post("/v1/leases", content=body, headers=[*headers, *ctype])
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid" and "one Authorization header" in err["message"], err
        assert (await w.lease("perf-agent", "prod/db")).status_code == 201
        assert await w.rows("lease.granted") != []


async def test_the_lean_path_reads_the_first_content_type_as_fastapi_does(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``Content-Type`` headers: FastAPI reads the first, and so does the lean path
    (text/plain first: not a JSON body, 422 on both)."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        r = await w.http.post(
            "/v1/leases",
            content=json.dumps({"resource": "prod/db", "intent": "test"}),
            headers=[
                ("authorization", f"Bearer {w.tokens['perf-agent']}"),
                ("content-type", "text/plain"),
                ("content-type", "application/json"),
            ],
        )
        assert r.status_code == 422, r.text


async def test_a_blast_radius_lease_writes_only_where_its_holder_may(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """perf-agent's lease on prod/db keeps everyone off billing/db (same blast radius), but
    in closed mode it does not let perf-agent write billing/db, which no grant lets it write:
    the fencing check says not current and the gate refuses, forbidden, with a row."""
    async with world(backend, tmp_path, monkeypatch, BLAST + GATE) as w:
        await w.add("the-gate", "portal")
        lease = (await w.lease("perf-agent", "prod/db", ttl_s=300)).json()
        token = lease["fencing_token"]

        async def gate(resource: str) -> dict[str, Any]:
            body = {
                "caller_token": w.tokens["perf-agent"],
                "lease_id": lease["lease_id"],
                "fencing_token": token,
                "resource": resource,
                "path": "/admin/x",
            }
            out: dict[str, Any] = (await w.post("the-gate", "/v1/gate/check", body)).json()
            return out

        async def fence(resource: str) -> dict[str, Any]:  # asked by a human, who sees all
            r = await w.get("oncall-jane", "/v1/fence", resource=resource, token=token)
            out: dict[str, Any] = r.json()
            return out

        for own in ("prod/db", "prod/db/replica"):  # its own resource, and below it
            assert (await gate(own))["passed"] is True, own
            assert (await fence(own))["current"] is True, own
        refused = await gate("billing/db")
        assert (refused["passed"], refused["code"]) == (False, "forbidden"), refused
        assert "may neither write" in refused["reason"], refused
        assert "refused" in (await w.rows("gate.refused"))[-1]["notes"]
        assert (await fence("billing/db"))["current"] is False
        # still nobody else's: admin, who may write billing/db, waits behind the lease
        assert (await w.lease("admin", "billing/db")).status_code == 409


async def test_a_freeze_on_an_unseen_neighbour_says_only_until_when(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A human freezes billing/db (same blast radius as prod/db, which perf-agent may not
    observe): perf-agent's acquire of prod/db is 423 and its status of prod/db says frozen,
    neither naming the freeze's prefix, author, reason nor allow list; a human sees it all."""
    async with world(backend, tmp_path, monkeypatch, BLAST) as w:
        body = {"prefix": "billing/db", "reason": SECRET, "until": "1h", "allow": ["cost-agent"]}
        r = await w.post("oncall-jane", "/v1/freezes", body)
        assert r.status_code in (200, 201), r.text
        refused = await w.lease("perf-agent", "prod/db")
        assert refused.status_code == 423, refused.text
        err = refused.json()["error"]
        assert err["hidden"] is True and err["freeze"] is None and err["until"], err
        for secret in ("billing", SECRET, "oncall-jane", "cost-agent"):
            assert secret not in refused.text, secret
        status = (await w.get("perf-agent", "/v1/resources/prod/db")).json()
        assert status["frozen"] is True and status["freezes"] == [], status
        assert SECRET not in json.dumps(status) and "oncall-jane" not in json.dumps(status)
        jane = (await w.get("oncall-jane", "/v1/resources/prod/db")).json()
        assert [f["prefix"] for f in jane["freezes"]] == ["billing/db"], jane
        # an admin, who may observe it, is told whose freeze it is
        r = await w.lease("admin", "prod/db")
        assert r.status_code == 423 and r.json()["error"]["freeze"]["prefix"] == "billing/db"
        # a freeze above what perf-agent may write is its own to know of, in full
        body = {"prefix": "prod", "reason": "change window"}
        assert (await w.post("oncall-jane", "/v1/freezes", body)).status_code in (200, 201)
        status = (await w.get("perf-agent", "/v1/resources/prod/db")).json()
        assert [f["prefix"] for f in status["freezes"]] == ["prod"], status
