/**
 * The floor under registering many agents: what the TLS handshakes alone cost
 * on this machine. A TLS server with the agent gateway's settings
 * (GATEWAY_TLS_POLICY, the client CA, a client certificate required) and a
 * client with an agent's certificate and secure context (clientContext, as
 * the agents use), each its own process; the client makes `count` full
 * handshakes one after the other and nothing else (the server ends each
 * connection once it is established).
 *
 *   node handshakes.js server <certDir>                  prints {"port": N}; when its input ends, {"closed": true}
 *   node handshakes.js client <certDir> <port> <count>   prints {"handshakes": N, "cpuMs": client CPU over them}
 *
 * The server's CPU is read from /proc by the caller (fleet.ts); the client's
 * is its own, over the handshakes only.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { GATEWAY_TLS_POLICY } from '@kubetunnel/server';
import { clientContext } from '@kubetunnel/shared';
import { runChild } from './procs.js';

const [role, certDir, port, count] = process.argv.slice(2);
const file = (name: string) => fs.readFileSync(path.join(certDir!, name), 'utf8');

async function server(): Promise<{ closed: true }> {
  const srv = tls.createServer(
    { ...GATEWAY_TLS_POLICY, cert: file('server.crt'), key: file('server.key'), ca: file('client-ca.crt'), requestCert: true, rejectUnauthorized: true },
    (socket) => socket.end(),
  );
  srv.on('tlsClientError', (err) => process.stderr.write(`handshake refused: ${err.message}\n`));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  console.log(JSON.stringify({ port: (srv.address() as { port: number }).port }));
  process.stdin.resume();
  await once(process.stdin, 'end');
  srv.close();
  return { closed: true };
}

async function client(): Promise<{ handshakes: number; cpuMs: number }> {
  const secureContext = clientContext({ ca: file('ca.crt'), cert: file('agent-fleet.crt'), key: file('agent-fleet.key') });
  const n = Number(count);
  const before = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const socket = tls.connect({ host: '127.0.0.1', port: Number(port), servername: 'localhost', secureContext });
    await once(socket, 'secureConnect');
    socket.resume();
    await once(socket, 'end');
    socket.destroy();
  }
  const used = process.cpuUsage(before);
  return { handshakes: n, cpuMs: (used.user + used.system) / 1000 };
}

runChild(() => (role === 'server' ? server() : client()));
