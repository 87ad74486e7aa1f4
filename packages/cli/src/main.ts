import fs from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { Defaults, LOG_LEVELS, certsAgent, certsApiserver, certsClient, certsInit, replaceFile } from '@kubetunnel/shared';
import { defaultMaxConcurrentHandshakes, parseTokenFile } from '@kubetunnel/server';
import { startStandinApiserver } from '@kubetunnel/standin-apiserver';
import { runAgent } from './commands/agent.js';
import { runDemo } from './commands/demo.js';
import { prepareKubeconfig, type KubeconfigFlags } from './commands/kubeconfig.js';
import { runServer } from './commands/server.js';
import { createTokenCommand } from './commands/token.js';
import { fetchClusterCA, fetchClusters, formatStatus } from './commands/status.js';
import { Settings, SettingError } from './options.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];
const seconds = (ms: number) => `${ms / 1000}s`;

/** Settings for a subcommand: flags, then KUBETUNNEL_* variables, then --config, then defaults. */
function settings(cmd: Command): Settings {
  const opts = cmd.opts();
  return new Settings(
    opts,
    (name) => cmd.getOptionValueSource(name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())) === 'cli',
    process.env,
    (opts.config as string | undefined) ?? process.env.KUBETUNNEL_CONFIG,
  );
}

/** Drains on the first SIGTERM/SIGINT; a second one exits at once. */
function onSignals(name: string, drain: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      process.stderr.write(`kubetunnel ${name}: second ${signal}, exiting now\n`);
      process.exit(1);
    }
    stopping = true;
    drain().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`kubetunnel ${name}: drain failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

const program = new Command('kubetunnel')
  .description('Reverse-tunnel, multi-cluster Kubernetes API proxy')
  .version('0.1.0')
  .showHelpAfterError();

const certs = program.command('certs').description('create development certificates (CA, server, agents, clients)');
certs
  .command('init')
  .description('create a hub CA and a client CA (those in DIR are kept) and a server certificate')
  .requiredOption('--dir <dir>', 'where to write ca.crt/ca.key (hub CA), client-ca.crt/client-ca.key (client CA), server.crt/server.key')
  .option('--san <name-or-ip>', 'extra name of the server certificate (repeatable; never a Kubernetes service name)', collect, [])
  .action((o: { dir: string; san: string[] }) => report(certsInit(o.dir, { sans: o.san })));
certs
  .command('agent')
  .description('issue an agent certificate bound to a cluster name')
  .requiredOption('--dir <dir>', 'directory holding the client CA')
  .requiredOption('--cluster <name>', 'the cluster the agent serves')
  .action((o: { dir: string; cluster: string }) => report(certsAgent(o.dir, { cluster: o.cluster })));
certs
  .command('client')
  .description('issue a client certificate (user = CN, groups = O)')
  .requiredOption('--dir <dir>', 'directory holding the client CA')
  .requiredOption('--user <name>', 'user name')
  .option('--group <group>', 'group (repeatable)', collect, [])
  .action((o: { dir: string; user: string; group: string[] }) => report(certsClient(o.dir, { user: o.user, groups: o.group })));

certs
  .command('apiserver')
  .description('create a member apiserver CA and serving certificate, for the stand-in apiserver (a real cluster has its own)')
  .requiredOption('--dir <dir>', 'where to write apiserver-ca.crt/apiserver-ca.key and apiserver.crt/apiserver.key')
  .option('--san <name-or-ip>', 'a name besides kubernetes, kubernetes.default and kubernetes.default.svc (repeatable)', collect, [])
  .action((o: { dir: string; san: string[] }) => report(certsApiserver(o.dir, { sans: o.san })));

function report(r: { files: string[]; warnings: string[] }): void {
  for (const f of r.files) process.stdout.write(`wrote ${f}\n`);
  for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
}

program
  .command('server')
  .description('run the server: agent gateway, client frontend, health and admin endpoints')
  .option('--cert <file>', 'server certificate (PEM)')
  .option('--key <file>', 'server key (PEM)')
  .option('--client-ca <file>', 'the client CA: verifies agent and client certificates (certs init writes client-ca.crt)')
  .option('--ca <file>', 'older name of --client-ca')
  .option('--client-ca-key <file>', 'the client CA key: accept join tokens and sign agent certificates with it (default: joins off)')
  .option('--join-revocations <file>', 'revoked join token ids, one a line, reloaded when it changes (agents that joined with one are not renewed)')
  .option('--agent-cert-ttl <duration>', 'lifetime of the agent certificates signed for joins and renewals (agents renew at two thirds)', '720h')
  .option('--bind-address <addr>', 'address the proxy, agent, health, gRPC and ANP agent ports bind', '0.0.0.0')
  .option('--proxy-port <port>', 'client frontend (CONNECT and L7)', '8090')
  .option('--agent-port <port>', 'agent gateway (wss, mTLS)', '8091')
  .option('--health-port <port>', '/healthz and /readyz', '8092')
  .option('--admin-port <port>', '/clusters and /metrics', '8095')
  .option('--admin-bind-address <addr>', 'address the admin port binds', '127.0.0.1')
  .option('--cluster-domain <domain>', 'CONNECT to <cluster>.<domain> selects <cluster>')
  .option('--token-file <file>', 'static tokens (token,user,uid,"group1,group2")')
  .option('--policy <file>', 'which users and groups may reach which clusters (YAML)')
  .option('--server-id <id>', 'this replica\'s id (default: host name)')
  .option('--server-count <n>', 'number of server replicas (pods); agents are told (server count × workers)', '1')
  .option('--workers <n>', 'data-path processes sharing the ports, each a replica with its own id (<server-id>-w<i>); 1: no worker processes', '1')
  .option('--grace-period <duration>', 'how long draining waits for streams', '30s')
  .option('--registration-grace <duration>', 'after start, how long /readyz stays 503 and an unknown cluster gets 503 with Retry-After rather than 404, while agents reconnect', '10s')
  .option('--shutdown-delay <duration>', 'on SIGTERM, how long /readyz answers 503 before new connections are refused', '5s')
  .option('--dial-timeout <duration>', 'how long a dial (CONNECT, L7, gRPC) waits for the agent to reach its target', '10s')
  .option('--ping-interval <duration>', 'how often each agent tunnel is PINGed (1s to 10m); agents take the same interval. Longer: less idle CPU with many agents, a dead agent noticed later', seconds(Defaults.pingIntervalMs))
  .option('--max-streams-per-client <n>', 'streams one user may hold open at once', '10000')
  .option('--grpc-port <port>', 'Konnectivity ProxyService (gRPC, TLS) for konnectivity clients (default: off)')
  .option('--grpc-uds <path>', 'Konnectivity ProxyService on a Unix socket, mode 0600, as kube-apiserver\'s egress selector uses (default: off)')
  .option('--grpc-uds-user <user>', 'identity of a caller on --grpc-uds, for the policy and the audit', 'kube-apiserver')
  .option('--grpc-uds-group <group>', 'group of a caller on --grpc-uds (repeatable)', collect, [])
  .option('--anp-agent-port <port>', 'Konnectivity AgentService (gRPC, mTLS) for ANP proxy-agents (default: off)')
  .option('--member-kubeconfig <name=file>', 'L7 through ANP agents: a kubeconfig with the apiserver of cluster NAME and a credential the hub impersonates callers with (repeatable)', collect, [])
  .option('--max-connections <n>', 'client connections open at once on the proxy port; past it new ones are closed at accept', String(Defaults.maxConnections))
  .option('--max-pending-connections <n>', 'proxy connections in the TLS handshake or before their first request; past it the oldest is closed', String(Defaults.maxPendingConnections))
  .option('--max-pending-per-source <n>', 'the same, per client address, on the proxy and agent ports (0: no limit)', String(Defaults.maxPendingPerSource))
  .option('--max-agent-connections <n>', 'agent connections open at once on the agent port', String(Defaults.maxAgentConnections))
  .option('--max-concurrent-handshakes <n>', 'agent connections registering at once (TLS handshake to upgrade); past it agents are answered 503 with Retry-After', String(defaultMaxConcurrentHandshakes()))
  .option('--handshake-timeout <duration>', 'time a TLS handshake may take on the proxy and agent ports', seconds(Defaults.handshakeTimeoutMs))
  .option('--header-timeout <duration>', 'time a request head may take to arrive, on every port', seconds(Defaults.headerTimeoutMs))
  .option('--idle-timeout <duration>', 'how long an idle keep-alive connection stays open, on every port', seconds(Defaults.idleTimeoutMs))
  .option('--config <file>', 'YAML file with any of these settings')
  .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
  .action(async (_o, cmd: Command) => {
    const s = settings(cmd);
    const server = await runServer(s, (err) => {
      process.stderr.write(`kubetunnel server: ${err.message}\n`);
      process.exit(1);
    });
    onSignals('server', () => server.drain());
  });

program
  .command('agent')
  .description('run an agent: dial the server(s) and serve tunnel streams to this cluster\'s apiserver')
  .option('--server <url>', 'server agent endpoint: wss://HOST:8091, or dns:///NAME:8091 for one tunnel per address of a headless Service (repeatable)', collect, [])
  .option('--dns-server <host[:port]>', 'resolver for dns:/// servers (repeatable; default: the system\'s)', collect, [])
  .option('--dns-refresh <duration>', 'how often dns:/// servers are looked up again', seconds(Defaults.dnsRefreshMs))
  .option('--cluster <name>', 'the cluster this agent serves (must match its certificate)')
  .option('--cert <file>', 'agent certificate (PEM)')
  .option('--key <file>', 'agent key (PEM)')
  .option('--ca <file>', 'the hub CA, which signed the server\'s certificate (certs init: ca.crt)')
  .option('--join-token <token>', 'join with this token instead of --cert/--key/--ca (kubetunnel token create prints it)')
  .option('--ca-cert-hash <sha256:hex>', 'with --join-token: the hub CA\'s public-key hash, which the server\'s TLS chain must carry')
  .option('--state-dir <dir>', 'with --join-token: where the agent keeps its key, certificate and the hub CA (mode 0600), and renews them', '/var/lib/kubetunnel')
  .option('--apiserver <url>', 'member apiserver (default: in-cluster https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)')
  .option('--apiserver-ca <file>', 'member apiserver CA (default: the service-account CA)')
  .option('--apiserver-token-file <file>', 'token for L7 requests (default: the service-account token)')
  .option('--allow-dest <host:port>', 'another target the agent may dial (repeatable)', collect, [])
  .option('--health-port <port>', '/healthz and /readyz', '8093')
  .option('--health-bind-address <addr>', 'address the health port binds', '0.0.0.0')
  .option('--agent-id <id>', 'this agent\'s id (default: host name)')
  .option('--grace-period <duration>', 'how long draining waits for streams', '30s')
  .option('--dial-timeout <duration>', 'how long a dial to the apiserver may take', '5s')
  .option('--header-timeout <duration>', 'time a request head may take to arrive on the health port', seconds(Defaults.headerTimeoutMs))
  .option('--config <file>', 'YAML file with any of these settings')
  .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
  .action(async (_o, cmd: Command) => {
    const agent = await runAgent(settings(cmd), process.env);
    onSignals('agent', () => agent.drain());
  });

const token = program.command('token').description('join tokens: let an agent join a cluster without certificate files');
token
  .command('create')
  .description('sign a join token for one cluster with the client CA and print the agent flags that use it')
  .requiredOption('--dir <dir>', 'directory holding the client CA (client-ca.key) and the hub CA (ca.crt)')
  .requiredOption('--cluster <name>', 'the cluster the token lets an agent join as')
  .option('--ttl <duration>', 'how long the token is valid (agents keep their certificates after it expires)', '24h')
  .option('--uses <n>', 'how many agents may join with it through each server replica (default: any number until it expires, as a DaemonSet needs)')
  .option('--server <url>', 'the agent gateway URL to show in the printed command', 'wss://HUB:8091')
  .action((o: { dir: string; cluster: string; ttl: string; uses?: string; server: string }) => {
    const r = createTokenCommand(o);
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    process.stdout.write(r.text);
  });

program
  .command('kubeconfig')
  .description('write a kubeconfig with a context per cluster')
  .requiredOption('--server <url>', 'the hub frontend, https://HOST:8090')
  .requiredOption('--ca <file>', 'the hub CA (certs init: ca.crt)')
  .option('--client-cert <file>', 'client certificate for the hub (with --client-key)')
  .option('--client-key <file>', 'client key')
  .option('--token <token>', 'token from the hub\'s token file (never sent to a member)')
  .option('--member-token <token>', 'CONNECT mode: bearer token for the member apiservers')
  .option('--member-client-cert <file>', 'CONNECT mode: client certificate for the member apiservers (with --member-client-key)')
  .option('--member-client-key <file>', 'CONNECT mode: key of --member-client-cert')
  .option('--member-exec <command>', 'CONNECT mode: exec credential plugin for the member apiservers ("command arg...")')
  .option('--member-ca <name=file>', 'CONNECT mode: pin the apiserver CA of a cluster instead of the one its agent reported (repeatable)', collect, [])
  .option('--member-server <name=url>', 'CONNECT mode: the apiserver URL of a cluster (a name on its certificate; default https://kubernetes.default.svc) (repeatable)', collect, [])
  .option('--clusters <list>', 'comma-separated cluster names, or "all" for every known cluster', 'all')
  .addOption(new Option('--mode <mode>', 'connect (end-to-end TLS) or l7 (hub identity, impersonation)').choices(['connect', 'l7']).default('connect'))
  .option('--admin <url>', 'admin endpoint, for the cluster list and agent-reported member CAs', 'http://127.0.0.1:8095')
  .option('--out <file>', 'write here (mode 0600) instead of standard output')
  .action(async (o: KubeconfigFlags) => {
    const r = await prepareKubeconfig(o, { fetchClusters, fetchClusterCA });
    for (const line of r.notes) process.stderr.write(line + '\n');
    if (o.out) {
      fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
      replaceFile(o.out, r.text, 0o600);
      process.stdout.write(`wrote ${o.out} with contexts: ${r.contexts.join(', ')}\n`);
    } else process.stdout.write(r.text);
  });

program
  .command('status')
  .description('show clusters, agents and streams of a running server')
  .option('--admin <url>', 'admin endpoint', 'http://127.0.0.1:8095')
  .option('--json', 'print the raw JSON')
  .action(async (o: { admin: string; json?: boolean }) => {
    const r = await fetchClusters(o.admin);
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatStatus(r));
  });

program
  .command('standin-apiserver')
  .description('run a stand-in member apiserver (not Kubernetes: the small API the demo and tests use)')
  .requiredOption('--cluster <name>', 'the cluster name it reports in /version')
  .requiredOption('--cert <file>', 'serving certificate (PEM)')
  .requiredOption('--key <file>', 'serving key (PEM)')
  .requiredOption('--token-file <file>', 'static tokens it accepts (token,user,uid,"group1,group2"); every token user may impersonate')
  .option('--ca <file>', 'CA whose client certificates it accepts')
  .option('--bind-address <addr>', 'address to bind', '127.0.0.1')
  .option('--port <port>', 'port (0: any free port)', '6443')
  .action(async (o: { cluster: string; cert: string; key: string; tokenFile: string; ca?: string; bindAddress: string; port: string }) => {
    const tokens = Object.fromEntries(
      [...parseTokenFile(fs.readFileSync(o.tokenFile, 'utf8'))].map(([t, id]) => [t, { user: id.user, groups: id.groups }]),
    );
    const api = await startStandinApiserver({
      cluster: o.cluster,
      cert: fs.readFileSync(o.cert, 'utf8'),
      key: fs.readFileSync(o.key, 'utf8'),
      tokens,
      host: o.bindAddress,
      port: Number(o.port),
      ...(o.ca ? { ca: fs.readFileSync(o.ca, 'utf8') } : {}),
    });
    process.stdout.write(`stand-in apiserver for ${o.cluster} listening on ${api.url}\n`);
    onSignals('standin-apiserver', () => api.close());
  });

program
  .command('demo')
  .description('run a server, two stand-in member apiservers and an agent for each, on this machine')
  .option('--dir <dir>', 'where certificates, tokens and the kubeconfig go', 'demo')
  .option('--proxy-port <port>', 'the hub frontend port', '8090')
  .option('--agent-port <port>', 'the agent gateway port', '8091')
  .option('--admin-port <port>', 'the admin port', '8095')
  .option('--health-port <port>', 'the server health port', '8092')
  .action(async (o: { dir: string; proxyPort: string; agentPort: string; adminPort: string; healthPort: string }) => {
    const demo = await runDemo({
      dir: o.dir,
      ports: { proxy: Number(o.proxyPort), agent: Number(o.agentPort), admin: Number(o.adminPort), health: Number(o.healthPort) },
      out: process.stdout,
    });
    onSignals('demo', () => demo.close());
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  const cmd = process.argv[2] ?? '';
  let msg = err instanceof Error ? err.message : String(err);
  if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') msg += ' (another process has that port: choose others with the --*-port flags, 0 for any free port)';
  process.stderr.write(`kubetunnel ${cmd}: ${msg}\n`);
  process.exit(err instanceof SettingError ? 2 : 1);
});
