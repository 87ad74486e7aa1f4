/**
 * The stand-in upstream of the benchmark: HTTPS with keep-alive, like an
 * apiserver: HTTP/2 and HTTP/1.1 by ALPN, or HTTP/1.1 only when argv[4] is
 * `http1` (bench --member-http1). GET /small (and any other path) answers ~100 bytes; GET
 * /bytes?n=N streams N bytes from a reused buffer; GET /api/v1/pods?bytes=N
 * answers a PodList of about N bytes of JSON (built once per size), as a
 * LIST would. Prints its port, then serves until killed.
 */
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

const [certFile, keyFile, protocols] = process.argv.slice(2);
const block = Buffer.alloc(1 << 20, 0x61);
const small = Buffer.from(JSON.stringify({ kind: 'Status', status: 'Success', message: 'x'.repeat(40) }));

/** PodList bodies by requested size (the benchmark asks for one or two sizes). */
const lists = new Map<number, Buffer>();
function podList(bytes: number): Buffer {
  let body = lists.get(bytes);
  if (body) return body;
  const item = (i: number) => JSON.stringify({ metadata: { name: `pod-${i}`, namespace: 'default', uid: `uid-${i}`, labels: { app: 'bench' } }, spec: { containers: [{ name: 'c', image: 'registry.example/bench:1' }] }, status: { phase: 'Running', podIP: '10.0.0.1' } });
  const per = item(0).length + 1;
  const items = Array.from({ length: Math.max(1, Math.round(bytes / per)) }, (_, i) => item(i));
  body = Buffer.from(`{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[${items.join(',')}]}`);
  if (lists.size < 4) lists.set(bytes, body);
  return body;
}

function handle(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'https://x');
  if (url.pathname === '/bytes') {
    let left = Number(url.searchParams.get('n') ?? 0);
    res.writeHead(200, { 'Content-Length': left, 'Content-Type': 'application/octet-stream' });
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, block.length);
        left -= n;
        if (!res.write(n === block.length ? block : block.subarray(0, n))) return void res.once('drain', pump);
      }
      res.end();
    };
    return pump();
  }
  if (url.pathname === '/api/v1/pods') {
    const body = podList(Math.min(Number(url.searchParams.get('bytes') ?? 1 << 20) || 0, 256 << 20));
    res.writeHead(200, { 'Content-Length': body.length, 'Content-Type': 'application/json' });
    return void res.end(body);
  }
  res.writeHead(200, { 'Content-Length': small.length, 'Content-Type': 'application/json' });
  res.end(small);
}

const tlsOptions = { cert: fs.readFileSync(certFile!), key: fs.readFileSync(keyFile!) };
// Over HTTP/2, Node's compatibility API hands `handle` requests and responses shaped as HTTP/1.1's.
const server =
  protocols === 'http1'
    ? https.createServer({ ...tlsOptions, keepAliveTimeout: 60_000 }, handle)
    : http2.createSecureServer({ ...tlsOptions, allowHTTP1: true }, handle as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
// Node's HTTP/2 server leaves Nagle on, for its HTTP/1.1 connections too: a TLS handshake's last
// message would wait for the delayed ACK of the one before (40 ms) in every connection-setup figure.
server.on('connection', (socket: Socket) => socket.setNoDelay(true));
server.maxConnections = 30_000;
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
