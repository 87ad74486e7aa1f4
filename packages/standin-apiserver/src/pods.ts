import type { ServerResponse } from 'node:http';
import type { KubeObject } from './namespaces.js';
import { sendText } from './status.js';

export const ECHO_POD = 'echo';
export const ECHO_NAMESPACE = 'default';
export const ECHO_CONTAINER = 'echo';
export const ECHO_PORT = 8080;

/** The one pod of the stand-in cluster: a Running `echo` pod in `default`. */
export function echoPod(cluster: string, started: Date): KubeObject {
  const startedAt = started.toISOString().replace(/\.\d+Z$/, 'Z');
  return {
    kind: 'Pod',
    apiVersion: 'v1',
    metadata: {
      name: ECHO_POD,
      namespace: ECHO_NAMESPACE,
      uid: '00000000-0000-4000-8000-00000000ec40',
      resourceVersion: '50',
      creationTimestamp: startedAt,
      labels: { app: 'echo' },
    },
    spec: {
      containers: [
        {
          name: ECHO_CONTAINER,
          image: 'kubetunnel/standin-echo:latest',
          ports: [{ name: 'echo', containerPort: ECHO_PORT, protocol: 'TCP' }],
        },
      ],
      nodeName: `${cluster}-node`,
      restartPolicy: 'Always',
    },
    status: {
      phase: 'Running',
      conditions: [
        { type: 'Initialized', status: 'True', lastTransitionTime: startedAt },
        { type: 'Ready', status: 'True', lastTransitionTime: startedAt },
        { type: 'ContainersReady', status: 'True', lastTransitionTime: startedAt },
        { type: 'PodScheduled', status: 'True', lastTransitionTime: startedAt },
      ],
      hostIP: '10.0.0.1',
      podIP: '10.244.0.10',
      podIPs: [{ ip: '10.244.0.10' }],
      startTime: startedAt,
      containerStatuses: [
        {
          name: ECHO_CONTAINER,
          ready: true,
          started: true,
          restartCount: 0,
          image: 'kubetunnel/standin-echo:latest',
          imageID: 'kubetunnel/standin-echo@sha256:0000000000000000000000000000000000000000000000000000000000000000',
          containerID: 'standin://echo',
          state: { running: { startedAt } },
        },
      ],
      qosClass: 'BestEffort',
    },
  };
}

/** Pods of a namespace (undefined: all namespaces). */
export function podsIn(pod: KubeObject, namespace: string | undefined): KubeObject[] {
  return namespace === undefined || namespace === ECHO_NAMESPACE ? [pod] : [];
}

/**
 * GET .../pods/echo/log: a few lines, or with follow=true one line every
 * 100ms until the client (or the server closing) ends the response.
 */
export function serveLogs(res: ServerResponse, follow: boolean, cluster: string): void {
  if (!follow) {
    sendText(res, 200, [1, 2, 3].map((n) => `echo ${cluster} line ${n}\n`).join(''));
    return;
  }
  // No Content-Length: chunked over HTTP/1.1, DATA frames until the end over HTTP/2.
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.flushHeaders();
  let n = 0;
  const timer = setInterval(() => {
    n += 1;
    res.write(`echo ${cluster} line ${n}\n`);
  }, 100);
  res.on('close', () => clearInterval(timer));
}
