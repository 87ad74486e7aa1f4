import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import type { Duplex } from 'node:stream';
import { failureStatus } from '../l7/status.js';

const TEXT = 'text/plain; charset=utf-8';

/** A whole response that closes its connection, as bytes to write on a raw socket. */
export function rawResponse(status: number, contentType: string, body: string, headers: Record<string, string> = {}): string {
  const lines = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}`,
    `Content-Type: ${contentType}`,
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

/** A reason as a one-line plain-text body. */
function reasonLine(reason: string): string {
  return `${reason.replace(/[\r\n]+/g, ' ')}\n`;
}

/** A whole response whose body is a one-line plain-text reason. */
export function rawTextResponse(status: number, reason: string, headers: Record<string, string> = {}): string {
  return rawResponse(status, TEXT, reasonLine(reason), headers);
}

/** Writes a whole response with `body` on a raw socket and ends it. */
export function writeAndClose(socket: Duplex, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  if (socket.destroyed || !socket.writable) return;
  socket.end(rawResponse(status, contentType, body, headers));
}

/**
 * Answers on a raw socket (CONNECT, upgrades, parse errors) with a status
 * line, a one-line plain-text reason, and closes the connection.
 */
export function respondRaw(socket: Duplex, status: number, reason: string, headers: Record<string, string> = {}): void {
  writeAndClose(socket, status, TEXT, reasonLine(reason), headers);
}

/** A Kubernetes `Status` object as JSON. */
export function kubeStatus(code: number, message: string): string {
  return JSON.stringify(failureStatus(code, message));
}

/** Answers with a Kubernetes `Status`; a response already under way is cut off instead. */
export function sendStatus(res: ServerResponse | Http2ServerResponse, code: number, message: string, headers: Record<string, string> = {}): void {
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
