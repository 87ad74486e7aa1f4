/**
 * The Konnectivity ProxyService frontend, packet by packet: the sequences a
 * Go konnectivity-client sends (dial, data, close; a dial given up with
 * DIAL_CLS; dials that are refused), replayed with grpc-js as the client,
 * against a server and real agents in this process.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Agent } from '@kubetunnel/agent';
import { ProxyServiceClient, packets, startServer, type KubetunnelServer, type Packet } from '@kubetunnel/server';
import { createCA, issueAgentCert, issueClientCert, issueServerCert, silentLogger, type IncomingOpen, type Session } from '@kubetunnel/shared';
import { expectIdle, startRegisteredAgent, testAgentConfig, testServerConfig } from './fixtures.js';
import { expectNoLeaks, liveResources, memoryPair } from '../packages/shared/test/helpers.js';

const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
const alice = issueClientCert(ca, { user: 'alice', groups: ['dev'] });
const tokens = new Map([['bob-token', { user: 'bob', uid: '2', groups: [] }]]);
// A 63-bit id, as a Go client's rand.Int63() gives: it must come back exactly.
const RANDOM = '8674665223082153551';
const agentPems = Object.fromEntries(['member-1', 'member-2', 'member-3'].map((c) => [c, issueAgentCert(ca, { cluster: c })]));

/** A TCP echo server. */
async function echoServer(): Promise<{ port: number; hangUp(): void; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.pipe(s);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return {
    port: (srv.address() as net.AddressInfo).port,
    hangUp: () => {
      for (const s of sockets) s.end();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      srv.close();
      await once(srv, 'close');
    },
  };
}

/** One Proxy call whose received packets and final status can be awaited in order. */
class Call {
  readonly received: Packet[] = [];
  readonly status: Promise<grpc.StatusObject>;
  private waiters: Array<() => void> = [];
  constructor(readonly stream: grpc.ClientDuplexStream<Packet, Packet>) {
    stream.on('data', (p: Packet) => {
      this.received.push(p);
      for (const w of this.waiters.splice(0)) w();
    });
    stream.on('error', () => {}); // the status says it
    this.status = new Promise((resolve) => stream.on('status', resolve));
    void this.status.then(() => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  send(p: Packet): void {
    this.stream.write(p);
  }

  /** The n-th packet received (0-based), once it has arrived; undefined if the call ended first. */
  async packet(n: number): Promise<Packet | undefined> {
    let ended = false;
    void this.status.then(() => (ended = true));
    while (this.received.length <= n && !ended) await new Promise<void>((r) => this.waiters.push(r));
    return this.received[n];
  }
}

let server: KubetunnelServer;
let echo: Awaited<ReturnType<typeof echoServer>>;
let agents: Agent[] = [];
let before: Record<string, number>;
let clients: grpc.Client[] = [];
let dir: string;

const tlsClient = (creds: { cert?: string; key?: string } = alice): grpc.Client => {
  const c = new ProxyServiceClient(
    `127.0.0.1:${server.addresses.grpc!.port}`,
    grpc.credentials.createSsl(Buffer.from(ca.cert), creds.key ? Buffer.from(creds.key) : null, creds.cert ? Buffer.from(creds.cert) : null),
    { 'grpc.ssl_target_name_override': 'localhost' },
  );
  clients.push(c);
  return c;
};
const open = (client: grpc.Client, md: Record<string, string> = {}): Call => {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return new Call((client as unknown as { Proxy(md: grpc.Metadata): grpc.ClientDuplexStream<Packet, Packet> }).Proxy(metadata));
};

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kubetunnel-grpc-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

beforeEach(async () => {
  before = liveResources();
  echo = await echoServer();
  server = await startServer(
    {
      ...testServerConfig(ca, serverPem, tokens),
      // Long enough that only DIAL_CLS (not the timeout) ends a held dial within a test's time.
      dialTimeoutMs: 60_000,
      grpcPort: 0,
      grpcUds: path.join(dir, 'konnectivity.sock'),
      grpcUdsIdentity: { user: 'kube-apiserver', groups: [] },
      policy: [
        // "nowhere" is allowed but not registered: a caller learns a name is unknown only if it may reach it.
        { users: ['alice', 'bob', 'kube-apiserver'], groups: [], clusters: ['member-1', 'member-2', 'slow', 'nowhere'] },
      ],
    },
    silentLogger(),
  );
  for (const cluster of ['member-1', 'member-2', 'member-3'])
    agents.push(
      await startRegisteredAgent(
        server,
        testAgentConfig(server, ca, agentPems[cluster]!, cluster, `https://127.0.0.1:${echo.port}`, { agentId: `a-${cluster}` }),
      ),
    );
  // member-2 stays known with no live agent.
  const [m2] = agents.splice(1, 1);
  await m2!.close();
  while ((server.registry.get('member-2')?.agents.size ?? 0) > 0) await once(server.registry, 'change');
});

afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  await expectIdle(server);
  for (const a of agents) await a.close();
  agents = [];
  await server.close();
  await echo.close();
  await expectNoLeaks(before);
});

describe('ProxyService, packet by packet', () => {
  it('dial, data both ways, close: DIAL_RSP with the random and a connectID, DATA echoed, CLOSE_RSP, status OK', async () => {
    const call = open(tlsClient());
    call.send(packets.dialReq('member-1:443', RANDOM));
    const rsp = await call.packet(0);
    expect(rsp).toMatchObject({ type: 'DIAL_RSP', dialResponse: { random: RANDOM, error: '' } });
    const id = rsp!.dialResponse!.connectID;
    expect(id).not.toBe('0');
    call.send(packets.data(id, Buffer.from('ping')));
    const data = await call.packet(1);
    expect(data).toMatchObject({ type: 'DATA', data: { connectID: id } });
    expect(data!.data!.data.toString()).toBe('ping');
    expect(server.registry.totals().openStreams).toBe(1);
    call.send(packets.closeReq(id));
    expect(await call.packet(2)).toMatchObject({ type: 'CLOSE_RSP', closeResponse: { connectID: id, error: '' } });
    expect((await call.status).code).toBe(grpc.status.OK);
    expect(call.received).toHaveLength(3);
  });

  it('DIAL_CLS before the answer: the dial is abandoned at the agent, no DIAL_RSP comes, the call ends OK', async () => {
    // A tunnel whose agent side holds every OPEN unanswered.
    const pair = memoryPair();
    const held: IncomingOpen[] = [];
    // The pair's sessions are built from the shared sources, the server from its build: the same class, two declarations.
    pair.agent.on('open', (o) => held.push(o as unknown as IncomingOpen));
    server.registry.register({
      cluster: 'slow',
      agentId: 'held',
      sessionId: 's',
      session: pair.server as unknown as Session,
      allowDest: new Set(),
      l7: false,
      connectedAt: new Date(),
      log: silentLogger(),
    });
    try {
      const call = open(tlsClient());
      call.send(packets.dialReq('slow:443', RANDOM));
      while (held.length === 0) await new Promise((r) => setTimeout(r, 5));
      expect(server.registry.totals().pendingDials).toBe(1);
      call.send(packets.dialCls(RANDOM));
      const status = await call.status;
      expect(status.code).toBe(grpc.status.OK);
      expect(call.received).toEqual([]);
      expect(held[0]!.signal.aborted).toBe(true);
      expect(server.registry.totals().pendingDials).toBe(0);
    } finally {
      await pair.close();
    }
  });

  const refusals: Array<[string, string, grpc.status, RegExp]> = [
    ['an unknown cluster', 'nowhere:443', grpc.status.NOT_FOUND, /^unknown cluster "nowhere"$/],
    ['a cluster the policy forbids', 'member-3:443', grpc.status.PERMISSION_DENIED, /member-3/],
    ['a cluster with no live agent', 'member-2:443', grpc.status.UNAVAILABLE, /^cluster "member-2" has no live agent$/],
    ['a malformed address', 'member-1', grpc.status.INVALID_ARGUMENT, /^malformed dial address "member-1"$/],
  ];
  for (const [what, address, code, text] of refusals) {
    it(`a dial to ${what}: one DIAL_RSP with the random and the reason, then status ${grpc.status[code]}`, async () => {
      const call = open(tlsClient());
      call.send(packets.dialReq(address, RANDOM));
      const rsp = await call.packet(0);
      expect(rsp).toMatchObject({ type: 'DIAL_RSP', dialResponse: { random: RANDOM, connectID: '0' } });
      expect(rsp!.dialResponse!.error).toMatch(text);
      expect(rsp!.dialResponse!.error).not.toContain('\n');
      const status = await call.status;
      expect(status.code).toBe(code);
      expect(status.details).toBe(rsp!.dialResponse!.error);
      expect(call.received).toHaveLength(1);
    });
  }

  it('authentication: no certificate and no token is refused UNAUTHENTICATED; a bearer token in metadata is accepted', async () => {
    const anon = open(tlsClient({}));
    anon.send(packets.dialReq('member-1:443', RANDOM));
    expect((await anon.packet(0))!.dialResponse!.error).toBe('no client certificate or token');
    expect((await anon.status).code).toBe(grpc.status.UNAUTHENTICATED);

    const bad = open(tlsClient({}), { authorization: 'Bearer wrong' });
    bad.send(packets.dialReq('member-1:443', RANDOM));
    expect((await bad.packet(0))!.dialResponse!.error).toBe('invalid token');
    expect((await bad.status).code).toBe(grpc.status.UNAUTHENTICATED);

    const bob = open(tlsClient({}), { authorization: 'Bearer bob-token' });
    bob.send(packets.dialReq('member-1:443', RANDOM));
    const rsp = await bob.packet(0);
    expect(rsp!.dialResponse!.error).toBe('');
    bob.send(packets.closeReq(rsp!.dialResponse!.connectID));
    expect((await bob.status).code).toBe(grpc.status.OK);
  });

  it('x-cluster-name metadata names the cluster whatever the address; the Unix socket caller is its configured identity', async () => {
    const call = open(tlsClient(), { 'x-cluster-name': 'member-1' });
    call.send(packets.dialReq('10.0.0.1:6443', RANDOM));
    const rsp = await call.packet(0);
    expect(rsp!.dialResponse!.error).toBe('');
    call.send(packets.closeReq(rsp!.dialResponse!.connectID));
    expect((await call.status).code).toBe(grpc.status.OK);

    const uds = new ProxyServiceClient(`unix:${server.addresses.grpcUds}`, grpc.credentials.createInsecure());
    clients.push(uds);
    expect(fs.statSync(server.addresses.grpcUds!).mode & 0o777).toBe(0o600);
    const viaUds = open(uds);
    viaUds.send(packets.dialReq('member-1:443', RANDOM));
    const r2 = await viaUds.packet(0);
    expect(r2!.dialResponse!.error).toBe('');
    const id = r2!.dialResponse!.connectID;
    viaUds.send(packets.data(id, Buffer.from('over the socket')));
    expect((await viaUds.packet(1))!.data!.data.toString()).toBe('over the socket');
    viaUds.send(packets.closeReq(id));
    expect((await viaUds.status).code).toBe(grpc.status.OK);
    // The policy names kube-apiserver for member-1 but not member-3.
    const denied = open(uds);
    denied.send(packets.dialReq('member-3:443', RANDOM));
    expect((await denied.packet(0))!.dialResponse!.error).toMatch(/kube-apiserver/);
    expect((await denied.status).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('flow control: a client that stops reading stalls its own connection within a bound; another connection is not held up', async () => {
    const CHUNK = 64 * 1024;
    const TOTAL = 48 * 1024 * 1024;
    const slow = open(tlsClient());
    slow.send(packets.dialReq('member-1:443', RANDOM));
    const id = (await slow.packet(0))!.dialResponse!.connectID;
    // The client stops reading the echoes and keeps writing, as fast as its own call lets it.
    slow.stream.pause();
    let accepted = 0;
    let writerDone = false;
    const payload = Buffer.alloc(CHUNK, 7);
    const writer = (async () => {
      while (accepted < TOTAL) {
        accepted += CHUNK;
        if (!slow.stream.write(packets.data(id, payload))) await once(slow.stream, 'drain');
      }
      writerDone = true;
    })();
    // Stalled: nothing more accepted for a while (a server that buffered
    // without bound would take all 48 MiB instead).
    let last = -1;
    while (accepted !== last && !writerDone) {
      last = accepted;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(writerDone).toBe(false);
    expect(accepted).toBeLessThan(TOTAL);
    const stalledAt = accepted;

    // Another connection through the same server, agent and tunnel still answers at once.
    const quick = open(tlsClient());
    quick.send(packets.dialReq('member-1:443', '99'));
    const qid = (await quick.packet(0))!.dialResponse!.connectID;
    for (let i = 1; i <= 20; i++) {
      quick.send(packets.data(qid, Buffer.from(`ping ${i}`)));
      expect((await quick.packet(i))!.data!.data.toString()).toBe(`ping ${i}`);
    }
    quick.send(packets.closeReq(qid));
    expect((await quick.status).code).toBe(grpc.status.OK);
    expect(accepted).toBe(stalledAt);

    // Reading again: every byte comes back, and the writer finishes.
    let echoed = 0;
    const allBack = new Promise<void>((resolve) =>
      slow.stream.on('data', (p: Packet) => {
        if (p.type === 'DATA') echoed += p.data!.data.length;
        if (echoed === TOTAL) resolve();
      }),
    );
    echoed = slow.received.slice(1).reduce((n, p) => n + (p.data?.data.length ?? 0), 0);
    slow.stream.resume();
    await writer;
    await allBack;
    slow.send(packets.closeReq(id));
    expect((await slow.status).code).toBe(grpc.status.OK);
  }, 60_000);

  it('metrics: the grpc frontend\'s streams and failures, and Konnectivity\'s metric names for what means the same', async () => {
    const metrics = async () => (await fetch(`http://127.0.0.1:${server.addresses.admin.port}/metrics`)).text();
    const call = open(tlsClient());
    call.send(packets.dialReq('member-1:443', RANDOM));
    const id = (await call.packet(0))!.dialResponse!.connectID;
    for (const address of ['member-2:443', 'nowhere:443']) {
      const refused = open(tlsClient());
      refused.send(packets.dialReq(address, RANDOM));
      await refused.status;
    }
    const open1 = await metrics();
    expect(open1).toMatch(/^kubetunnel_streams_total\{frontend="grpc"\} 1$/m);
    expect(open1).toMatch(/^kubetunnel_stream_failures_total\{frontend="grpc",reason="NO_AGENT"\} 1$/m);
    expect(open1).toMatch(/^kubetunnel_stream_failures_total\{frontend="grpc",reason="UNKNOWN_CLUSTER"\} 1$/m);
    expect(open1).toMatch(/^konnectivity_network_proxy_server_dial_duration_seconds_count 1$/m);
    expect(open1).toMatch(/^konnectivity_network_proxy_server_dial_failure_count\{reason="no_agent"\} 1$/m);
    expect(open1).not.toMatch(/^konnectivity_network_proxy_server_dial_failure_count\{reason="UNKNOWN_CLUSTER"/m);
    expect(open1).toMatch(/^konnectivity_network_proxy_server_established_connections 1$/m);
    expect(open1).toMatch(/^konnectivity_network_proxy_server_pending_backend_dials 0$/m);
    expect(open1).toMatch(/^konnectivity_network_proxy_server_ready_backend_connections 2$/m);
    call.send(packets.closeReq(id));
    await call.status;
    while (server.registry.totals().openStreams > 0) await new Promise((r) => setTimeout(r, 5));
    expect(await metrics()).toMatch(/^konnectivity_network_proxy_server_established_connections 0$/m);
  });

  it('a call that sends no DIAL_REQ is ended DEADLINE_EXCEEDED after the dial timeout', async () => {
    const quick = await startServer({ ...testServerConfig(ca, serverPem, tokens), dialTimeoutMs: 300, grpcPort: 0 }, silentLogger());
    try {
      const c = new ProxyServiceClient(`127.0.0.1:${quick.addresses.grpc!.port}`, grpc.credentials.createSsl(Buffer.from(ca.cert)), {
        'grpc.ssl_target_name_override': 'localhost',
      });
      clients.push(c);
      const call = open(c);
      const status = await call.status;
      expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(status.details).toBe('no DIAL_REQ within 300 ms');
      expect(call.received).toEqual([]);
    } finally {
      await quick.close();
    }
  });

  it('new TLS material applies to new gRPC connections', async () => {
    const renamed = issueServerCert(ca, { sans: ['reloaded.example'] });
    server.updateTls({ cert: renamed.cert, key: renamed.key, ca: ca.cert });
    const c = new ProxyServiceClient(
      `127.0.0.1:${server.addresses.grpc!.port}`,
      grpc.credentials.createSsl(Buffer.from(ca.cert), Buffer.from(alice.key), Buffer.from(alice.cert)),
      { 'grpc.ssl_target_name_override': 'reloaded.example' },
    );
    clients.push(c);
    const call = open(c);
    call.send(packets.dialReq('member-1:443', RANDOM));
    const rsp = await call.packet(0);
    expect(rsp!.dialResponse!.error).toBe('');
    call.send(packets.closeReq(rsp!.dialResponse!.connectID));
    expect((await call.status).code).toBe(grpc.status.OK);
  });

  it('the far end hanging up sends CLOSE_RSP and ends the call; a client cancel resets the tunnel stream', async () => {
    const call = open(tlsClient());
    call.send(packets.dialReq('member-1:443', RANDOM));
    const id = (await call.packet(0))!.dialResponse!.connectID;
    call.send(packets.data(id, Buffer.from('x')));
    await call.packet(1);
    // The echo server hangs up: the agent FINs the stream.
    echo.hangUp();
    expect(await call.packet(2)).toMatchObject({ type: 'CLOSE_RSP', closeResponse: { connectID: id } });
    expect((await call.status).code).toBe(grpc.status.OK);

    const other = open(tlsClient());
    other.send(packets.dialReq('member-1:443', '7'));
    expect((await other.packet(0))!.dialResponse!.error).toBe('');
    expect(server.registry.totals().openStreams).toBe(1);
    other.stream.cancel();
    expect((await other.status).code).toBe(grpc.status.CANCELLED);
  });
});
