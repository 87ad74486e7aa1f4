import { EventEmitter } from 'node:events';
import type { Logger, MuxStream, OpenOptions, OpenRequest } from '@kubetunnel/shared';

/**
 * What the server needs of an agent's tunnel, whatever protocol carries it:
 * our mux `Session` (kubetunnel agents) and `AnpSession` (ANP proxy-agents
 * over gRPC) both are one. Events: 'close' (Error | undefined), 'goaway'.
 */
export interface TunnelSession extends EventEmitter {
  /** New streams may be opened. */
  readonly usable: boolean;
  /** Ended: no stream is open or will be. */
  readonly closed: boolean;
  readonly openStreams: number;
  readonly pendingOpens: number;
  /** We are draining it / the agent is. */
  readonly draining: boolean;
  readonly peerDraining: boolean;
  readonly rttMs: number | undefined;
  readonly bytesIn: number;
  readonly bytesOut: number;
  open(request: OpenRequest, options?: OpenOptions): Promise<MuxStream>;
  /** No new streams; close once the open ones end or `graceMs` passes. */
  drain(graceMs: number): Promise<void>;
  close(err?: Error): void;
}

/** One agent's tunnel to this server. */
export interface AgentTunnel {
  cluster: string;
  agentId: string;
  sessionId: string;
  session: TunnelSession;
  allowDest: ReadonlySet<string>;
  apiserverCA?: string;
  l7: boolean;
  /** Why this tunnel serves no L7 requests, when the reason is worth telling the caller. */
  l7Refusal?: string;
  connectedAt: Date;
  log: Logger;
}

export interface ClusterEntry {
  readonly name: string;
  readonly agents: ReadonlyMap<string, AgentTunnel>;
  /** Dials in flight through this cluster's agents (counted by ClusterRegistry.trackDial). */
  readonly pendingDials: number;
  /** Streams the frontends hold open to this cluster (counted by ClusterRegistry.trackStream). */
  readonly openStreams: number;
}

/** A cluster as the registry keeps it: only the registry writes it. */
interface Entry {
  name: string;
  agents: Map<string, AgentTunnel>;
  pendingDials: number;
  openStreams: number;
}

/**
 * The clusters this server knows and the live tunnels of each. A cluster is
 * "known" from its first registration on; it stays known (answering 503, not
 * 404) after its last agent leaves. A server that has just started does not
 * know its clusters yet: for `graceMs` after creation every cluster may
 * still be reconnecting (see `young`).
 */
export class ClusterRegistry extends EventEmitter {
  private readonly clusters = new Map<string, Entry>();
  private readonly createdAt = performance.now();

  constructor(private readonly graceMs = 0) {
    super();
  }

  /** Within the registration grace period: agents may still be on their way back. */
  get young(): boolean {
    return performance.now() - this.createdAt < this.graceMs;
  }

  get(name: string): ClusterEntry | undefined {
    return this.clusters.get(name);
  }

  names(): string[] {
    return [...this.clusters.keys()].sort();
  }

  entries(): ClusterEntry[] {
    return this.names().map((n) => this.clusters.get(n)!);
  }

  /** Adds a tunnel; an older tunnel with the same agent id is replaced (and returned). */
  register(t: AgentTunnel): AgentTunnel | undefined {
    let c = this.clusters.get(t.cluster);
    if (!c) {
      c = { name: t.cluster, agents: new Map(), pendingDials: 0, openStreams: 0 };
      this.clusters.set(t.cluster, c);
    }
    const old = c.agents.get(t.agentId);
    c.agents.set(t.agentId, t);
    this.emit('change');
    return old;
  }

  unregister(t: AgentTunnel): void {
    const c = this.clusters.get(t.cluster);
    if (c && c.agents.get(t.agentId) === t) {
      c.agents.delete(t.agentId);
      this.emit('change');
    }
  }

  /**
   * Counts one dial in flight through `cluster`'s tunnels until the returned
   * function is called (the first call counts; later ones do nothing).
   */
  trackDial(cluster: ClusterEntry): () => void {
    return this.track(cluster, 'pendingDials');
  }

  /** Counts one stream a frontend holds open to `cluster`, the same way. */
  trackStream(cluster: ClusterEntry): () => void {
    return this.track(cluster, 'openStreams');
  }

  private track(cluster: ClusterEntry, counter: 'pendingDials' | 'openStreams'): () => void {
    const c = this.clusters.get(cluster.name);
    if (c === undefined || c !== cluster) throw new Error(`cluster ${JSON.stringify(cluster.name)} is not one of this registry's`);
    c[counter]++;
    let counted = true;
    return () => {
      if (!counted) return;
      counted = false;
      c[counter]--;
    };
  }

  /** Totals over every cluster (tests assert these return to zero). */
  totals(): { openStreams: number; pendingDials: number; agents: number } {
    let openStreams = 0;
    let pendingDials = 0;
    let agents = 0;
    for (const c of this.clusters.values()) {
      openStreams += c.openStreams;
      pendingDials += c.pendingDials;
      agents += c.agents.size;
    }
    return { openStreams, pendingDials, agents };
  }
}
