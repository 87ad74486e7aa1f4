/**
 * Micro-benchmark of the tunnel mux alone: two processes on loopback joined by
 * one WebSocket (plain ws and TLS wss), one running the server role, the
 * other the agent role.
 *
 *   npm run bench:mux [-- --quick] [-- --json FILE]
 *
 * Measures: one stream's throughput (agent -> server, MB/s), and the round
 * trip of a small write on stream B while stream A runs at full speed on the
 * same session (and, for reference, on an idle session).
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { Writable } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import {
  Defaults,
  SUBPROTOCOL,
  Session,
  WsTransport,
  createCA,
  issueServerCert,
  type IncomingOpen,
  type MuxStream,
} from '@kubetunnel/shared';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const numArg = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : undefined;
};
/** Session settings under test (defaults: the shipped ones). */
const tuning = {
  ...(numArg('--frame') ? { maxFrameSize: numArg('--frame')! } : {}),
  ...(numArg('--message') ? { maxMessageSize: numArg('--message')! } : {}),
  ...(numArg('--window') ? { initialWindow: numArg('--window')! } : {}),
  ...(numArg('--high-water') ? { transportHighWater: numArg('--high-water')! } : {}),
};
const tuningArgs = Object.entries({ '--frame': tuning.maxFrameSize, '--message': tuning.maxMessageSize, '--window': tuning.initialWindow, '--high-water': tuning.transportHighWater })
  .filter(([, v]) => v !== undefined)
  .flatMap(([k, v]) => [k, String(v)]);

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);

// ------------------------------------------------------------ agent side (child)

async function child(url: string, caPem: string | undefined): Promise<void> {
  const ws = new WebSocket(url, SUBPROTOCOL, { perMessageDeflate: false, ...(caPem ? { ca: caPem } : {}) });
  const block = Buffer.alloc(1 << 20, 0x61);
  // The session and its listener must exist as 'open' fires: the server's
  // first frames can arrive in the same read as the 101 answer.
  ws.once('open', () => {
    const session = new Session(new WsTransport(ws), { role: 'agent', pingIntervalMs: 0, ...tuning });
    session.on('open', (inc: IncomingOpen) => serve(inc, block));
    session.on('close', () => process.exit(0));
  });
}

function serve(inc: IncomingOpen, block: Buffer): void {
  const s = inc.accept();
  const [kind, arg] = inc.request.target.split(':');
  if (kind === 'echo') {
    s.pipe(s);
  } else if (kind === 'bulk') {
    // Writes `arg` bytes (or until reset) as fast as flow control allows.
    let left = arg === 'forever' ? Infinity : Number(arg);
    s.resume();
    const pump = () => {
      while (left > 0) {
        const n = Math.min(block.length, left);
        left -= n;
        if (!s.write(n === block.length ? block : block.subarray(0, n))) return void s.once('drain', pump);
      }
      s.end();
    };
    s.on('error', () => (left = 0));
    pump();
  }
}

// ------------------------------------------------------------ server side (parent)

function sink(): Writable & { bytes: number } {
  const w = new Writable({
    highWaterMark: 1 << 20,
    write(chunk: Buffer, _e, cb) {
      w.bytes += chunk.length;
      cb();
    },
  }) as Writable & { bytes: number };
  w.bytes = 0;
  return w;
}

async function throughput(session: Session, bytes: number): Promise<number> {
  const s = await session.open({ kind: 'tcp', target: `bulk:${bytes}` });
  s.end();
  const w = sink();
  const start = performance.now();
  s.pipe(w);
  await once(w, 'finish');
  const secs = (performance.now() - start) / 1000;
  if (w.bytes !== bytes) throw new Error(`got ${w.bytes} of ${bytes} bytes`);
  return bytes / secs / 1e6;
}

async function smallRoundTrips(session: Session, count: number): Promise<number[]> {
  const b = await session.open({ kind: 'tcp', target: 'echo' });
  const samples: number[] = [];
  const msg = Buffer.alloc(64, 0x62);
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    const got = new Promise<void>((resolve) => {
      let n = 0;
      const onData = (c: Buffer) => {
        n += c.length;
        if (n >= msg.length) {
          b.off('data', onData);
          resolve();
        }
      };
      b.on('data', onData);
    });
    b.write(msg);
    await got;
    samples.push(performance.now() - start);
  }
  b.end();
  b.resume();
  await once(b, 'close');
  return samples.sort((x, y) => x - y);
}

async function underLoad(session: Session, count: number): Promise<{ samples: number[]; bulkMBps: number }> {
  const a = await session.open({ kind: 'tcp', target: 'bulk:forever' });
  const w = sink();
  a.pipe(w);
  // Let A reach full speed before measuring B.
  while (w.bytes < 32 << 20) await once(a, 'data');
  const start = performance.now();
  const startBytes = w.bytes;
  const samples = await smallRoundTrips(session, count);
  const bulkMBps = (w.bytes - startBytes) / ((performance.now() - start) / 1000) / 1e6;
  a.destroy();
  await once(a, 'close');
  return { samples, bulkMBps };
}

async function runOne(tls: boolean, pem: { ca: string; cert: string; key: string }) {
  const server = tls ? https.createServer({ cert: pem.cert, key: pem.key }) : http.createServer();
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: Defaults.maxWsPayload });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const url = `${tls ? 'wss' : 'ws'}://${tls ? 'localhost' : '127.0.0.1'}:${port}/`;
  const kid = fork(process.argv[1]!, ['--child', url, ...(tls ? ['--ca', pem.ca] : []), ...tuningArgs], { stdio: 'inherit' });
  const [ws] = (await once(wss, 'connection')) as [WebSocket];
  const session = new Session(new WsTransport(ws), { role: 'server', pingIntervalMs: 0, ...tuning });

  const bulkBytes = quick ? 64 << 20 : 512 << 20;
  const runs = quick ? 1 : 5;
  await throughput(session, 16 << 20); // warm up
  const mbps: number[] = [];
  for (let i = 0; i < runs; i++) mbps.push(await throughput(session, bulkBytes));
  const count = quick ? 200 : 2000;
  const idle = await smallRoundTrips(session, count);
  const loaded = await underLoad(session, count);

  session.close();
  await once(kid, 'exit');
  wss.close();
  server.close();
  return {
    transport: tls ? 'wss (TLS)' : 'ws',
    singleStreamMBps: { min: Math.min(...mbps), median: median(mbps), max: Math.max(...mbps) },
    smallWriteIdleMs: { p50: percentile(idle, 50), p99: percentile(idle, 99) },
    smallWriteUnderBulkMs: { p50: percentile(loaded.samples, 50), p99: percentile(loaded.samples, 99) },
    bulkDuringProbeMBps: loaded.bulkMBps,
  };
}

async function main(): Promise<void> {
  if (args[0] === '--child') {
    const caIdx = args.indexOf('--ca');
    return child(args[1]!, caIdx > 0 ? args[caIdx + 1] : undefined);
  }
  const ca = createCA();
  const server = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
  const pem = { ca: ca.cert, cert: server.cert, key: server.key };
  const results = [];
  for (const tls of [false, true]) results.push(await runOne(tls, pem));
  const report = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'unknown'}`,
    frameSize: tuning.maxFrameSize ?? Defaults.maxFrameSize,
    messageSize: tuning.maxMessageSize ?? Defaults.maxMessageSize,
    window: tuning.initialWindow ?? Defaults.initialWindow,
    transportHighWater: tuning.transportHighWater ?? Defaults.transportHighWater,
    quick,
    results,
  };
  console.log(JSON.stringify(report, null, 2));
  const jsonIdx = args.indexOf('--json');
  if (jsonIdx >= 0) fs.writeFileSync(args[jsonIdx + 1]!, JSON.stringify(report, null, 2) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
