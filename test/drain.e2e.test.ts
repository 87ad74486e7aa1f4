/**
 * SIGTERM on a server behind a load balancer: /readyz answers 503 at once,
 * the server keeps accepting for the shutdown delay (the balancer needs time
 * to notice), then refuses new connections and drains.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Member, type ServerProc, cli, rawConnect, startMember, startServerProc, stopMembers, tmpDir } from './harness.js';

let dir: string;
let certDir: string;
let server: ServerProc;
let member: Member;

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  fs.writeFileSync(path.join(dir, 'tokens.csv'), 't,alice,1\n');
  server = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv'), '--shutdown-delay', '3s']);
  member = await startMember({ dir, certDir, server, name: 'member-1', tokens: {} });
});

afterAll(async () => {
  await stopMembers(server, member ? [member] : []);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('readiness before drain', () => {
  it('SIGTERM: not ready at once, still serving during the shutdown delay, then no new connections', async () => {
    const ready = async () => (await fetch(`http://127.0.0.1:${server.health}/readyz`)).status;
    expect(await ready()).toBe(200);
    server.proc.child.kill('SIGTERM');
    await server.proc.waitFor((l) => l.msg === 'shutting down: not ready; serving on for the shutdown delay', 'the shutdown delay');
    expect(await ready()).toBe(503);
    // Still accepting and serving: a new CONNECT reaches the member.
    const hubCA = fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8');
    const r = await rawConnect(server.proxy, 'CONNECT member-1:443 HTTP/1.1\r\nHost: member-1:443\r\nProxy-Authorization: Bearer t\r\n\r\n', { ca: hubCA });
    expect(r.status).toBe(200);
    expect(server.proc.count((l) => typeof l.msg === 'string' && l.msg.startsWith('draining:'))).toBe(0);
    // Then the drain: new connections are refused, and the process exits cleanly.
    await server.proc.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('draining:'), 'the drain');
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect(server.proxy, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(false);
      });
      s.once('error', () => resolve(true));
    });
    expect(refused).toBe(true);
    expect(await server.proc.exited).toBe(0);
  });
});

describe('a log whose reader is gone', () => {
  it('SIGTERM still stops the server, with its exit status, when nothing reads its standard output', async () => {
    const s = await startServerProc(certDir, ['--token-file', path.join(dir, 'tokens.csv')]);
    // The reader of the log pipe goes away: the server's next writes fail (EPIPE).
    s.proc.child.stdout!.destroy();
    s.proc.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<'stuck'>((resolve) => (timer = setTimeout(() => resolve('stuck'), 20_000)));
    const code = await Promise.race([s.proc.exited, stuck]).finally(() => clearTimeout(timer));
    if (code === 'stuck') s.proc.child.kill('SIGKILL');
    expect(code).toBe(0);
  });
});
