import { randomUUID } from 'node:crypto';

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface WatchEvent {
  type: WatchEventType;
  object: KubeObject;
}

/** The parts of a Kubernetes object this stand-in looks at. */
export interface KubeObject {
  kind: string;
  apiVersion: string;
  metadata: { name: string; namespace?: string; resourceVersion: string; creationTimestamp: string; [k: string]: unknown };
  [k: string]: unknown;
}

type Listener = (event: WatchEvent) => void;

/** Labels and annotations a namespace is created with (beside the name label every namespace has). */
export interface NamespaceMetadata {
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const HISTORY = 1000;

/** Namespaces in memory, with a resource version clock and watch fan-out. */
export class NamespaceStore {
  private clock = 100;
  private readonly items = new Map<string, KubeObject>();
  private readonly history: Array<{ rv: number; event: WatchEvent }> = [];
  private readonly listeners = new Set<Listener>();

  constructor(initial: string[]) {
    for (const name of initial) this.add(name);
  }

  get resourceVersion(): string {
    return String(this.clock);
  }

  get(name: string): KubeObject | undefined {
    return this.items.get(name);
  }

  list(): KubeObject[] {
    return [...this.items.values()];
  }

  /** Adds a namespace; returns false if it already exists. */
  add(name: string, extra: NamespaceMetadata = {}): boolean {
    if (this.items.has(name)) return false;
    const rv = ++this.clock;
    const ns: KubeObject = {
      kind: 'Namespace',
      apiVersion: 'v1',
      metadata: {
        name,
        uid: randomUUID(),
        resourceVersion: String(rv),
        creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        labels: { ...extra.labels, 'kubernetes.io/metadata.name': name },
        ...(extra.annotations ? { annotations: { ...extra.annotations } } : {}),
      },
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    };
    this.items.set(name, ns);
    this.emit(rv, { type: 'ADDED', object: ns });
    return true;
  }

  /** Deletes a namespace; returns false if it does not exist. */
  delete(name: string): boolean {
    const ns = this.items.get(name);
    if (!ns) return false;
    this.items.delete(name);
    const rv = ++this.clock;
    const gone: KubeObject = { ...ns, metadata: { ...ns.metadata, resourceVersion: String(rv) } };
    this.emit(rv, { type: 'DELETED', object: gone });
    return true;
  }

  /**
   * Subscribes to changes. Without a resource version (or "0") the current
   * namespaces come first as ADDED events; with one, the remembered events after it.
   * Returns the unsubscribe function.
   */
  watch(resourceVersion: string | undefined, listener: Listener): () => void {
    const from = Number(resourceVersion);
    if (!resourceVersion || resourceVersion === '0' || !Number.isFinite(from)) {
      for (const ns of this.items.values()) listener({ type: 'ADDED', object: ns });
    } else {
      for (const entry of this.history) if (entry.rv > from) listener(entry.event);
    }
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(rv: number, event: WatchEvent): void {
    this.history.push({ rv, event });
    if (this.history.length > HISTORY) this.history.shift();
    for (const listener of [...this.listeners]) listener(event);
  }
}
