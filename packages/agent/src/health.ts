import http from 'node:http';

/** /healthz while the process runs; /readyz when at least one tunnel is up. */
export function createHealthServer(ready: () => true | string): http.Server {
  return http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const send = (status: number, body: string) => {
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (path === '/healthz' || path === '/livez') return send(200, 'ok\n');
    if (path === '/readyz') {
      const r = ready();
      return r === true ? send(200, 'ok\n') : send(503, `${r}\n`);
    }
    send(404, 'not found: try /healthz or /readyz\n');
  });
}
