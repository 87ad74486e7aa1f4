import http from 'node:http';
import { parseOriginForm } from './target.js';

/** Writes a small complete response that is never cached. */
export function sendText(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

/**
 * Health endpoints of the server and the agent: /healthz and /livez while
 * the process runs, /readyz while `ready()` says so (else 503 with its
 * reason). Plain HTTP, GET and HEAD only.
 */
export function createHealthServer(ready: () => true | string): http.Server {
  return http.createServer((req, res) => {
    const target = parseOriginForm(req.url);
    if (!target) return sendText(res, 400, 'text/plain; charset=utf-8', 'request target must be a path\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'text/plain; charset=utf-8', 'GET only\n');
    if (target.path === '/healthz' || target.path === '/livez') return sendText(res, 200, 'text/plain; charset=utf-8', 'ok\n');
    if (target.path === '/readyz') {
      const r = ready();
      return r === true ? sendText(res, 200, 'text/plain; charset=utf-8', 'ok\n') : sendText(res, 503, 'text/plain; charset=utf-8', `${r}\n`);
    }
    sendText(res, 404, 'text/plain; charset=utf-8', 'not found: try /healthz or /readyz\n');
  });
}
