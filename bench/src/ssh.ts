/**
 * The baseline reverse tunnel: OpenSSH. Starts sshd on a loopback port with
 * a throwaway host key and config, and `ssh -N -R` connections from the
 * "agent side", each forwarding one loopback port to the upstream.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort, start, stop } from './procs.js';

export interface Ssh {
  /** Loopback ports that reach the upstream, one per ssh connection. */
  ports: number[];
  version: string;
  stop(): Promise<void>;
}

const SSHD = '/usr/sbin/sshd';

async function listening(port: number, deadline: number): Promise<void> {
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startSsh(dir: string, upstreamPort: number, remotePorts: number[]): Promise<Ssh> {
  if (!fs.existsSync(SSHD)) throw new Error(`${SSHD} not installed (bench/setup.sh installs openssh-server)`);
  const d = path.join(dir, 'ssh');
  fs.mkdirSync(d, { mode: 0o700 });
  fs.mkdirSync('/run/sshd', { recursive: true });
  for (const k of ['host', 'client']) spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(d, k)]);
  fs.copyFileSync(path.join(d, 'client.pub'), path.join(d, 'authorized_keys'));
  const sshdPort = await freePort();
  fs.writeFileSync(
    path.join(d, 'sshd_config'),
    [
      `Port ${sshdPort}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${path.join(d, 'host')}`,
      `AuthorizedKeysFile ${path.join(d, 'authorized_keys')}`,
      'PermitRootLogin yes',
      'StrictModes no',
      'UsePAM no',
      `PidFile ${path.join(d, 'sshd.pid')}`,
      '',
    ].join('\n'),
  );
  const procs: ChildProcess[] = [];
  const stopSsh = async () => {
    // The clients first: their sessions end, then the listening sshd.
    await Promise.all(procs.slice(1).map((p) => stop(p)));
    if (procs[0]) await stop(procs[0]);
  };
  try {
    procs.push(start(SSHD, ['-D', '-e', '-f', path.join(d, 'sshd_config')], { node: false }));
    const deadline = Date.now() + 10_000;
    await listening(sshdPort, deadline);
    for (const rport of remotePorts) {
      procs.push(
        start('ssh', [
          '-N', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
          '-i', path.join(d, 'client'), '-p', String(sshdPort),
          '-R', `127.0.0.1:${rport}:127.0.0.1:${upstreamPort}`, 'root@127.0.0.1',
        ], { node: false }),
      );
      await listening(rport, deadline);
    }
  } catch (err) {
    await stopSsh();
    throw err;
  }
  const version = spawnSync('ssh', ['-V'], { encoding: 'utf8' }).stderr.trim();
  return { ports: remotePorts, version, stop: stopSsh };
}
