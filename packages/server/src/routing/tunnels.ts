import { APISERVER_TARGET, type OpenRequest } from '@kubetunnel/shared';
import type { AgentTunnel, ClusterEntry } from '../registry.js';
import { canServe } from './target.js';

/**
 * Chooses the tunnel a new stream of a cluster opens on, as Konnectivity's
 * BackendManager chooses a backend for a dial. The scope of its inputs:
 * `cluster` is one cluster's entry as the registry holds it at the moment
 * of the call (its tunnels come and go between calls); `want` is the kind
 * and target of the one OPEN to send; `tried` holds the tunnels that this
 * same dial has tried already (it lives for one dial and is never shared).
 * A chooser keeps no state of its own between calls and never opens a
 * stream: it returns a live tunnel that accepts new streams and can serve
 * `want`, or undefined when none can.
 */
export interface TunnelChooser {
  choose(cluster: ClusterEntry, want: Pick<OpenRequest, 'kind' | 'target'>, tried?: ReadonlySet<AgentTunnel>): AgentTunnel | undefined;
}

/**
 * The least busy tunnel: among live agents that accept new streams and can
 * serve it, the one with the fewest open streams plus pending opens; ties
 * go to the one registered first. Tunnels in `exclude` are passed over.
 */
export function pickTunnel(
  cluster: ClusterEntry,
  kind: OpenRequest['kind'] = 'tcp',
  target = APISERVER_TARGET,
  exclude?: ReadonlySet<AgentTunnel>,
): AgentTunnel | undefined {
  let best: AgentTunnel | undefined;
  let bestLoad = Infinity;
  for (const t of cluster.agents.values()) {
    if (!t.session.usable || exclude?.has(t) || !canServe(t, kind, target)) continue;
    const load = t.session.openStreams + t.session.pendingOpens;
    if (load < bestLoad) {
      best = t;
      bestLoad = load;
    }
  }
  return best;
}

/** The chooser every frontend uses: pickTunnel. */
export const leastBusy: TunnelChooser = {
  choose: (cluster, want, tried) => pickTunnel(cluster, want.kind, want.target, tried),
};
