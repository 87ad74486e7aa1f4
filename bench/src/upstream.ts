/**
 * The stand-in upstream of the benchmark: HTTPS with keep-alive, like an
 * apiserver. GET /small answers ~100 bytes; GET /bytes?n=N streams N bytes
 * from a reused buffer. Prints its port, then serves until killed.
 */
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';

const [certFile, keyFile] = process.argv.slice(2);
const block = Buffer.alloc(1 << 20, 0x61);
const small = Buffer.from(JSON.stringify({ kind: 'Status', status: 'Success', message: 'x'.repeat(40) }));

const server = https.createServer({ cert: fs.readFileSync(certFile!), key: fs.readFileSync(keyFile!), keepAliveTimeout: 60_000 }, (req, res) => {
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
  res.writeHead(200, { 'Content-Length': small.length, 'Content-Type': 'application/json' });
  res.end(small);
});
server.maxConnections = 30_000;
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
