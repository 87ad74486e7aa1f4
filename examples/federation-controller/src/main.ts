/**
 * An example federation controller: one kubeconfig, one identity, every
 * member cluster. It lists the namespaces of each cluster through the
 * kubetunnel hub (L7 mode: the hub authenticates us, each agent impersonates
 * us in its cluster), then watches them all and prints changes as they come.
 *
 *   KUBECONFIG=demo/kubeconfig node examples/federation-controller/dist/main.js [--contexts a,b] [--watch-for 30s]
 *
 * By default it uses every context whose name ends in -l7 and watches until
 * interrupted.
 */
import * as k8s from '@kubernetes/client-node';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function seconds(text: string): number {
  const m = /^(\d+)(ms|s|m)?$/.exec(text);
  if (!m) throw new Error(`not a duration: ${text}`);
  return Number(m[1]) * ({ ms: 0.001, s: 1, m: 60 }[(m[2] ?? 's') as 'ms' | 's' | 'm']);
}

/** A KubeConfig that talks to one context of the shared kubeconfig. */
function forContext(base: k8s.KubeConfig, context: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({
    clusters: base.clusters,
    users: base.users,
    contexts: base.contexts,
    currentContext: context,
  });
  return kc;
}

async function main(): Promise<void> {
  const base = new k8s.KubeConfig();
  base.loadFromDefault();
  const wanted = flag('--contexts')?.split(',').filter(Boolean);
  const contexts = wanted ?? base.getContexts().map((c) => c.name).filter((n) => n.endsWith('-l7'));
  if (contexts.length === 0) throw new Error('no contexts: pass --contexts or use a kubeconfig with -l7 contexts');

  const aborts: AbortController[] = [];
  await Promise.all(
    contexts.map(async (context) => {
      const kc = forContext(base, context);
      const core = kc.makeApiClient(k8s.CoreV1Api);
      const list = await core.listNamespace();
      for (const ns of list.items) console.log(`[${context}] namespace ${ns.metadata?.name} (${ns.status?.phase ?? 'unknown'})`);
      const watch = new k8s.Watch(kc);
      const controller = await watch.watch(
        '/api/v1/namespaces',
        { resourceVersion: list.metadata?.resourceVersion },
        (type: string, obj: k8s.V1Namespace) => console.log(`[${context}] ${type} namespace ${obj.metadata?.name}`),
        (err: unknown) => {
          if (err && !(err instanceof Error && err.name === 'AbortError')) console.error(`[${context}] watch ended: ${String(err)}`);
        },
      );
      aborts.push(controller);
      console.log(`[${context}] watching namespaces`);
    }),
  );

  const watchFor = flag('--watch-for');
  const timer = watchFor ? setTimeout(() => stop(), seconds(watchFor) * 1000) : undefined;
  const stop = () => {
    clearTimeout(timer);
    for (const a of aborts) a.abort();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: unknown) => {
  console.error(`federation-controller: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
