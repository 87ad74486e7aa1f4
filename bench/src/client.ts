/**
 * The load client, a process of its own. argv[2] is a JSON job; the result
 * is printed as one JSON line. Jobs: bulk, small, setup, probe (small
 * requests while a bulk download runs on another route), hold (keep many
 * CONNECT streams open), slow (small requests alone, then beside a reader
 * taking a fast download at a fixed rate).
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { connectUpstream, contextFor, get, percentile, type Phases, type Route } from './common.js';
import { runChild } from './procs.js';

interface Job {
  job: 'bulk' | 'small' | 'setup' | 'probe' | 'hold' | 'slow';
  route: Route;
  upstreamCA: string;
  bytes?: number;
  runs?: number;
  count?: number;
  /** probe/slow: the route of the bulk download beside the probes. */
  bulkRoute?: Route;
  /** hold: the clusters to spread streams over. */
  clusters?: string[];
  /** slow: bytes per second the reader takes. */
  rate?: number;
}

const job = JSON.parse(process.argv[2]!) as Job;
const lat = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p99: percentile(s, 99), n: s.length };
};

async function smallLatencies(socket: tls.TLSSocket, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    await get(socket, '/small');
    out.push(performance.now() - t);
  }
  return out;
}

/** Starts a bulk download that runs until stopped; resolves once it is at full speed. */
async function backgroundBulk(route: Route): Promise<{ stop(): void; bytes(): number }> {
  const s = await connectUpstream(route, job.upstreamCA);
  let total = 0;
  let stopped = false;
  void (async () => {
    while (!stopped) await get(s, `/bytes?n=${1 << 30}`, (n) => (total += n)).catch(() => undefined);
  })();
  while (total < 32 << 20) await once(s, 'data');
  return {
    stop: () => {
      stopped = true;
      s.destroy();
    },
    bytes: () => total,
  };
}

async function main(): Promise<unknown> {
  switch (job.job) {
    case 'bulk': {
      const s = await connectUpstream(job.route, job.upstreamCA);
      const mbps: number[] = [];
      for (let i = 0; i < (job.runs ?? 1); i++) {
        const t = performance.now();
        const n = await get(s, `/bytes?n=${job.bytes}`);
        mbps.push(n / ((performance.now() - t) / 1000) / 1e6);
      }
      s.destroy();
      return { mbps };
    }
    case 'small': {
      const s = await connectUpstream(job.route, job.upstreamCA);
      await smallLatencies(s, 50); // warm up
      const r = lat(await smallLatencies(s, job.count!));
      s.destroy();
      return r;
    }
    case 'setup': {
      const out: number[] = [];
      const proxyTls: number[] = [];
      const connect: number[] = [];
      for (let i = 0; i < job.count!; i++) {
        const phases: Phases = { proxyTls: NaN, connect: NaN };
        const t = performance.now();
        const s = await connectUpstream(job.route, job.upstreamCA, phases);
        await get(s, '/small');
        out.push(performance.now() - t);
        proxyTls.push(phases.proxyTls);
        connect.push(phases.connect);
        s.destroy();
      }
      return job.route.kind === 'proxy' ? { ...lat(out), phases: { proxyTls: lat(proxyTls), connect: lat(connect) } } : lat(out);
    }
    case 'probe': {
      const bulk = await backgroundBulk(job.bulkRoute!);
      const s = await connectUpstream(job.route, job.upstreamCA);
      const t = performance.now();
      const before = bulk.bytes();
      const r = lat(await smallLatencies(s, job.count!));
      const bulkMBps = (bulk.bytes() - before) / ((performance.now() - t) / 1000) / 1e6;
      bulk.stop();
      s.destroy();
      return { ...r, bulkMBps };
    }
    case 'hold': {
      const clusters = job.clusters!;
      const route = job.route as Extract<Route, { kind: 'proxy' }>;
      const held: tls.TLSSocket[] = [];
      let failed = 0;
      const open = async (i: number) => {
        const cluster = clusters[i % clusters.length]!;
        const hub = tls.connect({ host: '127.0.0.1', port: route.proxyPort, servername: 'localhost', secureContext: contextFor(route.hubCA) });
        try {
          await once(hub, 'secureConnect');
          hub.write(`CONNECT ${cluster}:443 HTTP/1.1\r\nHost: ${cluster}:443\r\nProxy-Authorization: Bearer ${route.token}\r\n\r\n`);
          const [head] = (await once(hub, 'data')) as [Buffer];
          if (head.toString('latin1').startsWith('HTTP/1.1 200')) held.push(hub);
          else failed++;
        } catch {
          failed++;
        }
      };
      // A few hundred handshakes at a time.
      const total = job.count!;
      let next = 0;
      await Promise.all(Array.from({ length: 200 }, async () => {
        while (next < total) await open(next++);
      }));
      console.log(JSON.stringify({ ready: true, open: held.length, failed }));
      process.stdin.resume();
      await once(process.stdin, 'end');
      for (const s of held) s.destroy();
      return { closed: held.length };
    }
    case 'slow': {
      // Small requests for as long as the slow read will take, alone, then
      // the same beside the slow reader.
      const s = await connectUpstream(job.route, job.upstreamCA);
      const seconds = job.bytes! / job.rate!;
      const probeFor = async (until: () => boolean) => {
        const out: number[] = [];
        while (!until()) {
          out.push(...(await smallLatencies(s, 10)));
          await new Promise((r) => setTimeout(r, 50));
        }
        return out;
      };
      const t0 = performance.now();
      const alone = await probeFor(() => performance.now() - t0 > seconds * 1000);
      console.log(JSON.stringify({ phase: 'beside' }));
      const bulk = await connectUpstream(job.bulkRoute!, job.upstreamCA);
      const started = performance.now();
      let read = 0;
      // A 1 GiB source; the reader takes `bytes` of it at `rate`, pausing the
      // socket whenever it is ahead, then hangs up.
      const done = get(bulk, `/bytes?n=${1 << 30}`, (n) => {
        read += n;
        const ahead = read / job.rate! - (performance.now() - started) / 1000;
        if (ahead > 0.01) {
          bulk.pause();
          setTimeout(() => bulk.resume(), ahead * 1000);
        }
      });
      const beside = await probeFor(() => read >= job.bytes!);
      const readerMBps = read / ((performance.now() - started) / 1000) / 1e6;
      bulk.destroy();
      await done.catch(() => undefined);
      s.destroy();
      return { alone: lat(alone), beside: lat(beside), readerMBps };
    }
  }
}

runChild(main);
