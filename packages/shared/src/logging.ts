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

let stdout: SonicBoom | undefined;

/**
 * Standard output as the log's destination, one for the process: written
 * asynchronously, holding at most MAX_LOG_BUFFER for a slow reader, flushed
 * at exit. A failed write (EPIPE: the reader of a log pipe is gone) ends
 * logging, not the process; and the flush at exit gives up on an output that
 * fails or refuses for 5 s, so a signal still stops the process whatever
 * became of its log's reader.
 */
function stdoutDestination(): SonicBoom {
  if (stdout) return stdout;
  const dest = new SonicBoomClass({ fd: 1, sync: false, maxLength: MAX_LOG_BUFFER });
  dest.on('error', () => {
    dest.write = () => true;
    dest.flushSync = () => {};
  });
  process.once('exit', () => {
    // Until now a write refused for the moment waits as long as it takes; not at exit.
    (dest as unknown as { maxWriteRetries: number }).maxWriteRetries = EXIT_WRITE_RETRIES;
    try {
      dest.flushSync();
    } catch {
      // The output is gone or stuck: what is left of the log cannot be written.
    }
  });
  stdout = dest;
  return dest;
}

/** A logger that discards everything (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
