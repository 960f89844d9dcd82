/**
 * Configuration: flags > environment > `.env` in the working directory > defaults.
 *
 * Rules:
 * - This is the only module that reads process.env, and it only reads the names in the tables
 *   below. `.env` is parsed without touching process.env.
 * - Every setting is declared once, in SERVER or CLIENT: the command lines, `.env.example` and
 *   the README's table all come from these tables (a test checks the last two).
 * - Values from every source are validated the same way; an error names the setting and its
 *   source, and shows the value only when the setting isn't a secret.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseEnv } from 'node:util';

type Kind = 'string' | 'port' | 'count' | 'seconds' | 'bytes' | 'boolean' | 'level' | 'path';

/** One setting: its flag, its environment variable, its default and what it means. */
export interface Setting {
  key: string;
  flag: string | null;
  env: string;
  kind: Kind;
  default: string | number | boolean | null;
  describe: string;
  secret?: boolean;
  /** Smallest accepted number, for numeric kinds (default 0; 1 for bytes). */
  min?: number;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** A pino log level name. */
export type Level = (typeof LEVELS)[number];

/** The default keyring location: $XDG_DATA_HOME/crypt/keyring.json, else ~/.local/share/... */
export function defaultKeyring(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_DATA_HOME || join(env.HOME || homedir(), '.local', 'share');
  return join(base, 'crypt', 'keyring.json');
}

/** The server's settings. */
export const SERVER: readonly Setting[] = [
  { key: 'host', flag: 'host', env: 'CRYPT_HOST', kind: 'string', default: '127.0.0.1', describe: 'address to listen on (TCP and HTTP)' },
  { key: 'port', flag: 'port', env: 'CRYPT_PORT', kind: 'port', default: 8000, describe: 'TCP port (0: any free port)' },
  { key: 'http', flag: 'http', env: 'CRYPT_HTTP', kind: 'boolean', default: false, describe: 'also serve HTTP' },
  { key: 'httpPort', flag: 'http-port', env: 'CRYPT_HTTP_PORT', kind: 'port', default: 8080, describe: 'HTTP port (0: any free port)' },
  { key: 'keyring', flag: 'keyring', env: 'CRYPT_KEYRING', kind: 'path', default: '~/.local/share/crypt/keyring.json', describe: 'keyring file, created on first start ($XDG_DATA_HOME is honoured)' },
  { key: 'fernetKeys', flag: null, env: 'FERNET_KEYS', kind: 'string', default: null, describe: 'comma-separated Fernet keys, newest first: used instead of a keyring file', secret: true },
  { key: 'logLevel', flag: 'log-level', env: 'LOG_LEVEL', kind: 'level', default: 'info', describe: `log level: ${LEVELS.join(', ')}` },
  { key: 'maxFrame', flag: 'max-frame', env: 'CRYPT_MAX_FRAME', kind: 'bytes', default: 1048576, describe: 'largest message in bytes (tokens of such messages are accepted too)' },
  { key: 'maxBatch', flag: 'max-batch', env: 'CRYPT_MAX_BATCH', kind: 'count', default: 1000, min: 1, describe: 'most items in one HTTP batch' },
  { key: 'tokensFile', flag: 'tokens-file', env: 'CRYPT_TOKENS_FILE', kind: 'path', default: null, describe: 'access tokens file, one "<role> <secret>" per line' },
  { key: 'insecure', flag: 'insecure', env: 'CRYPT_INSECURE', kind: 'boolean', default: false, describe: 'allow a non-loopback address without access tokens' },
  { key: 'getKey', flag: 'get-key', env: 'CRYPT_GET_KEY', kind: 'boolean', default: true, describe: 'answer gk and GET /key (--no-get-key refuses them to everyone)' },
  { key: 'tlsCert', flag: 'tls-cert', env: 'CRYPT_TLS_CERT', kind: 'path', default: null, describe: 'TLS certificate (PEM): serve TCP and HTTP over TLS' },
  { key: 'tlsKey', flag: 'tls-key', env: 'CRYPT_TLS_KEY', kind: 'path', default: null, describe: 'TLS private key (PEM)' },
  { key: 'maxConnections', flag: 'max-connections', env: 'CRYPT_MAX_CONNECTIONS', kind: 'count', default: 10000, min: 1, describe: 'most open connections per listener; the excess gets busy' },
  { key: 'idleTimeout', flag: 'idle-timeout', env: 'CRYPT_IDLE_TIMEOUT', kind: 'seconds', default: 300, describe: 'close connections silent this long, in seconds (0: never)' },
  { key: 'handshakeTimeout', flag: 'handshake-timeout', env: 'CRYPT_HANDSHAKE_TIMEOUT', kind: 'seconds', default: 10, min: 1, describe: 'TLS handshake time limit, in seconds' },
  { key: 'rateLimit', flag: 'rate-limit', env: 'CRYPT_RATE_LIMIT', kind: 'count', default: 1000, describe: 'HTTP requests per second per client (0: no limit)' },
  { key: 'workers', flag: 'workers', env: 'CRYPT_WORKERS', kind: 'count', default: 1, min: 1, describe: 'server processes sharing the ports' },
];

/** The client's settings. */
export const CLIENT: readonly Setting[] = [
  { key: 'host', flag: 'host', env: 'CRYPT_HOST', kind: 'string', default: '127.0.0.1', describe: 'server address' },
  { key: 'port', flag: 'port', env: 'CRYPT_PORT', kind: 'port', default: 8000, describe: 'server TCP port' },
  { key: 'token', flag: 'token', env: 'CRYPT_TOKEN', kind: 'string', default: null, describe: 'access token, sent before any request', secret: true },
  { key: 'tls', flag: 'tls', env: 'CRYPT_TLS', kind: 'boolean', default: false, describe: 'connect with TLS' },
  { key: 'ca', flag: 'ca', env: 'CRYPT_CA', kind: 'path', default: null, describe: 'CA certificate (PEM) to trust, for --tls' },
  { key: 'timeout', flag: 'timeout', env: 'CRYPT_TIMEOUT', kind: 'seconds', default: 10, min: 1, describe: 'connect and reply time limit, in seconds' },
];

/** A configuration problem; the message names the setting and where its value came from. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Reads `.env` from a directory without touching process.env; empty when absent. */
export function readDotenv(dir: string = process.cwd()): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(join(dir, '.env'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new ConfigError(`cannot read ${join(dir, '.env')} (${(err as NodeJS.ErrnoException).code})`);
  }
  return parseEnv(text) as Record<string, string>;
}

/** The sources of a resolution: parsed flags (by flag name), the environment and `.env`. */
export interface Sources {
  flags: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  dotenv?: Record<string, string>;
}

const TRUE = ['1', 'true', 'yes', 'on'];
const FALSE = ['0', 'false', 'no', 'off'];

function convert(s: Setting, raw: unknown, from: string, env: NodeJS.ProcessEnv): unknown {
  const shown = s.secret ? '' : `, got ${JSON.stringify(raw)}`;
  const fail = (what: string): never => {
    throw new ConfigError(`${from}: ${what}${shown}`);
  };
  if (s.kind === 'boolean') {
    if (typeof raw === 'boolean') return raw;
    const v = String(raw).trim().toLowerCase();
    if (TRUE.includes(v)) return true;
    if (FALSE.includes(v)) return false;
    return fail(`expected true or false`);
  }
  const text = String(raw).trim();
  switch (s.kind) {
    case 'port':
    case 'count':
    case 'seconds':
    case 'bytes': {
      const n = /^\d+$/.test(text) ? Number(text) : NaN;
      const max = s.kind === 'port' ? 65535 : Number.MAX_SAFE_INTEGER;
      const min = s.min ?? (s.kind === 'bytes' ? 1 : 0);
      if (!Number.isSafeInteger(n) || n < min || n > max) return fail(`expected a whole number from ${min} to ${max}`);
      return n;
    }
    case 'level':
      if (!(LEVELS as readonly string[]).includes(text)) return fail(`expected one of ${LEVELS.join(', ')}`);
      return text;
    case 'path':
      if (text === '') return fail('expected a file path');
      return text === '~' || text.startsWith('~/') ? join(env.HOME || homedir(), text.slice(1)) : text;
    default:
      if (text === '') return fail('expected a value');
      return text;
  }
}

/** Resolves every setting of a table from its sources. */
export function resolve<T>(table: readonly Setting[], sources: Sources): T {
  const env = sources.env ?? process.env;
  const dotenv = sources.dotenv ?? {};
  const out: Record<string, unknown> = {};
  for (const s of table) {
    const candidates: Array<[unknown, string]> = [
      [s.flag === null ? undefined : sources.flags[s.flag], `--${s.flag}`],
      [env[s.env], s.env],
      [dotenv[s.env], `${s.env} in .env`],
    ];
    const found = candidates.find(([v]) => v !== undefined);
    if (found) out[s.key] = convert(s, found[0], found[1], env);
    else if (s.key === 'keyring') out[s.key] = defaultKeyring(env);
    else out[s.key] = s.default ?? undefined;
  }
  return out as T;
}

/** The resolved server configuration. */
export interface ServerConfig {
  host: string;
  port: number;
  http: boolean;
  httpPort: number;
  keyring: string;
  fernetKeys: string | undefined;
  logLevel: Level;
  maxFrame: number;
  maxBatch: number;
  tokensFile: string | undefined;
  insecure: boolean;
  getKey: boolean;
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  maxConnections: number;
  idleTimeout: number;
  handshakeTimeout: number;
  rateLimit: number;
  workers: number;
}

/** The resolved client configuration. */
export interface ClientConfig {
  host: string;
  port: number;
  token: string | undefined;
  tls: boolean;
  ca: string | undefined;
  timeout: number;
}

/** Resolves and cross-checks the server configuration. */
export function serverConfig(sources: Sources): ServerConfig {
  const config = resolve<ServerConfig>(SERVER, sources);
  if ((config.tlsCert === undefined) !== (config.tlsKey === undefined)) {
    throw new ConfigError('TLS needs both --tls-cert and --tls-key');
  }
  return config;
}

/** Resolves the client configuration. */
export const clientConfig = (sources: Sources): ClientConfig => resolve<ClientConfig>(CLIENT, sources);

/** The text of `.env.example`: every variable of both tables with its default. */
export function envExample(): string {
  const lines = ['# crypt configuration: flags > environment > this file (as .env) > defaults.', '# Every variable, with its default. Copy to .env and change what you need.', ''];
  const seen = new Set<string>();
  for (const [title, table] of [['crypt-server', SERVER], ['crypt-client', CLIENT]] as const) {
    lines.push(`# ${title}`);
    for (const s of table) {
      if (seen.has(s.env)) continue;
      seen.add(s.env);
      const value = s.default === null ? '' : String(s.default);
      lines.push(`# ${s.describe}`);
      lines.push(s.default === null || s.key === 'keyring' ? `# ${s.env}=${value}` : `${s.env}=${value}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}
