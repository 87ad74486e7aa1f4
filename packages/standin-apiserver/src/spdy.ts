import { EventEmitter } from 'node:events';
import { constants, inflateSync } from 'node:zlib';
import { SPDY_DICTIONARY, SPDY_DICTIONARY_ID } from './spdy-dictionary.js';

/**
 * The server half of SPDY/3.1 framing, as much as a Kubernetes port-forward
 * client needs: the peer opens streams (SYN_STREAM), we accept every one
 * (SYN_REPLY), carry DATA both ways with FIN half-closes, honour RST_STREAM,
 * answer PINGs and stop on GOAWAY. No flow control: Go's spdystream (used by
 * client-go) neither sends nor waits for WINDOW_UPDATE.
 *
 * Frames (all integers big-endian):
 *   control: 1 bit 1 | 15 bits version (3) | 16 bits type | 8 bits flags | 24 bits length | payload
 *   data:    1 bit 0 | 31 bits stream id                 | 8 bits flags | 24 bits length | payload
 */

const VERSION = 3;
const SYN_STREAM = 1;
const SYN_REPLY = 2;
const RST_STREAM = 3;
const PING = 6;
const GOAWAY = 7;
const HEADERS = 8;
const FLAG_FIN = 0x01;
const MAX_DATA = 0xffff;
const MAX_HEADER_HISTORY = 1 << 20;

export const RST_PROTOCOL_ERROR = 1;
export const RST_CANCEL = 5;

export type SpdyHeaders = Map<string, string[]>;

/** One stream opened by the peer. Events: 'data' (Buffer), 'end' (peer sent FIN), 'close' (stream gone). */
export class SpdyStream extends EventEmitter {
  localFin = false;
  remoteFin = false;
  closed = false;

  constructor(
    readonly id: number,
    readonly headers: SpdyHeaders,
    private readonly session: SpdySession,
  ) {
    super();
  }

  header(name: string): string | undefined {
    return this.headers.get(name.toLowerCase())?.[0];
  }

  write(data: Buffer): void {
    if (this.localFin || this.closed) return;
    for (let at = 0; at < data.length; at += MAX_DATA) {
      this.session.sendData(this.id, data.subarray(at, at + MAX_DATA), false);
    }
  }

  /** Half-closes our side (an empty DATA frame with FIN). */
  end(): void {
    if (this.localFin || this.closed) return;
    this.localFin = true;
    this.session.sendData(this.id, Buffer.alloc(0), true);
    if (this.remoteFin) this.session.forget(this, false);
  }

  reset(status = RST_CANCEL): void {
    if (this.closed) return;
    this.session.sendControl(RST_STREAM, 0, u32(this.id, status));
    this.session.forget(this, true);
  }
}

/** Events: 'stream' (SpdyStream), 'close' (Error | undefined). */
export class SpdySession extends EventEmitter {
  private pending: Buffer = Buffer.alloc(0);
  private readonly streams = new Map<number, SpdyStream>();
  private readonly inflater = new HeaderInflater();
  private readonly deflater = new HeaderDeflater();
  private closed = false;

  /** `send` carries one whole frame to the peer. */
  constructor(private readonly send: (frame: Buffer) => void) {
    super();
  }

  /** Feeds bytes from the peer; frames may arrive split or batched arbitrarily. */
  receive(chunk: Buffer): void {
    if (this.closed) return;
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    while (!this.closed && this.pending.length >= 8) {
      const length = this.pending.readUIntBE(5, 3);
      if (this.pending.length < 8 + length) return;
      const frame = this.pending.subarray(0, 8 + length);
      this.pending = this.pending.subarray(8 + length);
      try {
        this.onFrame(frame);
      } catch (err) {
        this.sendControl(GOAWAY, 0, u32(0, 1)); // PROTOCOL_ERROR
        this.close(err as Error);
      }
    }
  }

  /** Drops every stream; 'close' carries the protocol error, if that was the cause. */
  close(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const stream of [...this.streams.values()]) this.forget(stream, true);
    this.emit('close', error);
  }

  sendData(id: number, data: Buffer, fin: boolean): void {
    const frame = Buffer.alloc(8 + data.length);
    frame.writeUInt32BE(id & 0x7fffffff, 0);
    frame.writeUInt32BE(((fin ? FLAG_FIN : 0) << 24) | data.length, 4);
    data.copy(frame, 8);
    this.write(frame);
  }

  sendControl(type: number, flags: number, payload: Buffer): void {
    const frame = Buffer.alloc(8 + payload.length);
    frame.writeUInt16BE(0x8000 | VERSION, 0);
    frame.writeUInt16BE(type, 2);
    frame.writeUInt32BE(((flags << 24) | payload.length) >>> 0, 4);
    payload.copy(frame, 8);
    this.write(frame);
  }

  forget(stream: SpdyStream, aborted: boolean): void {
    if (stream.closed) return;
    stream.closed = true;
    this.streams.delete(stream.id);
    stream.emit('close', aborted);
  }

  private write(frame: Buffer): void {
    if (!this.closed) this.send(frame);
  }

  private onFrame(frame: Buffer): void {
    const flags = frame[4]!;
    const payload = frame.subarray(8);
    if ((frame[0]! & 0x80) === 0) {
      this.onData(frame.readUInt32BE(0) & 0x7fffffff, flags, payload);
      return;
    }
    switch (frame.readUInt16BE(2)) {
      case SYN_STREAM:
        this.onSynStream(payload.readUInt32BE(0) & 0x7fffffff, flags, this.inflater.headers(payload.subarray(10)));
        break;
      case HEADERS:
        this.inflater.headers(payload.subarray(4)); // keeps the shared zlib context in step
        break;
      case RST_STREAM: {
        const stream = this.streams.get(payload.readUInt32BE(0) & 0x7fffffff);
        if (stream) this.forget(stream, true);
        break;
      }
      case PING:
        if ((payload.readUInt32BE(0) & 1) === 1) this.sendControl(PING, 0, payload); // client pings are odd
        break;
      case GOAWAY:
        this.close();
        break;
      default: // SETTINGS, WINDOW_UPDATE, SYN_REPLY (we open no streams): nothing to do
    }
  }

  private onSynStream(id: number, flags: number, headers: SpdyHeaders): void {
    if (id === 0 || id % 2 === 0 || this.streams.has(id)) {
      this.sendControl(RST_STREAM, 0, u32(id, RST_PROTOCOL_ERROR));
      return;
    }
    const stream = new SpdyStream(id, headers, this);
    this.streams.set(id, stream);
    const reply = Buffer.concat([u32(id), this.deflater.block(new Map())]);
    this.sendControl(SYN_REPLY, 0, reply);
    this.emit('stream', stream);
    if (flags & FLAG_FIN) this.remoteEnd(stream);
  }

  private onData(id: number, flags: number, data: Buffer): void {
    const stream = this.streams.get(id);
    if (!stream || stream.remoteFin) return;
    if (data.length > 0) stream.emit('data', data);
    if (flags & FLAG_FIN) this.remoteEnd(stream);
  }

  private remoteEnd(stream: SpdyStream): void {
    stream.remoteFin = true;
    stream.emit('end');
    if (stream.localFin) this.forget(stream, false);
  }
}

function u32(...values: number[]): Buffer {
  const out = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => out.writeUInt32BE(v >>> 0, 4 * i));
  return out;
}

/**
 * Header blocks: a u32 count, then u32-length-prefixed name and value (values
 * joined by NUL), zlib-compressed with one compression context per direction
 * for the whole session, each block ending on a sync flush.
 */
class HeaderInflater {
  private readonly compressed: Buffer[] = [];
  private size = 0;
  private produced = 0;

  /**
   * Node has no synchronous streaming inflate, so this re-inflates the whole
   * history of header blocks and keeps the new output: quadratic in the number
   * of streams (about 20 bytes each), which is fine for a stand-in, and capped.
   */
  headers(block: Buffer): SpdyHeaders {
    this.size += block.length;
    if (this.size > MAX_HEADER_HISTORY) throw new Error('too many SPDY streams for the stand-in on one connection');
    this.compressed.push(Buffer.from(block));
    const all = inflateSync(Buffer.concat(this.compressed), {
      dictionary: SPDY_DICTIONARY,
      finishFlush: constants.Z_SYNC_FLUSH,
    });
    const fresh = all.subarray(this.produced);
    this.produced = all.length;
    return parseHeaderBlock(fresh);
  }
}

/**
 * Our side's compression context. Deflate "stored" blocks are valid zlib
 * output that needs no compressor state: the stream starts with a zlib header
 * naming the SPDY dictionary, and each header block is one or more non-final
 * stored blocks followed by an empty one, exactly the marker a zlib sync flush
 * ends with. Go's inflater needs that marker: it hands out a block's bytes only
 * once it has looked at the next block header, which must be inside the frame.
 */
class HeaderDeflater {
  private started = false;

  block(headers: SpdyHeaders): Buffer {
    const raw = encodeHeaderBlock(headers);
    const parts: Buffer[] = [];
    if (!this.started) {
      this.started = true;
      parts.push(Buffer.of(0x78, 0x20), u32(SPDY_DICTIONARY_ID)); // CMF/FLG with FDICT, then DICTID
    }
    for (let at = 0; at < raw.length; at += 0xffff) {
      const piece = raw.subarray(at, at + 0xffff);
      const head = Buffer.alloc(5);
      head[0] = 0x00; // BFINAL=0, BTYPE=00 (stored), padded to the byte boundary
      head.writeUInt16LE(piece.length, 1);
      head.writeUInt16LE(~piece.length & 0xffff, 3);
      parts.push(head, piece);
    }
    parts.push(Buffer.of(0x00, 0x00, 0x00, 0xff, 0xff)); // empty stored block: the sync-flush marker
    return Buffer.concat(parts);
  }
}

export function encodeHeaderBlock(headers: SpdyHeaders): Buffer {
  const parts: Buffer[] = [u32(headers.size)];
  for (const [name, values] of headers) {
    const n = Buffer.from(name.toLowerCase());
    const v = Buffer.from(values.join('\0'));
    parts.push(u32(n.length), n, u32(v.length), v);
  }
  return Buffer.concat(parts);
}

export function parseHeaderBlock(block: Buffer): SpdyHeaders {
  const headers: SpdyHeaders = new Map();
  let at = 4;
  const take = (): string => {
    const length = block.readUInt32BE(at);
    const value = block.subarray(at + 4, at + 4 + length).toString('utf8');
    at += 4 + length;
    return value;
  };
  const count = block.readUInt32BE(0);
  for (let i = 0; i < count; i++) {
    const name = take().toLowerCase();
    headers.set(name, [...(headers.get(name) ?? []), ...take().split('\0')]);
  }
  return headers;
}
