/**
 * The AgentService packet by packet: a scripted ANP agent (grpc-js, holding
 * an agent certificate) and CONNECT clients, server in this process.
 */
import { once } from 'node:events';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentServiceClient, packets, startServer, type KubetunnelServer, type Packet } from '@kubetunnel/server';
import { createCA, issueAgentCert, issueServerCert, silentLogger } from '@kubetunnel/shared';
import { testServerConfig } from './fixtures.js';
import { expectNoLeaks, liveResources } from '../packages/shared/test/helpers.js';

const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
const agentPem = issueAgentCert(ca, { cluster: 'member-1' });
const tokens = new Map([['t', { user: 'alice', uid: '1', groups: [] }]]);

let server: KubetunnelServer;
let before: Record<string, number>;
let client: grpc.Client;

/** A scripted agent: its received packets in order. */
class ScriptedAgent {
  readonly received: Packet[] = [];
  readonly call: grpc.ClientDuplexStream<Packet, Packet>;
  private waiters: Array<() => void> = [];
  constructor() {
    const md = new grpc.Metadata();
    md.set('agentid', 'scripted');
    md.set('agentidentifiers', 'host=member-1');
    this.call = (client as unknown as { Connect(md: grpc.Metadata): grpc.ClientDuplexStream<Packet, Packet> }).Connect(md);
    this.call.on('data', (p: Packet) => {
      this.received.push(p);
      for (const w of this.waiters.splice(0)) w();
    });
    this.call.on('error', () => {});
  }
  async packet(n: number): Promise<Packet> {
    while (this.received.length <= n) await new Promise<void>((r) => this.waiters.push(r));
    return this.received[n]!;
  }
}

async function registered(): Promise<void> {
  while ((server.registry.get('member-1')?.agents.size ?? 0) < 1) await once(server.registry, 'change');
}

/** CONNECT to member-1; resolves with the socket once the request is sent. */
async function connect(): Promise<tls.TLSSocket> {
  const socket = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: ca.cert, servername: 'localhost' });
  await once(socket, 'secureConnect');
  socket.write('CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer t\r\n\r\n');
  return socket;
}

const firstLine = async (socket: tls.TLSSocket) => ((await once(socket, 'data')) as [Buffer])[0].toString();

beforeEach(async () => {
  before = liveResources();
  server = await startServer({ ...testServerConfig(ca, serverPem, tokens), anpAgentPort: 0 }, silentLogger());
  client = new AgentServiceClient(
    `127.0.0.1:${server.addresses.anpAgent!.port}`,
    grpc.credentials.createSsl(Buffer.from(ca.cert), Buffer.from(agentPem.key), Buffer.from(agentPem.cert)),
    { 'grpc.ssl_target_name_override': 'localhost' },
  );
});

afterEach(async () => {
  client.close();
  const deadline = Date.now() + 3000;
  while (server.registry.totals().openStreams + server.registry.totals().agents > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  expect(server.registry.totals()).toEqual({ openStreams: 0, pendingDials: 0, agents: 0 });
  await server.close();
  await expectNoLeaks(before);
});

describe('AgentService, packet by packet', () => {
  it('a CONNECT becomes DIAL_REQ(tcp, kubernetes.default.svc:443); the agent\'s dial error is a 502 naming it', async () => {
    const agent = new ScriptedAgent();
    await registered();
    const socket = await connect();
    const req = await agent.packet(0);
    expect(req).toMatchObject({ type: 'DIAL_REQ', dialRequest: { protocol: 'tcp', address: 'kubernetes.default.svc:443' } });
    expect(req.dialRequest!.random).not.toBe('0');
    agent.call.write(packets.dialRsp(req.dialRequest!.random, '0', 'dial tcp 10.0.0.1:443: connect: connection refused'));
    const answer = await firstLine(socket);
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toContain('agent could not dial: dial tcp 10.0.0.1:443: connect: connection refused');
    socket.destroy();
    agent.call.end();
  });

  it('data both ways by connectID; a client that leaves is a CLOSE_REQ; DATA for an unknown connection is closed', async () => {
    const agent = new ScriptedAgent();
    await registered();
    const socket = await connect();
    const req = await agent.packet(0);
    agent.call.write(packets.dialRsp(req.dialRequest!.random, '41'));
    expect(await firstLine(socket)).toBe('HTTP/1.1 200 Connection established\r\n\r\n');
    socket.write('hello');
    expect(await agent.packet(1)).toMatchObject({ type: 'DATA', data: { connectID: '41' } });
    expect(agent.received[1]!.data!.data.toString()).toBe('hello');
    agent.call.write(packets.data('41', Buffer.from('world')));
    expect(((await once(socket, 'data')) as [Buffer])[0].toString()).toBe('world');
    agent.call.write(packets.data('77', Buffer.from('stray')));
    expect(await agent.packet(2)).toEqual(expect.objectContaining({ type: 'CLOSE_REQ', closeRequest: { connectID: '77' } }));
    socket.destroy();
    expect(await agent.packet(3)).toEqual(expect.objectContaining({ type: 'CLOSE_REQ', closeRequest: { connectID: '41' } }));
    agent.call.end();
  });

  it('a dial given up is a DIAL_CLS; a DIAL_RSP that comes after it is closed at once', async () => {
    const agent = new ScriptedAgent();
    await registered();
    const socket = await connect();
    const req = await agent.packet(0);
    socket.destroy();
    expect(await agent.packet(1)).toEqual(expect.objectContaining({ type: 'DIAL_CLS', closeDial: { random: req.dialRequest!.random } }));
    agent.call.write(packets.dialRsp(req.dialRequest!.random, '9'));
    expect(await agent.packet(2)).toEqual(expect.objectContaining({ type: 'CLOSE_REQ', closeRequest: { connectID: '9' } }));
    agent.call.end();
  });

  it('the agent going away closes its connections and leaves the registry', async () => {
    const agent = new ScriptedAgent();
    await registered();
    const socket = await connect();
    const req = await agent.packet(0);
    agent.call.write(packets.dialRsp(req.dialRequest!.random, '1'));
    await firstLine(socket);
    expect(server.registry.totals().openStreams).toBe(1);
    agent.call.cancel();
    await once(socket, 'close');
    while (server.registry.totals().agents > 0) await once(server.registry, 'change');
    // Counted as a kubetunnel agent's disconnect is.
    expect((await server.metrics.disconnects.get()).values.reduce((n, v) => n + v.value, 0)).toBe(1);
  });

  it('an agent that ends its call is counted as a disconnect (reason closed)', async () => {
    const agent = new ScriptedAgent();
    await registered();
    agent.call.end();
    while (server.registry.totals().agents > 0) await once(server.registry, 'change');
    expect((await server.metrics.disconnects.get()).values).toEqual([expect.objectContaining({ labels: { reason: 'closed' }, value: 1 })]);
    expect((await server.metrics.registrations.get()).values).toEqual([expect.objectContaining({ labels: { result: 'ok' }, value: 1 })]);
  });
});
