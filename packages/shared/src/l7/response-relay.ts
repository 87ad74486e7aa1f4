import type { ServerResponse } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import type { Dispatcher } from 'undici';
import { flushStreamedHead, relayedHeaderLines } from './headers.js';

/** Response headers HTTP/2 forbids (RFC 9113 section 8.2.2): HTTP/1.1's framing and connection. */
const HTTP1_ONLY = new Set(['transfer-encoding', 'upgrade', 'http2-settings']);

/**
 * Relays the answer to one request sent with undici as it comes, to an
 * HTTP/1.1 or an HTTP/2 caller: its head without hop-by-hop headers (nor,
 * to an HTTP/2 caller, HTTP/1.1's framing or reason phrase; a streamed
 * answer's head at once, flushStreamedHead), then its body, read no faster
 * than the caller takes it. A caller gone aborts the request; a failure
 * before the head goes to `failed` (which may send the request again with
 * the same relay), after it cuts the answer short. `complete` runs once the
 * whole answer is in, before it is ended toward the caller.
 */
export class ResponseRelay implements Dispatcher.DispatchHandlers {
  private bodyCame = false;
  /** Aborts the request on its connection (the latest, if it was sent again on another). */
  private abort?: (err?: Error) => void;

  constructor(
    private readonly res: ServerResponse | Http2ServerResponse,
    private readonly failed: (err: Error) => void,
    private readonly complete?: () => void,
  ) {
    res.once('close', () => {
      if (!res.writableEnded) this.abort?.();
    });
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abort = abort;
  }

  onHeaders(status: number, raw: Buffer[], resume: () => void, statusText: string): boolean {
    if (status < 200) return true; // informational: the final answer follows
    const lines = relayedHeaderLines(raw);
    const res = this.res;
    if (res instanceof Http2ServerResponse) {
      const h2: string[] = [];
      for (let i = 0; i < lines.length; i += 2) if (!HTTP1_ONLY.has(lines[i]!.toLowerCase())) h2.push(lines[i]!, lines[i + 1]!);
      // Node's types allow only an object here; an array of lines is what it takes at run time too.
      res.writeHead(status, h2 as unknown as Record<string, string>);
    } else res.writeHead(status, statusText, lines);
    res.on('drain', resume);
    const streamed = !lines.some((line, i) => i % 2 === 0 && line.toLowerCase() === 'content-length');
    flushStreamedHead(streamed, () => this.bodyCame, res);
    return true;
  }

  onData(chunk: Buffer): boolean {
    // An empty chunk (undici passes one on resuming) adds nothing: no reason to pause (see EndAfterRead).
    if (chunk.length === 0) return true;
    this.bodyCame = true;
    // Both kinds of response write the same way; the union of their overloads does not type-check.
    return (this.res as ServerResponse).write(chunk);
  }

  onComplete(): void {
    this.complete?.();
    this.res.end();
  }

  onError(err: Error): void {
    if (this.res.headersSent) this.res.destroy();
    else this.failed(err);
  }
}
