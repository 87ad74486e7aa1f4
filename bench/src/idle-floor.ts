/**
 * The floor under an idle server's PING cost: a bare Node TLS server (no
 * kubetunnel code) holding many mutually authenticated connections, writing
 * one 16-byte message a connection at a steady rate and reading each one's
 * echo, as an idle kubetunnel server PINGs its tunnels and reads the PONGs.
 * Reports its CPU per exchange, with the writes made one per wake-up and
 * made in batches (as the PING clock does, packages/shared/src/mux/ping-clock.ts).
 *
 *   node bench/dist/idle-floor.js [--connections N] [--rate PER_SECOND] [--seconds S]
 *
 * Writes bench/results/idle-floor.json. The echoing peer is another process
 * (this file with `peer` first).
 */
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { makeCerts, ROOT } from './parties.js';
import { loadavg, machine, progress, start, stopAll, stopOnSignals, wholeNumberOption } from './procs.js';

const argv = process.argv.slice(2);

/** The peer: `peer PORT CERT_DIR N` dials N connections and echoes what each receives. */
async function peer(): Promise<void> {
  const [port, dir, n] = [Number(argv[1]), argv[2]!, Number(argv[3])];
  const read = (f: string) => fs.readFileSync(path.join(dir, f));
  const secureContext = tls.createSecureContext({ cert: read('agent-floor.crt'), key: read('agent-floor.key'), ca: read('ca.crt') });
  let dialed = 0;
  const dialNext = (): void => {
    if (dialed++ >= n) return;
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', secureContext }, dialNext);
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('error', () => {});
  };
  // A few handshakes at a time: the server's CPU is measured after they are all done.
  for (let i = 0; i < 16; i++) dialNext();
  await once(process.stdin, 'end');
  process.exit(0);
}

interface Run {
  /** Writes per wake-up of the writer's timer. */
  batch: number;
  tickMs: number;
  serverCpuUsPerExchange: number;
}

async function main(): Promise<void> {
  const connections = wholeNumberOption(argv, 'connections') ?? 2000;
  const rate = wholeNumberOption(argv, 'rate') ?? 1000;
  const seconds = wholeNumberOption(argv, 'seconds') ?? 10;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-floor-'));
  stopOnSignals(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const pki = await makeCerts(tmp, ['floor']);
  const sockets: tls.TLSSocket[] = [];
  let allIn: () => void;
  const connected = new Promise<void>((r) => (allIn = r));
  const server = tls.createServer(
    { cert: fs.readFileSync(pki.file('server.crt')), key: fs.readFileSync(pki.file('server.key')), ca: fs.readFileSync(pki.file('client-ca.crt')), requestCert: true, rejectUnauthorized: true },
    (s) => {
      s.setNoDelay(true);
      s.on('data', () => {});
      s.on('error', () => {});
      if (sockets.push(s) === connections) allIn();
    },
  );
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const peerProc = start(fileURLToPath(import.meta.url), ['peer', String(port), tmp, String(connections)], { stdin: true });
  progress(`${connections} TLS connections, ${rate} exchanges a second, ${seconds} s a run; load ${loadavg()}`);
  await connected;
  const message = Buffer.alloc(16, 1);
  const runs: Run[] = [];
  for (const tickMs of [1, 100]) {
    const batch = (rate * tickMs) / 1000;
    let next = 0;
    // Writes owed so far: a rate that is not a whole number per tick still comes out right.
    let owed = 0;
    const timer = setInterval(() => {
      for (owed += batch; owed >= 1; owed--) sockets[next++ % connections]!.write(message);
    }, tickMs);
    await new Promise((r) => setTimeout(r, 1000)); // settle
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const cpu = process.cpuUsage(cpu0);
    const exchanges = (rate * (performance.now() - t0)) / 1000;
    clearInterval(timer);
    const run = { batch, tickMs, serverCpuUsPerExchange: Math.round(((cpu.user + cpu.system) / exchanges) * 10) / 10 };
    progress(`  ${batch} write(s) every ${tickMs} ms: ${run.serverCpuUsPerExchange} µs of server CPU per exchange`);
    runs.push(run);
  }
  peerProc.stdin!.end();
  for (const s of sockets) s.destroy();
  server.close();
  await stopAll();
  fs.rmSync(tmp, { recursive: true, force: true });
  const result = {
    date: new Date().toISOString(),
    machine: machine(),
    loadavg: loadavg(),
    connections,
    exchangesPerSecond: rate,
    runs,
  };
  const out = path.join(ROOT, 'bench/results/idle-floor.json');
  fs.writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  progress(`wrote ${path.relative(ROOT, out)}`);
}

if (argv[0] === 'peer') void peer();
else
  main().catch((err: unknown) => {
    progress(`idle floor failed: ${String(err)}`);
    void stopAll().then(() => process.exit(1));
  });
