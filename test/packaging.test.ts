/**
 * docker-compose.yml and the Dockerfile cannot be run here (no container
 * engine); this checks that they parse, that every command line in them is
 * one the CLI accepts, that `docker compose up` needs nothing from the host
 * (the init service makes every file the others read, here for real), and
 * that the image holds what the services run. deploy/ has its own test
 * (deploy.test.ts).
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { argProblems } from './cli-flags.js';
import { ROOT, run, tmpDir } from './harness.js';

interface Service {
  command: string[];
  entrypoint?: string[];
  user?: string;
  profiles?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
}

const compose = parseYaml(fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
};
const dockerfile = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
const INIT_SCRIPT = 'deploy/compose/init.mjs';
const init = (await import(path.join(ROOT, INIT_SCRIPT))) as {
  steps: (dir: string) => string[][];
  outputs: (dir: string) => string[];
  init: (dir: string, owner?: number) => void;
};

/** The services that run kubetunnel (all but init, which runs its script). */
const kubetunnelServices = () => Object.entries(compose.services).filter(([, s]) => s.entrypoint === undefined);

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('packaging', () => {
  it('docker-compose.yml: every service runs a real subcommand with real flags, after init', async () => {
    const names = Object.keys(compose.services);
    expect(names).toEqual(expect.arrayContaining(['init', 'server', 'agent-member-1', 'agent-member-2', 'member-1-apiserver', 'member-2-apiserver']));
    for (const [name, svc] of kubetunnelServices()) {
      expect(await argProblems(svc.command), name).toEqual([]);
      expect(svc.depends_on?.init, `${name} waits for init`).toEqual({ condition: 'service_completed_successfully' });
      for (const [dep, how] of Object.entries(svc.depends_on ?? {})) {
        expect(names, `${name} depends on ${dep}`).toContain(dep);
        expect(['service_started', 'service_healthy', 'service_completed_successfully']).toContain(how.condition);
      }
      expect(svc.volumes, `${name} mounts the certs volume read-only`).toEqual(['certs:/certs:ro']);
    }
    expect(compose.volumes).toHaveProperty('certs');
  });

  it('docker-compose.yml: init runs the image\'s node on a script the image holds, and its steps are real commands', async () => {
    const svc = compose.services.init!;
    // The runtime image is distroless: no shell, so no `sh -c` anywhere.
    expect(dockerfile).toMatch(/^FROM gcr\.io\/distroless\/nodejs20-debian12:nonroot$/m);
    for (const s of Object.values(compose.services)) expect([...(s.entrypoint ?? []), ...s.command].join(' ')).not.toMatch(/\b(sh|bash)\b/);
    expect(svc.entrypoint).toEqual(['/nodejs/bin/node', INIT_SCRIPT]);
    expect(dockerfile).toContain(`COPY ${INIT_SCRIPT} ./${INIT_SCRIPT}`);
    expect(dockerfile).toMatch(/^WORKDIR \/app$/m);
    expect(svc.volumes).toEqual(['certs:/certs']);
    expect(svc.command).toEqual(['--dir', '/certs', '--owner', '65532']);
    expect(dockerfile).toMatch(/^USER 65532$/m);
    for (const step of init.steps('/certs')) expect(await argProblems(step), step.join(' ')).toEqual([]);
  });

  it('docker-compose.yml: init makes every file the services read, and a second run keeps them', async () => {
    const dir = tmpDir('kubetunnel-compose-');
    dirs.push(dir);
    const certs = path.join(dir, 'certs');
    // As the service runs it, in a process of its own.
    await run(process.execPath, [path.join(ROOT, INIT_SCRIPT), '--dir', certs]);
    for (const f of init.outputs(certs)) expect(fs.existsSync(f), f).toBe(true);
    const read = Object.values(compose.services)
      .flatMap((s) => s.command)
      .flatMap((a) => [.../(\/certs\/[^\s,=]+)/.exec(a)?.slice(1) ?? []]);
    expect(read.length).toBeGreaterThan(10);
    for (const f of read) expect(fs.existsSync(path.join(dir, f)), `${f} made by init`).toBe(true);
    const tokens = fs.readFileSync(path.join(certs, 'tokens.csv'), 'utf8');
    const memberTokens = fs.readFileSync(path.join(certs, 'member-tokens.csv'), 'utf8');
    expect(tokens.split(',')[0]).not.toBe(memberTokens.split(',')[0]);
    for (const s of kubetunnelServices())
      for (const a of s[1].command) {
        const token = /^--(?:token|member-token)=(.+)$/.exec(a)?.[1];
        if (token) expect(tokens + memberTokens, a).toContain(`${token},`);
      }

    // Each certificate carries the name it is reached by in the compose network.
    const names = (f: string) => new X509Certificate(fs.readFileSync(path.join(dir, f))).subjectAltName ?? '';
    for (const [, s] of kubetunnelServices())
      for (const a of s.command) {
        const host = /^--(?:server|apiserver)=(?:wss|https):\/\/([^:/]+)/.exec(a)?.[1];
        if (!host) continue;
        const cert = a.startsWith('--server=') ? '/certs/server.crt' : `/certs/${/^(member-\d+)-apiserver$/.exec(host)![1]}/apiserver.crt`;
        expect(names(cert).split(', '), `${cert} for ${a}`).toContain(isIP(host) ? `IP Address:${host}` : `DNS:${host}`);
      }

    const ca = fs.readFileSync(path.join(certs, 'ca.crt'), 'utf8');
    const out = await run(process.execPath, [path.join(ROOT, INIT_SCRIPT), '--dir', certs]);
    expect(out).toMatch(/already there, kept/);
    expect(fs.readFileSync(path.join(certs, 'ca.crt'), 'utf8')).toBe(ca);
  });

  it('Dockerfile: builds with npm ci from the lock file, copies only what exists, runs the CLI', () => {
    expect(dockerfile).toMatch(/RUN npm ci .*&& npm run build && npm prune --omit=dev/);
    expect(dockerfile).toMatch(/ENTRYPOINT \["\/nodejs\/bin\/node", "packages\/cli\/bin\/kubetunnel\.js"\]/);
    const ignored = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) (\S+)$/gm))
      for (const src of m[1]!.split(/\s+/)) {
        expect(fs.existsSync(path.join(ROOT, src)), `COPY ${src}`).toBe(true);
        expect(ignored, `${src} is not in .dockerignore`).not.toContain(src);
      }
    // The build context never carries what the host built or installed.
    expect(ignored).toEqual(expect.arrayContaining(['**/node_modules', '**/dist', '.git']));
  });
});
