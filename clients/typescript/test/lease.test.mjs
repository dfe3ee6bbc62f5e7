// withLease / lease(): renewal, loss (the signal aborts, LeaseLostError), FIFO waits.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { HeldError, LeaseLostError, Writ } from "../dist/index.js";
import { deferred, serveWrit, unique, waitUntil } from "./helpers.mjs";

// a broken client would hang rather than fail: every test has a deadline
const T = { timeout: 60_000 };

let w;
before(async () => {
  w = await serveWrit();
});
after(async () => {
  await w?.stop();
});

const resource = () => `svc/${unique("r")}`;
const provenance = (q) => ({ runbook: "R-44", paged: q.name, reason: "holder stuck" });

test("withLease holds, renews in the background, releases, and answers the callback's value", T, async () => {
  const a = await w.principal();
  const r = resource();
  let held;
  const out = await a.writ.withLease(r, { intent: "resize", ttlS: 30, renewEveryS: 0.05 }, async (lease) => {
    held = lease;
    assert.equal(lease.resource, r);
    assert.equal(lease.lockKey, `${r}/${lease.fencingToken}`);
    assert.deepEqual(lease.headers(), {
      "Writ-Lease": lease.leaseId,
      "Writ-Fencing-Token": String(lease.fencingToken),
    });
    assert.equal(lease.env().WRIT_LEASE_ID, lease.leaseId);
    const granted = lease.expiresAt;
    await waitUntil(() => lease.expiresAt !== granted, { what: "a background renewal" });
    assert.equal(lease.signal.aborted, false);
    return 42;
  });
  assert.equal(out, 42);
  assert.equal((await a.writ.getLease(held.leaseId)).state, "released");
  assert.equal(held.lost, false);
  assert.equal(held.signal.aborted, true); // the work's authority ended with the release
  const audit = [];
  for await (const row of a.writ.iterAudit({ resource: r })) audit.push(row.event);
  assert.ok(audit.includes("lease.renewed"));
});

test("a revoke while the callback runs aborts its signal and withLease throws LeaseLostError", T, async () => {
  const a = await w.principal();
  const q = await w.principal("queue");
  const r = resource();
  const started = deferred();
  const lost = [];
  const run = a.writ.withLease(
    r,
    { intent: "long job", ttlS: 30, renewEveryS: 0.05, onLost: (err) => lost.push(err) },
    async (lease) => {
      started.resolve(lease);
      // the work: runs until the lease's signal says stop
      await new Promise((_, reject) => {
        lease.signal.addEventListener("abort", () => reject(lease.signal.reason), { once: true });
      });
    },
  );
  const lease = await started.promise;
  await q.writ.revoke(lease.leaseId, provenance(q));
  const err = await run.catch((e) => e);
  assert.ok(err instanceof LeaseLostError, String(err));
  assert.equal(err.leaseId, lease.leaseId);
  assert.equal(err.state, "revoked");
  assert.equal(lease.lost, true);
  assert.ok(lease.signal.aborted);
  assert.ok(lease.signal.reason instanceof LeaseLostError);
  assert.equal(lost.length, 1);
  assert.throws(() => lease.check(), LeaseLostError);
  assert.throws(() => lease.headers(), LeaseLostError);
});

test("a lease lost while the callback ignores the signal still ends in LeaseLostError", T, async () => {
  const a = await w.principal();
  const q = await w.principal("queue");
  const r = resource();
  const err = await a.writ
    .withLease(r, { intent: "careless", ttlS: 30, renewEveryS: 0.05 }, async (lease) => {
      await q.writ.revoke(lease.leaseId, provenance(q));
      await waitUntil(() => lease.lost, { what: "the loss to be noticed" });
      return "done anyway";
    })
    .catch((e) => e);
  assert.ok(err instanceof LeaseLostError);
});

test("renewals that cannot reach the server lose the lease at its ttl", T, async () => {
  const a = await w.principal();
  let cut = false;
  const flaky = new Writ({
    url: w.url,
    token: a.writ.token,
    fetch: (input, init) => (cut ? Promise.reject(new TypeError("fetch failed")) : fetch(input, init)),
  });
  const lease = await flaky.lease(resource(), { intent: "fragile", ttlS: 1, renewEveryS: 0.05 });
  cut = true;
  const reason = await new Promise((resolve) =>
    lease.signal.addEventListener("abort", () => resolve(lease.signal.reason), { once: true }),
  );
  assert.ok(reason instanceof LeaseLostError);
  assert.equal(reason.state, "unknown");
  assert.match(reason.message, /could not be renewed before it expired/);
  await assert.rejects(lease.release(), LeaseLostError);
});

test("an error in the callback propagates, and the lease is released", T, async () => {
  const a = await w.principal();
  let id;
  await assert.rejects(
    a.writ.withLease(resource(), { intent: "x" }, (lease) => {
      id = lease.leaseId;
      throw new RangeError("boom");
    }),
    RangeError,
  );
  assert.equal((await a.writ.getLease(id)).state, "released");
});

test("a refused acquire rejects withLease before the callback runs", T, async () => {
  const a = await w.principal();
  const b = await w.principal();
  const r = resource();
  const lease = await a.writ.lease(r, { intent: "first" });
  let ran = false;
  const err = await b.writ
    .withLease(r, { intent: "second" }, () => {
      ran = true;
    })
    .catch((e) => e);
  assert.ok(err instanceof HeldError);
  assert.equal(err.holder.holder, a.name);
  assert.equal(ran, false);
  const released = await lease.release();
  assert.equal(released.state, "released");
});

test("waiters are granted in arrival order (FIFO), each after the one before releases", T, async () => {
  const [a, b, c] = [await w.principal(), await w.principal(), await w.principal()];
  const r = resource();
  const first = await a.writ.lease(r, { intent: "holder" });
  const controller = new AbortController();
  const queued = [];
  const afterSeq = await a.writ.lastSeq();
  const watching = (async () => {
    for await (const row of a.writ.watch({ resource: r, afterSeq, signal: controller.signal, waitS: 5 })) {
      if (row.event === "lease.queued") queued.push(row.agent_id);
    }
  })();

  const order = [];
  const job = (who, name) =>
    who.writ.withLease(r, { intent: `after ${name}`, waitS: 60 }, async (lease) => {
      order.push({ name, token: lease.fencingToken, acquiredAt: lease.data.acquired_at });
    });
  const runB = job(b, "b");
  await waitUntil(() => queued.length === 1, { what: "b to be queued" });
  const runC = job(c, "c");
  await waitUntil(() => queued.length === 2, { what: "c to be queued" });
  assert.deepEqual(queued, [b.name, c.name]);

  await first.release();
  await Promise.all([runB, runC]);
  controller.abort();
  await watching;
  assert.deepEqual(
    order.map((o) => o.name),
    ["b", "c"],
  );
  assert.ok(order[0].token > first.fencingToken);
  assert.ok(order[1].token > order[0].token);
});

test("a lease held until lost keeps its process running (the leader pattern)", T, async () => {
  const a = await w.principal();
  const q = await w.principal("queue");
  const r = resource();
  const script = `
    import { Writ } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
    const writ = new Writ({ url: process.argv[1], token: process.argv[2] });
    try {
      await writ.withLease(process.argv[3], { intent: "lead", ttlS: 30, renewEveryS: 0.05 }, (lease) => {
        console.log("held " + lease.leaseId);
        return new Promise((resolve) => lease.signal.addEventListener("abort", resolve));
      });
    } catch (err) {
      console.log("lost " + err.state);
    }
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script, w.url, a.writ.token, r], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  let out = "";
  const held = deferred();
  child.stdout.on("data", (chunk) => {
    out += chunk;
    const m = /held (\S+)/.exec(out);
    if (m) held.resolve(m[1]);
  });
  const leaseId = await Promise.race([held.promise, exited.then((code) => `exited ${code}`)]);
  assert.match(leaseId, /^ls_/);
  await q.writ.revoke(leaseId, provenance(q));
  assert.equal(await exited, 0);
  assert.match(out, /lost revoked/);
});

test("aborting a queued acquire rejects with the signal's reason and leaves the queue", T, async () => {
  const a = await w.principal();
  const b = await w.principal();
  const r = resource();
  const first = await a.writ.lease(r, { intent: "holder" });
  const controller = new AbortController();
  const waiting = b.writ.acquire(r, { intent: "patient", waitS: 60, signal: controller.signal });
  await waitUntil(async () => (await a.writ.resource(r)).queue.length === 1, { what: "b queued" });
  controller.abort(new Error("gave up"));
  await assert.rejects(waiting, /gave up/);
  await waitUntil(async () => (await a.writ.resource(r)).queue.length === 0, { what: "b to leave" });
  await first.release();
  assert.equal((await a.writ.resource(r)).lease, null);
});

test("a renewal by hand that is refused marks the lease lost too", T, async () => {
  const a = await w.principal();
  const q = await w.principal("queue");
  const lease = await a.writ.lease(resource(), { intent: "manual", ttlS: 60 });
  await q.writ.revoke(lease.leaseId, provenance(q));
  await assert.rejects(lease.renew(), LeaseLostError);
  assert.equal(lease.lost, true);
  assert.equal(lease.signal.reason.state, "revoked");
  await assert.rejects(lease.release(), LeaseLostError);
});

test("a callback that fails after the loss: LeaseLostError, with the callback's error as cause", T, async () => {
  const a = await w.principal();
  const q = await w.principal("queue");
  const err = await a.writ
    .withLease(resource(), { intent: "fragile", ttlS: 30, renewEveryS: 0.05 }, async (lease) => {
      await q.writ.revoke(lease.leaseId, provenance(q));
      await new Promise((resolve) => lease.signal.addEventListener("abort", resolve, { once: true }));
      throw new TypeError("the write failed half-way");
    })
    .catch((e) => e);
  assert.ok(err instanceof LeaseLostError, String(err));
  assert.equal(err.state, "revoked");
  assert.ok(err.cause instanceof TypeError);
});

test("check() reads the clock: a synchronous stretch past the ttl loses the lease at once", T, async () => {
  // the renewals never ran during it (the event loop was busy): before, check() passed and
  // the signal stayed unaborted on a lease the server had already let go
  const a = await w.principal();
  const lease = await a.writ.lease(resource(), { intent: "busy", ttlS: 1, renewEveryS: 5 });
  try {
    const until = Date.now() + 1200;
    while (Date.now() < until) {
      // busy, as a large JSON.parse or synchronous file I/O keeps it
    }
    assert.throws(() => lease.check(), LeaseLostError);
    assert.throws(() => lease.headers(), LeaseLostError);
    assert.equal(lease.signal.aborted, true);
  } finally {
    await lease.release().catch(() => undefined);
  }
});

test("an acquire answered later than a renewal's period is renewed before it is handed over", T, async () => {
  // a holder that lets its 1-s lease run out: the waiter's answer comes after a wait longer
  // than its renewal period, so the client renews at once (a fresh clock) before returning
  const a = await w.principal();
  const b = await w.principal();
  const r = resource();
  const first = await a.writ.acquire(r, { intent: "hold", ttlS: 1 });
  const lease = await b.writ.lease(r, { intent: "next", ttlS: 30, waitS: 10, renewEveryS: 0.2 });
  try {
    assert.notEqual(lease.fencingToken, first.fencing_token);
    const rows = await b.writ.audit({ resource: r });
    assert.ok(rows.rows.some((row) => row.event === "lease.renewed" && row.agent_id === b.name));
  } finally {
    await lease.release();
  }
});
