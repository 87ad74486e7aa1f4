/**
 * The agent gateway's bound on registrations in progress at once
 * (--max-concurrent-handshakes), with a server and agents in this process
 * over real TLS and WebSockets: past the limit an agent's upgrade is
 * answered 503 with Retry-After (or, further past it, its connection waits
 * before TLS for a slot), the metrics count it, the agent waits as long as
 * it was asked, and every agent ends up registered.
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { startAgent, type Agent } from '@kubetunnel/agent';
import { startServer, type KubetunnelServer } from '@kubetunnel/server';
import { AGENT_PATH, RegistrationHeaders as H, SUBPROTOCOL, createCA, issueAgentCert, issueServerCert, silentLogger } from '@kubetunnel/shared';
import { testAgentConfig, testServerConfig } from './fixtures.js';
import { expectNoLeaks, liveResources } from '../packages/shared/test/helpers.js';

const LIMIT = 2;
const ca = createCA();
const serverPem = issueServerCert(ca, { sans: ['localhost', '127.0.0.1'] });
const agentPem = issueAgentCert(ca, { cluster: 'member-1' });

let server: KubetunnelServer;
let agents: Agent[] = [];
let held: tls.TLSSocket[] = [];
let before: Record<string, number>;

beforeEach(async () => {
  before = liveResources();
  server = await startServer({ ...testServerConfig(ca, serverPem, new Map()), maxConcurrentHandshakes: LIMIT }, silentLogger());
});

afterEach(async () => {
  for (const s of held) s.destroy();
  held = [];
  await Promise.all(agents.map((a) => a.close()));
  agents = [];
  await server.close();
  await expectNoLeaks(before);
});

/** A metric's value from the server's registry (0 when the series does not exist yet). */
async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = server.metrics.registry.getSingleMetric(name);
  if (!m) throw new Error(`no metric ${name}`);
  const { values } = await m.get();
  const v = values.find((x) => Object.entries(labels).every(([k, want]) => String(x.labels[k]) === want));
  return v?.value ?? 0;
}

/** A TLS connection to the agent port with an agent certificate, handshake done, nothing sent: it holds a slot. */
async function holdSlot(): Promise<tls.TLSSocket> {
  const s = tls.connect({ host: '127.0.0.1', port: server.addresses.agent.port, ca: ca.cert, servername: 'localhost', ...agentPem });
  held.push(s);
  await once(s, 'secureConnect');
  return s;
}

/** An agent registration request on a fresh TLS connection; resolves with the response head. */
async function upgrade(agentId: string): Promise<string> {
  const s = tls.connect({ host: '127.0.0.1', port: server.addresses.agent.port, ca: ca.cert, servername: 'localhost', ...agentPem });
  try {
    await once(s, 'secureConnect');
    s.write(
      [
        `GET ${AGENT_PATH} HTTP/1.1`,
        'Host: localhost',
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        `Sec-WebSocket-Protocol: ${SUBPROTOCOL}`,
        `${H.cluster}: member-1`,
        `${H.agentId}: ${agentId}`,
        '',
        '',
      ].join('\r\n'),
    );
    let text = '';
    s.setEncoding('utf8');
    for await (const chunk of s) {
      text += chunk as string;
      if (text.includes('\r\n\r\n')) break;
    }
    return text;
  } finally {
    s.destroy();
  }
}

/** Waits until member-1 has `n` agents registered. */
async function registered(n: number): Promise<void> {
  while ((server.registry.get('member-1')?.agents.size ?? 0) < n) await once(server.registry, 'change');
}

describe('--max-concurrent-handshakes', () => {
  it('answers an upgrade past the limit 503 with Retry-After, and counts it; a freed slot admits the next', async () => {
    await holdSlot();
    await holdSlot();
    expect(await metric('kubetunnel_agent_handshakes', { state: 'admitted' })).toBe(LIMIT);

    const head = await upgrade('over-1');
    expect(head).toMatch(/^HTTP\/1\.1 503 /);
    expect(head).toMatch(/\r\nRetry-After: [1-9]\d*\r\n/i);
    expect(head).toContain('too many agents registering at once');
    expect(await metric('kubetunnel_agent_handshakes_limited_total', { response: '503' })).toBe(1);
    expect(server.registry.get('member-1')?.agents.size ?? 0).toBe(0);

    // A slot frees: the next registration goes through.
    const first = held.shift()!;
    first.destroy();
    await once(first, 'close');
    expect(await upgrade('next-1')).toMatch(/^HTTP\/1\.1 101 /);
    await registered(1);
    expect(await metric('kubetunnel_agent_handshakes_admitted_peak')).toBe(LIMIT);
  });

  it('an agent answered 503 waits at least its Retry-After before it dials again, then registers', async () => {
    await holdSlot();
    await holdSlot();
    const lines: Array<{ msg?: string; retryInMs?: number; time: number }> = [];
    let busy: () => void;
    const refused = new Promise<void>((resolve) => (busy = resolve));
    const log = pino({ level: 'info' }, {
      write: (line: string) => {
        const l = JSON.parse(line) as { msg?: string; retryInMs?: number };
        lines.push({ ...l, time: performance.now() });
        if (l.msg === 'server busy; dialing again after its Retry-After' || l.msg === 'server refused registration') busy();
      },
    });
    const agent = await startAgent(testAgentConfig(server, ca, agentPem, 'member-1', 'https://127.0.0.1:1', { agentId: 'patient' }), log);
    agents.push(agent);
    await refused;
    const answer = lines.find((l) => l.msg === 'server busy; dialing again after its Retry-After' || l.msg === 'server refused registration')!;
    expect(answer.msg).toBe('server busy; dialing again after its Retry-After');
    expect(answer.retryInMs).toBeGreaterThanOrEqual(1000);
    // Free the slots at once: only the agent's own wait keeps it away now.
    for (const s of held) s.destroy();
    await registered(1);
    expect(performance.now() - answer.time).toBeGreaterThanOrEqual(answer.retryInMs! - 5);
    expect(await metric('kubetunnel_agent_handshakes_limited_total', { response: '503' })).toBeGreaterThanOrEqual(1);
  });

  it('many agents at once: never more than the limit registering, the rest refused and back, every one registered', async () => {
    const N = 30;
    // Both slots held while the agents arrive: every one of them is over the limit.
    await holdSlot();
    await holdSlot();
    agents = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        startAgent(testAgentConfig(server, ca, agentPem, 'member-1', 'https://127.0.0.1:1', { agentId: `storm-${i}` }), silentLogger()),
      ),
    );
    // Past the limit: the first ones answered 503, the ones past those waiting before TLS.
    const refused = () => metric('kubetunnel_agent_handshakes_limited_total', { response: '503' });
    while ((await refused()) < 1 || (await metric('kubetunnel_agent_handshakes', { state: 'queued' })) < 1) await new Promise((r) => setTimeout(r, 20));
    expect(await metric('kubetunnel_agent_handshakes', { state: 'over' })).toBeLessThanOrEqual(LIMIT);
    expect(server.registry.get('member-1')?.agents.size ?? 0).toBe(0);

    for (const s of held) s.destroy();
    await registered(N);
    expect(await metric('kubetunnel_agent_handshakes_admitted_peak')).toBe(LIMIT);
    expect(await metric('kubetunnel_agent_registrations_total', { result: 'ok' })).toBe(N);
    expect(await metric('kubetunnel_agent_handshakes_queued_total')).toBeGreaterThanOrEqual(1);
    // Nothing left in progress.
    expect(await metric('kubetunnel_agent_handshakes', { state: 'admitted' })).toBe(0);
    expect(await metric('kubetunnel_agent_handshakes', { state: 'over' })).toBe(0);
    expect(await metric('kubetunnel_agent_handshakes', { state: 'queued' })).toBe(0);
  });

  it('a storm with nothing held: the peak stays at the limit and every agent registers', async () => {
    const N = 40;
    agents = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        startAgent(testAgentConfig(server, ca, agentPem, 'member-1', 'https://127.0.0.1:1', { agentId: `free-${i}` }), silentLogger()),
      ),
    );
    await registered(N);
    expect(await metric('kubetunnel_agent_handshakes_admitted_peak')).toBeLessThanOrEqual(LIMIT);
    expect(await metric('kubetunnel_agent_registrations_total', { result: 'ok' })).toBe(N);
  });
});
