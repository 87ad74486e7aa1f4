import { parse as parseYaml } from 'yaml';
import type { Identity } from '@kubetunnel/shared';
import { refusal, type Refusal } from './refusal.js';

/**
 * Who may reach which clusters. A rule applies to the caller when it names
 * the caller's user or one of its groups ("*" names everyone authenticated);
 * the caller may reach the union of the clusters (names or globs with *) of
 * the rules that apply. Nothing applies: refused.
 *
 *   rules:
 *     - users: [alice]
 *       groups: [platform-admins]
 *       clusters: ["member-*", staging]
 */
export interface PolicyRule {
  users: string[];
  groups: string[];
  clusters: string[];
}

/** Whether `identity` may reach `cluster`: true, or the refusal (FORBIDDEN). */
export type Authorize = (identity: Identity, cluster: string) => true | Refusal;

function globToRegExp(glob: string): RegExp {
  const body = glob.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${body}$`);
}

function strings(v: unknown, where: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string' && s !== ''))
    throw new Error(`${where}: want a list of non-empty strings`);
  return v as string[];
}

export function parsePolicy(text: string): PolicyRule[] {
  const doc: unknown = parseYaml(text);
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { rules?: unknown }).rules))
    throw new Error('policy: want a mapping with a "rules" list');
  return ((doc as { rules: unknown[] }).rules).map((r, i) => {
    if (typeof r !== 'object' || r === null) throw new Error(`policy rule ${i + 1}: want a mapping`);
    const o = r as Record<string, unknown>;
    const unknownKeys = Object.keys(o).filter((k) => !['users', 'groups', 'clusters'].includes(k));
    if (unknownKeys.length > 0) throw new Error(`policy rule ${i + 1}: unknown key ${unknownKeys[0]}`);
    const rule = {
      users: strings(o.users, `policy rule ${i + 1} users`),
      groups: strings(o.groups, `policy rule ${i + 1} groups`),
      clusters: strings(o.clusters, `policy rule ${i + 1} clusters`),
    };
    if (rule.users.length + rule.groups.length === 0) throw new Error(`policy rule ${i + 1}: names no users or groups`);
    if (rule.clusters.length === 0) throw new Error(`policy rule ${i + 1}: names no clusters`);
    return rule;
  });
}

/** The authorize function of a policy. */
export function policyAuthorizer(rules: PolicyRule[]): Authorize {
  const compiled = rules.map((r) => ({
    users: new Set(r.users),
    groups: new Set(r.groups),
    clusters: r.clusters.map(globToRegExp),
  }));
  return (identity, cluster) => {
    for (const r of compiled) {
      const applies = r.users.has('*') || r.users.has(identity.user) || identity.groups.some((g) => r.groups.has(g));
      if (applies && r.clusters.some((re) => re.test(cluster))) return true;
    }
    return refusal('FORBIDDEN', `user "${identity.user}" may not reach cluster "${cluster}"`);
  };
}

/** No policy: every authenticated identity may reach every cluster. */
export const allowAll: Authorize = () => true;
