/**
 * What the machine does to any process at a given moment: a process with
 * nothing to do but wake every millisecond records each wake-up that came
 * LATE_MS or more late, with the wall-clock time it was due. Its delays are
 * those no party could have avoided (the other processes' CPU on the same
 * cores, the host's scheduling of this virtual machine, the kernel), beside
 * which a latency tail is read (watch.ts).
 *
 *   node stallprobe.js
 *
 * Prints {"ready": true}; then each line on stdin, {"from": ms, "to": ms}
 * (wall clock), is answered with {"stalls": [[dueAt, lateMs], ...]} of that
 * span, and the delays recorded before `to` are forgotten. Exits when stdin ends.
 */
import readline from 'node:readline';

/** Delays shorter than this are not recorded (the watch target is a p99 of 5 ms). */
const LATE_MS = 5;
/** At most this many delays are kept between two questions. */
const KEPT = 100_000;

let stalls: Array<[number, number]> = [];
let last = performance.now();
let timer: NodeJS.Timeout;
const tick = () => {
  const now = performance.now();
  const late = now - last - 1;
  if (late >= LATE_MS && stalls.length < KEPT) stalls.push([performance.timeOrigin + now - late, late]);
  last = now;
  timer = setTimeout(tick, 1);
};
timer = setTimeout(tick, 1);

console.log(JSON.stringify({ ready: true }));
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (text) => {
  const { from, to } = JSON.parse(text) as { from: number; to: number };
  console.log(JSON.stringify({ stalls: stalls.filter(([at]) => at >= from && at < to) }));
  stalls = stalls.filter(([at]) => at >= to);
});
lines.once('close', () => clearTimeout(timer));
