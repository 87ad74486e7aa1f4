import { TunnelError } from '../errors.js';
import {
  FrameType,
  HEADER_SIZE,
  MAX_MESSAGE_BYTES,
  MAX_TARGET_LENGTH,
  MAX_WINDOW,
  type Frame,
  type Identity,
  type OpenRequest,
} from './frame.js';

/** Why a byte sequence is not a valid frame sequence. */
export type ProtocolErrorKind =
  | 'UNKNOWN_TYPE'
  | 'BAD_FLAGS'
  | 'BAD_STREAM_ID'
  | 'OVERSIZE'
  | 'TRUNCATED'
  | 'BAD_PAYLOAD'
  /** A well-formed frame the peer may not send now (DATA after FIN, beyond a closed stream's credit, ...). */
  | 'BAD_STATE';

/**
 * The one error the decoder throws, whatever the input; a session throws it
 * too for a peer's state violations. It always means: the peer broke the
 * protocol, and the session ends.
 */
export class ProtocolError extends TunnelError {
  readonly kind: ProtocolErrorKind;

  constructor(kind: ProtocolErrorKind, message: string) {
    super('PROTOCOL_ERROR', message);
    this.kind = kind;
  }
}

export interface CodecLimits {
  /** Largest payload of any frame; larger frames are rejected as OVERSIZE. */
  maxPayload: number;
}

export const DEFAULT_MAX_PAYLOAD = 64 * 1024;

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------- encoding

/** Writes a frame header at `offset` of `buf`. */
export function writeHeader(
  buf: Buffer,
  offset: number,
  type: FrameType,
  streamId: number,
  length: number,
): void {
  buf[offset] = type;
  buf[offset + 1] = 0;
  buf.writeUInt32BE(streamId, offset + 2);
  buf.writeUInt32BE(length, offset + 6);
}

function codeAndMessage(code: number, message: string): Buffer {
  let text: Buffer = Buffer.from(message, 'utf8');
  if (text.length > MAX_MESSAGE_BYTES) text = truncateUtf8(text, MAX_MESSAGE_BYTES);
  const out = Buffer.allocUnsafe(2 + text.length);
  out.writeUInt16BE(code, 0);
  text.copy(out, 2);
  return out;
}

/** Cuts UTF-8 text to at most `max` bytes without splitting a character. */
function truncateUtf8(buf: Buffer, max: number): Buffer {
  let end = max;
  while (end > 0 && (buf[end]! & 0xc0) === 0x80) end--;
  return buf.subarray(0, end);
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

function u64(n: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(n, 0);
  return b;
}

/** The payload bytes of a frame (for DATA, the data itself, not copied). */
export function encodePayload(frame: Frame): Buffer {
  switch (frame.type) {
    case FrameType.OPEN:
      return Buffer.concat([u32(frame.window), Buffer.from(JSON.stringify(frame.request), 'utf8')]);
    case FrameType.OPEN_OK:
      return u32(frame.window);
    case FrameType.OPEN_ERR:
    case FrameType.RESET:
    case FrameType.GOAWAY:
      return codeAndMessage(frame.code, frame.message);
    case FrameType.DATA:
      return frame.data;
    case FrameType.WINDOW:
      return u32(frame.increment);
    case FrameType.FIN:
      return Buffer.alloc(0);
    case FrameType.PING:
    case FrameType.PONG:
      return u64(frame.payload);
  }
}

/** Encodes one frame into a new buffer. */
export function encodeFrame(frame: Frame): Buffer {
  const payload = encodePayload(frame);
  const out = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  writeHeader(out, 0, frame.type, frame.streamId, payload.length);
  payload.copy(out, HEADER_SIZE);
  return out;
}

/** Encodes several frames into one buffer (one WebSocket message). */
export function encodeFrames(frames: readonly Frame[]): Buffer {
  const payloads = frames.map(encodePayload);
  let size = 0;
  for (const p of payloads) size += HEADER_SIZE + p.length;
  const out = Buffer.allocUnsafe(size);
  let off = 0;
  frames.forEach((f, i) => {
    const p = payloads[i]!;
    writeHeader(out, off, f.type, f.streamId, p.length);
    p.copy(out, off + HEADER_SIZE);
    off += HEADER_SIZE + p.length;
  });
  return out;
}

// ---------------------------------------------------------------- decoding

const SESSION_TYPES = new Set<number>([FrameType.PING, FrameType.PONG, FrameType.GOAWAY]);
const FIXED_LENGTH: Partial<Record<number, number>> = {
  [FrameType.OPEN_OK]: 4,
  [FrameType.WINDOW]: 4,
  [FrameType.FIN]: 0,
  [FrameType.PING]: 8,
  [FrameType.PONG]: 8,
};

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((s) => typeof s === 'string');
}

function parseIdentity(v: unknown): Identity {
  if (typeof v !== 'object' || v === null) throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity is not an object');
  const o = v as Record<string, unknown>;
  if (typeof o.user !== 'string' || o.user === '') throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity has no user');
  if (!isStringArray(o.groups)) throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity groups are not strings');
  const id: Identity = { user: o.user, groups: o.groups };
  if (o.uid !== undefined) {
    if (typeof o.uid !== 'string') throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity uid is not a string');
    id.uid = o.uid;
  }
  if (o.extra !== undefined) {
    if (typeof o.extra !== 'object' || o.extra === null || Array.isArray(o.extra))
      throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity extra is not an object');
    const entries = Object.entries(o.extra);
    if (!entries.every(([, val]) => isStringArray(val)))
      throw new ProtocolError('BAD_PAYLOAD', 'OPEN identity extra values are not strings');
    // fromEntries defines each key as an own property: an assignment would
    // turn a key named "__proto__" into the object's prototype and drop it.
    id.extra = Object.fromEntries(entries) as Record<string, string[]>;
  }
  return id;
}

function parseOpenRequest(json: Buffer): OpenRequest {
  let v: unknown;
  try {
    v = JSON.parse(utf8Strict.decode(json));
  } catch {
    throw new ProtocolError('BAD_PAYLOAD', 'OPEN request is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new ProtocolError('BAD_PAYLOAD', 'OPEN request is not an object');
  const o = v as Record<string, unknown>;
  if (o.kind !== 'tcp' && o.kind !== 'http') throw new ProtocolError('BAD_PAYLOAD', 'OPEN kind is not tcp or http');
  if (typeof o.target !== 'string' || o.target.length === 0 || o.target.length > MAX_TARGET_LENGTH)
    throw new ProtocolError('BAD_PAYLOAD', 'OPEN target is missing or too long');
  const req: OpenRequest = { kind: o.kind, target: o.target };
  if (o.identity !== undefined) req.identity = parseIdentity(o.identity);
  return req;
}

function readMessage(payload: Buffer, what: string): string {
  if (payload.length - 2 > MAX_MESSAGE_BYTES) throw new ProtocolError('OVERSIZE', `${what} message too long`);
  try {
    return utf8Strict.decode(payload.subarray(2));
  } catch {
    throw new ProtocolError('BAD_PAYLOAD', `${what} message is not UTF-8`);
  }
}

function readWindow(payload: Buffer, what: string, allowZero: boolean): number {
  const n = payload.readUInt32BE(0);
  if (n > MAX_WINDOW || (!allowZero && n === 0)) throw new ProtocolError('BAD_PAYLOAD', `${what} out of range: ${n}`);
  return n;
}

/**
 * Decodes one frame from its header fields and payload. `payload` is kept by
 * reference for DATA (no copy).
 */
export function decodeBody(type: number, flags: number, streamId: number, payload: Buffer): Frame {
  if (flags !== 0) throw new ProtocolError('BAD_FLAGS', `reserved flags set: ${flags}`);
  if (SESSION_TYPES.has(type)) {
    if (streamId !== 0) throw new ProtocolError('BAD_STREAM_ID', `session frame ${type} on stream ${streamId}`);
  } else if (streamId === 0 && type >= FrameType.OPEN && type <= FrameType.RESET) {
    throw new ProtocolError('BAD_STREAM_ID', `stream frame ${type} on stream 0`);
  }
  const fixed = FIXED_LENGTH[type];
  if (fixed !== undefined && payload.length !== fixed)
    throw new ProtocolError('BAD_PAYLOAD', `frame ${type} payload is ${payload.length} bytes, want ${fixed}`);
  switch (type) {
    case FrameType.OPEN:
      if (payload.length < 4) throw new ProtocolError('BAD_PAYLOAD', 'OPEN too short');
      return {
        type,
        streamId,
        window: readWindow(payload, 'OPEN window', false),
        request: parseOpenRequest(payload.subarray(4)),
      };
    case FrameType.OPEN_OK:
      return { type, streamId, window: readWindow(payload, 'OPEN_OK window', false) };
    case FrameType.OPEN_ERR:
    case FrameType.RESET:
    case FrameType.GOAWAY: {
      if (payload.length < 2) throw new ProtocolError('BAD_PAYLOAD', `frame ${type} too short`);
      const code = payload.readUInt16BE(0);
      const message = readMessage(payload, type === FrameType.GOAWAY ? 'GOAWAY' : 'error');
      return type === FrameType.GOAWAY ? { type, streamId: 0, code, message } : { type, streamId, code, message };
    }
    case FrameType.DATA:
      if (payload.length === 0) throw new ProtocolError('BAD_PAYLOAD', 'empty DATA frame');
      return { type, streamId, data: payload };
    case FrameType.WINDOW:
      return { type, streamId, increment: readWindow(payload, 'WINDOW increment', false) };
    case FrameType.FIN:
      return { type, streamId };
    case FrameType.PING:
    case FrameType.PONG:
      return { type, streamId: 0, payload: payload.readBigUInt64BE(0) };
    default:
      throw new ProtocolError('UNKNOWN_TYPE', `unknown frame type ${type}`);
  }
}

/**
 * A push parser: feed it bytes in pieces of any size; it returns the whole
 * frames they complete. It never does I/O and throws only ProtocolError.
 * After an error the decoder is unusable (the session must be closed).
 */
export class FrameDecoder {
  private readonly maxPayload: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  constructor(limits: Partial<CodecLimits> = {}) {
    this.maxPayload = limits.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  }

  /** Bytes held that do not yet make a whole frame. */
  get pending(): number {
    return this.buffered;
  }

  push(chunk: Buffer): Frame[] {
    if (this.failed) throw new ProtocolError('BAD_PAYLOAD', 'decoder used after an error');
    try {
      return this.parse(chunk);
    } catch (err) {
      this.failed = true;
      this.chunks = [];
      this.buffered = 0;
      throw err;
    }
  }

  /** Asserts that the input ended on a frame boundary. */
  end(): void {
    if (this.buffered > 0) {
      this.failed = true;
      throw new ProtocolError('TRUNCATED', `input ended inside a frame (${this.buffered} bytes left)`);
    }
  }

  private parse(chunk: Buffer): Frame[] {
    let buf = chunk;
    if (this.buffered > 0) {
      this.chunks.push(chunk);
      buf = Buffer.concat(this.chunks, this.buffered + chunk.length);
      this.chunks = [];
      this.buffered = 0;
    }
    const frames: Frame[] = [];
    let off = 0;
    while (buf.length - off >= HEADER_SIZE) {
      const type = buf[off]!;
      const flags = buf[off + 1]!;
      const streamId = buf.readUInt32BE(off + 2);
      const length = buf.readUInt32BE(off + 6);
      if (type < FrameType.OPEN || type > FrameType.GOAWAY)
        throw new ProtocolError('UNKNOWN_TYPE', `unknown frame type ${type}`);
      if (length > this.maxPayload)
        throw new ProtocolError('OVERSIZE', `frame payload ${length} exceeds limit ${this.maxPayload}`);
      if (buf.length - off - HEADER_SIZE < length) break;
      const start = off + HEADER_SIZE;
      frames.push(decodeBody(type, flags, streamId, buf.subarray(start, start + length)));
      off = start + length;
    }
    if (off < buf.length) {
      const rest = buf.subarray(off);
      this.chunks.push(rest);
      this.buffered = rest.length;
    }
    return frames;
  }
}

/** Decodes one whole message: every frame in it, and nothing left over. */
export function decodeMessage(message: Buffer, limits: Partial<CodecLimits> = {}): Frame[] {
  const d = new FrameDecoder(limits);
  const frames = d.push(message);
  d.end();
  return frames;
}

