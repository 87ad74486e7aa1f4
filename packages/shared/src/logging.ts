import { pino, type Logger, type LevelWithSilent } from 'pino';

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
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

/** A logger that discards everything (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
