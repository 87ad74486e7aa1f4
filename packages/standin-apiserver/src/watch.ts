import type { ServerResponse } from 'node:http';
import type { WatchEvent } from './namespaces.js';

export interface WatchOptions {
  /** Starts delivering events to the listener; returns the unsubscribe function. */
  subscribe(listener: (event: WatchEvent) => void): () => void;
  /** Turns an event's object into what goes on the wire (e.g. a Table row). */
  render(event: WatchEvent): unknown;
  timeoutSeconds?: number;
}

/**
 * A Kubernetes JSON watch stream: chunked, one `{"type":...,"object":...}`
 * per line, each written (and so flushed) as soon as it happens. Ends after
 * `timeoutSeconds`, or when the client goes away.
 */
export function serveWatch(res: ServerResponse, options: WatchOptions): void {
  // No Content-Length: chunked over HTTP/1.1, DATA frames until the end over HTTP/2 (every connection is without Nagle's delay).
  res.writeHead(200, {
    'Content-Type': 'application/json',
    'Cache-Control': 'no-cache, private',
  });
  res.flushHeaders();

  let unsubscribe: (() => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  const stop = (): void => {
    unsubscribe?.();
    unsubscribe = undefined;
    if (timer) clearTimeout(timer);
  };
  res.on('close', stop);

  unsubscribe = options.subscribe((event) => {
    if (res.writableEnded || res.destroyed) return;
    res.write(JSON.stringify({ type: event.type, object: options.render(event) }) + '\n');
  });
  if (options.timeoutSeconds !== undefined && options.timeoutSeconds > 0) {
    timer = setTimeout(() => {
      stop();
      res.end();
    }, options.timeoutSeconds * 1000);
  }
}

/** `timeoutSeconds` from the query, if it is a positive number. */
export function timeoutFrom(query: URLSearchParams): number | undefined {
  const value = Number(query.get('timeoutSeconds'));
  return Number.isFinite(value) && value > 0 ? value : undefined;
}

export function isWatch(query: URLSearchParams): boolean {
  const value = query.get('watch');
  return value === '1' || value === 'true';
}
