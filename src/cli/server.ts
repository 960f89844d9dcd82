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
import { openAudit, openKeyring, startServer } from '../ops/startup.js';
import type { AuditLog } from '../core/audit.js';
import { newCaller } from '../core/access.js';
import { userInfo } from 'node:os';
import { performance } from 'node:perf_hooks';
import { LEAD, isWorker, runPrimary, workerDone, workerReady } from '../ops/cluster.js';
import { CryptError } from '../core/errors.js';
import { FileError } from '../keys/files.js';
import { readBackup, writeBackup } from '../keys/backup.js';
import { DEFAULT_KEY, KEY_NAME } from '../keys/keyring.js';
import type { Keyring } from '../keys/keyring.js';
import { CryptService } from '../core/service.js';
import { optionValue } from '../core/dispatcher.js';
import { VERSION } from '../core/version.js';
import { EXIT, complain, flagOptions, parseOrExit } from './common.js';
import type { Io } from './common.js';

const PROGRAM = 'crypt-server';

function parser(): Argv {
  return yargs()
    .scriptName(PROGRAM)
    .usage('Usage: $0 [options]\n       $0 keys <action> [name or id]\n\nEncryption as a service: serves Fernet encryption over TCP, and HTTP with --http.')
    .command('$0', 'serve (the default)')
    .command('keys <action> [args..]', `manage the keyring: ${KEY_ACTIONS.join(', ')}`, (y) =>
      y.positional('action', { choices: KEY_ACTIONS, describe: 'what to do' })
        .positional('args', { type: 'string', array: true, describe: 'a key name (show, create, config, rotate, delete, backup), a version id (retire, activate), a file (restore)' })
        .option('json', { type: 'boolean', describe: 'list, show: print JSON' })
        .option('derived', { type: 'boolean', describe: 'create: requests bring a context; their keys are derived from it' })
        .option('exportable', { type: 'string', describe: 'create: gk and backups may export it; config: true or false' })
        .option('deletion-allowed', { type: 'string', describe: 'config: true or false' })
        .option('auto-rotate', { type: 'string', describe: 'config: a period of at least 1h (24h, 30d) or off' })
        .option('yes', { type: 'boolean', describe: 'delete: yes, destroy the key and every token made with it' })
        .option('output', { alias: 'o', type: 'string', describe: 'backup: the file to write (a new one)' })
        .option('force', { type: 'boolean', describe: 'restore: replace a key of the same name' }),
    )
    .options(flagOptions(SERVER))
    .example('$0 --port 8000', 'serve TCP on 127.0.0.1:8000')
    .example('$0 --http', 'serve TCP on 8000 and HTTP on 8080')
    .example('$0 keys init --keyring /var/lib/crypt/keyring.json', 'create a keyring where you want it')
    .example('$0 keys create billing', 'a new named key (requests choose it with key=billing)')
    .example('$0 keys create users --derived', 'a derived key: each request brings a tenant context')
    .example('$0 keys rotate billing', 'a new primary version (running servers pick it up within 2 s)')
    .example('$0 keys list', 'every key: settings, primary version, versions')
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
  // listened for before starting, so that a signal during startup stops the server once it is up
  const listening = new AbortController();
  const stop = Promise.race([once(signals, 'SIGINT', { signal: listening.signal }), once(signals, 'SIGTERM', { signal: listening.signal })]) as Promise<[string | undefined]>;
  stop.catch(() => undefined);
  let server;
  try {
    server = await startServer(config, log, { stderr: io.stderr, quiet });
  } catch (err) {
    listening.abort();
    complain(io, PROGRAM, (err as Error).message);
    workerDone();
    return EXIT.failed;
  }
  if (isWorker()) workerReady(signals);
  // logrotate: the audit file is reopened at its path (without an audit log, SIGHUP stops the server as before)
  const audit = server.audit;
  const reopen = () => void audit?.reopen();
  if (audit) signals.on('SIGHUP', reopen);
  const [signal] = await stop;
  signals.off('SIGHUP', reopen);
  listening.abort();
  (quiet ? log.debug : log.info).call(log, { signal: signal ?? 'signal' }, 'signal received');
  await server.close();
  workerDone();
  return EXIT.ok;
}

const KEY_ACTIONS = ['init', 'list', 'show', 'create', 'config', 'rotate', 'retire', 'activate', 'delete', 'backup', 'restore'] as const;
type KeyAction = (typeof KEY_ACTIONS)[number];
/** The flags of `keys` and the actions that take each. */
const KEY_FLAGS = ['json', 'derived', 'exportable', 'deletion-allowed', 'auto-rotate', 'yes', 'output', 'force'] as const;
const ACTION_FLAGS = new Map<KeyAction, readonly string[]>([
  ['init', []], ['list', ['json']], ['show', ['json']], ['create', ['derived', 'exportable']],
  ['config', ['exportable', 'deletion-allowed', 'auto-rotate']], ['rotate', []], ['retire', []], ['activate', []],
  ['delete', ['yes']], ['backup', ['output']], ['restore', ['force']],
]);
const yesNo = (b: boolean): string => (b ? 'yes' : 'no');
const period = (seconds: number | null): string => (seconds === null ? 'off' : seconds % 86_400 === 0 ? `${seconds / 86_400}d` : seconds % 3600 === 0 ? `${seconds / 3600}h` : `${seconds}s`);
const BOOL = { kind: 'bool', field: 'exportable', describe: '' } as const;
const PERIOD = { kind: 'period', field: 'autoRotate', describe: '' } as const;

async function keys(args: Record<string, unknown>, config: ServerConfig, io: Io): Promise<number> {
  const action = args.action as KeyAction;
  const [arg] = ((args.args as string[] | undefined) ?? []).map(String);
  const words = ((args.args as string[] | undefined) ?? []).length;
  const takes = ACTION_FLAGS.get(action)!;
  const stray = KEY_FLAGS.filter((f) => args[f] !== undefined && !takes.includes(f));
  if (stray.length > 0 || words > (action === 'init' || action === 'list' ? 0 : 1)) {
    const what = stray.length > 0 ? `--${stray[0]}` : `the extra word ${JSON.stringify(String((args.args as string[])[words - 1]).slice(0, 40))}`;
    complain(io, PROGRAM, `keys ${action} does not take ${what}${takes.length ? `; it takes ${takes.map((f) => `--${f}`).join(', ')}` : ''}: see ${PROGRAM} --help`);
    return EXIT.usage;
  }
  const needs = new Map<KeyAction, string>([['show', 'a key name'], ['create', 'a key name'], ['config', 'a key name'], ['delete', 'a key name'], ['backup', 'a key name'], ['retire', 'a version id'], ['activate', 'a version id'], ['restore', 'a backup file']]);
  if (needs.has(action) && !arg) {
    complain(io, PROGRAM, `keys ${action} needs ${needs.get(action)}: see ${PROGRAM} keys list`);
    return EXIT.usage;
  }
  if (action === 'backup' && !args.output) {
    complain(io, PROGRAM, 'keys backup needs a file to write: -o <file>');
    return EXIT.usage;
  }
  // flag values are checked before the keyring is opened: a bad one is a usage error (exit 2)
  let settings: { exportable?: boolean; deletionAllowed?: boolean; autoRotate?: number | null };
  try {
    settings = {
      // create takes a bare --exportable (yargs gives '') as true
      exportable: args.exportable === undefined ? undefined : action === 'create' && args.exportable === '' ? true : (optionValue('--exportable', BOOL, args.exportable) as boolean),
      deletionAllowed: args['deletion-allowed'] === undefined ? undefined : (optionValue('--deletion-allowed', BOOL, args['deletion-allowed']) as boolean),
      autoRotate: args['auto-rotate'] === undefined ? undefined : (optionValue('--auto-rotate', PERIOD, args['auto-rotate']) as number | null),
    };
  } catch (err) {
    complain(io, PROGRAM, (err as Error).message);
    return EXIT.usage;
  }
  // with --audit-file, every action is recorded (transport cli); the log is opened before anything changes
  let audit: AuditLog | null = null;
  const began = performance.now();
  const line = { key: null as string | null, keyId: null as string | null };
  const record = async (outcome: string): Promise<boolean> => {
    if (!audit) return true;
    const mark = audit.failures;
    const caller = newCaller('cli', undefined);
    caller.peer = 'local';
    audit.add({ requestId: `cli-${process.pid}`, caller, callerId: `user:${cliUser()}`, op: KEY_OPS.get(action)!, key: line.key, keyId: line.keyId, outcome, bytesIn: 0, bytesOut: 0, durationMs: Math.round((performance.now() - began) * 1000) / 1000, tokenIn: null, tokenOut: null, plaintext: null });
    await audit.close();
    return audit.failures === mark;
  };
  try {
    if (action === 'init') {
      if (config.fernetKeys !== undefined) throw new FileError('keys come from FERNET_KEYS: there is no keyring file to create');
      const { keyring, created } = await openKeyring({ ...config, init: true, keyringDefault: false });
      if (!created) throw new FileError(`keyring ${keyring.file} exists already; nothing was changed`);
      io.stdout.write(`created ${keyring.file} with the key default (${keyring.current.primary.id}): back it up, it holds every key\n`);
      if (config.auditFile) {
        audit = await openAudit(config, keyring.file, createLogger('silent', io.stderr));
        line.key = DEFAULT_KEY;
        line.keyId = keyring.current.primary.id;
        if (!(await record('ok'))) throw new FileError(`the keyring was created, but its audit line could not be written to ${config.auditFile}`);
      }
      return EXIT.ok;
    }
    const { keyring } = await openKeyring({ ...config, init: false, keyringDefault: false }).catch((err: unknown) => {
      if (err instanceof FileError && /does not exist/.test(err.message)) throw new FileError(`no keyring at ${config.keyring}: create one with ${PROGRAM} keys init (or start the server with --init)`);
      throw err;
    });
    if (config.auditFile) audit = await openAudit(config, keyring.file, createLogger('silent', io.stderr));
    const code = await keyAction(action, arg, args, settings, keyring, config, io, line).catch(async (err: unknown) => {
      if (err instanceof FileError || err instanceof CryptError) await record(err instanceof CryptError ? err.code : 'unavailable');
      throw err;
    });
    if (!(await record('ok'))) throw new FileError(`${READS.has(action) ? 'done' : 'the change was made'}, but its audit line could not be written to ${config.auditFile}`);
    return code;
  } catch (err) {
    if (!(err instanceof FileError || err instanceof CryptError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.failed;
  }
}

/** The audit log's op of each action: the TCP command where there is one. */
const KEY_OPS = new Map<KeyAction, string>([
  ['init', 'keys-init'], ['list', 'ki'], ['show', 'ks'], ['create', 'kc'], ['config', 'kf'], ['rotate', 'rk'],
  ['retire', 'keys-retire'], ['activate', 'keys-activate'], ['delete', 'kd'], ['backup', 'keys-backup'], ['restore', 'keys-restore'],
]);
const READS: ReadonlySet<KeyAction> = new Set(['list', 'show', 'backup']);

/** The user running the command, for the audit log (characters a line may hold). */
function cliUser(): string {
  try {
    return userInfo().username.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64) || `uid${process.getuid?.() ?? ''}`;
  } catch {
    return `uid${process.getuid?.() ?? ''}`;
  }
}

/** Runs one keys action on an open keyring; `line` gets the key and version it touched. */
async function keyAction(
  action: KeyAction,
  arg: string | undefined,
  args: Record<string, unknown>,
  settings: { exportable?: boolean; deletionAllowed?: boolean; autoRotate?: number | null },
  keyring: Keyring,
  config: ServerConfig,
  io: Io,
  line: { key: string | null; keyId: string | null },
): Promise<number> {
  // argv words reach the audit line only as checked key names
  const named = (word: string | undefined): string | null => (word !== undefined && KEY_NAME.test(word) ? word : null);
  {
    const service = new CryptService(keyring, { maxKeys: config.maxKeys });
    const say = (text: string): void => void io.stdout.write(text + '\n');
    switch (action) {
      case 'list': {
        const listing = service.keyInfo(undefined);
        if (args.json) return say(JSON.stringify(listing)), EXIT.ok;
        const all = listing.named_keys;
        const rows = all.map((k) => [k.name, yesNo(k.derived), yesNo(k.exportable), period(k.auto_rotate), k.primary, `${k.versions.length}${k.versions.some((v) => v.state === 'retired') ? ` (${k.versions.filter((v) => v.state === 'retired').length} retired)` : ''}`]);
        say(table(['NAME', 'DERIVED', 'EXPORTABLE', 'AUTO-ROTATE', 'PRIMARY', 'VERSIONS'], rows));
        break;
      }
      case 'show': {
        line.key = named(arg);
        const k = service.showKey(arg!);
        if (args.json) return say(JSON.stringify(k)), EXIT.ok;
        say(`key ${k.name}: ${k.derived ? 'derived' : 'not derived'}, ${k.exportable ? 'exportable' : 'not exportable'}, deletion ${k.deletion_allowed ? 'allowed' : 'not allowed'}, automatic rotation ${period(k.auto_rotate)}`);
        say(table(['ID', 'STATE', 'CREATED'], k.versions.map((v) => [v.id, v.state, v.created ?? '-'])));
        break;
      }
      case 'create': {
        line.key = named(arg);
        const k = await service.createKey(arg!, { derived: Boolean(args.derived), exportable: settings.exportable ?? false });
        line.keyId = k.primary;
        say(`created: ${k.name}${k.derived ? ' (derived: requests bring a context)' : ''}${k.exportable ? ', exportable' : ''}, primary version ${k.primary}`);
        break;
      }
      case 'config': {
        line.key = named(arg);
        const k = await service.configureKey(arg!, settings);
        say(`configured: ${k.name}: ${k.exportable ? 'exportable' : 'not exportable'}, deletion ${k.deletion_allowed ? 'allowed' : 'not allowed'}, automatic rotation ${period(k.auto_rotate)}`);
        break;
      }
      case 'rotate': {
        line.key = named(arg ?? DEFAULT_KEY);
        const v = await service.rotate(arg);
        line.keyId = v.id;
        say(`rotated ${arg ?? 'default'}: ${v.id} is the new primary version`);
        break;
      }
      case 'retire':
      case 'activate': {
        const owner = keyring.book.keyOf(arg!);
        line.keyId = /^[0-9a-f]{1,64}$/.test(arg!) ? arg! : null;
        line.key = owner?.name ?? null;
        if (!owner) throw new CryptError('not_found', `no key version with id ${arg}: see ${PROGRAM} keys list`);
        await keyring.update((s) => s.withState(arg!, action === 'retire' ? 'retired' : 'active'), owner.name);
        say(`${action === 'retire' ? 'retired' : 'activated'}: ${arg} (key ${owner.name})`);
        break;
      }
      case 'delete': {
        line.key = named(arg);
        const gone = await service.deleteKey(arg!, Boolean(args.yes));
        say(`deleted: ${gone.deleted}`);
        break;
      }
      case 'backup': {
        line.key = named(arg);
        const set = keyring.book.key(arg!);
        await writeBackup(set, String(args.output));
        say(`backed up ${set.name} (${set.info().length} versions) to ${String(args.output)}: keep it as private as the keyring`);
        break;
      }
      case 'restore': {
        const set = await readBackup(arg!);
        if (set.name === DEFAULT_KEY && set.settings.derived) throw new FileError(`backup ${arg} holds a derived key named ${DEFAULT_KEY}: requests without a key name bring no context, so ${DEFAULT_KEY} is never derived; nothing was restored`);
        await keyring.updateBook((b) => {
          if (b.get(set.name) && !args.force) throw new CryptError('conflict', `a key named ${set.name} exists already: restore with --force to replace it`);
          const shared = set.info().map((v) => [v.id, b.keyOf(v.id)?.name] as const).find(([, owner]) => owner !== undefined && owner !== set.name);
          if (shared) throw new CryptError('conflict', `version ${shared[0]} of this backup is a version of the key ${shared[1]!} already (was the backup's name changed?); nothing was restored`);
          return b.with(set);
        });
        say(`restored: ${set.name} (${set.info().length} versions)`);
        line.key = set.name;
        line.keyId = set.details().primary;
        break;
      }
    }
    return EXIT.ok;
  }
}

/** A plain text table: a header row and rows, columns padded. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}
