/**
 * docker-compose.yml, the Dockerfile and the Kubernetes manifests cannot be
 * run here (no container engine); this checks that they parse and that every
 * command line in them is one the CLI accepts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ROOT, cli } from './harness.js';

const helpCache = new Map<string, string>();
async function flagsOf(sub: string): Promise<Set<string>> {
  if (!helpCache.has(sub)) helpCache.set(sub, await cli(sub, '--help'));
  return new Set([...helpCache.get(sub)!.matchAll(/--([a-z][a-z0-9-]*)/g)].map((m) => m[1]!));
}

/** Checks one `kubetunnel` argument list: a known subcommand and known flags. */
async function checkArgs(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const flags = await flagsOf(sub!);
  for (const a of rest) {
    const m = /^--([a-z0-9-]+)(=|$)/.exec(a);
    if (m) expect(flags, `${sub} --${m[1]}`).toContain(m[1]);
  }
}

describe('packaging', () => {
  it('docker-compose.yml: every service runs a real subcommand with real flags', async () => {
    const doc = parseYaml(fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
      services: Record<string, { command: string[]; depends_on?: string[] }>;
    };
    const names = Object.keys(doc.services);
    expect(names).toEqual(expect.arrayContaining(['server', 'agent-member-1', 'agent-member-2', 'member-1-apiserver', 'member-2-apiserver']));
    for (const [name, svc] of Object.entries(doc.services)) {
      await checkArgs(svc.command);
      for (const dep of svc.depends_on ?? []) expect(names, `${name} depends on ${dep}`).toContain(dep);
    }
  });

  it('deploy/*.yaml: the manifests parse and their args are real flags', async () => {
    for (const file of ['server.yaml', 'agent.yaml']) {
      const docs = parseAllDocuments(fs.readFileSync(path.join(ROOT, 'deploy', file), 'utf8')).map((d) => d.toJSON());
      for (const d of docs) expect(d).toHaveProperty('kind');
      const deployment = docs.find((d) => d.kind === 'Deployment');
      await checkArgs(deployment.spec.template.spec.containers[0].args);
    }
  });

  it('Dockerfile: builds with npm ci and runs the CLI', () => {
    const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    expect(text).toMatch(/RUN npm ci .*&& npm run build/);
    expect(text).toMatch(/ENTRYPOINT \[.*packages\/cli\/bin\/kubetunnel\.js"\]/);
  });
});
