/** Pieces every benchmark process shares: statistics, connections, HTTP over a socket. */
import { once } from 'node:events';
import tls from 'node:tls';

export interface Summary {
  min: number;
  median: number;
  max: number;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function summary(xs: number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0] ?? NaN, median: percentile(s, 50), max: s[s.length - 1] ?? NaN };
}

/** Latency percentiles of one run, ms. */
export interface Lat {
  p50: number;
  p99: number;
  n: number;
}

/** Latency percentiles over several runs: min / median / max of each run's p50 and p99. */
export interface LatRuns {
  p50: Summary;
  p99: Summary;
  /** Samples per run. */
  n: number;
  runs: number;
}

export function latRuns(runs: Lat[]): LatRuns {
  return { p50: summary(runs.map((r) => r.p50)), p99: summary(runs.map((r) => r.p99)), n: runs[0]?.n ?? 0, runs: runs.length };
}

/** How the load client reaches the upstream. */
export type Route =
  | { kind: 'direct'; port: number }
  /** Through an HTTPS proxy: TLS to it, CONNECT, then TLS to the upstream inside (kubetunnel, the node relay). */
  | { kind: 'proxy'; proxyPort: number; cluster: string; token: string; hubCA: string }
  | { kind: 'ssh'; port: number }
  /** Through kubetunnel's Konnectivity ProxyService (gRPC), TLS to the upstream inside the Proxy call. */
  | { kind: 'grpc'; grpcPort: number; cluster: string; token: string; hubCA: string };

/** Where a new connection's time went (proxy routes): TLS with the proxy, then its answer to CONNECT, ms. */
export interface Phases {
  proxyTls: number;
  connect: number;
}

// One TLS context per CA, as a real client builds its TLS configuration once
// (creating one per connection costs more than the handshake's cryptography).
const contexts = new Map<string, tls.SecureContext>();
export const contextFor = (ca: string) => contexts.get(ca) ?? contexts.set(ca, tls.createSecureContext({ ca })).get(ca)!;

/** A TLS connection to the upstream over `route` (proxy routes: CONNECT, then TLS inside). */
export async function connectUpstream(route: Route, upstreamCA: string, phases?: Phases): Promise<tls.TLSSocket> {
  const upstreamContext = contextFor(upstreamCA);
  if (route.kind === 'grpc') {
    const { dialGrpc } = await import('./grpc-route.js');
    const t0 = performance.now();
    const conn = await dialGrpc(route);
    if (phases) {
      phases.proxyTls = NaN;
      phases.connect = performance.now() - t0;
    }
    const inner = tls.connect({ socket: conn, servername: 'localhost', secureContext: upstreamContext });
    await once(inner, 'secureConnect');
    return inner;
  }
  if (route.kind !== 'proxy') {
    const s = tls.connect({ host: '127.0.0.1', port: route.port, servername: 'localhost', secureContext: upstreamContext });
    await once(s, 'secureConnect');
    s.setNoDelay(true);
    return s;
  }
  const t0 = performance.now();
  const hub = tls.connect({ host: '127.0.0.1', port: route.proxyPort, servername: 'localhost', secureContext: contextFor(route.hubCA) });
  await once(hub, 'secureConnect');
  const t1 = performance.now();
  hub.setNoDelay(true);
  hub.write(
    `CONNECT ${route.cluster}:443 HTTP/1.1\r\nHost: ${route.cluster}:443\r\nProxy-Authorization: Bearer ${route.token}\r\n\r\n`,
  );
  const [head] = (await once(hub, 'data')) as [Buffer];
  if (!head.toString('latin1').startsWith('HTTP/1.1 200')) throw new Error(`CONNECT refused: ${head.toString().split('\r\n')[0]}`);
  if (phases) {
    phases.proxyTls = t1 - t0;
    phases.connect = performance.now() - t1;
  }
  const inner = tls.connect({ socket: hub, servername: 'localhost', secureContext: upstreamContext });
  await once(inner, 'secureConnect');
  return inner;
}

/**
 * Sends one GET on a kept-alive connection and resolves once the whole body
 * has arrived (Content-Length). `onBody` sees body bytes as they come.
 */
export function get(socket: tls.TLSSocket, path: string, onBody?: (n: number) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    let head = '';
    let want = -1;
    let got = 0;
    const onData = (chunk: Buffer) => {
      let body = chunk;
      if (want < 0) {
        head += chunk.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const m = /content-length: *(\d+)/i.exec(head.slice(0, end));
        if (!m) return fail(new Error('response without Content-Length'));
        want = Number(m[1]);
        body = chunk.subarray(Buffer.byteLength(head.slice(0, end + 4), 'latin1'));
      }
      got += body.length;
      onBody?.(body.length);
      if (got >= want) {
        socket.off('data', onData);
        socket.off('close', onClose);
        resolve(got);
      }
    };
    const onClose = () => fail(new Error('connection closed mid-response'));
    const fail = (err: Error) => {
      socket.off('data', onData);
      socket.off('close', onClose);
      reject(err);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: upstream\r\n\r\n`);
  });
}

/** Watch fan-out (watch.ts): the label that sends an event to one watch, and the annotation with its creation time (ms since the epoch). */
export const WATCH_LABEL = 'bench.kubetunnel.io/watch';
export const CREATED_ANNOTATION = 'bench.kubetunnel.io/created-ms';

/** Wall-clock time in ms with sub-ms precision, comparable between the processes of one machine. */
export const wallMs = (): number => performance.timeOrigin + performance.now();
