import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import {
  MemoryTransport,
  MemberHttp,
  Session,
  TunnelError,
  fileToken,
  isValidClusterName,
  type IncomingOpen,
  type Logger,
  type MuxStream,
  type OpenOptions,
  type OpenRequest,
} from '@kubetunnel/shared';

/**
 * What the hub holds to serve a cluster's L7 requests through ANP agents
 * (which dial TCP and nothing else): the member apiserver's address as the
 * agent dials it, how to check its certificate, and a credential allowed to
 * impersonate (a bearer token, or a client certificate and key).
 */
export interface MemberCredential {
  server: URL;
  ca?: string;
  servername?: string;
  token?: string;
  tokenFile?: string;
  cert?: string;
  key?: string;
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads the member credential of `--member-kubeconfig NAME=FILE`: the
 * current context (or the only one) gives the cluster (`server`,
 * `certificate-authority[-data]`, `tls-server-name`) and the user (`token`,
 * `tokenFile`, `client-certificate[-data]` with `client-key[-data]`). Files
 * named in it are read relative to it. An exec or auth-provider user, a
 * server that is not https, or `insecure-skip-tls-verify` is an error naming
 * the file: the hub impersonates callers with it, so it must be checked.
 */
export function readMemberKubeconfig(file: string): MemberCredential {
  const fail = (why: string): never => {
    throw new Error(`${file}: ${why}`);
  };
  let doc: unknown;
  try {
    doc = YAML.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    return fail(`not a readable kubeconfig (${(err as Error).message})`);
  }
  if (!isObj(doc)) return fail('not a kubeconfig');
  const named = (list: unknown, name: unknown, what: string): Obj => {
    const found = Array.isArray(list) ? list.find((x) => isObj(x) && x.name === name) : undefined;
    return isObj(found) && isObj(found[what]) ? (found[what] as Obj) : fail(`no ${what} named ${JSON.stringify(name)}`);
  };
  const contexts = Array.isArray(doc.contexts) ? doc.contexts : [];
  const contextName = doc['current-context'] ?? (contexts.length === 1 && isObj(contexts[0]) ? contexts[0].name : undefined);
  if (contextName === undefined) return fail('no current-context, and not exactly one context');
  const context = named(doc.contexts, contextName, 'context');
  const cluster = named(doc.clusters, context.cluster, 'cluster');
  const user = named(doc.users, context.user, 'user');
  const dir = path.dirname(file);
  const str = (o: Obj, key: string): string | undefined => (typeof o[key] === 'string' && o[key] !== '' ? (o[key] as string) : undefined);
  const data = (o: Obj, key: string): string | undefined => {
    const inline = str(o, `${key}-data`);
    if (inline) return Buffer.from(inline, 'base64').toString('utf8');
    const f = str(o, key);
    if (!f) return undefined;
    try {
      return fs.readFileSync(path.resolve(dir, f), 'utf8');
    } catch (err) {
      return fail(`${key}: ${(err as Error).message}`);
    }
  };
  let server: URL;
  try {
    server = new URL(str(cluster, 'server') ?? '');
  } catch {
    return fail('the cluster has no valid server URL');
  }
  if (server.protocol !== 'https:') fail(`server ${server.href} is not https`);
  if (cluster['insecure-skip-tls-verify'] === true) fail('insecure-skip-tls-verify: the hub checks the member apiserver');
  if (user.exec !== undefined || user['auth-provider'] !== undefined)
    fail('an exec or auth-provider user is not supported: give a token, tokenFile, or client certificate and key');
  const out: MemberCredential = { server };
  const ca = data(cluster, 'certificate-authority');
  if (ca) out.ca = ca;
  const servername = str(cluster, 'tls-server-name');
  if (servername) out.servername = servername;
  const token = str(user, 'token');
  if (token) out.token = token;
  const tokenFile = str(user, 'tokenFile');
  if (tokenFile) out.tokenFile = path.resolve(dir, tokenFile);
  const cert = data(user, 'client-certificate');
  const key = data(user, 'client-key');
  if ((cert === undefined) !== (key === undefined)) fail('client-certificate and client-key go together');
  if (cert && key) Object.assign(out, { cert, key });
  if (!out.token && !out.tokenFile && !out.cert) fail('the user has no credential (token, tokenFile, or client certificate and key)');
  return out;
}

/** `NAME=FILE` values of --member-kubeconfig, read: the cluster name to its credential. */
export function readMemberKubeconfigs(values: readonly string[]): Map<string, MemberCredential> {
  const out = new Map<string, MemberCredential>();
  for (const v of values) {
    const eq = v.indexOf('=');
    const name = v.slice(0, eq);
    if (eq <= 0 || eq === v.length - 1) throw new Error(`${JSON.stringify(v)}: want NAME=FILE`);
    if (!isValidClusterName(name)) throw new Error(`${JSON.stringify(name)} is not a valid cluster name`);
    if (out.has(name)) throw new Error(`cluster ${name} is given twice`);
    out.set(name, readMemberKubeconfig(v.slice(eq + 1)));
  }
  return out;
}

/** What AnpL7 needs of the agent's tunnel: TCP connections through it. */
export interface TcpOpener {
  open(request: OpenRequest, options?: OpenOptions): Promise<MuxStream>;
}

/**
 * L7 for a cluster served by an ANP agent: the hub itself plays the
 * member's part (MemberHttp, as our agent runs it), speaking TLS and HTTP to
 * the apiserver over TCP connections the ANP agent dials, with the hub's
 * credential for that cluster and the caller's impersonation headers. The
 * frontend's `http` streams reach it as they reach an agent: through a
 * tunnel session, here an in-process pair, so the stream, its identity and
 * its flow control are those of any other tunnel.
 */
export class AnpL7 {
  private readonly hub: Session;
  private readonly member: Session;
  private readonly proxy: MemberHttp;
  private readonly address: string;

  constructor(tcp: TcpOpener, credential: MemberCredential, dialTimeoutMs: number, log: Logger) {
    const { server } = credential;
    this.address = `${server.hostname}:${server.port || 443}`;
    const token = credential.tokenFile ? fileToken(credential.tokenFile) : () => credential.token;
    this.proxy = new MemberHttp({
      apiserver: server,
      tls: {
        ...(credential.ca ? { ca: credential.ca } : {}),
        ...(credential.servername ? { servername: credential.servername } : {}),
        ...(credential.cert && credential.key ? { cert: credential.cert, key: credential.key } : {}),
      },
      token,
      // One ANP connection per request: none is held between requests.
      keepAlive: false,
      connect: (done) =>
        tcp.open({ kind: 'tcp', target: this.address }, { timeoutMs: dialTimeoutMs }).then(
          (stream) => done(null, stream),
          (err: unknown) => done(err instanceof Error ? err : new Error(String(err)), undefined as never),
        ),
      log,
    });
    const [a, b] = MemoryTransport.pair();
    this.hub = new Session(a, { role: 'server', pingIntervalMs: 0 });
    this.member = new Session(b, { role: 'agent', pingIntervalMs: 0 });
    this.member.on('open', (incoming: IncomingOpen) => {
      const { kind, identity } = incoming.request;
      if (kind !== 'http' || !identity) return incoming.reject('BAD_OPEN', 'an L7 stream with an identity was expected');
      this.proxy.handle(incoming.accept(), identity);
    });
  }

  /** An `http` stream, served by MemberHttp. */
  open(request: OpenRequest, options?: OpenOptions): Promise<MuxStream> {
    if (request.kind !== 'http') return Promise.reject(new TunnelError('BAD_OPEN', 'L7 streams only'));
    return this.hub.open(request, options);
  }

  close(): void {
    this.hub.close();
    this.member.close();
    this.proxy.close();
  }
}
