import client from 'prom-client';
import type { Reason } from '@kubetunnel/shared';
import type { ClusterRegistry } from './registry.js';

/** Dial duration buckets (seconds), of our histogram and of Konnectivity's. */
const DIAL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];

/** The server's metrics, in a registry of its own (several servers may share a process in tests). */
export class ServerMetrics {
  readonly registry = new client.Registry();
  readonly streams: client.Counter<'frontend'>;
  readonly failures: client.Counter<'frontend' | 'reason'>;
  readonly dialSeconds: client.Histogram<'frontend'>;
  readonly bytes: client.Counter<'direction'>;
  readonly registrations: client.Counter<'result'>;
  readonly dialRetries: client.Counter<'frontend' | 'reason'>;
  /** Konnectivity's name for the dial duration (no labels), so ANP dashboards keep working. */
  readonly anpDialSeconds: client.Histogram;
  readonly disconnects: client.Counter<'reason'>;
  readonly connectionsRefused: client.Counter<'listener' | 'reason'>;
  /** The listeners whose connections the kubetunnel_connections gauge reports. */
  readonly listeners = new Map<string, { open: number; pending: number }>();

  constructor(clusters: ClusterRegistry) {
    const registers = [this.registry];
    this.streams = new client.Counter({
      name: 'kubetunnel_streams_total',
      help: 'Streams opened through a tunnel, by frontend.',
      labelNames: ['frontend'],
      registers,
    });
    this.failures = new client.Counter({
      name: 'kubetunnel_stream_failures_total',
      help: 'Requests that did not become a stream, by frontend and reason.',
      labelNames: ['frontend', 'reason'],
      registers,
    });
    this.dialSeconds = new client.Histogram({
      name: 'kubetunnel_dial_duration_seconds',
      help: 'Time from OPEN to OPEN_OK.',
      labelNames: ['frontend'],
      buckets: DIAL_BUCKETS,
      registers,
    });
    this.bytes = new client.Counter({
      name: 'kubetunnel_stream_bytes_total',
      help: 'Payload bytes through tunnels (in: from agents, out: to agents).',
      labelNames: ['direction'],
      registers,
    });
    this.registrations = new client.Counter({
      name: 'kubetunnel_agent_registrations_total',
      help: 'Agent registrations, by result.',
      labelNames: ['result'],
      registers,
    });
    // Konnectivity's names, where the meaning is the same (all frontends and clusters together).
    const anp = 'konnectivity_network_proxy_server_';
    this.anpDialSeconds = new client.Histogram({
      name: `${anp}dial_duration_seconds`,
      help: 'Latency of dial to the remote endpoint in seconds (kubetunnel_dial_duration_seconds without labels).',
      buckets: DIAL_BUCKETS,
      registers,
    });
    const failures = this.failures;
    new client.Counter({
      name: `${anp}dial_failure_count`,
      help: 'Number of dial failures observed, by Konnectivity reason (from kubetunnel_stream_failures_total).',
      labelNames: ['reason'],
      registers,
      async collect() {
        this.reset();
        for (const v of (await failures.get()).values) {
          const reason = anpDialFailureReason(String(v.labels.reason));
          if (reason) this.inc({ reason }, v.value);
        }
      },
    });
    /** A gauge of one of the registry's totals over every cluster. */
    const totalGauge = (name: string, help: string, total: keyof ReturnType<ClusterRegistry['totals']>) =>
      new client.Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(clusters.totals()[total]);
        },
      });
    totalGauge(`${anp}ready_backend_connections`, 'Number of agents connected to the proxy server (every cluster).', 'agents');
    totalGauge(`${anp}pending_backend_dials`, 'Current number of pending backend dial requests.', 'pendingDials');
    totalGauge(`${anp}established_connections`, 'Current number of established end-to-end connections (post-dial).', 'openStreams');
    this.dialRetries = new client.Counter({
      name: 'kubetunnel_dial_retries_total',
      help: 'Streams refused by a tunnel before they started and opened again on another tunnel, by frontend and the refusal reason.',
      labelNames: ['frontend', 'reason'],
      registers,
    });
    this.disconnects = new client.Counter({
      name: 'kubetunnel_agent_disconnects_total',
      help: 'Agent tunnels that ended, by reason (closed: a clean close by either side).',
      labelNames: ['reason'],
      registers,
    });
    this.connectionsRefused = new client.Counter({
      name: 'kubetunnel_connections_refused_total',
      help: 'Connections refused or cut by a listener limit, by listener and reason (max-connections, max-pending, max-pending-per-source, handshake-timeout, header-timeout, accept-error).',
      labelNames: ['listener', 'reason'],
      registers,
    });
    const listeners = this.listeners;
    new client.Gauge({
      name: 'kubetunnel_connections',
      help: 'Connections open on a listener, by listener and state (pending: in the TLS handshake or before the first request head).',
      labelNames: ['listener', 'state'],
      registers,
      collect() {
        this.reset();
        for (const [listener, g] of listeners) {
          this.set({ listener, state: 'open' }, g.open);
          this.set({ listener, state: 'pending' }, g.pending);
        }
      },
    });
    new client.Gauge({
      name: 'kubetunnel_agents',
      help: 'Live agent tunnels, by cluster.',
      labelNames: ['cluster'],
      registers,
      collect() {
        this.reset();
        for (const c of clusters.entries()) this.set({ cluster: c.name }, c.agents.size);
      },
    });
    new client.Gauge({
      name: 'kubetunnel_open_streams',
      help: 'Streams open through tunnels, by cluster.',
      labelNames: ['cluster'],
      registers,
      collect() {
        this.reset();
        for (const c of clusters.entries()) this.set({ cluster: c.name }, c.openStreams);
      },
    });
  }

  /** Counts a request of `frontend` that did not become a stream, under its reason. */
  refused(frontend: string, reason: Reason): void {
    this.failures.inc({ frontend, reason });
  }
}

/**
 * Konnectivity's dial failure reason for one of ours; undefined for refusals
 * ANP has no counterpart for (unknown cluster, policy, authentication, limits).
 */
export function anpDialFailureReason(reason: string): string | undefined {
  switch (reason) {
    case 'NO_AGENT':
      return 'no_agent';
    case 'OPEN_TIMEOUT':
      return 'backend_dial_timeout';
    case 'CANCELLED':
      return 'frontend_close';
    case 'SESSION_CLOSED':
    case 'GOING_AWAY':
    case 'PING_TIMEOUT':
      return 'backend_close';
    case 'DIAL_REFUSED':
    case 'DIAL_UNREACHABLE':
    case 'DIAL_DNS':
    case 'DIAL_TIMEOUT':
    case 'DIAL_FAILED':
    case 'TARGET_NOT_ALLOWED':
    case 'UPSTREAM_RESET':
    case 'BAD_OPEN':
      return 'error_response';
    default:
      return undefined;
  }
}

/**
 * The metrics of several workers of one server process (`--workers`), each
 * given as its registry's getMetricsAsJSON(), as one exposition: counters,
 * gauges and histograms added up across workers (prom-client's cluster
 * aggregation).
 */
export async function aggregateMetrics(perWorker: Array<Awaited<ReturnType<client.Registry['getMetricsAsJSON']>>>): Promise<string> {
  if (perWorker.length === 0) return '';
  return client.AggregatorRegistry.aggregate(perWorker).metrics();
}

/** The primary's own metrics under `--workers`: its workers and their restarts. */
export class WorkersMetrics {
  readonly registry = new client.Registry();
  readonly restarts: client.Counter;

  constructor(state: () => { up: number; starting: number }) {
    const registers = [this.registry];
    this.restarts = new client.Counter({
      name: 'kubetunnel_worker_restarts_total',
      help: 'Workers of this server process started again after they died.',
      registers,
    });
    new client.Gauge({
      name: 'kubetunnel_workers',
      help: 'Workers of this server process, by state (up, starting).',
      labelNames: ['state'],
      registers,
      collect() {
        const s = state();
        this.set({ state: 'up' }, s.up);
        this.set({ state: 'starting' }, s.starting);
      },
    });
  }
}
