/**
 * The latency probe of the reconnect-storm benchmark (storm.ts), a process of
 * its own: a client of another cluster sending one small GET every
 * `intervalMs` on a kept-alive connection through the hub, reconnecting
 * (every 50 ms) whenever the connection is gone. argv[2] is a JSON job.
 * Prints {"ready": true} after its first answer; when standard input ends,
 * prints {"samples": [[epochMs, latencyMs or -1 for a failure], ...]}.
 */
import type tls from 'node:tls';
import { connectUpstream, get, type Route } from './common.js';

interface Job {
  route: Route;
  upstreamCA: string;
  intervalMs: number;
}

const job = JSON.parse(process.argv[2]!) as Job;
const samples: Array<[number, number]> = [];
let stopping = false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  process.stdin.resume();
  // On the end of input, report at once: a request under way is not waited for.
  process.stdin.once('end', () => {
    stopping = true;
    process.stdout.write(JSON.stringify({ samples }) + '\n', () => process.exit(0));
  });
  let socket: tls.TLSSocket | undefined;
  let announced = false;
  while (!stopping) {
    const started = performance.now();
    try {
      if (!socket) {
        socket = await connectUpstream(job.route, job.upstreamCA);
        socket.on('error', () => {});
      }
      const t = performance.now();
      await get(socket, '/small');
      samples.push([Date.now(), performance.now() - t]);
      if (!announced) {
        announced = true;
        console.log(JSON.stringify({ ready: true }));
      }
      await sleep(Math.max(0, job.intervalMs - (performance.now() - started)));
    } catch {
      samples.push([Date.now(), -1]);
      socket?.destroy();
      socket = undefined;
      await sleep(50);
    }
  }
  socket?.destroy();
}

main().catch((err: unknown) => {
  console.error(String(err));
  process.exit(1);
});
