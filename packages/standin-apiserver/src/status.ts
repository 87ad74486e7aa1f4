import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

import { failureStatus, writeAndClose, type StatusDetails } from '@kubetunnel/shared';

export { failureStatus, type StatusDetails };

export function sendJson(res: ServerResponse, code: number, body: unknown): void {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(code, {
    'Content-Type': 'application/json',
    'Content-Length': data.length,
    'Cache-Control': 'no-cache, private',
  });
  res.end(data);
}

export function sendText(res: ServerResponse, code: number, text: string): void {
  const data = Buffer.from(text);
  res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': data.length });
  res.end(data);
}

export function sendStatus(res: ServerResponse, code: number, message: string, details?: StatusDetails): void {
  sendJson(res, code, failureStatus(code, message, details));
}

/** Answers an upgrade request that is not accepted with a plain HTTP response and closes the socket. */
export function rejectUpgrade(socket: Duplex, code: number, message: string, details?: StatusDetails): void {
  writeAndClose(socket, code, 'application/json', JSON.stringify(failureStatus(code, message, details)));
}

export function notFound(kind: string, name: string, group = ''): [number, string, StatusDetails] {
  const plural = kind;
  const what = group ? `${plural}.${group}` : plural;
  return [404, `${what} "${name}" not found`, { name, kind: plural, ...(group ? { group } : {}) }];
}
