/**
 * Joining with a token, end to end: `kubetunnel token create` makes a token,
 * a `kubetunnel agent` process with no certificate files joins with it
 * (--join-token, --ca-cert-hash, --state-dir), registers and serves kubectl;
 * tokens for another cluster, expired, revoked, altered or used up are
 * refused with their reason, and a wrong hub CA hash makes the agent refuse
 * the server.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { caCertHash } from '@kubetunnel/shared';
import {
  type LogLine,
  type Proc,
  type ServerProc,
  cli,
  createJoinToken,
  joinAgentProc,
  run,
  startServerProc,
  JOIN_MEMBER_TOKEN,
  type JoinHub,
  startJoinHub,
} from './harness.js';

let hub: JoinHub;
let dir: string;
let certDir: string;
let revocations: string;
let server: ServerProc;
let standins: JoinHub['standins'];
let agents: Proc[];

const registered = (cluster: string, agentId: string) => (l: LogLine) => l.msg === 'agent registered' && l.cluster === cluster && l.agentId === agentId;
const refusedJoin = (l: LogLine) => l.msg === 'join refused by the server';

function agent(o: Omit<Parameters<typeof joinAgentProc>[0], 'server' | 'apiserver'> & { apiserverOf?: string }): Proc {
  const p = joinAgentProc({ server, apiserver: standins.get(o.apiserverOf ?? o.cluster) ?? standins.get('member-a')!, ...o });
  agents.push(p);
  return p;
}

beforeAll(async () => {
  hub = await startJoinHub(['member-a', 'member-b']);
  ({ dir, certDir, revocations, server, standins, agents } = hub);
});

afterAll(() => hub?.close());

afterEach(() => hub.stopAgents());

describe('joining with a token', () => {
  it('a token from the CLI lets an agent with no certificate files join, register, and serve kubectl', async () => {
    const { token, hash, id } = await createJoinToken(certDir, 'member-a');
    expect(hash).toBe(caCertHash(fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8')));
    const stateDir = path.join(dir, 'state-a');
    const a = agent({ cluster: 'member-a', token, hash, stateDir });
    await server.proc.waitFor(registered('member-a', 'member-a-agent'), 'registration of the joined agent');
    expect(server.proc.lines.find((l) => l.msg === 'agent joined: certificate issued')).toMatchObject({ cluster: 'member-a', tokenId: id });

    // The key, the certificate and the hub CA are kept, mode 0600; the certificate is
    // bound to member-a, signed by the client CA (not the hub CA), for the key the agent made.
    for (const f of ['agent.key', 'agent.crt', 'hub-ca.crt']) expect(fs.statSync(path.join(stateDir, f)).mode & 0o777, f).toBe(0o600);
    const cert = new X509Certificate(fs.readFileSync(path.join(stateDir, 'agent.crt')));
    expect(cert.subjectAltName).toContain('URI:urn:kubetunnel:agent:member-a');
    expect(cert.verify(new X509Certificate(fs.readFileSync(path.join(certDir, 'client-ca.crt'))).publicKey)).toBe(true);
    expect(cert.verify(new X509Certificate(fs.readFileSync(path.join(certDir, 'ca.crt'))).publicKey)).toBe(false);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(new X509Certificate(fs.readFileSync(path.join(stateDir, 'hub-ca.crt'))).fingerprint256).toBe(new X509Certificate(fs.readFileSync(path.join(certDir, 'ca.crt'))).fingerprint256);
    // Default lifetime: 30 days.
    expect(Date.parse(cert.validTo) - Date.now()).toBeGreaterThan(29 * 24 * 3600 * 1000);
    // The token never reaches a log.
    expect(JSON.stringify([...server.proc.lines, ...a.lines])).not.toContain(token.split('.')[2]);

    const kubeconfig = path.join(dir, 'kubeconfig');
    await cli(
      'kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'),
      '--token', 'hub-token', '--member-token', JOIN_MEMBER_TOKEN, '--admin', server.adminUrl, '--clusters', 'member-a', '--out', kubeconfig,
    );
    const namespaces = await run('kubectl', ['--kubeconfig', kubeconfig, '--context', 'member-a', 'get', 'namespaces']);
    expect(namespaces).toMatch(/kube-system/);
    expect(await cli('status', '--admin', server.adminUrl)).toMatch(/member-a/);
  });

  it('after its token expired, a restarted agent connects with the certificate it kept', async () => {
    const { token, hash, expiresAt } = await createJoinToken(certDir, 'member-a', '--ttl', '4s');
    const stateDir = path.join(dir, 'state-restart');
    const first = agent({ cluster: 'member-a', token, hash, stateDir, agentId: 'restart-1' });
    await server.proc.waitFor(registered('member-a', 'restart-1'), 'registration');
    await first.stop();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, expiresAt - Date.now() + 100)));
    const second = agent({ cluster: 'member-a', token, hash, stateDir, agentId: 'restart-2' });
    await server.proc.waitFor(registered('member-a', 'restart-2'), 're-registration with the kept certificate');
    expect(second.count((l) => l.msg === 'using the stored agent certificate')).toBe(1);
    expect(second.count((l) => l.msg === 'joined: agent certificate issued')).toBe(0);
  });

  it('a token for cluster A cannot register cluster B', async () => {
    const { token, hash, id } = await createJoinToken(certDir, 'member-a');
    const b = agent({ cluster: 'member-b', token, hash, stateDir: path.join(dir, 'state-b') });
    const line = await b.waitFor(refusedJoin, 'the refusal');
    expect(line).toMatchObject({ status: 403, reason: 'TOKEN_WRONG_CLUSTER', err: `join token ${id} is for cluster member-a, not member-b` });
    expect(server.proc.count((l) => l.msg === 'agent registered' && l.cluster === 'member-b')).toBe(0);
    expect(fs.existsSync(path.join(dir, 'state-b', 'agent.crt'))).toBe(false);
  });

  it('an expired token is refused, with the time it expired', async () => {
    const { token, hash, expiresAt } = await createJoinToken(certDir, 'member-a', '--ttl', '1s');
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, expiresAt - Date.now() + 100)));
    const a = agent({ cluster: 'member-a', token, hash, stateDir: path.join(dir, 'state-expired') });
    expect(await a.waitFor(refusedJoin, 'the refusal')).toMatchObject({ status: 403, reason: 'TOKEN_EXPIRED', err: expect.stringMatching(/expired at \d{4}-/) });
  });

  it('a revoked token is refused once the revocation file names it', async () => {
    const { token, hash, id } = await createJoinToken(certDir, 'member-a');
    const loaded = server.proc.count((l) => l.msg === 'join token revocations loaded');
    fs.appendFileSync(revocations, `${id}\n`);
    await server.proc.waitFor((l) => l.msg === 'join token revocations loaded' && server.proc.count((m) => m.msg === 'join token revocations loaded') > loaded, 'the reload');
    const a = agent({ cluster: 'member-a', token, hash, stateDir: path.join(dir, 'state-revoked') });
    expect(await a.waitFor(refusedJoin, 'the refusal')).toMatchObject({ status: 403, reason: 'TOKEN_REVOKED', err: `join token ${id} has been revoked` });
  });

  it('an altered token is refused', async () => {
    const { token, hash } = await createJoinToken(certDir, 'member-a', '--uses', '1');
    const [h, p, s] = token.split('.') as [string, string, string];
    const claim = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const altered = `${h}.${Buffer.from(JSON.stringify({ ...claim, uses: 1000 })).toString('base64url')}.${s}`;
    const a = agent({ cluster: 'member-a', token: altered, hash, stateDir: path.join(dir, 'state-altered') });
    expect(await a.waitFor(refusedJoin, 'the refusal')).toMatchObject({ status: 401, reason: 'TOKEN_INVALID', err: expect.stringMatching(/signature does not verify/) });
  });

  it('a token used as often as it allows is refused to the next agent', async () => {
    const { token, hash, id } = await createJoinToken(certDir, 'member-a', '--uses', '1');
    agent({ cluster: 'member-a', token, hash, stateDir: path.join(dir, 'state-use-1'), agentId: 'use-1' });
    await server.proc.waitFor(registered('member-a', 'use-1'), 'the first agent');
    const second = agent({ cluster: 'member-a', token, hash, stateDir: path.join(dir, 'state-use-2'), agentId: 'use-2' });
    expect(await second.waitFor(refusedJoin, 'the refusal')).toMatchObject({
      status: 403,
      reason: 'TOKEN_USED_UP',
      err: `join token ${id} allows 1 join(s) per server and has been used 1 time(s) on this one`,
    });
  });

  it('a wrong --ca-cert-hash makes the agent refuse the server before it sends the token', async () => {
    const { token } = await createJoinToken(certDir, 'member-a');
    const wrong = caCertHash(fs.readFileSync(path.join(certDir, 'client-ca.crt'), 'utf8'));
    const joinedBefore = server.proc.count((l) => l.msg === 'agent joined: certificate issued' || l.msg === 'join refused');
    const a = agent({ cluster: 'member-a', token, hash: wrong, stateDir: path.join(dir, 'state-wrong-hash') });
    const line = await a.waitFor((l) => l.msg === 'join through this server failed', 'the refusal');
    expect(String(line.err)).toMatch(new RegExp(`presented no CA certificate with public-key hash ${wrong}`));
    await a.stop();
    expect(server.proc.count((l) => l.msg === 'agent joined: certificate issued' || l.msg === 'join refused')).toBe(joinedBefore);
  });

  it('a server without --client-ca-key takes no join: the agent says why', async () => {
    const plain = await startServerProc(certDir);
    try {
      const { token, hash } = await createJoinToken(certDir, 'member-a');
      const a = joinAgentProc({ server: plain, cluster: 'member-a', token, hash, stateDir: path.join(dir, 'state-plain'), apiserver: standins.get('member-a')! });
      agents.push(a);
      const line = await a.waitFor((l) => l.msg === 'join through this server failed', 'the refusal');
      expect(String(line.err)).toMatch(/does not accept join tokens \(start it with --client-ca-key\)/);
    } finally {
      for (const a of agents.splice(0)) await a.stop();
      await plain.proc.stop();
    }
  });
});
