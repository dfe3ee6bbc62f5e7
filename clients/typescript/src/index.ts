/**
 * writ-client: the TypeScript client of writ, write authority for autonomous agents.
 * See docs/client-typescript.md in the writ repository.
 */
export {
  type AcquireOptions,
  DEFAULT_TIMEOUT_S,
  DEFAULT_URL,
  MAX_WAIT_S,
  VERSION,
  WATCH_WAIT_S,
  Writ,
  type WritOptions,
} from "./client.js";
export {
  ConflictError,
  type ConsentAsk,
  ConsentRequiredError,
  type ErrorBody,
  type WritErrorOptions,
  errorFromBody,
  parseRetryAfter,
  ForbiddenError,
  FrozenError,
  HeldError,
  InvalidError,
  LeaseLostError,
  NotFoundError,
  RequestTimeoutError,
  TooLargeError,
  TooManyRequestsError,
  UnauthenticatedError,
  UnavailableError,
  WritError,
} from "./errors.js";
export { LeaseHandle, type LeaseOptions } from "./lease.js";
export type * from "./models.js";
export { isUnreadableRow } from "./models.js";
export type {
  Answer,
  CallOptions,
  HttpMethod,
  MethodOf,
  Operation,
  RequestOptions,
  Route,
} from "./routes.js";
export type { components, operations, paths } from "./generated/openapi.js";
