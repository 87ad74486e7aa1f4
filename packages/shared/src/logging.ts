import { pino, type Logger, type LevelWithSilent } from 'pino';
import sonicBoom, { type SonicBoom } from 'sonic-boom';

/** The SonicBoom class: the module is the class at run time, which its types do not say. */
const SonicBoomClass = sonicBoom as unknown as typeof SonicBoom;

export type { Logger };

/** Paths pino removes from every log line: credentials never reach the log. */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'password',
  '*.password',
  'key',
  '*.key',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'req.headers.authorization',
  'req.headers["proxy-authorization"]',
];

/** The levels --log-level offers. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'silent'] as const satisfies readonly LevelWithSilent[];

/** The one root logger of a process; everything else is a child of it. */
export function createLogger(level: LevelWithSilent = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? stdoutDestination(),
  );
}

/** Log bytes held for a standard output that does not take them, at most; past it, lines are dropped. */
const MAX_LOG_BUFFER = 16 * 2 ** 20;
/** How many times a write the output refuses for now (EAGAIN) is tried again at exit, 100 ms apart. */
const EXIT_WRITE_RETRIES = 50;

/** How long a log line may wait for others to be written with it. */
const LOG_BATCH_MS = 20;
/** Waiting log text written at once, without waiting for LOG_BATCH_MS (counted in characters: JSON lines are mostly ASCII). */
const LOG_BATCH_CHARS = 16 * 1024;

/**
 * Log lines handed to the output together, at most LOG_BATCH_MS after the
 * first of them or once LOG_BATCH_CHARS are waiting; what waits is handed
 * over at exit too. A server busy with L7 requests logs an audit line for
 * each: written one by one, each cost it a write to standard output, a
 * thread of the pool and a wake-up of the log's reader. (sonic-boom's own
 * minLength and periodicFlush would do the same, but its periodic flush
 * writes to the output even when nothing waits: a wake-up every period for
 * an idle process.)
 */
class LogBatch implements pino.DestinationStream {
  private pending: string[] = [];
  private chars = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly out: SonicBoom) {}

  write(line: string): void {
    this.pending.push(line);
    this.chars += line.length;
    if (this.chars >= LOG_BATCH_CHARS) this.flush();
    else if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flush(), LOG_BATCH_MS);
      this.timer.unref();
    }
  }

  /** Hands what waits to the output now (pino's logger.flush calls it too). */
  flush(done?: (err?: Error) => void): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length > 0) {
      const lines = this.pending.join('');
      this.pending = [];
      this.chars = 0;
      this.out.write(lines);
    }
    done?.();
  }
}

let stdout: LogBatch | undefined;

/**
 * Standard output as the log's destination, one for the process: written
 * asynchronously and in batches (LogBatch), holding at most MAX_LOG_BUFFER
 * for a slow reader, flushed at exit. A failed write (EPIPE: the reader of a
 * log pipe is gone) ends logging, not the process; and the flush at exit
 * gives up on an output that fails or refuses for 5 s, so a signal still
 * stops the process whatever became of its log's reader.
 */
function stdoutDestination(): LogBatch {
  if (stdout) return stdout;
  const dest = new SonicBoomClass({ fd: 1, sync: false, maxLength: MAX_LOG_BUFFER });
  dest.on('error', () => {
    dest.write = () => true;
    dest.flushSync = () => {};
  });
  const batch = new LogBatch(dest);
  process.once('exit', () => {
    batch.flush();
    // Until now a write refused for the moment waits as long as it takes; not at exit.
    (dest as unknown as { maxWriteRetries: number }).maxWriteRetries = EXIT_WRITE_RETRIES;
    try {
      dest.flushSync();
    } catch {
      // The output is gone or stuck: what is left of the log cannot be written.
    }
  });
  stdout = batch;
  return batch;
}

/** A logger that discards everything (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
