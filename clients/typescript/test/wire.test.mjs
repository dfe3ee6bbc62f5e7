// What a hostile or broken server can do to the client (src/wire.ts): answers too long,
// answers that are no JSON object, nested past JSON.stringify, a redirect to another host,
// leases and pages that are none, polls answered at once with nothing, a huge Retry-After.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";
import { InvalidError, UnavailableError, Writ, WritError, parseRetryAfter } from "../dist/index.js";

const T = { timeout: 30_000 };

/** A node:http server answering with `handler`; its URL and how to stop it. */
async function hostile(handler) {
  const server = createServer(handler);
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => {
      server.closeAllConnections();
      return new Promise((ok) => server.close(ok));
    },
  };
}

/** A client whose every call is answered by `answer(url)` (a Response). */
function stubbed(answer, options = {}) {
  const asked = [];
  const writ = new Writ({
    url: "http://writ.invalid",
    token: "x",
    ...options,
    fetch: async (url) => {
      asked.push({ url: new URL(url), at: performance.now() / 1000 });
      return answer(new URL(url), asked.length);
    },
  });
  return { writ, asked };
}

const json = (body, status = 200) => new Response(JSON.stringify(body), { status });

test("an endless answer is read up to maxAnswerBytes, then dropped", T, async () => {
  let written = 0;
  const srv = await hostile((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    const chunk = Buffer.alloc(65536, 32);
    const more = () => {
      while (written < 64 * 2 ** 20 && res.write(chunk)) written += chunk.length;
    };
    res.on("drain", more);
    more();
  });
  try {
    const writ = new Writ({ url: srv.url, token: "x", maxAnswerBytes: 2 ** 20 });
    const err = await writ.health().catch((e) => e);
    assert.ok(err instanceof UnavailableError, String(err));
    assert.match(err.message, /longer than 1048576 bytes/);
    assert.ok(written < 32 * 2 ** 20, `the server wrote ${written} bytes`);
  } finally {
    await srv.stop();
  }
});

test("an answer of millions of tiny values is dropped before it is parsed, and settles at once", T, async () => {
  // [{},{},...] of 60 MB: JSON.parse took about 22 bytes of memory per byte (a 1 GB heap ran
  // out) and, at 230 MB, minutes of a blocked event loop
  let written = 0;
  const srv = await hostile((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.write("[");
    const chunk = Buffer.from("{},".repeat(65536));
    const more = () => {
      while (written < 60 * 2 ** 20) {
        written += chunk.length;
        if (!res.write(chunk)) return;
      }
      res.end("{}]");
    };
    res.on("drain", more);
    more();
  });
  try {
    const started = performance.now();
    const err = await new Writ({ url: srv.url, token: "x" }).whoami().catch((e) => e);
    const tookS = (performance.now() - started) / 1000;
    assert.ok(err instanceof UnavailableError, String(err));
    assert.match(err.message, /more than 4000000 JSON values/);
    assert.ok(tookS < 5, `settled after ${tookS} s`);
    assert.ok(written < 30 * 2 ** 20, `the server wrote ${written} bytes`);
  } finally {
    await srv.stop();
  }
});

test("values are counted outside strings; maxAnswerValues sets the bound", T, async () => {
  // braces, brackets and commas in a string (escaped quotes too) are not values
  const s = `\\"${"{[,".repeat(2_000_000)}"`;
  const { writ } = stubbed(() => json({ s }));
  assert.equal((await writ.whoami()).s, s);
  const small = stubbed(() => json({ rows: [1, 2, 3] }), { maxAnswerValues: 3 });
  const err = await small.writ.whoami().catch((e) => e);
  assert.ok(err instanceof UnavailableError && /more than 3 JSON values/.test(err.message), String(err));
  assert.deepEqual(await stubbed(() => json({ rows: [1, 2] }), { maxAnswerValues: 3 }).writ.whoami(), { rows: [1, 2] });
  for (const bad of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    for (const option of ["maxAnswerValues", "maxAnswerBytes"]) {
      const refused = (() => {
        try {
          return new Writ({ [option]: bad });
        } catch (e) {
          return e;
        }
      })();
      assert.ok(refused instanceof InvalidError && refused.details.field === option, `${option} ${bad}: ${refused}`);
    }
  }
});

test("a redirect is never followed: the other host never sees the token", T, async () => {
  const seen = [];
  const other = await hostile((req, res) => {
    seen.push(req.headers.authorization);
    res.end("{}");
  });
  const srv = await hostile((req, res) => {
    res.writeHead(307, { location: `${other.url.replace("127.0.0.1", "localhost")}/v1/health` });
    res.end();
  });
  try {
    const err = await new Writ({ url: srv.url, token: "secret" }).health().catch((e) => e);
    assert.ok(err instanceof UnavailableError, String(err));
    assert.deepEqual(seen, []);
  } finally {
    await srv.stop();
    await other.stop();
  }
});

test("a 2xx that is no JSON object is UnavailableError; a deep error body is a WritError", T, async () => {
  for (const body of ["[1, 2]", '"ok"', "3", "<html>maintenance</html>", "[".repeat(100_000)]) {
    const { writ } = stubbed(() => new Response(body, { status: 200 }));
    const err = await writ.status().catch((e) => e);
    assert.ok(err instanceof UnavailableError, `${body.slice(0, 20)}: ${err}`);
    assert.match(err.message, /not a JSON object/);
  }
  // JSON.parse takes 100,000 levels; JSON.stringify of them was a RangeError out of the client
  const deep = "[".repeat(100_000) + "]".repeat(100_000);
  for (const status of [200, 500]) {
    const { writ } = stubbed(() => new Response(deep, { status }));
    const err = await writ.status().catch((e) => e);
    assert.ok(err instanceof WritError, `${status}: ${err}`);
  }
});

test("renewals answered with no lease end in a lost lease at its expiry, at their pace", T, async () => {
  const lease = { lease_id: "ls_1", lock_key: "a/b#7", fencing_token: 7, ttl_s: 1, resource: "a/b" };
  const bad = [
    new Response("<html>", { status: 200 }),
    json({ ...lease, ttl_s: "30" }),
    new Response('{"lease_id": "ls_1", "lock_key": "k", "fencing_token": 7, "ttl_s": 1e400}', { status: 200 }),
    json({ ...lease, ttl_s: 1e300 }),
    json({ ...lease, fencing_token: "7" }),
    json({ ...lease, lock_key: "a/b\u0000" }),
  ];
  for (const renewal of bad) {
    const { writ, asked } = stubbed((url) =>
      url.pathname === "/v1/leases" ? json(lease, 201) : renewal.clone(),
    );
    const handle = await writ.lease("a/b", { intent: "x", ttlS: 1, renewEveryS: 0.1 });
    const lost = await new Promise((ok) => handle.signal.addEventListener("abort", () => ok(handle.error)));
    assert.equal(lost.details.state, "unknown", lost.message);
    const renewals = asked.length - 1;
    assert.ok(renewals >= 2 && renewals < 40, `${renewals} renewals`);
    await handle.stop();
  }
  const { writ } = stubbed(() => json({ ...lease, ttl_s: Number.NaN }, 201));
  const err = await writ.lease("a/b", { intent: "x" }).catch((e) => e);
  assert.ok(err instanceof UnavailableError, String(err));
});

test("pages that are none are UnavailableError; lastSeq ends", T, async () => {
  for (const page of [
    { rows: [], next_after_seq: "5" },
    { rows: [1], next_after_seq: 2 },
    { rows: [{ event: "x" }], next_after_seq: 2 },
    { rows: "rows", next_after_seq: 2 },
    { rows: [], next_after_seq: 2 ** 80 },
  ]) {
    const { writ } = stubbed(() => json(page));
    const err = await (async () => {
      for await (const _ of writ.iterAudit()) void _;
    })().catch((e) => e);
    assert.ok(err instanceof UnavailableError, `${JSON.stringify(page)}: ${err}`);
  }
  // a server saying there are always rows after: asked forever (hi doubled to Infinity)
  const { writ, asked } = stubbed((url) => json({ rows: [{ seq: Number(url.searchParams.get("after_seq")) + 1 }] }));
  const err = await writ.lastSeq().catch((e) => e);
  assert.ok(err instanceof UnavailableError, String(err));
  assert.ok(asked.length < 60, `${asked.length} requests`);
});

test("rows given again are a broken page, not news asked for again at once", T, async () => {
  const { writ, asked } = stubbed(() => json({ rows: [{ seq: 7 }], next_after_seq: 7 }));
  const rows = writ.watch({ afterSeq: 6 });
  assert.equal((await rows.next()).value.seq, 7);
  const err = await rows.next().catch((e) => e);
  assert.ok(err instanceof UnavailableError && /rows at or before seq 7/.test(err.message), String(err));
  assert.equal(asked.length, 2);
});

test("watch and waitConsent do not poll in a busy loop when answers bring nothing", T, async () => {
  const { writ, asked } = stubbed((url, n) =>
    json(n === 4 ? { rows: [{ seq: 9, event: "lease.granted" }], next_after_seq: 9 } : { rows: [], next_after_seq: 0 }),
  );
  for await (const row of writ.watch({ afterSeq: 0 })) {
    assert.equal(row.seq, 9);
    break;
  }
  const gaps = asked.slice(1).map((a, i) => a.at - asked[i].at);
  assert.ok(gaps.length === 3 && Math.min(...gaps) >= 0.95, JSON.stringify(gaps));

  const pending = stubbed(() => json({ consent_id: "cns_1", status: "pending" }));
  await pending.writ.waitConsent("cns_1", { waitS: 1.5 });
  assert.ok(pending.asked.length <= 4, `${pending.asked.length} polls in 1.5 s`);
});

test("retryAfterS is at most an hour, however far the server's Retry-After", T, () => {
  assert.equal(parseRetryAfter("9".repeat(400)), 3600);
  assert.equal(parseRetryAfter("Fri, 31 Dec 9999 23:59:59 GMT"), 3600);
  assert.equal(parseRetryAfter("12"), 12);
});

test("a body JSON cannot carry is InvalidError, and nothing is sent", T, async () => {
  const { writ, asked } = stubbed(() => json({}));
  for (const [call, field] of [
    [() => writ.acquire("a/b", { intent: "x", ttlS: Number.POSITIVE_INFINITY }), "ttl_s"],
    [() => writ.acquire("a/b", { intent: "x", waitS: Number.NaN }), "wait_s"],
    [() => writ.acquire("a/b", { intent: "x", ttlS: 10n }), undefined],
  ]) {
    const err = await call().catch((e) => e);
    assert.ok(err instanceof InvalidError, String(err));
    if (field) assert.equal(err.details.field, field);
  }
  assert.equal(asked.length, 0);
});
