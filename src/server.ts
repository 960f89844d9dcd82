/**
 * The running server: configuration in, keyring + access policy + service + listeners out.
 *
 * Rules:
 * - Protected mode, as Redis has it: a non-loopback address with no access tokens is refused
 *   unless --insecure says otherwise, loudly.
 * - Everything that can fail at startup fails before the first listener opens, with a message
 *   that says what to fix; nothing is created except a missing keyring.
 */
import { promises as fs } from 'node:fs';
import { isIP } from 'node:net';
import { Keyring } from './keyring.js';
import type { KeySet } from './keyring.js';
import { AccessTokens, Policy } from './access.js';
import { CryptService } from './service.js';
import { CryptoPool, defaultThreads } from './pool.js';
import { TcpServer } from './tcp.js';
import type { HttpServer } from './http.js';
import type { ServerConfig } from './config.js';
import { errorFields } from './log.js';
import type { Logger } from './log.js';

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
  tcp: TcpServer;
  http: HttpServer | null;
  /** Stops accepting, answers what was received, closes everything. */
  close(): Promise<void>;
}

const describeKeys = (set: KeySet): { primary: string; keys: number; retired: number } => {
  const info = set.info();
  return { primary: set.primary.id, keys: info.length, retired: info.filter((k) => k.state === 'retired').length };
};

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

/** Starts a server from its configuration. */
export async function startServer(config: ServerConfig, log: Logger): Promise<RunningServer> {
  const warning = checkExposure(config);
  if (warning) log.warn(warning);

  const tokens = config.tokensFile ? await AccessTokens.load(config.tokensFile) : null;
  const source = config.fernetKeys !== undefined ? { list: config.fernetKeys } : { file: config.keyring };
  const { keyring, created } = await Keyring.open(source);
  if (keyring.file === null) log.info({ source: 'FERNET_KEYS', ...describeKeys(keyring.current) }, 'keys loaded from FERNET_KEYS');
  else if (created) log.info({ keyring: keyring.file, ...describeKeys(keyring.current) }, 'created a new keyring');
  else log.info({ keyring: keyring.file, ...describeKeys(keyring.current) }, 'loaded keyring');

  const tls = config.tlsCert && config.tlsKey ? { cert: await readPem(config.tlsCert), key: await readPem(config.tlsKey) } : undefined;
  const pool = new CryptoPool(defaultThreads(config.workers), keyring.current);
  const service = new CryptService(keyring, new Policy(tokens, config.getKey), config.maxFrame, pool);

  const limits = {
    host: config.host,
    tls,
    maxConnections: config.maxConnections,
    idleTimeoutMs: config.idleTimeout * 1000,
    handshakeTimeoutMs: config.handshakeTimeout * 1000,
  };
  let tcp: TcpServer;
  try {
    tcp = await TcpServer.listen(service, { ...limits, port: config.port }, log);
  } catch (err) {
    await pool.close();
    throw listenError(err, config.host, config.port);
  }
  log.info({ proto: tls ? 'tcp+tls' : 'tcp', host: config.host, port: tcp.address.port }, 'listening');

  let http: HttpServer | null = null;
  if (config.http) {
    // loaded only when asked for: Fastify and its plugins cost about 20 MB of memory
    const { listenHttp } = await import('./http.js');
    try {
      http = await listenHttp(service, { ...limits, port: config.httpPort, rateLimit: config.rateLimit, maxBatch: config.maxBatch }, log);
    } catch (err) {
      await tcp.close();
      await pool.close();
      throw listenError(err, config.host, config.httpPort);
    }
    log.info({ proto: tls ? 'https' : 'http', host: config.host, port: http.address.port }, 'listening');
  }

  keyring.on('change', (set: KeySet, reason: string) => log.info({ reason, ...describeKeys(set) }, 'keys changed'));
  keyring.on('error', (err: Error) => log.error({ err: errorFields(err), reason: err.message }, 'keyring change ignored'));
  keyring.watch();
  if (tokens) {
    tokens.on('change', (count: number) => log.info({ tokens: count }, 'access tokens reloaded'));
    tokens.on('error', (err: Error) => log.error({ reason: err.message }, 'access tokens change ignored'));
    tokens.watch();
  }

  return {
    config,
    keyring,
    service,
    tcp,
    http,
    async close() {
      log.info('shutting down');
      await Promise.all([tcp.close(), http?.close()]);
      await pool.close();
      keyring.close();
      tokens?.close();
      log.info('stopped');
    },
  };
}

async function readPem(path: string): Promise<Buffer> {
  try {
    return await fs.readFile(path);
  } catch (err) {
    throw new StartupError(`cannot read ${path} (${(err as NodeJS.ErrnoException).code})`);
  }
}

function listenError(err: unknown, host: string, port: number): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') return new StartupError(`port ${port} on ${host} is already in use: stop the other server or choose another --port`);
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return new StartupError(`cannot listen on ${host}: no such local address`);
  if (code === 'EACCES') return new StartupError(`not allowed to listen on port ${port}: choose a port above 1023`);
  return err as Error;
}
