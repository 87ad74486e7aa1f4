/**
 * Keep-alive over the tunnel: L7 requests of one client connection reuse the
 * tunnel streams of their caller and cluster instead of opening one each; a
 * stream carries the requests of one identity only; a kept stream that died
 * is never used again; an answer its caller reads slowly waits in the
 * tunnel (the stream's window), not at the hub. Server, agent and stand-in apiserver run in this
 * process; requests are raw HTTP/1.1 over one TLS connection to the hub.
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { KubetunnelServer } from '@kubetunnel/server';
import type { MuxStream } from '@kubetunnel/shared';
import type { StandinApiserver } from '@kubetunnel/standin-apiserver';
import { expectIdle, startL7Member, type L7Member } from './fixtures.js';

let member: L7Member;
let server: KubetunnelServer;
let api: StandinApiserver;

const TOKENS = new Map([
  ['alice-token', { user: 'alice', uid: '1', groups: ['dev'] }],
  ['bob-token', { user: 'bob', uid: '2', groups: ['ops'] }],
]);

beforeAll(async () => {
  member = await startL7Member(TOKENS);
  ({ server, api } = member);
});

/** Connections of the running test: closed after it even when it fails, so that its kept streams end with it. */
const clients = new Set<Client>();

afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
  await expectIdle(server, member.agent);
});

afterAll(async () => {
  await member.close();
});

const openStreams = () => server.registry.totals().openStreams;
const tunnel = () => [...server.registry.get('member-1')!.agents.values()][0]!;

/** One keep-alive TLS connection to the hub's proxy port that sends requests one at a time. */
class Client {
  private buf = '';
  private waiting: (() => void) | undefined;

  private constructor(readonly socket: tls.TLSSocket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      this.waiting?.();
    });
  }

  static async connect(): Promise<Client> {
    const socket = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: member.hubCA.cert, servername: 'localhost' });
    await once(socket, 'secureConnect');
    const client = new Client(socket);
    clients.add(client);
    return client;
  }

  /** GET `path` with `token` (none: ''); resolves with the status and body of the answer (Content-Length framed). */
  async get(token: string, path = '/clusters/member-1/version'): Promise<{ status: number; body: string }> {
    const credentials = token ? `Authorization: Bearer ${token}\r\n` : '';
    this.socket.write(`GET ${path} HTTP/1.1\r\nHost: hub\r\n${credentials}\r\n`);
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const head = this.buf.slice(0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1]);
        if (this.buf.length >= end + 4 + length) {
          const body = this.buf.slice(end + 4, end + 4 + length);
          this.buf = this.buf.slice(end + 4 + length);
          return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(head)![1]), body };
        }
      }
      if (this.socket.destroyed) throw new Error('connection closed');
      await new Promise<void>((resolve) => (this.waiting = resolve));
    }
  }

  async close(): Promise<void> {
    this.socket.destroy();
    if (!this.socket.closed) await once(this.socket, 'close');
  }
}

/** Counts the OPENs the hub sends on the tunnel of member-1 while `body` runs, and keeps the streams they opened. */
async function countingOpens<T>(body: (streams: MuxStream[]) => Promise<T>): Promise<{ opens: number; result: T }> {
  const session = tunnel().session;
  const open = session.open;
  const streams: MuxStream[] = [];
  let opens = 0;
  session.open = async (...args: Parameters<typeof open>) => {
    opens += 1;
    const stream = await open.apply(session, args);
    streams.push(stream);
    return stream;
  };
  try {
    const result = await body(streams);
    return { opens, result };
  } finally {
    session.open = open;
  }
}

type WriteCb = (err?: Error | null) => void;

/** Makes `stream`'s next write fail before anything of it goes into the tunnel (as on a stream that died while idle). */
function failNextWrite(stream: MuxStream): void {
  const fail = (cb: WriteCb) => cb(new Error('injected: this stream is gone'));
  Object.assign(stream, { _write: (_c: Buffer, _e: BufferEncoding, cb: WriteCb) => fail(cb), _writev: (_c: unknown, cb: WriteCb) => fail(cb) });
}

/** Makes `stream` fail right after its next write went into the tunnel (the request was sent, no answer came). */
function failAfterNextWrite(stream: MuxStream): void {
  const write = stream._write.bind(stream);
  const writev = stream._writev.bind(stream);
  const thenFail = (cb: WriteCb) => (err?: Error | null) => {
    cb(err);
    stream.destroy(new Error('injected: the tunnel lost this stream'));
  };
  Object.assign(stream, {
    _write: (c: Buffer, e: BufferEncoding, cb: WriteCb) => write(c, e, thenFail(cb)),
    _writev: (c: Array<{ chunk: Buffer }>, cb: WriteCb) => writev(c, thenFail(cb)),
  });
}

/** The user the stand-in acted for in its last request. */
const lastEffectiveUser = () => api.requests[api.requests.length - 1]!.effectiveUser;

describe('L7 keep-alive over the tunnel', () => {
  it('one connection: one stream per identity, reused; never one identity on another identity\'s stream', async () => {
    const client = await Client.connect();
    const { opens } = await countingOpens(async () => {
      for (let i = 0; i < 6; i++) {
        const who = i % 2 === 0 ? 'alice' : 'bob';
        const r = await client.get(`${who}-token`);
        expect(r.status).toBe(200);
        expect(JSON.parse(r.body).cluster).toBe('member-1');
        expect(lastEffectiveUser()).toBe(who);
      }
    });
    // One stream each for alice and bob, both kept open while the connection lives.
    expect(opens).toBe(2);
    expect(openStreams()).toBe(2);
    await client.close();
    // The client went: its streams close with it.
    await expectIdle(server, member.agent);
  });
});

describe('the caller of each request', () => {
  it('is the one its own credentials name, whatever an earlier request on the connection or another connection carried', async () => {
    const first = await Client.connect();
    const other = await Client.connect();
    const sequence: Array<[Client, string, number, string?]> = [
      [first, 'alice-token', 200, 'alice'],
      [first, 'alice-token', 200, 'alice'],
      [first, 'not-a-token', 401],
      [other, 'not-a-token', 401],
      [first, 'alice-token', 200, 'alice'],
      [other, 'bob-token', 200, 'bob'],
      [first, 'bob-token', 200, 'bob'],
      [first, '', 401],
      [other, 'bob-token', 200, 'bob'],
    ];
    for (const [client, token, status, user] of sequence) {
      const r = await client.get(token);
      expect(r.status, `${token || 'no token'}`).toBe(status);
      if (user) expect(lastEffectiveUser()).toBe(user);
    }
  });
});

/** Resolves once `condition` holds, checked every few ms; fails after 10 s. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('an answer the caller reads slower than it comes', () => {
  it('waits in the tunnel, not at the hub, and then arrives whole', async () => {
    const size = 32 * 2 ** 20;
    const socket = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: member.hubCA.cert, servername: 'localhost' });
    await once(socket, 'secureConnect');
    await countingOpens(async (streams) => {
      const first = new Promise<Buffer>((resolve) =>
        socket.once('data', (d: Buffer) => {
          socket.pause();
          resolve(d);
        }),
      );
      socket.write(`GET /clusters/member-1/standin/bytes/${size} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer alice-token\r\n\r\n`);
      const head = await first;
      expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
      const stream = streams[0]!;
      // The caller reads nothing more: the hub stops taking the answer off its stream, and the agent uses up the stream's window.
      await until(() => stream.recvCredit === 0, 'the stream window used up');
      expect(stream.readableLength).toBeLessThanOrEqual(stream.window);
      // What left the stand-in by then: the window, and what the sockets between hub and caller hold; far from the whole answer.
      expect(stream.bytesIn).toBeLessThan(size / 2);
      // The caller reads on: every byte arrives, in order (byte i is i mod 251).
      const bodyStart = head.indexOf('\r\n\r\n') + 4;
      let at = 0;
      let wrong = 0;
      const take = (chunk: Buffer) => {
        for (const byte of chunk) if (byte !== at++ % 251) wrong += 1;
      };
      take(head.subarray(bodyStart));
      const all = new Promise<void>((resolve) => {
        socket.on('data', (d: Buffer) => {
          take(d);
          if (at >= size) resolve();
        });
      });
      socket.resume();
      if (at < size) await all;
      expect(at).toBe(size);
      expect(wrong).toBe(0);
    }).finally(async () => {
      socket.destroy();
      if (!socket.closed) await once(socket, 'close');
    });
  });
});

describe('a kept stream that died is never used again', () => {
  it('failed before the request was sent: the request goes on a fresh stream', async () => {
    const client = await Client.connect();
    const { opens } = await countingOpens(async (streams) => {
      expect((await client.get('alice-token')).status).toBe(200);
      expect(streams).toHaveLength(1);
      failNextWrite(streams[0]!);
      const r = await client.get('alice-token');
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body).cluster).toBe('member-1');
      expect(lastEffectiveUser()).toBe('alice');
      expect(streams[0]!.destroyed).toBe(true);
    });
    expect(opens).toBe(2);
    await client.close();
  });

  it('failed after the request was sent: 502, not sent again', async () => {
    const client = await Client.connect();
    const { opens } = await countingOpens(async (streams) => {
      expect((await client.get('alice-token')).status).toBe(200);
      failAfterNextWrite(streams[0]!);
      const r = await client.get('alice-token');
      expect(r.status).toBe(502);
      expect(JSON.parse(r.body)).toMatchObject({ kind: 'Status', code: 502 });
      // The connection serves on, on a fresh stream.
      expect((await client.get('alice-token')).status).toBe(200);
    });
    expect(opens).toBe(2);
    await client.close();
  });

  // Last: the agent goes away for good.
  it('its tunnel is draining (GOAWAY): no request goes on it any more', async () => {
    const client = await Client.connect();
    expect((await client.get('alice-token')).status).toBe(200);
    expect(openStreams()).toBe(1);
    const session = tunnel().session;
    const goaway = once(session, 'goaway');
    const drained = member.agent.drain(30_000);
    await goaway;
    const served = api.requests.length;
    const r = await client.get('alice-token');
    // No live agent takes new streams: refused at the hub, the draining agent sent nothing on.
    expect(r.status).toBe(503);
    expect(api.requests.length).toBe(served);
    // The kept stream was closed, so the agent's drain ends now, not at its grace period.
    await drained;
    await client.close();
  });
});
