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

type Kind = 'string' | 'port' | 'count' | 'seconds' | 'bytes' | 'boolean' | 'level' | 'path' | 'list' | 'format';

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
const FORMATS = ['auto', 'json', 'pretty'] as const;
/** How logs are written: JSON lines, lines for people, or pretty on a terminal and JSON otherwise. */
export type LogFormat = (typeof FORMATS)[number];

/** The default keyring location: $XDG_DATA_HOME/crypt/keyring.json, else ~/.local/share/... */
export function defaultKeyring(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_DATA_HOME || join(env.HOME || homedir(), '.local', 'share');
  return join(base, 'crypt', 'keyring.json');
}

/** The server's settings. */
export const SERVER: readonly Setting[] = [
  { key: 'host', flag: 'host', env: 'CRYPT_HOST', kind: 'string', default: '127.0.0.1', describe: 'address to listen on (TCP and HTTP)' },
  { key: 'port', flag: 'port', env: 'CRYPT_PORT', kind: 'port', default: 8000, describe: 'TCP port (0: any free port)' },
  { key: 'http', flag: 'http', env: 'CRYPT_HTTP', kind: 'boolean', default: false, describe: 'also serve HTTP (implied by --http-port)' },
  { key: 'httpPort', flag: 'http-port', env: 'CRYPT_HTTP_PORT', kind: 'port', default: 8080, describe: 'HTTP port (0: any free port); setting it turns HTTP on' },
  { key: 'keyring', flag: 'keyring', env: 'CRYPT_KEYRING', kind: 'path', default: '~/.local/share/crypt/keyring.json', describe: 'keyring file ($XDG_DATA_HOME is honoured)' },
  { key: 'init', flag: 'init', env: 'CRYPT_INIT', kind: 'boolean', default: false, describe: 'create the keyring if it does not exist (the default path is created on the first start without it)' },
  { key: 'fernetKeys', flag: null, env: 'FERNET_KEYS', kind: 'string', default: null, describe: 'comma-separated Fernet keys, newest first: used instead of a keyring file', secret: true },
  { key: 'logLevel', flag: 'log-level', env: 'LOG_LEVEL', kind: 'level', default: 'info', describe: `log level: ${LEVELS.join(', ')}` },
  { key: 'logFormat', flag: 'log-format', env: 'CRYPT_LOG_FORMAT', kind: 'format', default: 'auto', describe: 'log format: json, pretty, or auto (pretty on a terminal, else json)' },
  { key: 'maxFrame', flag: 'max-frame', env: 'CRYPT_MAX_FRAME', kind: 'bytes', default: 1048576, describe: 'largest message in bytes (tokens of such messages are accepted too)' },
  { key: 'maxStream', flag: 'max-stream', env: 'CRYPT_MAX_STREAM', kind: 'bytes', default: 68719476736, describe: 'largest stream through the server (se, sd, /stream/...), in bytes' },
  { key: 'maxBatch', flag: 'max-batch', env: 'CRYPT_MAX_BATCH', kind: 'count', default: 1000, min: 1, describe: 'most items in one HTTP batch' },
  { key: 'maxKeys', flag: 'max-keys', env: 'CRYPT_MAX_KEYS', kind: 'count', default: 64, min: 2, describe: 'most versions of a key that decrypt (primary and active); a rotation past it is refused until old ones are retired' },
  { key: 'memoryBudget', flag: 'memory-budget', env: 'CRYPT_MEMORY_BUDGET', kind: 'bytes', default: 268435456, min: 1048576, describe: 'payload bytes buffered and in flight across all connections; past it, reading pauses and new work gets busy' },
  { key: 'tokensFile', flag: 'tokens-file', env: 'CRYPT_TOKENS_FILE', kind: 'path', default: null, describe: 'access tokens file, one "<role> <secret>" per line' },
  { key: 'insecure', flag: 'insecure', env: 'CRYPT_INSECURE', kind: 'boolean', default: false, describe: 'allow a non-loopback address without access tokens' },
  { key: 'getKey', flag: 'get-key', env: 'CRYPT_GET_KEY', kind: 'boolean', default: true, describe: 'answer gk and GET /key (--no-get-key refuses them to everyone)' },
  { key: 'allowedHosts', flag: 'allowed-hosts', env: 'CRYPT_ALLOWED_HOSTS', kind: 'list', default: null, describe: 'HTTP Host names served besides loopback and the listening address, comma-separated (* for any)' },
  { key: 'tlsCert', flag: 'tls-cert', env: 'CRYPT_TLS_CERT', kind: 'path', default: null, describe: 'TLS certificate (PEM): serve TCP and HTTP over TLS' },
  { key: 'tlsKey', flag: 'tls-key', env: 'CRYPT_TLS_KEY', kind: 'path', default: null, describe: 'TLS private key (PEM), readable by the owner only' },
  { key: 'maxConnections', flag: 'max-connections', env: 'CRYPT_MAX_CONNECTIONS', kind: 'count', default: 10000, min: 1, describe: 'most open connections per listener; the excess gets busy' },
  { key: 'maxPerAddress', flag: 'max-per-address', env: 'CRYPT_MAX_PER_ADDRESS', kind: 'count', default: 1000, min: 1, describe: 'most open connections per listener from one address; the excess gets busy' },
  { key: 'idleTimeout', flag: 'idle-timeout', env: 'CRYPT_IDLE_TIMEOUT', kind: 'seconds', default: 300, describe: 'close connections without a complete request for this long, in seconds (0: never)' },
  { key: 'frameTimeout', flag: 'frame-timeout', env: 'CRYPT_FRAME_TIMEOUT', kind: 'seconds', default: 30, describe: 'close TCP connections whose request has not arrived whole in this many seconds (0: never)' },
  { key: 'authTimeout', flag: 'auth-timeout', env: 'CRYPT_AUTH_TIMEOUT', kind: 'seconds', default: 10, describe: 'with access tokens, close TCP connections not authenticated this many seconds after connecting (0: never)' },
  { key: 'handshakeTimeout', flag: 'handshake-timeout', env: 'CRYPT_HANDSHAKE_TIMEOUT', kind: 'seconds', default: 10, min: 1, describe: 'TLS handshake time limit, in seconds' },
  { key: 'rateLimit', flag: 'rate-limit', env: 'CRYPT_RATE_LIMIT', kind: 'count', default: 1000, describe: 'HTTP requests per second per address (0: no limit)' },
  { key: 'authFailures', flag: 'max-auth-failures', env: 'CRYPT_MAX_AUTH_FAILURES', kind: 'count', default: 30, describe: 'failed authentications per address per minute, TCP and HTTP together, before its attempts are refused (0: no limit)' },
  { key: 'rotateLimit', flag: 'rotate-limit', env: 'CRYPT_ROTATE_LIMIT', kind: 'count', default: 10, describe: 'rotations per minute through rk and POST /keys/rotate (0: no limit)' },
  { key: 'workers', flag: 'workers', env: 'CRYPT_WORKERS', kind: 'count', default: 1, min: 1, describe: 'server processes sharing the ports' },
  { key: 'metrics', flag: 'metrics', env: 'CRYPT_METRICS', kind: 'boolean', default: true, describe: 'count requests for Prometheus: GET /metrics on the HTTP port (admin or loopback) and --metrics-port (--no-metrics: neither)' },
  { key: 'metricsPort', flag: 'metrics-port', env: 'CRYPT_METRICS_PORT', kind: 'port', default: null, describe: 'also serve GET /metrics alone on this port, without authentication (with --workers: every worker together)' },
  { key: 'metricsHost', flag: 'metrics-host', env: 'CRYPT_METRICS_HOST', kind: 'string', default: '127.0.0.1', describe: 'address of --metrics-port' },
  { key: 'auditFile', flag: 'audit-file', env: 'CRYPT_AUDIT_FILE', kind: 'path', default: null, describe: 'audit log: a JSON line per operation, appended (- for standard output); operations are refused when their line cannot be written' },
  { key: 'auditHmacPlaintext', flag: 'audit-hmac-plaintext', env: 'CRYPT_AUDIT_HMAC_PLAINTEXT', kind: 'boolean', default: false, describe: 'the audit log also records an HMAC of each plaintext that goes in or comes out' },
  { key: 'auditSaltFile', flag: 'audit-salt-file', env: 'CRYPT_AUDIT_SALT_FILE', kind: 'path', default: null, describe: "the audit log's HMAC key, made on first use (default: audit.salt beside the keyring)" },
];

/** The client's settings. */
export const CLIENT: readonly Setting[] = [
  { key: 'host', flag: 'host', env: 'CRYPT_HOST', kind: 'string', default: '127.0.0.1', describe: 'server address' },
  { key: 'port', flag: 'port', env: 'CRYPT_PORT', kind: 'port', default: 8000, describe: 'server TCP port' },
  { key: 'token', flag: 'token', env: 'CRYPT_TOKEN', kind: 'string', default: null, describe: 'access token, sent before any request (prefer CRYPT_TOKEN or --token-file: other users can read argv)', secret: true },
  { key: 'tokenFile', flag: 'token-file', env: 'CRYPT_TOKEN_FILE', kind: 'path', default: null, describe: 'file holding the access token (owner-only)' },
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
    case 'format':
      if (!(FORMATS as readonly string[]).includes(text)) return fail(`expected one of ${FORMATS.join(', ')}`);
      return text;
    case 'list': {
      const items = text.split(',').map((x) => x.trim().toLowerCase()).filter(Boolean);
      if (items.length === 0 || items.some((x) => x !== '*' && !/^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)$/.test(x))) return fail('expected host names or addresses, comma-separated, or *');
      return items;
    }
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
  /** The keyring path is the default one (not given by a flag, the environment or .env). */
  keyringDefault: boolean;
  init: boolean;
  fernetKeys: string | undefined;
  logLevel: Level;
  logFormat: LogFormat;
  maxFrame: number;
  maxStream: number;
  maxBatch: number;
  maxKeys: number;
  memoryBudget: number;
  tokensFile: string | undefined;
  insecure: boolean;
  getKey: boolean;
  allowedHosts: string[];
  tlsCert: string | undefined;
  tlsKey: string | undefined;
  maxConnections: number;
  maxPerAddress: number;
  idleTimeout: number;
  frameTimeout: number;
  authTimeout: number;
  handshakeTimeout: number;
  rateLimit: number;
  authFailures: number;
  rotateLimit: number;
  workers: number;
  metrics: boolean;
  metricsPort: number | undefined;
  metricsHost: string;
  auditFile: string | undefined;
  auditHmacPlaintext: boolean;
  auditSaltFile: string | undefined;
}

/** The resolved client configuration. */
export interface ClientConfig {
  host: string;
  port: number;
  token: string | undefined;
  tokenFile: string | undefined;
  tls: boolean;
  ca: string | undefined;
  timeout: number;
}

/** True when a setting was given by a flag, the environment or .env (not left to its default). */
export function given(table: readonly Setting[], key: string, sources: Sources): boolean {
  const s = table.find((x) => x.key === key);
  if (!s) return false;
  const env = sources.env ?? process.env;
  return (s.flag !== null && sources.flags[s.flag] !== undefined) || env[s.env] !== undefined || (sources.dotenv ?? {})[s.env] !== undefined;
}

/** Resolves and cross-checks the server configuration. */
export function serverConfig(sources: Sources): ServerConfig {
  const config = resolve<ServerConfig>(SERVER, sources);
  if ((config.tlsCert === undefined) !== (config.tlsKey === undefined)) {
    throw new ConfigError(config.tlsCert === undefined ? '--tls-key needs --tls-cert too' : '--tls-cert needs --tls-key too');
  }
  if (config.memoryBudget < 8 * config.maxFrame) {
    throw new ConfigError(`--memory-budget (${config.memoryBudget}) must be at least 8 times --max-frame (${config.maxFrame}): a request in flight is held about four times over (a JSON body of a largest message, charged three times)`);
  }
  config.allowedHosts ??= [];
  if (config.metricsPort !== undefined && !config.metrics) throw new ConfigError('--metrics-port needs metrics: drop --no-metrics');
  if (config.auditFile === undefined && (config.auditHmacPlaintext || config.auditSaltFile !== undefined)) {
    throw new ConfigError(`${config.auditHmacPlaintext ? '--audit-hmac-plaintext' : '--audit-salt-file'} needs --audit-file`);
  }
  if (config.auditFile !== undefined && config.auditSaltFile === undefined && config.fernetKeys !== undefined) {
    throw new ConfigError('--audit-file with FERNET_KEYS needs --audit-salt-file: there is no keyring directory to keep the salt in');
  }
  config.keyringDefault = !given(SERVER, 'keyring', sources);
  // --http-port alone means: serve HTTP there
  if (given(SERVER, 'httpPort', sources) && !given(SERVER, 'http', sources)) config.http = true;
  return config;
}

/** Resolves the client configuration. */
export function clientConfig(sources: Sources): ClientConfig {
  const config = resolve<ClientConfig>(CLIENT, sources);
  if (config.token !== undefined && config.tokenFile !== undefined) throw new ConfigError('give the access token one way: --token (CRYPT_TOKEN) or --token-file (CRYPT_TOKEN_FILE)');
  return config;
}

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
