// What the caller gives is checked before anything is sent (src/args.ts): seconds that are no
// finite number (NaN, an infinity, a negative one: Node ran such a timer after 1 ms, a busy
// loop), text a URL cannot carry (a lone surrogate), headers that cannot be sent; each is an
// InvalidError naming the option, never quoting a header's value.
import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidError, UnavailableError, Writ } from "../dist/index.js";

const T = { timeout: 30_000 };

const json = (body, status = 200) => new Response(JSON.stringify(body), { status });

/** A client whose every call is answered by `answer(url)`, and the URLs it was asked. */
function stubbed(answer = () => json({}), options = {}) {
  const asked = [];
  const writ = new Writ({
    url: "http://writ.invalid",
    token: "x",
    ...options,
    fetch: async (url) => {
      asked.push(new URL(url));
      return answer(new URL(url));
    },
  });
  return { writ, asked };
}

/** What `fn` threw (synchronously or by rejecting). */
async function thrown(fn) {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

const NOT_SECONDS = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -1, "5"];

test("seconds options that are no finite number are InvalidError naming them, and nothing is sent", T, async () => {
  const lease = { lease_id: "ls_1", lock_key: "a/b#1", fencing_token: 1, ttl_s: 30, resource: "a/b" };
  const { writ, asked } = stubbed(() => json(lease, 201));
  for (const bad of [...NOT_SECONDS, 0]) {
    const err = await thrown(() => new Writ({ timeoutS: bad }));
    assert.ok(err instanceof InvalidError && err.details.field === "timeoutS", `timeoutS ${bad}: ${err}`);
    for (const [field, call] of [
      ["renewEveryS", () => writ.lease("a/b", { intent: "x", renewEveryS: bad })],
      ["timeoutS", () => writ.whoami({ timeoutS: bad })],
    ]) {
      const refused = await thrown(call);
      assert.ok(refused instanceof InvalidError && refused.details.field === field, `${field} ${bad}: ${refused}`);
    }
  }
  for (const bad of NOT_SECONDS) {
    for (const call of [
      () => writ.waitConsent("cns_1", { waitS: bad }),
      () => writ.askConsent("chg_1", "why", { waitS: bad }),
      () => writ.consent("cns_1", { waitS: bad }),
      () => writ.events({ waitS: bad }),
      () => writ.watch({ afterSeq: 0, waitS: bad }).next(),
      () => writ.whoami({ waitS: bad }),
    ]) {
      const err = await thrown(call);
      assert.ok(err instanceof InvalidError && err.details.field === "waitS", `${call} ${bad}: ${err}`);
    }
  }
  assert.deepEqual(asked, []);
});

test("a timeout longer than a timer can hold is held, not fired after 1 ms", T, async () => {
  // answers after 50 ms, unless its signal aborts first (a timer fired at once)
  const slow = (url, init) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve(json({ name: "a" })), 50);
      init.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new TypeError("fetch failed", { cause: init.signal.reason }));
      });
    });
  for (const timeoutS of [1e10, 2 ** 31]) {
    const writ = new Writ({ url: "http://writ.invalid", token: "x", timeoutS, fetch: slow });
    assert.deepEqual(await writ.whoami(), { name: "a" });
  }
});

test("a lone surrogate in a path parameter or a query value is InvalidError, and nothing is sent", T, async () => {
  const { writ, asked } = stubbed();
  for (const [field, call] of [
    ["resource", () => writ.resource("prod/\uD800")],
    ["lease_id", () => writ.getLease("\uDC00")],
    ["name", () => writ.rotatePrincipal("a\uDBFFb")],
    ["resource", () => writ.who("prod/db\uD800")],
    ["resource", () => writ.fence("prod/\uDC00db", 3)],
    ["resource", () => writ.leases({ resource: "\uD800" })],
  ]) {
    const err = await thrown(call);
    assert.ok(err instanceof InvalidError && err.details.field === field, `${call}: ${err}`);
  }
  assert.deepEqual(asked, []);
  // a pair is text like any other
  await writ.resource("prod/\uD83D\uDE00");
  await writ.who("prod/\uD83D\uDE00");
  assert.equal(asked[0].pathname, "/v1/resources/prod/%F0%9F%98%80");
  assert.equal(asked[1].searchParams.get("resource"), "prod/\uD83D\uDE00");
});

test("headers that cannot be sent are refused at construction, the value never quoted", T, async () => {
  const secret = "writ_SECRET";
  for (const headers of [
    { authorization: `Bearer ${secret}\n${secret}` },
    { "x-api-key": `${secret}\r\nx-injected: 1` },
    { "x-api-key": `${secret}\u0000` },
    { "x-api-key": `${secret}\u0100` },
    { "x-api-key": 42 },
    { [`Authorization: Bearer ${secret}`]: "x" },
    { "": "x" },
  ]) {
    const err = await thrown(() => new Writ({ url: "http://writ.invalid", headers }));
    assert.ok(err instanceof InvalidError && err.details.field === "headers", `${JSON.stringify(headers)}: ${err}`);
    assert.ok(!err.message.includes(secret), err.message);
  }
  const named = await thrown(() => new Writ({ headers: { "x-api-key": `${secret}\n` } }));
  assert.match(named.message, /"x-api-key"/);
  assert.equal(named.details.header, "x-api-key");
  // a header a header can carry is sent
  let seen;
  const writ = new Writ({
    url: "http://writ.invalid",
    headers: { "x-trace": "a\tb \u00e9" },
    fetch: async (url, init) => {
      seen = init.headers["x-trace"];
      return json({});
    },
  });
  await writ.health();
  assert.equal(seen, "a\tb \u00e9");
});

test("a request fetch refuses is InvalidError, not quoted; a URL that is none is refused at construction", T, async () => {
  // the platform's fetch, against a port nobody listens on: it refuses the method first
  const writ = new Writ({ url: "http://127.0.0.1:9", token: "x" });
  const refused = await thrown(() => writ.request("connect", "/v1/health", {}));
  assert.ok(refused instanceof InvalidError, String(refused));
  assert.doesNotMatch(refused.message, /not reachable/);
  const unreachable = await thrown(() => writ.health());
  assert.ok(unreachable instanceof UnavailableError, String(unreachable));
  const err = await thrown(() => new Writ({ url: "http://exa mple:7411/?key=writ_SECRET" }));
  assert.ok(err instanceof InvalidError && err.details.field === "url", String(err));
  assert.ok(!err.message.includes("writ_SECRET"), err.message);
});
