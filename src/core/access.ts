/**
 * Access control: who may run which operation, and how often one may guess a secret.
 *
 * Rules:
 * - Access tokens live in a file, one `<role> <secret> [keys=<pattern>,...] [expires=<ISO date>]`
 *   per line, the secret in clear or as `sha256:<hex>`. Only SHA-256 digests are kept in memory;
 *   a presented secret (its exact bytes, whatever the transport) is hashed and compared with
 *   every entry in constant time. A secret on several lines takes the first.
 * - Roles: `admin` runs everything; `user` the data operations (en, de, rw, in) and key listing;
 *   `encrypt` only en; `decrypt` only de and in. The operations table says which roles each
 *   operation takes. A token's `keys=` patterns (`billing`, `tenant-*`, `*`; `*` when absent)
 *   limit the named keys it may use: outside them, `forbidden`, whether the key exists or not.
 *   A token past its `expires` is `unauthorized`.
 * - Fail closed: a secret grants a role only while a valid line of the current file holds it. A
 *   file that becomes empty, unreadable, unsafe or missing grants nothing (the server keeps
 *   running, refuses, and logs why); a bad line grants nothing and is logged.
 * - With tokens configured, every operation but `au` needs a role. With none configured,
 *   loopback callers are admins, others (reachable only with --insecure) users, and presenting
 *   a secret is refused: a server that forgot --tokens-file must not look authenticated.
 * - Failed authentications are counted for the connection's whole life (a success does not reset
 *   them) and per peer address across connections and transports; past either budget the caller
 *   is refused without the secret being checked. One log line per period sums them up.
 * - A caller that authenticated before the file changed is checked again at its next request.
 */
import { EventEmitter } from 'node:events';
import { createHash, timingSafeEqual } from 'node:crypto';
import { CryptError } from './errors.js';
import { FileError, Serial, readSecret, watchForChanges } from '../keys/files.js';
import type { Operation, Payload } from './operations.js';

/** A role an access token grants. */
export type Role = 'admin' | 'user' | 'encrypt' | 'decrypt';
const ROLES: ReadonlySet<string> = new Set(['admin', 'user', 'encrypt', 'decrypt']);

/** Who is calling, from where, and what it has proven. */
export interface Caller {
  transport: 'tcp' | 'http' | 'cli';
  /** The peer's address ('' when unknown). */
  peer: string;
  loopback: boolean;
  role: Role | null;
  /** A public id of the access token that gave the role (never the secret). */
  tokenId: string | null;
  /** The SHA-256 of the secret that gave the role, to check it again after the file changes. */
  digest: Buffer | null;
  /** The tokens' generation the role was checked against. */
  generation: number;
  /** The key names the token covers; null for all. */
  scope: readonly RegExp[] | null;
  /** When the token stops working, in milliseconds since the epoch; null for never. */
  expires: number | null;
  /** Failed authentications on this connection. */
  failures: number;
}

/** A new caller, before any authentication. */
export function newCaller(transport: Caller['transport'], peer: string | undefined): Caller {
  const address = peer ?? '';
  return { transport, peer: address, loopback: isLoopback(address), role: null, tokenId: null, digest: null, generation: -1, scope: null, expires: null, failures: 0 };
}

/** True for loopback addresses (127.0.0.0/8, ::1, and IPv4-mapped loopback). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/** The shortest secret accepted in a tokens file. */
const MIN_SECRET = 16;
/** The largest secret accepted in a request, in bytes. */
export const MAX_SECRET = 1024;

interface Entry {
  role: Role;
  digest: Buffer;
  scope: readonly RegExp[] | null;
  expires: number | null;
}

/** A key pattern as a RegExp: `*` matches any run of key-name characters. */
function pattern(text: string): RegExp | null {
  if (!/^[a-z0-9*][a-z0-9._*-]{0,63}$/.test(text)) return null;
  return new RegExp(`^${text.replace(/[.]/g, '\\.').replace(/\*/g, '[a-z0-9._-]*')}$`);
}

const sha256 = (secret: Payload): Buffer => createHash('sha256').update(secret).digest();

/** The public id of a token: a domain-separated hash of its digest (reveals nothing of the secret). */
export const tokenIdOf = (digest: Buffer): string => createHash('sha256').update('crypt token id v1\0').update(digest).digest('hex').slice(0, 12);

/** Parses a tokens file: the valid entries, and a message per bad line (naming the line, never its secret). */
export function parseTokens(text: string, now = Date.now()): { entries: Entry[]; problems: string[] } {
  const entries: Entry[] = [];
  const problems: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const [role, secret, ...extras] = line.split(/\s+/) as [string, string | undefined, ...string[]];
    const where = `line ${i + 1}`;
    if (secret === undefined) return void problems.push(`${where}: expected "<role> <secret> [keys=<pattern>,...] [expires=<date>]"`);
    if (!ROLES.has(role)) return void problems.push(`${where}: role must be admin, user, encrypt or decrypt`);
    let scope: RegExp[] | null = null;
    let expires: number | null = null;
    for (const extra of extras) {
      const eq = extra.indexOf('=');
      const [name, value] = eq === -1 ? [extra, ''] : [extra.slice(0, eq), extra.slice(eq + 1)];
      if (name === 'keys' && scope === null) {
        const patterns = value.split(',').map(pattern);
        if (value === '' || patterns.some((p) => p === null)) return void problems.push(`${where}: keys= takes key names or patterns such as billing,tenant-*`);
        scope = patterns as RegExp[];
      } else if (name === 'expires' && expires === null && /^\d{4}-\d{2}-\d{2}/.test(value) && !Number.isNaN(Date.parse(value))) {
        expires = Date.parse(value);
      } else {
        return void problems.push(`${where}: expected "<role> <secret> [keys=<pattern>,...] [expires=<date>]", not "${/^[a-z]{1,10}$/.test(name) ? name : '...'}="`);
      }
    }
    let digest: Buffer;
    if (secret.startsWith('sha256:')) {
      const hex = secret.slice(7);
      if (!/^[0-9a-fA-F]{64}$/.test(hex)) return void problems.push(`${where}: sha256: must be followed by 64 hex digits`);
      digest = Buffer.from(hex, 'hex');
    } else {
      if (Buffer.byteLength(secret) < MIN_SECRET) return void problems.push(`${where}: secret shorter than ${MIN_SECRET} bytes (make one with: openssl rand -hex 32)`);
      digest = sha256(secret);
    }
    if (expires !== null && expires <= now) problems.push(`${where}: expired on ${new Date(expires).toISOString()}; it grants nothing`);
    entries.push({ role: role as Role, digest, scope, expires });
  });
  return { entries, problems };
}

/**
 * The access tokens of a file, reloaded when it changes. Events: `change` (count), and `problem`
 * (message) for each thing wrong with the file, at load and after every change.
 */
export class AccessTokens extends EventEmitter {
  #entries: Entry[];
  #generation = 0;
  readonly file: string;
  readonly #serial = new Serial();
  #unwatch: (() => void) | null = null;

  private constructor(file: string, entries: Entry[]) {
    super();
    this.file = file;
    this.#entries = entries;
  }

  /**
   * Loads a tokens file at startup: anything wrong with it (unsafe, missing, a bad line, no
   * token at all) is an error here, so a server never starts on a file it can't fully use.
   */
  static async load(file: string): Promise<AccessTokens> {
    const { entries, problems } = await read(file);
    // an expired token at startup is reported (by the file's owner, at reload) but grants nothing
    const fatal = problems.filter((p) => !/: expired on /.test(p));
    if (fatal.length > 0) throw new FileError(`tokens file ${file}: ${fatal.join('; ')}`);
    return new AccessTokens(file, entries);
  }

  /** Counts the reloads. */
  get generation(): number {
    return this.#generation;
  }

  /** The entry of the SHA-256 of a secret (the first, if several), or null; constant time over all entries. */
  verifyDigest(digest: Buffer): Entry | null {
    let found: Entry | null = null;
    for (const e of this.#entries) {
      if (timingSafeEqual(digest, e.digest) && found === null) found = e;
    }
    return found;
  }

  /** The role a secret grants, or null. */
  verify(secret: Payload): Role | null {
    return this.verifyDigest(sha256(secret))?.role ?? null;
  }

  /** Reloads now: the valid lines of the file are in force afterwards, none when it is unusable. */
  readonly reload = this.#serial.coalesced(async () => {
    let result: { entries: Entry[]; problems: string[] };
    try {
      result = await read(this.file);
    } catch (err) {
      result = { entries: [], problems: [(err as Error).message] };
    }
    this.#entries = result.entries;
    this.#generation++;
    for (const p of result.problems) this.emit('problem', p);
    this.emit('change', result.entries.length);
  });

  /** Watches the file for changes. */
  watch(intervalMs = 500): void {
    this.#unwatch ??= watchForChanges(this.file, () => void this.reload(), intervalMs);
  }

  /** Stops watching. */
  close(): void {
    this.#unwatch?.();
    this.#unwatch = null;
  }
}

async function read(file: string): Promise<{ entries: Entry[]; problems: string[] }> {
  const bytes = await readSecret(file, 'tokens file', 1024 * 1024);
  if (bytes === null) throw new FileError(`tokens file ${file} does not exist: no access token is valid until it does`);
  const { entries, problems } = parseTokens(bytes.toString('utf8'));
  bytes.fill(0);
  if (entries.length === 0 && problems.length === 0) problems.push(`tokens file ${file} holds no access token: every request is refused until it does`);
  return { entries, problems: problems.map((p) => (p.startsWith('tokens file') ? p : `tokens file ${file}: ${p}`)) };
}

/** Limits on guessing secrets. */
export interface ThrottleOptions {
  /** Failed authentications that close a connection. */
  perConnection: number;
  /** Failed authentications per peer address per window before its attempts are refused (0: no limit). */
  perPeer: number;
  windowMs: number;
}

/** A summary of failed authentications over one period, for one log line. */
export interface FailureReport {
  failures: number;
  peers: number;
  refused: number;
  /** The peers past their budget, at most 10. */
  blocked: string[];
}

const MAX_PEERS = 10_000;

/** Counts failed authentications per peer in fixed windows; bounded in memory. */
export class AuthThrottle {
  readonly options: ThrottleOptions;
  readonly #peers = new Map<string, { count: number; start: number }>();
  #report: FailureReport = { failures: 0, peers: 0, refused: 0, blocked: [] };
  #timer: NodeJS.Timeout | null = null;
  readonly #onReport: (report: FailureReport) => void;
  readonly #reported = new Set<string>();

  constructor(options: ThrottleOptions, onReport: (report: FailureReport) => void = () => undefined) {
    this.options = options;
    this.#onReport = onReport;
  }

  /** Throws rate_limited when the peer has used up its budget in this window. */
  check(caller: Caller, now = Date.now()): void {
    const { perPeer, windowMs } = this.options;
    if (perPeer === 0) return;
    const entry = this.#peers.get(caller.peer);
    if (!entry || entry.count < perPeer || now - entry.start >= windowMs) return;
    this.#report.refused++;
    this.#schedule();
    const wait = Math.ceil((entry.start + windowMs - now) / 1000);
    throw new CryptError('rate_limited', `too many failed authentications from this address; try again in ${wait} s`, { close: true });
  }

  /** Counts a failure; true when the connection should close. */
  failed(caller: Caller, now = Date.now()): boolean {
    caller.failures++;
    const { perPeer, windowMs } = this.options;
    const report = this.#report;
    report.failures++;
    if (!this.#reported.has(caller.peer)) {
      // bounded as #peers is: past MAX_PEERS addresses in a window, each further one is counted, not kept
      if (this.#reported.size < MAX_PEERS) this.#reported.add(caller.peer);
      report.peers++;
    }
    let entry = this.#peers.get(caller.peer);
    if (!entry || now - entry.start >= windowMs) {
      this.#peers.delete(caller.peer);
      if (this.#peers.size >= MAX_PEERS) this.#peers.delete(this.#peers.keys().next().value!);
      entry = { count: 0, start: now };
      this.#peers.set(caller.peer, entry);
    }
    entry.count++;
    if (perPeer > 0 && entry.count === perPeer && report.blocked.length < 10) report.blocked.push(caller.peer);
    this.#schedule();
    return caller.failures >= this.options.perConnection;
  }

  /** Sends the pending report now (at shutdown). */
  flush(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const report = this.#report;
    if (report.failures === 0 && report.refused === 0) return;
    this.#report = { failures: 0, peers: 0, refused: 0, blocked: [] };
    this.#reported.clear();
    this.#onReport(report);
  }

  #schedule(): void {
    if (this.#timer) return;
    this.#timer = setTimeout(() => this.flush(), this.options.windowMs);
    this.#timer.unref();
  }
}

/** The access policy of a server: tokens (or none), key export, and the guessing limits. */
export class Policy {
  readonly tokens: AccessTokens | null;
  readonly getKey: boolean;
  readonly throttle: AuthThrottle;

  constructor(tokens: AccessTokens | null, getKey: boolean, throttle = new AuthThrottle({ perConnection: 3, perPeer: 0, windowMs: 60_000 })) {
    this.tokens = tokens;
    this.getKey = getKey;
    this.throttle = throttle;
  }

  /** The role a caller has now: its token's (checked again after a reload), or by address without tokens. */
  roleOf(caller: Caller): Role | null {
    const tokens = this.tokens;
    if (!tokens) return caller.loopback ? 'admin' : 'user';
    if (caller.digest && caller.generation !== tokens.generation) {
      const entry = tokens.verifyDigest(caller.digest);
      caller.generation = tokens.generation;
      this.#grant(caller, entry, caller.digest);
    }
    return caller.role;
  }

  /** Throws unauthorized or forbidden unless the caller's role may run the operation (its key is checked by authorizeKey). */
  authorize(op: Operation, caller: Caller): void {
    if (op.roles === null) return;
    if (op.exportsKey && !this.getKey) throw new CryptError('forbidden', `key export is disabled on this server (--no-get-key): ${op.command} is refused to everyone`);
    this.requireRole(op.roles, op.command, caller);
  }

  /** Throws unless the caller has admin or one of the roles (loopback without tokens counts as admin): for operations, and routes that are not one (GET /metrics). */
  requireRole(roles: readonly Role[], what: string, caller: Caller): void {
    const role = this.roleOf(caller);
    if (role === null) throw new CryptError('unauthorized', this.#howToAuthenticate(caller));
    if (caller.expires !== null && Date.now() >= caller.expires) throw new CryptError('unauthorized', 'this access token has expired');
    if (role !== 'admin' && !roles.includes(role)) {
      if (!this.tokens) throw new CryptError('forbidden', `${what} is answered to loopback clients only until access tokens are configured`);
      throw new CryptError('forbidden', `${what} needs the ${['admin', ...roles].join(' or ')} role`);
    }
  }

  /** Throws forbidden unless the caller's token covers the named key (whether or not it exists). */
  authorizeKey(caller: Caller, name: string): void {
    if (!this.covers(caller, name)) throw new CryptError('forbidden', `this access token may not use the key ${name}`);
  }

  /** True when the caller's token covers the named key. */
  covers(caller: Caller, name: string): boolean {
    return caller.scope === null || caller.scope.some((p) => p.test(name));
  }

  /**
   * Gives the caller the role of a presented secret and returns it. Throws unauthorized (leaving
   * the caller as it was) when the secret matches no token, rate_limited past the budgets.
   */
  authenticate(caller: Caller, secret: Payload): Role {
    const tokens = this.tokens;
    if (!tokens) throw new CryptError('unauthorized', 'no access tokens are configured on this server, so none can be checked: send requests without one (an operator enables tokens with --tokens-file)');
    this.throttle.check(caller);
    if (caller.failures >= this.throttle.options.perConnection) throw new CryptError('unauthorized', 'too many failed authentications on this connection', { close: true });
    const digest = secret.length > MAX_SECRET ? null : sha256(secret);
    const entry = digest && tokens.verifyDigest(digest);
    if (!digest || !entry) {
      const close = this.throttle.failed(caller);
      throw new CryptError('unauthorized', close ? `invalid access token; closing after ${this.throttle.options.perConnection} failures` : 'invalid access token', { close });
    }
    if (entry.expires !== null && Date.now() >= entry.expires) throw new CryptError('unauthorized', 'this access token has expired');
    caller.generation = tokens.generation;
    this.#grant(caller, entry, digest);
    return entry.role;
  }

  #grant(caller: Caller, entry: Entry | null, digest: Buffer): void {
    caller.role = entry?.role ?? null;
    caller.digest = entry ? digest : null;
    caller.tokenId = entry ? tokenIdOf(digest) : null;
    caller.scope = entry?.scope ?? null;
    caller.expires = entry?.expires ?? null;
  }

  #howToAuthenticate(caller: Caller): string {
    return caller.transport === 'http'
      ? 'authentication required: send an access token as Authorization: Bearer <token>'
      : 'authentication required: send #au#<token># first (crypt-client: --token-file or CRYPT_TOKEN)';
  }
}
