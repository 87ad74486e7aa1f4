import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { failureStatus } from '@kubetunnel/shared';
import { writeAndClose } from './respond.js';

/** A Kubernetes `Status` object as JSON. */
export function kubeStatus(code: number, message: string): string {
  return JSON.stringify(failureStatus(code, message));
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
