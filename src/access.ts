/**
 * Access control: who may run which operation.
 *
 * Rules:
 * - Access tokens live in a file, one `<role> <secret>` per line, the secret in clear or as
 *   `sha256:<hex>`. Only SHA-256 digests are kept in memory; a presented secret is hashed and
 *   compared with every entry in constant time (no early exit).
 * - With tokens configured, every data operation needs a role; `user` may run the data
 *   operations, `admin` everything. With none configured, loopback clients are admins and
 *   others (reachable only with --insecure) are users.
 * - `--no-get-key` refuses key export to everyone.
 * - The file is reloaded when it changes (src/files.ts); a change that fails to load keeps the
 *   tokens in force. A caller that authenticated before a change (an open TCP connection) is
 *   checked again at its next request: a removed token loses its role, a changed one gets the
 *   new role.
 */
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import { createHash, timingSafeEqual } from 'node:crypto';
import { CryptError } from './errors.js';
import { FileError, Serial, checkPrivate, watchForChanges } from './files.js';

/** A role an access token grants. */
export type Role = 'user' | 'admin';

/** The operations, as the transports name them. */
export type Operation = 'encrypt' | 'decrypt' | 'rewrap' | 'keyInfo' | 'getKey' | 'rotate';

const NEEDS: Record<Operation, Role> = {
  encrypt: 'user',
  decrypt: 'user',
  rewrap: 'user',
  keyInfo: 'user',
  getKey: 'admin',
  rotate: 'admin',
};

/** Who is calling: the role proven with an access token (if any) and whether from loopback. */
export interface Caller {
  role: Role | null;
  loopback: boolean;
  /** The SHA-256 of the secret that gave the role, to check it again after the file changes. */
  digest?: Buffer;
  /** The tokens' generation the role was checked against. */
  generation?: number;
}

/** The shortest secret accepted in a tokens file. */
export const MIN_SECRET = 16;

interface Entry {
  role: Role;
  digest: Buffer;
}

const sha256 = (secret: string | Uint8Array): Buffer => createHash('sha256').update(secret).digest();

/** Parses a tokens file; errors name the line, never its secret. */
export function parseTokens(text: string): Entry[] {
  const entries: Entry[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^(\S+)\s+(\S+)$/.exec(line);
    const where = `line ${i + 1}`;
    if (!m) throw new FileError(`${where}: expected "<role> <secret>"`);
    const [, role, secret] = m as unknown as [string, string, string];
    if (role !== 'user' && role !== 'admin') throw new FileError(`${where}: role must be user or admin`);
    if (secret.startsWith('sha256:')) {
      const hex = secret.slice(7);
      if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new FileError(`${where}: sha256: must be followed by 64 hex digits`);
      entries.push({ role, digest: Buffer.from(hex, 'hex') });
    } else {
      if (secret.length < MIN_SECRET) throw new FileError(`${where}: secret shorter than ${MIN_SECRET} characters (make one with: openssl rand -hex 32)`);
      entries.push({ role, digest: sha256(secret) });
    }
  });
  if (entries.length === 0) throw new FileError('no access tokens in it');
  return entries;
}

/** The access tokens of a file, reloaded when it changes. Events: `change`, `error`. */
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

  /** Loads a tokens file, refusing one that is open to group or others. */
  static async load(file: string): Promise<AccessTokens> {
    return new AccessTokens(file, await read(file));
  }

  /** Counts the reloads that put new tokens in force. */
  get generation(): number {
    return this.#generation;
  }

  /** The role a secret grants, or null; constant time in the secret and over all entries. */
  verify(secret: string | Uint8Array): Role | null {
    return this.verifyDigest(sha256(secret));
  }

  /** The role the SHA-256 of a secret grants, or null; constant time over all entries. */
  verifyDigest(digest: Buffer): Role | null {
    let role: Role | null = null;
    for (const e of this.#entries) {
      if (timingSafeEqual(digest, e.digest) && role !== 'admin') role = e.role;
    }
    return role;
  }

  /** Reloads now; a failure is emitted as `error` and the tokens in force stay. */
  readonly reload = this.#serial.coalesced(async () => {
    try {
      this.#entries = await read(this.file);
      this.#generation++;
      this.emit('change', this.#entries.length);
    } catch (err) {
      this.emit('error', err);
    }
  });

  /** Watches the file for changes (see watchForChanges). */
  watch(intervalMs = 500): void {
    this.#unwatch ??= watchForChanges(this.file, () => void this.reload(), intervalMs);
  }

  /** Stops watching. */
  close(): void {
    this.#unwatch?.();
    this.#unwatch = null;
  }
}

async function read(file: string): Promise<Entry[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw new FileError(`cannot read tokens file ${file} (${(err as NodeJS.ErrnoException).code})`);
  }
  await checkPrivate(file, 'tokens file');
  try {
    return parseTokens(text);
  } catch (err) {
    throw new FileError(`tokens file ${file}: ${(err as Error).message}`);
  }
}

/** The access policy of a server: tokens (or none) and whether key export is allowed. */
export class Policy {
  readonly tokens: AccessTokens | null;
  readonly getKey: boolean;

  constructor(tokens: AccessTokens | null, getKey: boolean) {
    this.tokens = tokens;
    this.getKey = getKey;
  }

  /**
   * The role a caller effectively has: its token's, or by address when no tokens exist. A role
   * from before the last reload of the tokens is checked again first.
   */
  roleOf(caller: Caller): Role | null {
    const tokens = this.tokens;
    if (!tokens) return caller.loopback ? 'admin' : 'user';
    if (caller.digest && caller.generation !== tokens.generation) {
      caller.role = tokens.verifyDigest(caller.digest);
      caller.generation = tokens.generation;
    }
    return caller.role;
  }

  /** Throws unauthorized or forbidden unless the caller may run the operation. */
  authorize(op: Operation, caller: Caller): void {
    if (op === 'getKey' && !this.getKey) throw new CryptError('forbidden', 'key export is disabled on this server (--no-get-key)');
    const role = this.roleOf(caller);
    if (role === null) throw new CryptError('unauthorized', 'authentication required: send an access token first');
    if (NEEDS[op] === 'admin' && role !== 'admin') {
      throw new CryptError('forbidden', this.tokens ? `${op} needs the admin role` : `${op} is answered to loopback clients only until access tokens are configured`);
    }
  }

  /**
   * Gives the caller the role of a presented secret and returns it; throws unauthorized (and
   * leaves the caller as it was) when the secret matches no token.
   */
  authenticate(caller: Caller, secret: string | Uint8Array): Role {
    const tokens = this.tokens;
    if (!tokens) return this.roleOf(caller)!;
    const digest = sha256(secret);
    const role = tokens.verifyDigest(digest);
    if (role === null) throw new CryptError('unauthorized', 'invalid access token');
    caller.role = role;
    caller.digest = digest;
    caller.generation = tokens.generation;
    return role;
  }
}
