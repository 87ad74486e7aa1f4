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
  readonly disconnects: client.Counter<'reason'>;

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
    this.disconnects = new client.Counter({
      name: 'kubetunnel_agent_disconnects_total',
      help: 'Agent tunnels that ended, by reason (closed: a clean close by either side).',
      labelNames: ['reason'],
      registers,
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
