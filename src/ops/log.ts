/**
 * Structured logs (pino), shared by every part of the server: JSON lines for machines, or lines
 * for people (pino-pretty) when stdout is a terminal or --log-format pretty asks for them.
 *
 * Rule: no plaintext, token, key or access secret is ever passed to the logger. The redaction
 * paths below are a second line of defence, not the first.
 */
import { pino } from 'pino';
import type { DestinationStream, Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';
import type { Level, LogFormat } from './config.js';

export type { Logger };

const REDACT = [
  'payload', 'plaintext', 'token', 'key', 'secret', 'body',
  '*.payload', '*.plaintext', '*.token', '*.key', '*.secret', '*.body',
  'req.headers.authorization', 'headers.authorization',
];

/** A writable a logger writes to: a stream, or by default stdout. */
export interface LogTarget {
  write(chunk: string): unknown;
  isTTY?: boolean;
}

/**
 * A logger at the given level, writing to the destination (stdout by default): JSON lines, or
 * readable lines when the format says pretty, or says auto and the destination is a terminal.
 */
export function createLogger(level: Level, destination?: LogTarget | DestinationStream, format: LogFormat = 'json'): Logger {
  const target = destination ?? pino.destination({ dest: 1, sync: true });
  const pretty = format === 'pretty' || (format === 'auto' && (target as LogTarget).isTTY === true);
  const options = { level, base: { pid: process.pid }, redact: { paths: REDACT, censor: '[redacted]' } };
  if (!pretty) return pino(options, target as DestinationStream);
  const render = prettyFactory({ colorize: (target as LogTarget).isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'hostname' });
  return pino(options, { write: (line: string) => void target.write(render(line)) });
}
