import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { Reasons, type Reason } from '@kubetunnel/shared';
import { grpcStatusOf } from '../src/grpc/proxy-service.js';
import { httpAnswer, refusal } from '../src/refusal.js';
import { registrationResult } from '../src/agent-gateway.js';

describe('a refusal is answered by its reason, at each edge', () => {
  it.each<[Reason, number, number, grpc.status]>([
    // reason, HTTP from a proxy (CONNECT), HTTP from an origin (L7), gRPC
    ['UNAUTHENTICATED', 407, 401, grpc.status.UNAUTHENTICATED],
    ['BAD_REQUEST', 400, 400, grpc.status.INVALID_ARGUMENT],
    ['FORBIDDEN', 403, 403, grpc.status.PERMISSION_DENIED],
    ['UNKNOWN_CLUSTER', 404, 404, grpc.status.NOT_FOUND],
    ['NO_AGENT', 503, 503, grpc.status.UNAVAILABLE],
    ['BAD_IDENTITY', 403, 403, grpc.status.PERMISSION_DENIED],
    ['IDENTITY_TOO_LARGE', 431, 431, grpc.status.RESOURCE_EXHAUSTED],
    ['NOT_FOUND', 404, 404, grpc.status.UNIMPLEMENTED],
    ['TOO_MANY_STREAMS', 503, 503, grpc.status.RESOURCE_EXHAUSTED],
    ['CANCELLED', 503, 503, grpc.status.CANCELLED],
    ['GOING_AWAY', 503, 503, grpc.status.UNAVAILABLE],
    ['DIAL_REFUSED', 502, 502, grpc.status.UNAVAILABLE],
    ['TARGET_NOT_ALLOWED', 502, 502, grpc.status.PERMISSION_DENIED],
    ['OPEN_TIMEOUT', 504, 504, grpc.status.DEADLINE_EXCEEDED],
    ['DIAL_TIMEOUT', 504, 504, grpc.status.DEADLINE_EXCEEDED],
    ['INTERNAL', 500, 500, grpc.status.INTERNAL],
  ])('%s: HTTP %i from a proxy, %i from an origin; gRPC %i', (reason, proxy, origin, code) => {
    const r = refusal(reason, 'why');
    expect(httpAnswer(r, 'proxy').status).toBe(proxy);
    expect(httpAnswer(r, 'origin').status).toBe(origin);
    expect(grpcStatusOf(r)).toBe(code);
  });

  it('a 503 says when to retry: the refusal\'s own delay, else one second; no other status does', () => {
    expect(httpAnswer(refusal('NO_AGENT', 'none', 5), 'proxy').headers).toEqual({ 'Retry-After': '5' });
    expect(httpAnswer(refusal('GOING_AWAY'), 'origin').headers).toEqual({ 'Retry-After': '1' });
    expect(httpAnswer(refusal('CANCELLED'), 'proxy').headers).toEqual({ 'Retry-After': '1' });
    expect(httpAnswer(refusal('FORBIDDEN'), 'proxy').headers).toEqual({});
    expect(httpAnswer(refusal('DIAL_REFUSED'), 'origin').headers).toEqual({});
  });

  it('a refusal without a message carries the reason\'s text', () => {
    expect(refusal('UNKNOWN_CLUSTER')).toEqual({ reason: 'UNKNOWN_CLUSTER', message: 'unknown cluster' });
  });

  it('every reason of the table has a distinct wire code, an HTTP error status, a gRPC status and a WebSocket close code', () => {
    const reasons = Object.keys(Reasons) as Reason[];
    expect(new Set(reasons.map((r) => Reasons[r].code)).size).toBe(reasons.length);
    for (const r of reasons) {
      const { http, grpc: g } = Reasons[r];
      const ws: number = Reasons[r].ws;
      expect(http >= 400 && http <= 599, `${r} http ${http}`).toBe(true);
      expect(g >= 1 && g <= 16, `${r} grpc ${g}`).toBe(true);
      expect((ws >= 1000 && ws <= 1014 && ws !== 1004 && ws !== 1005 && ws !== 1006) || (ws >= 4000 && ws <= 4999), `${r} ws ${ws}`).toBe(true);
    }
  });
});

describe('a refused agent registration (kubetunnel or ANP agent)', () => {
  it('is counted forbidden when its certificate is not entitled to the claim, else invalid', () => {
    expect(registrationResult(refusal('FORBIDDEN'))).toBe('forbidden');
    for (const r of ['BAD_REQUEST', 'UNAUTHENTICATED', 'NOT_FOUND'] as const) expect(registrationResult(refusal(r))).toBe('invalid');
  });
});
