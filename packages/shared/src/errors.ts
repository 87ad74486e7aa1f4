/**
 * The closed set of failure reasons. Each has a stable numeric wire code (it
 * crosses the tunnel in OPEN_ERR, RESET and GOAWAY), an HTTP status for the
 * frontends, a gRPC status for the konnectivity frontend and a WebSocket close
 * code. Logs and metrics use the `reason` string; nothing anywhere chooses a
 * status by reading an error message, and only the edges (a frontend
 * answering its caller, a session closing its WebSocket) read the columns.
 */
export const Reasons = {
  // Protocol and session
  PROTOCOL_ERROR: { code: 1, http: 502, grpc: 13, ws: 1002, text: 'protocol error' },
  FLOW_CONTROL: { code: 2, http: 502, grpc: 13, ws: 1002, text: 'flow control violated' },
  // A dial the caller gave up (or the agent cancelled) before it started: try again.
  CANCELLED: { code: 3, http: 503, grpc: 1, ws: 1000, text: 'cancelled' },
  SESSION_CLOSED: { code: 4, http: 503, grpc: 14, ws: 1001, text: 'tunnel closed' },
  PING_TIMEOUT: { code: 5, http: 503, grpc: 14, ws: 4005, text: 'tunnel peer did not answer ping' },
  GOING_AWAY: { code: 6, http: 503, grpc: 14, ws: 1001, text: 'tunnel draining' },
  OPEN_TIMEOUT: { code: 7, http: 504, grpc: 4, ws: 1011, text: 'dial timed out' },
  TOO_MANY_STREAMS: { code: 8, http: 503, grpc: 8, ws: 1013, text: 'too many streams' },
  INTERNAL: { code: 9, http: 500, grpc: 13, ws: 1011, text: 'internal error' },
  IDLE_TIMEOUT: { code: 10, http: 504, grpc: 4, ws: 1000, text: 'idle timeout' },
  // A peer that misbehaves: it is disconnected (WebSocket 1008, policy violation)
  CONTROL_QUEUE_FULL: { code: 11, http: 503, grpc: 8, ws: 1008, text: 'tunnel peer does not read the frames owed to it' },
  PING_FLOOD: { code: 12, http: 503, grpc: 8, ws: 1008, text: 'tunnel peer sent PINGs faster than allowed' },
  PEER_NOT_READING: { code: 13, http: 503, grpc: 14, ws: 1008, text: 'tunnel peer stopped reading' },
  // Dials made by the agent
  DIAL_REFUSED: { code: 20, http: 502, grpc: 14, ws: 1011, text: 'connection refused by target' },
  DIAL_UNREACHABLE: { code: 21, http: 502, grpc: 14, ws: 1011, text: 'target unreachable' },
  DIAL_DNS: { code: 22, http: 502, grpc: 14, ws: 1011, text: 'target name did not resolve' },
  DIAL_TIMEOUT: { code: 23, http: 504, grpc: 4, ws: 1011, text: 'target did not answer in time' },
  DIAL_FAILED: { code: 24, http: 502, grpc: 14, ws: 1011, text: 'dial failed' },
  TARGET_NOT_ALLOWED: { code: 25, http: 502, grpc: 7, ws: 1008, text: 'target not allowed by agent' },
  BAD_OPEN: { code: 26, http: 502, grpc: 3, ws: 1008, text: 'malformed open request' },
  UPSTREAM_RESET: { code: 27, http: 502, grpc: 14, ws: 1011, text: 'target reset the connection' },
  // Refusals at the hub, before any stream opens (they never cross a tunnel)
  UNAUTHENTICATED: { code: 30, http: 401, grpc: 16, ws: 1008, text: 'no valid credentials' },
  BAD_REQUEST: { code: 31, http: 400, grpc: 3, ws: 1008, text: 'malformed request' },
  FORBIDDEN: { code: 32, http: 403, grpc: 7, ws: 1008, text: 'not allowed' },
  UNKNOWN_CLUSTER: { code: 33, http: 404, grpc: 5, ws: 1008, text: 'unknown cluster' },
  NO_AGENT: { code: 34, http: 503, grpc: 14, ws: 1013, text: 'cluster has no live agent' },
  BAD_IDENTITY: { code: 35, http: 403, grpc: 7, ws: 1008, text: 'identity cannot be carried to the member cluster' },
  IDENTITY_TOO_LARGE: { code: 36, http: 431, grpc: 8, ws: 1009, text: 'identity too large for the tunnel' },
  NOT_FOUND: { code: 37, http: 404, grpc: 12, ws: 1008, text: 'no such endpoint' },
  // Joining with a token and renewing agent certificates
  JOIN_DISABLED: { code: 40, http: 404, grpc: 12, ws: 1008, text: 'this server does not sign agent certificates (started without --client-ca-key)' },
  TOKEN_INVALID: { code: 41, http: 401, grpc: 16, ws: 1008, text: 'join token is malformed, altered, or not signed by this hub\'s client CA' },
  TOKEN_EXPIRED: { code: 42, http: 403, grpc: 7, ws: 1008, text: 'join token has expired' },
  TOKEN_REVOKED: { code: 43, http: 403, grpc: 7, ws: 1008, text: 'join token has been revoked' },
  TOKEN_USED_UP: { code: 44, http: 403, grpc: 7, ws: 1008, text: 'join token has been used as many times as it allows' },
  TOKEN_WRONG_CLUSTER: { code: 45, http: 403, grpc: 7, ws: 1008, text: 'join token is for another cluster' },
  BAD_CSR: { code: 46, http: 400, grpc: 3, ws: 1008, text: 'malformed certificate request' },
  CERT_EXPIRED: { code: 47, http: 401, grpc: 16, ws: 4401, text: 'agent certificate expired' },
} as const;

export type Reason = keyof typeof Reasons;

const byCode = new Map<number, Reason>(
  (Object.keys(Reasons) as Reason[]).map((r) => [Reasons[r].code, r]),
);

/**
 * Reasons that say a stream never started: the OPEN was refused by the
 * tunnel itself (the agent is draining or full) or the tunnel ended before
 * OPEN_OK. No byte of such a stream was carried (data flows only after
 * OPEN_OK), so the opener may open it again on another tunnel of the cluster.
 * Every other refusal (a dial the agent made and that failed, a target it
 * does not allow, a timeout, a cancel) is final for that request.
 */
const RETRY_ELSEWHERE = new Set<Reason>([
  'SESSION_CLOSED',
  'PING_TIMEOUT',
  'GOING_AWAY',
  'TOO_MANY_STREAMS',
  'CONTROL_QUEUE_FULL',
  'PING_FLOOD',
  'PEER_NOT_READING',
]);

/** True when a stream refused for `reason` before OPEN_OK may be opened on another tunnel. */
export function retryElsewhere(reason: Reason): boolean {
  return RETRY_ELSEWHERE.has(reason);
}

/** The reason for a wire code; unknown codes (a newer peer) read as INTERNAL. */
export function reasonFromCode(code: number): Reason {
  return byCode.get(code) ?? 'INTERNAL';
}

/** An error that carries one of the closed set of reasons. */
export class TunnelError extends Error {
  readonly reason: Reason;
  override readonly name = 'TunnelError';

  constructor(reason: Reason, message?: string, options?: { cause?: unknown }) {
    super(message ?? Reasons[reason].text, options);
    this.reason = reason;
  }

  get code(): number {
    return Reasons[this.reason].code;
  }
}

/** The reason carried by any error: a TunnelError's own, otherwise INTERNAL. */
export function reasonOf(err: unknown): Reason {
  return err instanceof TunnelError ? err.reason : 'INTERNAL';
}

/** Maps a socket error from a dial (errno codes) to a reason. */
export function dialReason(err: unknown): Reason {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ECONNREFUSED':
      return 'DIAL_REFUSED';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'DIAL_UNREACHABLE';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'DIAL_DNS';
    case 'ETIMEDOUT':
      return 'DIAL_TIMEOUT';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'UPSTREAM_RESET';
    default:
      return err instanceof TunnelError ? err.reason : 'DIAL_FAILED';
  }
}
