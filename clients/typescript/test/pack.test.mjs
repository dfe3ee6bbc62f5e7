// `npm pack` makes a package a fresh project installs from the tarball, compiles against
// with tsc (types included, and wrong calls refused) and runs.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { packageDir } from "../scripts/writ-server.mjs";
import { serveWrit } from "./helpers.mjs";

const run = promisify(execFile);
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
const T = { timeout: 180_000 };

let w;
let tmp;
let app;
before(async () => {
  w = await serveWrit();
  tmp = mkdtempSync(join(tmpdir(), "writ-pack-"));
  app = join(tmp, "app");
  mkdirSync(app);
});
after(async () => {
  await w?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

const tsconfig = {
  compilerOptions: {
    target: "ES2022",
    lib: ["ES2022", "DOM"],
    module: "NodeNext",
    moduleResolution: "NodeNext",
    types: [],
    strict: true,
    skipLibCheck: false,
    outDir: "out",
  },
};

test("npm pack: a fresh project installs the tarball, compiles against its types and runs", T, async () => {
  // dist/ is built by `npm test` before the tests run; --ignore-scripts skips the rebuild
  const { stdout } = await run(npm, ["pack", "--json", "--ignore-scripts", "--pack-destination", tmp], {
    cwd: packageDir,
    maxBuffer: 16 * 1024 * 1024,
  });
  const [packed] = JSON.parse(stdout.slice(stdout.indexOf("[")));
  const files = packed.files.map((f) => f.path);
  for (const f of ["package.json", "dist/index.js", "dist/index.d.ts", "dist/generated/openapi.d.ts"]) {
    assert.ok(files.includes(f), `${f} is in the package`);
  }
  assert.ok(!files.some((f) => f.startsWith("src/") || f.startsWith("test/")), files.join(" "));

  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  await run(npm, ["install", "--offline", "--no-audit", "--no-fund", join(tmp, packed.filename)], { cwd: app });
  const installed = JSON.parse(readFileSync(join(app, "node_modules", "writ-client", "package.json"), "utf8"));
  assert.equal(installed.name, "writ-client");

  writeFileSync(join(app, "tsconfig.json"), JSON.stringify(tsconfig));
  writeFileSync(
    join(app, "main.ts"),
    `import { ForbiddenError, HeldError, Writ, type Authority, type Lease, type LeaseHandle, type Wake } from "writ-client";

const writ = new Writ({ url: ${JSON.stringify(w.url)}, token: ${JSON.stringify(w.admin.token)} });
const token: number = await writ.withLease("pack/demo", { intent: "pack test", ttlS: 5 }, async (lease: LeaseHandle) => {
  const data: Lease = lease.data;
  return data.fencing_token;
});
let refused = "";
const holder = await writ.acquire("pack/held", { intent: "hold" });
try {
  await writ.acquire("pack/held", { intent: "again" });
} catch (err) {
  if (err instanceof HeldError) refused = err.holder?.holder ?? "?";
}
await writ.release(holder.lease_id);
console.log(JSON.stringify({ token, refused }));

// The types refuse wrong calls: each line below must be a compile error (tsc fails on an
// unused @ts-expect-error, so types that accepted anything would fail this test).
async function neverCalled(lease: LeaseHandle): Promise<void> {
  // @ts-expect-error intent is required
  await writ.acquire("prod/db", { ttlS: 30 });
  // @ts-expect-error ttlS is a number
  await writ.acquire("prod/db", { intent: "x", ttlS: "30" });
  // @ts-expect-error not a lease state
  await writ.leases({ state: "stolen" });
  // @ts-expect-error the route needs its path parameter
  await writ.request("post", "/v1/leases/{lease_id}/renew", { body: { ttl_s: 5 } });
  // @ts-expect-error no such route in the OpenAPI document
  await writ.request("get", "/v1/nope", {});
  // @ts-expect-error renew is a POST
  await writ.request("get", "/v1/leases/{lease_id}/renew", { path: { lease_id: "x" } });
  // @ts-expect-error ttl_s is a number
  await writ.request("post", "/v1/leases", { body: { resource: "r", intent: "i", ttl_s: "5" } });
  // @ts-expect-error the fencing token is a number
  const token: string = lease.fencingToken;
  void token;
  // v1.1: the typed answers and refusals compile as documented
  const said: Authority = await writ.authority("perf-agent", "prod/db");
  const mayWrite: boolean = said.write;
  const rule: string | null = said.rule;
  const woken: Wake = await writ.wake(lease.leaseId, "are you on it?");
  const again: string | null = woken.already_woken_at;
  const rotated: string = (await writ.rotatePrincipal("perf-agent", { expiresInS: 3600 })).token;
  const revoked: string[] = (await writ.disablePrincipal("perf-agent", "leaked")).revoked;
  const grants: number = (await writ.reloadPolicy()).grants;
  const warning: string | undefined = lease.warning;
  try {
    await writ.acquire("prod/db", { intent: "x" });
  } catch (err) {
    if (err instanceof ForbiddenError) {
      const where: string | undefined = err.rule;
      const prefixes: string[] | undefined = err.may?.write;
      void [where, prefixes];
    }
  }
  void [mayWrite, rule, again, rotated, revoked, grants, warning];
  // @ts-expect-error wake needs a reason
  await writ.wake(lease.leaseId);
  // @ts-expect-error expiresInS is a number
  await writ.rotatePrincipal("perf-agent", { expiresInS: "60" });
  // @ts-expect-error queues are names
  await writ.principalQueues("alice", { add: [1] });
}
void neverCalled;
`,
  );
  await run(process.execPath, [tsc, "-p", "."], { cwd: app }).catch((err) => {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  });
  const out = await run(process.execPath, [join("out", "main.js")], { cwd: app });
  const result = JSON.parse(out.stdout);
  assert.ok(result.token >= 1);
  assert.equal(result.refused, "admin");
});
