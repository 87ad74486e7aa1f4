import type { IncomingMessage } from 'node:http';
import type { KubeObject } from './namespaces.js';

/**
 * Server-side printing: kubectl asks for `as=Table` (meta.k8s.io) and prints
 * the cells the apiserver computed. Namespaces and pods have their usual columns.
 */

interface Column {
  name: string;
  type: string;
  format: string;
  description: string;
  priority: number;
}

const NAME: Column = { name: 'Name', type: 'string', format: 'name', description: 'Name of the object', priority: 0 };
const AGE: Column = { name: 'Age', type: 'string', format: '', description: 'Time since creation', priority: 0 };
const col = (name: string, type = 'string', priority = 0): Column => ({ name, type, format: '', description: name, priority });

/** The Table version kubectl accepts, if the Accept header asks for one. */
export function wantsTable(req: IncomingMessage): string | undefined {
  const accept = req.headers.accept ?? '';
  for (const part of accept.split(',')) {
    const params = part.split(';').map((p) => p.trim());
    if (!params.includes('as=Table') || !params.includes('g=meta.k8s.io')) continue;
    if (params.includes('v=v1')) return 'meta.k8s.io/v1';
    if (params.includes('v=v1beta1')) return 'meta.k8s.io/v1beta1';
  }
  return undefined;
}

export function toTable(
  apiVersion: string,
  kind: string,
  objects: KubeObject[],
  resourceVersion: string,
  includeObject: string | null,
): object {
  const columns = kind === 'Pod' ? podColumns : kind === 'Namespace' ? namespaceColumns : [NAME, AGE];
  return {
    kind: 'Table',
    apiVersion,
    metadata: { resourceVersion },
    columnDefinitions: columns,
    rows: objects.map((o) => ({ cells: cells(kind, o), object: rowObject(o, includeObject) })),
  };
}

function rowObject(o: KubeObject, include: string | null): object | undefined {
  if (include === 'None') return undefined;
  if (include === 'Object') return o;
  return { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata };
}

const namespaceColumns = [NAME, col('Status'), AGE];
const podColumns = [
  NAME,
  col('Ready'),
  col('Status'),
  col('Restarts', 'string'),
  AGE,
  col('IP', 'string', 1),
  col('Node', 'string', 1),
];

function cells(kind: string, o: KubeObject): unknown[] {
  const age = humanAge(o.metadata.creationTimestamp);
  const status = (o.status ?? {}) as { phase?: string; podIP?: string };
  if (kind === 'Namespace') return [o.metadata.name, status.phase ?? 'Active', age];
  if (kind === 'Pod') {
    const spec = (o.spec ?? {}) as { nodeName?: string };
    return [o.metadata.name, '1/1', status.phase ?? 'Unknown', '0', age, status.podIP ?? '<none>', spec.nodeName ?? '<none>'];
  }
  return [o.metadata.name, age];
}

/** Like kubectl's short durations: 42s, 5m10s, 3h, 2d. */
export function humanAge(timestamp: string, now = Date.now()): string {
  const s = Math.max(0, Math.floor((now - Date.parse(timestamp)) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return s % 60 ? `${m}m${s % 60}s` : `${m}m`;
  if (m < 180) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}
