import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FrameDecoder,
  FrameType,
  ProtocolError,
  decodeMessage,
  encodeFrame,
  encodeFrames,
  type Frame,
} from '../src/protocol/index.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// Byte fixtures: the wire layout is a contract with older and newer peers.
const fixtures: Array<[string, Frame, string]> = [
  ['DATA', { type: FrameType.DATA, streamId: 1, data: Buffer.from('hi') }, '04 00 00000001 00000002 6869'],
  ['WINDOW', { type: FrameType.WINDOW, streamId: 3, increment: 65536 }, '05 00 00000003 00000004 00010000'],
  ['FIN', { type: FrameType.FIN, streamId: 0xfffffffe }, '06 00 fffffffe 00000000'],
  ['RESET', { type: FrameType.RESET, streamId: 5, code: 20, message: 'no' }, '07 00 00000005 00000004 0014 6e6f'],
  ['OPEN_OK', { type: FrameType.OPEN_OK, streamId: 7, window: 262144 }, '02 00 00000007 00000004 00040000'],
  ['OPEN_ERR', { type: FrameType.OPEN_ERR, streamId: 9, code: 25, message: '' }, '03 00 00000009 00000002 0019'],
  ['PING', { type: FrameType.PING, streamId: 0, payload: 258n }, '08 00 00000000 00000008 0000000000000102'],
  ['PONG', { type: FrameType.PONG, streamId: 0, payload: 1n }, '09 00 00000000 00000008 0000000000000001'],
  ['GOAWAY', { type: FrameType.GOAWAY, streamId: 0, code: 6, message: 'x' }, '0a 00 00000000 00000003 0006 78'],
  [
    'OPEN',
    { type: FrameType.OPEN, streamId: 1, window: 1024, request: { kind: 'tcp', target: 'apiserver' } },
    '01 00 00000001 00000027 00000400' + Buffer.from('{"kind":"tcp","target":"apiserver"}').toString('hex'),
  ],
];

describe('frame codec fixtures', () => {
  it.each(fixtures)('%s encodes to the fixture and back', (_name, frame, bytes) => {
    expect(encodeFrame(frame).toString('hex')).toBe(hex(bytes).toString('hex'));
    expect(decodeMessage(hex(bytes))).toEqual([frame]);
  });

  it('decodes every fixture split at every byte offset', () => {
    const all = encodeFrames(fixtures.map((f) => f[1]));
    for (let cut = 0; cut <= all.length; cut++) {
      const d = new FrameDecoder();
      const got = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
      d.end();
      expect(got).toEqual(fixtures.map((f) => f[1]));
    }
  });

  it('decodes byte by byte', () => {
    const all = encodeFrames(fixtures.map((f) => f[1]));
    const d = new FrameDecoder();
    const got: Frame[] = [];
    for (const b of all) got.push(...d.push(Buffer.from([b])));
    d.end();
    expect(got).toEqual(fixtures.map((f) => f[1]));
  });

  it('keeps DATA payloads by reference (no copy)', () => {
    const msg = encodeFrame({ type: FrameType.DATA, streamId: 1, data: Buffer.alloc(100, 7) });
    const [f] = decodeMessage(msg);
    expect(f!.type === FrameType.DATA && f!.data.buffer).toBe(msg.buffer);
  });

  // Found by the property below: an extra key named "__proto__" was set with
  // an assignment on decode, which made the array the object's prototype
  // instead of a key, so the decoded identity lost it.
  it('keeps an identity extra key named "__proto__"', () => {
    const extra = JSON.parse('{"__proto__":["a"],"scopes":["b"]}') as Record<string, string[]>;
    const frame: Frame = {
      type: FrameType.OPEN,
      streamId: 1,
      window: 1,
      request: { kind: 'http', target: 'apiserver', identity: { user: 'u', groups: [], extra } },
    };
    const [got] = decodeMessage(encodeFrame(frame));
    expect(got).toEqual(frame);
    const gotExtra = (got as Extract<Frame, { type: typeof FrameType.OPEN }>).request.identity!.extra!;
    expect(Object.keys(gotExtra)).toEqual(['__proto__', 'scopes']);
    expect(Object.getPrototypeOf(gotExtra)).toBe(Object.prototype);
  });

  it('carries an L7 identity in OPEN', () => {
    const frame: Frame = {
      type: FrameType.OPEN,
      streamId: 11,
      window: 4096,
      request: {
        kind: 'http',
        target: 'apiserver',
        identity: { user: 'alice', groups: ['dev', 'system:authenticated'], uid: '42', extra: { scopes: ['a', 'b'] } },
      },
    };
    expect(decodeMessage(encodeFrame(frame))).toEqual([frame]);
  });
});

describe('frame codec rejects bad input with ProtocolError', () => {
  const bad: Array<[string, string, string]> = [
    ['unknown type', '0b 00 00000001 00000000', 'UNKNOWN_TYPE'],
    ['type zero', '00 00 00000001 00000000', 'UNKNOWN_TYPE'],
    ['reserved flags', '04 01 00000001 00000001 00', 'BAD_FLAGS'],
    ['stream frame on stream 0', '04 00 00000000 00000001 00', 'BAD_STREAM_ID'],
    ['PING on a stream', '08 00 00000001 00000008 0000000000000000', 'BAD_STREAM_ID'],
    ['oversize', '04 00 00000001 00100001', 'OVERSIZE'],
    ['truncated header', '04 00 0000', 'TRUNCATED'],
    ['truncated payload', '04 00 00000001 00000004 0102', 'TRUNCATED'],
    ['empty DATA', '04 00 00000001 00000000', 'BAD_PAYLOAD'],
    ['WINDOW of zero', '05 00 00000001 00000004 00000000', 'BAD_PAYLOAD'],
    ['WINDOW too large', '05 00 00000001 00000004 80000000', 'BAD_PAYLOAD'],
    ['WINDOW wrong length', '05 00 00000001 00000002 0001', 'BAD_PAYLOAD'],
    ['FIN with payload', '06 00 00000001 00000001 00', 'BAD_PAYLOAD'],
    ['OPEN not JSON', '01 00 00000001 00000005 00000400 7b', 'BAD_PAYLOAD'],
    [
      'OPEN bad kind',
      '01 00 00000001 0000001b 00000400' + Buffer.from('{"kind":"udp","target":"x"}').toString('hex'),
      'BAD_PAYLOAD',
    ],
    ['RESET bad UTF-8', '07 00 00000001 00000003 0001 ff', 'BAD_PAYLOAD'],
  ];
  it.each(bad)('%s', (_name, bytes, kind) => {
    let caught: unknown;
    try {
      decodeMessage(hex(bytes));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ProtocolError);
    expect((caught as ProtocolError).kind).toBe(kind);
    expect((caught as ProtocolError).reason).toBe('PROTOCOL_ERROR');
  });

  it('a decoder that failed stays failed', () => {
    const d = new FrameDecoder();
    expect(() => d.push(hex('ff 00 00000001 00000000'))).toThrow(ProtocolError);
    expect(() => d.push(encodeFrame({ type: FrameType.FIN, streamId: 1 }))).toThrow(ProtocolError);
  });

  it('rejects an oversize header before its payload arrives', () => {
    const d = new FrameDecoder({ maxPayload: 1024 });
    expect(() => d.push(hex('04 00 00000001 00000401'))).toThrow(/exceeds limit/);
  });
});

// ------------------------------------------------------------ properties

const streamId = fc.integer({ min: 1, max: 0xffffffff });
const code = fc.integer({ min: 0, max: 0xffff });
const message = fc.string({ maxLength: 200 });
const window = fc.integer({ min: 1, max: 0x7fffffff });
const nonce = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const identity = fc.record(
  {
    user: fc.string({ minLength: 1, maxLength: 40 }),
    groups: fc.array(fc.string({ maxLength: 20 }), { maxLength: 5 }),
    uid: fc.string({ maxLength: 20 }),
    extra: fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), fc.array(fc.string({ maxLength: 10 }), { maxLength: 3 }), {
      maxKeys: 3,
    }),
  },
  { requiredKeys: ['user', 'groups'] },
);

const arbFrame: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    type: fc.constant(FrameType.OPEN),
    streamId,
    window,
    request: fc.record(
      {
        kind: fc.constantFrom('tcp' as const, 'http' as const),
        target: fc.string({ minLength: 1, maxLength: 60 }),
        identity,
      },
      { requiredKeys: ['kind', 'target'] },
    ),
  }),
  fc.record({ type: fc.constant(FrameType.OPEN_OK), streamId, window }),
  fc.record({ type: fc.constant(FrameType.OPEN_ERR), streamId, code, message }),
  fc.record({
    type: fc.constant(FrameType.DATA),
    streamId,
    data: fc.uint8Array({ minLength: 1, maxLength: 3000 }).map((u) => Buffer.from(u)),
  }),
  fc.record({ type: fc.constant(FrameType.WINDOW), streamId, increment: window }),
  fc.record({ type: fc.constant(FrameType.FIN), streamId }),
  fc.record({ type: fc.constant(FrameType.RESET), streamId, code, message }),
  fc.record({ type: fc.constant(FrameType.PING), streamId: fc.constant(0 as const), payload: nonce }),
  fc.record({ type: fc.constant(FrameType.PONG), streamId: fc.constant(0 as const), payload: nonce }),
  fc.record({ type: fc.constant(FrameType.GOAWAY), streamId: fc.constant(0 as const), code, message }),
) as fc.Arbitrary<Frame>;

describe('frame codec properties', () => {
  it('encode then decode is the identity, however the bytes are split', () => {
    fc.assert(
      fc.property(fc.array(arbFrame, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 6 }), (frames, cuts) => {
        const bytes = encodeFrames(frames);
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const d = new FrameDecoder();
        const got: Frame[] = [];
        let prev = 0;
        for (const p of [...points, bytes.length]) {
          got.push(...d.push(bytes.subarray(prev, p)));
          prev = p;
        }
        d.end();
        expect(got).toEqual(frames);
      }),
      { numRuns: 500 },
    );
  });

  it('random garbage never throws anything but ProtocolError', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 6 }), (chunks) => {
        const d = new FrameDecoder({ maxPayload: 4096 });
        try {
          for (const c of chunks) d.push(Buffer.from(c));
          d.end();
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('garbage shaped like frames (valid header, random payload) only throws ProtocolError', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 12 }),
        fc.integer({ min: 0, max: 3 }),
        fc.uint8Array({ maxLength: 80 }),
        (type, sid, payload) => {
          const buf = Buffer.alloc(10 + payload.length);
          buf[0] = type;
          buf.writeUInt32BE(sid, 2);
          buf.writeUInt32BE(payload.length, 6);
          Buffer.from(payload).copy(buf, 10);
          try {
            decodeMessage(buf);
          } catch (err) {
            if (!(err instanceof ProtocolError)) throw err;
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});
