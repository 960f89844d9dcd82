/**
 * What both command lines share: their streams, yargs options built from the settings tables,
 * and error lines in one style: `<program>: <what went wrong>[: <how to fix it>]` on stderr.
 */
import type { Readable, Writable } from 'node:stream';
import type { Argv, Options } from 'yargs';
import type { Setting } from '../ops/config.js';

/** A command line's world: its streams, environment and working directory. */
export interface Io {
  stdin: Readable & { isTTY?: boolean };
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable;
  env: NodeJS.ProcessEnv;
  cwd: string;
}

/** Exit codes, as documented in the README. */
export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3 } as const;

/** yargs options for the settings that have a flag; defaults are shown, not applied (config.ts applies them). */
export function flagOptions(table: readonly Setting[]): Record<string, Options> {
  const options: Record<string, Options> = {};
  for (const s of table) {
    if (s.flag === null) continue;
    options[s.flag] = {
      type: s.kind === 'boolean' ? 'boolean' : 'string',
      describe: `${s.describe} [${s.env}]`,
      ...(s.default === null ? {} : { defaultDescription: String(s.default) }),
      group: 'Options:',
    };
  }
  return options;
}

/** Reads a whole stream as bytes; null (and the stream destroyed) once it passes max bytes. */
export async function readAll(stream: Readable, max = Infinity): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += b.length;
    // past max: stop reading and say so (null), rather than hold all of it
    if (size > max) {
      stream.destroy();
      return null;
    }
    chunks.push(b);
  }
  return Buffer.concat(chunks, size);
}

/** Writes `<program>: <message>` on stderr. */
export const complain = (io: Io, program: string, message: string): void => {
  io.stderr.write(`${program}: ${message}\n`);
};

/** Parses argv without printing or exiting: yargs' output (help, version, errors) is returned. */
function parse(parser: Argv, argv: string[]): Promise<{ args: Record<string, unknown>; output: string; error: Error | null }> {
  return new Promise((resolve) => {
    void parser.parse(argv, {}, (error, args, output) => resolve({ args: args as Record<string, unknown>, output, error: error ?? null }));
  });
}

/**
 * Parses argv for a command line: the parsed arguments, or the exit code when yargs already
 * answered (help and version on stdout: 0; a usage error on stderr: 2). `explain` may replace
 * yargs' message for an error with a better one.
 */
export async function parseOrExit(parser: Argv, argv: string[], io: Io, program: string, explain?: (message: string, args: Record<string, unknown>) => string | null): Promise<Record<string, unknown> | number> {
  const { args, output, error } = await parse(parser, argv);
  if (error) {
    complain(io, program, explain?.(error.message, args) ?? `${error.message}: see ${program} --help`);
    return EXIT.usage;
  }
  if (output) {
    io.stdout.write(output + '\n');
    return EXIT.ok;
  }
  return args;
}

/** The candidate closest to a word, within two edits; undefined when none is that close. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d = distance(word, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}
