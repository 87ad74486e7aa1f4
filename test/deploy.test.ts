/**
 * deploy/: every kustomization renders with the real kubectl (offline), every
 * object it yields is valid against the Kubernetes API schemas (types and
 * required fields from kubernetes-models, unknown fields from the API
 * models of @kubernetes/client-node, as an apiserver with strict field
 * validation refuses them), and every kubetunnel command line, flag and
 * KUBETUNNEL_* variable in them is one the CLI defines. Then the properties
 * the manifests promise: the agent as a DaemonSet on control-plane nodes and
 * the same pod as a Deployment, impersonation limited by name, admin kept
 * inside, --server-count equal to replicas.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { argProblems, flagOfEnv, flagsOf } from './cli-flags.js';
import { ROOT, run } from './harness.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;

const DEPLOY = path.join(ROOT, 'deploy');
const dirsUnder = (sub: string) =>
  fs
    .readdirSync(path.join(DEPLOY, sub), { withFileTypes: true })
    .filter((d) => d.isDirectory() && fs.existsSync(path.join(DEPLOY, sub, d.name, 'kustomization.yaml')))
    .map((d) => `${sub}/${d.name}`);
const OVERLAYS = dirsUnder('overlays');
const KUSTOMIZATIONS = [...dirsUnder('base'), ...OVERLAYS];

/** `kubectl kustomize DIR`, parsed. */
async function render(dir: string): Promise<Obj[]> {
  const out = await run('kubectl', ['kustomize', path.join(DEPLOY, dir)]);
  return parseAllDocuments(out).map((d) => {
    if (d.errors.length > 0) throw new Error(`${dir}: ${d.errors[0]!.message}`);
    return d.toJSON() as Obj;
  });
}

const rendered = new Map<string, Promise<Obj[]>>();
const renderOnce = (dir: string) => {
  if (!rendered.has(dir)) rendered.set(dir, render(dir));
  return rendered.get(dir)!;
};

/** Schema problems of one object: kubernetes-models' validation (types, required fields, formats). */
async function schemaProblems(obj: Obj): Promise<string[]> {
  const where = `${obj.kind}/${obj.metadata?.name}`;
  let mod: Obj;
  try {
    mod = (await import(`kubernetes-models/${obj.apiVersion}`)) as Obj;
  } catch {
    return [`${where}: unknown apiVersion ${obj.apiVersion}`];
  }
  const Model = mod[obj.kind];
  if (typeof Model !== 'function') return [`${where}: unknown kind ${obj.kind} in ${obj.apiVersion}`];
  try {
    new Model(obj).validate();
    return [];
  } catch (err) {
    return [`${where}: ${(err as Error).message}`];
  }
}

/**
 * Fields no API type defines (a misspelt or misplaced key, which kubectl
 * --validate=strict and the apiserver refuse): walked with the attribute
 * maps of client-node's generated API models (V1Deployment, ...).
 */
function unknownFields(value: unknown, type: string, at: string): string[] {
  if (value === null || value === undefined) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array) return Array.isArray(value) ? value.flatMap((v, i) => unknownFields(v, array[1]!, `${at}[${i}]`)) : [];
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) return Object.entries(value as Obj).flatMap(([k, v]) => unknownFields(v, map[1]!, `${at}.${k}`));
  const model = (k8s as unknown as Record<string, { getAttributeTypeMap?: () => Array<{ baseName: string; type: string }> }>)[type];
  if (!model?.getAttributeTypeMap || typeof value !== 'object') return [];
  const attrs = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  return Object.entries(value as Obj).flatMap(([k, v]) =>
    attrs.has(k) ? unknownFields(v, attrs.get(k)!, `${at}.${k}`) : [`${at}.${k}: no such field in ${type}`],
  );
}

function modelType(obj: Obj): string {
  const version = String(obj.apiVersion).split('/').pop()!;
  return `${version.charAt(0).toUpperCase()}${version.slice(1)}${obj.kind}`;
}

/** Everything wrong with one rendered object, schema-wise. */
async function objectProblems(obj: Obj): Promise<string[]> {
  const type = modelType(obj);
  const known = typeof (k8s as unknown as Obj)[type]?.getAttributeTypeMap === 'function';
  return [
    ...(await schemaProblems(obj)),
    ...(known ? unknownFields(obj, type, `${obj.kind}/${obj.metadata?.name}`) : [`${obj.kind}: no API model ${type}`]),
  ];
}

/** Variables that are not flags (docs: KUBETUNNEL_GC_TUNING=off keeps V8's defaults). */
const NON_FLAG_VARIABLES = new Set(['KUBETUNNEL_GC_TUNING']);

/** kubetunnel containers of a rendered set: their command lines and the KUBETUNNEL_* variables they get. */
function kubetunnelContainers(objs: Obj[]): Array<{ where: string; args: string[]; variables: string[] }> {
  const configMaps = new Map(objs.filter((o) => o.kind === 'ConfigMap').map((o) => [o.metadata.name as string, (o.data ?? {}) as Obj]));
  return objs
    .filter((o) => o.spec?.template?.spec?.containers)
    .flatMap((o) =>
      (o.spec.template.spec.containers as Obj[])
        .filter((c) => String(c.image).includes('kubetunnel'))
        .map((c) => ({
          where: `${o.kind}/${o.metadata.name}/${c.name}`,
          args: [...(c.command ?? []), ...(c.args ?? [])] as string[],
          variables: [
            ...((c.env ?? []) as Obj[]).map((e) => e.name as string),
            ...((c.envFrom ?? []) as Obj[]).flatMap((f) => Object.keys(configMaps.get(f.configMapRef?.name) ?? {})),
          ].filter((n) => n.startsWith('KUBETUNNEL_')),
        })),
    );
}

/** Everything wrong with the kubetunnel command lines of a rendered set. */
async function flagProblems(objs: Obj[]): Promise<string[]> {
  const problems: string[] = [];
  for (const c of kubetunnelContainers(objs)) {
    problems.push(...(await argProblems(c.args)).map((p) => `${c.where}: ${p}`));
    const flags = await flagsOf(c.args[0]!);
    for (const v of c.variables)
      if (!NON_FLAG_VARIABLES.has(v) && !flags.has(flagOfEnv(v)!)) problems.push(`${c.where}: ${v} sets no flag of kubetunnel ${c.args[0]}`);
  }
  return problems;
}

const byKind = (objs: Obj[], kind: string, name?: string) => objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));

describe('deploy/', () => {
  it('has the overlays the README names', () => {
    expect(OVERLAYS).toEqual(expect.arrayContaining(['overlays/hub', 'overlays/agent-daemonset', 'overlays/agent-deployment', 'overlays/agent-join']));
  });

  it.each(KUSTOMIZATIONS)('%s renders with kubectl kustomize and every object is valid', async (dir) => {
    const objs = await renderOnce(dir);
    expect(objs.length).toBeGreaterThan(0);
    const problems = (await Promise.all(objs.map(objectProblems))).flat();
    expect(problems).toEqual([]);
  });

  it.each(KUSTOMIZATIONS)('%s names only real kubetunnel subcommands, flags and variables', async (dir) => {
    const objs = await renderOnce(dir);
    expect(kubetunnelContainers(objs).length).toBeGreaterThan(0);
    expect(await flagProblems(objs)).toEqual([]);
  });

  it('the checks refuse an invalid object, a misplaced field, an unknown flag and an unknown variable', async () => {
    const objs = await renderOnce('overlays/agent-daemonset');
    const ds = structuredClone(byKind(objs, 'DaemonSet')[0]!);
    ds.spec.template.spec.containers[0].ports[0].containerPort = 'health';
    expect((await objectProblems(ds)).join('\n')).toMatch(/containerPort must be integer/);
    const misplaced = structuredClone(byKind(objs, 'DaemonSet')[0]!);
    misplaced.spec.template.spec.containers[0].volumeMount = [];
    expect((await objectProblems(misplaced)).join('\n')).toMatch(/containers\[0\]\.volumeMount: no such field in V1Container/);
    expect(await objectProblems({ apiVersion: 'apps/v1', kind: 'DeamonSet', metadata: { name: 'x' } })).not.toEqual([]);

    const flagged = structuredClone(objs);
    const container = byKind(flagged, 'DaemonSet')[0]!.spec.template.spec.containers[0];
    container.args.push('--join-tokn=abc');
    container.env.push({ name: 'KUBETUNNEL_CLUSTR', value: 'x' });
    expect(await flagProblems(flagged)).toEqual([
      'DaemonSet/kubetunnel-agent/agent: kubetunnel agent: unknown flag --join-tokn',
      'DaemonSet/kubetunnel-agent/agent: KUBETUNNEL_CLUSTR sets no flag of kubetunnel agent',
    ]);
    expect(await argProblems(['agnet', '--cluster=x'])).toEqual(['unknown command: kubetunnel agnet']);
  });

  it('the agent: a DaemonSet on control-plane nodes by default, the same pod as a Deployment in its overlay', async () => {
    const dsObjs = await renderOnce('overlays/agent-daemonset');
    const [ds] = byKind(dsObjs, 'DaemonSet', 'kubetunnel-agent');
    expect(byKind(dsObjs, 'Deployment')).toEqual([]);
    const pod = ds!.spec.template.spec;
    expect(pod.nodeSelector).toEqual({ 'node-role.kubernetes.io/control-plane': '' });
    expect(pod.tolerations).toContainEqual(expect.objectContaining({ key: 'node-role.kubernetes.io/control-plane', effect: 'NoSchedule' }));

    const depObjs = await renderOnce('overlays/agent-deployment');
    expect(byKind(depObjs, 'DaemonSet')).toEqual([]);
    const [dep] = byKind(depObjs, 'Deployment', 'kubetunnel-agent');
    expect(dep!.spec.replicas).toBeGreaterThanOrEqual(2);
    const { nodeSelector: _n, tolerations: _t, ...dsPod } = pod;
    expect(dep!.spec.template.spec).toEqual(dsPod);
    const [pdb] = byKind(depObjs, 'PodDisruptionBudget');
    expect(pdb!.spec.selector.matchLabels).toEqual(dep!.spec.selector.matchLabels);

    // Every file a flag names is on a mounted volume; the variables come from objects in the set.
    for (const objs of [dsObjs, depObjs]) {
      const [workload] = [...byKind(objs, 'DaemonSet'), ...byKind(objs, 'Deployment')];
      const c = workload!.spec.template.spec.containers[0];
      const mounts = (c.volumeMounts as Obj[]).map((m) => m.mountPath as string);
      for (const a of c.args as string[]) {
        const file = /^--[a-z-]+=(\/.*)$/.exec(a)?.[1];
        if (file) expect(mounts.some((m) => file.startsWith(`${m}/`)), `${a} on a mounted volume`).toBe(true);
      }
      const cmNames = byKind(objs, 'ConfigMap').map((o) => o.metadata.name);
      for (const f of c.envFrom as Obj[]) expect(cmNames).toContain(f.configMapRef.name);
      const cm = byKind(objs, 'ConfigMap').find((o) => o.metadata.name === c.envFrom[0].configMapRef.name)!;
      expect(Object.keys(cm.data)).toEqual(expect.arrayContaining(['KUBETUNNEL_SERVER', 'KUBETUNNEL_CLUSTER']));
    }
  });

  it('the join overlay: the agent joins with a token from a Secret and keeps its certificate on the node, with no certificate files', async () => {
    const objs = await renderOnce('overlays/agent-join');
    const [ds] = byKind(objs, 'DaemonSet', 'kubetunnel-agent');
    const pod = ds!.spec.template.spec;
    const [agent] = pod.containers as Obj[];
    expect(agent!.args[0]).toBe('agent');
    expect((agent!.args as string[]).filter((a) => /^--(cert|key|ca)=/.test(a))).toEqual([]);
    const stateDir = (agent!.args as string[]).find((a) => a.startsWith('--state-dir='))!.split('=')[1];
    expect(agent!.envFrom).toContainEqual({ secretRef: { name: 'kubetunnel-join' } });
    const cm = byKind(objs, 'ConfigMap').find((o) => agent!.envFrom.some((f: Obj) => f.configMapRef?.name === o.metadata.name))!;
    expect(cm.data.KUBETUNNEL_CA_CERT_HASH).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await flagsOf('agent')).toContain(flagOfEnv('KUBETUNNEL_JOIN_TOKEN'));
    // The state directory is on the node (a replaced pod keeps its certificate) and writable by the agent's user.
    const mount = (agent!.volumeMounts as Obj[]).find((m) => m.mountPath === stateDir)!;
    const volume = (pod.volumes as Obj[]).find((v) => v.name === mount.name)!;
    expect(volume.hostPath).toMatchObject({ path: stateDir, type: 'DirectoryOrCreate' });
    expect(mount.readOnly).not.toBe(true);
    expect(pod.volumes.some((v: Obj) => v.secret?.secretName === 'kubetunnel-agent-tls')).toBe(false);
    const [init] = pod.initContainers as Obj[];
    expect(init!.volumeMounts).toContainEqual({ name: mount.name, mountPath: stateDir });
    expect(init!.command.join(' ')).toContain(`chownSync('${stateDir}', ${pod.securityContext.runAsUser}, ${pod.securityContext.runAsGroup})`);
    expect(init!.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['CHOWN'] });
  });

  it('the agent may impersonate only users and groups listed by name, and do nothing else', async () => {
    for (const dir of ['overlays/agent-daemonset', 'overlays/agent-deployment', 'overlays/agent-join']) {
      const objs = await renderOnce(dir);
      const [role] = byKind(objs, 'ClusterRole', 'kubetunnel-agent-impersonator');
      for (const rule of role!.rules as Obj[]) {
        expect(rule.verbs).toEqual(['impersonate']);
        expect(rule.resources).not.toContain('*');
        expect(rule.apiGroups).not.toContain('*');
        for (const r of rule.resources as string[])
          if (['users', 'groups', 'serviceaccounts'].includes(r)) {
            expect(rule.resourceNames?.length, `${r} limited by resourceNames`).toBeGreaterThan(0);
            expect(rule.resourceNames).not.toContain('system:masters');
          }
      }
      const [binding] = byKind(objs, 'ClusterRoleBinding', 'kubetunnel-agent-impersonator');
      const [workload] = [...byKind(objs, 'DaemonSet'), ...byKind(objs, 'Deployment')];
      expect(binding!.subjects).toEqual([{ kind: 'ServiceAccount', name: workload!.spec.template.spec.serviceAccountName, namespace: workload!.metadata.namespace }]);
    }
  });

  it('the hub: --server-count equals replicas; agents reach replicas that are not ready yet; admin stays inside', async () => {
    const objs = await renderOnce('overlays/hub');
    const [dep] = byKind(objs, 'Deployment', 'kubetunnel-server');
    const args = dep!.spec.template.spec.containers[0].args as string[];
    expect(args).toContain(`--server-count=${dep!.spec.replicas}`);
    const svc = (name: string) => byKind(objs, 'Service', name)[0]!;
    expect(svc('kubetunnel-agent').spec).toMatchObject({ type: 'LoadBalancer', publishNotReadyAddresses: true });
    expect(svc('kubetunnel-agents').spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: true });
    expect(svc('kubetunnel-admin').spec.type ?? 'ClusterIP').toBe('ClusterIP');
    for (const s of byKind(objs, 'Service'))
      if (s.spec.type === 'LoadBalancer') expect(s.spec.ports.map((p: Obj) => p.targetPort)).not.toContain('admin');
    const [pdb] = byKind(objs, 'PodDisruptionBudget');
    expect(pdb!.spec.selector.matchLabels).toEqual(dep!.spec.selector.matchLabels);

    const [np] = byKind(objs, 'NetworkPolicy');
    expect(np!.spec.podSelector.matchLabels).toEqual(dep!.spec.selector.matchLabels);
    const adminRules = (np!.spec.ingress as Obj[]).filter((r) => (r.ports as Obj[]).some((p) => p.port === 'admin' || p.port === 8095));
    expect(adminRules.length).toBeGreaterThan(0);
    for (const r of adminRules) {
      expect(r.from?.length, 'admin admits named peers only').toBeGreaterThan(0);
      for (const peer of r.from as Obj[]) expect(peer.ipBlock).toBeUndefined();
    }
    // No rule admits the admin port by omission (a rule without ports admits every port).
    for (const r of np!.spec.ingress as Obj[]) expect(r.ports?.length).toBeGreaterThan(0);
  });
});
