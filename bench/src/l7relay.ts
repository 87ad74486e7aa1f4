/**
 * The node chain of the L7 scenarios: the reference for what two Node.js
 * HTTP proxies in series can do on this machine, as the nginx chain is for
 * two proxies in C. Each is one process with the parts kubetunnel's L7 path
 * is made of and nothing else: Node's HTTPS server toward its client, and an
 * undici Pool of kept TLS connections toward the next hop (kubetunnel's
 * agent sends to its apiserver the same way). No authentication, header
 * rewriting, audit, tunnel or multiplexing:
 *
 *   client --TLS--> node "hub" --TLS--> node "agent" --TLS--> upstream
 *
 *   node l7relay.js <certDir> <nextPort>
 *
 * Prints {"port": N} once listening.
 */
import fs from 'node:fs';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import v8 from 'node:v8';
import { Pool, type Dispatcher } from 'undici';

// The garbage collector setting kubetunnel runs with (packages/cli/bin/kubetunnel.js).
v8.setFlagsFromString('--no-incremental-marking-task');

const [certDir, nextPort] = process.argv.slice(2);
const file = (name: string) => fs.readFileSync(path.join(certDir!, name));

const next = new Pool(`https://localhost:${nextPort}`, {
  connect: { ca: file('ca.crt'), servername: 'localhost', host: '127.0.0.1' },
  headersTimeout: 0,
  bodyTimeout: 0,
});

/** Headers of one hop only (RFC 9110 section 7.6.1): not relayed. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host']);

/** Writes the next hop's answer to the client as it comes, no faster than the client reads it. */
class Relay implements Dispatcher.DispatchHandlers {
  constructor(private readonly res: ServerResponse) {}

  onConnect(abort: () => void): void {
    this.res.once('close', () => {
      if (!this.res.writableEnded) abort();
    });
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, statusText: string): boolean {
    const lines: string[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toString('latin1');
      if (!HOP.has(name.toLowerCase())) lines.push(name, raw[i + 1]!.toString('latin1'));
    }
    this.res.writeHead(status, statusText, lines);
    this.res.on('drain', resume);
    return true;
  }

  onData(chunk: Buffer): boolean {
    return this.res.write(chunk);
  }

  onComplete(): void {
    this.res.end();
  }

  onError(): void {
    if (this.res.headersSent) this.res.destroy();
    else this.res.writeHead(502).end();
  }
}

const server = https.createServer({ cert: file('server.crt'), key: file('server.key'), keepAliveTimeout: 60_000 }, (req: IncomingMessage, res: ServerResponse) => {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(req.headers)) if (value !== undefined && !HOP.has(name)) headers[name] = value;
  const body = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined ? req : null;
  next.dispatch({ path: req.url ?? '/', method: req.method as Dispatcher.HttpMethod, headers, body }, new Relay(res));
});
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
