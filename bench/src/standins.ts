/**
 * The member apiservers of the watch fan-out scenario (bench/src/watch.ts):
 * one stand-in apiserver (packages/standin-apiserver) per cluster, all in
 * this process, and the generator of their watch events. argv[2] is a JSON
 * job: the certificate directory, the clusters and the token the agents send.
 * Prints {"ports": {cluster: port}}, then takes commands on standard input,
 * one JSON line each, and stops when it ends:
 *
 *   {"events": {"rate": R, "seconds": S, "watches": W, "run": "h1"}}
 *       creates R namespaces a second in total for S seconds, the k-th at
 *       k / R s, in cluster k mod C, labelled for watch (k div C) mod W of
 *       that cluster (label bench.kubetunnel.io/watch=<run>-<cluster>-<watch>) and
 *       annotated with its creation time; prints {"emitted": N, ...}.
 *   {"connections": true}
 *       prints {"connections": N}: the TLS connections open to all of them.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';
import { CREATED_ANNOTATION, WATCH_LABEL, wallMs } from './common.js';

interface Job {
  certDir: string;
  clusters: string[];
  token: string;
  /** Offer HTTP/2 beside HTTP/1.1 (false: HTTP/1.1 only). */
  http2: boolean;
}

interface EventsCommand {
  rate: number;
  seconds: number;
  watches: number;
  run: string;
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2]!) as Job;
  const read = (name: string) => fs.readFileSync(path.join(job.certDir, name), 'utf8');
  const cert = read('server.crt');
  const key = read('server.key');
  const apis: StandinApiserver[] = [];
  for (const cluster of job.clusters) {
    apis.push(await startStandinApiserver({ cluster, cert, key, http2: job.http2, tokens: { [job.token]: { user: 'kubetunnel-agent', groups: [] } } }));
  }
  console.log(JSON.stringify({ ports: Object.fromEntries(job.clusters.map((c, i) => [c, apis[i]!.port])) }));

  let seq = 0;
  const lines = readline.createInterface({ input: process.stdin });
  for await (const text of lines) {
    const { events: cmd, connections } = JSON.parse(text) as { events?: EventsCommand; connections?: boolean };
    if (connections) console.log(JSON.stringify({ connections: apis.reduce((n, a) => n + a.connections, 0) }));
    if (!cmd) continue;
    console.log(JSON.stringify(await generate(job.clusters, apis, cmd, () => seq++)));
  }
  await Promise.all(apis.map((a) => a.close()));
  process.exit(0);
}

/**
 * Creates the namespaces of one `events` command on schedule. The creation
 * time written in each is when it was made, not when it was due: a late
 * generator does not count as latency (its lateness is reported instead).
 */
async function generate(clusters: string[], apis: StandinApiserver[], cmd: EventsCommand, next: () => number) {
  const total = Math.round(cmd.rate * cmd.seconds);
  const t0 = performance.now();
  let k = 0;
  let maxLateMs = 0;
  while (k < total) {
    const now = performance.now();
    // Every event due by now, then sleep until the next one is due.
    while (k < total && (k * 1000) / cmd.rate <= now - t0) {
      maxLateMs = Math.max(maxLateMs, now - t0 - (k * 1000) / cmd.rate);
      const c = k % apis.length;
      const watch = Math.floor(k / apis.length) % cmd.watches;
      apis[c]!.addNamespace(`e${next()}`, {
        labels: { [WATCH_LABEL]: `${cmd.run}-${clusters[c]}-${watch}` },
        annotations: { [CREATED_ANNOTATION]: wallMs().toFixed(3) },
      });
      k++;
    }
    if (k < total) await new Promise((r) => setTimeout(r, Math.max(0, (k * 1000) / cmd.rate - (performance.now() - t0))));
  }
  const seconds = (performance.now() - t0) / 1000;
  return { emitted: total, seconds, rate: total / seconds, maxLateMs };
}

main().catch((err: unknown) => {
  console.error(String(err));
  process.exit(1);
});
