/**
 * onProxyResponse, the response hook of both L7 proxies: hop-by-hop headers
 * go, and the head of a streamed answer (no Content-Length) is flushed on its
 * own only when no body came in with it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { onProxyResponse } from '../src/index.js';

/** An upstream answer as http-proxy hands it over: a readable with headers; `body` arrives in the same read as the head. */
function upstream(headers: Record<string, string>, body?: string): IncomingMessage {
  const u = Object.assign(new PassThrough(), { headers: { ...headers } }) as unknown as IncomingMessage;
  if (body !== undefined) (u as unknown as PassThrough).write(body);
  return u;
}

/** The response toward the client: counts flushHeaders calls. */
function response(): ServerResponse & { flushes: number } {
  const res = { headersSent: false, destroyed: false, flushes: 0 } as unknown as ServerResponse & { flushes: number };
  res.flushHeaders = () => {
    res.flushes += 1;
  };
  return res;
}

const tick = () => new Promise<void>((resolve) => process.nextTick(resolve));

describe('onProxyResponse', () => {
  it('flushes the head of a streamed answer that came alone (a watch before its first event)', async () => {
    const res = response();
    onProxyResponse(upstream({ 'transfer-encoding': 'chunked', connection: 'keep-alive' }), res);
    await tick();
    expect(res.flushes).toBe(1);
  });

  it('leaves the head of a streamed answer to go with the body bytes that came with it', async () => {
    const u = upstream({ 'transfer-encoding': 'chunked' });
    const res = response();
    onProxyResponse(u, res);
    // The parser pushes the body of the same read right after the head's 'response' event.
    (u as unknown as PassThrough).write('{"kind":"Pod"}');
    await tick();
    expect(res.flushes).toBe(0);
  });

  it('never flushes an answer with a Content-Length, and drops hop-by-hop headers', async () => {
    const u = upstream({ 'content-length': '2', connection: 'keep-alive, x-private', 'keep-alive': 'timeout=5', 'x-private': '1', te: 'trailers' }, 'ok');
    const res = response();
    onProxyResponse(u, res);
    await tick();
    expect(res.flushes).toBe(0);
    expect(u.headers).toEqual({ 'content-length': '2' });
  });
});
