/**
 * Faults end to end: an agent killed mid-download, a cluster with no live
 * agent, and a server restart, with real processes and real kubectl.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Member, type ServerProc, cli, expectIdle, rawConnect, run, startAgentProc, startMember as startMemberProc, startServerProc, stopMembers, tmpDir } from './harness.js';

const MEMBER_TOKEN = 'member-token';
let dir: string;
let certDir: string;
let server: ServerProc;
let hubCA: string;
const members = new Map<string, Member>();

async function startMember(name: string): Promise<void> {
  members.set(name, await startMemberProc({ dir, certDir, server, name, tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: ['developers'] } } }));
}

async function restartAgent(name: string): Promise<void> {
  const m = members.get(name)!;
  m.agent = await startAgentProc(certDir, server, name, m.apiserver.url, m.caFile);
}

let kubeconfigFile: string;
const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', kubeconfigFile, ...args]);
const version = async (cluster: string) => (JSON.parse(await kubectl('--context', cluster, 'get', '--raw', '/version')) as { cluster: string }).cluster;

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'good-token,alice,1,"developers"\n');
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  await startMember('member-1');
  await startMember('member-2');
  kubeconfigFile = path.join(dir, 'kubeconfig');
  await cli(
    'kubeconfig', '--server', `https://127.0.0.1:${server.proxy}`, '--ca', path.join(certDir, 'ca.crt'),
    '--token', 'good-token', '--member-token', MEMBER_TOKEN, '--admin', server.adminUrl, '--out', kubeconfigFile,
  );
});

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

afterEach(() => expectIdle(server.adminUrl));

describe('faults', () => {
  it('kill -9 of an agent mid-download closes the client within 2 s; the other cluster is unaffected; a restarted agent serves again', async () => {
    const watch = spawn('kubectl', ['--kubeconfig', kubeconfigFile, '--context', 'member-1', 'get', '--raw', '/api/v1/namespaces?watch=1']);
    let out = '';
    await new Promise<void>((resolve) => {
      watch.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('kube-system')) resolve();
      });
    });
    const exited = new Promise<number>((resolve) => watch.once('exit', () => resolve(performance.now())));
    const killedAt = performance.now();
    await members.get('member-1')!.agent.stop('SIGKILL');
    const closedAt = await exited;
    expect(closedAt - killedAt).toBeLessThan(2000);

    expect(await version('member-2')).toBe('member-2');

    // member-1 is known but has no live agent: 503 at once, with Retry-After.
    const started = performance.now();
    const r = await rawConnect(
      server.proxy,
      'CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer good-token\r\n\r\n',
      { ca: hubCA },
    );
    expect(r.status).toBe(503);
    expect(r.head).toMatch(/\r\nRetry-After: \d+/);
    expect(r.body).toMatch(/has no live agent/);
    expect(performance.now() - started).toBeLessThan(1000);

    await restartAgent('member-1');
    expect(await version('member-1')).toBe('member-1');
  });

  it('a server restart: agents reconnect on their own and traffic resumes', async () => {
    const ports = { proxy: server.proxy, agent: server.agent, health: server.health, admin: server.admin };
    await server.proc.stop();
    server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')], ports);
    await Promise.all(
      ['member-1', 'member-2'].map((name) =>
        server.proc.waitFor((l) => l.msg === 'agent registered' && l.cluster === name, `re-registration of ${name}`),
      ),
    );
    expect(await version('member-1')).toBe('member-1');
    expect(await version('member-2')).toBe('member-2');
  });
});
