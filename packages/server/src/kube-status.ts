import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { writeAndClose } from './respond.js';

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  500: 'InternalError',
  502: 'ServiceUnavailable',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

/** A Kubernetes `Status` object, the error shape kubectl prints nicely. */
export function kubeStatus(code: number, message: string): string {
  return JSON.stringify({
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason: REASONS[code] ?? 'InternalError',
    code,
  });
}

export function sendStatus(res: ServerResponse, code: number, message: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = kubeStatus(code, message) + '\n';
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** The same on a raw socket (upgrade requests). */
export function sendStatusRaw(socket: Duplex, code: number, message: string, headers: Record<string, string> = {}): void {
  writeAndClose(socket, code, 'application/json', kubeStatus(code, message) + '\n', headers);
}
