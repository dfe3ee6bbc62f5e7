/**
 * What the client takes from the wire, whoever answers at its URL (a writ server, a proxy's
 * error page, a man in the middle on plain HTTP, a WRIT_URL naming something else): an
 * answer read up to `MAX_ANSWER_BYTES` and `MAX_ANSWER_VALUES` (JSON.parse of `[{},{},…]`
 * takes about 22 bytes of memory per byte of text: bytes alone bound nothing); a 2xx that is a JSON object (every writ answer is);
 * a Lease with a `lease_id` and `lock_key` that are text, a whole-number `fencing_token` and a
 * `ttl_s` of 1 to 3600; a page
 * of the ledger whose rows have a seq and whose `next_after_seq` is one. Anything else is an
 * `UnavailableError` naming what came back (docs/client-typescript.md), never a TypeError, a
 * busy loop or a full memory. The timeout is already the whole call's (`Writ.#send`), and a
 * redirect is never followed (`redirect: "error"`).
 */
import { UnavailableError } from "./errors.js";
import type { AuditPage, AuditRow, Lease } from "./models.js";

/** The most read of one answer by default: writ's largest (100,000 leases or audit rows) are tens of MB. */
export const MAX_ANSWER_BYTES = 256 * 2 ** 20;
/**
 * The most JSON values (objects, arrays and their members, counted by the `{`, `[` and `,`
 * outside strings) parsed from one answer by default: writ's largest answer, 100,000 audit
 * rows, holds about 2.5 million; 4 million empty objects take about 130 MB once parsed.
 */
export const MAX_ANSWER_VALUES = 4_000_000;
/** The longest timer Node can hold (2³¹−1 ms, about 24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** Two polls of `watch()` or `waitConsent()` that brought nothing are at least this far apart. */
export const QUIET_POLL_S = 1;

function shown(value: unknown): string {
  let text: string;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value);
  } catch {
    text = "(nested too deeply to show)";
  }
  const cut = String(text).slice(0, 200);
  return JSON.stringify(cut.length < String(text).length ? `${cut}…` : cut);
}

function broken(message: string): UnavailableError {
  return new UnavailableError(message, {}, { status: 0 });
}

/** `ms` as a delay a timer can hold: 0 for NaN or less, at most `MAX_TIMER_MS`. */
export function timerMs(ms: number): number {
  return ms > 0 ? Math.min(ms, MAX_TIMER_MS) : 0;
}

/**
 * Counts the JSON values of a text read in chunks of UTF-8: each `{`, `[` and `,` outside a
 * string (a multi-byte character never holds these bytes). An upper bound of the values
 * JSON.parse would make, and of the memory it would take.
 */
class ValueCounter {
  count = 0;
  #inString = false;
  #escaped = false;

  add(bytes: Uint8Array): number {
    let count = this.count;
    let inString = this.#inString;
    let escaped = this.#escaped;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i] as number;
      if (inString) {
        if (escaped) escaped = false;
        else if (b === 0x5c) escaped = true; // backslash
        else if (b === 0x22) inString = false; // quote
      } else if (b === 0x22) inString = true;
      else if (b === 0x7b || b === 0x5b || b === 0x2c) count++; // { [ ,
    }
    this.#inString = inString;
    this.#escaped = escaped;
    this.count = count;
    return count;
  }
}

/** How much of one answer is read and parsed (`Writ`'s `maxAnswerBytes`, `maxAnswerValues`). */
export interface AnswerLimits {
  bytes: number;
  values: number;
}

/**
 * The answer's text, read up to `limits.bytes` bytes holding at most `limits.values` JSON
 * values; past either the read is cancelled and refused, before anything is parsed.
 */
export async function readCapped(response: Response, limits: AnswerLimits, what: string): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const values = new ValueCounter();
  let size = 0;
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return text + decoder.decode();
    size += value.byteLength;
    let why: string | undefined;
    if (size > limits.bytes) why = `was longer than ${limits.bytes} bytes, the most the client reads`;
    else if (values.add(value) > limits.values) {
      why =
        `held more than ${limits.values} JSON values (objects, arrays and their members), the ` +
        "most the client parses";
    }
    if (why) {
      await reader.cancel().catch(() => undefined);
      throw broken(`the answer to ${what} ${why}: it was dropped (ask for fewer rows with limit)`);
    }
    text += decoder.decode(value, { stream: true });
  }
}

/** A 2xx answer's parsed body, refused when it is not a JSON object. */
export function checkedObject(parsed: unknown, text: string, status: number, what: string): unknown {
  if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) return parsed;
  throw broken(
    `${what} was answered with ${status} and a body that is not a JSON object, which every ` +
      `writ answer is: ${shown(text.slice(0, 80))}; is the URL a writ server? (set WRIT_URL or pass {url})`,
  );
}

function wholeNumber(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** A non-empty string without a control character (a NUL cannot go into an environment). */
function isText(value: unknown): value is string {
  return typeof value === "string" && value !== "" && !/[\u0000-\u001f\u007f-\u009f]/.test(value);
}

/** A grant's or renewal's Lease, refused when it is not one writ sends. */
export function checkedLease(data: Lease): Lease {
  const { lease_id: id, lock_key: key, fencing_token: token, ttl_s: ttl } = data as Partial<Lease>;
  let problem: string | undefined;
  if (!isText(id) || !isText(key)) {
    problem = "no lease_id or lock_key, or one that is not text (env() puts them in an environment)";
  }
  else if (!wholeNumber(token)) problem = "a fencing_token that is not a whole number";
  else if (typeof ttl !== "number" || !(ttl >= 1 && ttl <= 3600)) {
    problem = "a ttl_s that is not a number of seconds from 1 to 3600";
  }
  if (problem) throw broken(`the server answered with a lease that has ${problem}: ${shown(data)}`);
  return data;
}

/** The rows of an audit or events page read after `cursor`, and the cursor after it. */
export function checkedPage(out: AuditPage, cursor: number): { rows: AuditRow[]; next: number } {
  const rows: unknown = out.rows ?? [];
  const next: unknown = out.next_after_seq ?? cursor;
  if (!Array.isArray(rows) || !rows.every((r) => typeof r === "object" && r && wholeNumber(r.seq))) {
    throw broken(`the server answered a read of the ledger with rows that are not rows: ${shown(out)}`);
  }
  // rows given again: a watch took them as news, and asked again at once, in a busy loop
  if ((rows as AuditRow[]).some((r) => r.seq <= cursor)) {
    throw broken(`the server answered a read of the ledger with rows at or before seq ${cursor}, the one it was asked after: ${shown(out)}`);
  }
  if (!wholeNumber(next)) {
    throw broken(`the server answered a read of the ledger with a next_after_seq that is no seq: ${shown(out)}`);
  }
  return { rows: rows as AuditRow[], next: Math.max(cursor, next) };
}

/** Resolves `ms` milliseconds from now, or at once when `signal` aborts. */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  if (!(ms > 0) || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, timerMs(ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** The error for a server saying there are rows after every seq a number can hold. */
export function endlessHead(): UnavailableError {
  return broken("the server says there are rows after every seq: no ledger is that long");
}
