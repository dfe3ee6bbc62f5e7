/**
 * A lease held by `Writ.lease()` / `Writ.withLease()`: renewed in the background until it
 * is released, and an `AbortSignal` that aborts the moment the client learns it is lost.
 *
 * Lost means: a renewal was refused (410 `lease_lost` after a revoke or an expiry, or any
 * other 4xx but those that refuse only for now: 408, 429, one with `Retry-After`), or renewals
 * failed (server down, timeouts, refused for now) until the lease's own expiry passed.
 * That expiry is estimated locally — the moment the last successful renewal was sent, plus
 * the ttl, on the monotonic clock — so it is never later than the server's.
 *
 * With `watch: true` the handle also long-polls its resource's rows (`Writ.watch()`): a row
 * that ends the lease (`lease.revoked`, `lease.expired`) with its lock key aborts the signal
 * at once, as the server tells it (`getLease`), naming who revoked it and by which runbook,
 * rather than at the next renewal (every ttl/3: 20 s at a ttl of 60). What goes wrong with
 * the watch (a 4xx: not this agent's to read; the server away; an answer that is no page)
 * leaves the renewals to tell, as without it: after a 4xx it stops, after anything else it
 * asks again a second later.
 */
import type { AcquireOptions, Writ } from "./client.js";
import { positiveSeconds, warn } from "./args.js";
import { LeaseLostError, UnavailableError, WritError, isTransient } from "./errors.js";
import type { AuditRow, Lease } from "./models.js";
import { QUIET_POLL_S, checkedLease, checkedPage, pause, timerMs } from "./wire.js";

export interface LeaseOptions extends AcquireOptions {
  /** Seconds between renewals (default `ttlS / 3`): a finite number greater than 0. */
  renewEveryS?: number;
  /** Called once, when the lease is lost (before the signal's listeners run). */
  onLost?: (error: LeaseLostError) => void;
  /**
   * Watch the lease's rows so that a revoke or an expiry aborts `signal` within about a
   * second, not at the next renewal (default false). It holds one long poll of
   * `GET /v1/events` on the server while the lease is held, counted among the principal's
   * waits (`writ serve --max-waits-per-principal`): opt in knowingly when holding many.
   */
  watch?: boolean;
}

/** Rows that end a lease other than by its holder's release. */
const ENDS = new Set(["lease.revoked", "lease.expired"]);
/** Ledger rows before the watch began searched for the one that ended its lease. */
const LOOK_BACK = 1000;

/** A value of an answer as text, whatever it is (`String()` of `{"toString": 1}` throws). */
function said(value: unknown): string {
  if (typeof value === "string") return value;
  try {
    return String(JSON.stringify(value));
  } catch {
    return "?";
  }
}

function monotonicS(): number {
  return performance.now() / 1000;
}

export class LeaseHandle {
  readonly client: Writ;
  readonly resource: string;
  /** The latest Lease the server returned (grant, renewal, release). */
  data: Lease;
  /** Why the lease was lost, once it is. */
  error: LeaseLostError | undefined;
  /** (v1.1) The grant's `warning`: the resource lies outside every prefix the policy names (a likely typo). */
  readonly warning: string | undefined;
  readonly #options: LeaseOptions;
  readonly #lost = new AbortController();
  #ttlS: number;
  #deadline: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #inflight: AbortController | undefined;
  #renewing: Promise<unknown> | undefined;
  #stopped = false;
  readonly #unwatch = new AbortController();
  #watching: Promise<void> | undefined;

  /** `sentAt`: monotonic seconds when the granting request left (or was answered, after a wait). */
  constructor(client: Writ, data: Lease, options: LeaseOptions, sentAt: number) {
    this.client = client;
    this.resource = data.resource;
    this.data = checkedLease(data);
    this.warning = data.warning;
    if (options.renewEveryS !== undefined) positiveSeconds("renewEveryS", options.renewEveryS);
    this.#options = options;
    this.#ttlS = data.ttl_s;
    this.#deadline = sentAt + this.#ttlS;
    this.#schedule(monotonicS() + this.#every);
    // never rejects, whatever is answered: an unhandled rejection would end the process
    if (options.watch) this.#watching = this.#watch().catch(() => undefined);
  }

  get leaseId(): string {
    return this.data.lease_id;
  }
  get fencingToken(): number {
    return this.data.fencing_token;
  }
  get lockKey(): string {
    return this.data.lock_key;
  }
  /** RFC 3339 expiry from the grant or the last renewal (the store's clock). */
  get expiresAt(): string {
    return this.data.expires_at;
  }
  /** Aborted once the lease is lost (reason: the `LeaseLostError`) or released. */
  get signal(): AbortSignal {
    return this.#lost.signal;
  }
  get lost(): boolean {
    return this.error !== undefined;
  }

  /**
   * Throws the `LeaseLostError` once the lease is lost, or once it is past the time by which
   * it must have been renewed and was not (a long synchronous stretch kept the renewals from
   * running): its clock, not only what the renewals said. Call it before each write.
   */
  check(): void {
    if (!this.error && monotonicS() >= this.#deadline) {
      this.#lose(
        new LeaseLostError(
          `lease ${this.leaseId} on ${this.resource} could not be renewed before it expired ` +
            `(ttl ${this.#ttlS}s): no renewal ran in time; treat it as lost`,
          { lease_id: this.leaseId, state: "unknown", fencing_token: this.fencingToken },
        ),
      );
    }
    if (this.error) throw this.error;
  }

  /** Seconds between renewals. */
  get renewEvery(): number {
    return this.#every;
  }

  /** `Writ-Lease` and `Writ-Fencing-Token` for a request through `writ gate` (checks first). */
  headers(): Record<string, string> {
    this.check();
    return { "Writ-Lease": this.leaseId, "Writ-Fencing-Token": String(this.fencingToken) };
  }

  /** `WRIT_LEASE_ID`, `WRIT_LOCK_KEY`, `WRIT_FENCING_TOKEN` for a child process. */
  env(): Record<string, string> {
    return {
      WRIT_LEASE_ID: this.leaseId,
      WRIT_LOCK_KEY: this.lockKey,
      WRIT_FENCING_TOKEN: String(this.fencingToken),
    };
  }

  /** Renew now (the background renewals go on). */
  async renew(): Promise<Lease> {
    const sent = monotonicS();
    const left = this.#deadline - sent;
    // a renewal must answer before the lease would expire, or it is no use
    const timeoutS = Math.max(0.25, Math.min(this.client.timeoutS, left > 0 ? left : Infinity));
    const controller = new AbortController();
    this.#inflight = controller;
    try {
      const data = checkedLease(
        await this.client.renew(this.leaseId, {}, { timeoutS, signal: controller.signal }),
      );
      if (!this.#stopped) {
        this.data = data;
        this.#ttlS = data.ttl_s;
        this.#deadline = sent + this.#ttlS;
      }
      return data;
    } catch (exc) {
      if (exc instanceof LeaseLostError) this.#lose(exc); // also when called by hand
      throw exc;
    } finally {
      if (this.#inflight === controller) this.#inflight = undefined;
    }
  }

  /**
   * Stop renewing (and watching), without releasing (the lease expires by itself within its
   * ttl). The watch's long poll is aborted, not waited out.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#inflight?.abort();
    this.#unwatch.abort();
    await Promise.all([this.#renewing?.catch(() => undefined), this.#watching]);
  }

  /**
   * Stop renewing and release. Rejects with the `LeaseLostError` if the lease was lost.
   * When the server cannot be reached or refuses the release otherwise (a 429 or 408 for
   * now, a 5xx, ...), emits a warning (`process.emitWarning`, code `WRIT_UNRELEASED`) and
   * resolves to undefined: the lease then expires by itself within its ttl.
   */
  async release(): Promise<Lease | undefined> {
    await this.stop();
    this.check();
    try {
      this.data = await this.client.release(this.leaseId);
    } catch (exc) {
      if (exc instanceof LeaseLostError) {
        this.#lose(exc);
        throw exc;
      }
      if (!(exc instanceof WritError)) throw exc;
      // unreachable, or refused for now (429, 408, a 5xx): the work is done all the same
      warn(
        `could not release ${this.leaseId} on ${this.resource} (it expires by itself within ` +
          `${this.#ttlS}s): ${exc.message}`,
        "WRIT_UNRELEASED",
      );
      return undefined;
    }
    this.#lost.abort(
      new LeaseLostError(`lease ${this.leaseId} on ${this.resource} was released`, {
        lease_id: this.leaseId,
        state: "released",
        fencing_token: this.fencingToken,
      }),
    );
    return this.data;
  }

  // ---- renewal ------------------------------------------------------------------------------
  get #every(): number {
    return Math.max(this.#options.renewEveryS ?? this.#ttlS / 3, 0.01);
  }

  /** Seconds to the next try after a renewal failed for now (`Retry-After` if longer). */
  #retryPause(err: WritError): number {
    return Math.max(Math.min(Math.max(this.#ttlS / 10, 0.05), 1), err.retryAfterS ?? 0);
  }

  #schedule(at: number): void {
    if (this.#stopped) return;
    const delayS = Math.max(0, Math.min(at, this.#deadline) - monotonicS());
    this.#timer = setTimeout(() => {
      this.#renewing = this.#tick();
    }, timerMs(delayS * 1000));
  }

  async #tick(): Promise<void> {
    try {
      await this.renew();
      this.#schedule(monotonicS() + this.#every);
    } catch (exc) {
      if (this.#stopped) return;
      const err =
        exc instanceof WritError
          ? exc
          : new UnavailableError(String(exc), {}, { status: 0, cause: exc });
      if (err.status >= 400 && err.status < 500 && !isTransient(err)) {
        // refused (410 lost, 403, 404, ...) rather than failed in transit, 5xx, or refused
        // for now (408, 429: writ's listener, too slow or too many connections)
        const lost =
          err instanceof LeaseLostError
            ? err
            : new LeaseLostError(
                `lease ${this.leaseId} on ${this.resource} was lost: ${err.message}`,
                { lease_id: this.leaseId, cause: err.code },
              );
        this.#lose(lost);
      } else if (monotonicS() >= this.#deadline) {
        this.#lose(
          new LeaseLostError(
            `lease ${this.leaseId} on ${this.resource} could not be renewed before it expired ` +
              `(ttl ${this.#ttlS}s): ${err.message}; treat it as lost`,
            { lease_id: this.leaseId, state: "unknown", fencing_token: this.fencingToken },
          ),
        );
      } else {
        // (never later than the lease's deadline: #schedule tries once more then)
        this.#schedule(monotonicS() + this.#retryPause(err));
      }
    }
  }

  // ---- the watch (options.watch) ----------------------------------------------------------
  async #watch(): Promise<void> {
    const signal = this.#unwatch.signal;
    let cursor: number | undefined;
    while (!signal.aborted) {
      try {
        if (cursor === undefined) {
          cursor = await this.client.lastSeq({ signal });
          if (await this.#ended(signal, undefined, cursor)) return; // a revoke since the grant
        }
        const rows = this.client.watch({ resource: this.resource, afterSeq: cursor, signal });
        for await (const row of rows) {
          cursor = Math.max(cursor, row.seq);
          if (ENDS.has(row.event) && row.lock_key === this.lockKey && (await this.#ended(signal, row))) {
            return;
          }
        }
        return; // the watch ends only when its signal aborts
      } catch (exc) {
        // a 4xx: not this agent's to read; anything else (408 and 429 too): again a second
        // later, or after Retry-After. Either way the renewals still tell a loss.
        const refused = exc instanceof WritError && exc.status >= 400 && exc.status < 500;
        if (signal.aborted || (refused && !isTransient(exc))) return;
        const after = exc instanceof WritError ? (exc.retryAfterS ?? 0) : 0;
        await pause(Math.max(QUIET_POLL_S, after) * 1000, signal);
      }
    }
  }

  /**
   * Ask for the lease; if it no longer holds, it is lost, as `row` (the row that ended it)
   * tells — or, ended before the watch began at ledger row `head`, the row found among the
   * `LOOK_BACK` before it.
   */
  async #ended(signal: AbortSignal, row?: AuditRow, head?: number): Promise<boolean> {
    const data: unknown = await this.client.getLease(this.leaseId, { signal });
    const state = (data as { state?: unknown }).state;
    if (typeof state !== "string" || state === "held" || signal.aborted) return false;
    if (row === undefined && head !== undefined) row = await this.#endingRow(signal, Math.max(head - LOOK_BACK, 0));
    const how: unknown = row?.second_key_revoke_provenance;
    let by = "";
    if (typeof how === "object" && how !== null && "revoked_by" in how && how.revoked_by) {
      const { revoked_by: who, via_runbook: runbook, after_paging: paged } = how as Record<string, unknown>;
      by = ` by ${said(who)} (runbook ${said(runbook)}, after paging ${said(paged)})`;
    }
    this.#lose(
      new LeaseLostError(
        `lease ${this.leaseId} on ${this.resource} was ${state}${by}; acquire again (a new ` +
          "fencing token) before writing",
        { lease_id: this.leaseId, state, fencing_token: this.fencingToken },
      ),
    );
    return true;
  }

  /** The row after `after` that ended this lease, or undefined: one page of its resource's rows. */
  async #endingRow(signal: AbortSignal, after: number): Promise<AuditRow | undefined> {
    try {
      const page = await this.client.events({ resource: this.resource, afterSeq: after, waitS: 0 }, { signal });
      return checkedPage(page, after).rows.find((r) => ENDS.has(r.event) && r.lock_key === this.lockKey);
    } catch {
      return undefined; // (the loss is told all the same, without who)
    }
  }

  #lose(err: LeaseLostError): void {
    if (this.error) return;
    this.error = err;
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#unwatch.abort();
    try {
      this.#options.onLost?.(err);
    } catch {
      // a failing callback must not stop the signal
    }
    this.#lost.abort(err);
  }
}
