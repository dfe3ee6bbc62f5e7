// A TypeScript/JavaScript agent that takes write authority with `writ.withLease` before it
// changes anything (the writ-client package, built in clients/typescript):
//
//     (cd clients/typescript && npm ci && npm run build)
//     node examples/agent_lease.mjs
//
// perf-agent holds the resource while it works (renewed in the background, released at the
// end); cost-agent, trying at the same time, is refused with perf-agent named as the holder,
// then needs perf-agent's consent to undo its fresh change. Last, a human queue revokes
// cost-agent's lease in the middle of its work: the lease's AbortSignal stops the work and
// withLease throws LeaseLostError.
import { randomBytes } from "node:crypto";
import {
  ConsentRequiredError,
  HeldError,
  LeaseLostError,
  UnavailableError,
  Writ,
} from "../clients/typescript/dist/index.js";

const url = process.env.WRIT_URL ?? "http://127.0.0.1:7421"; // examples/README.md's server
const adminToken = process.env.WRIT_ADMIN_TOKEN;
if (!adminToken) {
  console.error("set WRIT_ADMIN_TOKEN to the token `writ serve` was first started with");
  process.exit(1);
}
const tag = randomBytes(3).toString("hex");
const admin = new Writ({ url, token: adminToken });

/** Register `name-<random>` (so the example can run again) and answer a client acting as it. */
async function register(name, kind = "agent") {
  try {
    const p = await admin.addPrincipal(`${name}-${tag}`, { kind });
    return { name: p.name, writ: new Writ({ url, token: p.token }) };
  } catch (err) {
    if (err instanceof UnavailableError) {
      console.error(`no writ server at ${url}: start one with \`writ serve --port 7421\` (see examples/README.md)`);
      process.exit(1);
    }
    throw err;
  }
}

const db = `examples/${tag}/db`;
const perf = await register("perf-agent");
const cost = await register("cost-agent");
const ops = await register("svc-ops", "queue");

const change = await perf.writ.withLease(
  db,
  { intent: "double capacity", ttlS: 10, touches: ["capacity"] },
  async (lease) => {
    console.log(`${perf.name} holds ${db}: lease ${lease.leaseId}, fencing token ${lease.fencingToken}`);
    try {
      await cost.writ.acquire(db, { intent: "consolidate instances" });
    } catch (err) {
      if (!(err instanceof HeldError)) throw err;
      console.log(`${cost.name} refused: ${err.holder.holder} holds it until ${err.holder.expires_at}`);
    }
    // ... the real change goes here, sending lease.headers() through `writ gate` ...
    return perf.writ.change(lease.leaseId, {
      attribute: "capacity",
      summary: "capacity 4 -> 8",
      before: 4,
      after: 8,
    });
  },
);
console.log(`recorded change ${change.change_id}, protected until ${change.protected_until}`);
console.log(`released; who holds ${db} now: ${(await perf.writ.who(db)).lock_holder}`);

let consentId;
try {
  await cost.writ.acquire(db, { intent: "consolidate instances", touches: ["capacity"] });
} catch (err) {
  if (!(err instanceof ConsentRequiredError)) throw err;
  console.log(`${cost.name} must ask ${err.author} first: ${err.ask.method} ${err.ask.path}`);
  const asked = await cost.writ.askConsent(err.change.change_id, "instances are idle");
  const answer = cost.writ.waitConsent(asked.consent_id, { waitS: 30 });
  await perf.writ.grantConsent(asked.consent_id); // perf-agent, woken by writ, agrees
  const consent = await answer;
  console.log(`consent ${consent.status} by ${consent.answered_by}`);
  consentId = consent.consent_id;
}

try {
  await cost.writ.withLease(
    db,
    // renewing every half second, the client learns of a revoke within half a second
    { intent: "consolidate instances", ttlS: 30, renewEveryS: 0.5, touches: ["capacity"], consentId },
    async (lease) => {
      console.log(`${cost.name} holds ${db} with fencing token ${lease.fencingToken}; working...`);
      await ops.writ.revoke(lease.leaseId, {
        runbook: "R-12 stuck consolidation",
        paged: ops.name,
        reason: "consolidation during an incident",
      });
      // the work: steps until the lease's signal says stop
      while (!lease.signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      console.log(`work stopped: ${lease.signal.reason.message}`);
    },
  );
} catch (err) {
  if (!(err instanceof LeaseLostError)) throw err;
  console.log(`LeaseLostError: lease ${err.leaseId} was ${err.state}`);
}
