/**
 * The client for writ's HTTP protocol (docs/client-typescript.md): one method per route,
 * each answering the JSON body; a refusal rejects with the typed error of `errors.ts`.
 *
 *     const writ = new Writ({ url: "http://127.0.0.1:7411", token });
 *     await writ.withLease("prod/db", { intent: "double capacity", ttlS: 30, waitS: 10 },
 *       async (lease) => resize({ fencingToken: lease.fencingToken, signal: lease.signal }));
 *
 * Every method is one call of `request(method, route, {path, query, body})`, whose
 * arguments are checked against writ's OpenAPI document (`generated/openapi.ts`): adding
 * a route is one short method.
 */
import {
  answerLimit,
  checkedHeaders,
  jsonBody,
  normalizeUrl,
  pathParam,
  positiveSeconds,
  refusedArguments,
  seconds,
  wellFormed,
} from "./args.js";
import {
  InvalidError,
  LeaseLostError,
  UnauthenticatedError,
  UnavailableError,
  WritError,
  errorFromBody,
} from "./errors.js";
import type { components } from "./generated/openapi.js";
import { LeaseHandle, type LeaseOptions } from "./lease.js";
import type {
  AuditPage,
  AuditRow,
  Authority,
  Change,
  Consent,
  DisabledPrincipal,
  Fence,
  Freeze,
  Health,
  HeldLease,
  Lease,
  LeaseState,
  NewPrincipal,
  PolicyReload,
  Principal,
  PrincipalKind,
  ResourceStatus,
  Rollback,
  RollbackPlan,
  RollbackStatus,
  RotatedToken,
  Verify,
  Wake,
  Who,
} from "./models.js";
import type { Answer, CallOptions, MethodOf, Operation, RequestOptions, Route } from "./routes.js";
import {
  type AnswerLimits,
  MAX_ANSWER_BYTES,
  MAX_ANSWER_VALUES,
  QUIET_POLL_S,
  checkedObject,
  checkedPage,
  endlessHead,
  pause,
  readCapped,
  timerMs,
} from "./wire.js";

export const VERSION = "0.1.0";
export const DEFAULT_URL = "http://127.0.0.1:7411";
/** Per-call timeout, seconds; calls that wait on the server add their wait. */
export const DEFAULT_TIMEOUT_S = 10;
/** Long-poll length of `watch()` and `waitConsent()`: under the server's 300 s cap. */
export const WATCH_WAIT_S = 25;
/** The server's cap on any `wait_s`. */
export const MAX_WAIT_S = 300;
/** One long-poll of `waitConsent()`: under Node's fetch headers timeout (300 s). */
const POLL_S = 240;

export interface WritOptions {
  /** Default: `WRIT_URL`, else `http://127.0.0.1:7411`. A URL without a scheme gets `http://`;
   * one carrying credentials (`user:password@`) is refused (InvalidError, not quoted). */
  url?: string;
  /** Sent as `Authorization: Bearer …`. Default: `WRIT_TOKEN`. */
  token?: string;
  /** Per-call timeout in seconds (default 10), finite and greater than 0; long-polls add their wait. */
  timeoutS?: number;
  /** Extra headers on every call (names and values checked at construction, never quoted). */
  headers?: Record<string, string>;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof fetch;
  /** The most read of one answer, in bytes (default 256 MiB); a longer one is an `UnavailableError`. */
  maxAnswerBytes?: number;
  /**
   * The most JSON values (objects, arrays, their members) parsed from one answer (default
   * 4,000,000); one holding more is an `UnavailableError`, dropped before it is parsed.
   */
  maxAnswerValues?: number;
}

type Schemas = components["schemas"];

function env(name: string): string | undefined {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = proc?.env?.[name];
  return value ? value : undefined;
}

function monotonicS(): number {
  return performance.now() / 1000;
}

/** Drop the keys whose value is undefined (the server's defaults apply). */
function defined<T extends Record<string, unknown>>(obj: T): T {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as T;
}

/** A client of one writ server. Safe to share; it holds no connection state of its own. */
export class Writ {
  readonly url: string;
  readonly #token: string | undefined;
  readonly timeoutS: number;
  readonly #headers: Record<string, string>;
  readonly #fetch: typeof fetch;
  readonly #limits: AnswerLimits;

  constructor(options: WritOptions = {}) {
    this.url = normalizeUrl(options.url ?? env("WRIT_URL") ?? DEFAULT_URL);
    this.#token = options.token ?? env("WRIT_TOKEN");
    this.timeoutS = positiveSeconds("timeoutS", options.timeoutS ?? DEFAULT_TIMEOUT_S);
    this.#headers = {
      accept: "application/json",
      "user-agent": `writ-typescript/${VERSION}`,
      ...checkedHeaders(options.headers),
    };
    if (this.#token) {
      // a header value: printable ASCII only (a newline would be a header injection)
      if (/[^\x21-\x7e]/.test(this.#token)) {
        throw new InvalidError("the token has characters a bearer token cannot have", {
          field: "token",
        });
      }
      this.#headers.authorization = `Bearer ${this.#token}`;
    }
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") {
      throw new Error("no fetch in this runtime: Node 18 or later, or pass options.fetch");
    }
    this.#fetch = f;
    this.#limits = {
      bytes: answerLimit("maxAnswerBytes", options.maxAnswerBytes, MAX_ANSWER_BYTES),
      values: answerLimit("maxAnswerValues", options.maxAnswerValues, MAX_ANSWER_VALUES),
    };
  }

  /**
   * The bearer token, readable, but a getter over a private field: `console.log`,
   * `util.inspect` and `JSON.stringify` of a client (or of a lease, which holds its client)
   * never show it.
   */
  get token(): string | undefined {
    return this.#token;
  }

  // ---- the one way a call is made -----------------------------------------------------
  /**
   * Call `route` (a template of writ's OpenAPI, `"/v1/leases/{lease_id}/renew"`) with
   * its path parameters, query and JSON body, all type-checked. Answers the JSON body;
   * rejects with the typed `WritError` of a refusal, `UnavailableError` when the server
   * cannot be reached or does not answer in time, or the signal's reason when aborted.
   */
  async request<P extends Route, M extends MethodOf<P>>(
    method: M,
    route: P,
    options: RequestOptions<Operation<P, M>>,
  ): Promise<Answer<Operation<P, M>>> {
    const params = (options.path ?? {}) as Record<string, unknown>;
    const path = String(route).replace(/\{(\w+)\}/g, (_, name: string) => {
      const value = params[name];
      if (value === undefined || value === null) {
        throw new InvalidError(`${name} is required`, { field: name });
      }
      return pathParam(name, value, name === "resource");
    });
    const url = new URL(this.url + path);
    for (const [key, value] of Object.entries((options.query ?? {}) as Record<string, unknown>)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, wellFormed(key, String(value)));
    }
    return (await this.#send(method.toUpperCase(), url, options.body, options)) as Answer<
      Operation<P, M>
    >;
  }

  async #send(method: string, url: URL, body: unknown, call: CallOptions): Promise<unknown> {
    // first: a body that cannot be sent is refused before a timer or listener is set
    const sent = body === undefined ? undefined : jsonBody(body, `${method} ${url.pathname}`);
    const callS = call.timeoutS === undefined ? this.timeoutS : positiveSeconds("timeoutS", call.timeoutS);
    const timeoutS = callS + (call.waitS === undefined ? 0 : seconds("waitS", call.waitS));
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timerMs(timeoutS * 1000));
    const outer = call.signal;
    const onAbort = () => controller.abort(outer?.reason);
    if (outer?.aborted) onAbort();
    else outer?.addEventListener("abort", onAbort, { once: true });

    const headers: Record<string, string> = { ...this.#headers };
    if (body !== undefined) headers["content-type"] = "application/json";
    let status: number;
    let text: string;
    let retryAfter: string | null;
    try {
      const response = await this.#fetch(url, {
        method,
        headers,
        body: sent,
        signal: controller.signal,
        redirect: "error",
      });
      status = response.status;
      retryAfter = response.headers.get("retry-after");
      text = await readCapped(response, this.#limits, `${method} ${url.pathname}`);
    } catch (exc) {
      if (outer?.aborted) throw outer.reason ?? exc;
      if (exc instanceof WritError) throw exc; // an answer too long to read
      if (!timedOut && refusedArguments(url, method, headers, sent)) {
        // fetch's TypeError quotes the refused value (a header's: a token): never passed on
        throw new InvalidError(
          `${method} ${url.pathname} could not be sent: fetch refused its method, URL or a ` +
            "header (not quoted here, in case it carries a secret); nothing was sent",
        );
      }
      const cause = (exc as { cause?: { code?: string; message?: string } }).cause;
      const why = timedOut
        ? `no answer within ${timeoutS}s`
        : (cause?.code ?? cause?.message ?? (exc as Error).message ?? String(exc));
      throw new UnavailableError(
        `writ server not reachable at ${this.url} (${method} ${url.pathname}: ${why}); ` +
          "is `writ serve` running there? (set WRIT_URL or pass {url})",
        { url: this.url },
        { status: 0, cause: exc },
      );
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }

    let parsed: unknown = {};
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = text;
      }
    }
    if (status >= 200 && status < 300) return checkedObject(parsed, text, status, `${method} ${url.pathname}`);
    const err = errorFromBody(status, parsed, retryAfter);
    if (err instanceof UnauthenticatedError && !this.#token) {
      throw new UnauthenticatedError(
        `${err.message} (no token given: set WRIT_TOKEN or pass {token})`,
        { ...err.details },
        { status, retryAfterS: err.retryAfterS },
      );
    }
    throw err;
  }

  toString(): string {
    return `Writ(${this.url})`;
  }

  // ---- health and principals ----------------------------------------------------------
  /** `GET /v1/health` (no token needed). */
  health(call: CallOptions = {}): Promise<Health> {
    return this.request("get", "/v1/health", call) as Promise<Health>;
  }

  /** `GET /v1/whoami`: the principal this client's token belongs to. */
  whoami(call: CallOptions = {}): Promise<Principal> {
    return this.request("get", "/v1/whoami", call) as Promise<Principal>;
  }

  /**
   * `POST /v1/principals` (admin only): the answer carries the token, shown only this once.
   * `queues` (humans only, v1.1): the on-call queues whose rotation it is on; `expiresInS`
   * (v1.1): its token is refused after that many seconds.
   */
  addPrincipal(
    name: string,
    options: {
      kind: PrincipalKind;
      vendor?: string;
      wake?: string;
      admin?: boolean;
      queues?: string[];
      expiresInS?: number;
    },
    call: CallOptions = {},
  ): Promise<NewPrincipal> {
    const { expiresInS, ...rest } = options;
    const body: Schemas["PrincipalIn"] = defined({ name, ...rest, expires_in_s: expiresInS });
    return this.request("post", "/v1/principals", { ...call, body }) as Promise<NewPrincipal>;
  }

  /**
   * `POST /v1/principals/{name}/rotate` (v1.1; admin, or the principal itself): a new token,
   * refused after `expiresInS` if given. The old token is refused from this answer on.
   */
  rotatePrincipal(
    name: string,
    options: { expiresInS?: number } = {},
    call: CallOptions = {},
  ): Promise<RotatedToken> {
    return this.request("post", "/v1/principals/{name}/rotate", {
      ...call,
      path: { name },
      body: defined({ expires_in_s: options.expiresInS }),
    }) as Promise<RotatedToken>;
  }

  /**
   * `POST /v1/principals/{name}/disable` (v1.1, admin): its token is refused at once, its
   * held leases are revoked and its queued requests leave the queue (`revoked`, `withdrawn`).
   */
  disablePrincipal(name: string, reason: string, call: CallOptions = {}): Promise<DisabledPrincipal> {
    const body: Schemas["DisableIn"] = { reason };
    return this.request("post", "/v1/principals/{name}/disable", {
      ...call,
      path: { name },
      body,
    }) as Promise<DisabledPrincipal>;
  }

  /** `POST /v1/principals/{name}/enable` (v1.1, admin): a disabled principal again, with a fresh token. */
  enablePrincipal(
    name: string,
    options: { expiresInS?: number } = {},
    call: CallOptions = {},
  ): Promise<NewPrincipal> {
    return this.request("post", "/v1/principals/{name}/enable", {
      ...call,
      path: { name },
      body: defined({ expires_in_s: options.expiresInS }),
    }) as Promise<NewPrincipal>;
  }

  /** `POST /v1/principals/{name}/queues` (v1.1, admin): put a human on queues' rotations, or take it off. */
  principalQueues(
    name: string,
    options: { add?: string[]; remove?: string[] },
    call: CallOptions = {},
  ): Promise<Principal> {
    const body: Schemas["QueuesIn"] = defined({ add: options.add, remove: options.remove });
    return this.request("post", "/v1/principals/{name}/queues", {
      ...call,
      path: { name },
      body,
    }) as Promise<Principal>;
  }

  /** `GET /v1/principals`: every principal, without tokens. */
  principals(call: CallOptions = {}): Promise<{ principals: Principal[] }> {
    return this.request("get", "/v1/principals", call) as Promise<{ principals: Principal[] }>;
  }

  /** `GET /v1/policy`: the policy the server runs with. */
  policy(call: CallOptions = {}): Promise<Record<string, unknown>> {
    return this.request("get", "/v1/policy", call);
  }

  /** `POST /v1/policy/reload` (v1.1, admin): read the policy file again; a bad file is InvalidError and changes nothing. */
  reloadPolicy(call: CallOptions = {}): Promise<PolicyReload> {
    return this.request("post", "/v1/policy/reload", call) as Promise<PolicyReload>;
  }

  /**
   * `GET /v1/authority` (v1.1): may `principal` write or observe `resource`, with which
   * attributes, and which grant (`rule`, FILE:LINE) says so. Agents may ask only about themselves.
   */
  authority(principal: string, resource: string, call: CallOptions = {}): Promise<Authority> {
    return this.request("get", "/v1/authority", {
      ...call,
      query: { principal, resource },
    }) as Promise<Authority>;
  }

  // ---- leases ----------------------------------------------------------------------------
  /**
   * `POST /v1/leases`: the Lease, after waiting up to `waitS` in the FIFO queue. Rejects
   * with `HeldError` (`holder`, `queuePosition`), `ConsentRequiredError` (`change`, `ask`)
   * or `FrozenError`. Nothing renews it: see `lease()` and `withLease()` for that.
   */
  acquire(resource: string, options: AcquireOptions, call: CallOptions = {}): Promise<Lease> {
    const body: Schemas["AcquireIn"] = defined({
      resource,
      intent: options.intent,
      ttl_s: options.ttlS,
      wait_s: options.waitS,
      touches: options.touches,
      consent_id: options.consentId,
      rollback: options.rollback,
    });
    return this.request("post", "/v1/leases", {
      ...call,
      body,
      waitS: options.waitS ?? 0,
      signal: call.signal ?? options.signal,
    }) as Promise<Lease>;
  }

  /** `POST /v1/leases/{id}/renew`; `LeaseLostError` once it is gone. */
  renew(leaseId: string, options: { ttlS?: number } = {}, call: CallOptions = {}): Promise<Lease> {
    return this.request("post", "/v1/leases/{lease_id}/renew", {
      ...call,
      path: { lease_id: leaseId },
      body: defined({ ttl_s: options.ttlS }),
    }) as Promise<Lease>;
  }

  /** `POST /v1/leases/{id}/release`; `LeaseLostError` if it was already lost. */
  release(leaseId: string, call: CallOptions = {}): Promise<Lease> {
    return this.request("post", "/v1/leases/{lease_id}/release", {
      ...call,
      path: { lease_id: leaseId },
    }) as Promise<Lease>;
  }

  /** `POST /v1/leases/{id}/revoke`: force-release, humans and queues only, with provenance. */
  revoke(
    leaseId: string,
    options: { runbook: string; paged: string; reason: string; waiveLockDelay?: boolean },
    call: CallOptions = {},
  ): Promise<Lease> {
    const body: Schemas["RevokeIn"] = defined({
      runbook: options.runbook,
      paged: options.paged,
      reason: options.reason,
      waive_lock_delay: options.waiveLockDelay,
    });
    return this.request("post", "/v1/leases/{lease_id}/revoke", {
      ...call,
      path: { lease_id: leaseId },
      body,
    }) as Promise<Lease>;
  }

  /** `GET /v1/leases/{id}`: one Lease in any state. */
  getLease(leaseId: string, call: CallOptions = {}): Promise<Lease> {
    return this.request("get", "/v1/leases/{lease_id}", {
      ...call,
      path: { lease_id: leaseId },
    }) as Promise<Lease>;
  }

  /** `GET /v1/leases`: leases under a resource prefix. */
  leases(
    options: { resource?: string; state?: LeaseState; holder?: string; limit?: number } = {},
    call: CallOptions = {},
  ): Promise<{ leases: Lease[] }> {
    return this.request("get", "/v1/leases", { ...call, query: options }) as Promise<{
      leases: Lease[];
    }>;
  }

  /** `GET /v1/status`: held leases under a prefix, each with its `waiters` count. */
  status(
    options: { resource?: string; limit?: number } = {},
    call: CallOptions = {},
  ): Promise<{ leases: HeldLease[] }> {
    return this.request("get", "/v1/status", { ...call, query: options }) as Promise<{
      leases: HeldLease[];
    }>;
  }

  /** `GET /v1/resources/{resource}`: its lease, queue, protected changes and freezes. */
  resource(resource: string, call: CallOptions = {}): Promise<ResourceStatus> {
    return this.request("get", "/v1/resources/{resource}", {
      ...call,
      path: { resource },
    }) as Promise<ResourceStatus>;
  }

  /** `GET /v1/who`: who held `resource` at `at` (RFC 3339, epoch seconds or `-15m`; default now). */
  who(resource: string, options: { at?: string | number } = {}, call: CallOptions = {}): Promise<Who> {
    const at = options.at === undefined ? undefined : String(options.at);
    return this.request("get", "/v1/who", {
      ...call,
      query: defined({ resource, at }),
    }) as Promise<Who>;
  }

  /** `GET /v1/fence`: is `token` the current fencing token of `resource`? */
  fence(resource: string, token: number, call: CallOptions = {}): Promise<Fence> {
    return this.request("get", "/v1/fence", {
      ...call,
      query: { resource, token },
    }) as Promise<Fence>;
  }

  /**
   * `POST /v1/leases/{id}/wake` (v1.1; anyone who may observe the resource): writ calls the
   * holder's wake route with `reason` — at most once per 30 s per lease; within that window
   * the answer has `already_woken_at` and nobody is called. `LeaseLostError` once it no longer holds.
   */
  wake(leaseId: string, reason: string, call: CallOptions = {}): Promise<Wake> {
    const body: Schemas["WakeIn"] = { reason };
    return this.request("post", "/v1/leases/{lease_id}/wake", {
      ...call,
      path: { lease_id: leaseId },
      body,
    }) as Promise<Wake>;
  }

  /**
   * Acquire and renew in the background until `release()`; see `withLease()`. With
   * `watch: true` the handle also watches its rows: a revoke or an expiry aborts its signal
   * within about a second (one long poll held on the server, among the principal's waits).
   */
  async lease(resource: string, options: LeaseOptions): Promise<LeaseHandle> {
    // checked before the acquire: refused by the handle, the lease would be left held
    if (options.renewEveryS !== undefined) positiveSeconds("renewEveryS", options.renewEveryS);
    const sent = monotonicS();
    const data = await this.acquire(resource, options);
    // the server's ttl ran from some moment after `sent`: counting from it is never late
    const handle = new LeaseHandle(this, data, options, sent);
    if (monotonicS() - sent > handle.renewEvery) {
      // the answer took longer than a renewal's period (a wait in the queue, a pause):
      // renew at once, so the clock is set from a request that did not wait
      try {
        await handle.renew();
      } catch (err) {
        if (err instanceof LeaseLostError) throw err;
      }
    }
    return handle;
  }

  /**
   * Hold write authority on `resource` while `fn` runs: acquire (waiting up to `waitS`),
   * renew in the background, release when `fn` settles, and answer what `fn` answered.
   *
   * If the lease is lost meanwhile (revoked, expired, renewals refused; with `watch: true` a
   * revoke or an expiry is known within about a second, not at the next renewal), `lease.signal`
   * aborts with the `LeaseLostError` as its reason — pass it to whatever does the work —
   * and `withLease` rejects with a `LeaseLostError` (whose `cause` is what `fn` threw, if
   * anything). Otherwise an error thrown by `fn` propagates after the release.
   */
  async withLease<T>(
    resource: string,
    options: LeaseOptions,
    fn: (lease: LeaseHandle) => Promise<T> | T,
  ): Promise<T> {
    const lease = await this.lease(resource, options);
    let result: T;
    try {
      result = await fn(lease);
    } catch (exc) {
      if (lease.error) {
        await lease.stop();
        throw exc === lease.error ? exc : lease.error.withCause(exc);
      }
      try {
        await lease.release();
      } catch {
        // the callback's error is the one to see
      }
      throw exc;
    }
    await lease.release();
    return result;
  }

  // ---- changes, consent, rollback -------------------------------------------------------
  /** `POST /v1/leases/{id}/changes`: record a (protected) change, holder only. */
  change(
    leaseId: string,
    options: {
      attribute: string;
      summary: string;
      before?: unknown;
      after?: unknown;
      protectS?: number;
      fencingToken?: number;
    },
    call: CallOptions = {},
  ): Promise<Change> {
    const body: Schemas["ChangeIn"] = defined({
      attribute: options.attribute,
      summary: options.summary,
      before: options.before,
      after: options.after,
      protect_s: options.protectS,
      fencing_token: options.fencingToken,
    });
    return this.request("post", "/v1/leases/{lease_id}/changes", {
      ...call,
      path: { lease_id: leaseId },
      body,
    }) as Promise<Change>;
  }

  /** `GET /v1/changes/{id}`: a recorded change and its protection. */
  getChange(changeId: string, call: CallOptions = {}): Promise<Change> {
    return this.request("get", "/v1/changes/{change_id}", {
      ...call,
      path: { change_id: changeId },
    }) as Promise<Change>;
  }

  /**
   * `POST /v1/consents`: ask a change's author to let you undo it. With `waitS`, then
   * waits up to that long for the answer (`waitConsent`). A consent nobody answered in
   * time is `expired`, never `denied`.
   */
  async askConsent(
    changeId: string,
    reason: string,
    options: { waitS?: number } = {},
    call: CallOptions = {},
  ): Promise<Consent> {
    if (options.waitS !== undefined) seconds("waitS", options.waitS);
    const body: Schemas["ConsentIn"] = { change_id: changeId, reason };
    const asked = (await this.request("post", "/v1/consents", { ...call, body })) as Consent;
    if (!options.waitS) return asked;
    return this.waitConsent(asked.consent_id, { waitS: options.waitS, signal: call.signal });
  }

  /** `GET /v1/consents/{id}`; with `waitS` it long-polls while the consent is `pending`. */
  consent(consentId: string, options: { waitS?: number } = {}, call: CallOptions = {}): Promise<Consent> {
    const waitS = (options.waitS === undefined ? 0 : seconds("waitS", options.waitS)) || undefined;
    return this.request("get", "/v1/consents/{consent_id}", {
      ...call,
      path: { consent_id: consentId },
      query: defined({ wait_s: waitS }),
      waitS: waitS ?? 0,
    }) as Promise<Consent>;
  }

  /** The consent once it is answered (or expired), or as it stands after `waitS` seconds. */
  async waitConsent(
    consentId: string,
    options: { waitS: number; signal?: AbortSignal },
  ): Promise<Consent> {
    const deadline = monotonicS() + seconds("waitS", options.waitS);
    for (;;) {
      const sent = monotonicS();
      const left = deadline - sent;
      const poll = Math.min(Math.max(left, 0), POLL_S);
      const out = await this.consent(consentId, { waitS: poll }, { signal: options.signal });
      if (out.status !== "pending" || left <= 0) return out;
      // still pending sooner than asked: not again at once (a busy loop until the deadline)
      const quiet = Math.min(sent + QUIET_POLL_S, deadline) - monotonicS();
      await pause(quiet * 1000, options.signal);
    }
  }

  /** `POST /v1/consents/{id}/grant`: by the author, or a human or queue. */
  grantConsent(consentId: string, call: CallOptions = {}): Promise<Consent> {
    return this.request("post", "/v1/consents/{consent_id}/grant", {
      ...call,
      path: { consent_id: consentId },
    }) as Promise<Consent>;
  }

  /** `POST /v1/consents/{id}/deny`: by the author, or a human or queue. */
  denyConsent(consentId: string, call: CallOptions = {}): Promise<Consent> {
    return this.request("post", "/v1/consents/{consent_id}/deny", {
      ...call,
      path: { consent_id: consentId },
    }) as Promise<Consent>;
  }

  /**
   * `POST /v1/rollbacks`: anyone may ask (exactly one of `leaseId`, `changeId`); only the
   * key holder approves.
   */
  async requestRollback(
    options: { reason: string; leaseId?: string; changeId?: string },
    call: CallOptions = {},
  ): Promise<Rollback> {
    if ((options.leaseId === undefined) === (options.changeId === undefined)) {
      throw new InvalidError("give exactly one of leaseId or changeId", { field: "lease_id" });
    }
    const body: Schemas["RollbackIn"] = defined({
      reason: options.reason,
      lease_id: options.leaseId,
      change_id: options.changeId,
    });
    return (await this.request("post", "/v1/rollbacks", { ...call, body })) as Rollback;
  }

  /** `GET /v1/rollbacks/{id}`: a rollback request and its outcome. */
  getRollback(rollbackId: string, call: CallOptions = {}): Promise<Rollback> {
    return this.request("get", "/v1/rollbacks/{rollback_id}", {
      ...call,
      path: { rollback_id: rollbackId },
    }) as Promise<Rollback>;
  }

  /** `GET /v1/rollbacks`, optionally by `status`. */
  rollbacks(
    options: { status?: RollbackStatus; limit?: number } = {},
    call: CallOptions = {},
  ): Promise<{ rollbacks: Rollback[] }> {
    return this.request("get", "/v1/rollbacks", { ...call, query: options }) as Promise<{
      rollbacks: Rollback[];
    }>;
  }

  /** `POST /v1/rollbacks/{id}/approve`: the key holder runs the route frozen at request time, once. */
  approveRollback(rollbackId: string, call: CallOptions = {}): Promise<Rollback> {
    return this.request("post", "/v1/rollbacks/{rollback_id}/approve", {
      ...call,
      path: { rollback_id: rollbackId },
    }) as Promise<Rollback>;
  }

  /** `POST /v1/rollbacks/{id}/deny`: the key holder refuses. */
  denyRollback(rollbackId: string, call: CallOptions = {}): Promise<Rollback> {
    return this.request("post", "/v1/rollbacks/{rollback_id}/deny", {
      ...call,
      path: { rollback_id: rollbackId },
    }) as Promise<Rollback>;
  }

  /** `POST /v1/rollbacks/{id}/defect`: an executed rollback was a new defect (humans). */
  rollbackDefect(rollbackId: string, notes: string, call: CallOptions = {}): Promise<Rollback> {
    return this.request("post", "/v1/rollbacks/{rollback_id}/defect", {
      ...call,
      path: { rollback_id: rollbackId },
      body: { notes },
    }) as Promise<Rollback>;
  }

  // ---- freezes -----------------------------------------------------------------------------
  /** `POST /v1/freezes`: refuse new grants under `prefix` (humans and queues). */
  freeze(
    prefix: string,
    options: { reason: string; until?: string; allow?: string[] },
    call: CallOptions = {},
  ): Promise<Freeze> {
    const body: Schemas["FreezeIn"] = defined({ prefix, ...options });
    return this.request("post", "/v1/freezes", { ...call, body }) as Promise<Freeze>;
  }

  /** `POST /v1/freezes/{id}/lift`. */
  liftFreeze(freezeId: string, call: CallOptions = {}): Promise<Freeze> {
    return this.request("post", "/v1/freezes/{freeze_id}/lift", {
      ...call,
      path: { freeze_id: freezeId },
    }) as Promise<Freeze>;
  }

  /** `GET /v1/freezes`: those standing now (or also lifted ones). */
  freezes(options: { includeLifted?: boolean } = {}, call: CallOptions = {}): Promise<{ freezes: Freeze[] }> {
    return this.request("get", "/v1/freezes", {
      ...call,
      query: options.includeLifted ? { all: true } : {},
    }) as Promise<{ freezes: Freeze[] }>;
  }

  // ---- audit and events --------------------------------------------------------------------
  /** `GET /v1/audit`: one page of rows after `afterSeq`. */
  audit(
    options: { afterSeq?: number; limit?: number; resource?: string; since?: string; until?: string } = {},
    call: CallOptions = {},
  ): Promise<AuditPage> {
    const { afterSeq, ...rest } = options;
    return this.request("get", "/v1/audit", {
      ...call,
      query: defined({ after_seq: afterSeq, ...rest }),
    }) as Promise<AuditPage>;
  }

  /** Every audit row after `afterSeq`, paging through `GET /v1/audit` until the end. */
  async *iterAudit(
    options: { afterSeq?: number; resource?: string; since?: string; until?: string; page?: number } = {},
    call: CallOptions = {},
  ): AsyncGenerator<AuditRow, void, undefined> {
    const { page = 1000, ...filters } = options;
    let after = options.afterSeq ?? 0;
    for (;;) {
      const { rows, next } = checkedPage(await this.audit({ ...filters, afterSeq: after, limit: page }, call), after);
      yield* rows;
      if (rows.length === 0 || next <= after) return;
      after = next;
    }
  }

  /** `GET /v1/audit/verify`: is the hash chain intact? */
  verify(call: CallOptions = {}): Promise<Verify> {
    return this.request("get", "/v1/audit/verify", call) as Promise<Verify>;
  }

  /** `GET /v1/events`: rows under a prefix after `afterSeq`, long-polling up to `waitS`. */
  events(
    options: { resource?: string; afterSeq?: number; waitS?: number } = {},
    call: CallOptions = {},
  ): Promise<AuditPage> {
    if (options.waitS !== undefined) seconds("waitS", options.waitS);
    return this.request("get", "/v1/events", {
      ...call,
      query: defined({
        resource: options.resource,
        after_seq: options.afterSeq,
        wait_s: options.waitS,
      }),
      waitS: options.waitS ?? 0,
    }) as Promise<AuditPage>;
  }

  /** The seq of the newest audit row (0 when empty), in O(log n) one-row requests. */
  async lastSeq(call: CallOptions = {}): Promise<number> {
    // rows shown, or next_after_seq moved past rows this reader may not see (closed mode)
    const rowsAfter = async (n: number) => {
      const { rows, next } = checkedPage(await this.audit({ afterSeq: n, limit: 1 }, call), n);
      return rows.length > 0 || next > n;
    };
    let lo = 0;
    let hi = 1;
    while (await rowsAfter(hi)) {
      if (hi > Number.MAX_SAFE_INTEGER) throw endlessHead(); // it was asked forever
      lo = hi;
      hi *= 2;
    }
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await rowsAfter(mid)) lo = mid;
      else hi = mid;
    }
    if (lo > 0) return hi;
    return (await rowsAfter(0)) ? 1 : 0;
  }

  /**
   * Audit rows under `resource` as they happen: an async iterator over the long-poll of
   * `GET /v1/events`. Starts after `afterSeq`, or at the newest row when omitted. It ends
   * when `signal` aborts (or the loop `break`s); it never ends by itself.
   *
   *     for await (const row of writ.watch({ resource: "prod", signal })) console.log(row.event);
   */
  async *watch(
    options: { resource?: string; afterSeq?: number; waitS?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<AuditRow, void, undefined> {
    const { resource, waitS = WATCH_WAIT_S, signal } = options;
    seconds("waitS", waitS);
    try {
      let cursor = options.afterSeq ?? (await this.lastSeq({ signal }));
      while (!signal?.aborted) {
        const sent = monotonicS();
        const out = await this.events({ resource, afterSeq: cursor, waitS }, { signal });
        const { rows, next } = checkedPage(out, cursor);
        yield* rows;
        cursor = next;
        // a server answering each poll at once with nothing is not asked in a busy loop
        if (rows.length === 0) await pause((sent + QUIET_POLL_S - monotonicS()) * 1000, signal);
      }
    } catch (exc) {
      if (signal?.aborted && !(exc instanceof WritError)) return;
      throw exc;
    }
  }
}

export interface AcquireOptions {
  /** What the holder is about to do (required, non-empty): it is shown to whoever waits. */
  intent: string;
  /** Lease time-to-live, 1–3600 s (default 30). */
  ttlS?: number;
  /** Wait up to this long (0–300 s, default 0) in the FIFO queue while a conflicting lease is held. */
  waitS?: number;
  /** The attributes the work may change (default `["*"]`): revert protection compares them. */
  touches?: string[];
  /** A granted consent to undo a protected change (single use). */
  consentId?: string;
  /** How the work is rolled back and which human queue holds the key. */
  rollback?: RollbackPlan;
  /** Aborts the acquire (and a wait in the queue). */
  signal?: AbortSignal;
}
