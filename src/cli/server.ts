/**
 * crypt-server's command line: serve, or manage the keyring with `keys`.
 *
 * Exit codes: 0 after a clean shutdown or a successful keys command, 1 when the server can't
 * start or a keys command fails, 2 for usage and configuration errors. With --workers n, this
 * process supervises n workers that run the server (src/cluster.ts).
 */
import yargs from 'yargs';
import type { Argv } from 'yargs';
import { once } from 'node:events';
import { ConfigError, SERVER, readDotenv, serverConfig } from '../ops/config.js';
import type { ServerConfig } from '../ops/config.js';
import { createLogger } from '../ops/log.js';
import { openKeyring, startServer } from '../ops/startup.js';
import { LEAD, isWorker, runPrimary, workerDone, workerReady } from '../ops/cluster.js';
import { CryptError } from '../core/errors.js';
import { FileError } from '../keys/files.js';
import { VERSION } from '../core/version.js';
import { EXIT, complain, flagOptions, parseOrExit } from './common.js';
import type { Io } from './common.js';

const PROGRAM = 'crypt-server';

function parser(): Argv {
  return yargs()
    .scriptName(PROGRAM)
    .usage('Usage: $0 [options]\n       $0 keys <init|list|rotate|retire|activate> [id]\n\nEncryption as a service: serves Fernet encryption over TCP, and HTTP with --http.')
    .command('$0', 'serve (the default)')
    .command('keys <action> [id]', 'manage the keyring: init, list [--json], rotate, retire <id>, activate <id>', (y) =>
      y.positional('action', { choices: ['init', 'list', 'rotate', 'retire', 'activate'] as const, describe: 'what to do' })
        .positional('id', { type: 'string', describe: 'key id, for retire and activate' })
        .option('json', { type: 'boolean', describe: 'list: print {"keys": [...]} as JSON' }),
    )
    .options(flagOptions(SERVER))
    .example('$0 --port 8000', 'serve TCP on 127.0.0.1:8000')
    .example('$0 --http', 'serve TCP on 8000 and HTTP on 8080')
    .example('$0 keys init --keyring /var/lib/crypt/keyring.json', 'create a keyring where you want it')
    .example('$0 keys rotate', 'make a new primary key (servers pick it up within 2 s)')
    .example('$0 keys list --json', 'show key ids, states and creation times')
    .epilogue('Settings come from flags, then the environment, then .env in the working directory. Docs: README.md, docs/protocol.md')
    .strict()
    .help()
    .alias('h', 'help')
    .version(VERSION)
    .wrap(100);
}

/** Runs crypt-server; resolves with the exit code once the server has stopped. */
export async function run(argv: string[], io: Io, signals: NodeJS.EventEmitter = process): Promise<number> {
  const args = await parseOrExit(parser(), argv, io, PROGRAM);
  if (typeof args === 'number') return args;
  let config: ServerConfig;
  try {
    config = serverConfig({ flags: args, env: io.env, dotenv: readDotenv(io.cwd) });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.usage;
  }
  if ((args._ as string[])[0] === 'keys') return keys(args, config, io);
  return serve(config, io, signals);
}

async function serve(config: ServerConfig, io: Io, signals: NodeJS.EventEmitter): Promise<number> {
  const log = createLogger(config.logLevel, io.stdout, config.logFormat);
  if (config.workers > 1 && !isWorker()) {
    try {
      return await runPrimary(config, log, signals, io.stderr);
    } catch (err) {
      complain(io, PROGRAM, (err as Error).message);
      return EXIT.failed;
    }
  }
  // with --workers, one worker (the lead) logs what every worker would: n copies say nothing more
  const quiet = isWorker() && io.env[LEAD] !== '1';
  let server;
  try {
    server = await startServer(config, log, { stderr: io.stderr, quiet });
  } catch (err) {
    complain(io, PROGRAM, (err as Error).message);
    workerDone();
    return EXIT.failed;
  }
  if (isWorker()) workerReady(signals);
  const [signal] = (await Promise.race([once(signals, 'SIGINT'), once(signals, 'SIGTERM')])) as [string | undefined];
  (quiet ? log.debug : log.info).call(log, { signal: signal ?? 'signal' }, 'signal received');
  await server.close();
  workerDone();
  return EXIT.ok;
}

async function keys(args: Record<string, unknown>, config: ServerConfig, io: Io): Promise<number> {
  const action = args.action as 'init' | 'list' | 'rotate' | 'retire' | 'activate';
  const id = args.id as string | undefined;
  if ((action === 'retire' || action === 'activate') && !id) {
    complain(io, PROGRAM, `keys ${action} needs a key id: see ${PROGRAM} keys list`);
    return EXIT.usage;
  }
  try {
    if (action === 'init') {
      if (config.fernetKeys !== undefined) throw new FileError('keys come from FERNET_KEYS: there is no keyring file to create');
      const { keyring, created } = await openKeyring({ ...config, init: true, keyringDefault: false });
      if (!created) throw new FileError(`keyring ${keyring.file} exists already; nothing was changed`);
      io.stdout.write(`created ${keyring.file} with one key (${keyring.current.primary.id}): back it up, it holds every key\n`);
      return EXIT.ok;
    }
    const { keyring } = await openKeyring({ ...config, init: false, keyringDefault: false }).catch((err: unknown) => {
      if (err instanceof FileError && /does not exist/.test(err.message)) throw new FileError(`no keyring at ${config.keyring}: create one with ${PROGRAM} keys init (or start the server with --init)`);
      throw err;
    });
    switch (action) {
      case 'list': {
        const info = keyring.current.info();
        if (args.json) io.stdout.write(JSON.stringify({ keys: info }) + '\n');
        else io.stdout.write([`${'ID'.padEnd(12)}  ${'STATE'.padEnd(7)}  CREATED`, ...info.map((k) => `${k.id}  ${k.state.padEnd(7)}  ${k.created ?? '-'}`)].join('\n') + '\n');
        break;
      }
      case 'rotate': {
        const set = await keyring.update((s) => s.rotated(new Date(), config.maxKeys));
        io.stdout.write(`rotated: ${set.primary.id} is the new primary key\n`);
        break;
      }
      default:
        await keyring.update((s) => s.withState(id!, action === 'retire' ? 'retired' : 'active'));
        io.stdout.write(`${action === 'retire' ? 'retired' : 'activated'}: ${id}\n`);
        break;
    }
    return EXIT.ok;
  } catch (err) {
    if (!(err instanceof FileError || err instanceof CryptError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.failed;
  }
}
