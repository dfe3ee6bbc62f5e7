/**
 * Types that tie a call to writ's OpenAPI document: a route template and a method name pick
 * the operation in `generated/openapi.ts`, whose path parameters, query and JSON body are
 * then checked by the compiler. `Writ.request()` takes these; each named method of `Writ`
 * is one call of it.
 */
import type { paths } from "./generated/openapi.js";

export type HttpMethod = "get" | "post" | "put" | "patch" | "delete";

/** Every route template writ serves (`"/v1/leases/{lease_id}/renew"`, ...). */
export type Route = keyof paths;

/** The methods a route answers. */
export type MethodOf<P extends Route> = {
  [M in HttpMethod]: paths[P][M] extends { responses: unknown } ? M : never;
}[HttpMethod];

export type Operation<P extends Route, M extends MethodOf<P>> = paths[P][M];

type PathParams<O> = O extends { parameters: { path: infer T } } ? T : never;
type Query<O> = O extends { parameters: { query?: infer T } } ? T : never;
type JsonBody<O> = O extends { requestBody: { content: { "application/json": infer B } } }
  ? B
  : O extends { requestBody?: { content: { "application/json": infer B } } }
    ? B
    : never;
type BodyRequired<O> = O extends { requestBody: { content: unknown } } ? true : false;

/** The 2xx JSON answer of an operation. */
export type Answer<O> = O extends { responses: infer R }
  ? {
      [C in keyof R]: C extends 200 | 201 | 202
        ? R[C] extends { content: { "application/json": infer J } }
          ? J
          : never
        : never;
    }[keyof R]
  : unknown;

/** How long and under which signal one call may run. */
export interface CallOptions {
  /** The server may hold this call this long (a long-poll): added to the client's timeout. */
  waitS?: number;
  /** Overrides the client's timeout for this call (seconds). */
  timeoutS?: number;
  /** Aborts the call; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The arguments of one operation: `path` when the route has parameters, `query`, `body`. */
export type RequestOptions<O> = CallOptions &
  ([PathParams<O>] extends [never] ? { path?: undefined } : { path: PathParams<O> }) &
  ([Query<O>] extends [never] ? { query?: undefined } : { query?: Query<O> }) &
  ([JsonBody<O>] extends [never]
    ? { body?: undefined }
    : BodyRequired<O> extends true
      ? { body: JsonBody<O> }
      : { body?: JsonBody<O> });
