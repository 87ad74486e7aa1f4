import type { RawData, WebSocket } from 'ws';
import { toBuffer } from './exec.js';
import { SpdySession, RST_PROTOCOL_ERROR, type SpdyStream } from './spdy.js';

/**
 * Port-forward to the echo pod: every byte sent to a forwarded port comes back.
 *
 * kubectl 1.30+ tunnels SPDY through a WebSocket (subprotocol
 * `SPDY/3.1+portforward.k8s.io`: raw SPDY frames carried in binary messages).
 * Each local connection opens an "error" and a "data" stream carrying the
 * headers `streamType`, `port` and `requestID`.
 *
 * The older WebSocket protocol (`v4.channel.k8s.io`, ports in `?ports=`) is
 * served too: channel 2i carries data of the i-th port and 2i+1 its errors;
 * each channel's first server message is the port as a little-endian u16.
 */
export const SPDY_TUNNEL_PROTOCOL = 'SPDY/3.1+portforward.k8s.io';
export const PORTFORWARD_PROTOCOLS = [SPDY_TUNNEL_PROTOCOL, 'v4.channel.k8s.io', 'portforward.k8s.io', 'channel.k8s.io'];

export function runPortForwardSession(ws: WebSocket, protocol: string | undefined, query: URLSearchParams): void {
  if (protocol === SPDY_TUNNEL_PROTOCOL) runSpdyTunnel(ws);
  else runChannels(ws, query);
}

function runSpdyTunnel(ws: WebSocket): void {
  const session = new SpdySession((frame) => {
    if (ws.readyState === ws.OPEN) ws.send(frame, { binary: true });
  });
  ws.on('message', (raw: RawData) => session.receive(toBuffer(raw)));
  ws.on('close', () => session.close());
  session.on('close', (error?: Error) => {
    if (error && ws.readyState === ws.OPEN) ws.close(1002, 'SPDY protocol error');
  });

  // requestID (or port, for clients that send none) -> that connection's streams
  const connections = new Map<string, { error?: SpdyStream; dataDone: boolean }>();
  session.on('stream', (stream: SpdyStream) => {
    const type = stream.header('streamType');
    const port = stream.header('port') ?? '';
    if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535 || (type !== 'data' && type !== 'error')) {
      stream.reset(RST_PROTOCOL_ERROR);
      return;
    }
    const key = stream.header('requestID') ?? `port:${port}`;
    const conn = connections.get(key) ?? { dataDone: false };
    connections.set(key, conn);

    if (type === 'error') {
      // Nothing goes wrong in an echo: the error stream just ends with the data stream.
      conn.error = stream;
      stream.on('close', () => connections.delete(key));
      if (conn.dataDone) stream.end();
      return;
    }
    const done = (): void => {
      conn.dataDone = true;
      conn.error?.end();
    };
    stream.on('data', (data: Buffer) => stream.write(data));
    stream.on('end', () => {
      stream.end();
      done();
    });
    stream.on('close', done);
  });
}

function runChannels(ws: WebSocket, query: URLSearchParams): void {
  const ports = query
    .getAll('ports')
    .flatMap((p) => p.split(','))
    .map((p) => Number(p.trim()));
  if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    ws.close(1008, 'query parameter "ports" must name ports 1-65535');
    return;
  }
  ports.forEach((port, i) => {
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16LE(port);
    ws.send(Buffer.concat([Buffer.of(2 * i), prefix]), { binary: true });
    ws.send(Buffer.concat([Buffer.of(2 * i + 1), prefix]), { binary: true });
  });
  ws.on('message', (raw: RawData) => {
    const data = toBuffer(raw);
    const channel = data[0];
    if (channel !== undefined && channel % 2 === 0 && channel < 2 * ports.length && data.length > 1) {
      ws.send(data, { binary: true });
    }
  });
}
