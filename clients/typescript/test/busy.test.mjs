// writ's own refusals for now, 429 `too_many_requests` and 408 `timeout`: a held lease's
// renewals retry them (after Retry-After) until its expiry, and its release leaves the lease to
// expire by itself with a warning, so work that succeeded is never reported as failed. The
// server lets one client have two connections (--max-connections-per-client 2): two long
// polls of the agent's own take them, and its renewals and release are then refused 429.
// Every request of that test opens a connection of its own (`freshFetch`), so none is
// answered on a kept-alive one the cap counted before.
import assert from "node:assert/strict";
import { request } from "node:http";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import {
  LeaseLostError,
  RequestTimeoutError,
  TooManyRequestsError,
  Writ,
  WritError,
  errorFromBody,
} from "../dist/index.js";
import { serveWrit, unique, waitUntil } from "./helpers.mjs";

const T = { timeout: 60_000 };

let w;
before(async () => {
  w = await serveWrit({ args: ["--max-connections-per-client", "2", "--keepalive-timeout", "0.5"] });
});
after(async () => {
  await w?.stop();
});

/** A `fetch` over node:http that opens a connection for each request and closes it after. */
function freshFetch(url, init = {}) {
  return new Promise((resolve, reject) => {
    const headers = { ...init.headers, connection: "close" };
    const req = request(url, { method: init.method, headers, agent: false, signal: init.signal }, (res) => {
      const flat = Object.entries(res.headers).map(([k, v]) => [k, String(v)]);
      resolve(new Response(Readable.toWeb(res), { status: res.statusCode, headers: flat }));
    });
    req.on("error", (err) => reject(new TypeError("fetch failed", { cause: err })));
    req.end(init.body);
  });
}

/** Hold a long poll of `writ`'s until `signal` aborts, asking again when it is refused. */
async function holdPoll(writ, prefix, signal) {
  while (!signal.aborted) {
    await writ.events({ resource: prefix, afterSeq: 1e9, waitS: 20 }, { signal }).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The warnings the process emits while `fn` runs. */
async function warningsDuring(fn) {
  const seen = [];
  const onWarning = (warning) => seen.push(warning);
  process.on("warning", onWarning);
  try {
    return { value: await fn(), seen };
  } finally {
    // emitWarning delivers on the next tick
    await new Promise((resolve) => setImmediate(resolve));
    process.off("warning", onWarning);
  }
}

test("429 on renewals and on the release: the work's value, the lease left to expire, a warning", T, async () => {
  const a = await w.principal();
  const answers = [];
  const writ = new Writ({
    url: w.url,
    token: a.writ.token,
    fetch: async (url, init) => {
      const response = await freshFetch(url, init);
      answers.push(`${new URL(url).pathname.split("/").pop()} ${response.status}`);
      return response;
    },
  });
  // the connections kept alive by the setup (the health probe, the principal's creation) close
  await waitUntil(() => writ.whoami().then(() => true, () => false), { what: "a connection to spare" });
  const r = `svc/${unique("r")}`;
  const polls = new AbortController();
  let held;
  let value;
  let seen;
  try {
    ({ value, seen } = await warningsDuring(() =>
      writ.withLease(r, { intent: "busy", ttlS: 5, renewEveryS: 0.05 }, async (lease) => {
        held = lease;
        // the agent's own long polls take both of its connections
        for (const prefix of ["a", "b"]) holdPoll(writ, prefix, polls.signal);
        const refused = () => answers.filter((x) => x === "renew 429").length >= 2 || lease.lost;
        await waitUntil(refused, { what: "two renewals refused 429" });
        assert.equal(lease.lost, false, String(lease.error));
        return "done";
      }),
    ));
  } finally {
    polls.abort();
  }
  assert.equal(value, "done");
  assert.equal(answers.filter((x) => x.startsWith("release")).join(), "release 429");
  assert.equal(held.lost, false);
  const unreleased = seen.find((x) => x.code === "WRIT_UNRELEASED");
  assert.ok(unreleased, `warnings: ${seen.map(String)}`);
  assert.equal(unreleased.name, "WritWarning");
  assert.match(unreleased.message, /could not release .* \(it expires by itself within 5s\)/);
  // refused for now, after Retry-After (1 s): not again at the renewals' pace
  const renewals = answers.filter((x) => x.startsWith("renew"));
  const first = renewals.indexOf("renew 429");
  assert.ok(renewals.length - first <= 4, `renewals: ${renewals.slice(first)}`);
  await waitUntil(async () => (await a.writ.getLease(held.leaseId).catch(() => undefined))?.state === "held", {
    what: "the polls' connections to close",
  });
  await a.writ.release(held.leaseId);
});

test("too_many_requests and timeout are their own classes, with the answer's Retry-After", T, () => {
  const busy = errorFromBody(429, { error: { code: "too_many_requests", message: "m" } }, "1");
  assert.ok(busy instanceof TooManyRequestsError && busy instanceof WritError);
  assert.equal(busy.status, 429);
  assert.equal(busy.retryAfterS, 1);
  const slow = errorFromBody(408, { error: { code: "timeout", message: "m" } });
  assert.ok(slow instanceof RequestTimeoutError);
  assert.equal(slow.code, "timeout");
});

test("408 on a renewal is retried, and on the release leaves the lease to expire", T, async () => {
  const lease = { lease_id: "ls_1", lock_key: "a/b#7", fencing_token: 7, ttl_s: 30, resource: "a/b" };
  const timeout = () =>
    new Response(JSON.stringify({ error: { code: "timeout", message: "request body not received" } }), {
      status: 408,
    });
  const asked = [];
  const writ = new Writ({
    url: "http://writ.invalid",
    token: "x",
    fetch: async (url) => {
      const what = new URL(url).pathname.split("/").pop();
      asked.push(what);
      if (what === "leases") return new Response(JSON.stringify(lease), { status: 201 });
      // the first two renewals and every release: too slow for writ's listener
      if (what === "release" || asked.filter((x) => x === "renew").length <= 2) return timeout();
      return new Response(JSON.stringify(lease), { status: 200 });
    },
  });
  const { value, seen } = await warningsDuring(() =>
    writ.withLease("a/b", { intent: "x", ttlS: 30, renewEveryS: 0.02 }, async (held) => {
      await waitUntil(() => asked.filter((x) => x === "renew").length >= 3, { what: "a renewal after the 408s" });
      assert.equal(held.lost, false, String(held.error));
      return 7;
    }),
  );
  assert.equal(value, 7);
  assert.ok(seen.some((x) => x.code === "WRIT_UNRELEASED" && /request body not received/.test(x.message)));
  // a refusal that is not for now still loses the lease
  const gone = new Writ({
    url: "http://writ.invalid",
    token: "x",
    fetch: async (url) =>
      new URL(url).pathname.endsWith("/renew")
        ? new Response(JSON.stringify({ error: { code: "forbidden", message: "no" } }), { status: 403 })
        : new Response(JSON.stringify(lease), { status: 201 }),
  });
  const handle = await gone.lease("a/b", { intent: "x", renewEveryS: 0.02 });
  await waitUntil(() => handle.lost, { what: "the 403 to lose the lease" });
  assert.ok(handle.error instanceof LeaseLostError);
  await handle.stop();
});

test("a 4xx page that is no writ answer (an ingress redeploying) is retried, not a loss", T, async () => {
  const lease = { lease_id: "ls_1", lock_key: "a/b#7", fencing_token: 7, ttl_s: 30, resource: "a/b" };
  const asked = [];
  const writ = new Writ({
    url: "http://writ.invalid",
    token: "x",
    fetch: async (url) => {
      const what = new URL(url).pathname.split("/").pop();
      asked.push(what);
      if (what === "leases") return new Response(JSON.stringify(lease), { status: 201 });
      if (what === "renew" && asked.filter((x) => x === "renew").length <= 2) {
        return new Response("<html>404 Not Found</html>", { status: 404 });
      }
      return new Response(JSON.stringify(lease), { status: 200 });
    },
  });
  const handle = await writ.lease("a/b", { intent: "x", renewEveryS: 0.02 });
  await waitUntil(() => asked.filter((x) => x === "renew").length >= 3, { what: "a renewal after the pages" });
  assert.equal(handle.lost, false, String(handle.error));
  await handle.stop();
});
