/**
 * EndAfterRead: an answer its server closes the connection after, read by
 * undici slower than it comes (its parser paused for backpressure when the
 * connection ends), arrives whole instead of ending the process from
 * undici's 'end' listener (nodejs/undici#5360).
 */
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { Client, type Dispatcher } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { EndAfterRead } from '../src/index.js';

const BODY = Buffer.alloc(4 * 2 ** 20, 'kubetunnel ');

let cleanUp: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  await Promise.all(cleanUp.map((f) => f()));
  cleanUp = [];
});

/** A server that answers any request with `head` and BODY, then closes (as Python's http.server and a Go server shutting down do). */
async function closingServer(head: string): Promise<number> {
  const server = net.createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => {
      s.write(head);
      s.end(BODY);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanUp.push(() => new Promise((resolve) => server.close(resolve)));
  return (server.address() as AddressInfo).port;
}

/** GET / with a reader that takes each chunk a turn of the event loop later; resolves with the body it got. */
function slowGet(port: number): Promise<Buffer> {
  const client = new Client(`http://127.0.0.1:${port}`, {
    connect: (_options, done) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => done(null, new EndAfterRead(socket) as unknown as net.Socket));
      socket.once('error', (err) => done(err, null));
    },
  });
  cleanUp.push(() => client.destroy());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let resume = () => {};
    const handler: Dispatcher.DispatchHandlers = {
      onConnect: () => {},
      onHeaders: (_status, _raw, r) => {
        resume = r;
        return true;
      },
      onData: (chunk) => {
        if (chunk.length === 0) return true; // as ResponseRelay: nothing added, no pause
        chunks.push(Buffer.from(chunk));
        setImmediate(resume);
        return false; // backpressure: the parser pauses after every chunk
      },
      onComplete: () => resolve(Buffer.concat(chunks)),
      onError: reject,
    };
    client.dispatch({ path: '/', method: 'GET' }, handler);
  });
}

describe('EndAfterRead', () => {
  it.each([
    ['Content-Length and Connection: close', `HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n`],
    ['HTTP/1.0, the body ended by closing', 'HTTP/1.0 200 OK\r\n\r\n'],
  ])('%s: the whole body arrives, read slower than it comes', async (_name, head) => {
    const port = await closingServer(head);
    const body = await slowGet(port);
    expect(body.length).toBe(BODY.length);
    expect(body.equals(BODY)).toBe(true);
  });
});
