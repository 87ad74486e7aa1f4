/**
 * A malicious agent against a real `kubetunnel server` process. The agent is
 * written here from the protocol's description (docs: a 10-byte header —
 * type u8, flags u8, stream id u32 BE, length u32 BE — then the payload; one
 * or more whole frames per binary WebSocket message), with its own encoder,
 * over a raw `ws` client holding a valid agent certificate for its own
 * cluster. It floods, stops reading, and sends random frames; meanwhile a
 * normal agent serves another cluster, and requests to it must all succeed.
 *
 * For each case: the server disconnects the agent within FLOOD_BOUND_MS, its
 * RSS (VmRSS of the process) grows by at most 64 MiB, no request to the other
 * cluster fails.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { type Member, type ServerProc, cli, expectIdle, startMember, startServerProc, stopMembers, tmpDir } from './harness.js';

const FLOOD_BOUND_MS = 10_000;
const RSS_BUDGET = 64 * 1024 * 1024;
const MEMBER_TOKEN = 'member-token';

// ------------------------------------------------------------ the protocol, from its description

const T = { OPEN: 1, OPEN_OK: 2, OPEN_ERR: 3, DATA: 4, WINDOW: 5, FIN: 6, RESET: 7, PING: 8, PONG: 9, GOAWAY: 10 } as const;

function frame(type: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(10 + payload.length);
  b[0] = type;
  b.writeUInt32BE(streamId, 2);
  b.writeUInt32BE(payload.length, 6);
  payload.copy(b, 10);
  return b;
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const u64 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
};
const ping = (n: bigint) => frame(T.PING, 0, u64(n));
const openOk = (id: number, window: number) => frame(T.OPEN_OK, id, u32(window));
const windowUpdate = (id: number, inc: number) => frame(T.WINDOW, id, u32(inc));
const open = (id: number) => frame(T.OPEN, id, Buffer.concat([u32(65536), Buffer.from('{"kind":"tcp","target":"apiserver"}')]));

/** Frames parsed from a buffer of whole frames (what the server sends us). */
function parse(buf: Buffer): Array<{ type: number; streamId: number; payload: Buffer }> {
  const out = [];
  for (let off = 0; off + 10 <= buf.length; ) {
    const len = buf.readUInt32BE(off + 6);
    out.push({ type: buf[off]!, streamId: buf.readUInt32BE(off + 2), payload: buf.subarray(off + 10, off + 10 + len) });
    off += 10 + len;
  }
  return out;
}

/** Repeats `unit` into one message of at most `max` bytes. */
function fill(unit: Buffer, max = 1000 * 1024): Buffer {
  return Buffer.concat(Array.from({ length: Math.floor(max / unit.length) }, () => unit));
}

// ------------------------------------------------------------ processes

let dir: string;
let certDir: string;
let server: ServerProc;
let hubCA: string;
const members = new Map<string, Member>();
let agentCert: { cert: string; key: string };

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'evil');
  agentCert = {
    cert: fs.readFileSync(path.join(certDir, 'agent-evil.crt'), 'utf8'),
    key: fs.readFileSync(path.join(certDir, 'agent-evil.key'), 'utf8'),
  };
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'good-token,alice,1,"developers"\n');
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  members.set('member-1', await startMember({ dir, certDir, server, name: 'member-1', tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: ['developers'] } } }));
});

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => expectIdle(server.adminUrl));

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

/**
 * Samples the server's RSS until stopped; `over` resolves once it has grown
 * past the budget (a flood that is not cut off stops there, not at the
 * machine's limit).
 */
function watchRss(): { over: Promise<void>; stop: () => { base: number; peak: number } } {
  const pid = server.proc.child.pid!;
  const base = rss(pid);
  let peak = base;
  let exceeded: () => void = () => {};
  const over = new Promise<void>((resolve) => (exceeded = resolve));
  const t = setInterval(() => {
    peak = Math.max(peak, rss(pid));
    if (peak - base > RSS_BUDGET) exceeded();
  }, 20);
  return {
    over,
    stop: () => {
      clearInterval(t);
      peak = Math.max(peak, rss(pid));
      return { base, peak };
    },
  };
}

/** CONNECT to a cluster through the frontend; resolves with the raw tunnel socket. */
async function connectTo(cluster: string): Promise<import('node:net').Socket> {
  const req = https.request({
    host: '127.0.0.1',
    port: server.proxy,
    method: 'CONNECT',
    path: `${cluster}:443`,
    ca: hubCA,
    servername: 'localhost',
    agent: false,
    headers: { Host: `${cluster}:443`, 'Proxy-Authorization': 'Bearer good-token' },
  });
  req.end();
  const [res, socket] = (await once(req, 'connect')) as [import('node:http').IncomingMessage, import('node:net').Socket];
  if (res.statusCode !== 200) {
    socket.destroy();
    throw new Error(`CONNECT ${cluster}: ${res.statusCode}`);
  }
  return socket;
}

/** GET /version on member-1 through the tunnel (TLS end to end); resolves with the status. */
async function memberRequest(): Promise<number> {
  const raw = await connectTo('member-1');
  const s = tls.connect({ socket: raw, ca: fs.readFileSync(members.get('member-1')!.caFile, 'utf8'), servername: 'kubernetes.default.svc' });
  try {
    await once(s, 'secureConnect');
    let data = '';
    s.setEncoding('utf8').on('data', (c: string) => (data += c));
    const ended = once(s, 'end');
    s.write(`GET /version HTTP/1.1\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer ${MEMBER_TOKEN}\r\nConnection: close\r\n\r\n`);
    await ended;
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0);
  } finally {
    s.destroy();
    raw.destroy();
  }
}

/** Requests to member-1 in a loop until stopped; counts successes and failures. */
function trafficToOtherCluster(): { stop: () => Promise<{ ok: number; failed: string[] }> } {
  let running = true;
  const result = { ok: 0, failed: [] as string[] };
  const loop = (async () => {
    while (running) {
      try {
        const status = await memberRequest();
        if (status === 200) result.ok++;
        else result.failed.push(`status ${status}`);
      } catch (err) {
        result.failed.push((err as Error).message);
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return result;
    },
  };
}

let agentSeq = 0;

interface Hostile {
  ws: WebSocket;
  agentId: string;
  received: Buffer[];
  /** Stops reading the socket: the server's frames pile up on its side. */
  stopReading(): void;
  /** Sends without growing this process's buffer past a few MiB. */
  send(message: Buffer): Promise<boolean>;
  /** The server's log line for this agent's disconnection. */
  disconnected: Promise<{ reason?: unknown; err?: unknown }>;
}

async function hostileAgent(): Promise<Hostile> {
  const agentId = `evil-${++agentSeq}`;
  const ws = new WebSocket(`wss://localhost:${server.agent}/connect`, 'kubetunnel.v1', {
    ca: hubCA,
    cert: agentCert.cert,
    key: agentCert.key,
    perMessageDeflate: false,
    headers: { 'x-kubetunnel-cluster': 'evil', 'x-kubetunnel-agent-id': agentId },
  });
  ws.on('error', () => {});
  const received: Buffer[] = [];
  ws.on('message', (m: Buffer) => received.push(m));
  const registered = server.proc.waitFor((l) => l.msg === 'agent registered' && l.agentId === agentId, `registration of ${agentId}`);
  await once(ws, 'open');
  await registered;
  const disconnected = server.proc.waitFor((l) => l.msg === 'agent disconnected' && l.agentId === agentId, `disconnection of ${agentId}`);
  return {
    ws,
    agentId,
    received,
    stopReading: () => (ws as unknown as { _socket: import('node:net').Socket })._socket.pause(),
    async send(message) {
      while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount > 4 << 20) await new Promise((r) => setTimeout(r, 5));
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(message);
      return true;
    },
    disconnected: disconnected as Promise<{ reason?: unknown; err?: unknown }>,
  };
}

/** Waits for the OPEN the server sends when a client CONNECTs to the hostile cluster. */
async function nextOpen(h: Hostile): Promise<number> {
  for (;;) {
    for (const m of h.received.splice(0)) for (const f of parse(m)) if (f.type === T.OPEN) return f.streamId;
    await once(h.ws, 'message');
  }
}

const figures: Record<string, string> = {};

/**
 * Runs one flood: `flood` sends until the server disconnects the agent.
 * Asserts the bound on time, RSS and the other cluster's traffic.
 */
async function underFlood(name: string, h: Hostile, flood: () => Promise<void>, reasons: string[]): Promise<void> {
  const traffic = trafficToOtherCluster();
  const mem = watchRss();
  const started = performance.now();
  let flooding = true;
  const floodDone = (async () => {
    while (flooding && h.ws.readyState === WebSocket.OPEN) {
      await flood();
      // A turn of the event loop each time: the requests to the other cluster run in this process too.
      await new Promise((r) => setImmediate(r));
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const line = await Promise.race([
    h.disconnected,
    mem.over.then(() => undefined),
    new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), FLOOD_BOUND_MS + 5000))),
  ]);
  clearTimeout(timer);
  const elapsed = performance.now() - started;
  flooding = false;
  await floodDone;
  h.ws.terminate();
  const { base, peak } = mem.stop();
  const { ok, failed } = await traffic.stop();
  figures[name] = `disconnected in ${Math.round(elapsed)} ms (${String(line?.reason)}: ${String(line?.err)}), RSS ${(base / 2 ** 20).toFixed(0)} -> peak ${(peak / 2 ** 20).toFixed(0)} MiB (+${((peak - base) / 2 ** 20).toFixed(1)}), other cluster ${ok} ok / ${failed.length} failed`;
  expect(peak - base).toBeLessThan(RSS_BUDGET);
  expect(line, `${name}: not disconnected`).toBeDefined();
  expect(elapsed).toBeLessThan(FLOOD_BOUND_MS);
  expect(reasons).toContain(line!.reason);
  expect(failed).toEqual([]);
  expect(ok).toBeGreaterThan(0);
  expect(server.proc.child.exitCode).toBeNull();
}

describe('a malicious agent', () => {
  afterAll(() => {
    // The figures for the closing note (vitest prints console output of the file).
    console.log(`hostile agent figures:\n${Object.entries(figures).map(([k, v]) => `  ${k}: ${v}`).join('\n')}`);
  });

  it('a PING flood from an agent that never reads is cut off (PING_FLOOD)', async () => {
    const h = await hostileAgent();
    h.stopReading();
    let n = 0n;
    const unit = ping(0n);
    await underFlood('PING flood, socket not read', h, async () => {
      const msg = fill(unit);
      for (let off = 0; off < msg.length; off += unit.length) msg.writeBigUInt64BE(n++, off + 10);
      await h.send(msg);
    }, ['PING_FLOOD']);
  });

  it('an OPEN flood (agents may not open streams) from an agent that never reads is cut off', async () => {
    const h = await hostileAgent();
    h.stopReading();
    let id = 2;
    await underFlood('OPEN flood, socket not read', h, async () => {
      const parts: Buffer[] = [];
      for (let size = 0; size < 1000 * 1024; ) {
        const f = open(id);
        id += 2;
        parts.push(f);
        size += f.length;
      }
      await h.send(Buffer.concat(parts));
    }, ['CONTROL_QUEUE_FULL', 'PEER_NOT_READING']);
  });

  it('a WINDOW flood on a stream the server opened is cut off (window overflow, then frames for the ended stream)', async () => {
    const h = await hostileAgent();
    const client = connectTo('evil').catch(() => undefined);
    const id = await nextOpen(h);
    await h.send(openOk(id, 65536));
    const unit = windowUpdate(id, 0x7fffffff);
    await underFlood('WINDOW flood', h, async () => void (await h.send(fill(unit))), ['PROTOCOL_ERROR']);
    (await client)?.destroy();
  });

  it('DATA for a stream past its window and after it ended is cut off', async () => {
    const h = await hostileAgent();
    const client = connectTo('evil').catch(() => undefined);
    const id = await nextOpen(h);
    await h.send(openOk(id, 65536));
    const unit = frame(T.DATA, id, Buffer.alloc(32 * 1024, 0x78));
    await underFlood('DATA-for-ended-stream flood', h, async () => void (await h.send(fill(unit))), ['PROTOCOL_ERROR']);
    (await client)?.destroy();
  });

  it('an agent that stops reading while the server has data for it is cut off (PEER_NOT_READING)', async () => {
    const h = await hostileAgent();
    const clientP = connectTo('evil');
    const id = await nextOpen(h);
    await h.send(openOk(id, 0x7fffffff));
    const client = await clientP;
    client.on('error', () => {});
    h.stopReading();
    const block = Buffer.alloc(1 << 20, 0x79);
    await underFlood('socket never read, server sending', h, async () => {
      if (!client.destroyed && client.write(block)) return;
      // Until the socket drains or closes, or a moment passes (the loop then checks whether to go on).
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          client.off('drain', done);
          client.off('close', done);
          resolve();
        };
        const t = setTimeout(done, 100);
        client.once('drain', done);
        client.once('close', done);
      });
    }, ['PEER_NOT_READING', 'CONTROL_QUEUE_FULL']);
    client.destroy();
  });

  // ws answers WebSocket pings itself and cuts off a peer with too many pongs pending (maxPendingAutoPongs).
  it('a WebSocket-level ping flood from an agent that never reads is cut off (the pongs would pile up)', async () => {
    const h = await hostileAgent();
    h.stopReading();
    const payload = Buffer.alloc(125, 0x70);
    await underFlood('WebSocket ping flood, socket not read', h, async () => {
      for (let i = 0; i < 2000 && h.ws.readyState === WebSocket.OPEN; i++) h.ws.ping(payload);
      while (h.ws.readyState === WebSocket.OPEN && h.ws.bufferedAmount > 4 << 20) await new Promise((r) => setTimeout(r, 5));
    }, ['SESSION_CLOSED', 'PEER_NOT_READING']);
  });

  it('each disconnection is counted by reason in the server metrics', async () => {
    // Runs after the floods above (vitest runs a file's tests in order).
    const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
    const count = (reason: string) =>
      Number(new RegExp(`^kubetunnel_agent_disconnects_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    expect(count('PING_FLOOD')).toBe(1);
    expect(count('PROTOCOL_ERROR')).toBe(2);
    // The OPEN flood ends with either (see its test); the stalled socket with PEER_NOT_READING.
    expect(count('CONTROL_QUEUE_FULL') + count('PEER_NOT_READING')).toBe(2);
  });

  it('random frames: the server either disconnects the agent or still answers its PING', async () => {
    const arbFrame = fc.oneof(
      // Frame-shaped: any type, small stream ids, random payload.
      fc
        .record({ type: fc.integer({ min: 0, max: 12 }), id: fc.integer({ min: 0, max: 6 }), payload: fc.uint8Array({ maxLength: 64 }) })
        .map(({ type, id, payload }) => frame(type, id, Buffer.from(payload))),
      // Well-formed frames of each kind.
      fc.integer({ min: 0, max: 6 }).map((id) => windowUpdate(id, 1)),
      fc.integer({ min: 1, max: 6 }).map((id) => openOk(id, 1024)),
      fc.integer({ min: 1, max: 6 }).map((id) => frame(T.FIN, id)),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((n) => frame(T.PONG, 0, u64(n))),
      // Arbitrary bytes.
      fc.uint8Array({ minLength: 1, maxLength: 40 }).map((u) => Buffer.from(u)),
    );
    const mem = watchRss();
    const traffic = trafficToOtherCluster();
    let runs = 0;
    let cut = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(arbFrame, { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 4 }), async (messages) => {
        runs++;
        const h = await hostileAgent();
        for (const m of messages) await h.send(Buffer.concat(m));
        const nonce = 0x1234_5678_9abc_def0n;
        await h.send(ping(nonce));
        const answered = (async () => {
          for (;;) {
            for (const m of h.received.splice(0)) for (const f of parse(m)) if (f.type === T.PONG && f.payload.readBigUInt64BE(0) === nonce) return 'pong';
            await once(h.ws, 'message');
          }
        })();
        const closed = once(h.ws, 'close').then(() => 'closed');
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<string>((r) => (timer = setTimeout(() => r('timeout'), FLOOD_BOUND_MS)));
        const outcome = await Promise.race([answered.catch(() => 'closed'), closed, timeout]);
        clearTimeout(timer);
        if (outcome === 'closed') cut++;
        h.ws.terminate();
        await h.disconnected;
        expect(outcome).not.toBe('timeout');
      }),
      { numRuns: 40 },
    );
    const { base, peak } = mem.stop();
    const { ok, failed } = await traffic.stop();
    figures['random frames'] = `${runs} agents, ${cut} disconnected by the server, the rest answered PING; RSS +${((peak - base) / 2 ** 20).toFixed(1)} MiB; other cluster ${ok} ok / ${failed.length} failed`;
    expect(peak - base).toBeLessThan(RSS_BUDGET);
    expect(failed).toEqual([]);
    expect(server.proc.child.exitCode).toBeNull();
  });
});
