/**
 * The agent's side of identity checks: an `http` stream whose OPEN carries
 * an identity no header can carry (sent straight into the tunnel, past the
 * hub's own check) is answered with a Kubernetes Status by the agent; it
 * never throws inside the tunnel, and the tunnel and its other streams stay.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '@kubetunnel/agent';
import type { KubetunnelServer } from '@kubetunnel/server';
import type { Identity, MuxStream } from '@kubetunnel/shared';
import type { StandinApiserver } from '@kubetunnel/standin-apiserver';
import { expectIdle, startL7Member, type L7Member } from './fixtures.js';

let member: L7Member;
let server: KubetunnelServer;
let agent: Agent;
let api: StandinApiserver;

beforeAll(async () => {
  member = await startL7Member(new Map());
  ({ server, agent, api } = member);
});

afterEach(async () => {
  await expectIdle(server, agent);
});

afterAll(async () => {
  await member.close();
});

const tunnel = () => [...server.registry.get('member-1')!.agents.values()][0]!;

/** An http.Agent that hands out one tunnel stream (as the hub's L7 frontend does). */
class OneStream extends http.Agent {
  constructor(private readonly stream: MuxStream) {
    super({ keepAlive: false });
  }

  override createConnection(): Duplex {
    return this.stream;
  }
}

/** Opens an `http` stream for `identity` and sends GET /version on it; resolves with status and body. */
async function get(identity: Identity): Promise<{ status: number; body: string }> {
  const stream: MuxStream = await tunnel().session.open({ kind: 'http', target: 'apiserver', identity });
  try {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get({ path: '/version', headers: { host: 'x' }, agent: new OneStream(stream) }, resolve).on('error', reject),
    );
    let body = '';
    for await (const c of res) body += String(c);
    return { status: res.statusCode!, body };
  } finally {
    stream.destroy();
  }
}

/** Opens an `http` stream for `identity` and sends an upgrade request on it; resolves with the raw answer. */
async function upgrade(identity: Identity): Promise<string> {
  const stream: MuxStream = await tunnel().session.open({ kind: 'http', target: 'apiserver', identity });
  let answer = '';
  stream.setEncoding('latin1');
  stream.on('data', (d: string) => (answer += d));
  stream.on('error', () => {});
  stream.write(UPGRADE);
  await once(stream, 'end');
  stream.destroy();
  return answer;
}
const UPGRADE = 'GET /api/v1/namespaces/default/pods/echo/exec?command=cat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n';

describe('the agent refuses identities no header can carry', () => {
  it.each([
    ['a control character', { user: 'al\u0001ice', groups: [] }, 'user "al\\u0001ice" contains a control character'],
    ['CR LF in a group', { user: 'alice', groups: ['dev\r\nImpersonate-User: admin'] }, 'group "dev\\r\\nImpersonate-User: admin" contains a control character'],
    ['a leading space', { user: ' admin', groups: [] }, 'user " admin" starts or ends with a space'],
  ] as Array<[string, Identity, string]>)('%s: 403 with the reason, for a request and for an upgrade; the tunnel stays', async (_what, identity, problem) => {
    const session = tunnel().session;
    const before = api.requests.length;
    // A Kubernetes Status, as the hub answers the same identity.
    const status = { kind: 'Status', status: 'Failure', code: 403, reason: 'Forbidden', message: `identity cannot be carried to the member cluster: ${problem}` };
    const answer = await get(identity);
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body)).toMatchObject(status);
    const raw = await upgrade(identity);
    expect(raw).toMatch(/^HTTP\/1\.1 403 .*\r\nContent-Type: application\/json\r\n/s);
    expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4))).toMatchObject(status);
    expect(api.requests.length).toBe(before);
    // Same tunnel, and it still carries requests.
    expect(tunnel().session).toBe(session);
    expect(session.closed).toBe(false);
    expect((await get({ user: 'alice', groups: ['开发'] })).status).toBe(200);
    expect(api.requests.at(-1)!.effectiveUser).toBe('alice');
  });
});
