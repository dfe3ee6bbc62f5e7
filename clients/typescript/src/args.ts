/**
 * What the caller gives, checked before anything is sent or any timer set: seconds options
 * (a `NaN`, a negative number or an infinity became a 1 ms timer: Node runs a timer it cannot
 * hold after 1 ms, so a wait or a renewal period turned into a busy loop), header names and
 * values (never quoted: a header may carry a secret), and text a URL cannot carry (a lone
 * surrogate, which `encodeURIComponent` throws a `URIError` on and `URLSearchParams` turns
 * into U+FFFD, another resource than the one named), the server's URL, path parameters that
 * would name another route, bodies JSON cannot carry. Each refusal is an `InvalidError`
 * naming the option.
 */
import { InvalidError, WritError } from "./errors.js";

function refuse(name: string, value: unknown, what: string): never {
  const shown = typeof value === "number" ? String(value) : typeof value;
  throw new InvalidError(`${name} must be ${what} (got ${shown})`, { field: name });
}

/** `value`, a finite number of seconds greater than 0, or InvalidError naming `name`. */
export function positiveSeconds(name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    refuse(name, value, "a finite number of seconds greater than 0");
  }
  return value;
}

/** `value`, a finite number of seconds of 0 or more, or InvalidError naming `name`. */
export function seconds(name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    refuse(name, value, "a finite number of seconds, 0 or more");
  }
  return value;
}

/** A UTF-16 code unit of a surrogate pair standing alone. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** `text` unless it holds a lone surrogate, which no URL can carry: InvalidError naming `name`. */
export function wellFormed(name: string, text: string): string {
  if (LONE_SURROGATE.test(text)) {
    throw new InvalidError(
      `${name} holds a lone surrogate (half of a UTF-16 pair), which a URL cannot carry: ` +
        "it would name another resource than the one meant",
      { field: name },
    );
  }
  return text;
}

/** An HTTP header name: an RFC 9110 token. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** What a header value may not hold: a control character (a newline injects a header) or one past \xff. */
const BAD_HEADER_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The `headers` option, refused (InvalidError) when a name is not a header name or a value
 * is not text a header can carry. A value is never quoted (it may be a token), nor a name
 * that is not one (it may be a whole `Authorization: Bearer …` line).
 */
export function checkedHeaders(headers: unknown): Record<string, string> {
  if (headers === undefined) return {};
  if (typeof headers !== "object" || headers === null || Array.isArray(headers)) {
    throw new InvalidError("headers must be an object of header names and values", { field: "headers" });
  }
  const out: Record<string, string> = {};
  Object.entries(headers).forEach(([name, value], i) => {
    if (!HEADER_NAME.test(name)) {
      throw new InvalidError(
        `headers: name ${i + 1} is not a header name (letters, digits and !#$%&'*+-.^_\`|~ ` +
          "only); it is not quoted here, in case it carries a secret",
        { field: "headers" },
      );
    }
    if (typeof value !== "string" || BAD_HEADER_VALUE.test(value)) {
      throw new InvalidError(
        `headers: the value of ${JSON.stringify(name)} is not text a header can carry (a ` +
          "string without control characters such as a newline, nor characters past \\xff); " +
          "it is not quoted here, in case it carries a secret",
        { field: "headers", header: name },
      );
    }
    out[name] = value;
  });
  return out;
}

/**
 * The server's URL, `http://` put before it when it has no scheme; one carrying credentials,
 * or that is no URL at all, refused without being quoted.
 */
export function normalizeUrl(url: string): string {
  let out = url.trim().replace(/\/+$/, "");
  if (!out.includes("://")) out = `http://${out}`;
  const authority = (out.split("://", 2)[1] ?? "").split("/", 1)[0] ?? "";
  if (authority.includes("@")) {
    // fetch refused the URL, quoting it (password and all) in its error, which every
    // "not reachable" message carried on; refused here, never quoted
    throw new InvalidError(
      "the writ server's URL carries credentials (user:password@): writ authenticates " +
        "with the bearer token; remove them from the URL",
      { field: "url" },
    );
  }
  try {
    new URL(out);
  } catch {
    // every call would throw URL's TypeError, quoting the URL (a secret in its query and all)
    throw new InvalidError("the writ server's URL is not a URL (it is not quoted here)", { field: "url" });
  }
  return out;
}

/** A limit on answers (`maxAnswerBytes`, `maxAnswerValues`): a whole number above 0, or InvalidError. */
export function answerLimit(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new InvalidError(`${name} must be a whole number greater than 0 (got ${String(value)})`, {
      field: name,
    });
  }
  return value;
}

/** One path parameter, refusing what a URL parser would turn into another route. */
export function pathParam(name: string, value: unknown, keepSlashes: boolean): string {
  const text = wellFormed(name, String(value));
  const segments = keepSlashes ? text.split("/") : [text];
  for (const segment of segments) {
    // WHATWG URLs resolve "." and ".." (and %2e%2e) segments: /v1/leases/../principals
    if (segment === "" || /^(\.|%2e){1,2}$/i.test(segment)) {
      throw new InvalidError(`${name} ${JSON.stringify(text)} is not a valid path parameter`, {
        field: name,
      });
    }
  }
  return segments.map(encodeURIComponent).join("/");
}

/**
 * Whether the platform's `fetch` refuses these arguments (its TypeError then quotes the
 * value it refused): the same arguments are given to `Request`, which checks them alike.
 */
export function refusedArguments(
  url: URL,
  method: string,
  headers: Record<string, string>,
  body?: string,
): boolean {
  if (typeof Request !== "function") return false;
  try {
    new Request(url, { method, headers, body: body ?? null });
    return false;
  } catch {
    return true;
  }
}

/** A request's body as JSON, or InvalidError before anything is sent: a number JSON cannot
 * carry (NaN, an infinity, which JSON.stringify would send as null: another request than
 * the one asked), a BigInt or a cycle (JSON.stringify's TypeError). */
export function jsonBody(body: unknown, what: string): string {
  try {
    return JSON.stringify(body, (key, value: unknown) => {
      if (typeof value === "number" && !Number.isFinite(value)) {
        throw new InvalidError(
          `${what}: ${key ? `${key} is ` : ""}${value}, a number JSON cannot carry`,
          key ? { field: key } : {},
        );
      }
      return value;
    });
  } catch (exc) {
    if (exc instanceof WritError) throw exc;
    throw new InvalidError(`${what}: the body cannot be written as JSON (${String(exc)})`);
  }
}

/** A warning of the library: `process.emitWarning` (typed `WritWarning`, with `code`), or the console. */
export function warn(message: string, code: string): void {
  const proc = (globalThis as { process?: { emitWarning?: (m: string, o: object) => void } }).process;
  if (typeof proc?.emitWarning === "function") proc.emitWarning(message, { type: "WritWarning", code });
  else console.warn(`WritWarning (${code}): ${message}`);
}
