/**
 * The errors of writ's protocol, one class per error code, under one root:
 *
 *     WritError
 *     ├── InvalidError            422  invalid           bad input: what was wrong and what to do
 *     ├── UnauthenticatedError    401  unauthenticated   missing or unknown token
 *     ├── ForbiddenError          403  forbidden         your kind, identity or authority may not: `rule`, `may`
 *     ├── NotFoundError           404  not_found         no such lease, principal, consent, ...
 *     ├── ConflictError           409  conflict          (also the base of the two refusals below)
 *     │   ├── HeldError           409  held              a conflicting lease is held: `holder`
 *     │   └── ConsentRequiredError 409 consent_required  a protected change: `change`, `ask`
 *     ├── RequestTimeoutError     408  timeout           the request's head or body came too slowly (retry)
 *     ├── LeaseLostError          410  lease_lost        the lease expired, was revoked or released
 *     ├── TooLargeError           413  too_large         request body or headers too large
 *     ├── FrozenError             423  frozen            a human froze the prefix: `freeze`
 *     ├── TooManyRequestsError    429  too_many_requests this client has the most connections it may (retry)
 *     └── UnavailableError        503  unavailable       the store is down, or the server unreachable
 *
 * Every detail of the error body (`{"error": {"code", "message", ...details}}`) is in
 * `err.details`; the common ones have typed getters (`HeldError.holder`, ...).
 */
import type { Change, Freeze, Holder, May } from "./models.js";

/** How an error came to be: the answer's status and code, its `Retry-After`, its cause. */
export interface WritErrorOptions {
  status?: number;
  code?: string;
  retryAfterS?: number;
  cause?: unknown;
  /** The answer was no writ error object (a proxy's or an ingress's page). */
  foreign?: boolean;
}

/** The JSON body of every refusal. */
export interface ErrorBody {
  error: { code: string; message: string; [detail: string]: unknown };
}

/** Root of every error the client throws for a refusal or an unreachable server. */
export class WritError extends Error {
  static readonly code: string = "error";
  static readonly status: number = 500;
  /** The protocol error code (`held`, `lease_lost`, ...). */
  readonly code: string;
  /** The HTTP status the server answered (0 when no answer came). */
  readonly status: number;
  /** Everything in the error body besides `code` and `message`. */
  readonly details: Readonly<Record<string, unknown>>;
  /** Seconds to wait before retrying, when the answer carried `Retry-After` (409 held, 429, 503). */
  readonly retryAfterS: number | undefined;
  /** True when the answer was not writ's error object (a proxy's page, say): not writ's refusal. */
  readonly foreign: boolean;

  constructor(message: string, details: Record<string, unknown> = {}, options: WritErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as unknown as { code: string; status: number; name: string };
    this.name = cls.name;
    this.code = options.code ?? cls.code;
    this.status = options.status ?? cls.status;
    this.details = details;
    this.retryAfterS = options.retryAfterS;
    this.foreign = options.foreign ?? false;
  }

  /** The same error, with `cause` (what a callback threw when the lease was lost under it). */
  withCause(cause: unknown): this {
    const cls = this.constructor as ErrorClass;
    const options = {
      status: this.status,
      code: this.code,
      retryAfterS: this.retryAfterS,
      cause,
      foreign: this.foreign,
    };
    return new cls(this.message, { ...this.details }, options) as this;
  }

  /** The error as the server would send it. */
  toBody(): ErrorBody {
    return { error: { ...this.details, code: this.code, message: this.message } };
  }
}

export class InvalidError extends WritError {
  static override readonly code = "invalid";
  static override readonly status = 422;
}

export class UnauthenticatedError extends WritError {
  static override readonly code = "unauthenticated";
  static override readonly status = 401;
}

/**
 * 403 `forbidden`: the caller's kind or identity may not do this. In closed authority mode
 * (v1.1) it is not the caller's authority: `rule` names the grant, `may` what it may do.
 */
export class ForbiddenError extends WritError {
  static override readonly code = "forbidden";
  static override readonly status = 403;
  /** `FILE:LINE` of the nearest authority grant, or undefined (none, or not an authority refusal). */
  get rule(): string | undefined {
    return (this.details.rule as string | null | undefined) ?? undefined;
  }
  /** What the caller may do instead (write and observe prefixes, attributes), in closed mode. */
  get may(): May | undefined {
    const may = this.details.may;
    return isRecord(may) ? (may as May) : undefined;
  }
}

export class NotFoundError extends WritError {
  static override readonly code = "not_found";
  static override readonly status = 404;
}

/** 409: a conflict (a principal that already exists, ...); base of `HeldError` and `ConsentRequiredError`. */
export class ConflictError extends WritError {
  static override readonly code: string = "conflict";
  static override readonly status = 409;
}

/** 409 `held`: a conflicting lease is held. Retry with `waitS` to queue for it. */
export class HeldError extends ConflictError {
  static override readonly code = "held";
  /** Who holds it: holder, resource, intent, acquired_at, expires_at, wake, fencing_token. */
  get holder(): Holder | undefined {
    return this.details.holder as Holder | undefined;
  }
  /** The place the request would have had in the FIFO queue. */
  get queuePosition(): number | undefined {
    return this.details.queue_position as number | undefined;
  }
  /** When the blocking lease expires (or a lock-delay ends), RFC 3339. */
  get retryAt(): string | undefined {
    return (this.details.retry_at as string | null | undefined) ?? undefined;
  }
}

/** The call that asks a change's author for consent (`POST /v1/consents`). */
export interface ConsentAsk {
  method: "POST";
  path: "/v1/consents";
  body: { change_id: string };
}

/**
 * 409 `consent_required`: a protected change by another agent stands in the way. Ask its
 * author (`writ.askConsent(err.change.change_id, reason)`, the call in `err.ask`), wait for
 * the answer, then acquire again with the granted `consentId`.
 */
export class ConsentRequiredError extends ConflictError {
  static override readonly code = "consent_required";
  /** The protected change. */
  get change(): Change {
    return this.details.change as Change;
  }
  /** Who made it: the one to ask. */
  get author(): string | undefined {
    return this.details.author as string | undefined;
  }
  get protectedUntil(): string | undefined {
    return this.details.protected_until as string | undefined;
  }
  /** The call to make: `{method: "POST", path: "/v1/consents", body: {change_id}}`. */
  get ask(): ConsentAsk | undefined {
    return this.details.ask as ConsentAsk | undefined;
  }
}

/**
 * 408 `timeout`: writ's listener did not receive the request's head or body in time (a slow
 * link, a stalled sender), or closed the slowest connection to make room. Nothing was done:
 * retry. A lease's renewals and release count it as a failure for now, not a refusal.
 */
export class RequestTimeoutError extends WritError {
  static override readonly code = "timeout";
  static override readonly status = 408;
}

/** 410 `lease_lost`: expired, revoked or released. Acquire again (a new fencing token). */
export class LeaseLostError extends WritError {
  static override readonly code = "lease_lost";
  static override readonly status = 410;
  get leaseId(): string | undefined {
    return this.details.lease_id as string | undefined;
  }
  /** `expired`, `revoked`, `released`, or `unknown` when renewals failed until the ttl ran out. */
  get state(): string | undefined {
    return this.details.state as string | undefined;
  }
}

export class TooLargeError extends WritError {
  static override readonly code = "too_large";
  static override readonly status = 413;
}

/** 423 `frozen`: a human froze the prefix. */
export class FrozenError extends WritError {
  static override readonly code = "frozen";
  static override readonly status = 423;
  get freeze(): Freeze | undefined {
    return this.details.freeze as Freeze | undefined;
  }
}

/**
 * 429 `too_many_requests`: this client (its address) already has the most connections writ's
 * listener allows one client, usually long polls held open. Nothing was done: retry after
 * `retryAfterS` (writ sends `Retry-After: 1`), or close a connection first. A lease's renewals
 * and release count it as a failure for now, not a refusal.
 */
export class TooManyRequestsError extends WritError {
  static override readonly code = "too_many_requests";
  static override readonly status = 429;
}

/** 503 `unavailable`: the store is down, or the server could not be reached (status 0). */
export class UnavailableError extends WritError {
  static override readonly code = "unavailable";
  static override readonly status = 503;
}

type ErrorClass = new (
  message: string,
  details?: Record<string, unknown>,
  options?: WritErrorOptions,
) => WritError;

const BY_CODE: ReadonlyMap<string, ErrorClass> = new Map<string, ErrorClass>([
  ["invalid", InvalidError],
  ["unauthenticated", UnauthenticatedError],
  ["forbidden", ForbiddenError],
  ["not_found", NotFoundError],
  ["conflict", ConflictError],
  ["held", HeldError],
  ["consent_required", ConsentRequiredError],
  ["timeout", RequestTimeoutError],
  ["lease_lost", LeaseLostError],
  ["too_large", TooLargeError],
  ["frozen", FrozenError],
  ["too_many_requests", TooManyRequestsError],
  ["unavailable", UnavailableError],
]);

/**
 * Whether `err` refuses only for now, so the same request may succeed later: a 408 or a 429
 * (writ's listener: too slow, too many connections), anything carrying `Retry-After` (a 503),
 * or no answer at all (status 0). A lease's renewals retry these until its expiry; its
 * release leaves the lease to expire by itself.
 */
export function isTransient(err: WritError): boolean {
  if (err instanceof LeaseLostError) return false;
  return (
    err.status === 0 ||
    err.status >= 500 ||
    err.status === 408 ||
    err.status === 429 ||
    err.retryAfterS !== undefined ||
    err.foreign // a 4xx page of something between: not writ refusing
  );
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The most `retryAfterS` says, in seconds: writ's own `Retry-After` is never longer. */
export const MAX_RETRY_AFTER_S = 3600;

/** Seconds from a `Retry-After` header (delta-seconds or an HTTP date, at most an hour), or undefined. */
export function parseRetryAfter(value: string | null | undefined, nowMs = Date.now()): number | undefined {
  if (!value) return undefined;
  const text = value.trim();
  // at most an hour, the most writ sends: a caller sleeping on it unattended must wake up
  if (/^\d+$/.test(text)) return Math.min(Number(text), MAX_RETRY_AFTER_S);
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, Math.ceil((at - nowMs) / 1000)), MAX_RETRY_AFTER_S);
}

/**
 * The typed error for an answer with status `status` and (parsed) body `body`;
 * `retryAfter` is the answer's `Retry-After` header, if any.
 */
export function errorFromBody(status: number, body: unknown, retryAfter?: string | null): WritError {
  const retryAfterS = parseRetryAfter(retryAfter);
  const err = isRecord(body) ? body.error : undefined;
  if (!isRecord(err)) {
    let text: string;
    try {
      text = typeof body === "string" ? body : JSON.stringify(body);
    } catch {
      text = "(a body nested too deeply to show)"; // RangeError: JSON.stringify recursed too deep
    }
    return new WritError(`HTTP ${status}: ${String(text).slice(0, 200)}`, {}, {
      status,
      retryAfterS,
      foreign: true,
    });
  }
  const { code, message, ...details } = err;
  const cls = BY_CODE.get(String(code)) ?? WritError;
  return new cls(String(message ?? ""), details, {
    status,
    code: String(code ?? "error"),
    retryAfterS,
  });
}
