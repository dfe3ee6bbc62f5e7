// examples/agent_lease.mjs runs as its header says, against a real server.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { repoDir } from "../scripts/writ-server.mjs";
import { serveWrit } from "./helpers.mjs";

const run = promisify(execFile);

let w;
before(async () => {
  w = await serveWrit();
});
after(async () => {
  await w?.stop();
});

test("examples/agent_lease.mjs: refused, consent asked and granted, a revoke stops the work", { timeout: 60_000 }, async () => {
  const { stdout } = await run(process.execPath, [join("examples", "agent_lease.mjs")], {
    cwd: repoDir,
    env: { ...process.env, WRIT_URL: w.url, WRIT_ADMIN_TOKEN: w.admin.token, WRIT_TOKEN: "" },
  });
  assert.match(stdout, /cost-agent-\w+ refused: perf-agent-\w+ holds it until/);
  assert.match(stdout, /released; who holds \S+ now: none/);
  assert.match(stdout, /cost-agent-\w+ must ask perf-agent-\w+ first: POST \/v1\/consents/);
  assert.match(stdout, /consent granted by perf-agent-\w+/);
  assert.match(stdout, /work stopped: lease \S+ on \S+ was revoked/);
  assert.match(stdout, /LeaseLostError: lease \S+ was revoked/);
});
