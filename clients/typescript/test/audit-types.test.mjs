// An audit row the server cannot read back is answered as a stub (its seq, `event:
// "unreadable"`, the reason in `notes`, its stored hash, every other field null): the
// AuditRow type says so, and `who` says which row it could not read.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { isUnreadableRow } from "../dist/index.js";
import { findPython, packageDir } from "../scripts/writ-server.mjs";
import { serveWrit, unique } from "./helpers.mjs";

const run = promisify(execFile);
const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
const T = { timeout: 120_000 };
// what a stub keeps; every other field of the row is null
const KEPT = ["seq", "event", "notes", "hash"];

let w;
let tmp;
before(async () => {
  w = await serveWrit();
  tmp = mkdtempSync(join(tmpdir(), "writ-audit-types-"));
});
after(async () => {
  await w?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Rewrite one stored row's body the way an intruder with database rights would. */
async function tamper(seq, body) {
  const script = [
    "import sqlite3, sys",
    "c = sqlite3.connect(sys.argv[1], isolation_level=None)",
    "c.execute('DROP TRIGGER IF EXISTS audit_no_update')",
    "c.execute('UPDATE audit SET body = ? WHERE seq = ?', (sys.argv[3], int(sys.argv[2])))",
  ].join("\n");
  await run(findPython(), ["-c", script, join(w.server.dir, "writ.db"), String(seq), body]);
}

test("a stub row is null where AuditRow's unreadable branch says, and who names it", T, async () => {
  const a = await w.principal();
  const r = `types/${unique("db")}`;
  await a.writ.acquire(r, { intent: "hold" });
  const { rows } = await a.writ.audit({ resource: r });
  const grant = rows.find((row) => row.event === "lease.granted");
  await tamper(grant.seq, "[1,2]");

  const all = [];
  for await (const row of w.admin.iterAudit()) all.push(row);
  const stub = all.find((row) => row.seq === grant.seq);
  assert.equal(stub.event, "unreadable");
  assert.equal(typeof stub.notes, "string");
  assert.equal(stub.hash, grant.hash);
  for (const [field, value] of Object.entries(stub)) {
    if (!KEPT.includes(field)) assert.equal(value, null, `${field} of a stub`);
  }
  assert.ok(isUnreadableRow(stub));
  assert.ok(all.filter((row) => row.seq !== grant.seq).every((row) => !isUnreadableRow(row)));

  const who = await a.writ.who(r);
  assert.equal(who.lock_holder, null);
  assert.deepEqual(who.unreadable_rows, [grant.seq]);
});

test("the types make a reader check for a stub before trusting a row's fields", T, async () => {
  const dist = relative(tmp, join(packageDir, "dist", "index.js")).split("\\").join("/");
  writeFileSync(
    join(tmp, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        lib: ["ES2022", "DOM"],
        module: "NodeNext",
        moduleResolution: "NodeNext",
        types: [],
        strict: true,
        noEmit: true,
      },
      files: ["rows.ts"],
    }),
  );
  // each @ts-expect-error must be an error (tsc fails on an unused one)
  writeFileSync(
    join(tmp, "rows.ts"),
    `import { isUnreadableRow, type AuditRow, type Who } from "${dist}";

export function describe(row: AuditRow): string {
  // @ts-expect-error a stub has no resource
  const resource: string = row.resource;
  // @ts-expect-error ... no lock holder
  const holder: string = row.lock_holder;
  // @ts-expect-error ... no time
  const at: string = row.timestamp;
  void [resource, holder, at];
  if (!isUnreadableRow(row)) {
    const r: string = row.resource; // as writ wrote it: every column there
    const h: string = row.lock_holder;
    void [r, h];
  }
  if (isUnreadableRow(row)) {
    const why: string = row.notes;
    const seq: number = row.seq;
    const none: null = row.resource;
    void [seq, none];
    return why;
  }
  const written: string = row.timestamp;
  return \`\${row.seq} \${row.event} \${row.resource} \${row.lock_holder} \${written}\`;
}

export function holderOf(who: Who): string {
  // @ts-expect-error hidden, or the grant is unreadable: null
  const h: string = who.lock_holder;
  void h;
  const unreadable: number[] | undefined = who.unreadable_rows;
  return who.lock_holder ?? \`unknown (rows \${(unreadable ?? []).join(", ")})\`;
}
`,
  );
  await run(process.execPath, [tsc, "-p", "."], { cwd: tmp }).catch((err) => {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  });
});
