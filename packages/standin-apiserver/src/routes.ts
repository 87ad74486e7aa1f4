import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Identity } from './types.js';
import type { KubeObject, NamespaceStore, WatchEvent } from './namespaces.js';
import * as discovery from './discovery.js';
import { podsIn, serveLogs } from './pods.js';
import { isProtobuf, protobufObjectName } from './protobuf.js';
import { matches } from './selectors.js';
import { sendJson, sendStatus, notFound } from './status.js';
import { toTable, wantsTable } from './table.js';
import { isWatch, serveWatch, timeoutFrom } from './watch.js';

export interface ApiContext {
  cluster: string;
  namespaces: NamespaceStore;
  pod: KubeObject;
  /** host:port clients reach us at, for APIVersions. */
  serverAddress: string;
}

const MAX_BODY = 1 << 20;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Serves every authenticated, non-upgrade request. */
export async function handleApiRequest(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: ApiContext,
  identity: Identity,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'https://standin.invalid');
  const query = url.searchParams;
  const p = url.pathname.split('/').filter(Boolean);
  const method = req.method ?? 'GET';
  const route = p.join('/');
  const get = method === 'GET' || method === 'HEAD';

  if (get && route === 'version') return sendJson(res, 200, discovery.versionInfo(ctx.cluster));
  if (get && route === 'api') return sendJson(res, 200, discovery.apiVersions(ctx.serverAddress));
  if (get && route === 'api/v1') return sendJson(res, 200, discovery.coreV1Resources());
  if (get && route === 'apis') return sendJson(res, 200, discovery.apiGroupList());
  if (get && p[0] === 'apis' && p.length === 2) {
    const group = discovery.apiGroup(p[1]!);
    return group ? sendJson(res, 200, group) : pageNotFound(res);
  }
  if (get && route === 'apis/authentication.k8s.io/v1') {
    return sendJson(res, 200, discovery.authenticationV1Resources());
  }
  if (route === 'apis/authentication.k8s.io/v1/selfsubjectreviews') {
    if (method !== 'POST') return methodNotAllowed(res, method);
    await readBody(req);
    return sendJson(res, 201, selfSubjectReview(identity));
  }

  if (p[0] === 'api' && p[1] === 'v1') {
    const rest = p.slice(2);
    if (rest.length === 1 && rest[0] === 'pods') {
      return get ? listPods(req, res, ctx, query, undefined) : methodNotAllowed(res, method);
    }
    if (rest[0] === 'namespaces') return namespaceRoutes(req, res, ctx, query, rest.slice(1), method);
  }

  if (p[0] === 'standin' && p[1] === 'namespaces' && p.length === 3) return testHook(res, ctx, method, p[2]!);
  if (get && p[0] === 'standin' && p[1] === 'bytes' && p.length === 3) return sendBytes(res, p[2]!);
  return pageNotFound(res);
}

async function namespaceRoutes(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: ApiContext,
  query: URLSearchParams,
  rest: string[],
  method: string,
): Promise<void> {
  const [name, sub, podName, podSub, ...extra] = rest;
  const get = method === 'GET' || method === 'HEAD';
  if (name === undefined) {
    if (get) {
      const { namespaces } = ctx;
      const from = query.get('resourceVersion') ?? undefined;
      return list(req, res, query, 'Namespace', namespaces.list(), namespaces.resourceVersion, (l) => namespaces.watch(from, l));
    }
    if (method === 'POST') return createNamespace(req, res, ctx);
    return methodNotAllowed(res, method);
  }
  if (sub === undefined) {
    const ns = ctx.namespaces.get(name);
    if (!ns) return sendStatus(res, ...notFound('namespaces', name));
    if (get) return sendObject(req, res, query, 'Namespace', ns);
    if (method === 'DELETE') {
      ctx.namespaces.delete(name);
      return sendJson(res, 200, { ...ns, status: { phase: 'Terminating' } });
    }
    return methodNotAllowed(res, method);
  }
  if (sub !== 'pods' || extra.length > 0) return pageNotFound(res);
  if (podName === undefined) {
    if (!get) return methodNotAllowed(res, method);
    return listPods(req, res, ctx, query, name);
  }
  const pod = podsIn(ctx.pod, name).find((x) => x.metadata.name === podName);
  if (!pod) return sendStatus(res, ...notFound('pods', podName));
  if (podSub === undefined) return get ? sendObject(req, res, query, 'Pod', pod) : methodNotAllowed(res, method);
  if (podSub === 'log') {
    if (!get) return methodNotAllowed(res, method);
    const follow = query.get('follow') === 'true' || query.get('follow') === '1';
    return serveLogs(res, follow, ctx.cluster);
  }
  if (podSub === 'exec' || podSub === 'attach' || podSub === 'portforward') {
    return sendStatus(res, 400, 'Upgrade request required');
  }
  return pageNotFound(res);
}

function listPods(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: ApiContext,
  query: URLSearchParams,
  namespace: string | undefined,
): void {
  const pods = podsIn(ctx.pod, namespace);
  const rv = ctx.pod.metadata.resourceVersion;
  list(req, res, query, 'Pod', pods, rv, (listener) => {
    // The echo pod never changes: a watch only replays it when asked for the current state.
    const from = query.get('resourceVersion');
    if (!from || from === '0') for (const pod of pods) listener({ type: 'ADDED', object: pod });
    return () => {};
  });
}

/** One object, as JSON or as a one-row Table. */
function sendObject(req: IncomingMessage, res: ServerResponse, query: URLSearchParams, kind: string, o: KubeObject): void {
  const table = wantsTable(req);
  const rv = o.metadata.resourceVersion;
  sendJson(res, 200, table ? toTable(table, kind, [o], rv, query.get('includeObject')) : o);
}

/** A list (or, with ?watch, a watch) of one kind, as JSON or as a Table. */
function list(
  req: IncomingMessage,
  res: ServerResponse,
  query: URLSearchParams,
  kind: string,
  objects: KubeObject[],
  resourceVersion: string,
  subscribe: (listener: (event: WatchEvent) => void) => () => void,
): void {
  const table = wantsTable(req);
  const include = query.get('includeObject');
  if (isWatch(query)) {
    return serveWatch(res, {
      subscribe: (listener) => subscribe((event) => matches(event.object, query) && listener(event)),
      render: (event) =>
        table ? toTable(table, kind, [event.object], event.object.metadata.resourceVersion, include) : event.object,
      timeoutSeconds: timeoutFrom(query),
    });
  }
  const items = objects.filter((o) => matches(o, query));
  if (table) return sendJson(res, 200, toTable(table, kind, items, resourceVersion, include));
  sendJson(res, 200, { kind: `${kind}List`, apiVersion: 'v1', metadata: { resourceVersion }, items });
}

async function createNamespace(req: IncomingMessage, res: ServerResponse, ctx: ApiContext): Promise<void> {
  let name: unknown;
  const body = await readBody(req);
  try {
    name = isProtobuf(req.headers['content-type'])
      ? protobufObjectName(body)
      : (JSON.parse(body.toString('utf8')) as { metadata?: { name?: unknown } }).metadata?.name;
  } catch {
    return sendStatus(res, 400, 'the request body is not a Namespace');
  }
  if (typeof name !== 'string' || !DNS_LABEL.test(name)) {
    return sendStatus(res, 422, `Namespace "${String(name)}" is invalid: metadata.name: Invalid value`, {
      name: String(name),
      kind: 'Namespace',
    });
  }
  if (!ctx.namespaces.add(name)) {
    return sendStatus(res, 409, `namespaces "${name}" already exists`, { name, kind: 'namespaces' });
  }
  sendJson(res, 201, ctx.namespaces.get(name));
}

/** POST/DELETE /standin/namespaces/<name>: lets another process cause watch events. */
/** Test hook: GET /standin/bytes/N answers N bytes, byte i being i mod 251, so a client can check every byte. */
function sendBytes(res: ServerResponse, count: string): void {
  const n = Number(count);
  if (!/^\d{1,9}$/.test(count) || n > 256 * 1024 * 1024) return sendStatus(res, 400, 'want /standin/bytes/N with N at most 256 MiB');
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n });
  const chunk = Buffer.alloc(251 * 256, 0).map((_, i) => i % 251);
  let sent = 0;
  const more = (): void => {
    while (sent < n) {
      const piece = chunk.subarray(0, Math.min(chunk.length, n - sent));
      sent += piece.length;
      if (!res.write(piece)) return void res.once('drain', more);
    }
    res.end();
  };
  more();
}

function testHook(res: ServerResponse, ctx: ApiContext, method: string, name: string): void {
  if (method === 'POST') {
    if (!DNS_LABEL.test(name)) return sendStatus(res, 422, `invalid namespace name "${name}"`);
    if (!ctx.namespaces.add(name)) return sendStatus(res, 409, `namespaces "${name}" already exists`);
    return sendJson(res, 201, ctx.namespaces.get(name));
  }
  if (method === 'DELETE') {
    const ns = ctx.namespaces.get(name);
    if (!ns) return sendStatus(res, ...notFound('namespaces', name));
    ctx.namespaces.delete(name);
    return sendJson(res, 200, ns);
  }
  methodNotAllowed(res, method);
}

function selfSubjectReview(identity: Identity): object {
  return {
    kind: 'SelfSubjectReview',
    apiVersion: 'authentication.k8s.io/v1',
    metadata: { creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') },
    status: {
      userInfo: {
        username: identity.username,
        ...(identity.uid !== undefined ? { uid: identity.uid } : {}),
        groups: identity.groups,
        ...(Object.keys(identity.extra).length ? { extra: identity.extra } : {}),
      },
    },
  };
}

function pageNotFound(res: ServerResponse): void {
  sendStatus(res, 404, 'the server could not find the requested resource', {});
}

function methodNotAllowed(res: ServerResponse, method: string): void {
  sendStatus(res, 405, `the server does not allow this method on the requested resource (${method})`);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) req.destroy(new Error('request body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
