/**
 * `kubetunnel server --workers N`: N data-path processes on the same ports.
 *
 * The primary process (node:cluster) binds the proxy, agent and gRPC ports
 * once and hands each new connection to a worker in turn (round-robin, the
 * cluster module's default on Linux, set here on every platform). Each worker
 * is a server replica of its own: server id `<server-id>-w<i>`, and it tells
 * agents that there are (server count × N) replicas, so an agent that dials
 * through the shared port (or a balancer in front of it) keeps dialing until
 * it holds a tunnel to every worker; landing on a worker it already holds is
 * answered 409 as with any replica. Whichever worker a client lands on then
 * holds a tunnel of every cluster.
 *
 * The primary serves the health and admin ports itself and asks every worker
 * over IPC: /clusters and /metrics are merged, /readyz is ready when every
 * worker is up (and past the registration grace) and the server is not
 * draining. SIGTERM drains every worker; a worker that dies is started again
 * (at most RESTARTS_PER_WINDOW times a minute); a worker that dies before it
 * is up (bad certificates, a port in use) stops the server with its error.
 */
import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import type http from 'node:http';
import type { AddressInfo, Server } from 'node:net';
import { createHealthServer, defaultLimits, guardListener, type Logger } from '@kubetunnel/shared';
import {
  WorkersMetrics,
  aggregateMetrics,
  clustersReport,
  createAdminServerOf,
  mergeClustersReports,
  registryAdminSource,
  startServer,
  type KubetunnelServer,
  type ServerConfig,
} from '@kubetunnel/server';

/** The environment variable that tells a forked process which worker it is. */
export const WORKER_ENV = 'KUBETUNNEL_SERVER_WORKER';
/** Restarts of crashed workers allowed in RESTART_WINDOW_MS; past it the server exits. */
export const RESTARTS_PER_WINDOW = 5;
const RESTART_WINDOW_MS = 60_000;
/** How long the primary waits for a worker to answer an admin question. */
const IPC_TIMEOUT_MS = 5_000;

/** Messages between the primary and its workers (the `kt` field keeps them apart from the cluster module's own). */
type ToWorker = { kt: 'ask'; id: number; what: 'clusters' | 'metrics' | 'ca'; cluster?: string } | { kt: 'drain' };
type FromWorker =
  | { kt: 'up' }
  | { kt: 'failed'; message: string }
  | { kt: 'answer'; id: number; value?: unknown; error?: string };

/** This process's worker index, when it is a worker of `--workers`. */
export function workerIndex(): number | undefined {
  if (!cluster.isWorker) return undefined;
  const n = Number(process.env[WORKER_ENV]);
  return Number.isInteger(n) && n >= 0 ? n : undefined;
}

/** A worker's config: its own server id, the replica count with every worker counted, no health or admin port. */
export function workerConfig(config: ServerConfig, index: number, workers: number): ServerConfig {
  return { ...config, serverId: `${config.serverId}-w${index}`, serverCount: config.serverCount * workers, controlPorts: false };
}

/**
 * Runs this process as worker `index`: starts the server, answers the
 * primary's questions, drains when told to (or when the primary is gone).
 * A failure to start is reported to the primary, which prints it once.
 */
export async function runWorker(config: ServerConfig, index: number, workers: number, log: Logger): Promise<KubetunnelServer & { drain(): Promise<void> }> {
  const send = (m: FromWorker) => new Promise<void>((resolve) => (process.connected ? process.send!(m, undefined, {}, () => resolve()) : resolve()));
  const own = workerConfig(config, index, workers);
  let server: KubetunnelServer;
  try {
    server = await startServer(own, log);
  } catch (err) {
    let message = err instanceof Error ? err.message : String(err);
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') message += ' (another process has that port: choose others with the --*-port flags, 0 for any free port)';
    await send({ kt: 'failed', message });
    process.exit(1);
  }
  const source = registryAdminSource(own.serverId, server.registry, server.metrics);
  let draining: Promise<void> | undefined;
  const drain = () => (draining ??= server.drain());
  process.on('message', (m: ToWorker) => {
    if (m?.kt === 'drain') {
      drain().then(
        () => process.exit(0),
        () => process.exit(1),
      );
      return;
    }
    if (m?.kt !== 'ask') return;
    const answer =
      m.what === 'clusters'
        ? Promise.resolve(clustersReport(own.serverId, server.registry))
        : m.what === 'ca'
          ? source.clusterCA(m.cluster ?? '')
          : server.metrics.registry.getMetricsAsJSON();
    answer.then(
      (value) => void send({ kt: 'answer', id: m.id, value }),
      (err: unknown) => void send({ kt: 'answer', id: m.id, error: (err as Error).message ?? String(err) }),
    );
  });
  // The primary is gone (killed): finish what is open and stop, rather than serve on unsupervised.
  process.on('disconnect', () => {
    drain().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
  await send({ kt: 'up' });
  return { ...server, drain };
}

interface Slot {
  index: number;
  worker: Worker;
  /** When it reported up; undefined while starting. */
  upAt?: number;
}

export interface WorkersPrimary {
  addresses: { health: AddressInfo; admin: AddressInfo };
  /** SIGTERM: drain every worker; resolves when all have exited (rejects if one failed to drain). */
  drain(): Promise<void>;
}

/** Why the server cannot go on (a worker that cannot start, or workers that keep dying): main prints it and exits 1. */
export class WorkersFailed extends Error {}

/**
 * Runs the primary: binds health and admin, forks `workers` workers (each runs
 * this command again, as worker i) and supervises them. Resolves once every
 * worker is up; rejects with the first worker's start-up error.
 */
export async function runPrimary(config: ServerConfig, workers: number, log: Logger, onFatal: (err: Error) => void): Promise<WorkersPrimary> {
  cluster.schedulingPolicy = cluster.SCHED_RR;
  const slots = new Map<number, Slot>();
  const restarts: number[] = [];
  let stopping = false;
  let fatal: ((err: Error) => void) | undefined;
  let nextAsk = 0;
  const pending = new Map<number, { slot: Slot; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  const metrics = new WorkersMetrics(() => {
    const up = upSlots().length;
    return { up, starting: slots.size - up };
  });

  const ask = (slot: Slot, what: 'clusters' | 'metrics' | 'ca', clusterName?: string): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const id = nextAsk++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`worker ${slot.index} did not answer within ${IPC_TIMEOUT_MS / 1000}s`));
      }, IPC_TIMEOUT_MS);
      pending.set(id, { slot, resolve, reject, timer });
      slot.worker.send({ kt: 'ask', id, what, ...(clusterName ? { cluster: clusterName } : {}) } satisfies ToWorker);
    });
  /** The workers that are up and connected, by index. */
  const upSlots = () => [...slots.values()].filter((s) => s.upAt !== undefined && s.worker.isConnected()).sort((a, b) => a.index - b.index);

  const admin = createAdminServerOf({
    async clusters() {
      const reports = await Promise.all(upSlots().map((s) => ask(s, 'clusters') as Promise<ReturnType<typeof clustersReport>>));
      return mergeClustersReports(config.serverId, reports);
    },
    async clusterCA(name) {
      const answers = await Promise.all(upSlots().map((s) => ask(s, 'ca', name) as Promise<string | undefined>));
      return answers.find((ca) => ca);
    },
    async metrics() {
      const perWorker = await Promise.all(upSlots().map((s) => ask(s, 'metrics') as Promise<Parameters<typeof aggregateMetrics>[0][number]>));
      return { contentType: metrics.registry.contentType, text: (await aggregateMetrics(perWorker)) + (await metrics.registry.metrics()) };
    },
  });
  const health = createHealthServer(() => {
    if (stopping) return 'draining';
    const up = upSlots();
    if (up.length < workers) return `starting: ${up.length} of ${workers} workers up`;
    const grace = config.registrationGraceMs ?? 0;
    if (up.some((s) => performance.now() - s.upAt! < grace)) return 'starting: agents are registering';
    return true;
  });
  const limitsLog = log.child({ component: 'limits' });
  for (const [name, server] of [
    ['health', health],
    ['admin', admin],
  ] as const)
    guardListener(server, { name, limits: config.limits?.[name] ?? defaultLimits('plain'), log: limitsLog });

  const listen = async (name: string, server: http.Server, port: number, host: string): Promise<AddressInfo> => {
    server.listen(port, host);
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([err]) => {
        throw err;
      }),
    ]);
    const addr = server.address() as AddressInfo;
    log.info({ listener: name, address: `${addr.address}:${addr.port}` }, `${name} listening`);
    return addr;
  };
  const closeControl = async () => {
    for (const s of [health, admin] as Server[]) {
      if (!s.listening) continue;
      s.close();
      (s as http.Server).closeAllConnections();
      await once(s, 'close');
    }
  };
  const addresses = {
    health: await listen('health', health, config.healthPort, config.bindAddress),
    admin: await listen('admin', admin, config.adminPort, config.adminBindAddress).catch(async (err: unknown) => {
      await closeControl();
      throw err;
    }),
  };

  const fork = (index: number) => {
    const worker = cluster.fork({ [WORKER_ENV]: String(index) });
    const slot: Slot = { index, worker };
    slots.set(index, slot);
    let failure: string | undefined;
    worker.on('message', (m: FromWorker) => {
      if (m?.kt === 'up') {
        slot.upAt = performance.now();
        log.info({ worker: index, workerPid: worker.process.pid }, 'worker up');
        if (upSlots().length === workers) allUp?.();
      } else if (m?.kt === 'failed') failure = m.message;
      else if (m?.kt === 'answer') {
        const p = pending.get(m.id);
        if (!p) return;
        pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.error !== undefined) p.reject(new Error(`worker ${index}: ${m.error}`));
        else p.resolve(m.value);
      }
    });
    worker.on('exit', (code, signal) => {
      if (slots.get(index) === slot) slots.delete(index);
      // Questions it will never answer.
      for (const [id, p] of pending)
        if (p.slot === slot) {
          pending.delete(id);
          clearTimeout(p.timer);
          p.reject(new Error(`worker ${index} exited before it answered`));
        }
      if (stopping) return;
      if (slot.upAt === undefined) {
        fatal?.(new WorkersFailed(failure ?? `worker ${index} exited (${signal ?? code}) before it was up`));
        return;
      }
      const now = performance.now();
      while (restarts.length > 0 && now - restarts[0]! > RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length >= RESTARTS_PER_WINDOW) {
        fatal?.(new WorkersFailed(`workers keep dying: ${restarts.length + 1} in the last ${RESTART_WINDOW_MS / 1000}s (the last: worker ${index}, ${signal ?? `exit code ${code}`})`));
        return;
      }
      restarts.push(now);
      metrics.restarts.inc();
      log.error({ worker: index, code, signal }, 'worker died; starting it again');
      fork(index);
    });
  };

  /** Stops every worker now (no drain) and closes health and admin. */
  const stopAll = async () => {
    stopping = true;
    const exits = [...slots.values()].map((s) => (s.worker.isDead() ? undefined : once(s.worker, 'exit')));
    for (const s of slots.values()) s.worker.process.kill('SIGKILL');
    await Promise.all(exits);
    await closeControl();
  };

  let allUp: (() => void) | undefined;
  const started = new Promise<void>((resolve, reject) => {
    allUp = resolve;
    fatal = (err) => {
      fatal = undefined;
      void stopAll().then(() => reject(err));
    };
  });
  for (let i = 0; i < workers; i++) fork(i);
  await started;
  allUp = undefined;
  // From now on a fatal error is reported to the caller (main exits).
  fatal = (err) => {
    fatal = undefined;
    void stopAll().then(() => onFatal(err));
  };
  log.info({ workers, serverIds: upSlots().map((s) => `${config.serverId}-w${s.index}`) }, 'all workers up');

  let drained: Promise<void> | undefined;
  return {
    addresses,
    drain() {
      drained ??= (async () => {
        stopping = true;
        const results = await Promise.all(
          [...slots.values()].map(async (s) => {
            if (s.worker.isDead()) return 0;
            const exit = once(s.worker, 'exit');
            s.worker.send({ kt: 'drain' } satisfies ToWorker);
            const [code] = (await exit) as [number | null];
            return code;
          }),
        );
        await closeControl();
        const failed = results.filter((c) => c !== 0).length;
        log.info({ workers: results.length, failed }, 'workers stopped');
        if (failed > 0) throw new Error(`${failed} worker(s) did not drain cleanly`);
      })();
      return drained;
    },
  };
}
