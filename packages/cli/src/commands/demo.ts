import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { startAgent, type Agent } from '@kubetunnel/agent';
import {
  Defaults,
  certsAgent,
  certsClient,
  certsApiserver,
  certsInit,
  createLogger,
  replaceFile,
  type Logger,
} from '@kubetunnel/shared';
import { parseTokenFile, startServer, type KubetunnelServer } from '@kubetunnel/server';
import { startStandinApiserver, type StandinApiserver } from '@kubetunnel/standin-apiserver';
import { buildKubeconfig, fingerprints } from './kubeconfig.js';

export interface DemoOptions {
  dir: string;
  ports: { proxy: number; agent: number; admin: number; health: number };
  out: NodeJS.WritableStream;
  /** Where logs go (default: DIR/kubetunnel.log). */
  log?: Logger;
  /** Sees every Authorization header value a stand-in member apiserver receives (tests check no hub token gets there). */
  onMemberCredential?: (cluster: string, value: string) => void;
}

export interface Demo {
  server: KubetunnelServer;
  members: Array<{ name: string; apiserver: StandinApiserver; agent: Agent }>;
  kubeconfig: string;
  close(): Promise<void>;
}

const MEMBERS = ['member-1', 'member-2'];
/** Demo identities at the hub: admin (all clusters) and dev. The members never see these tokens. */
const TOKENS = 'demo-admin-token,admin,1,"system:masters"\ndemo-dev-token,dev,2,"developers"\n';
/** The same people's own tokens at the member apiservers (CONNECT mode): credentials never cross the hub. */
const MEMBER_TOKENS = {
  'demo-member-admin-token': { user: 'admin', groups: ['system:masters'] },
  'demo-member-dev-token': { user: 'dev', groups: ['developers'] },
};
/**
 * Names on the stand-in apiservers' certificates besides the in-cluster
 * names: localhost, for the agent (which dials https://localhost:PORT). Never
 * 127.0.0.1, the hub's address in the kubeconfig: no member certificate may
 * pass for the hub.
 */
const MEMBER_NAMES = ['localhost'];
/** What the agents use toward their stand-in apiserver in L7 mode (a service-account token in a real cluster). */
const AGENT_TOKEN = 'demo-agent-sa-token';

function writeOnce(file: string, content: string, mode = 0o600): void {
  if (!fs.existsSync(file)) fs.writeFileSync(file, content, { mode });
}

/** The demo's files: certificates (the CAs kept across runs), token files, and the log. */
interface DemoFiles {
  dir: string;
  certDir: string;
  tokenFile: string;
  agentTokenFile: string;
  logFile: string;
  /** Reads a file of the certificate directory. */
  read(file: string): string;
}

/** Creates what is missing in DIR: certificates and token files. */
function prepareFiles(dirOption: string): DemoFiles {
  const dir = path.resolve(dirOption);
  const certDir = path.join(dir, 'certs');
  // A demo directory from before the hub CA / client CA split: its
  // certificates are replaced (the member ones too, which carried 127.0.0.1).
  if (fs.existsSync(path.join(certDir, 'ca.crt')) && !fs.existsSync(path.join(certDir, 'client-ca.crt')))
    for (const d of [certDir, ...MEMBERS.map((m) => path.join(dir, m))]) fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(certDir, { recursive: true, mode: 0o700 });
  // The CAs are kept across runs; the server certificate is issued anew so it
  // always carries the names this version needs.
  certsInit(certDir, {});
  const tokenFile = path.join(dir, 'tokens.csv');
  writeOnce(tokenFile, TOKENS);
  const agentTokenFile = path.join(dir, 'agent-sa-token');
  writeOnce(agentTokenFile, AGENT_TOKEN + '\n');
  return {
    dir,
    certDir,
    tokenFile,
    agentTokenFile,
    logFile: path.join(dir, 'kubetunnel.log'),
    read: (f) => fs.readFileSync(path.join(certDir, f), 'utf8'),
  };
}

function startDemoServer(files: DemoFiles, ports: DemoOptions['ports'], log: Logger): Promise<KubetunnelServer> {
  return startServer(
    {
      cert: files.read('server.crt'),
      key: files.read('server.key'),
      ca: files.read('client-ca.crt'),
      bindAddress: '127.0.0.1',
      proxyPort: ports.proxy,
      agentPort: ports.agent,
      healthPort: ports.health,
      adminPort: ports.admin,
      adminBindAddress: '127.0.0.1',
      tokens: parseTokenFile(fs.readFileSync(files.tokenFile, 'utf8')),
      serverId: 'demo-server',
      serverCount: 1,
      gracePeriodMs: 2000,
      dialTimeoutMs: 10_000,
      maxHeaderSize: Defaults.maxHeaderSize,
      maxStreamsPerClient: 10_000,
    },
    log,
  );
}

type Member = Demo['members'][number];

/** The stand-in apiserver of member `name`, with its own CA as a real cluster has; created in DIR/NAME the first time. */
function startMemberApiserver(files: DemoFiles, name: string, opts: DemoOptions): Promise<StandinApiserver> {
  const memberDir = path.join(files.dir, name);
  fs.mkdirSync(memberDir, { recursive: true, mode: 0o700 });
  if (!fs.existsSync(path.join(memberDir, 'apiserver.crt'))) certsApiserver(memberDir, { sans: MEMBER_NAMES, commonName: `${name} stand-in apiserver CA` });
  return startStandinApiserver({
    cluster: name,
    cert: fs.readFileSync(path.join(memberDir, 'apiserver.crt'), 'utf8'),
    key: fs.readFileSync(path.join(memberDir, 'apiserver.key'), 'utf8'),
    // CONNECT mode with client certificates: the member trusts the kubetunnel client CA's users.
    ca: files.read('client-ca.crt'),
    tokens: {
      ...MEMBER_TOKENS,
      [AGENT_TOKEN]: { user: `system:serviceaccount:kubetunnel:agent-${name}`, groups: ['system:serviceaccounts'] },
    },
    impersonators: [`system:serviceaccount:kubetunnel:agent-${name}`],
    ...(opts.onMemberCredential ? { onCredential: (_h: string, value: string) => opts.onMemberCredential!(name, value) } : {}),
  });
}

/** The agent of member `name`, toward its stand-in apiserver; resolves once the server has registered it. */
async function startMemberAgent(files: DemoFiles, name: string, server: KubetunnelServer, apiserver: StandinApiserver, log: Logger): Promise<Agent> {
  if (!fs.existsSync(path.join(files.certDir, `agent-${name}.crt`))) certsAgent(files.certDir, { cluster: name });
  const registered = once(server.registry, 'change');
  const agent = await startAgent(
    {
      servers: [`wss://localhost:${server.addresses.agent.port}`],
      cluster: name,
      agentId: `${name}-agent`,
      cert: files.read(`agent-${name}.crt`),
      key: files.read(`agent-${name}.key`),
      ca: files.read('ca.crt'),
      apiserver: new URL(`https://localhost:${apiserver.port}`),
      apiserverCA: fs.readFileSync(path.join(files.dir, name, 'apiserver-ca.crt'), 'utf8'),
      allowDest: [],
      healthPort: 0,
      healthHost: '127.0.0.1',
      gracePeriodMs: 2000,
      backoff: { initialMs: 250, maxMs: 5000 },
      dialTimeoutMs: 5000,
      apiserverTokenFile: files.agentTokenFile,
    },
    log,
  );
  await registered;
  return agent;
}

/** Writes DIR/kubeconfig (both modes, every member); returns each member's apiserver CA for the guide. */
function writeKubeconfig(files: DemoFiles, hub: string): { kubeconfig: string; memberCAs: Array<{ name: string; memberCA: string }> } {
  if (!fs.existsSync(path.join(files.certDir, 'client-admin.crt'))) certsClient(files.certDir, { user: 'admin', groups: ['system:masters'] });
  const kubeconfig = path.join(files.dir, 'kubeconfig');
  const memberCAs = MEMBERS.map((name) => ({ name, memberCA: fs.readFileSync(path.join(files.dir, name, 'apiserver-ca.crt'), 'utf8') }));
  replaceFile(
    kubeconfig,
    buildKubeconfig({
      server: hub,
      hubCA: files.read('ca.crt'),
      modes: ['connect', 'l7'],
      clusters: memberCAs,
      credentials: { token: 'demo-admin-token' },
      member: { token: 'demo-member-admin-token' },
      l7ServerNameSuffix: Defaults.l7ServerNameSuffix,
    }),
    0o600,
  );
  return { kubeconfig, memberCAs };
}

/** What is running, and the commands to try. */
function guide(files: DemoFiles, server: KubetunnelServer, hub: string, members: Member[], memberCAs: Array<{ name: string; memberCA: string }>): string {
  const rel = path.relative(process.cwd(), files.dir) || '.';
  const admin = `http://127.0.0.1:${server.addresses.admin.port}`;
  return [
    '',
    'kubetunnel demo is running',
    `  hub frontend   ${hub}  (CONNECT, and /clusters/<name>/... for L7)`,
    `  agent gateway  wss://127.0.0.1:${server.addresses.agent.port}`,
    `  admin          ${admin}/clusters`,
    ...members.map((m) => `  ${m.name.padEnd(13)}  stand-in apiserver ${m.apiserver.url}, agent ${m.name}-agent connected`),
    `  logs           ${path.relative(process.cwd(), files.logFile)}`,
    ...memberCAs.map((m) => `  ${m.name.padEnd(13)}  apiserver CA ${fingerprints(m.memberCA).join(', ')}`),
    '',
    'Who sees what: CONNECT contexts (member-1, member-2) carry the hub token to the hub only, in the proxy URL,',
    'and the member token to the member only, inside TLS the hub cannot open. L7 contexts (*-l7) trust the hub:',
    'it authenticates you and the agent impersonates you in the member cluster.',
    '',
    'Try, in another terminal:',
    `  export KUBECONFIG=$PWD/${rel}/kubeconfig`,
    '  kubectl --context member-1 get --raw /version        # CONNECT mode: TLS end to end',
    '  kubectl --context member-2 get namespaces',
    '  kubectl --context member-1 get namespaces --watch    # a watch through the tunnel',
    '  kubectl --context member-1-l7 auth whoami            # L7 mode: the hub identity, impersonated',
    `  curl --cacert ${rel}/member-2/apiserver-ca.crt --proxy ${hub} --proxy-cacert ${rel}/certs/ca.crt \\`,
    '       --proxy-user member-2:demo-admin-token \\',
    '       -H "Authorization: Bearer demo-member-admin-token" https://kubernetes.default.svc/version',
    `  npx kubetunnel status --admin ${admin}`,
    '',
    'Ctrl-C stops the demo.',
    '',
  ].join('\n');
}

/**
 * The whole product on one machine: a server, two stand-in member
 * apiservers (not Kubernetes: a small TLS server that answers what the demo
 * and tests need), an agent for each, and a kubeconfig to use them.
 */
export async function runDemo(opts: DemoOptions): Promise<Demo> {
  const files = prepareFiles(opts.dir);
  const log = opts.log ?? createLogger('info', fs.createWriteStream(files.logFile, { flags: 'a' }));
  const server = await startDemoServer(files, opts.ports, log);
  const members: Member[] = [];
  const closeAll = async () => {
    await Promise.all(members.map((m) => m.agent.close()));
    await server.close();
    await Promise.all(members.map((m) => m.apiserver.close()));
  };
  try {
    for (const name of MEMBERS) {
      const apiserver = await startMemberApiserver(files, name, opts);
      try {
        members.push({ name, apiserver, agent: await startMemberAgent(files, name, server, apiserver, log) });
      } catch (err) {
        await apiserver.close();
        throw err;
      }
    }
  } catch (err) {
    await closeAll();
    throw err;
  }
  const hub = `https://127.0.0.1:${server.addresses.proxy.port}`;
  const { kubeconfig, memberCAs } = writeKubeconfig(files, hub);
  opts.out.write(guide(files, server, hub, members, memberCAs));
  return { server, members, kubeconfig, close: closeAll };
}
