import { APISERVER_TARGET, type Identity, type OpenRequest } from '@kubetunnel/shared';
import type { AgentTunnel, ClusterRegistry } from '../registry.js';

/**
 * The target rule: what a stream asks the agent for. A tcp stream for
 * `host:port` is for that host:port when an agent of the cluster
 * allow-lists it exactly, else for the cluster's apiserver (whatever the
 * host names: kubernetes.default.svc, the cluster name, the hub's name). An
 * L7 request is an `http` stream to the apiserver carrying the caller's
 * identity. An agent serves an `http` stream when it serves L7, a tcp
 * stream when the target is its apiserver or on its allow list.
 */

/** What a tcp stream for `host:port` of `cluster` asks the agent to dial. */
export function tcpTarget(registry: ClusterRegistry, r: { cluster: string; host: string; port: number }): string {
  const hostPort = `${r.host}:${r.port}`;
  const entry = registry.get(r.cluster);
  const allowListed = entry ? [...entry.agents.values()].some((t) => t.allowDest.has(hostPort)) : false;
  return allowListed ? hostPort : APISERVER_TARGET;
}

/** The OPEN of an L7 request made by `identity`. */
export function l7Request(identity: Identity): OpenRequest {
  return { kind: 'http', target: APISERVER_TARGET, identity };
}

/** Whether a tunnel's agent can serve an OPEN of this kind and target. */
export function canServe(t: AgentTunnel, kind: OpenRequest['kind'], target: string): boolean {
  return kind === 'http' ? t.l7 : target === APISERVER_TARGET || t.allowDest.has(target);
}
