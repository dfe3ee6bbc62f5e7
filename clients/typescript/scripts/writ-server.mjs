// Start a real `writ serve` on a temporary SQLite store and a free port, for the type
// generator (scripts/gen.mjs) and the tests. Python comes from WRIT_PYTHON, else the
// repository's .venv (two levels above this package).
import { spawn } from "node:child_process";
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

/**
 * Serve writ until `stop()`. Resolves once the server listens, with its `url`.
 * `adminToken` creates the principal `admin` (WRIT_ADMIN_TOKEN); `policy` is the text of a
 * policy file (TOML). Rejects with the server's output if it does not start within `startS`.
 */
export async function startWrit({ adminToken, policy, startS = 60 } = {}) {
  const python = findPython();
  if (!python) {
    throw new Error(
      "no Python with writ installed: run scripts/install in the repository, or set WRIT_PYTHON",
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "writ-ts-"));
  const args = ["-m", "writ.cli", "serve", "--store", `sqlite:///${join(dir, "writ.db")}`];
  args.push("--host", "127.0.0.1", "--port", "0", "--log-level", "info");
  if (policy) {
    writeFileSync(join(dir, "writ.toml"), policy);
    args.push("--policy", join(dir, "writ.toml"));
  }
  // the server reads WRIT_* settings (store, checkpoints, secrets): start from none of them
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith("WRIT_")),
  );
  if (adminToken) env.WRIT_ADMIN_TOKEN = adminToken;
  const child = spawn(python, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));

  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`writ serve did not start within ${startS}s:\n${output}`));
    }, startS * 1000);
    const onData = (chunk) => {
      output += chunk.toString();
      const m = /Uvicorn running on (http:\/\/[0-9.]+:\d+)/.exec(output);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      fail(new Error(`writ serve exited (${code ?? signal}) before listening:\n${output}`));
    });
  });

  return {
    url,
    dir,
    get output() {
      return output;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(killer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
