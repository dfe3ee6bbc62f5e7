// Shared by the tests: a real `writ serve` per test file, principals, unique names.
import { randomBytes } from "node:crypto";
import { Writ } from "../dist/index.js";
import { startWrit } from "../scripts/writ-server.mjs";

/** A name no other test uses. */
export function unique(prefix = "t") {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Start writ (with an optional policy file's text, and more `writ serve` flags) and answer helpers bound to it. */
export async function serveWrit({ policy, args } = {}) {
  const adminToken = `admin-${randomBytes(12).toString("hex")}`;
  const server = await startWrit({ adminToken, policy, args });
  const admin = new Writ({ url: server.url, token: adminToken });
  return {
    server,
    url: server.url,
    admin,
    /** A new principal of `kind` and a client acting as it. */
    async principal(kind = "agent", prefix = kind) {
      const p = await admin.addPrincipal(unique(prefix), { kind });
      return { name: p.name, writ: new Writ({ url: server.url, token: p.token }) };
    },
    stop: () => server.stop(),
  };
}

/** Poll `check` (no sleeping test logic: a loop with a deadline) until it answers truthy. */
export async function waitUntil(check, { timeoutS = 20, what = "condition" } = {}) {
  const deadline = performance.now() + timeoutS * 1000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A promise with its resolve function outside. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  return { promise, resolve, reject };
}
