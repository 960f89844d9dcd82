/**
 * crypt-client's file commands: encrypt-file, decrypt-file, rewrap-file and inspect-file (or
 * `inspect` of a file that exists). The client encrypts; the service only makes and unwraps file
 * keys (src/client/files.ts, docs/stream-format.md).
 *
 * Rules:
 * - A file output is written to a temporary file beside it (0600, created new) and renamed into
 *   place only once the final chunk verified and the bytes are synced; on any failure it is
 *   removed, nothing is left behind, and the exit code says why (1 refused or invalid, 2 usage,
 *   3 unreachable). An existing output is never replaced without --force.
 * - `-` is standard input or output. Decrypting to standard output writes only verified chunks,
 *   but a stream that fails later has already written its first ones: the exit code is then 1.
 * - A progress bar goes to stderr when stderr is a terminal and the input is a file; never otherwise.
 */
import yargs from 'yargs';
import { close as closeFd, constants, createReadStream, createWriteStream, fsync, open as openFd, statSync } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import cliProgress from 'cli-progress';
import { CLIENT } from '../ops/config.js';
import { CryptClient, ServerError } from '../client/client.js';
import { decryptStream, encryptStream, inspectFile, rewrapFile } from '../client/files.js';
import { CHUNK, TAG } from '../crypto/stream.js';
import { CryptError } from '../core/errors.js';
import { optionValue } from '../core/dispatcher.js';
import { VERSION } from '../core/version.js';
import { EXIT, complain, flagOptions, parseOrExit } from './common.js';
import type { Io } from './common.js';
import { PROGRAM, connectOptions, report } from './connect.js';

const STDIO = '\u0000-';
const COMMANDS = new Set(['encrypt-file', 'decrypt-file', 'rewrap-file', 'inspect-file']);
const isOption = (word: string): boolean => word.startsWith('-') && word !== '-' && !/^-\d/.test(word);

/** True when argv runs a file command: one of COMMANDS, or `inspect` (`in`) of a file that exists. */
export function isFileCommand(argv: readonly string[], valued: ReadonlySet<string>, io: Io): boolean {
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') return false;
    if (isOption(word)) {
      if (valued.has(word)) i++;
      continue;
    }
    if (COMMANDS.has(word)) return true;
    if (word !== 'inspect' && word !== 'in') return false;
    const next = argv.slice(i + 1).find((w) => !isOption(w));
    if (next === undefined || /^gA[A-Za-z0-9_-]{20,}/.test(next)) return false;
    try {
      return statSync(resolve(io.cwd, next)).isFile();
    } catch {
      return false;
    }
  }
  return false;
}

function parser() {
  return yargs()
    .scriptName(PROGRAM)
    .usage('Usage: $0 encrypt-file <file|-> [-o <out|->] [--key <name>]\n       $0 decrypt-file <file|-> [-o <out|->]\n       $0 rewrap-file <file>\n       $0 inspect-file <file>')
    .command('encrypt-file <input>', 'encrypt a file of any size (or - for stdin) into crypt-stream/1, to <file>.crypt (or -o)')
    .command('decrypt-file <input>', 'decrypt a crypt-stream/1 file (or -), to <file> without .crypt (or -o)')
    .command('rewrap-file <input>', 'rewrap a file under the primary version of its key after a rotation: its header only, in place')
    .command('inspect-file <input>', "a file's key, key version, creation time and plaintext size")
    .command('inspect <input>', false)
    .command('in <input>', false)
    .options(flagOptions(CLIENT))
    .option('output', { alias: 'o', type: 'string', describe: 'where to write (- for stdout)' })
    .option('key', { type: 'string', describe: 'encrypt-file: the named key that wraps the file key (default: default)' })
    .option('context', { type: 'string', describe: "a derived key's context (base64url): the same to decrypt" })
    .option('force', { type: 'boolean', describe: 'replace an existing output file' })
    .parserConfiguration({ 'parse-numbers': false, 'parse-positional-numbers': false })
    .example('$0 encrypt-file report.pdf', 'writes report.pdf.crypt')
    .example('$0 encrypt-file report.pdf -o - | ssh host crypt-client decrypt-file - -o report.pdf', 'through a pipe')
    .epilogue('Exit codes: 0 ok, 1 refused or not a valid stream (nothing is left behind), 2 usage error, 3 server unreachable.')
    .strict()
    .help()
    .alias('h', 'help')
    .version(VERSION)
    .wrap(100);
}

/** A file being written: committed (synced, renamed into place) or aborted (removed). */
interface Target {
  stream: Writable;
  /** Standard output: never ended, nothing to rename. */
  stdout: boolean;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

async function target(path: string, io: Io, force: boolean): Promise<Target> {
  if (path === '-') return { stream: io.stdout, stdout: true, commit: async () => undefined, abort: async () => undefined };
  const final = resolve(io.cwd, path);
  const existing = await stat(final).catch(() => null);
  if (existing && !force) throw new CryptError('conflict', `${path} exists: give another -o, or --force to replace it`);
  if (existing && !existing.isFile()) throw new CryptError('conflict', `${path} is not a regular file`);
  const tmp = join(dirname(final), `.${basename(final)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = await promisify(openFd)(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  const stream = createWriteStream('', { fd, autoClose: false });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    if (!stream.writableFinished) stream.destroy();
    await promisify(closeFd)(fd);
  };
  return {
    stream,
    stdout: false,
    async commit() {
      await promisify(fsync)(fd);
      await close();
      await rename(tmp, final);
    },
    async abort() {
      await close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
    },
  };
}

/** A progress bar on stderr when it is a terminal and the size is known; a no-op otherwise. */
function progressBar(io: Io, total: number | null): { update(n: number): void; stop(): void } {
  const tty = (io.stderr as Writable & { isTTY?: boolean }).isTTY === true;
  if (!tty || total === null) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar({ stream: io.stderr as NodeJS.WritableStream, format: '{bar} {percentage}% | {value}/{total} bytes | {eta}s', hideCursor: true, clearOnComplete: true }, cliProgress.Presets.shades_classic);
  bar.start(total, 0);
  return { update: (n) => bar.update(Math.min(n, total)), stop: () => bar.stop() };
}

/** Runs a file command; resolves with the exit code. */
export async function runFiles(argv: string[], io: Io): Promise<number> {
  // yargs reads a lone `-` as true: it goes through as a word no path can be, and comes back
  const args = await parseOrExit(parser(), argv.map((w) => (w === '-' ? STDIO : w)), io, PROGRAM);
  if (typeof args === 'number') return args;
  const command = String((args._ as string[])[0]);
  const dash = (v: unknown): unknown => (v === STDIO ? '-' : v);
  args.input = dash(args.input);
  args.output = dash(args.output);
  args.o = dash(args.o);
  const input = String(args.input);
  let key = 'default';
  let context: string | undefined;
  try {
    if (args.key !== undefined) {
      if (command !== 'encrypt-file') throw new CryptError('bad_request', `--key goes with encrypt-file: a file names its key in its header`);
      key = optionValue('--key', { kind: 'name', field: 'key', describe: '' }, args.key) as string;
    }
    if (args.context !== undefined) {
      optionValue('--context', { kind: 'context', field: 'context', describe: '' }, args.context);
      context = String(args.context);
    }
    if (args.output !== undefined && (command === 'rewrap-file' || command.startsWith('inspect') || command === 'in')) throw new CryptError('bad_request', `${command} takes no -o: it changes or reads the file itself`);
  } catch (err) {
    complain(io, PROGRAM, (err as Error).message);
    return EXIT.usage;
  }
  if (input === '-' && command !== 'encrypt-file' && command !== 'decrypt-file') {
    complain(io, PROGRAM, `${command} needs a file, not standard input`);
    return EXIT.usage;
  }
  let output: string;
  if (command === 'encrypt-file') output = String(args.output ?? (input === '-' ? '-' : `${input}.crypt`));
  else if (command === 'decrypt-file') {
    const guess = input === '-' ? '-' : input.endsWith('.crypt') && input.length > 6 ? input.slice(0, -6) : null;
    if (args.output === undefined && guess === null) {
      complain(io, PROGRAM, `decrypt-file ${input}: give the output with -o (the name does not end in .crypt)`);
      return EXIT.usage;
    }
    output = String(args.output ?? guess);
  } else output = '';
  let size: number | null = null;
  if (input !== '-') {
    try {
      const st = await stat(resolve(io.cwd, input));
      if (!st.isFile()) throw new Error('not a regular file');
      size = st.size;
    } catch (err) {
      complain(io, PROGRAM, `cannot read ${input} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      return EXIT.failed;
    }
  }
  const options = await connectOptions(args, io);
  if (typeof options === 'number') return options;
  let client: CryptClient | null = null;
  let out: Target | null = null;
  const bar = progressBar(io, command === 'encrypt-file' || command === 'decrypt-file' ? size : null);
  try {
    client = await CryptClient.connect(options);
    const path = resolve(io.cwd, input);
    if (command === 'rewrap-file') {
      const r = await rewrapFile(client, path, context);
      io.stdout.write(r.changed ? `rewrapped ${input}: key ${r.key}, version ${r.from ?? '(none)'} -> ${r.to}\n` : `${input} is already under the primary version ${r.to} of ${r.key}: nothing to do\n`);
      return EXIT.ok;
    }
    if (command !== 'encrypt-file' && command !== 'decrypt-file') {
      io.stdout.write(JSON.stringify(await inspectFile(client, path, context)) + '\n');
      return EXIT.ok;
    }
    out = await target(output, io, Boolean(args.force));
    // 16 chunks a read: fewer calls; the encryptor keeps views, the decryptor copies only the chunks a read cuts
    const source: Readable = input === '-' ? io.stdin : createReadStream(path, { highWaterMark: 16 * (command === 'encrypt-file' ? CHUNK : CHUNK + TAG) });
    if (command === 'encrypt-file') await encryptStream(client, source, out.stream, { key, context }, (n) => bar.update(n), !out.stdout);
    else await decryptStream(client, source, out.stream, context, (n) => bar.update(n), !out.stdout);
    await out.commit();
    return EXIT.ok;
  } catch (err) {
    await out?.abort();
    bar.stop();
    if (err instanceof CryptError) {
      const partial = out?.stdout && command === 'decrypt-file' && err.code === 'invalid_stream' ? ' (what was written to stdout before this is authentic, but the rest is missing)' : '';
      complain(io, PROGRAM, `${err.code}: ${err.message}${partial}`);
      return err.code === 'bad_request' ? EXIT.usage : EXIT.failed;
    }
    if (err instanceof ServerError || (err as Error).name === 'ConnectionError') return report(io, err);
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === 'string') {
      complain(io, PROGRAM, `${command} ${input}: ${code === 'EPIPE' ? 'the output was closed' : `file error (${code})`}; nothing was left behind`);
      return EXIT.failed;
    }
    throw err;
  } finally {
    bar.stop();
    await client?.close();
  }
}
