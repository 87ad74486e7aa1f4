/**
 * Many agents in one process (a real deployment has one per node or pod;
 * a few thousand processes do not fit on a 2-core machine). argv[2] is a
 * JSON job: the server, the certificate directory, the clusters and how many
 * agents each. Prints {"ready": true, ms} once every agent has its tunnel,
 * and stops when standard input ends.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';
import { startAgent, type Agent } from '@kubetunnel/agent';
import { silentLogger } from '@kubetunnel/shared';

// The garbage collector setting of the `kubetunnel agent` these agents stand for (packages/cli/bin/kubetunnel.js).
v8.setFlagsFromString('--no-incremental-marking-task');

interface Job {
  server: string;
  certDir: string;
  clusters: string[];
  perCluster: number;
  apiserver: string;
  /** An apiserver of its own for some clusters (default: `apiserver`). */
  apiservers?: Record<string, string>;
  /** With it the agents serve L7 streams: they check the apiserver's certificate with the run's CA and send it this file's token. */
  apiserverTokenFile?: string;
  /** Makes agent ids unique across processes. */
  idPrefix?: string;
  /** Reconnect backoff (default 200 ms doubling up to 5 s). */
  backoff?: { initialMs: number; maxMs: number };
  /**
   * At most this many agents of the process dialing their first tunnel at
   * once (default: no bound, every agent dials as soon as it is created).
   * Thousands of agents in one process otherwise spend its CPU on as many
   * client handshakes at once, each past its dial timeout, where a real
   * fleet has a machine per agent.
   */
  concurrency?: number;
}

const job = JSON.parse(process.argv[2]!) as Job;

async function main(): Promise<void> {
  const ca = fs.readFileSync(path.join(job.certDir, 'ca.crt'), 'utf8');
  const log = silentLogger();
  const started = performance.now();
  const agents: Agent[] = [];
  const up: Array<Promise<unknown>> = [];
  let dialing = 0;
  let slot: (() => void) | undefined;
  for (const cluster of job.clusters) {
    const cert = fs.readFileSync(path.join(job.certDir, `agent-${cluster}.crt`), 'utf8');
    const key = fs.readFileSync(path.join(job.certDir, `agent-${cluster}.key`), 'utf8');
    for (let i = 0; i < job.perCluster; i++) {
      while (job.concurrency && dialing >= job.concurrency) await new Promise<void>((r) => (slot = r));
      const agent = await startAgent(
        {
          servers: [job.server],
          cluster,
          agentId: `${job.idPrefix ?? ''}${cluster}-${i}`,
          cert,
          key,
          ca,
          apiserver: new URL(job.apiservers?.[cluster] ?? job.apiserver),
          ...(job.apiserverTokenFile ? { apiserverCA: ca, apiserverTokenFile: job.apiserverTokenFile } : {}),
          allowDest: [],
          healthPort: 0,
          healthHost: '127.0.0.1',
          gracePeriodMs: 1000,
          backoff: job.backoff ?? { initialMs: 200, maxMs: 5000 },
          dialTimeoutMs: 5000,
        },
        log,
      );
      agents.push(agent);
      dialing++;
      const session = agent.connector.ready ? Promise.resolve() : once(agent.connector, 'session');
      up.push(
        session.finally(() => {
          dialing--;
          slot?.();
        }),
      );
    }
  }
  await Promise.all(up);
  console.log(JSON.stringify({ ready: true, agents: agents.length, ms: Math.round(performance.now() - started) }));
  process.stdin.resume();
  await once(process.stdin, 'end');
  await Promise.all(agents.map((a) => a.close()));
  process.exit(0);
}

main().catch((err: unknown) => {
  console.error(String(err));
  process.exit(1);
});
