import { Reasons, type Reason } from '@kubetunnel/shared';

/**
 * Why a request did not become a stream, whichever step refused it
 * (authentication, routing, policy, the cluster's tunnels, the agent's dial):
 * one reason of the error table, a one-line message for the caller, and for
 * a refusal worth retrying soon, in how many seconds. Metrics and logs use
 * the reason; each frontend maps it to its own answer at its edge (see
 * httpAnswer here, grpcStatusOf in grpc/proxy-service.ts).
 */
export interface Refusal {
  readonly reason: Reason;
  readonly message: string;
  readonly retryAfter?: number;
}

/** The result of a step that either gives `T` or refuses. */
export type Outcome<T> = ({ ok: true } & T) | { ok: false; refusal: Refusal };

export function refusal(reason: Reason, message: string = Reasons[reason].text, retryAfter?: number): Refusal {
  return retryAfter === undefined ? { reason, message } : { reason, message, retryAfter };
}

export function refused(reason: Reason, message?: string, retryAfter?: number): { ok: false; refusal: Refusal } {
  return { ok: false, refusal: refusal(reason, message, retryAfter) };
}

/** Which HTTP edge answers: a proxy (CONNECT) asks for credentials with 407, an origin (L7) with 401. */
export type HttpEdge = 'proxy' | 'origin';

/**
 * The HTTP answer to a refusal: the status of the error table (407 instead
 * of 401 from a proxy), and on a 503 a Retry-After (the refusal's own, else
 * one second).
 */
export function httpAnswer(r: Refusal, edge: HttpEdge): { status: number; headers: Record<string, string> } {
  const status = r.reason === 'UNAUTHENTICATED' && edge === 'proxy' ? 407 : Reasons[r.reason].http;
  const retryAfter = r.retryAfter ?? (status === 503 ? 1 : undefined);
  return { status, headers: retryAfter === undefined ? {} : { 'Retry-After': String(retryAfter) } };
}
