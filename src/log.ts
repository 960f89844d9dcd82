/**
 * Structured logs (pino), shared by the TCP and HTTP transports.
 *
 * Rule: no plaintext, token, key or access secret is ever passed to the logger. The redaction
 * paths below are a second line of defence, not the first.
 */
import { pino } from 'pino';
import type { DestinationStream, Logger } from 'pino';
import type { Level } from './config.js';

export type { Logger };

const REDACT = [
  'payload', 'plaintext', 'token', 'key', 'secret', 'body',
  '*.payload', '*.plaintext', '*.token', '*.key', '*.secret', '*.body',
  'req.headers.authorization', 'headers.authorization',
];

/** A logger at the given level, writing JSON lines to the destination (stdout by default). */
export function createLogger(level: Level, destination?: DestinationStream): Logger {
  return pino({ level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } }, destination ?? pino.destination({ dest: 1, sync: true }));
}

/**
 * What may be logged of an error: its type, code and stack frames, never its message (a
 * library's message can quote the data it was given).
 */
export function errorFields(err: unknown): { type: string; code?: string; stack?: string } {
  if (!(err instanceof Error)) return { type: typeof err };
  const code = (err as NodeJS.ErrnoException).code;
  const frames = err.stack?.split('\n').filter((l) => l.trimStart().startsWith('at ')).join('\n');
  return { type: err.name, ...(code ? { code } : {}), ...(frames ? { stack: frames } : {}) };
}
