/**
 * The node relay: the reference for what any Node.js relay of kubetunnel's
 * shape can do on this machine. The same processes, hops and TLS layers as
 * kubetunnel, with nothing else: no multiplexing, no WebSocket, no flow
 * control of its own, just socket.pipe both ways.
 *
 *   front  TLS listener; answers a CONNECT with 200 and opens a new TLS
 *          connection to the back for each client (the tunnel's place)
 *   back   TLS listener; dials the upstream over TCP (the agent's place)
 *
 *   node relay.js front|back <certDir> <targetPort>
 *
 * Prints {"port": N} once listening.
 */
import fs from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import v8 from 'node:v8';

// The garbage collector setting kubetunnel runs with (packages/cli/bin/kubetunnel.js).
v8.setFlagsFromString('--no-incremental-marking-task');

const [role, certDir, targetPort] = process.argv.slice(2);
const file = (name: string) => fs.readFileSync(path.join(certDir!, name));
const toBack = tls.createSecureContext({ ca: file('ca.crt') });

function join(a: net.Socket, b: net.Socket): void {
  a.setNoDelay(true);
  b.setNoDelay(true);
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
}

const server = tls.createServer({ cert: file('server.crt'), key: file('server.key') }, (client) => {
  if (role === 'back') return join(client, net.connect(Number(targetPort), '127.0.0.1'));
  // front: the request head arrives in one read on loopback; anything after it is the client's first bytes.
  client.once('data', (head: Buffer) => {
    client.pause(); // until joined: pipe() resumes it
    const end = head.indexOf('\r\n\r\n');
    const back = tls.connect({ host: '127.0.0.1', port: Number(targetPort), servername: 'localhost', secureContext: toBack });
    back.once('secureConnect', () => {
      client.write('HTTP/1.1 200 Connection established\r\n\r\n');
      if (end >= 0 && end + 4 < head.length) back.write(head.subarray(end + 4));
      join(client, back);
    });
    back.once('error', () => client.destroy());
  });
});
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
