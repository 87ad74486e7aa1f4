import { describe, expect, it } from 'vitest';
import { parseServerSource, resolveEndpoints } from '../src/discovery.js';

describe('server sources', () => {
  it('parses wss:// URLs and dns:///NAME:PORT', () => {
    expect(parseServerSource('wss://hub.example:8091')).toEqual({ kind: 'url', url: 'wss://hub.example:8091' });
    expect(parseServerSource('dns:///Kubetunnel.ns.svc.cluster.local:8091')).toEqual({ kind: 'dns', name: 'kubetunnel.ns.svc.cluster.local', port: 8091 });
  });

  it.each(['dns:///name', 'dns:///name:0', 'dns:///name:70000', 'dns://authority/name:8091', 'dns:///-bad:8091', 'dns:///a b:1', 'https://hub:8091', 'hub:8091', 'ws://hub:8091'])(
    'refuses %s with a reason',
    (text) => {
      expect(typeof parseServerSource(text)).toBe('string');
    },
  );

  it('expands a dns:/// name to one endpoint per address, each checked against the name', async () => {
    const sources = ['wss://lb:8091', 'dns:///hub.ns.svc:8091'].map((t) => parseServerSource(t)) as Exclude<ReturnType<typeof parseServerSource>, string>[];
    const endpoints = await resolveEndpoints(sources, async () => ['10.0.0.2', 'fd00::3']);
    expect(endpoints.map((e) => [e.url, e.servername])).toEqual([
      ['wss://lb:8091', undefined],
      ['wss://10.0.0.2:8091', 'hub.ns.svc'],
      ['wss://[fd00::3]:8091', 'hub.ns.svc'],
    ]);
  });
});
