import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { ProtocolError } from '../protocol/codec.js';
import type { FrameTransport } from './transport.js';

/** A session transport over a `ws` WebSocket (either end). */
export class WsTransport extends EventEmitter implements FrameTransport {
  readonly ws: WebSocket;
  private closed = false;

  constructor(ws: WebSocket) {
    super();
    this.ws = ws;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        this.finish(new ProtocolError('BAD_PAYLOAD', 'text message on the tunnel'));
        ws.close(1003, 'binary messages only');
        return;
      }
      this.emit('message', data);
    });
    ws.on('error', (err) => this.finish(err));
    ws.on('close', (code: number, reason: Buffer) =>
      this.finish(code === 1000 || code === 1001 ? undefined : new Error(`websocket closed: ${code} ${reason.toString()}`)),
    );
    // The socket under the WebSocket: no Nagle delay for small frames.
    (ws as unknown as { _socket?: { setNoDelay?: (b: boolean) => void } })._socket?.setNoDelay?.(true);
  }

  send(message: Buffer, cb: (err?: Error) => void): void {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      setImmediate(cb, new Error('websocket not open'));
      return;
    }
    this.ws.send(message, { binary: true, compress: false }, cb);
  }

  close(code = 1000, reason = ''): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close(code, reason.slice(0, 120));
      // A peer that never answers the close handshake must not keep the socket.
      const t = setTimeout(() => this.ws.terminate(), 2000);
      t.unref();
      this.ws.once('close', () => clearTimeout(t));
    }
  }

  terminate(): void {
    this.ws.terminate();
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close', err);
  }
}
