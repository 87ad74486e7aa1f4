#!/usr/bin/env node
// A relayed byte lives in a fresh off-heap buffer for a moment (socket reads,
// WebSocket messages), and V8 starts incremental marking each time ~64 MiB of
// such memory has been allocated: at tunnel speeds that was 20 major GCs a
// second, each finished by a task on the event loop. Without the task,
// marking advances only as the program allocates, the short-lived buffers
// are reclaimed by young-generation collections first, and the major GCs
// all but stop (1 GiB through a tunnel: 72 -> 1 in the server, server CPU
// per byte -40%; docs/benchmarks.md). V8 still collects at once if
// off-heap memory passes its hard limit. KUBETUNNEL_GC_TUNING=off leaves
// V8's defaults.
import v8 from 'node:v8';

if (process.env.KUBETUNNEL_GC_TUNING !== 'off') v8.setFlagsFromString('--no-incremental-marking-task');
await import('../dist/main.js');
