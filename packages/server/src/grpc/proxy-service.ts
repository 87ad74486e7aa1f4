import * as grpc from '@grpc/grpc-js';
import { Reasons, TunnelError, type Identity, type Logger, type MuxStream } from '@kubetunnel/shared';
import { authenticatePeer, type AuthResult } from '../auth.js';
import type { FrontendDeps } from '../deps.js';
import { dialCluster } from '../dial.js';
import { refused, refusal, type Refusal } from '../refusal.js';
import { resolveDial } from '../routing/resolve.js';
import { tcpTarget } from '../routing/target.js';
import { describePacket, packets, type Packet } from './packets.js';

/**
 * Who calls on a listener: over TLS the caller is its verified client
 * certificate or the bearer token in its `authorization` metadata; over the
 * Unix socket, whoever may open the socket file is the configured identity
 * (a token in `authorization`, when sent, is checked and used instead).
 */
export type CallerSource = { kind: 'tls' } | { kind: 'uds'; identity: Identity };

/** The gRPC status a refusal ends its call with: the error table's. */
export function grpcStatusOf(r: Refusal): grpc.status {
  return Reasons[r.reason].grpc as grpc.status;
}

function metadataValue(md: grpc.Metadata, key: string): string | string[] | undefined {
  const values = md.get(key).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v));
  if (values.length === 0) return undefined;
  return values.length === 1 ? values[0] : values;
}

function authenticateCall(deps: FrontendDeps, source: CallerSource, call: grpc.ServerDuplexStream<Packet, Packet>): AuthResult {
  const authorization = metadataValue(call.metadata, 'authorization');
  if (Array.isArray(authorization)) return refused('UNAUTHENTICATED', 'more than one authorization metadata value');
  if (source.kind === 'uds' && authorization === undefined) return { ok: true, identity: source.identity, via: 'certificate' };
  const cert = source.kind === 'tls' ? call.getAuthContext().sslPeerCertificate : undefined;
  return authenticatePeer(cert, authorization, deps.tokens);
}

let nextConnectId = 1n;

/**
 * ProxyService.Proxy: one call carries one connection, as konnectivity-client
 * uses it. DIAL_REQ -> DIAL_RSP (a connectID, or an error with the call then
 * ended with the matching gRPC status) -> DATA both ways -> CLOSE_REQ /
 * CLOSE_RSP (or CLOSE_RSP alone when the far end hangs up). DIAL_CLS gives
 * up a dial still pending: no DIAL_RSP follows and the call ends.
 *
 * Flow control: a DATA packet is written to the tunnel stream and the call
 * is paused while the stream's send buffer is full (gRPC then stops reading
 * and HTTP/2 holds the client); tunnel data is written to the call and the
 * stream paused while the call's buffer is full (our credit window then
 * holds the agent). Each side holds at most its own buffer's worth.
 */
export function proxyHandler(deps: FrontendDeps, source: CallerSource): grpc.handleBidiStreamingCall<Packet, Packet> {
  return (call) => {
    let log = deps.log.child({ frontend: 'grpc', via: source.kind, peer: call.getPeer() });
    const auth = authenticateCall(deps, source, call);
    let phase: 'idle' | 'dialing' | 'open' | 'done' = 'idle';
    let random = '';
    let connectID = '';
    let stream: MuxStream | undefined;
    const dialAbort = new AbortController();
    let dialClosed = false;
    // A call that names nothing to dial holds a stream for nothing: it gets as long as a dial may take.
    // This and protocolError end a call that broke the ANP protocol, not a dial: they carry the
    // status gRPC has for what happened, and are counted under the table's reason.
    const idle = setTimeout(() => {
      if (phase !== 'idle') return;
      deps.metrics.refused('grpc', 'BAD_REQUEST');
      finish(grpc.status.DEADLINE_EXCEEDED, `no DIAL_REQ within ${deps.dialTimeoutMs} ms`);
    }, deps.dialTimeoutMs);

    const send = (p: Packet): boolean => (call.writableEnded || call.destroyed ? true : call.write(p));
    /** Ends the call; with a status other than OK the client reads `details` as the reason. */
    const finish = (code: grpc.status = grpc.status.OK, details = 'OK') => {
      phase = 'done';
      clearTimeout(idle);
      if (call.writableEnded || call.destroyed) return;
      if (code === grpc.status.OK) call.end();
      else call.emit('error', { code, details });
    };
    const protocolError = (details: string) => {
      log.info({ details }, 'gRPC stream refused: protocol error');
      deps.metrics.refused('grpc', 'PROTOCOL_ERROR');
      stream?.destroy(new TunnelError('CANCELLED', 'client protocol error'));
      finish(grpc.status.INVALID_ARGUMENT, details);
    };

    /** Answers DIAL_REQ with the refusal, then ends the call with its gRPC status; `count`: the refusal is not counted yet. */
    const refuse = (r: Refusal, count: boolean) => {
      if (count) deps.metrics.refused('grpc', r.reason);
      const status = grpcStatusOf(r);
      log.info({ status: grpc.status[status], reason: r.message }, 'gRPC dial refused');
      send(packets.dialRsp(random, '0', r.message));
      finish(status, r.message);
    };

    const dial = async (req: NonNullable<Packet['dialRequest']>) => {
      phase = 'dialing';
      random = req.random;
      if (!auth.ok) return refuse(auth.refusal, true);
      if (req.protocol !== 'tcp') return refuse(refusal('BAD_REQUEST', `protocol ${JSON.stringify(req.protocol)} is not supported; want "tcp"`), true);
      const r = resolveDial(req.address, metadataValue(call.metadata, 'x-cluster-name'), deps.registry, deps.clusterDomain);
      if (!r.ok) return refuse(r.refusal, true);
      const target = tcpTarget(deps.registry, r);
      log = log.child({ cluster: r.cluster, user: auth.identity.user, target });
      const result = await dialCluster(deps, {
        cluster: r.cluster,
        identity: auth.identity,
        request: { kind: 'tcp', target },
        frontend: 'grpc',
        signal: dialAbort.signal,
      });
      if ((phase as string) === 'done' || dialClosed) {
        // The client left, or sent DIAL_CLS: no answer.
        if (result.ok) result.stream.destroy();
        if (dialClosed) {
          log.info('gRPC dial cancelled by DIAL_CLS');
          finish();
        }
        return;
      }
      if (!result.ok) return refuse(result.refusal, false);
      connectID = String(nextConnectId++);
      stream = result.stream;
      phase = 'open';
      const slog = log.child({ connectID, streamId: stream.id, agentId: result.tunnel.agentId });
      slog.debug('gRPC connection established');
      send(packets.dialRsp(random, connectID));
      bridge(stream, slog);
    };

    const bridge = (s: MuxStream, slog: Logger) => {
      const started = performance.now();
      s.on('data', (chunk: Buffer) => {
        if (!send(packets.data(connectID, chunk))) s.pause();
      });
      call.on('drain', () => s.resume());
      s.on('drain', () => call.resume());
      s.on('error', () => {}); // reported on 'close'
      s.once('end', () => {
        // The far end hung up: ANP has no half-close, so the connection ends.
        if (phase !== 'open') return;
        send(packets.closeRsp(connectID));
        finish();
        s.end();
      });
      s.once('close', () => {
        if (phase === 'open') {
          send(packets.closeRsp(connectID, s.errored?.message ?? 'connection closed'));
          finish();
        }
        slog.info(
          { bytesIn: s.bytesIn, bytesOut: s.bytesOut, ms: Math.round(performance.now() - started), error: s.errored?.message },
          'gRPC connection closed',
        );
      });
    };

    call.on('data', (p: Packet) => {
      if (phase === 'done') return;
      switch (p.type) {
        case 'DIAL_REQ':
          clearTimeout(idle);
          if (phase !== 'idle' || !p.dialRequest) {
            // One connection per Proxy call, as konnectivity-client opens them.
            call.write(packets.dialRsp(p.dialRequest?.random ?? '0', '0', 'this stream already carries a connection; open one Proxy call per connection'));
            return;
          }
          dial(p.dialRequest).catch((err: unknown) => {
            log.error({ err }, 'gRPC dial failed');
            stream?.destroy();
            finish(grpc.status.INTERNAL, 'internal error');
          });
          return;
        case 'DIAL_CLS':
          if (phase === 'dialing' && p.closeDial?.random === random) {
            dialClosed = true;
            dialAbort.abort();
          }
          return;
        case 'DATA': {
          const d = p.data;
          if (!d || d.connectID === '0') return; // no connection named: ignored, as ANP does
          if (phase !== 'open' || d.connectID !== connectID)
            return protocolError(`DATA for connection ${d.connectID}, which this stream does not carry`);
          if (d.data.length > 0 && !stream!.write(d.data)) call.pause();
          return;
        }
        case 'CLOSE_REQ': {
          const id = p.closeRequest?.connectID ?? '0';
          if (phase !== 'open' || id !== connectID) {
            call.write(packets.closeRsp(id, `unknown connection ${id}`));
            return;
          }
          send(packets.closeRsp(connectID));
          finish();
          stream!.destroy();
          return;
        }
        case 'DRAIN':
          return;
        default:
          return protocolError(`a client does not send ${describePacket(p)}`);
      }
    });
    call.on('end', () => {
      // The client half-closed its side: no more DATA; the tunnel stream
      // ends (FIN) and the far end's answer still comes back.
      if (phase === 'open') stream!.end();
      else if (phase === 'dialing') {
        dialAbort.abort();
        finish();
      } else if (phase === 'idle') finish();
    });
    // The call ended before the connection did (the client cancelled, or the
    // transport failed): abandon the dial, reset the tunnel stream.
    const gone = () => {
      clearTimeout(idle);
      if (phase === 'dialing') dialAbort.abort();
      if (phase === 'open') stream!.destroy(new TunnelError('CANCELLED', 'gRPC call cancelled'));
      phase = 'done';
    };
    call.on('cancelled', gone);
    call.on('error', gone);
    call.on('close', gone);
  };
}
