/**
 * The log on standard output (createLogger without a destination): lines
 * are written in batches, not one write each, and every line logged before
 * the process exits is written. A child process logs; this process reads its
 * standard output through a real pipe. The child counts the writes by
 * wrapping fs.write, which the log's writer (sonic-boom) calls.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const SHARED = fileURLToPath(new URL('../dist/index.js', import.meta.url));

/**
 * Runs `body` (a module, with `log`, `writes()`, `turn()` and `report()` in
 * scope) in a child: the JSON lines of its standard output, and what it
 * reported (on standard error).
 */
async function child(body: string): Promise<{ lines: Array<Record<string, unknown>>; reports: Array<Record<string, unknown>> }> {
  const script = `
    import fs from 'node:fs';
    let count = 0;
    const write = fs.write;
    fs.write = (...args) => { count += 1; return write(...args); };
    const { createLogger } = await import(${JSON.stringify(SHARED)});
    const log = createLogger('info');
    const writes = () => count;
    const turn = () => new Promise((resolve) => setImmediate(resolve));
    const report = (o) => process.stderr.write(JSON.stringify(o) + '\\n');
    ${body}
  `;
  const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script]);
  const json = (text: string) => text.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { lines: json(stdout), reports: json(stderr) };
}

describe('the log on standard output', () => {
  it('holds a line back for the lines after it, and writes about 16 KiB of them at once', async () => {
    const { lines, reports } = await child(`
      log.info({ n: 0 }, 'first');
      await turn();
      const early = writes();
      let n = 1;
      while (writes() === 0 && n < 1000) log.info({ n: n++, filler: 'x'.repeat(100) }, 'more');
      report({ early, linesInFirstWrite: n });
    `);
    const { early, linesInFirstWrite } = reports[0] as { early: number; linesInFirstWrite: number };
    // Nothing was written while one short line waited; then one write took many lines.
    expect(early).toBe(0);
    expect(linesInFirstWrite).toBeGreaterThan(50);
    expect(linesInFirstWrite).toBeLessThan(1000);
    expect(lines.map((l) => l.n)).toEqual([...Array(linesInFirstWrite).keys()]);
  });

  it('writes every line logged before the process exits, in order, however it exits', async () => {
    for (const exit of ['process.exit(0)', "process.kill(process.pid, 'SIGTERM')", 'undefined']) {
      const { lines } = await child(`
        process.once('SIGTERM', () => process.exit(0));
        for (let n = 0; n < 50; n++) log.info({ n }, 'line');
        log.warn({ n: 50 }, 'last');
        ${exit};
      `);
      expect(lines.map((l) => l.n), exit).toEqual([...Array(51).keys()]);
      expect(lines[50]!.msg).toBe('last');
    }
  });
});
