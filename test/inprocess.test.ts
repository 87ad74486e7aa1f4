/**
 * Server and agent in one process with real TLS, real WebSockets and real
 * sockets: what the agent refuses, how it registers, reconnects and drains.
 */
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Connector, startAgent, type Agent, type AgentConfig } from '@kubetunnel/agent';
import { pino } from 'pino';
import { startServer, type KubetunnelServer } from '@kubetunnel/server';
import { Defaults, advertisedPingInterval, createCA, issueAgentCert, issueServerCert, silentLogger, type Pem } from '@kubetunnel/shared';
import { expectIdle, startRegisteredAgent, testAgentConfig, testServerConfig } from './fixtures.js';
import { expectNoLeaks, liveResources } from '../packages/shared/test/helpers.js';

const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
const agentPem = issueAgentCert(ca, { cluster: 'member-1' });

const tokens = new Map([['t', { user: 'alice', uid: '1', groups: [] }]]);
const agentConfig = (server: KubetunnelServer, apiserverPort: number, pem: Pem = agentPem, extra: Partial<AgentConfig> = {}) =>
  testAgentConfig(server, ca, pem, 'member-1', `https://127.0.0.1:${apiserverPort}`, extra);

/** A TCP echo server that counts the connections it accepted. */
async function echoServer(): Promise<{ port: number; accepted: () => number; close(): Promise<void> }> {
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return {
    port: (srv.address() as net.AddressInfo).port,
    accepted: () => accepted,
    close: async () => {
      for (const s of sockets) s.destroy();
      srv.close();
      await once(srv, 'close');
    },
  };
}

let server: KubetunnelServer;
let agent: Agent | undefined;
let echo: Awaited<ReturnType<typeof echoServer>>;
let before: Record<string, number>;

beforeEach(async () => {
  before = liveResources();
  server = await startServer(testServerConfig(ca, serverPem, tokens), silentLogger());
  echo = await echoServer();
});

afterEach(async () => {
  await expectIdle(server, agent);
  await agent?.close();
  agent = undefined;
  await server.close();
  await echo.close();
  await expectNoLeaks(before);
});

async function registered(cluster = 'member-1', agents = 1): Promise<void> {
  while ((server.registry.get(cluster)?.agents.size ?? 0) < agents) await once(server.registry, 'change');
}

/** CONNECT through the frontend; resolves with the status line and the socket. */
async function connect(target: string, cluster: string): Promise<{ status: string; body: string; socket: tls.TLSSocket }> {
  const socket = tls.connect({ host: '127.0.0.1', port: server.addresses.proxy.port, ca: ca.cert, servername: 'localhost' });
  await once(socket, 'secureConnect');
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nX-Cluster-Name: ${cluster}\r\nProxy-Authorization: Bearer t\r\n\r\n`);
  const [data] = (await once(socket, 'data')) as [Buffer];
  const text = data.toString();
  return { status: text.split('\r\n')[0]!, body: text.slice(text.indexOf('\r\n\r\n') + 4), socket };
}

describe('agent and server in one process', () => {
  it('an OPEN for a target the agent does not allow is refused with a code, and no connection is made', async () => {
    agent = await startAgent(agentConfig(server, echo.port), silentLogger());
    await registered();
    const tunnel = [...server.registry.get('member-1')!.agents.values()][0]!;
    // A crafted OPEN, as a compromised server could send it.
    await expect(tunnel.session.open({ kind: 'tcp', target: `127.0.0.1:${echo.port}` })).rejects.toMatchObject({
      reason: 'TARGET_NOT_ALLOWED',
    });
    await expect(tunnel.session.open({ kind: 'tcp', target: 'metadata.internal:80' })).rejects.toMatchObject({
      reason: 'TARGET_NOT_ALLOWED',
    });
    expect(echo.accepted()).toBe(0);
    // The apiserver target itself is dialed.
    const s = await tunnel.session.open({ kind: 'tcp', target: 'apiserver' });
    s.end('ping');
    const chunks: Buffer[] = [];
    for await (const c of s.iterator({ destroyOnReturn: false })) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('ping');
    expect(echo.accepted()).toBe(1);
  });

  it('a CONNECT naming an allow-listed host:port exactly reaches it; any other host:port reaches the apiserver', async () => {
    const other = await echoServer();
    try {
      agent = await startAgent(agentConfig(server, echo.port, agentPem, { allowDest: [`127.0.0.1:${other.port}`] }), silentLogger());
      await registered();
      const a = await connect(`127.0.0.1:${other.port}`, 'member-1');
      expect(a.status).toBe('HTTP/1.1 200 Connection established');
      a.socket.destroy();
      await once(a.socket, 'close');
      expect(other.accepted()).toBe(1);
      const b = await connect('10.9.9.9:443', 'member-1');
      expect(b.status).toBe('HTTP/1.1 200 Connection established');
      b.socket.destroy();
      await once(b.socket, 'close');
      expect(echo.accepted()).toBe(1);
      expect(other.accepted()).toBe(1);
    } finally {
      await other.close();
    }
  });

  it('admin: /clusters and /metrics describe what happened', async () => {
    agent = await startAgent(agentConfig(server, echo.port), silentLogger());
    await registered();
    const ok = await connect('member-1:443', 'member-1');
    expect(ok.status).toBe('HTTP/1.1 200 Connection established');
    const refused = await connect('nowhere:443', 'nowhere');
    expect(refused.status).toBe('HTTP/1.1 404 Not Found');
    const admin = `http://127.0.0.1:${server.addresses.admin.port}`;
    const clusters = (await (await fetch(`${admin}/clusters`)).json()) as { serverId: string; clusters: Array<{ name: string; openStreams: number; agents: Array<{ id: string; openStreams: number }> }> };
    expect(clusters.serverId).toBe('test-server');
    expect(clusters.clusters[0]).toMatchObject({ name: 'member-1', openStreams: 1, agents: [{ id: 'a1', openStreams: 1 }] });
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    expect(metrics).toMatch(/kubetunnel_streams_total\{frontend="connect"\} 1/);
    expect(metrics).toMatch(/kubetunnel_stream_failures_total\{frontend="connect",reason="UNKNOWN_CLUSTER"\} 1/);
    expect(metrics).toMatch(/kubetunnel_agents\{cluster="member-1"\} 1/);
    for (const s of [ok.socket, refused.socket]) s.destroy();
  });

  it('a dial to a closed port answers 502 with the reason', async () => {
    const closed = await echoServer();
    await closed.close();
    agent = await startAgent(agentConfig(server, closed.port), silentLogger());
    await registered();
    const r = await connect('member-1:443', 'member-1');
    expect(r.status).toBe('HTTP/1.1 502 Bad Gateway');
    // The agent's reason crossed the tunnel as a code and is stated in the body.
    expect(r.body).toBe(`cluster "member-1": connect ECONNREFUSED 127.0.0.1:${closed.port}\n`);
    r.socket.destroy();
  });

  it('reconnects with backoff after the server drops the tunnel: waits of full jitter that double', async () => {
    const lines: Array<{ msg: string; retryInMs?: number }> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    // Jitter fixed at half of the cap: the waits are 0.5 x 20, 0.5 x 40, 0.5 x 80 ms.
    const config = agentConfig(server, echo.port, agentPem, { backoff: { initialMs: 20, maxMs: 60 } });
    const connector = new Connector(config, (incoming) => incoming.reject('INTERNAL'), log, () => 0.5);
    let up = once(connector, 'session');
    connector.start();
    try {
      for (let i = 0; i < 3; i++) {
        await up;
        await registered();
        const tunnel = [...server.registry.get('member-1')!.agents.values()][0]!;
        const down = once(connector, 'disconnect');
        up = once(connector, 'session');
        tunnel.session.close();
        await down;
      }
      await up;
      expect(lines.filter((l) => l.msg === 'tunnel down').map((l) => l.retryInMs)).toEqual([10, 20, 30]);
      expect(lines.filter((l) => l.msg === 'tunnel up')).toHaveLength(4);
    } finally {
      connector.close();
      while ((server.registry.get('member-1')?.agents.size ?? 0) > 0) await once(server.registry, 'change');
    }
  });

  it('drain: GOAWAY, open streams finish, then the agent closes its tunnels', async () => {
    agent = await startAgent(agentConfig(server, echo.port), silentLogger());
    await registered();
    const tunnel = [...server.registry.get('member-1')!.agents.values()][0]!;
    const s = await tunnel.session.open({ kind: 'tcp', target: 'apiserver' });
    const goaway = once(tunnel.session, 'goaway');
    const drained = agent.drain(5000);
    await goaway;
    expect(tunnel.session.usable).toBe(false);
    s.end('last');
    const chunks: Buffer[] = [];
    for await (const c of s.iterator({ destroyOnReturn: false })) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('last');
    await drained;
    await once(tunnel.session, 'close');
    agent = undefined;
  });

  it('several agents of one cluster share its streams; a dead one gets none', async () => {
    const pemB = issueAgentCert(ca, { cluster: 'member-1' });
    agent = await startAgent(agentConfig(server, echo.port), silentLogger());
    const b = await startAgent(agentConfig(server, echo.port, pemB, { agentId: 'a2' }), silentLogger());
    await registered('member-1', 2);
    const sockets = [];
    for (let i = 0; i < 4; i++) sockets.push((await connect('member-1:443', 'member-1')).socket);
    const perAgent = [...server.registry.get('member-1')!.agents.values()].map((t) => t.session.openStreams);
    expect(perAgent).toEqual([2, 2]);
    for (const s of sockets) s.destroy();
    await b.close();
    while ((server.registry.get('member-1')?.agents.size ?? 0) > 1) await once(server.registry, 'change');
    const r = await connect('member-1:443', 'member-1');
    expect(r.status).toBe('HTTP/1.1 200 Connection established');
    r.socket.destroy();
  });
});

describe('the agent gateway', () => {
  /** Whether a second connection to the gateway resumes the TLS session of a first one. */
  async function resumes(): Promise<boolean> {
    const options = { host: '127.0.0.1', port: server.addresses.agent.port, servername: 'localhost', ca: ca.cert, cert: agentPem.cert, key: agentPem.key };
    const first = tls.connect(options);
    const sessions: Buffer[] = [];
    first.on('session', (session: Buffer) => sessions.push(session));
    first.end('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    first.resume();
    await once(first, 'close');
    expect(sessions.length).toBeGreaterThan(0);
    const second = tls.connect({ ...options, session: sessions[0]! });
    await once(second, 'secureConnect');
    const reused = second.isSessionReused();
    second.destroy();
    await once(second, 'close');
    return reused;
  }

  it('resumes no TLS session (no session tickets: agents never resume), before and after a TLS reload', async () => {
    expect(await resumes()).toBe(false);
    server.updateTls({ cert: serverPem.cert, key: serverPem.key, ca: ca.cert });
    expect(await resumes()).toBe(false);
  });
});

describe('the PING interval', () => {
  it('an agent takes the interval its server advertises, unless it was given its own or the value is out of range', async () => {
    const servers = await Promise.all(
      [45_000, 50].map((pingIntervalMs) => startServer({ ...testServerConfig(ca, serverPem, tokens), session: { pingIntervalMs } }, silentLogger())),
    );
    const agents: Agent[] = [];
    /** The PING interval of a new agent's tunnel to `srv`, once both ends have it. */
    const intervalOf = async (srv: KubetunnelServer, extra: Partial<AgentConfig> = {}) => {
      const a = await startRegisteredAgent(srv, agentConfig(srv, echo.port, agentPem, extra));
      agents.push(a);
      if (!a.connector.ready) await once(a.connector, 'session');
      return a.connector.sessions()[0]!.session.pingIntervalMs;
    };
    try {
      const [slow, tooFast] = servers as [KubetunnelServer, KubetunnelServer];
      expect(await intervalOf(slow)).toBe(45_000);
      expect(await intervalOf(slow, { agentId: 'a2', session: { pingIntervalMs: 5000 } })).toBe(5000);
      // 50 ms is below the 1 s an agent accepts: it keeps its default.
      expect(await intervalOf(tooFast)).toBe(Defaults.pingIntervalMs);
    } finally {
      await Promise.all(agents.map((a) => a.close()));
      await Promise.all(servers.map((s) => s.close()));
    }
  });

  it('an advertised interval is whole milliseconds from 1 s to 10 min', () => {
    expect(advertisedPingInterval('30000')).toBe(30_000);
    expect(advertisedPingInterval('1000')).toBe(1000);
    expect(advertisedPingInterval('600000')).toBe(600_000);
    for (const bad of [undefined, '', '999', '600001', '30s', '3e4', '-5000', ' 30000', '30000.5', ['30000', '30000']])
      expect(advertisedPingInterval(bad)).toBeUndefined();
  });
});

describe('several server replicas behind one address', () => {
  it('the agent dials through the balancer until it holds a tunnel to every replica', async () => {
    const second = await startServer({ ...testServerConfig(ca, serverPem, tokens), serverId: 'replica-2', serverCount: 2 }, silentLogger());
    const first = await startServer({ ...testServerConfig(ca, serverPem, tokens), serverId: 'replica-1', serverCount: 2 }, silentLogger());
    // A TCP balancer that sends each new connection to the next replica in turn.
    const backends = [first.addresses.agent.port, second.addresses.agent.port];
    let turn = 0;
    const piped = new Set<net.Socket>();
    const lb = net.createServer((client) => {
      const upstream = net.connect(backends[turn++ % 2]!, '127.0.0.1');
      for (const s of [client, upstream]) {
        piped.add(s);
        s.on('close', () => piped.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    lb.listen(0, '127.0.0.1');
    await once(lb, 'listening');
    try {
      agent = await startAgent(
        { ...agentConfig(server, echo.port), servers: [`wss://localhost:${(lb.address() as net.AddressInfo).port}`] },
        silentLogger(),
      );
      while (agent.connector.sessions().length < 2) await once(agent.connector, 'session');
      expect(agent.connector.sessions().map((s) => s.serverId).sort()).toEqual(['replica-1', 'replica-2']);
      for (const srv of [first, second]) expect(srv.registry.get('member-1')?.agents.size).toBe(1);
      await agent.close();
      agent = undefined;
    } finally {
      await first.close();
      await second.close();
      for (const s of piped) s.destroy();
      lb.close();
      await once(lb, 'close');
    }
  });
});
