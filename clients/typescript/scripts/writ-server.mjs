// Start a real `writ serve` on a temporary SQLite store and a free port, for the type
// generator (scripts/gen.mjs) and the tests. Python comes from WRIT_PYTHON, else the
// repository's .venv (two levels above this package).
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const packageDir = resolve(here, "..");
export const repoDir = resolve(packageDir, "..", "..");

/** The Python that has writ installed, or null when there is none. */
export function findPython() {
  if (process.env.WRIT_PYTHON) return process.env.WRIT_PYTHON;
  for (const rel of [".venv/bin/python", ".venv/Scripts/python.exe"]) {
    const candidate = join(repoDir, rel);
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/** A port nobody listens on right now (the OS picks it). */
function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

/**
 * Serve writ until `stop()`. Resolves once `GET /v1/health` answers, with the server's `url`.
 * `adminToken` creates the principal `admin` (WRIT_ADMIN_TOKEN); `policy` is the text of a
 * policy file (TOML); `args`, more flags for `writ serve`. Rejects with the server's output if it does not start within `startS`.
 */
export async function startWrit({ adminToken, policy, args = [], startS = 60 } = {}) {
  const python = findPython();
  if (!python) {
    throw new Error(
      "no Python with writ installed: run scripts/install in the repository, or set WRIT_PYTHON",
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "writ-ts-"));
  if (policy) writeFileSync(join(dir, "writ.toml"), policy);
  // the server reads WRIT_* settings (store, checkpoints, secrets): start from none of them
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith("WRIT_")),
  );
  if (adminToken) env.WRIT_ADMIN_TOKEN = adminToken;
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await serveOnce(python, dir, env, policy, args, startS);
    } catch (err) {
      lastError = err;
      // another process took the free port between the probe and the bind: try another
      if (!/address already in use/i.test(err.message)) break;
    }
  }
  rmSync(dir, { recursive: true, force: true });
  throw lastError;
}

async function serveOnce(python, dir, env, policy, extra, startS) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ["-m", "writ.cli", "serve", "--store", `sqlite:///${join(dir, "writ.db")}`];
  args.push("--host", "127.0.0.1", "--port", String(port), "--log-level", "warning");
  if (policy) args.push("--policy", join(dir, "writ.toml"));
  args.push(...extra);
  const child = spawn(python, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL"); // never leave a server behind this process
  process.once("exit", killOnExit);
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  let exitedWith;
  const exited = new Promise((done) =>
    child.once("exit", (code, signal) => {
      exitedWith = code ?? signal;
      process.removeListener("exit", killOnExit);
      done();
    }),
  );

  const deadline = performance.now() + startS * 1000;
  for (;;) {
    if (exitedWith !== undefined) {
      throw new Error(`writ serve exited (${exitedWith}) before answering:\n${output}`);
    }
    if (performance.now() > deadline) {
      child.kill("SIGKILL");
      await exited;
      throw new Error(`writ serve did not answer within ${startS}s:\n${output}`);
    }
    try {
      const response = await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(2000) });
      if (response.ok) break;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  return {
    url,
    dir,
    get output() {
      return output;
    },
    async stop() {
      if (exitedWith === undefined) child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(killer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
