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
    `import { HeldError, Writ, type Lease, type LeaseHandle } from "writ-client";

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

test("the package's types refuse a wrong call", T, async () => {
  // runs after the test above installed the package into `app`
  writeFileSync(join(app, "tsconfig.json"), JSON.stringify(tsconfig));
  writeFileSync(
    join(app, "main.ts"),
    `import { Writ } from "writ-client";
const writ = new Writ({ url: "http://127.0.0.1:7411" });
await writ.acquire("prod/db", { ttlS: 30 });
await writ.request("post", "/v1/leases/{lease_id}/renew", { body: { ttl_s: 5 } });
`,
  );
  const err = await run(process.execPath, [tsc, "-p", "."], { cwd: app }).then(
    () => null,
    (e) => e,
  );
  assert.ok(err, "tsc accepted calls the types forbid");
  assert.match(err.stdout, /main\.ts\(3,\d+\): error TS2345[^\n]*\n[^\n]*Property 'intent' is missing/);
  assert.match(err.stdout, /main\.ts\(4,\d+\): error TS2345[^\n]*\n[^\n]*Property 'path' is missing/);
});
