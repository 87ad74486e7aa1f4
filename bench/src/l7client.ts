/**
 * The L7 load client, a process of its own: keep-alive HTTP/1.1 over TLS,
 * requests written by hand on the TLS socket (as client.ts does) so the
 * client's own cost stays small and equal on every path. argv[2] is a JSON
 * job; the result is printed as one JSON line. Jobs:
 *
 *   small  one connection, `count` sequential GETs of `path` (after 50 to warm up)
 *   load   `clients` connections, each sending GETs back to back for `seconds`;
 *          prints {"phase":"go"} when every connection is open and warm, then
 *          the result (requests, requests/s, latency percentiles)
 *   list   one connection, `count` sequential GETs of a large answer
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { contextFor, percentile } from './common.js';
import { runChild } from './procs.js';

/** Where the L7 client sends its requests: a TLS port and a path prefix (kubetunnel: /clusters/<name>). */
export interface L7Target {
  port: number;
  prefix: string;
  /** Bearer token for the hub (kubetunnel); none for direct and nginx. */
  token?: string;
  ca: string;
}

interface Job {
  job: 'small' | 'load' | 'list';
  target: L7Target;
  path: string;
  count?: number;
  clients?: number;
  seconds?: number;
}

const job = JSON.parse(process.argv[2]!) as Job;
const lat = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p99: percentile(s, 99), n: s.length };
};

async function connect(t: L7Target): Promise<tls.TLSSocket> {
  const s = tls.connect({ host: '127.0.0.1', port: t.port, servername: 'localhost', secureContext: contextFor(t.ca), ALPNProtocols: ['http/1.1'] });
  await once(s, 'secureConnect');
  s.setNoDelay(true);
  return s;
}

/**
 * One GET on a kept-alive connection; resolves with the body's length once
 * all of it has arrived (Content-Length or chunked). Rejects on any status
 * but 200: a broken path must not pass for a fast one.
 */
function request(s: tls.TLSSocket, t: L7Target, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let head: Buffer | undefined = Buffer.alloc(0) as Buffer;
    let length = -1;
    let chunked = false;
    let got = 0;
    let rest: Buffer = Buffer.alloc(0);
    /** chunked: bytes left in the current chunk (+2 for its CRLF), or -1 reading a size line. */
    let inChunk = -1;
    const done = (err?: Error) => {
      s.off('data', onData);
      s.off('close', onClose);
      if (err) reject(err);
      else resolve(got);
    };
    const onChunked = (b: Buffer): boolean => {
      rest = rest.length ? Buffer.concat([rest, b]) : b;
      for (;;) {
        if (inChunk < 0) {
          const nl = rest.indexOf('\r\n');
          if (nl < 0) return false;
          const size = parseInt(rest.subarray(0, nl).toString('latin1'), 16);
          rest = rest.subarray(nl + 2);
          if (size === 0) return true; // no trailers from these peers
          inChunk = size + 2;
        }
        const n = Math.min(inChunk, rest.length);
        got += Math.max(0, Math.min(n, inChunk - 2));
        inChunk -= n;
        rest = rest.subarray(n);
        if (inChunk > 0) return false;
        inChunk = -1;
      }
    };
    const onData = (chunk: Buffer) => {
      let body = chunk;
      if (head) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const text = head.subarray(0, end).toString('latin1');
        body = head.subarray(end + 4);
        head = undefined;
        if (!text.startsWith('HTTP/1.1 200')) return done(new Error(`${path}: ${text.split('\r\n')[0]}`));
        const m = /\r\ncontent-length: *(\d+)/i.exec(text);
        chunked = /\r\ntransfer-encoding: *chunked/i.test(text);
        if (m) length = Number(m[1]);
        else if (!chunked) return done(new Error(`${path}: answer with neither Content-Length nor chunked encoding`));
      }
      if (chunked) {
        if (onChunked(body)) done();
        return;
      }
      got += body.length;
      if (got >= length) done();
    };
    const onClose = () => done(new Error(`${path}: connection closed mid-answer`));
    s.on('data', onData);
    s.once('close', onClose);
    s.write(`GET ${t.prefix}${path} HTTP/1.1\r\nHost: localhost\r\n${t.token ? `Authorization: Bearer ${t.token}\r\n` : ''}\r\n`);
  });
}

async function timed(s: tls.TLSSocket, n: number, out: number[] = []): Promise<number[]> {
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await request(s, job.target, job.path);
    out.push(performance.now() - t0);
  }
  return out;
}

async function main(): Promise<unknown> {
  const t = job.target;
  switch (job.job) {
    case 'small': {
      const s = await connect(t);
      await timed(s, 50);
      const r = lat(await timed(s, job.count!));
      s.destroy();
      return r;
    }
    case 'load': {
      const sockets = await Promise.all(Array.from({ length: job.clients! }, () => connect(t)));
      await Promise.all(sockets.map((s) => timed(s, 20)));
      console.log(JSON.stringify({ phase: 'go' }));
      const all: number[] = [];
      const t0 = performance.now();
      const until = t0 + job.seconds! * 1000;
      await Promise.all(
        sockets.map(async (s) => {
          while (performance.now() < until) {
            const a = performance.now();
            await request(s, t, job.path);
            all.push(performance.now() - a);
          }
        }),
      );
      const seconds = (performance.now() - t0) / 1000;
      for (const s of sockets) s.destroy();
      return { ...lat(all), requests: all.length, seconds, rps: all.length / seconds };
    }
    case 'list': {
      const s = await connect(t);
      await request(s, t, job.path); // warm up (the upstream builds the answer once)
      const ms: number[] = [];
      let bytes = 0;
      for (let i = 0; i < job.count!; i++) {
        const a = performance.now();
        bytes = await request(s, t, job.path);
        ms.push(performance.now() - a);
      }
      s.destroy();
      const sorted = [...ms].sort((a, b) => a - b);
      return { bytes, ms: { min: sorted[0], median: percentile(sorted, 50), max: sorted[sorted.length - 1] }, runs: ms.length };
    }
  }
}

runChild(main);
