import client from 'prom-client';
import type { ClusterRegistry } from './registry.js';

/** The server's metrics, in a registry of its own (several servers may share a process in tests). */
export class ServerMetrics {
  readonly registry = new client.Registry();
  readonly streams: client.Counter<'frontend'>;
  readonly failures: client.Counter<'frontend' | 'reason'>;
  readonly dialSeconds: client.Histogram<'frontend'>;
  readonly bytes: client.Counter<'direction'>;
  readonly registrations: client.Counter<'result'>;
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
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
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
}
