/**
 * The trust model end to end: a hostile hub cannot pass for a member
 * apiserver to kubectl with the kubeconfig `kubetunnel kubeconfig` writes;
 * every listener keeps the TLS policy; a serving certificate never
 * authenticates at the frontend.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCA, issueServerCert, type Pem } from '@kubetunnel/shared';
import { forgeCert } from '../packages/shared/test/helpers.js';
import { type ServerProc, CLI, cli, execFileP, memberCertNames, rawConnect, startServerProc, tmpDir } from './harness.js';

const HUB_TOKEN = 'hub-token';
const MEMBER_TOKEN = 'member-token';

let dir: string;
let certDir: string;
const read = (f: string) => fs.readFileSync(path.join(certDir, f), 'utf8');

beforeAll(async () => {
  dir = tmpDir();
  certDir = path.join(dir, 'certs');
  await cli('certs', 'init', '--dir', certDir);
  await cli('certs', 'client', '--dir', certDir, '--user', 'alice');
  await cli('certs', 'agent', '--dir', certDir, '--cluster', 'member-1');
  fs.writeFileSync(path.join(dir, 'tokens.csv'), `${HUB_TOKEN},alice,1\n`);
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * A hostile hub: it holds the hub's certificate and the hub CA's key. It
 * answers CONNECT itself and, instead of relaying, terminates the inner TLS
 * with `inner`, hoping kubectl takes it for the member apiserver. It records
 * what it learns.
 */
class HostileHub {
  readonly server: https.Server;
  readonly sockets = new Set<Duplex>();
  /** CONNECTs answered, inner handshakes completed, and the Authorization headers decrypted. */
  readonly seen = { connects: 0, innerHandshakes: 0, innerErrors: [] as string[], authorizations: [] as string[] };

  constructor(inner: Pem) {
    this.server = https.createServer({ cert: read('server.crt'), key: read('server.key') });
    this.server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    this.server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
      this.seen.connects++;
      socket.on('error', () => {});
      socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
      const innerTls = new tls.TLSSocket(socket, { isServer: true, cert: inner.cert, key: inner.key, ALPNProtocols: ['http/1.1'] });
      this.sockets.add(innerTls);
      innerTls.once('close', () => this.sockets.delete(innerTls));
      innerTls.on('secure', () => this.seen.innerHandshakes++);
      innerTls.on('error', (err) => this.seen.innerErrors.push(err.message));
      let head = '';
      innerTls.setEncoding('utf8');
      innerTls.on('data', (c: string) => {
        head += c;
        for (const m of head.matchAll(/^authorization: *(.*)$/gim)) this.seen.authorizations.push(m[1]!.trim());
      });
    });
  }

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return (this.server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.server.close();
    await once(this.server, 'close');
  }
}

/** Runs kubectl to its end with stdin closed; its exit code and all it printed. */
async function kubectlOutcome(args: string[]): Promise<{ code: number; out: string }> {
  const child = spawn('kubectl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const [code] = (await once(child, 'exit')) as [number];
  return { code, out };
}

describe('a hostile hub cannot pass for a member apiserver', () => {
  let memberCAFile: string;
  let hubCA: Pem;
  beforeAll(() => {
    // The real member-1 CA: what the kubeconfig pins for member-1. The hostile hub does not have its key.
    const memberCA = createCA({ commonName: 'member-1 CA' });
    memberCAFile = path.join(dir, 'member-1-ca.crt');
    fs.writeFileSync(memberCAFile, memberCA.cert);
    hubCA = { cert: read('ca.crt'), key: read('ca.key') };
  });

  const users = {
    token: ['--token', HUB_TOKEN, '--member-token', MEMBER_TOKEN],
    certificate: ['--client-cert', path.join('CERTS', 'client-alice.crt'), '--client-key', path.join('CERTS', 'client-alice.key')],
  };
  const impostors: Record<string, { pem: () => Pem; error: RegExp }> = {
    // Signed by the hub CA for the member's names: the hub CA's name constraints forbid them.
    'a hub-CA certificate for kubernetes.default.svc and member-1': {
      pem: () => issueServerCert(hubCA, { sans: memberCertNames('member-1') }),
      error: /x509: a root or intermediate certificate is not authorized to sign for this name: DNS name "kubernetes.default.svc" is not permitted/,
    },
    // The hub's own certificate: it carries no member name.
    "the hub's own certificate": {
      pem: () => ({ cert: read('server.crt'), key: read('server.key') }),
      error: /x509: certificate is valid for localhost, \*\.clusters\.kubetunnel, not kubernetes\.default\.svc/,
    },
  };

  for (const [userKind, userArgs] of Object.entries(users))
    for (const [what, impostor] of Object.entries(impostors))
      it(`kubectl as a ${userKind} user refuses ${what}, and sends it nothing`, async () => {
        const hostile = new HostileHub(impostor.pem());
        const port = await hostile.listen();
        try {
          const file = path.join(dir, `kubeconfig-hostile-${userKind}`);
          await cli(
            'kubeconfig',
            '--server', `https://127.0.0.1:${port}`,
            '--ca', path.join(certDir, 'ca.crt'),
            ...userArgs.map((a) => a.replace('CERTS', certDir)),
            '--clusters', 'member-1',
            '--member-ca', `member-1=${memberCAFile}`,
            '--mode', 'connect',
            '--out', file,
          );
          const r = await kubectlOutcome(['--kubeconfig', file, '--context', 'member-1', '--request-timeout', '10s', 'get', '--raw', '/version']);
          expect(r.code).not.toBe(0);
          expect(r.out).toMatch(/Unable to connect to the server: tls: failed to verify certificate: x509: /);
          expect(r.out).toMatch(impostor.error);
          expect(hostile.seen.connects).toBeGreaterThan(0); // the proxy hop itself verified: the hub's own certificate and name
          expect(hostile.seen.innerHandshakes).toBe(0);
          expect(hostile.seen.authorizations).toEqual([]);
        } finally {
          await hostile.close();
        }
      });
});

/** openssl s_client against 127.0.0.1:port, trusting `certs`' hub CA; whether the handshake succeeded, and the protocol and cipher. */
async function sClient(certs: string, port: number, args: string[]): Promise<{ ok: boolean; out: string }> {
  const child = spawn(
    'openssl',
    ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-CAfile', path.join(certs, 'ca.crt'), '-verify_return_error', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const [code] = (await once(child, 'exit')) as [number];
  return { ok: code === 0 && /Verify return code: 0 \(ok\)/.test(out), out };
}

/**
 * The certificate directory with the server certificate's key of `kind`:
 * ECDSA as `certs init` writes it, or RSA 2048 as a user may bring (same hub
 * CA and names). A suite of TLS 1.2 names the key it signs with, so each
 * policy check needs both.
 */
function serverKeyDir(kind: 'ECDSA' | 'RSA'): string {
  if (kind === 'ECDSA') return certDir;
  const rsaDir = path.join(dir, 'certs-rsa-server');
  fs.cpSync(certDir, rsaDir, { recursive: true });
  const hubCA = { cert: fs.readFileSync(path.join(certDir, 'ca.crt'), 'utf8'), key: fs.readFileSync(path.join(certDir, 'ca.key'), 'utf8') };
  const rsa = forgeCert(hubCA, { commonName: 'localhost', serial: '0c', eku: { serverAuth: true }, altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] });
  fs.writeFileSync(path.join(rsaDir, 'server.crt'), rsa.cert);
  fs.writeFileSync(path.join(rsaDir, 'server.key'), rsa.key, { mode: 0o600 });
  return rsaDir;
}

describe.each(['ECDSA', 'RSA'] as const)('TLS policy of every listener, server key %s', (kind) => {
  let server: ServerProc;
  let certs: string;
  beforeAll(async () => {
    certs = serverKeyDir(kind);
    server = await startServerProc(certs, ['--token-file', path.join(dir, 'tokens.csv')]);
  });
  afterAll(async () => {
    await server.proc.stop();
  });

  const agentCert = () => ['-cert', path.join(certs, 'agent-member-1.crt'), '-key', path.join(certs, 'agent-member-1.key')];
  const listeners = [
    ['frontend', () => server.proxy],
    ['agent gateway', () => server.agent],
  ] as const;
  /** CBC suites of both kinds, with ECDHE and without: the policy refuses them, whatever the server's key. */
  const CBC = ['AES128-SHA', 'AES256-SHA256', 'ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA384', 'ECDHE-ECDSA-AES128-SHA', 'ECDHE-ECDSA-AES256-SHA384'];

  it.each(listeners)('%s: CBC suites (static RSA or ECDHE) and TLS 1.1 are refused; TLS 1.3 and ECDHE-GCM on 1.2 are accepted', async (_name, port) => {
    for (const cipher of CBC) {
      const r = await sClient(certs, port(), ['-tls1_2', '-cipher', cipher, ...agentCert()]);
      expect(r.ok, `${cipher} accepted:\n${r.out}`).toBe(false);
      expect(r.out).toMatch(/handshake failure|no cipher|alert/i);
    }
    expect((await sClient(certs, port(), ['-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0', ...agentCert()])).ok).toBe(false);
    const v13 = await sClient(certs, port(), ['-tls1_3', ...agentCert()]);
    expect(v13.ok, v13.out).toBe(true);
    expect(v13.out).toMatch(/New, TLSv1\.3, Cipher is TLS_AES_256_GCM_SHA384/);
    const v12 = await sClient(certs, port(), ['-tls1_2', '-cipher', `ECDHE-${kind}-AES128-GCM-SHA256`, ...agentCert()]);
    expect(v12.ok, v12.out).toBe(true);
    expect(v12.out).toMatch(new RegExp(`Cipher is ECDHE-${kind}-AES128-GCM-SHA256`));
    // Offered everything, the server picks TLS 1.3.
    expect((await sClient(certs, port(), agentCert())).out).toMatch(/New, TLSv1\.3,/);
  });

  it('the policy survives a certificate reload', async () => {
    const reloaded = server.proc.count((l) => l.msg === 'TLS certificate, key and CA reloaded');
    const later = new Date(Date.now() + 5000);
    fs.utimesSync(path.join(certs, 'server.crt'), later, later);
    let n = 0;
    await server.proc.waitFor((l) => l.msg === 'TLS certificate, key and CA reloaded' && ++n > reloaded, 'certificate reload');
    for (const [, port] of listeners) {
      expect((await sClient(certs, port(), ['-tls1_2', '-cipher', `ECDHE-${kind}-AES128-SHA`, ...agentCert()])).ok).toBe(false);
      expect((await sClient(certs, port(), ['-tls1_2', '-cipher', `ECDHE-${kind}-AES128-GCM-SHA256`, ...agentCert()])).ok).toBe(true);
      expect((await sClient(certs, port(), ['-tls1_3', ...agentCert()])).ok).toBe(true);
    }
  });
});

/** A serving certificate of the kind older versions issued: serverAuth and clientAuth, signed by `ca`. */
function olderServerCert(ca: Pem): Pem {
  return forgeCert(ca, {
    commonName: 'kubetunnel-server',
    serial: '0b',
    eku: { serverAuth: true, clientAuth: true },
    altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }],
  });
}

describe('one CA for everything (the older layout, --ca)', () => {
  let server: ServerProc;
  let oneDir: string;
  beforeAll(async () => {
    // The older layout: ca.crt/ca.key only; the harness starts the server with --ca ca.crt.
    oneDir = path.join(dir, 'one-ca');
    await cli('certs', 'init', '--dir', oneDir);
    for (const f of ['client-ca.crt', 'client-ca.key']) fs.rmSync(path.join(oneDir, f));
    const { stderr } = await execFileP(process.execPath, [CLI, 'certs', 'client', '--dir', oneDir, '--user', 'alice']);
    expect(stderr).toMatch(/^warning: one CA signs the server, agent and client certificates here/);
    server = await startServerProc(oneDir, ['--token-file', path.join(dir, 'tokens.csv')]);
  });
  afterAll(async () => {
    await server.proc.stop();
  });
  afterEach(() => expect(server.proc.child.exitCode).toBeNull());

  it('still works, and the server warns at start', async () => {
    const warn = await server.proc.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('the client CA also signed the server certificate'), 'one-CA warning');
    expect(warn.level).toBe(40);
    const ca = fs.readFileSync(path.join(oneDir, 'ca.crt'), 'utf8');
    const alice = { ca, cert: fs.readFileSync(path.join(oneDir, 'client-alice.crt'), 'utf8'), key: fs.readFileSync(path.join(oneDir, 'client-alice.key'), 'utf8') };
    // alice's certificate authenticates (404: no such cluster, after authentication).
    const r = await rawConnect(server.proxy, 'CONNECT member-9:443 HTTP/1.1\r\nHost: member-9:443\r\nX-Cluster-Name: member-9\r\n\r\n', alice);
    expect(r.status).toBe(404);
  });

  it("the server's own certificate, or an older one with clientAuth, is refused at the frontend: 407", async () => {
    const ca = { cert: fs.readFileSync(path.join(oneDir, 'ca.crt'), 'utf8'), key: fs.readFileSync(path.join(oneDir, 'ca.key'), 'utf8') };
    const own = { ca: ca.cert, cert: fs.readFileSync(path.join(oneDir, 'server.crt'), 'utf8'), key: fs.readFileSync(path.join(oneDir, 'server.key'), 'utf8') };
    const older = { ca: ca.cert, ...olderServerCert(ca) };
    for (const id of [own, older]) {
      const r = await rawConnect(server.proxy, 'CONNECT member-9:443 HTTP/1.1\r\nHost: member-9:443\r\nX-Cluster-Name: member-9\r\n\r\n', id);
      expect(r.status).toBe(407);
      expect(r.head).toMatch(/\r\nProxy-Authenticate: Basic realm="kubetunnel"/);
    }
    const r = await rawConnect(server.proxy, 'CONNECT member-9:443 HTTP/1.1\r\nHost: member-9:443\r\nX-Cluster-Name: member-9\r\n\r\n', older);
    expect(r.body).toMatch(/not a client certificate .*serving certificates/);
  });
});
