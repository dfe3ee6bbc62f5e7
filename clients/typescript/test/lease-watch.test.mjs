// lease(..., { watch: true }) / withLease: a revoke aborts the lease's signal within about a
// second, not at the next renewal; without it nothing changes; a watch refused the rows
// leaves the renewals to tell; a release aborts the watch's long poll; odd answers crash
// nothing. The server lets each principal have one request waiting
// (--max-waits-per-principal 1): a probe of the agent's own is refused while the watch's long
// poll waits, which is how the tests see it under way, and shows its cost.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { LeaseLostError, UnavailableError, Writ } from "../dist/index.js";
import { deferred, serveWrit, unique, waitUntil } from "./helpers.mjs";

const T = { timeout: 60_000 };

let w;
before(async () => {
  w = await serveWrit({ args: ["--max-waits-per-principal", "1"] });
});
after(async () => {
  await w?.stop();
});

const resource = () => `svc/${unique("r")}`;
const provenance = (name) => ({ runbook: "R-44", paged: name, reason: "runaway" });

/** Whether `writ` (its principal) has a request waiting on the server: its one wait is taken. */
async function waiting(writ, r) {
  try {
    await writ.events({ resource: r, afterSeq: 0, waitS: 0.01 });
    return false;
  } catch (err) {
    if (err instanceof UnavailableError && /waiting on this server/.test(err.message)) return true;
    throw err;
  }
}

/** Seconds until `signal` aborts, or null if it does not within `timeoutS`. */
function abortedWithin(signal, timeoutS) {
  const started = performance.now();
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), timeoutS * 1000);
    const done = () => {
      clearTimeout(timer);
      resolve((performance.now() - started) / 1000);
    };
    if (signal.aborted) done();
    else signal.addEventListener("abort", done, { once: true });
  });
}

test("with watch, a revoke aborts the signal within a couple of seconds, naming who revoked", T, async () => {
  const a = await w.principal();
  const h = await w.principal("human");
  const r = resource();
  const started = deferred();
  const lost = [];
  const run = a.writ.withLease(
    r,
    { intent: "long job", ttlS: 60, watch: true, onLost: (err) => lost.push(err) },
    async (lease) => {
      started.resolve(lease);
      await new Promise((_, reject) => {
        lease.signal.addEventListener("abort", () => reject(lease.signal.reason), { once: true });
      });
    },
  );
  const lease = await started.promise;
  await waitUntil(() => waiting(a.writ, r), { what: "the watch's long poll" });
  const revoked = performance.now();
  await h.writ.revoke(lease.leaseId, provenance(h.name));
  const tookS = await abortedWithin(lease.signal, 10);
  assert.ok(tookS !== null, "the signal never aborted");
  const sinceRevokeS = (performance.now() - revoked) / 1000;
  assert.ok(sinceRevokeS < 2.5, `${sinceRevokeS}s (the next renewal was 20 s away)`);
  const err = await run.catch((e) => e);
  assert.ok(err instanceof LeaseLostError, String(err));
  assert.equal(err.state, "revoked");
  assert.match(err.message, new RegExp(`revoked by ${h.name} \\(runbook R-44`));
  assert.equal(lease.signal.reason, err);
  assert.equal(lost.length, 1);
  await waitUntil(async () => !(await waiting(a.writ, r)), { timeoutS: 2, what: "the poll gone" });
});

test("a revoke before the watch's first look still names who revoked", T, async () => {
  // The watch's first ask (the ledger's head) is held until the lease is revoked: a watch
  // slow to start. Before, the loss said only "was revoked".
  const a = await w.principal();
  const h = await w.principal("human");
  const revokedFirst = deferred();
  const lastSeq = a.writ.lastSeq.bind(a.writ);
  a.writ.lastSeq = async (call) => {
    await revokedFirst.promise;
    return lastSeq(call);
  };
  const lease = await a.writ.lease(resource(), { intent: "long job", ttlS: 60, watch: true });
  try {
    await h.writ.revoke(lease.leaseId, provenance(h.name));
    revokedFirst.resolve();
    assert.ok((await abortedWithin(lease.signal, 10)) !== null, "the signal never aborted");
    assert.equal(lease.signal.reason.state, "revoked");
    assert.match(lease.signal.reason.message, new RegExp(`revoked by ${h.name} \\(runbook R-44`));
  } finally {
    await lease.stop().catch(() => {});
  }
});

test("without watch no request waits, and a revoke is learned at the renewal", T, async () => {
  const a = await w.principal();
  const h = await w.principal("human");
  const r = resource();
  const lease = await a.writ.lease(r, { intent: "long job", ttlS: 60, renewEveryS: 3 });
  try {
    assert.equal(await waiting(a.writ, r), false);
    const revoked = performance.now();
    await h.writ.revoke(lease.leaseId, provenance(h.name));
    assert.equal(await abortedWithin(lease.signal, 1.5), null); // a watch tells within one
    assert.ok((await abortedWithin(lease.signal, 10)) !== null, "the renewal never told");
    assert.ok((performance.now() - revoked) / 1000 > 2);
    assert.equal(lease.signal.reason.state, "revoked");
  } finally {
    await lease.stop();
  }
});

test("a watch refused the rows (4xx) stops asking; renewals go on and tell a revoke", T, async () => {
  const a = await w.principal();
  const h = await w.principal("human");
  let refused = 0;
  // a proxy in front of writ that lets the agent hold leases but not watch the rows
  const proxied = new Writ({
    url: w.url,
    token: a.writ.token,
    fetch: (input, init) => {
      if (new URL(input).pathname !== "/v1/events") return fetch(input, init);
      refused += 1;
      const body = JSON.stringify({ error: { code: "forbidden", message: "not yours to read" } });
      return Promise.resolve(new Response(body, { status: 403, headers: { "content-type": "application/json" } }));
    },
  });
  const r = resource();
  const lease = await proxied.lease(r, { intent: "job", ttlS: 2, renewEveryS: 0.2, watch: true });
  try {
    await waitUntil(() => refused > 0, { what: "the watch's poll" });
    for (let i = 0; i < 3; i++) {
      const seen = lease.expiresAt;
      await waitUntil(() => lease.expiresAt !== seen, { what: "a renewal" });
    }
    assert.equal(refused, 1); // asked once, then left it to the renewals
    assert.equal(lease.lost, false);
    await h.writ.revoke(lease.leaseId, provenance(h.name));
    assert.ok((await abortedWithin(lease.signal, 5)) !== null);
    assert.equal(lease.signal.reason.state, "revoked");
  } finally {
    await lease.stop();
  }
});

test("a release with the watch's long poll waiting returns at once, leaving nothing waiting", T, async () => {
  const a = await w.principal();
  const r = resource();
  const lease = await a.writ.lease(r, { intent: "job", ttlS: 60, watch: true });
  await waitUntil(() => waiting(a.writ, r), { what: "the watch's long poll" });
  const started = performance.now();
  const out = await lease.release();
  const tookS = (performance.now() - started) / 1000;
  assert.ok(tookS < 1, `${tookS}s`);
  assert.equal(out.state, "released");
  assert.equal(lease.lost, false);
  await waitUntil(async () => !(await waiting(a.writ, r)), { timeoutS: 2, what: "the poll gone" });
});

test("odd answers to the watch crash nothing and are not asked in a busy loop", T, async () => {
  const lease = { lease_id: "ls_1", lock_key: "a/b/7", fencing_token: 7, ttl_s: 3600, resource: "a/b", state: "held" };
  const odd = [
    { rows: "nope" },
    { rows: [{ seq: "1" }] },
    { rows: [], next_after_seq: -1 },
    // a revoke row whose provenance is no text, then a lease whose state is no text
    {
      rows: [{ seq: 5, event: "lease.revoked", lock_key: "a/b/7", second_key_revoke_provenance: { revoked_by: { toString: 1 } } }],
      next_after_seq: 5,
    },
  ];
  let polls = 0;
  let leaseAsked = 0;
  const answer = (body, status = 200) =>
    Promise.resolve(new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } }));
  const writ = new Writ({
    url: "http://writ.test",
    token: "t",
    fetch: (input, init) => {
      const path = new URL(input).pathname;
      if (path === "/v1/leases" && init.method === "POST") return answer(lease, 201);
      if (path === "/v1/audit") return answer({ rows: [], next_after_seq: 0 });
      if (path === "/v1/leases/ls_1") {
        leaseAsked += 1;
        return answer(leaseAsked < 3 ? { ...lease, state: { no: "text" } } : { ...lease, state: "revoked" });
      }
      if (path === "/v1/events") {
        let page = odd[Math.min(polls++, odd.length - 1)];
        if (page.next_after_seq === 5) {
          // a revoke row after each cursor (rows given again are a broken page)
          page = { rows: [{ ...page.rows[0], seq: 4 + polls }], next_after_seq: 4 + polls };
        }
        return answer(page);
      }
      return answer(lease);
    },
  });
  const held = await writ.lease("a/b", { intent: "x", ttlS: 3600, watch: true });
  const started = performance.now();
  const tookS = await abortedWithin(held.signal, 15);
  assert.ok(tookS !== null, "the revoke row was never acted on");
  const elapsedS = (performance.now() - started) / 1000;
  // failed polls a second apart; those bringing rows (the revoke row, twice) at once
  assert.ok(polls <= elapsedS + 3, `${polls} polls in ${elapsedS}s`);
  assert.equal(held.signal.reason.state, "revoked");
  assert.match(held.signal.reason.message, /revoked by \{"toString":1\}/);
  await held.stop();
});
