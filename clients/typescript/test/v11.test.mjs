// The v1.1 routes (PROTOCOL.md "v1.1 additions") against a real `writ serve` whose policy is
// in closed authority mode (docs/authority.md): authority, waking the holder, policy reload,
// the token lifecycle, queue members, the grant's typo warning and Retry-After on 409 held.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ForbiddenError,
  HeldError,
  InvalidError,
  LeaseLostError,
  UnauthenticatedError,
  Writ,
} from "../dist/index.js";
import { serveWrit, unique, waitUntil } from "./helpers.mjs";

const T = { timeout: 60_000 };

let w; // the server and its helpers
let wakes; // the bodies the toy wake route received
let toy; // the toy wake route of perf-agent
let policyPath; // the server's policy file (rewritten by the reload test)
let perf; // perf-agent: may write prod/db
let backup; // perf-backup: may write prod/db too
let cost; // cost-agent: may observe prod/db, write capacity

const POLICY = `
[authority]
mode = "closed"

[[authority.grant]]
principals = ["perf-agent", "perf-backup"]
write = ["prod/db"]
observe = ["prod"]
attributes = ["capacity"]

[[authority.grant]]
principals = ["cost-agent"]
write = ["capacity"]
observe = ["prod/db"]
attributes = ["capacity"]
`;

/** A client acting as a new principal with a fixed name (grants name principals). */
async function named(name, options = { kind: "agent" }) {
  const p = await w.admin.addPrincipal(name, options);
  return { name: p.name, token: p.token, writ: new Writ({ url: w.url, token: p.token }) };
}

before(async () => {
  wakes = [];
  toy = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      wakes.push(JSON.parse(body));
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise((ok) => toy.listen(0, "127.0.0.1", ok));
  w = await serveWrit({ policy: POLICY });
  policyPath = join(w.server.dir, "writ.toml");
  const wake = `http://127.0.0.1:${toy.address().port}/wake`;
  perf = await named("perf-agent", { kind: "agent", wake });
  backup = await named("perf-backup");
  cost = await named("cost-agent");
});

after(async () => {
  await w?.stop();
  toy?.close();
});

function dbResource() {
  return `prod/db/${unique("r")}`;
}

describe("authority (closed mode)", () => {
  test("authority() says what a principal may do and which grant says so", T, async () => {
    const r = dbResource();
    const mine = await perf.writ.authority(perf.name, r);
    assert.equal(mine.mode, "closed");
    assert.equal(mine.principal, perf.name);
    assert.equal(mine.resource, r);
    assert.equal(mine.write, true);
    assert.equal(mine.observe, true);
    assert.deepEqual(mine.attributes, ["capacity"]);
    assert.match(mine.rule, /writ\.toml:5$/); // the perf-agent grant's line
    const theirs = await w.admin.authority(cost.name, r);
    assert.equal(theirs.write, false);
    assert.equal(theirs.observe, true);
    assert.deepEqual(theirs.may.write, ["capacity"]);
  });

  test("an agent may ask only about itself: ForbiddenError", T, async () => {
    const err = await cost.writ.authority(perf.name, dbResource()).catch((e) => e);
    assert.ok(err instanceof ForbiddenError, String(err));
    assert.match(err.message, /only about itself/);
  });

  test("a lease outside the caller's authority is ForbiddenError with rule and may", T, async () => {
    const err = await cost.writ.acquire(dbResource(), { intent: "consolidate" }).catch((e) => e);
    assert.ok(err instanceof ForbiddenError, String(err));
    assert.equal(err.status, 403);
    assert.match(err.message, /cost-agent may observe prod\/db/);
    assert.match(err.rule, /writ\.toml:11$/); // the cost-agent grant's line
    assert.deepEqual(err.may, { write: ["capacity"], observe: ["capacity", "prod/db"], attributes: ["capacity"] });
    // a refusal that is not about authority has neither
    const plain = await perf.writ.revoke("L-none", { runbook: "R", paged: "p", reason: "r" }).catch((e) => e);
    assert.ok(plain instanceof ForbiddenError, String(plain));
    assert.equal(plain.rule, undefined);
    assert.equal(plain.may, undefined);
  });

  test("409 held: retryAfterS from the server's Retry-After; an agent sees writ's wake route", T, async () => {
    const r = dbResource();
    const lease = await perf.writ.acquire(r, { intent: "resize", ttlS: 30 });
    try {
      const err = await backup.writ.acquire(r, { intent: "resize too" }).catch((e) => e);
      assert.ok(err instanceof HeldError, String(err));
      assert.ok(err.retryAfterS >= 1 && err.retryAfterS <= 30, String(err.retryAfterS));
      assert.equal(err.holder.wake, `/v1/leases/${lease.lease_id}/wake`);
      // a human (the admin) sees the holder's own route and writ's beside it
      const seen = await w.admin.acquire(r, { intent: "look" }).catch((e) => e);
      assert.ok(seen instanceof HeldError, String(seen));
      assert.match(seen.holder.wake, /^http:\/\/127\.0\.0\.1:\d+\/wake$/);
      assert.equal(seen.holder.wake_via_writ, `/v1/leases/${lease.lease_id}/wake`);
    } finally {
      await perf.writ.release(lease.lease_id);
    }
  });

  test("a grant outside every prefix the policy names carries a warning", T, async () => {
    const lease = await w.admin.acquire(`prdo/${unique("db")}`, { intent: "typo" });
    try {
      assert.match(lease.warning, /outside every prefix the policy names/);
      assert.match(lease.warning, /Granted all the same/);
    } finally {
      await w.admin.release(lease.lease_id);
    }
    // withLease's handle keeps the grant's warning after renewals replace its data
    const kept = await w.admin.withLease(`prdo/${unique("db")}`, { intent: "typo", ttlS: 30 }, async (lease) => {
      await lease.renew();
      assert.equal(lease.data.warning, undefined);
      return lease.warning;
    });
    assert.match(kept, /outside every prefix the policy names/);
    const plain = await perf.writ.acquire(dbResource(), { intent: "no typo" });
    assert.equal(plain.warning, undefined);
    await perf.writ.release(plain.lease_id);
  });

  test("lastSeq finds the head when the newest rows are ones the agent may not read", T, async () => {
    for (let i = 0; i < 5; i++) {
      const lease = await w.admin.acquire(`capacity/${unique("x")}`, { intent: "unseen" });
      await w.admin.release(lease.lease_id);
    }
    const head = await w.admin.lastSeq();
    assert.equal(await perf.writ.lastSeq(), head); // rows about capacity: not perf-agent's to read
  });
});

describe("waking the holder", () => {
  test("wake() calls the holder's route once per window; a second call is already woken", T, async () => {
    const r = dbResource();
    const lease = await perf.writ.acquire(r, { intent: "resize", ttlS: 30 });
    try {
      const before = wakes.length;
      const first = await cost.writ.wake(lease.lease_id, "p99 is over the alert");
      assert.equal(first.lease_id, lease.lease_id);
      assert.equal(first.resource, r);
      assert.equal(first.holder, perf.name);
      assert.equal(first.already_woken_at, null);
      const call = await waitUntil(() => wakes.slice(before).find((b) => b.reason === "p99 is over the alert"), {
        what: "the holder's wake route to be called",
      });
      assert.equal(call.by, cost.name);
      const again = await cost.writ.wake(lease.lease_id, "still over");
      assert.equal(again.already_woken_at, first.woken_at);
      const rows = (await w.admin.audit({ resource: r })).rows.filter((row) => row.event === "wake.requested");
      assert.equal(rows.length, 2);
      assert.ok(!wakes.some((b) => b.reason === "still over"), "called again within the window");
    } finally {
      await perf.writ.release(lease.lease_id);
    }
    const gone = await cost.writ.wake(lease.lease_id, "late").catch((e) => e);
    assert.ok(gone instanceof LeaseLostError, String(gone));
  });

  test("wake() needs a reason and observe authority", T, async () => {
    const lease = await perf.writ.acquire(dbResource(), { intent: "resize" });
    try {
      const empty = await cost.writ.wake(lease.lease_id, "").catch((e) => e);
      assert.ok(empty instanceof InvalidError, String(empty));
      const outsider = await named(unique("outsider"));
      const err = await outsider.writ.wake(lease.lease_id, "why").catch((e) => e);
      assert.ok(err instanceof ForbiddenError, String(err));
    } finally {
      await perf.writ.release(lease.lease_id);
    }
  });
});

describe("policy reload", () => {
  test("reloadPolicy() applies a new grant; a bad file is InvalidError and changes nothing", T, async () => {
    const original = readFileSync(policyPath, "utf8");
    const r = `capacity/${unique("plan")}`;
    try {
      const agent = await named(unique("late-agent"));
      assert.equal((await agent.writ.authority(agent.name, r)).write, false);
      writeFileSync(
        policyPath,
        `${original}\n[[authority.grant]]\nprincipals = ["${agent.name}"]\nwrite = ["capacity"]\n`,
      );
      const agentReload = await agent.writ.reloadPolicy().catch((e) => e);
      assert.ok(agentReload instanceof ForbiddenError, "only an admin reloads");
      const out = await w.admin.reloadPolicy();
      assert.equal(out.mode, "closed");
      assert.equal(out.grants, 3);
      assert.deepEqual(out.warnings, []);
      assert.equal((await agent.writ.authority(agent.name, r)).write, true);

      writeFileSync(policyPath, `${original}\n[[authority.grant]]\nwrite = 5\n`);
      const bad = await w.admin.reloadPolicy().catch((e) => e);
      assert.ok(bad instanceof InvalidError, String(bad));
      assert.match(bad.message, /writ\.toml:\d+/);
      assert.equal((await agent.writ.authority(agent.name, r)).write, true, "the bad file changed nothing");
    } finally {
      writeFileSync(policyPath, original);
      await w.admin.reloadPolicy();
    }
  });
});

describe("token lifecycle and queue members", () => {
  test("rotatePrincipal(): the new token works, the old one is refused at once", T, async () => {
    const a = await named(unique("rot"));
    const out = await a.writ.rotatePrincipal(a.name, { expiresInS: 3600 });
    assert.equal(out.name, a.name);
    assert.notEqual(out.token, a.token);
    assert.ok(Date.parse(out.token_expires_at) > Date.now());
    const old = await a.writ.whoami().catch((e) => e);
    assert.ok(old instanceof UnauthenticatedError, String(old));
    const fresh = new Writ({ url: w.url, token: out.token });
    assert.equal((await fresh.whoami()).name, a.name);
    const other = await named(unique("rot"));
    const err = await other.writ.rotatePrincipal(a.name).catch((e) => e);
    assert.ok(err instanceof ForbiddenError, "only an admin rotates another's token");
  });

  test("a principal name that would walk to another route is refused before any request", T, async () => {
    const sent = [];
    const stub = new Writ({ url: w.url, token: "x", fetch: async (url) => (sent.push(String(url)), new Response("{}")) });
    for (const name of ["..", ".", "", "%2e%2e"]) {
      for (const call of [
        () => stub.rotatePrincipal(name),
        () => stub.disablePrincipal(name, "r"),
        () => stub.enablePrincipal(name),
        () => stub.principalQueues(name, { add: [] }),
      ]) {
        await assert.rejects(call(), InvalidError, JSON.stringify(name));
      }
    }
    await assert.rejects(stub.wake("..", "r"), InvalidError);
    assert.deepEqual(sent, []);
    // a slash is encoded, never a path separator
    await stub.rotatePrincipal("a/../admin");
    await stub.wake("../principals", "r");
    assert.deepEqual(sent, [
      `${w.url}/v1/principals/a%2F..%2Fadmin/rotate`,
      `${w.url}/v1/leases/..%2Fprincipals/wake`,
    ]);
  });

  test("addPrincipal() with expiresInS: the token carries its expiry", T, async () => {
    const p = await w.admin.addPrincipal(unique("exp"), { kind: "agent", expiresInS: 600 });
    const at = Date.parse(p.token_expires_at);
    assert.ok(at > Date.now() + 500_000 && at <= Date.now() + 601_000, p.token_expires_at);
    const bad = await w.admin.addPrincipal(unique("exp"), { kind: "agent", expiresInS: 0 }).catch((e) => e);
    assert.ok(bad instanceof InvalidError, String(bad));
    assert.equal(bad.details.field, "expires_in_s");
  });

  test("disablePrincipal() revokes its leases and refuses its token; enablePrincipal() gives a new one", T, async () => {
    const r = dbResource();
    const lease = await backup.writ.acquire(r, { intent: "about to be disabled" });
    const out = await w.admin.disablePrincipal(backup.name, "key leaked in a CI log");
    assert.equal(out.disabled, true);
    assert.deepEqual(out.revoked, [lease.lease_id]);
    assert.deepEqual(out.withdrawn, []);
    assert.equal((await w.admin.getLease(lease.lease_id)).state, "revoked");
    const refused = await backup.writ.whoami().catch((e) => e);
    assert.ok(refused instanceof UnauthenticatedError, String(refused));
    const twice = await w.admin.disablePrincipal(backup.name, "again").catch((e) => e);
    assert.ok(twice instanceof InvalidError, String(twice));
    const enabled = await w.admin.enablePrincipal(backup.name);
    assert.equal(enabled.disabled, false);
    assert.equal((await backup.writ.whoami().catch((e) => e)).code, "unauthenticated", "old token stays refused");
    backup = { name: backup.name, token: enabled.token, writ: new Writ({ url: w.url, token: enabled.token }) };
    assert.equal((await backup.writ.whoami()).name, backup.name);
  });

  test("queues on a human: set at creation, changed by principalQueues(), listed", T, async () => {
    const q1 = await w.admin.addPrincipal(unique("q"), { kind: "queue" });
    const q2 = await w.admin.addPrincipal(unique("q"), { kind: "queue" });
    const human = await w.admin.addPrincipal(unique("oncall"), { kind: "human", queues: [q1.name] });
    assert.deepEqual(human.queues, [q1.name]);
    const moved = await w.admin.principalQueues(human.name, { add: [q2.name], remove: [q1.name] });
    assert.deepEqual(moved.queues, [q2.name]);
    const listed = (await w.admin.principals()).principals.find((p) => p.name === human.name);
    assert.deepEqual(listed.queues, [q2.name]);
    const unknown = await w.admin.principalQueues(human.name, { add: [unique("nope")] }).catch((e) => e);
    assert.ok(unknown instanceof InvalidError, String(unknown));
    const agentQueues = await w.admin
      .addPrincipal(unique("a"), { kind: "agent", queues: [q1.name] })
      .catch((e) => e);
    assert.ok(agentQueues instanceof InvalidError, "only humans are queue members");
  });
});
