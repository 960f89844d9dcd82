/**
 * crypt-client's command line: one operation from argv for scripts, or a prompted session.
 *
 * Rules:
 * - Argv mode prints the result alone on stdout: a token or key with a line break, a plaintext
 *   exactly as its bytes (plus a line break only when stdout is a terminal).
 * - `-`, or a piped stdin with no message, sends stdin byte for byte.
 * - Exit codes: 0 success, 1 the server answered with an error, 2 usage, 3 the server could
 *   not be reached or the connection was lost. Errors are one line on stderr.
 * - The prompted session writes results to stdout and prompts to stderr, the prompts only when
 *   stdin is a terminal (as a shell or Python's REPL do), so piped answers give clean output.
 */
import yargs from 'yargs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { CLIENT, ConfigError, clientConfig, readDotenv } from '../config.js';
import type { ClientConfig } from '../config.js';
import { CryptClient, ConnectionError, ServerError } from '../client.js';
import type { ClientOptions } from '../client.js';
import { VERSION } from '../version.js';
import { EXIT, complain, flagOptions, parseOrExit, readAll } from './common.js';
import type { Io } from './common.js';

const PROGRAM = 'crypt-client';

function parser() {
  return yargs()
    .scriptName(PROGRAM)
    .usage('Usage: $0 <command> [message or token]\n       $0              (a prompted session)\n\nTalks to crypt-server over TCP.')
    .command('en [MESSAGE..]', 'encrypt a message (words are joined by spaces; - or a pipe: stdin)')
    .command('de [TOKEN]', 'decrypt a token (- or a pipe: stdin)')
    .command('rw [TOKEN]', 'rewrap a token under the primary key, keeping its timestamp')
    .command('gk', 'print the primary key (admin; loopback only without access tokens)')
    .command('ki', 'print the key ids, states and creation times as JSON')
    .command('rk', 'rotate: make a new primary key (admin)')
    .options(flagOptions(CLIENT))
    .option('ttl', { type: 'string', describe: 'de: refuse tokens older than this many seconds' })
    .example('$0 en "hello"', 'print a token for hello')
    .example('$0 de gAAAAAB...', 'print the plaintext of a token')
    .example('$0 en - < file.bin > file.token', 'encrypt a file byte for byte')
    .example('$0', 'a prompted session: operation, then message or token, until quit')
    .epilogue('Exit codes: 0 ok, 1 the server refused the request, 2 usage error, 3 server unreachable.')
    .strict()
    .help()
    .alias('h', 'help')
    .version(VERSION)
    .wrap(100);
}

/** Runs crypt-client; resolves with the exit code. */
export async function run(argv: string[], io: Io): Promise<number> {
  const args = await parseOrExit(parser(), argv, io, PROGRAM);
  if (typeof args === 'number') return args;
  let config: ClientConfig;
  let ttl: number | undefined;
  let ca: Buffer | undefined;
  try {
    config = clientConfig({ flags: args, env: io.env, dotenv: readDotenv(io.cwd) });
    if (args.ttl !== undefined) {
      if (!/^\d{1,15}$/.test(String(args.ttl))) throw new ConfigError(`--ttl: expected a whole number of seconds, got ${JSON.stringify(args.ttl)}`);
      ttl = Number(args.ttl);
    }
    if (config.ca) ca = await readFile(config.ca).catch((err: NodeJS.ErrnoException) => {
      throw new ConfigError(`cannot read CA file ${config.ca} (${err.code})`);
    });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.usage;
  }
  const options: ClientOptions = { host: config.host, port: config.port, tls: config.tls, ca, token: config.token, timeoutMs: config.timeout * 1000 };
  const command = (args._ as string[])[0];
  if (command === undefined) return session(options, io);
  if (ttl !== undefined && command !== 'de') {
    complain(io, PROGRAM, '--ttl goes with de only');
    return EXIT.usage;
  }

  let input: Buffer | null = null;
  if (command === 'en' || command === 'de' || command === 'rw') {
    // positionals are upper case: `token` is the --token option (the access token)
    const words = command === 'en' ? ((args.MESSAGE as string[] | undefined) ?? []).map(String) : args.TOKEN === undefined ? [] : [String(args.TOKEN)];
    if ((words.length === 0 && !io.stdin.isTTY) || (words.length === 1 && words[0] === '-')) {
      input = await readAll(io.stdin);
      if (command !== 'en') input = Buffer.from(input.toString('latin1').trim(), 'latin1');
    } else if (words.length === 0) {
      complain(io, PROGRAM, `${command} needs a ${command === 'en' ? 'message' : 'token'}: ${PROGRAM} ${command} <${command === 'en' ? 'message' : 'token'}>, or pipe it on stdin`);
      return EXIT.usage;
    } else {
      input = Buffer.from(words.join(' '));
    }
  }
  return once(options, io, async (client) => {
    switch (command) {
      case 'en':
        return line(await client.encrypt(input!));
      case 'de':
        return client.decrypt(input!.toString('latin1'), ttl);
      case 'rw':
        return line(await client.rewrap(input!.toString('latin1')));
      case 'gk':
        return line(await client.getKey());
      case 'ki':
        return line(JSON.stringify(await client.keyInfo()));
      default:
        return line(JSON.stringify(await client.rotate()));
    }
  });
}

const line = (text: string): string => text + '\n';

/** Connects, runs one operation, prints its result; maps failures to exit codes. */
async function once(options: ClientOptions, io: Io, op: (client: CryptClient) => Promise<string | Buffer>): Promise<number> {
  let client: CryptClient | null = null;
  try {
    client = await CryptClient.connect(options);
    const result = await op(client);
    io.stdout.write(result);
    if (typeof result !== 'string' && io.stdout.isTTY && result.at(-1) !== 0x0a) io.stdout.write('\n');
    return EXIT.ok;
  } catch (err) {
    return report(io, err);
  } finally {
    await client?.close();
  }
}

function report(io: Io, err: unknown): number {
  if (err instanceof ServerError) {
    complain(io, PROGRAM, `${err.code}: ${err.message}`);
    return EXIT.failed;
  }
  if (err instanceof ConnectionError) {
    complain(io, PROGRAM, err.message);
    return EXIT.unreachable;
  }
  throw err;
}

const OPERATIONS: Record<string, { ask?: string; run(client: CryptClient, input: string): Promise<string> }> = {
  en: { ask: 'message', run: (c, input) => c.encrypt(input) },
  de: { ask: 'token', run: async (c, input) => (await c.decrypt(input.trim())).toString() },
  gk: { run: (c) => c.getKey() },
};

/** The prompted session: operation, then message or token, until quit or end of input. */
async function session(options: ClientOptions, io: Io): Promise<number> {
  let client: CryptClient;
  try {
    client = await CryptClient.connect(options);
  } catch (err) {
    return report(io, err);
  }
  const terminal = Boolean(io.stdin.isTTY);
  const rl = createInterface({ input: io.stdin, output: io.stderr, terminal });
  const lines = rl[Symbol.asyncIterator]();
  const ask = async (prompt: string): Promise<string | null> => {
    if (terminal) {
      rl.setPrompt(prompt);
      rl.prompt();
    }
    const next = await lines.next();
    return next.done ? null : (next.value as string);
  };
  if (terminal) io.stderr.write(`connected to ${options.host}:${options.port}; operations: en (encrypt), de (decrypt), gk (get key), quit\n`);
  try {
    for (;;) {
      const answer = await ask('operation (en, de, gk, quit)> ');
      if (answer === null) return EXIT.ok;
      const name = answer.trim().toLowerCase();
      if (name === '') continue;
      if (name === 'quit' || name === 'q' || name === 'exit') return EXIT.ok;
      const op = OPERATIONS[name];
      if (!op) {
        io.stderr.write(`unknown operation ${JSON.stringify(name)}: choose en, de, gk or quit\n`);
        continue;
      }
      const input = op.ask ? await ask(`${op.ask}> `) : '';
      if (input === null) return EXIT.ok;
      try {
        if (client.closed) client = await CryptClient.connect(options);
        io.stdout.write((await op.run(client, input)) + '\n');
      } catch (err) {
        if (err instanceof ServerError) io.stderr.write(`error: ${err.code}: ${err.message}\n`);
        else return report(io, err);
      }
    }
  } finally {
    rl.close();
    await client.close();
  }
}
