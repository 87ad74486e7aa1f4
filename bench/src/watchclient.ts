/**
 * The controller of the watch fan-out scenario (bench/src/watch.ts), a
 * process of its own: `watches` namespace watches on each of `clusters`
 * through the hub's L7 frontend (/clusters/<name>/api/v1/namespaces?watch=1),
 * each selecting the events meant for it by label. argv[2] is a JSON job.
 *
 *   h1  node:https with keep-alive: one connection per watch, as a
 *       HTTP/1.1 client must (a watch holds its connection for its life)
 *   h2  node:http2: one session per cluster, its watches streams on it
 *   direct  as h1, to each cluster's apiserver without the hub: the machine's own latency
 *
 * At most `concurrency` watches are being opened at once. Prints
 * {"phase":"established", ...} once every watch has its 200 (or one could
 * not be opened), then takes {"expect": N, "timeoutMs": T} on standard input:
 * waits until N events have arrived (or T has passed) and prints the result:
 * event latency (arrival minus the creation time the stand-in wrote in the
 * object), and every event missing, repeated, or on a watch it was not for.
 * The same line with "warmup": true first prints that result as
 * {"phase":"warmed", ...}, then counts from zero for the next line.
 */
import { once } from 'node:events';
import http2 from 'node:http2';
import https from 'node:https';
import readline from 'node:readline';
import type { Readable } from 'node:stream';
import { CREATED_ANNOTATION, percentile, WATCH_LABEL, wallMs } from './common.js';
import { runChild } from './procs.js';

interface Job {
  /** direct: HTTP/1.1 as h1, to each cluster's apiserver itself (`apiservers`), not through the hub. */
  mode: 'h1' | 'h2' | 'direct';
  /** The hub's L7 port. */
  port: number;
  apiservers?: Record<string, number>;
  ca: string;
  token: string;
  clusters: string[];
  watches: number;
  /** Names this run's events (the label value is `<run>-<cluster>-<watch>`). */
  run: string;
  concurrency: number;
}

const job = JSON.parse(process.argv[2]!) as Job;
/** Latency is also reported for the events created in each WINDOW_MS of the run. */
const WINDOW_MS = 5000;
const origin = `https://127.0.0.1:${job.port}`;
const watchPath = (cluster: string, label: string) =>
  `/clusters/${cluster}/api/v1/namespaces?watch=1&labelSelector=${encodeURIComponent(`${WATCH_LABEL}=${label}`)}`;
/** The URL of a watch over HTTP/1.1: through the hub, or (direct) at the cluster's apiserver. */
const h1Url = (cluster: string, label: string) =>
  job.mode === 'direct'
    ? `https://127.0.0.1:${job.apiservers![cluster]}${watchPath(cluster, label).slice(`/clusters/${cluster}`.length)}`
    : `${origin}${watchPath(cluster, label)}`;

/** A watch's response body once its 200 has arrived. */
type Opener = (cluster: string, label: string) => Promise<Readable>;

const h1Agent = new https.Agent({ keepAlive: true, maxSockets: Infinity, ca: job.ca, servername: 'localhost' });
const h1: Opener = (cluster, label) =>
  new Promise((resolve, reject) => {
    const req = https.get(h1Url(cluster, label), { agent: h1Agent, headers: { authorization: `Bearer ${job.token}` } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return reject(new Error(`${cluster}: HTTP ${res.statusCode}`));
      }
      res.socket.setNoDelay(true);
      resolve(res);
    });
    req.once('error', reject);
  });

/** h2: the session of each cluster, and the protocol ALPN chose on the first one. */
const sessions = new Map<string, Promise<http2.ClientHttp2Session>>();
let alpn: string | undefined;
function session(cluster: string): Promise<http2.ClientHttp2Session> {
  let s = sessions.get(cluster);
  if (!s) {
    s = new Promise((resolve, reject) => {
      const session = http2.connect(origin, { ca: job.ca, servername: 'localhost' });
      session.once('error', reject);
      session.once('connect', () => {
        alpn ??= session.alpnProtocol;
        if (session.alpnProtocol !== 'h2') return reject(new Error(`the hub negotiated ${session.alpnProtocol ?? 'no protocol'}, not h2`));
        session.off('error', reject);
        session.on('error', () => undefined); // its streams report it
        resolve(session);
      });
    });
    sessions.set(cluster, s);
  }
  return s;
}
const h2: Opener = async (cluster, label) => {
  const stream = (await session(cluster)).request({ ':path': watchPath(cluster, label), authorization: `Bearer ${job.token}` });
  const [headers] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders]; // rejects on the stream's error
  if (Number(headers[':status']) !== 200) {
    stream.destroy();
    throw new Error(`${cluster}: HTTP ${headers[':status']}`);
  }
  return stream;
};

/** Each event's creation time and latency, ms. */
const created: number[] = [];
const latencies: number[] = [];
const seen = new Set<string>();
const problems = { repeated: 0, misrouted: 0, unreadable: 0, ended: 0 };
let received = 0;
let onEvent = (): void => {};

/** Reads one watch's events (a JSON object a line) for as long as it lasts. */
function read(body: Readable, label: string): void {
  let rest = '';
  body.setEncoding('utf8');
  body.on('data', (chunk: string) => {
    const at = wallMs();
    const lines = (rest + chunk).split('\n');
    rest = lines.pop()!;
    for (const line of lines) {
      if (!line) continue;
      let meta: { name?: string; labels?: Record<string, string>; annotations?: Record<string, string> } | undefined;
      try {
        meta = (JSON.parse(line) as { object?: { metadata?: typeof meta } }).object?.metadata;
      } catch {
        // counted below
      }
      const made = Number(meta?.annotations?.[CREATED_ANNOTATION]);
      if (!meta?.name || !Number.isFinite(made)) {
        problems.unreadable++;
        continue;
      }
      if (meta.labels?.[WATCH_LABEL] !== label) problems.misrouted++;
      if (seen.has(meta.name)) problems.repeated++;
      seen.add(meta.name);
      created.push(made);
      latencies.push(at - made);
      received++;
    }
    onEvent();
  });
  body.once('close', () => problems.ended++);
  body.on('error', () => undefined); // 'close' follows
}

async function main(): Promise<unknown> {
  const open = job.mode === 'h2' ? h2 : h1;
  const todo = job.clusters.flatMap((cluster) => Array.from({ length: job.watches }, (_, j) => ({ cluster, label: `${job.run}-${cluster}-${j}` })));
  const failures: string[] = [];
  let established = 0;
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(job.concurrency, todo.length) }, async () => {
      while (next < todo.length) {
        const w = todo[next++]!;
        try {
          read(await open(w.cluster, w.label), w.label);
          established++;
        } catch (err) {
          if (failures.length < 5) failures.push(String(err));
          else failures[4] = `… and more: ${String(err)}`;
        }
      }
    }),
  );
  const establishMs = performance.now() - t0;
  const clientConnections = job.mode === 'h2' ? sessions.size : Object.values(h1Agent.sockets).reduce((n, s) => n + (s?.length ?? 0), 0);
  console.log(JSON.stringify({ phase: 'established', watches: todo.length, established, establishMs, failures, alpn, clientConnections }));

  // Each line a batch of events to wait for. A warm-up's are reported, then forgotten (watch.ts sends one first).
  for await (const text of readline.createInterface({ input: process.stdin })) {
    const { expect, timeoutMs, warmup } = JSON.parse(text) as { expect: number; timeoutMs: number; warmup?: boolean };
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      onEvent = () => received >= expect && (clearTimeout(timer), resolve());
      onEvent();
    });
    const result = { expected: expect, received, ...problems, ...latencyOf(created, latencies) };
    if (!warmup) {
      h1Agent.destroy();
      for (const s of sessions.values()) void s.then((x) => x.destroy(), () => undefined);
      return { mode: job.mode, ...result };
    }
    console.log(JSON.stringify({ phase: 'warmed', ...result }));
    created.length = 0;
    latencies.length = 0;
    received = 0;
  }
  throw new Error('standard input ended before the events were announced');
}

/** Latency percentiles of events, and p50 / p99 of those created in each WINDOW_MS, in order. */
function latencyOf(createdAt: number[], latency: number[]) {
  const first = createdAt.reduce((a, b) => Math.min(a, b), Infinity);
  const windows: number[][] = [];
  createdAt.forEach((t, i) => (windows[Math.floor((t - first) / WINDOW_MS)] ??= []).push(latency[i]!));
  const byWindowMs = [...windows].map((w = []) => {
    const s = w.sort((a, b) => a - b);
    return { p50: percentile(s, 50), p99: percentile(s, 99) };
  });
  const sorted = [...latency].sort((a, b) => a - b);
  return {
    firstCreatedMs: first,
    windowMs: WINDOW_MS,
    byWindowMs,
    latencyMs: { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9), max: sorted[sorted.length - 1] ?? NaN, n: sorted.length },
  };
}

runChild(main);
