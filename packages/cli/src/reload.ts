import fs from 'node:fs';
import tls from 'node:tls';
import type { Logger } from '@kubetunnel/shared';

export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

/**
 * Watches certificate, key and CA files (polling, which also sees the
 * symlink swaps of Kubernetes secret volumes) and hands over the new
 * contents once they form a valid TLS context. A half-written or mismatched
 * set is logged and skipped; the last good one stays in use.
 */
export function watchTlsFiles(paths: TlsFiles, apply: (pem: TlsFiles) => void, log: Logger, intervalMs = 2000): () => void {
  const files = [paths.cert, paths.key, paths.ca];
  const onChange = (cur: fs.Stats, prev: fs.Stats) => {
    if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size) return;
    try {
      const pem = { cert: fs.readFileSync(paths.cert, 'utf8'), key: fs.readFileSync(paths.key, 'utf8'), ca: fs.readFileSync(paths.ca, 'utf8') };
      tls.createSecureContext(pem);
      apply(pem);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'certificate files changed but do not load; keeping the previous ones');
    }
  };
  for (const f of files) fs.watchFile(f, { interval: intervalMs, persistent: false }, onChange);
  return () => {
    for (const f of files) fs.unwatchFile(f, onChange);
  };
}
