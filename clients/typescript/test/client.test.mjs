// The routes and the typed refusals, against a real `writ serve`.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { inspect } from "node:util";
import { after, before, describe, test } from "node:test";
import {
  ConflictError,
  ConsentRequiredError,
  ForbiddenError,
  FrozenError,
  HeldError,
  InvalidError,
  LeaseLostError,
  NotFoundError,
  RequestTimeoutError,
  TooManyRequestsError,
  UnauthenticatedError,
  UnavailableError,
  VERSION,
  Writ,
  WritError,
  errorFromBody,
  parseRetryAfter,
} from "../dist/index.js";
import { deferred, serveWrit, unique } from "./helpers.mjs";

// a broken client would hang rather than fail: every test has a deadline
const T = { timeout: 60_000 };

let w; // the server and its helpers
let rollbackCalls; // requests the toy rollback route received
let toy; // the toy API the rollback route points at

before(async () => {
  rollbackCalls = [];
  toy = createServer((req, res) => {
    rollbackCalls.push(`${req.method} ${req.url}`);
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  await new Promise((ok) => toy.listen(0, "127.0.0.1", ok));
  const policy = [
    `rollback_base_url = "http://127.0.0.1:${toy.address().port}"`,
    "[[rules]]",
    'prefix = "quick"',
    "consent_timeout_s = 0.5",
  ].join("\n");
  w = await serveWrit({ policy });
});

after(async () => {
  await w?.stop();
  toy?.close();
});

function resource(prefix = "svc") {
  return `${prefix}/${unique("r")}`;
}

describe("health and identity", () => {
  test("health needs no token; whoami names the token's principal", T, async () => {
    const anonymous = new Writ({ url: w.url, token: "" });
    const health = await anonymous.health();
    assert.equal(health.ok, true);
    const a = await w.principal("agent");
    const me = await a.writ.whoami();
    assert.equal(me.name, a.name);
    assert.equal(me.kind, "agent");
  });

  test("the admin adds principals (the token shown once) and lists them without tokens", T, async () => {
    const name = unique("listed");
    const added = await w.admin.addPrincipal(name, { kind: "queue", wake: "https://pager.example/q" });
    assert.equal(added.kind, "queue");
    assert.match(added.token, /^writ_/);
    const listed = (await w.admin.principals()).principals.find((p) => p.name === name);
    assert.equal(listed.wake, "https://pager.example/q");
    assert.equal("token" in listed, false);
    const again = await w.admin.addPrincipal(name, { kind: "queue" }).catch((e) => e);
    assert.ok(again instanceof ConflictError);
    assert.equal(again.code, "conflict");
    const a = await w.principal();
    await assert.rejects(a.writ.addPrincipal(unique(), { kind: "agent" }), ForbiddenError);
    assert.equal(typeof (await a.writ.policy()), "object");
  });

  test("no token: UnauthenticatedError that says none was given", T, async () => {
    const anonymous = new Writ({ url: `${w.url}/`, token: "" });
    const err = await anonymous.whoami().catch((e) => e);
    assert.ok(err instanceof UnauthenticatedError);
    assert.ok(err instanceof WritError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "unauthenticated");
    assert.match(err.message, /no token given/);
  });

  test("a token that could not be a header value is refused at construction", () => {
    for (const token of ["abc\r\nX-Admin: 1", "tab\there", "ünïcode"]) {
      assert.throws(() => new Writ({ url: w.url, token }), InvalidError);
    }
  });

  test("a URL carrying credentials is refused at construction, never quoted", () => {
    const err = (() => {
      try {
        return new Writ({ url: "http://ops:URL-PASSWORD@127.0.0.1:1", token: "t" });
      } catch (e) {
        return e;
      }
    })();
    assert.ok(err instanceof InvalidError, String(err));
    assert.doesNotMatch(err.message, /URL-PASSWORD/);
    assert.equal(new Writ({ url: "http://127.0.0.1:1/a@b", token: "t" }).url, "http://127.0.0.1:1/a@b");
  });

  test("a wrong token is refused and never echoed", T, async () => {
    const err = await new Writ({ url: w.url, token: "writ_not-a-token" }).whoami().catch((e) => e);
    assert.ok(err instanceof UnauthenticatedError);
    assert.doesNotMatch(err.message, /not-a-token/);
  });

  test("an unreachable server is UnavailableError naming the URL", T, async () => {
    const closed = createServer();
    await new Promise((ok) => closed.listen(0, "127.0.0.1", ok));
    const port = closed.address().port;
    await new Promise((ok) => closed.close(ok));
    const err = await new Writ({ url: `127.0.0.1:${port}`, token: "x" }).whoami().catch((e) => e);
    assert.ok(err instanceof UnavailableError);
    assert.equal(err.status, 0);
    assert.match(err.message, new RegExp(`not reachable at http://127\\.0\\.0\\.1:${port}`));
  });
});

describe("leases and refusals", () => {
  test("acquire, renew, release: the Lease and its fencing token", T, async () => {
    const a = await w.principal();
    const r = resource();
    const lease = await a.writ.acquire(r, { intent: "double capacity", ttlS: 30, touches: ["capacity"] });
    assert.equal(lease.resource, r);
    assert.equal(lease.holder, a.name);
    assert.equal(lease.state, "held");
    assert.equal(lease.lock_key, `${r}/${lease.fencing_token}`);
    assert.deepEqual(lease.touches, ["capacity"]);
    const renewed = await a.writ.renew(lease.lease_id, { ttlS: 60 });
    assert.equal(renewed.ttl_s, 60);
    const released = await a.writ.release(lease.lease_id);
    assert.equal(released.state, "released");
    const late = await a.writ.release(lease.lease_id).catch((e) => e);
    assert.ok(late instanceof LeaseLostError);
    assert.equal(late.status, 410);
    assert.equal(late.leaseId, lease.lease_id);
  });

  test("a conflicting request is HeldError with the holder and queue position", T, async () => {
    const a = await w.principal();
    const b = await w.principal();
    const r = resource();
    const lease = await a.writ.acquire(r, { intent: "resize" });
    const err = await b.writ.acquire(`${r}/replica`, { intent: "reroute" }).catch((e) => e);
    assert.ok(err instanceof HeldError);
    assert.ok(err instanceof ConflictError);
    assert.equal(err.status, 409);
    assert.equal(err.code, "held");
    assert.equal(err.holder.holder, a.name);
    assert.equal(err.holder.resource, r);
    assert.equal(err.holder.intent, "resize");
    assert.equal(err.queuePosition, 1);
    assert.equal(err.retryAt, lease.expires_at);
    await a.writ.release(lease.lease_id);
  });

  test("bad input is InvalidError (422) with what was wrong", T, async () => {
    const a = await w.principal();
    for (const [res, intent] of [
      ["Prod/DB", "x"],
      ["svc/ok", ""],
    ]) {
      const err = await a.writ.acquire(res, { intent }).catch((e) => e);
      assert.ok(err instanceof InvalidError, String(err));
      assert.equal(err.status, 422);
      assert.ok(err.message.length > 0);
    }
  });

  test("ids that would walk to another route are refused before any request", T, async () => {
    let calls = 0;
    const spy = new Writ({
      url: w.url,
      token: "x",
      fetch: (...args) => {
        calls += 1;
        return fetch(...args);
      },
    });
    for (const id of ["..", ".", "%2e%2E", ""]) {
      await assert.rejects(spy.release(id), InvalidError);
    }
    await assert.rejects(spy.resource("svc/../principals"), InvalidError);
    await assert.rejects(spy.getLease(undefined), InvalidError);
    assert.equal(calls, 0);
    // other characters are escaped, not interpreted: a lease id with a slash is one segment
    const a = await w.principal();
    await assert.rejects(a.writ.getLease("ls_x/../../principals"), NotFoundError);
  });

  test("an agent may not revoke: ForbiddenError; a queue revokes with provenance", T, async () => {
    const a = await w.principal();
    const q = await w.principal("queue");
    const lease = await a.writ.acquire(resource(), { intent: "work" });
    const provenance = { runbook: "R-44", paged: q.name, reason: "stuck" };
    await assert.rejects(a.writ.revoke(lease.lease_id, provenance), ForbiddenError);
    const revoked = await q.writ.revoke(lease.lease_id, provenance);
    assert.equal(revoked.state, "revoked");
    await assert.rejects(a.writ.renew(lease.lease_id), LeaseLostError);
  });

  test("unknown ids are NotFoundError", T, async () => {
    const a = await w.principal();
    await assert.rejects(a.writ.getLease("ls_nope"), NotFoundError);
    await assert.rejects(a.writ.getChange("chg_nope"), NotFoundError);
  });

  test("who and fence answer from the ledger; an old token is not current", T, async () => {
    const a = await w.principal();
    const r = resource();
    const first = await a.writ.acquire(r, { intent: "one" });
    const who = await a.writ.who(r);
    assert.equal(who.lock_holder, a.name);
    assert.equal(who.lease.lease_id, first.lease_id);
    assert.equal((await a.writ.fence(r, first.fencing_token)).current, true);
    await a.writ.release(first.lease_id);
    const second = await a.writ.acquire(r, { intent: "two" });
    assert.ok(second.fencing_token > first.fencing_token);
    const fence = await a.writ.fence(r, first.fencing_token);
    assert.equal(fence.current, false);
    assert.equal(fence.current_token, second.fencing_token);
    const past = await a.writ.who(r, { at: first.acquired_at });
    assert.equal(past.lease.lease_id, first.lease_id);
    const listed = await a.writ.leases({ resource: r, state: "held" });
    assert.deepEqual(
      listed.leases.map((l) => l.lease_id),
      [second.lease_id],
    );
    const status = await a.writ.resource(r);
    assert.equal(status.lease.lease_id, second.lease_id);
    assert.equal(status.frozen, false);
  });

  test("a freeze refuses grants with FrozenError until lifted", T, async () => {
    const a = await w.principal();
    const q = await w.principal("queue");
    const prefix = resource("frz");
    const freeze = await q.writ.freeze(prefix, { reason: "release night" });
    const err = await a.writ.acquire(`${prefix}/db`, { intent: "x" }).catch((e) => e);
    assert.ok(err instanceof FrozenError);
    assert.equal(err.status, 423);
    assert.equal(err.freeze.freeze_id, freeze.freeze_id);
    assert.ok((await a.writ.freezes()).freezes.some((f) => f.freeze_id === freeze.freeze_id));
    await q.writ.liftFreeze(freeze.freeze_id);
    const lease = await a.writ.acquire(`${prefix}/db`, { intent: "x" });
    await a.writ.release(lease.lease_id);
  });
});

describe("changes, consent and rollback", () => {
  test("a protected change: ConsentRequiredError with the change and the call to make; ask, wait, grant, retry", T, async () => {
    const perf = await w.principal();
    const cost = await w.principal();
    const r = resource();
    const lease = await perf.writ.acquire(r, { intent: "double capacity", touches: ["capacity"] });
    const change = await perf.writ.change(lease.lease_id, {
      attribute: "capacity",
      summary: "capacity 4→8",
      before: 4,
      after: 8,
    });
    assert.equal(change.author, perf.name);
    assert.equal(change.fencing_token, lease.fencing_token);
    await perf.writ.release(lease.lease_id);

    const err = await cost.writ.acquire(r, { intent: "consolidate", touches: ["capacity"] }).catch((e) => e);
    assert.ok(err instanceof ConsentRequiredError);
    assert.ok(err instanceof ConflictError);
    assert.equal(err.change.change_id, change.change_id);
    assert.equal(err.author, perf.name);
    assert.equal(err.protectedUntil, change.protected_until);
    assert.deepEqual(err.ask, { method: "POST", path: "/v1/consents", body: { change_id: change.change_id } });

    const asked = await cost.writ.askConsent(err.change.change_id, "overprovisioned");
    assert.equal(asked.status, "pending");
    assert.equal(asked.author, perf.name);
    const answer = cost.writ.waitConsent(asked.consent_id, { waitS: 30 });
    await perf.writ.grantConsent(asked.consent_id);
    assert.equal((await answer).status, "granted");

    const granted = await cost.writ.acquire(r, {
      intent: "consolidate",
      touches: ["capacity"],
      consentId: asked.consent_id,
    });
    assert.equal(granted.holder, cost.name);
    await cost.writ.release(granted.lease_id);
  });

  test("askConsent with waitS: an unanswered consent comes back expired, never denied", T, async () => {
    const perf = await w.principal();
    const cost = await w.principal();
    const r = resource("quick");
    const lease = await perf.writ.acquire(r, { intent: "resize", touches: ["capacity"] });
    const change = await perf.writ.change(lease.lease_id, { attribute: "capacity", summary: "4→8" });
    await perf.writ.release(lease.lease_id);
    const answer = await cost.writ.askConsent(change.change_id, "undo", { waitS: 30 });
    assert.equal(answer.status, "expired");
  });

  test("a denied consent reads denied", T, async () => {
    const perf = await w.principal();
    const cost = await w.principal();
    const lease = await perf.writ.acquire(resource(), { intent: "resize", touches: ["capacity"] });
    const change = await perf.writ.change(lease.lease_id, { attribute: "capacity", summary: "4→8" });
    const asked = await cost.writ.askConsent(change.change_id, "undo");
    await perf.writ.denyConsent(asked.consent_id);
    assert.equal((await cost.writ.consent(asked.consent_id)).status, "denied");
    await perf.writ.release(lease.lease_id);
  });

  test("rollback: anyone asks, the requester may not approve, the key-holder queue runs it once", T, async () => {
    const perf = await w.principal();
    const cost = await w.principal();
    const q = await w.principal("queue");
    const r = resource();
    const route = `/internal/rollback?txn=${unique("txn")}`;
    const lease = await perf.writ.acquire(r, {
      intent: "resize",
      rollback: { allowed: true, path: route, key_holder: q.name, override_queue: q.name },
    });
    assert.equal(lease.rollback.key_holder, q.name);
    await assert.rejects(cost.writ.requestRollback({ reason: "x" }), InvalidError);
    const asked = await cost.writ.requestRollback({ leaseId: lease.lease_id, reason: "capacity broke it" });
    assert.equal(asked.status, "pending");
    assert.equal(asked.requested_by, cost.name);
    const refused = await cost.writ.approveRollback(asked.rollback_id).catch((e) => e);
    assert.ok(refused instanceof ForbiddenError);
    const done = await q.writ.approveRollback(asked.rollback_id);
    assert.equal(done.status, "executed");
    assert.equal(done.approved_by, q.name);
    assert.equal(done.response_status, 200);
    assert.deepEqual(rollbackCalls.filter((c) => c.endsWith(route)), [`POST ${route}`]);
    await assert.rejects(q.writ.approveRollback(asked.rollback_id), WritError);
    const listed = await q.writ.rollbacks({ status: "executed" });
    assert.ok(listed.rollbacks.some((rb) => rb.rollback_id === asked.rollback_id));
    const defect = await q.writ.rollbackDefect(asked.rollback_id, "the rollback dropped a replica");
    assert.equal(defect.defect, true);
    assert.equal((await cost.writ.getRollback(asked.rollback_id)).defect, true);

    const again = await cost.writ.requestRollback({ leaseId: lease.lease_id, reason: "second thoughts" });
    const denied = await q.writ.denyRollback(again.rollback_id);
    assert.equal(denied.status, "denied");
    assert.equal(denied.denied_by, q.name);
    assert.equal(rollbackCalls.length, 1); // a denied rollback never calls the route
    await perf.writ.release(lease.lease_id);
  });
});

describe("audit and events", () => {
  test("watch() yields rows as they happen and ends when its signal aborts", T, async () => {
    const a = await w.principal();
    const r = resource();
    const controller = new AbortController();
    const seen = [];
    const first = deferred();
    const afterSeq = await a.writ.lastSeq();
    const done = (async () => {
      for await (const row of a.writ.watch({ resource: r, afterSeq, signal: controller.signal, waitS: 5 })) {
        seen.push(row);
        if (seen.length === 1) first.resolve();
      }
    })();
    const lease = await a.writ.acquire(r, { intent: "watched" });
    await first.promise;
    assert.equal(seen[0].event, "lease.granted");
    assert.equal(seen[0].lock_holder, a.name);
    assert.equal(seen[0].fencing_token, lease.fencing_token);
    controller.abort();
    await done; // ends quietly
    await a.writ.release(lease.lease_id);
  });

  test("audit pages, iterAudit, lastSeq and verify agree", T, async () => {
    const a = await w.principal();
    const r = resource();
    const lease = await a.writ.acquire(r, { intent: "audited" });
    await a.writ.release(lease.lease_id);
    const rows = [];
    for await (const row of a.writ.iterAudit({ resource: r, page: 1 })) rows.push(row);
    assert.deepEqual(
      rows.map((row) => row.event),
      ["lease.granted", "lease.released"],
    );
    const last = await a.writ.lastSeq();
    assert.ok(last >= rows[1].seq);
    assert.equal((await a.writ.audit({ afterSeq: last })).rows.length, 0);
    const verify = await a.writ.verify();
    assert.equal(verify.ok, true);
    assert.equal(verify.first_bad_seq, null);
  });
});

describe("request() and errors", () => {
  test("request() calls any route of the OpenAPI document", T, async () => {
    const a = await w.principal();
    const lease = await a.writ.request("post", "/v1/leases", { body: { resource: resource(), intent: "raw" } });
    const got = await a.writ.request("get", "/v1/leases/{lease_id}", { path: { lease_id: lease.lease_id } });
    assert.equal(got.lease_id, lease.lease_id);
    await a.writ.release(lease.lease_id);
  });

  test("errorFromBody maps every protocol code to its class", T, () => {
    const classes = {
      invalid: InvalidError,
      unauthenticated: UnauthenticatedError,
      forbidden: ForbiddenError,
      not_found: NotFoundError,
      conflict: ConflictError,
      held: HeldError,
      consent_required: ConsentRequiredError,
      lease_lost: LeaseLostError,
      frozen: FrozenError,
      unavailable: UnavailableError,
      timeout: RequestTimeoutError,
      too_many_requests: TooManyRequestsError,
    };
    for (const [code, cls] of Object.entries(classes)) {
      const err = errorFromBody(418, { error: { code, message: "m", extra: 1 } });
      assert.ok(err instanceof cls, code);
      assert.equal(err.code, code);
      assert.equal(err.name, cls.name);
      assert.equal(err.details.extra, 1);
      assert.deepEqual(err.toBody(), { error: { code, message: "m", extra: 1 } });
    }
    const odd = errorFromBody(502, "<html>bad gateway</html>");
    assert.equal(odd.constructor, WritError);
    assert.match(odd.message, /HTTP 502/);
  });
});

test("the token never shows when a client, or a lease holding it, is logged or serialised", () => {
  const token = "writ_neverShownToken123";
  const writ = new Writ({ url: "http://127.0.0.1:1", token });
  assert.equal(writ.token, token); // still readable
  const holder = { client: writ }; // as a LeaseHandle holds its client
  for (const shown of [
    inspect(writ, { depth: 5 }),
    JSON.stringify(writ),
    String(writ),
    inspect(holder, { depth: 5 }),
    JSON.stringify(holder),
  ]) {
    assert.ok(!shown.includes(token), shown);
  }
});

test("VERSION is the package's version", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(VERSION, pkg.version);
});

// The answer types of src/models.ts are written from docs/protocol.md (the OpenAPI document
// declares answers only as objects): every field they declare required is in a real answer.
const FIELDS = {
  Principal: ["name", "kind", "vendor", "wake", "admin", "created_at"],
  Lease: [
    "lease_id", "resource", "holder", "intent", "fencing_token", "lock_key", "acquired_at",
    "expires_at", "ttl_s", "touches", "state", "rollback", "ended_at",
  ],
  Holder: ["holder", "resource", "intent", "acquired_at", "expires_at", "wake"],
  Change: [
    "change_id", "resource", "author", "attribute", "summary", "lease_id", "fencing_token", "at",
    "protected_until",
  ],
  Consent: [
    "consent_id", "change_id", "resource", "attribute", "requester", "author", "reason", "status",
    "requested_at", "expires_at", "escalated_to", "answered_by", "answered_at",
  ],
  Rollback: [
    "rollback_id", "status", "lease_id", "change_id", "resource", "lock_holder", "lock_key",
    "fencing_token", "path", "key_holder", "override_queue", "requested_by", "reason",
    "requested_at", "approved_by", "denied_by", "executed_at", "response_status", "error", "defect",
  ],
  Freeze: ["freeze_id", "prefix", "reason", "by", "at", "until", "allow", "lifted_by", "lifted_at", "state"],
  AuditRow: [
    "seq", "timestamp", "event", "agent_id", "resource", "lock_holder", "lock_key",
    "lock_acquired_at", "fencing_token", "rollback_allowed", "rollback_path", "rollback_key_holder",
    "approved_by", "human_override_queue", "rollback_denominator", "rollback_denominator_is_defect",
    "second_key_revoke_provenance", "notes", "prev_hash", "hash",
  ],
  AuditPage: ["rows", "next_after_seq"],
  Verify: ["ok", "rows", "head", "first_bad_seq"],
  Who: ["resource", "at", "lock_holder", "lock_key", "lease"],
  Fence: ["current", "current_token"],
  ResourceStatus: ["resource", "lease", "queue", "protected_changes", "frozen"],
  HeldLease: ["waiters"],
  Health: ["ok", "version", "store"],
};

function hasFields(model, obj) {
  const missing = FIELDS[model].filter((f) => !(f in obj));
  assert.deepEqual(missing, [], `${model} answer lacks ${missing.join(", ")}: ${JSON.stringify(obj)}`);
}

test("every answer type's fields are in the server's answers", T, async () => {
  const a = await w.principal();
  const b = await w.principal();
  const q = await w.principal("queue");
  const r = resource();
  hasFields("Health", await a.writ.health());
  hasFields("Principal", await a.writ.whoami());
  const lease = await a.writ.acquire(r, {
    intent: "fields",
    touches: ["capacity"],
    rollback: { allowed: true, path: "/rollback/fields", key_holder: q.name, override_queue: q.name },
  });
  hasFields("Lease", lease);
  const held = await b.writ.acquire(r, { intent: "x", touches: ["labels"] }).catch((e) => e);
  hasFields("Holder", held.holder);
  const change = await a.writ.change(lease.lease_id, { attribute: "capacity", summary: "4→8" });
  hasFields("Change", change);
  hasFields("Consent", await b.writ.askConsent(change.change_id, "undo"));
  hasFields("Rollback", await b.writ.requestRollback({ leaseId: lease.lease_id, reason: "r" }));
  const status = await a.writ.status({ resource: r });
  hasFields("Lease", status.leases[0]);
  hasFields("HeldLease", status.leases[0]);
  hasFields("ResourceStatus", await a.writ.resource(r));
  hasFields("Who", await a.writ.who(r));
  hasFields("Fence", await a.writ.fence(r, lease.fencing_token));
  const page = await a.writ.audit({ resource: r });
  hasFields("AuditPage", page);
  hasFields("AuditRow", page.rows[0]);
  hasFields("Verify", await a.writ.verify());
  const freeze = await q.writ.freeze(`${r}/frozen`, { reason: "fields" });
  hasFields("Freeze", freeze);
  await q.writ.liftFreeze(freeze.freeze_id);
  await a.writ.release(lease.lease_id);
});

test("a server that does not answer in time is UnavailableError after timeoutS", T, async () => {
  const silent = createServer(() => {}); // never answers
  await new Promise((ok) => silent.listen(0, "127.0.0.1", ok));
  try {
    const writ = new Writ({ url: `http://127.0.0.1:${silent.address().port}`, token: "x", timeoutS: 0.2 });
    const err = await writ.whoami().catch((e) => e);
    assert.ok(err instanceof UnavailableError, String(err));
    assert.match(err.message, /no answer within 0\.2s/);
  } finally {
    silent.closeAllConnections?.();
    silent.close();
  }
});

test("the package exports the client, the lease handle, every error class and isUnreadableRow", async () => {
  const mod = await import("../dist/index.js");
  const expected = [
    "Writ", "LeaseHandle", "errorFromBody", "parseRetryAfter", "VERSION", "DEFAULT_URL", "DEFAULT_TIMEOUT_S",
    "MAX_WAIT_S", "WATCH_WAIT_S", "WritError", "InvalidError", "UnauthenticatedError",
    "ForbiddenError", "NotFoundError", "ConflictError", "HeldError", "ConsentRequiredError",
    "LeaseLostError", "TooLargeError", "FrozenError", "UnavailableError", "isUnreadableRow",
    "RequestTimeoutError", "TooManyRequestsError",
  ];
  assert.deepEqual(Object.keys(mod).sort(), [...expected].sort());
  for (const name of expected.filter((n) => n.endsWith("Error") && n !== "WritError")) {
    assert.ok(new mod[name]("m") instanceof mod.WritError, name);
  }
});

test("Retry-After on a refusal is err.retryAfterS (seconds, or an HTTP date)", T, async () => {
  const answers = [
    { status: 409, headers: { "retry-after": "7" }, code: "held" },
    { status: 503, headers: { "retry-after": new Date(Date.now() + 30_000).toUTCString() }, code: "unavailable" },
    { status: 409, headers: {}, code: "held" },
  ];
  const stub = new Writ({
    url: "http://writ.invalid",
    token: "x",
    fetch: async () => {
      const a = answers.shift();
      const body = JSON.stringify({ error: { code: a.code, message: "m" } });
      return new Response(body, { status: a.status, headers: a.headers });
    },
  });
  const held = await stub.whoami().catch((e) => e);
  assert.ok(held instanceof HeldError);
  assert.equal(held.retryAfterS, 7);
  const down = await stub.whoami().catch((e) => e);
  assert.ok(down instanceof UnavailableError);
  assert.ok(down.retryAfterS >= 29 && down.retryAfterS <= 30, String(down.retryAfterS));
  const none = await stub.whoami().catch((e) => e);
  assert.equal(none.retryAfterS, undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
});
