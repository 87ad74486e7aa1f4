import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The .proto ships beside the compiled code: packages/server/proto (from dist/grpc: ../../proto). */
export const PROTO_PATH = fileURLToPath(new URL('../../proto/konnectivity.proto', import.meta.url));

export type PacketType = 'DIAL_REQ' | 'DIAL_RSP' | 'CLOSE_REQ' | 'CLOSE_RSP' | 'DATA' | 'DIAL_CLS' | 'DRAIN';

/**
 * A Packet as the loader hands it over: enum names as strings, int64 as
 * decimal strings (ids such as a Go client's random use all 63 bits), the
 * set oneof member named in `payload`.
 */
export interface Packet {
  type: PacketType;
  payload?: 'dialRequest' | 'dialResponse' | 'data' | 'closeRequest' | 'closeResponse' | 'closeDial' | 'drain';
  dialRequest?: { protocol: string; address: string; random: string };
  dialResponse?: { error: string; connectID: string; random: string };
  data?: { connectID: string; error: string; data: Buffer };
  closeRequest?: { connectID: string };
  closeResponse?: { error: string; connectID: string };
  closeDial?: { random: string };
  drain?: Record<string, never>;
}

const definition = protoLoader.loadSync(PROTO_PATH, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  ProxyService: grpc.ServiceClientConstructor;
  AgentService: grpc.ServiceClientConstructor;
};

export const ProxyServiceDef = loaded.ProxyService.service;
export const AgentServiceDef = loaded.AgentService.service;
/** Client constructors (tests and the benchmark speak the protocol with them). */
export const ProxyServiceClient = loaded.ProxyService;
export const AgentServiceClient = loaded.AgentService;

export const packets = {
  dialReq: (address: string, random: string, protocol = 'tcp'): Packet => ({ type: 'DIAL_REQ', dialRequest: { protocol, address, random } }),
  dialRsp: (random: string, connectID: string, error = ''): Packet => ({ type: 'DIAL_RSP', dialResponse: { error, connectID, random } }),
  data: (connectID: string, data: Buffer): Packet => ({ type: 'DATA', data: { connectID, error: '', data } }),
  closeReq: (connectID: string): Packet => ({ type: 'CLOSE_REQ', closeRequest: { connectID } }),
  closeRsp: (connectID: string, error = ''): Packet => ({ type: 'CLOSE_RSP', closeResponse: { error, connectID } }),
  dialCls: (random: string): Packet => ({ type: 'DIAL_CLS', closeDial: { random } }),
};

/** One line for logs: the type and the ids, never the bytes. */
export function describePacket(p: Packet): string {
  const id = p.dialRequest?.random ?? p.dialResponse?.random ?? p.closeDial?.random ?? p.data?.connectID ?? p.closeRequest?.connectID ?? p.closeResponse?.connectID;
  return id === undefined ? p.type : `${p.type}(${id})`;
}
