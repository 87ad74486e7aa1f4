/**
 * The Konnectivity ProxyService end to end, driven by a client that is not
 * ours: Python grpcio (Debian's, run by /usr/bin/python3) compiling the
 * .proto at run time, dialing two member clusters through `kubetunnel
 * server`, with TLS inside each stream to the member's stand-in apiserver.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Member,
  type ServerProc,
  ROOT,
  cli,
  expectIdle,
  run,
  startMember as startMemberProc,
  startServerProc,
  stopMembers,
  tmpDir,
} from './harness.js';

const PYTHON = '/usr/bin/python3';
const CLIENT = path.join(ROOT, 'test/anp/proxy_client.py');
const PROTO = path.join(ROOT, 'packages/server/proto/konnectivity.proto');
const MEMBER_TOKEN = 'member-token';

let dir: string;
let certDir: string;
let server: ServerProc;
let grpcPort: number;
let uds: string;
const members = new Map<string, Member>();

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  uds = path.join(dir, 'konnectivity-server.sock');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'alice', '--group', 'developers');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 'hub-token,bob,2\n');
  server = await startServerProc(certDir, ['--grpc-port', '0', '--grpc-uds', uds, '--token-file', path.join(dir, 'tokens.csv')]);
  grpcPort = await server.proc.listenerPort('grpc');
  await server.proc.waitFor((l) => l.listener === 'grpc-uds', 'grpc-uds listener');
  for (const name of ['member-1', 'member-2'])
    members.set(name, await startMemberProc({ dir, certDir, server, name, tokens: { [MEMBER_TOKEN]: { user: 'alice', groups: [] } } }));
});

afterAll(async () => {
  await stopMembers(server, members.values());
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Answer {
  cluster: string;
  connectID: number;
  status: number;
  body: { gitVersion: string; cluster: string };
}

async function pythonClient(target: string[], clusters: string[]): Promise<Answer[]> {
  const memberCAs = clusters.filter((c) => members.has(c)).flatMap((c) => ['--member-ca', `${c}=${members.get(c)!.caFile}`]);
  const out = await run(PYTHON, [CLIENT, '--proto', PROTO, ...target, ...memberCAs, '--token', MEMBER_TOKEN, ...clusters]);
  return out.trim().split('\n').map((line) => JSON.parse(line) as Answer);
}

describe('Konnectivity ProxyService with a grpcio client', () => {
  it('over TLS with a client certificate: /version of two clusters through one channel, TLS end to end', async () => {
    const answers = await pythonClient(
      [
        '--target', `127.0.0.1:${grpcPort}`,
        '--ca', path.join(certDir, 'ca.crt'),
        '--cert', path.join(certDir, 'client-alice.crt'),
        '--key', path.join(certDir, 'client-alice.key'),
      ],
      ['member-1', 'member-2'],
    );
    expect(answers.map((a) => [a.cluster, a.status, a.body.cluster])).toEqual([
      ['member-1', 200, 'member-1'],
      ['member-2', 200, 'member-2'],
    ]);
    expect(answers[0]!.body.gitVersion).toBe('v1.32.0-standin+member-1');
    expect(answers[0]!.connectID).not.toBe(answers[1]!.connectID);
    await expectIdle(server.adminUrl);
    // The audit line of each connection names the user and the cluster.
    const closed = server.proc.lines.filter((l) => l.msg === 'gRPC connection closed' && l.user === 'alice');
    expect(closed.map((l) => l.cluster).sort()).toEqual(['member-1', 'member-2']);
  });

  it('over TLS with a bearer token in metadata instead of a certificate', async () => {
    const answers = await pythonClient(
      ['--target', `127.0.0.1:${grpcPort}`, '--ca', path.join(certDir, 'ca.crt'), '--hub-token', 'hub-token'],
      ['member-2'],
    );
    expect(answers.map((a) => [a.status, a.body.cluster])).toEqual([[200, 'member-2']]);
    await expectIdle(server.adminUrl);
  });

  it('over the Unix socket, as kube-apiserver\'s egress selector dials it', async () => {
    expect(fs.statSync(uds).mode & 0o777).toBe(0o600);
    const answers = await pythonClient(['--target', `unix:${uds}`], ['member-2', 'member-1']);
    expect(answers.map((a) => [a.cluster, a.status, a.body.cluster])).toEqual([
      ['member-2', 200, 'member-2'],
      ['member-1', 200, 'member-1'],
    ]);
    await expectIdle(server.adminUrl);
    expect(server.proc.lines.some((l) => l.msg === 'gRPC connection closed' && l.user === 'kube-apiserver' && l.via === 'uds')).toBe(true);
  });

  it('a refused dial reaches the grpcio client as a DIAL_RSP error naming the cluster', async () => {
    await expect(pythonClient(['--target', `unix:${uds}`], ['nowhere'])).rejects.toThrow(/dial refused: unknown cluster "nowhere"/);
  });
});
