/**
 * Agent certificate rotation end to end, with certificates that live a few
 * seconds (--agent-cert-ttl): an agent that joined renews over its tunnel at
 * two thirds of the lifetime while a watch and a 100 MB download run through
 * that tunnel, and both finish whole; an agent whose renewal is refused
 * (its join token revoked) serves on until its certificate expires, is then
 * disconnected by the server, and says why in its log.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type LogLine,
  type Proc,
  type ServerProc,
  cli,
  createJoinToken,
  joinAgentProc,
  run,
  JOIN_MEMBER_TOKEN,
  type JoinHub,
  startJoinHub,
} from './harness.js';

/** Agent certificates live this long here: renewal comes 6 s after each issuing. */
const TTL = '9s';
const DOWNLOAD = 100_000_000;
let hub: JoinHub;
let dir: string;
let certDir: string;
let revocations: string;
let server: ServerProc;
let kubeconfig: string;
let standins: JoinHub['standins'];
let agents: Proc[];

const renewedOnAgent = (l: LogLine) => l.msg === 'agent certificate renewed';

async function joinedAgent(cluster: string): Promise<{ agent: Proc; tokenId: string }> {
  const { token, hash, id } = await createJoinToken(certDir, cluster);
  const agent = joinAgentProc({ server, cluster, token, hash, stateDir: path.join(dir, `state-${cluster}`), apiserver: standins.get(cluster)! });
  agents.push(agent);
  await server.proc.waitFor((l) => l.msg === 'agent registered' && l.cluster === cluster, `registration of ${cluster}`);
  return { agent, tokenId: id };
}

/** The SHA-256 of the stand-in's /standin/bytes/N answer (byte i is i mod 251). */
function expectedDigest(n: number): string {
  const unit = Buffer.alloc(251 * 4096);
  for (let i = 0; i < unit.length; i++) unit[i] = i % 251;
  const h = createHash('sha256');
  for (let left = n; left > 0; left -= unit.length) h.update(left >= unit.length ? unit : unit.subarray(0, left));
  return h.digest('hex');
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
  const m = new RegExp(`^${name}\\{${labels}\\} (\\d+)$`, 'm').exec(text);
  return Number(m?.[1] ?? 0);
}

beforeAll(async () => {
  hub = await startJoinHub(['member-r', 'member-s'], ['--agent-cert-ttl', TTL]);
  ({ dir, certDir, revocations, server, standins, agents } = hub);
});

afterAll(() => hub?.close());

afterEach(() => hub.stopAgents());

async function writeKubeconfig(cluster: string): Promise<string> {
  kubeconfig = path.join(dir, `kubeconfig-${cluster}`);
  await cli(
    'kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'),
    '--token', 'hub-token', '--member-token', JOIN_MEMBER_TOKEN, '--admin', server.adminUrl, '--clusters', cluster, '--out', kubeconfig,
  );
  return kubeconfig;
}

describe('agent certificate rotation', () => {
  it('the agent renews twice during an open watch and a 100 MB download over the same tunnel; both finish whole', async () => {
    const { agent } = await joinedAgent('member-r');
    const kc = await writeKubeconfig('member-r');
    const sessions = () => server.proc.count((l) => l.msg === 'agent registered' && l.cluster === 'member-r');
    expect(sessions()).toBe(1);

    // The watch ends by itself (timeoutSeconds), after the renewals.
    const watch = spawn('kubectl', ['--kubeconfig', kc, '--context', 'member-r', 'get', '--raw', '/api/v1/namespaces?watch=1&timeoutSeconds=25']);
    let watched = '';
    watch.stdout.setEncoding('utf8').on('data', (c: string) => (watched += c));
    const watchExit = once(watch, 'exit');

    // The download is held to 5 MB/s, so it spans at least two renewals (one every 6 s).
    const curl = spawn('curl', [
      '-sS', '--fail', '--limit-rate', '5M',
      '--proxy', `https://127.0.0.1:${server.proxy}`,
      '--proxy-cacert', path.join(certDir, 'ca.crt'),
      '--proxy-header', 'X-Cluster-Name: member-r',
      '--proxy-user', 'alice:hub-token',
      '--cacert', standins.get('member-r')!.caFile,
      '-H', `Authorization: Bearer ${JOIN_MEMBER_TOKEN}`,
      `https://kubernetes.default.svc/standin/bytes/${DOWNLOAD}`,
    ]);
    const digest = createHash('sha256');
    let bytes = 0;
    curl.stdout.on('data', (c: Buffer) => {
      bytes += c.length;
      digest.update(c);
    });
    let curlErr = '';
    curl.stderr.setEncoding('utf8').on('data', (c: string) => (curlErr += c));
    const curlExit = once(curl, 'exit');
    const renewalsAtStart = agent.count(renewedOnAgent);

    // Two renewals while both run.
    let n = 0;
    await agent.waitFor((l) => renewedOnAgent(l) && ++n >= 2 - renewalsAtStart, 'two renewals');
    expect(curl.exitCode, `the download ended before the second renewal: ${curlErr}`).toBeNull();
    expect(watch.exitCode, 'the watch ended before the second renewal').toBeNull();

    // The watch still delivers events after them.
    await run('kubectl', ['--kubeconfig', kc, '--context', 'member-r', 'create', 'namespace', 'after-renewals']);
    const [curlCode] = await curlExit;
    const [watchCode] = await watchExit;
    expect(curlCode, curlErr).toBe(0);
    expect(bytes).toBe(DOWNLOAD);
    expect(digest.digest('hex')).toBe(expectedDigest(DOWNLOAD));
    expect(watchCode).toBe(0);
    const events = watched.trim().split('\n').map((l) => JSON.parse(l) as { type: string; object: { metadata: { name: string } } });
    expect(events.map((e) => `${e.type} ${e.object.metadata.name}`)).toEqual(expect.arrayContaining(['ADDED kube-system', 'ADDED default', 'ADDED after-renewals']));

    // One tunnel throughout: renewed in place, never dropped; every renewal came from the server.
    expect(sessions()).toBe(1);
    expect(server.proc.count((l) => l.msg === 'agent disconnected' && l.cluster === 'member-r')).toBe(0);
    expect(server.proc.count((l) => l.msg === 'agent certificate renewed' && l.cluster === 'member-r')).toBeGreaterThanOrEqual(2);
    // The renewed certificate is kept for a restart.
    expect(fs.statSync(path.join(dir, 'state-member-r', 'agent.crt')).mode & 0o777).toBe(0o600);
  });

  it('an agent whose renewal is refused serves on until its certificate expires, is then disconnected, and says why', async () => {
    const expiredBefore = await metric('kubetunnel_agent_disconnects_total', 'reason="CERT_EXPIRED"');
    const { agent, tokenId } = await joinedAgent('member-s');
    const kc = await writeKubeconfig('member-s');
    const loaded = server.proc.count((l) => l.msg === 'join token revocations loaded');
    fs.appendFileSync(revocations, `${tokenId}\n`);
    await server.proc.waitFor(() => server.proc.count((l) => l.msg === 'join token revocations loaded') > loaded, 'the revocation reload');

    const refused = await agent.waitFor((l) => l.msg === 'certificate renewal refused: serving on until the certificate expires', 'the refused renewal');
    expect(refused.refusals).toEqual([expect.objectContaining({ reason: 'TOKEN_REVOKED', err: expect.stringContaining(`join token ${tokenId}, which has been revoked`) })]);
    // Still serving before expiry.
    const version = JSON.parse(await run('kubectl', ['--kubeconfig', kc, '--context', 'member-s', 'get', '--raw', '/version'])) as { cluster: string };
    expect(version.cluster).toBe('member-s');

    // At expiry, the server closes the tunnel with the reason, and counts it.
    const gone = await server.proc.waitFor((l) => l.msg === 'agent disconnected' && l.cluster === 'member-s', 'the disconnection');
    expect(gone.reason).toBe('CERT_EXPIRED');
    expect(await metric('kubetunnel_agent_disconnects_total', 'reason="CERT_EXPIRED"')).toBe(expiredBefore + 1);
    // The agent says why: its certificate expired without renewal (and the renewal's refusal), and the tunnel's close reason.
    const expired = await agent.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('agent certificate expired at'), 'the expiry line');
    expect(expired.msg).toMatch(/without renewal \(TOKEN_REVOKED: /);
    const down = await agent.waitFor((l) => l.msg === 'tunnel down', 'the tunnel down line');
    expect(String(down.reason)).toMatch(/4401 agent certificate expired at/);
    // The expired certificate no longer registers anywhere.
    expect(await agent.waitFor((l) => l.msg === 'server refused registration', 'the refused registration')).toMatchObject({ status: 401, reason: 'the agent certificate has expired' });
    expect(server.proc.count((l) => l.msg === 'agent registered' && l.cluster === 'member-s')).toBe(1);
    // Joining again with the revoked token is refused too.
    expect(await agent.waitFor((l) => l.msg === 'join refused by the server', 'the refused re-join')).toMatchObject({ status: 403, reason: 'TOKEN_REVOKED' });
  });
});
