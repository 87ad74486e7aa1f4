/**
 * How both L7 proxies pass an answer's head on: hop-by-hop headers go
 * (relayedHeaderLines, on the raw lines undici gives), and the
 * head of a streamed answer (no Content-Length) is flushed on its own only
 * when no body came in with it (flushStreamedHead).
 */
import type { ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { flushStreamedHead, relayedHeaderLines } from '../src/index.js';

/** The response toward the client: counts flushHeaders calls. */
function response(): ServerResponse & { flushes: number } {
  const res = { headersSent: false, destroyed: false, flushes: 0 } as unknown as ServerResponse & { flushes: number };
  res.flushHeaders = () => {
    res.flushes += 1;
  };
  return res;
}

const tick = () => new Promise<void>((resolve) => process.nextTick(resolve));

describe('flushStreamedHead', () => {
  it('flushes the head of a streamed answer that came alone (a watch before its first event)', async () => {
    const res = response();
    flushStreamedHead(true, () => false, res);
    await tick();
    expect(res.flushes).toBe(1);
  });

  it('leaves the head of a streamed answer to go with the body bytes that came with it', async () => {
    const res = response();
    let came = false;
    flushStreamedHead(true, () => came, res);
    // The parser hands over the body of the same read right after the head.
    came = true;
    await tick();
    expect(res.flushes).toBe(0);
  });

  it('never flushes an answer with a Content-Length', async () => {
    const res = response();
    flushStreamedHead(false, () => false, res);
    await tick();
    expect(res.flushes).toBe(0);
  });
});

describe('hop-by-hop headers of an answer', () => {
  it('relayedHeaderLines keeps the other lines in order, case and bytes, repeated ones too', () => {
    const raw = [
      'Content-Type', 'application/json',
      'Connection', 'keep-alive, X-Private',
      'Set-Cookie', 'a=1',
      'X-Private', 'secret',
      'Transfer-Encoding', 'chunked',
      'Keep-Alive', 'timeout=5',
      'Set-Cookie', 'b=2',
      'X-Name', 'caf\u00c3\u00a9',
    ].map((s) => Buffer.from(s, 'latin1'));
    expect(relayedHeaderLines(raw)).toEqual(['Content-Type', 'application/json', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'X-Name', 'caf\u00c3\u00a9']);
  });

  it('relayedHeaderLines keeps a framing header that Connection names', () => {
    const raw = ['Connection', 'content-length', 'Content-Length', '2'].map((s) => Buffer.from(s));
    expect(relayedHeaderLines(raw)).toEqual(['Content-Length', '2']);
  });
});
