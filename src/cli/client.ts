/**
 * crypt-client's command line: one operation from argv for scripts, or a prompted session.
 *
 * Rules:
 * - The commands are the operations table's (src/core/operations.ts), `au` aside: the access
 *   token goes with --token-file or CRYPT_TOKEN (--token works, with a warning: argv is public).
 * - A message is the words exactly as given, joined by single spaces: never parsed as numbers.
 *   Options go before it: from its first word on, everything is message (`en pay -h` encrypts
 *   "pay -h"), and `--` ends the options wherever it is (`en -- -secret`, `en x -- -y` is "x -y"). `-`, or a piped stdin
 *   with no words, sends stdin byte for byte (a `-` after `--` is just "-"); an empty stdin
 *   without `-` is a usage error, not an empty message.
 * - Settings come from flags and the environment, never from a `.env` file: one in whatever
 *   directory the client runs in could point the token and the plaintext at another host.
 * - Argv mode prints the result alone on stdout: a token or key with a line break, JSON on one
 *   line, a plaintext exactly as its bytes (plus a line break only when stdout is a terminal).
 * - Every reply is checked for its shape (src/client/client.ts): a wrong server is never an answer.
 * - Exit codes: 0 success, 1 the server refused the request (or, in a piped session, any
 *   operation failed), 2 usage, 3 the server could not be reached or is not a crypt-server.
 * - The prompted session writes results to stdout and prompts to stderr, the prompts only when
 *   stdin is a terminal, where it also has line editing and history; Ctrl-C and Ctrl-D end it.
 */
import yargs from 'yargs';
import { createInterface } from 'node:readline';
import { CLIENT, ConfigError } from '../ops/config.js';
import { CryptClient, ServerError } from '../client/client.js';
import type { ClientOptions } from '../client/client.js';
import { OPERATIONS, operation } from '../core/operations.js';
import type { Operation, OptionSpec } from '../core/operations.js';
import { optionValue } from '../core/dispatcher.js';
import type { Role } from '../core/access.js';
import { VERSION } from '../core/version.js';
import { EXIT, closest, complain, flagOptions, parseOrExit, readAll } from './common.js';
import type { Io } from './common.js';
import { PROGRAM, connectOptions, report } from './connect.js';
import { isFileCommand, runFiles } from './files.js';

/** The most stdin read as a message or token: a message of 192 MiB has a token of the largest reply the client reads (MAX_REPLY, 256 MiB). */
const MAX_STDIN = 192 * 1024 * 1024;

/** The operations a client runs as commands: all but `au`, which the connection does itself, and the streams (encrypt-file and decrypt-file do their work on the client). */
const COMMANDS: readonly Operation[] = OPERATIONS.filter((o) => o.input !== 'secret' && o.input !== 'stream');
const ALIASES: ReadonlyMap<string, string> = new Map([['inspect', 'in'], ['audit-hash', 'ah']]);
const NAMES = COMMANDS.map((o) => o.command + ([...ALIASES].find(([, c]) => c === o.command)?.[0] ? ` (${[...ALIASES].find(([, c]) => c === o.command)![0]})` : '')).join(', ');

/** The command a word names (or an alias of one), or undefined. */
function commandOf(word: string): Operation | undefined {
  const op = operation(ALIASES.get(word) ?? word);
  return op && COMMANDS.includes(op) ? op : undefined;
}

/** A suggestion for a mistyped command: by command, alias or title (`encrypt` -> en). */
function suggest(word: string): string {
  const byTitle = COMMANDS.find((o) => o.title === word.toLowerCase() || o.title.startsWith(word.toLowerCase()));
  const guess = byTitle?.command ?? closest(word.toLowerCase(), [...COMMANDS.map((o) => o.command), ...ALIASES.keys()]);
  return guess ? `; did you mean ${guess}?` : '';
}

const positional = (o: Operation): string => (o.input === 'message' ? ' [MESSAGE..]' : o.input === 'token' ? ' [TOKEN]' : o.options.has('key') ? ' [KEY]' : '');

/** An operation option as a flag: `auto_rotate` is --auto-rotate. */
const flagOf = (name: string): string => name.replace(/_/g, '-');
/** Every option of the commands, with the commands that take it. */
const OPTION_FLAGS: ReadonlyMap<string, { name: string; spec: OptionSpec; commands: string[] }> = (() => {
  const flags = new Map<string, { name: string; spec: OptionSpec; commands: string[] }>();
  for (const o of COMMANDS) {
    for (const [name, spec] of o.options) {
      const entry = flags.get(flagOf(name)) ?? { name, spec, commands: [] };
      entry.commands.push(o.command);
      flags.set(flagOf(name), entry);
    }
  }
  return flags;
})();
const OPTION_GROUP = 'Request options (each with the commands that take it):';

function parser() {
  let y = yargs()
    .scriptName(PROGRAM)
    .usage('Usage: $0 <command> [message or token]\n       $0              (a prompted session)\n\nTalks to crypt-server over TCP.')
    .parserConfiguration({ 'parse-numbers': false, 'parse-positional-numbers': false });
  for (const o of COMMANDS) {
    y = y.command(`${o.command}${positional(o)}`, o.summary);
    for (const [alias, command] of ALIASES) if (command === o.command) y = y.command(`${alias}${positional(o)}`, false);
  }
  return y
    .options(flagOptions(CLIENT))
    // a bool flag is a yargs boolean, so that it never takes the next word (kc --derived users): true alone, or `--derived false`
    .options(Object.fromEntries([...OPTION_FLAGS].map(([flag, { spec, commands }]) => [flag, { type: spec.kind === 'bool' ? 'boolean' : 'string', describe: `${commands.join(', ')}: ${spec.describe}`, group: OPTION_GROUP }])))
    .option('yes', { type: 'boolean', describe: 'kd: yes, delete the key and every token made with it (confirm=true)', group: OPTION_GROUP })
    .example('$0 en "hello"', 'print a token for hello')
    .example('$0 de gAAAAAB...', 'print the plaintext of a token')
    .example('$0 en - < file.bin > file.token', 'encrypt a file byte for byte')
    .example('$0 en -- -starts-with-a-dash', 'words after -- are the message, whatever they look like')
    .example('$0 inspect gAAAAAB...', "a token's age and the key that verifies it")
    .example('$0 en --key billing "invoice 42"', 'encrypt with the named key billing')
    .example('$0 de --key users --context dGVuYW50LTQy gAAAAAB...', 'decrypt with the derived key users, for one tenant')
    .example('$0 kc users --derived', 'create a derived key (admin)')
    .example('$0', 'a prompted session: operation, then message or token, until quit')
    .epilogue('Exit codes: 0 ok, 1 the server refused the request, 2 usage error, 3 server unreachable or not a crypt-server.')
    .strict()
    .help()
    .alias('h', 'help')
    .version(VERSION)
    .alias('v', 'version')
    .wrap(100);
}

/** Flags that take a value, so that the word after them is not read as the command or message. */
const VALUED = new Set([...CLIENT.filter((x) => x.flag !== null && x.kind !== 'boolean').map((x) => `--${x.flag}`), ...[...OPTION_FLAGS].filter(([, o]) => o.spec.kind !== 'bool').map(([flag]) => `--${flag}`)]);
const isOption = (word: string): boolean => word.startsWith('-') && word !== '-' && !/^-\d/.test(word);

/**
 * Splits argv into what yargs parses (options and the command) and the words after the command:
 * the first word after the command starts the message (or token), and everything after it is
 * message too, options or not; `--` starts it explicitly. `afterDashes` says the words came after `--`.
 * A command that takes no message (kc, ks...) leaves everything to yargs.
 */
function splitArgv(argv: readonly string[]): { head: string[]; words: string[]; afterDashes: boolean } {
  const head: string[] = [];
  let command = false;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') return { head, words: argv.slice(i + 1), afterDashes: true };
    if (!isOption(word)) {
      if (command) {
        // `--` still ends the options when it comes after the first word: `en x -- -y` is "x -y"
        const rest = argv.slice(i);
        const dashes = rest.indexOf('--');
        return { head, words: dashes === -1 ? rest : [...rest.slice(0, dashes), ...rest.slice(dashes + 1)], afterDashes: dashes !== -1 };
      }
      command = true;
      head.push(word);
      // a command without a message or token (ks billing --exportable) has no message to protect
      if (commandOf(word)?.input === 'none') return { head: [...head, ...argv.slice(i + 1)], words: [], afterDashes: false };
      continue;
    }
    head.push(word);
    if (VALUED.has(word) && i + 1 < argv.length) head.push(argv[++i]!);
  }
  return { head, words: [], afterDashes: false };
}

/** Runs crypt-client; resolves with the exit code. */
export async function run(argv: string[], io: Io): Promise<number> {
  if (isFileCommand(argv, VALUED, io)) return runFiles(argv, io);
  const { head, words: tail, afterDashes } = splitArgv(argv);
  const args = await parseOrExit(parser(), head, io, PROGRAM, (message, parsed) => {
    const word = (parsed._ as unknown[])[0];
    if (typeof word !== 'string') return null;
    const op = commandOf(word);
    if (!op) return `unknown command ${/^[\w.-]{1,40}$/.test(word) ? word : '(unprintable)'}: the commands are ${NAMES}${suggest(word)}`;
    if (/^Unknown argument/.test(message) && op.input === 'none') return `${op.command} takes ${op.options.has('key') ? 'one key name' : 'no argument'}: ${PROGRAM} ${op.command}${op.options.has('key') ? ' <key>' : ''}${[...op.options.keys()].filter((k) => k !== 'key').map((k) => ` [--${flagOf(k)} ...]`).join('')}`;
    if (/^Unknown argument/.test(message)) return `${message}: to ${op.title} words that start with -, put them after --: ${PROGRAM} ${op.command} -- <${op.input === 'message' ? 'message' : 'token'}>`;
    return null;
  });
  if (typeof args === 'number') return args;
  const name = (args._ as string[])[0];
  const op = name === undefined ? undefined : commandOf(name)!;
  let requestOptions: Record<string, string>;
  try {
    requestOptions = optionsOf(args, op);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.usage;
  }
  const options = await connectOptions(args, io);
  if (typeof options === 'number') return options;
  if (op === undefined) {
    if (tail.length > 0) {
      complain(io, PROGRAM, `words after -- need a command first: ${PROGRAM} en -- <message>`);
      return EXIT.usage;
    }
    return session(options, io, requestOptions);
  }
  const input = await inputOf(op, tail, io, afterDashes);
  if (typeof input === 'number') return input;
  let client: CryptClient | null = null;
  try {
    client = await CryptClient.connect(options);
    const result = await client.call(op, input, requestOptions);
    write(io, result, true);
    // a result that is a failure in itself (hc: not_ready) exits 1, as HTTP answers it 503
    return op.status && op.status(result) >= 400 ? EXIT.failed : EXIT.ok;
  } catch (err) {
    return report(io, err);
  } finally {
    await client?.close();
  }
}

/**
 * The request options given as flags (and a none-input command's KEY word), checked as the
 * server checks them; a flag the command does not take is a usage error. Without a command (a
 * session) they apply to every command that takes them.
 */
function optionsOf(args: Record<string, unknown>, op: Operation | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const given = (flag: string): unknown => args[flag];
  for (const [flag, { name, spec, commands }] of OPTION_FLAGS) {
    let value = given(flag);
    if (value === undefined) continue;
    if (Array.isArray(value)) throw new ConfigError(`--${flag} given more than once`);
    if (op && !op.options.has(name)) throw new ConfigError(`--${flag} goes with ${commands.join(', ')}, not ${op.command}`);
    // a bool flag alone (--derived) means true
    if (spec.kind === 'bool' && value === '') value = 'true';
    try {
      optionValue(`--${flag}`, spec, value);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
    out[name] = String(value);
  }
  if (args.yes === true) {
    if (op && !op.options.has('confirm')) throw new ConfigError(`--yes goes with kd, not ${op.command}`);
    out.confirm = 'true';
  }
  const word = args.KEY;
  if (word !== undefined && op) {
    if (out.key !== undefined) throw new ConfigError(`give the key once: ${PROGRAM} ${op.command} <key>, or --key <key>`);
    try {
      out.key = String(optionValue('key', op.options.get('key')!, String(word)));
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
  return out;
}

/** The payload of an argv command, or a usage exit code (the message already on stderr). */
async function inputOf(op: Operation, words: string[], io: Io, afterDashes: boolean): Promise<Buffer | number> {
  const what = op.input === 'message' ? 'message' : 'token';
  const optionsLate = words.slice(1).some((w) => isOption(w)) ? ` (options go before the ${what}: ${PROGRAM} ${op.command} [options] <${what}>)` : '';
  if (op.input === 'none') {
    if (words.length === 0) return Buffer.alloc(0);
    complain(io, PROGRAM, `${op.command} takes no argument${isOption(words[0]!) ? ` (options go before ${op.command})` : ''}`);
    return EXIT.usage;
  }
  const readStdin = async (): Promise<Buffer | number> => {
    const all = await readAll(io.stdin, MAX_STDIN);
    if (all !== null) return all;
    complain(io, PROGRAM, `stdin holds more than ${MAX_STDIN} bytes, more than any server answers (its token would pass the largest reply)`);
    return EXIT.usage;
  };
  if (words.length === 1 && words[0] === '-' && !afterDashes) return readStdin();
  if (words.length === 0) {
    if (io.stdin.isTTY) {
      complain(io, PROGRAM, `${op.command} needs a ${what}: ${PROGRAM} ${op.command} <${what}>, or pipe it on stdin`);
      return EXIT.usage;
    }
    const piped = await readStdin();
    if (typeof piped === 'number') return piped;
    if (piped.length === 0) {
      complain(io, PROGRAM, `${op.command} got no ${what}: stdin was empty (pass - to ${op.command} empty input on purpose)`);
      return EXIT.usage;
    }
    return piped;
  }
  if (op.input === 'token' && words.length > 1) {
    complain(io, PROGRAM, `${op.command} takes one token, got ${words.length} words${optionsLate}`);
    return EXIT.usage;
  }
  return Buffer.from(words.join(' '), 'utf8');
}

/** Prints a result: text with a line break, JSON on one line, bytes as they are. */
function write(io: Io, result: string | Buffer | object, alone: boolean): void {
  if (typeof result === 'string') io.stdout.write(result + '\n');
  else if (Buffer.isBuffer(result)) {
    io.stdout.write(result);
    if ((!alone || io.stdout.isTTY) && result.at(-1) !== 0x0a) io.stdout.write('\n');
  } else io.stdout.write(JSON.stringify(result) + '\n');
}

/** The prompted session: operation, then message or token, until quit, Ctrl-C or end of input. */
async function session(options: ClientOptions, io: Io, requestOptions: Record<string, string>): Promise<number> {
  let client: CryptClient;
  try {
    client = await CryptClient.connect(options);
  } catch (err) {
    return report(io, err);
  }
  // a token's role says what it may run; without one (no tokens, or an admin) everything is offered
  const offered = COMMANDS.filter((o) => client.role === null || client.role === 'admin' || o.roles === null || o.roles.includes(client.role as Role));
  const names = [...offered.map((o) => o.command), 'help', 'quit'].join(', ');
  const terminal = Boolean(io.stdin.isTTY);
  const rl = createInterface({ input: io.stdin, output: io.stderr, terminal, historySize: terminal ? 100 : 0 });
  rl.on('SIGINT', () => rl.close());
  const lines = rl[Symbol.asyncIterator]();
  const ask = async (prompt: string): Promise<string | null> => {
    if (terminal) {
      rl.setPrompt(prompt);
      rl.prompt();
    }
    const next = await lines.next();
    return next.done ? null : (next.value as string);
  };
  const help = (): void => {
    for (const o of offered) io.stderr.write(`  ${o.command.padEnd(4)} ${o.title.padEnd(13)} ${o.summary}\n`);
    io.stderr.write('  help               this list\n  quit               end the session (Ctrl-D and Ctrl-C too)\n');
  };
  let failed = false;
  const done = (): number => {
    if (terminal) io.stderr.write('\n');
    return failed ? EXIT.failed : EXIT.ok;
  };
  const chosen = [requestOptions.key && `key ${requestOptions.key}`, requestOptions.context && 'a context'].filter(Boolean).join(' and ');
  if (terminal) io.stderr.write(`connected to ${options.host}:${options.port}${client.role ? ` as ${client.role}` : ''}${chosen ? `, with ${chosen}` : ''}; operations: ${names}\n`);
  try {
    for (;;) {
      const answer = await ask(`operation (${names})> `);
      if (answer === null) return done();
      const word = answer.trim().toLowerCase();
      if (word === '') continue;
      if (word === 'quit' || word === 'q' || word === 'exit') return failed ? EXIT.failed : EXIT.ok;
      if (word === 'help' || word === '?') {
        help();
        continue;
      }
      const op = commandOf(word);
      if (!op || !offered.includes(op)) {
        io.stderr.write(`unknown operation ${JSON.stringify(word.slice(0, 40))}: choose ${names}${op ? '' : suggest(word)}\n`);
        failed = true;
        continue;
      }
      let input = Buffer.alloc(0);
      // the flags the session started with, for the commands that take them
      const given = Object.fromEntries(Object.entries(requestOptions).filter(([k]) => op.options.has(k)));
      if (op.options.get('key')?.required && given.key === undefined) {
        const line = await ask('key> ');
        if (line === null) return done();
        given.key = line.trim();
        try {
          optionValue('key', op.options.get('key')!, given.key);
        } catch (err) {
          io.stderr.write(`error: ${(err as Error).message}\n`);
          failed = true;
          continue;
        }
      }
      if (op.input !== 'none') {
        const line = await ask(`${op.input}> `);
        if (line === null) return done();
        input = Buffer.from(line, 'utf8');
      }
      try {
        if (client.closed) client = await CryptClient.connect(options);
        const result = await client.call(op, input, given);
        write(io, result, false);
        if (op.status && op.status(result) >= 400) failed = true;
      } catch (err) {
        if (!(err instanceof ServerError)) return report(io, err);
        io.stderr.write(`error: ${err.code}: ${err.message}\n`);
        failed = true;
      }
    }
  } finally {
    rl.close();
    await client.close();
  }
}
