/**
 * The running server: configuration in, keyring + access policy + dispatcher + listeners out.
 *
 * Rules:
 * - Protected mode, as Redis has it: a non-loopback address with no access tokens is refused
 *   unless --insecure says otherwise, loudly (in the log and on stderr, whatever the log level).
 * - Everything that can fail at startup fails before the first listener opens, with a message
 *   that says what to fix.
 * - A keyring is created only when asked (--init), or on the very first start on the default
 *   path (its directory does not exist yet). A keyring that vanished is an error, never a new key.
 *   A symlinked keyring path is resolved once: the file is read and written beside its target.
 * - Connection limits leave headroom under the process's open-file limit.
 */
import { promises as fs, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { Keyring } from '../keys/keyring.js';
import { v1Backup } from '../keys/keyring.js';
import type { KeyBook } from '../keys/keyring.js';
import { FileError } from '../keys/files.js';
import { AccessTokens, AuthThrottle, Policy } from '../core/access.js';
import { CryptService } from '../core/service.js';
import { Dispatcher } from '../core/dispatcher.js';
import { CryptoPool, defaultThreads } from '../core/pool.js';
import { MemoryBudget } from '../core/budget.js';
import { AuditLog, loadSalt } from '../core/audit.js';
import cluster from 'node:cluster';
import type { Server as PlainHttpServer } from 'node:http';
import { Metrics, askPrimary, serveMetrics, shareWithPrimary } from './metrics.js';
import { TcpServer } from '../transports/tcp/server.js';
import type { TcpOptions } from '../transports/tcp/server.js';
import type { HttpServer } from '../transports/http/app.js';
import type { TlsMaterial } from '../transports/listen.js';
import { TlsFiles, loadTls } from './tls.js';
import type { ServerConfig } from './config.js';

/** A startup problem the operator must fix; the message says how. */
export class StartupError extends Error {
  override name = 'StartupError';
}

/** True for host settings that bind loopback only. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost' || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** A started server and what it is made of. */
export interface RunningServer {
  config: ServerConfig;
  keyring: Keyring;
  service: CryptService;
  dispatcher: Dispatcher;
  /** The audit log (--audit-file), or null. */
  audit: AuditLog | null;
  /** The metrics (null with --no-metrics). */
  metrics: Metrics | null;
  tcp: TcpServer;
  http: HttpServer | null;
  /** Stops accepting, answers what was received, closes everything. */
  close(): Promise<void>;
}

/** What a log line says of the keys: the default key's primary and versions, and how many named keys. */
const describeKeys = (book: KeyBook): { primary: string; keys: number; retired: number; named: number } => {
  const info = book.key('default').info();
  return { primary: book.key('default').details().primary, keys: info.length, retired: info.filter((k) => k.state === 'retired').length, named: book.size };
};

/** How often keys are checked for automatic rotation. */
const AUTO_ROTATE_CHECK_MS = 60_000;

/** Checks protected mode; returns a warning to log when --insecure overrides it. */
export function checkExposure(config: Pick<ServerConfig, 'host' | 'tokensFile' | 'insecure'>): string | null {
  if (isLoopbackHost(config.host) || config.tokensFile) return null;
  if (!config.insecure) {
    throw new StartupError(
      `refusing to listen on ${config.host} without access tokens: anyone who can reach it could encrypt, ` +
        'decrypt and more. Configure tokens with --tokens-file <file> (see README, Security), ' +
        'or pass --insecure to override',
    );
  }
  return `INSECURE: listening on ${config.host} with no access tokens; anyone who can reach this address may encrypt and decrypt`;
}

/** Opens the keyring a configuration names, creating it only under the rules above. */
export async function openKeyring(config: Pick<ServerConfig, 'keyring' | 'keyringDefault' | 'init' | 'fernetKeys'>): Promise<{ keyring: Keyring; created: boolean }> {
  if (config.fernetKeys !== undefined) return Keyring.open({ list: config.fernetKeys });
  let path = config.keyring;
  try {
    if ((await fs.lstat(path)).isSymbolicLink()) path = await fs.realpath(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new FileError(`cannot resolve keyring ${path} (${code ?? 'error'})`);
  }
  let firstStart = false;
  if (config.keyringDefault && !config.init) {
    firstStart = await fs.stat(dirname(path)).then(() => false, () => true);
  }
  try {
    return await Keyring.open({ file: path }, { create: config.init || firstStart });
  } catch (err) {
    if (err instanceof FileError && /does not exist/.test(err.message) && config.keyringDefault) {
      throw new FileError(`keyring ${path} does not exist, but its directory does: it was there before (a deleted file, or a different HOME?). Restore it from a backup, or start with --init to create a new one (tokens made under the old keys will not decrypt)`);
    }
    throw err;
  }
}

/** The soft limit on open files, or null when it can't be read (not Linux). */
export function openFileLimit(read: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(read());
    return m && m[1] !== 'unlimited' ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Descriptors kept for files, the worker pool, and the listeners themselves. */
const FD_RESERVE = 64;

/** How a server starts. */
export interface StartOptions {
  /** Where a server writes what must be seen whatever the log level. */
  stderr?: Writable;
  /** Routine lines (listening, keys changed) at debug: for all cluster workers but one. */
  quiet?: boolean;
}

/** Starts a server from its configuration. */
export async function startServer(config: ServerConfig, log: Logger, options: StartOptions = {}): Promise<RunningServer> {
  const say = (line: string): void => void options.stderr?.write(`crypt-server: ${line}\n`);
  const info = (options.quiet ? log.debug : log.info).bind(log) as (fields: object, msg: string) => void;
  const warning = checkExposure(config);
  if (warning && !options.quiet) {
    log.warn(warning);
    if (!log.isLevelEnabled('warn')) say(warning);
  }

  const tokens = config.tokensFile ? await AccessTokens.load(config.tokensFile) : null;
  const { keyring, created } = await openKeyring(config);
  if (keyring.file === null) info({ source: 'FERNET_KEYS', ...describeKeys(keyring.book) }, 'keys loaded from FERNET_KEYS');
  else if (created) log.warn({ keyring: keyring.file, ...describeKeys(keyring.book) }, 'created a new keyring: back it up, it holds every key');
  else info({ keyring: keyring.file, ...describeKeys(keyring.book) }, 'loaded keyring');
  if (await keyring.migrate()) log.warn({ keyring: keyring.file, backup: v1Backup(keyring.file!) }, 'keyring saved in format 2 (named keys: its keys are the key "default"); the old file is kept beside it');

  const tlsFiles = config.tlsCert && config.tlsKey ? new TlsFiles(config.tlsCert, config.tlsKey) : null;
  const tls: TlsMaterial | undefined = config.tlsCert && config.tlsKey ? await loadTls(config.tlsCert, config.tlsKey) : undefined;

  const limit = openFileLimit();
  const listeners = config.http ? 2 : 1;
  let maxConnections = config.maxConnections;
  if (limit !== null && maxConnections * listeners + FD_RESERVE > limit) {
    maxConnections = Math.max(1, Math.floor((limit - FD_RESERVE) / listeners));
    info({ configured: config.maxConnections, limit: maxConnections, openFiles: limit }, 'max-connections lowered to fit the open-file limit (raise it with ulimit -n or LimitNOFILE=)');
  }

  let metrics: Metrics | null = null;
  const audit = config.auditFile ? await openAudit(config, keyring.file, log, () => metrics?.auditWriteFailure()) : null;
  const pool = new CryptoPool(defaultThreads(config.workers));
  const service = new CryptService(keyring, { maxKeys: config.maxKeys });
  const throttle = new AuthThrottle({ perConnection: 3, perPeer: config.authFailures, windowMs: 60_000 }, (r) =>
    log.warn({ failures: r.failures, addresses: r.peers, refused: r.refused, blocked: r.blocked }, 'failed authentications in the last minute'),
  );
  const policy = new Policy(tokens, config.getKey, throttle);
  const budget = new MemoryBudget(config.memoryBudget);
  const dispatcher = new Dispatcher({ service, policy, maxMessage: config.maxFrame, pool, log, limitedPerMinute: config.rotateLimit, budget, audit, maxStream: config.maxStream });
  const connections = new Map<'tcp' | 'http', () => number | Promise<number>>();
  if (config.metrics) {
    metrics = new Metrics({ dispatcher, keyring, pool, connections });
    if (cluster.isWorker) shareWithPrimary(metrics);
  }
  // with --workers, a worker's GET /metrics answers for every worker: the primary aggregates them
  const scrape = metrics ? (cluster.isWorker ? askPrimary : () => metrics!.text()) : null;
  if (audit) service.health.add('audit', () => (audit.failing === null ? null : 'the audit log cannot be written: operations are refused until it can; the server log says why'));

  const limits = {
    host: config.host,
    tls,
    maxConnections,
    maxPerAddress: config.maxPerAddress,
    idleTimeoutMs: config.idleTimeout * 1000,
    handshakeTimeoutMs: config.handshakeTimeout * 1000,
  };
  const tcpOptions: TcpOptions = { ...limits, port: config.port, frameTimeoutMs: config.frameTimeout * 1000, authTimeoutMs: config.authTimeout * 1000 };
  let tcp: TcpServer;
  try {
    tcp = await TcpServer.listen(dispatcher, tcpOptions, log);
  } catch (err) {
    await pool.close();
    await audit?.close();
    throw listenError(err, config.host, config.port, '--port');
  }
  connections.set('tcp', () => tcp.connections);
  const where = [`tcp${tls ? '+tls' : ''} ${config.host}:${tcp.address.port}`];
  info({ proto: tls ? 'tcp+tls' : 'tcp', host: config.host, port: tcp.address.port }, 'listening');

  let http: HttpServer | null = null;
  if (config.http) {
    // loaded only when asked for: Fastify and its plugins cost about 20 MB of memory
    const { listenHttp } = await import('../transports/http/app.js');
    try {
      http = await listenHttp(dispatcher, { ...limits, port: config.httpPort, rateLimit: config.rateLimit, maxBatch: config.maxBatch, allowedHosts: config.allowedHosts, metrics: scrape }, log);
    } catch (err) {
      await tcp.close();
      await pool.close();
      await audit?.close();
      throw listenError(err, config.host, config.httpPort, '--http-port');
    }
    where.push(`${tls ? 'https' : 'http'} ${config.host}:${http.address.port}`);
    const server = http.app.server;
    connections.set('http', () => new Promise<number>((resolve) => server.getConnections((err, n) => resolve(err ? 0 : n))));
    info({ proto: tls ? 'https' : 'http', host: config.host, port: http.address.port }, 'listening');
  }
  // with --workers the primary serves --metrics-port, for every worker
  let metricsServer: PlainHttpServer | null = null;
  if (scrape && config.metricsPort !== undefined && !cluster.isWorker) {
    try {
      metricsServer = await serveMetrics(config.metricsPort, config.metricsHost, scrape, log);
    } catch (err) {
      await Promise.all([tcp.close(), http?.close()]);
      await pool.close();
      await audit?.close();
      throw listenError(err, config.metricsHost, config.metricsPort, '--metrics-port');
    }
    const port = (metricsServer.address() as { port: number }).port;
    where.push(`metrics ${config.metricsHost}:${port}`);
    info({ proto: 'metrics', host: config.metricsHost, port }, 'listening');
  }
  if (!log.isLevelEnabled('info') && !options.quiet) say(`listening: ${where.join(', ')}`);
  // readiness (hc, GET /ready): each listener accepts connections
  service.health.add('tcp', () => (tcp.listening ? null : 'the TCP listener is not accepting connections'));
  if (http) {
    const server = http.app.server;
    service.health.add('http', () => (server.listening ? null : 'the HTTP listener is not accepting connections'));
  }

  keyring.on('change', (book: KeyBook, reason: string) => info({ reason, ...describeKeys(book) }, 'keys changed'));
  keyring.on('error', (err: Error) => log.error({ reason: err.message }, 'keyring change ignored'));
  keyring.watch();
  if (tokens) {
    tokens.on('change', (count: number) => (count === 0 ? log.error({ tokens: 0 }, 'no valid access token: every request is refused until the tokens file is fixed') : info({ tokens: count }, 'access tokens reloaded')));
    tokens.on('problem', (reason: string) => log.error({ reason }, 'access tokens: a line or the file was refused and grants nothing'));
    tokens.watch();
  }
  if (tlsFiles) {
    tlsFiles.on('change', (material: TlsMaterial) => {
      tcp.setTls(material);
      http?.setTls(material);
      info({}, 'TLS certificate and key reloaded');
    });
    tlsFiles.on('error', (err: Error) => log.error({ reason: err.message }, 'TLS change ignored: the certificate in force stays'));
    tlsFiles.watch();
  }

  // automatic rotation: every server checks; the check is made again inside the keyring update,
  // so of several servers sharing the keyring exactly one rotates a key that is due
  const rotateDue = async (): Promise<void> => {
    if (!keyring.file) return;
    try {
      const { rotated, failed } = await service.autoRotate();
      for (const name of rotated) log.info({ keyName: name, primary: keyring.book.key(name).details().primary }, 'key rotated automatically');
      for (const { name, reason } of failed) log.error({ keyName: name, reason }, 'automatic rotation failed; the versions in force stay');
    } catch (err) {
      log.error({ reason: (err as Error).message }, 'automatic rotation failed; the keys in force stay');
    }
    log.debug({ keys: keyring.book.size }, 'keys checked for automatic rotation');
  };
  await rotateDue();
  const rotation = setInterval(() => void rotateDue(), AUTO_ROTATE_CHECK_MS);
  rotation.unref();

  return {
    config,
    keyring,
    service,
    dispatcher,
    audit,
    metrics,
    tcp,
    http,
    async close() {
      clearInterval(rotation);
      info({}, 'shutting down');
      await Promise.all([tcp.close(), http?.close(), new Promise((resolve) => (metricsServer ? metricsServer.close(resolve) : resolve(null)))]);
      await pool.close();
      await audit?.close();
      keyring.close();
      tokens?.close();
      tlsFiles?.close();
      throttle.flush();
      info({}, 'stopped');
    },
  };
}

/** Opens the audit log a configuration names, with its salt (beside the keyring unless --audit-salt-file). */
export async function openAudit(config: Pick<ServerConfig, 'auditFile' | 'auditSaltFile' | 'auditHmacPlaintext'>, keyringFile: string | null, log: Logger, onWriteFailure?: () => void): Promise<AuditLog> {
  const saltPath = config.auditSaltFile ?? join(dirname(keyringFile!), 'audit.salt');
  const salt = await loadSalt(saltPath);
  const audit = await AuditLog.open({ path: config.auditFile!, salt, hmacPlaintext: config.auditHmacPlaintext, log, onWriteFailure });
  log.info({ audit: config.auditFile, salt: saltPath, hmacPlaintext: config.auditHmacPlaintext }, 'audit log open');
  return audit;
}

function listenError(err: unknown, host: string, port: number, flag: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') return new StartupError(`port ${port} on ${host} is already in use: stop the other server or choose another ${flag}`);
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return new StartupError(`cannot listen on ${host}: no such local address`);
  if (code === 'EACCES') return new StartupError(`not allowed to listen on port ${port}: choose a port above 1023 (${flag})`);
  return err as Error;
}
