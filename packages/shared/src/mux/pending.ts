import type { EventEmitter } from 'node:events';
import { TunnelError } from '../errors.js';
import type { MuxStream } from './stream.js';

/** An open of a stream that waits for the peer's answer. */
export interface PendingOpen {
  stream: MuxStream;
  /** The peer accepted: the stream is open. */
  resolve: (s: MuxStream) => void;
  /** The peer refused, or the tunnel ended. */
  reject: (err: Error) => void;
}

export interface AwaitOpenOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** What the peer owes an answer to, for the timeout's message ("OPEN", "DIAL_REQ"). */
  request: string;
  /** Gives up on our side: tells the peer (so it abandons its dial) and ends the stream. */
  abandon(err: Error): void;
  /** Runs once the open is settled, whichever way, after it left `pending`. */
  settled?(): void;
}

/**
 * Registers the open of `stream` in `pending` under `key` and waits for the
 * answer, which whoever reads the peer's frames delivers through the entry.
 * The open fails OPEN_TIMEOUT after `timeoutMs` and CANCELLED when `signal`
 * aborts (both abandon it); the entry leaves `pending` on every path.
 */
export function awaitOpen<K>(pending: Map<K, PendingOpen>, key: K, stream: MuxStream, o: AwaitOpenOptions): Promise<MuxStream> {
  return new Promise<MuxStream>((resolve, reject) => {
    const timer = setTimeout(() => fail(new TunnelError('OPEN_TIMEOUT', `no answer to ${o.request} within ${o.timeoutMs} ms`)), o.timeoutMs);
    const onAbort = () => fail(new TunnelError('CANCELLED', 'open cancelled'));
    const cleanup = () => {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      pending.delete(key);
      o.settled?.();
    };
    const fail = (err: Error) => {
      cleanup();
      o.abandon(err);
      reject(err);
    };
    o.signal?.addEventListener('abort', onAbort, { once: true });
    pending.set(key, {
      stream,
      resolve: (s) => {
        cleanup();
        resolve(s);
      },
      reject: (err) => {
        cleanup();
        stream.abort(err);
        reject(err);
      },
    });
  });
}

/**
 * The end of a drain: closes `session` once it is idle (its 'idle' event, or
 * `idle` already true) or after `graceMs`, whichever comes first; resolves
 * then, or as soon as the session closes some other way.
 */
export function closeWhenIdle(session: EventEmitter & { close(): void }, idle: boolean, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      session.off('idle', finish);
      session.off('close', finish);
      clearTimeout(timer);
      session.close();
      resolve();
    };
    if (idle) return finish();
    session.once('idle', finish);
    session.once('close', finish);
    timer = setTimeout(finish, graceMs);
  });
}
