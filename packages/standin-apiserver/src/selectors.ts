import type { KubeObject } from './namespaces.js';

/**
 * Equality-based label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`, comma = AND)
 * and the field selectors kubectl uses (`metadata.name=`, `metadata.namespace=`).
 */
export function matches(object: KubeObject, query: URLSearchParams): boolean {
  const labels = (object.metadata.labels ?? {}) as Record<string, string>;
  const fields: Record<string, string | undefined> = {
    'metadata.name': object.metadata.name,
    'metadata.namespace': object.metadata.namespace,
  };
  return (
    terms(query.get('labelSelector')).every((t) => holds(t, labels)) &&
    terms(query.get('fieldSelector')).every((t) => holds(t, fields))
  );
}

function terms(selector: string | null): string[] {
  return (selector ?? '').split(',').map((t) => t.trim()).filter(Boolean);
}

function holds(term: string, values: Record<string, string | undefined>): boolean {
  const m = /^(!?)([^=!]+?)\s*(?:(!=|==|=)\s*(.*))?$/.exec(term);
  if (!m) return false;
  const [, not, key = '', op, wanted = ''] = m;
  const actual = values[key.trim()];
  if (!op) return not ? actual === undefined : actual !== undefined;
  return op === '!=' ? actual !== wanted.trim() : actual === wanted.trim();
}
