/**
 * A connection through kubetunnel's Konnectivity ProxyService, as a
 * konnectivity-client makes it: one Proxy call per connection on a shared
 * channel, DIAL_REQ / DIAL_RSP, then DATA both ways (CLOSE_REQ at the end),
 * presented as a Duplex so TLS to the upstream runs inside it.
 */
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { ProxyServiceClient, packets, type Packet } from '@kubetunnel/server';

type Call = grpc.ClientDuplexStream<Packet, Packet>;

const channels = new Map<string, grpc.Client>();
function channel(port: number, hubCA: string): grpc.Client {
  const key = `${port}`;
  let c = channels.get(key);
  if (!c) {
    c = new ProxyServiceClient(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(hubCA)), {
      'grpc.ssl_target_name_override': 'localhost',
    });
    channels.set(key, c);
  }
  return c;
}

class ProxyConn extends Duplex {
  constructor(
    private readonly call: Call,
    private readonly id: string,
  ) {
    super();
    call.on('data', (p: Packet) => {
      if (p.type === 'DATA' && p.data) {
        if (!this.push(p.data.data)) call.pause();
      } else if (p.type === 'CLOSE_RSP') this.push(null);
    });
    call.on('end', () => this.push(null));
    call.on('error', (err) => this.destroy(err));
  }

  override _read(): void {
    this.call.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.call.write(packets.data(this.id, chunk))) cb();
    else this.call.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.call.write(packets.closeReq(this.id));
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.call.cancel();
    cb(err);
  }
}

/** Dials `cluster`'s apiserver through the ProxyService; the connection once DIAL_RSP has come. */
export function dialGrpc(route: { grpcPort: number; cluster: string; token: string; hubCA: string }): Promise<Duplex> {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${route.token}`);
  const call = (channel(route.grpcPort, route.hubCA) as unknown as { Proxy(md: grpc.Metadata): Call }).Proxy(md);
  const random = String(Math.floor(Math.random() * 2 ** 52) + 1);
  call.write(packets.dialReq(`${route.cluster}:443`, random));
  return new Promise((resolve, reject) => {
    call.once('error', reject);
    call.once('data', (p: Packet) => {
      call.off('error', reject);
      const r = p.dialResponse;
      if (p.type !== 'DIAL_RSP' || !r || r.random !== random) return reject(new Error(`want DIAL_RSP, got ${p.type}`));
      if (r.error) return reject(new Error(`dial refused: ${r.error}`));
      resolve(new ProxyConn(call, r.connectID));
    });
  });
}
