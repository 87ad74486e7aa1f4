import { TunnelError, retryElsewhere, type Identity, type MuxStream, type OpenRequest, type Reason } from '@kubetunnel/shared';
import type { ServerMetrics } from './metrics.js';
import { pickTunnel, type AgentTunnel, type ClusterRegistry } from './registry.js';

export interface DialDeps {
  registry: ClusterRegistry;
  metrics: ServerMetrics;
  dialTimeoutMs: number;
  /** Says whether `identity` may reach `cluster`; a string is the refusal reason. */
  authorize(identity: Identity, cluster: string): true | string;
  /** Streams (open or dialing) one user may hold at once. */
  maxStreamsPerClient: number;
  /** Streams held per user, kept by dialCluster. */
  clientStreams: Map<string, number>;
  /** Tunnels one dial may try when a stream is refused before it starts (see retryElsewhere). */
  dialAttempts: number;
}

export type DialResult =
  | { ok: true; stream: MuxStream; tunnel: AgentTunnel }
  | { ok: false; status: number; reason: string; retryAfter?: number; cause?: Reason };

/**
 * Opens a stream to a cluster for a frontend: the steps and statuses every
 * frontend shares (not allowed 403, then unknown 404, no live agent 503, the
 * agent's dial failure 502/504). A stream the tunnel refused before it
 * started is opened on another tunnel, within the same dial timeout. The
 * stream counts toward the cluster's open streams until it closes; pending
 * dials are counted while the OPENs wait.
 */
export async function dialCluster(
  deps: DialDeps,
  args: { cluster: string; identity: Identity; request: OpenRequest; frontend: string; signal?: AbortSignal },
): Promise<DialResult> {
  const { registry, metrics } = deps;
  const fail = (status: number, reason: string, metricReason: string, retryAfter?: number, cause?: Reason): DialResult => {
    metrics.failures.inc({ frontend: args.frontend, reason: metricReason });
    const result: DialResult = retryAfter === undefined ? { ok: false, status, reason } : { ok: false, status, reason, retryAfter };
    // The reason from the error table, where one applies (the gRPC frontend maps it to a status).
    if (cause) result.cause = cause;
    return result;
  };
  // Authorization comes first: a caller not allowed a name learns nothing
  // about it, not even whether such a cluster exists.
  const allowed = deps.authorize(args.identity, args.cluster);
  if (allowed !== true) return fail(403, allowed, 'FORBIDDEN');
  const entry = registry.get(args.cluster);
  if (!entry && registry.young)
    return fail(503, `cluster "${args.cluster}" has not connected to this server yet (it started moments ago)`, 'NO_AGENT', 1);
  if (!entry) return fail(404, `unknown cluster "${args.cluster}"`, 'UNKNOWN_CLUSTER');
  const noAgent = () => {
    const why = entry.agents.size === 0 ? 'has no live agent' : `has no live agent that serves ${args.request.kind === 'http' ? 'L7 requests' : args.request.target}`;
    const hint = args.request.kind === 'http' ? [...entry.agents.values()].find((t) => t.l7Refusal)?.l7Refusal : undefined;
    if (hint) return fail(503, `cluster "${args.cluster}" ${why}: ${hint}`, 'NO_AGENT', 5);
    return fail(503, `cluster "${args.cluster}" ${why}`, 'NO_AGENT', 5);
  };
  if (!pickTunnel(entry, args.request.kind, args.request.target)) return noAgent();
  const user = args.identity.user;
  const held = deps.clientStreams.get(user) ?? 0;
  if (held >= deps.maxStreamsPerClient)
    return fail(503, `user "${user}" already holds ${held} streams (the limit)`, 'TOO_MANY_STREAMS', 1, 'TOO_MANY_STREAMS');
  deps.clientStreams.set(user, held + 1);
  let counted = true;
  const uncount = () => {
    if (!counted) return;
    counted = false;
    const n = (deps.clientStreams.get(user) ?? 1) - 1;
    if (n > 0) deps.clientStreams.set(user, n);
    else deps.clientStreams.delete(user);
  };

  const refused = (e: TunnelError): DialResult => {
    uncount();
    const status = e.httpStatus === 499 ? 503 : e.httpStatus;
    return fail(status, `cluster "${args.cluster}": ${e.message}`, e.reason, status === 503 ? 1 : undefined, e.reason);
  };
  const started = performance.now();
  const tried = new Set<AgentTunnel>();
  let last: TunnelError | undefined;
  entry.pendingDials++;
  try {
    for (;;) {
      const tunnel = pickTunnel(entry, args.request.kind, args.request.target, tried);
      if (!tunnel) {
        if (last) return refused(last);
        uncount();
        return noAgent();
      }
      tried.add(tunnel);
      const timeoutMs = Math.max(1, deps.dialTimeoutMs - (performance.now() - started));
      try {
        const stream = await tunnel.session.open(args.request, { timeoutMs, ...(args.signal ? { signal: args.signal } : {}) });
        const seconds = (performance.now() - started) / 1000;
        metrics.dialSeconds.observe({ frontend: args.frontend }, seconds);
        metrics.anpDialSeconds.observe(seconds);
        metrics.streams.inc({ frontend: args.frontend });
        entry.openStreams++;
        stream.once('close', () => {
          uncount();
          entry.openStreams--;
          metrics.bytes.inc({ direction: 'in' }, stream.bytesIn);
          metrics.bytes.inc({ direction: 'out' }, stream.bytesOut);
        });
        return { ok: true, stream, tunnel };
      } catch (err) {
        const e = err instanceof TunnelError ? err : new TunnelError('INTERNAL', String(err));
        // Refused before it started: nothing was carried, another tunnel may take it.
        const again = retryElsewhere(e.reason) && tried.size < deps.dialAttempts && !args.signal?.aborted && performance.now() - started < deps.dialTimeoutMs;
        if (!again) return refused(e);
        metrics.dialRetries.inc({ frontend: args.frontend, reason: e.reason });
        last = e;
      }
    }
  } finally {
    entry.pendingDials--;
  }
}
