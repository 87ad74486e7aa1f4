import { TunnelError, retryElsewhere, type Identity, type MuxStream, type OpenRequest } from '@kubetunnel/shared';
import type { ServerMetrics } from './metrics.js';
import type { Authorize } from './policy.js';
import { refusal, type Outcome, type Refusal } from './refusal.js';
import type { AgentTunnel, ClusterEntry, ClusterRegistry } from './registry.js';
import { leastBusy, type TunnelChooser } from './routing/tunnels.js';
import type { UserStreamLimit } from './stream-limit.js';

export interface DialDeps {
  registry: ClusterRegistry;
  metrics: ServerMetrics;
  dialTimeoutMs: number;
  /** Says whether `identity` may reach `cluster` (a Refusal with FORBIDDEN when not). */
  authorize: Authorize;
  /** Streams (open or dialing) each user may hold at once. */
  clientStreams: UserStreamLimit;
  /** Tunnels one dial may try when a stream is refused before it starts (see retryElsewhere). */
  dialAttempts: number;
  /** Which tunnel of the cluster a stream opens on (default: the least busy). */
  tunnels?: TunnelChooser;
}

export type DialResult = Outcome<{ stream: MuxStream; tunnel: AgentTunnel }>;

interface DialArgs {
  cluster: string;
  identity: Identity;
  request: OpenRequest;
  frontend: string;
  signal?: AbortSignal;
}

/**
 * Opens a stream to a cluster for a frontend: the steps and refusals every
 * frontend shares (not allowed FORBIDDEN, then unknown UNKNOWN_CLUSTER, no
 * live agent NO_AGENT, the user's limit TOO_MANY_STREAMS, the agent's dial
 * failure with its reason). A stream the tunnel refused before it started is
 * opened on another tunnel, within the same dial timeout. The stream counts
 * toward the cluster's open streams until it closes; pending dials are
 * counted while the OPENs wait. Every refusal is counted in the failures
 * metric under its reason.
 */
export async function dialCluster(deps: DialDeps, args: DialArgs): Promise<DialResult> {
  const result = await dialChecked(deps, args);
  if (!result.ok) deps.metrics.refused(args.frontend, result.refusal.reason);
  return result;
}

async function dialChecked(deps: DialDeps, args: DialArgs): Promise<DialResult> {
  const fail = (r: Refusal): DialResult => ({ ok: false, refusal: r });
  // Authorization comes first: a caller not allowed a name learns nothing
  // about it, not even whether such a cluster exists.
  const allowed = deps.authorize(args.identity, args.cluster);
  if (allowed !== true) return fail(allowed);
  const entry = deps.registry.get(args.cluster);
  if (!entry && deps.registry.young)
    return fail(refusal('NO_AGENT', `cluster "${args.cluster}" has not connected to this server yet (it started moments ago)`, 1));
  if (!entry) return fail(refusal('UNKNOWN_CLUSTER', `unknown cluster "${args.cluster}"`));
  const tunnels = deps.tunnels ?? leastBusy;
  if (!tunnels.choose(entry, args.request)) return fail(noAgent(entry, args.request));
  const user = args.identity.user;
  const release = deps.clientStreams.acquire(user);
  if (!release) return fail(refusal('TOO_MANY_STREAMS', `user "${user}" already holds ${deps.clientStreams.heldBy(user)} streams (the limit)`, 1));
  const result = await openOnTunnels(deps, tunnels, entry, args);
  if (!result.ok) release();
  else result.stream.once('close', release);
  return result;
}

/** Why no tunnel of `entry` can take `request`. */
function noAgent(entry: ClusterEntry, request: OpenRequest): Refusal {
  const why = entry.agents.size === 0 ? 'has no live agent' : `has no live agent that serves ${request.kind === 'http' ? 'L7 requests' : request.target}`;
  // A tunnel that cannot serve L7 may say why (an ANP agent without the server's member credential).
  const hint = request.kind === 'http' ? [...entry.agents.values()].find((t) => t.l7Refusal)?.l7Refusal : undefined;
  return refusal('NO_AGENT', `cluster "${entry.name}" ${why}${hint ? `: ${hint}` : ''}`, 5);
}

/** Opens the stream on a tunnel of `entry`, on the next one when a tunnel refuses it before it starts. */
async function openOnTunnels(deps: DialDeps, tunnels: TunnelChooser, entry: ClusterEntry, args: DialArgs): Promise<DialResult> {
  const { registry, metrics } = deps;
  const refusedBy = (e: TunnelError): DialResult => ({ ok: false, refusal: refusal(e.reason, `cluster "${args.cluster}": ${e.message}`) });
  const started = performance.now();
  const tried = new Set<AgentTunnel>();
  let last: TunnelError | undefined;
  const dialDone = registry.trackDial(entry);
  try {
    for (;;) {
      const tunnel = tunnels.choose(entry, args.request, tried);
      if (!tunnel) return last ? refusedBy(last) : { ok: false, refusal: noAgent(entry, args.request) };
      tried.add(tunnel);
      const timeoutMs = Math.max(1, deps.dialTimeoutMs - (performance.now() - started));
      try {
        const stream = await tunnel.session.open(args.request, { timeoutMs, ...(args.signal ? { signal: args.signal } : {}) });
        const seconds = (performance.now() - started) / 1000;
        metrics.dialSeconds.observe({ frontend: args.frontend }, seconds);
        metrics.anpDialSeconds.observe(seconds);
        metrics.streams.inc({ frontend: args.frontend });
        const streamDone = registry.trackStream(entry);
        stream.once('close', () => {
          streamDone();
          metrics.bytes.inc({ direction: 'in' }, stream.bytesIn);
          metrics.bytes.inc({ direction: 'out' }, stream.bytesOut);
        });
        return { ok: true, stream, tunnel };
      } catch (err) {
        const e = err instanceof TunnelError ? err : new TunnelError('INTERNAL', String(err));
        // Refused before it started: nothing was carried, another tunnel may take it.
        const again = retryElsewhere(e.reason) && tried.size < deps.dialAttempts && !args.signal?.aborted && performance.now() - started < deps.dialTimeoutMs;
        if (!again) return refusedBy(e);
        metrics.dialRetries.inc({ frontend: args.frontend, reason: e.reason });
        last = e;
      }
    }
  } finally {
    dialDone();
  }
}
