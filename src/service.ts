/**
 * The operations of crypt, transport-free: both the TCP and the HTTP transport call these.
 *
 * Rules:
 * - Every operation authorizes its caller first (src/access.ts), then checks sizes, then works.
 * - Errors are CryptErrors from the catalogue; their messages carry sizes and limits, never data.
 * - The keyring sits beside the service: each operation reads the keys in force at its start.
 * - Payloads of 64 KiB or more go to worker threads when a pool is given (src/pool.ts); the
 *   result is then a promise. Smaller ones are done at once: no promise on the hot path.
 */
import { decrypt, tokenLength } from './fernet.js';
import { CryptError } from './errors.js';
import { FileError } from './files.js';
import type { Keyring, KeyInfo, KeySet } from './keyring.js';
import type { Caller, Policy, Role } from './access.js';
import { OFFLOAD_BYTES } from './pool.js';
import type { CryptoPool } from './pool.js';

/** A decrypted message and the creation time of its token (seconds since the epoch). */
export interface Decrypted {
  plaintext: Buffer;
  timestamp: number;
}

/** Checks an optional TTL: undefined, or a whole number of seconds. */
export function checkTtl(ttl: unknown): number | undefined {
  if (ttl === undefined) return undefined;
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 0) {
    throw new CryptError('bad_request', 'ttl must be a whole number of seconds, 0 or more');
  }
  return ttl;
}

/** The encryption service over a keyring, under an access policy. */
export class CryptService {
  readonly keyring: Keyring;
  readonly policy: Policy;
  /** Largest plaintext accepted, in bytes. */
  readonly maxMessage: number;
  /** Largest token accepted, in characters: the token of a largest message. */
  readonly maxToken: number;

  readonly #pool: CryptoPool | null;

  constructor(keyring: Keyring, policy: Policy, maxMessage: number, pool: CryptoPool | null = null) {
    this.keyring = keyring;
    this.policy = policy;
    this.maxMessage = maxMessage;
    this.maxToken = tokenLength(maxMessage);
    this.#pool = pool;
    if (pool) keyring.on('change', (set: KeySet) => pool.updateKeys(set));
  }

  /** Encrypts a message under the primary key. */
  encrypt(caller: Caller, plaintext: Uint8Array): string | Promise<string> {
    this.policy.authorize('encrypt', caller);
    this.#checkMessage(plaintext);
    if (this.#pool && plaintext.length >= OFFLOAD_BYTES) return this.#pool.encrypt(plaintext);
    return this.keyring.current.primary.encrypt(plaintext);
  }

  /** Decrypts a token with the keys in force, optionally refusing tokens older than ttl seconds. */
  decrypt(caller: Caller, token: string | Uint8Array, ttl?: number): Decrypted | Promise<Decrypted> {
    this.policy.authorize('decrypt', caller);
    this.#checkToken(token);
    const maxAge = checkTtl(ttl);
    if (this.#pool && token.length >= OFFLOAD_BYTES) return this.#pool.decrypt(token, maxAge);
    const { plaintext, timestamp } = decrypt(this.keyring.current.decrypting, token, { ttl: maxAge });
    return { plaintext, timestamp };
  }

  /** Re-encrypts a token under the primary key, keeping its timestamp; never returns plaintext. */
  rewrap(caller: Caller, token: string | Uint8Array): string | Promise<string> {
    this.policy.authorize('rewrap', caller);
    this.#checkToken(token);
    if (this.#pool && token.length >= OFFLOAD_BYTES) return this.#pool.rewrap(token);
    const keys = this.keyring.current;
    const { plaintext, timestamp } = decrypt(keys.decrypting, token);
    return keys.primary.encrypt(plaintext, timestamp);
  }

  /** The primary key in Fernet's format. */
  getKey(caller: Caller): string {
    this.policy.authorize('getKey', caller);
    return this.keyring.current.primary.export();
  }

  /** Public facts about every key. */
  keyInfo(caller: Caller): { keys: KeyInfo[] } {
    this.policy.authorize('keyInfo', caller);
    return { keys: this.keyring.current.info() };
  }

  /** Makes a new primary key; returns its public facts. A file problem is reported with its reason. */
  async rotate(caller: Caller): Promise<KeyInfo> {
    this.policy.authorize('rotate', caller);
    try {
      const set = await this.keyring.update((s) => s.rotated());
      return set.info()[0]!;
    } catch (err) {
      // file errors name files and ids only: safe to tell an admin and to log
      if (err instanceof FileError) throw new CryptError('internal', `rotation failed: ${err.message}`);
      throw err;
    }
  }

  /** Gives the caller the role a secret grants and returns it (throws unauthorized when it matches no token). */
  authenticate(caller: Caller, secret: string | Uint8Array): Role {
    return this.policy.authenticate(caller, secret);
  }

  #checkMessage(plaintext: Uint8Array): void {
    if (plaintext.length > this.maxMessage) {
      throw new CryptError('too_large', `message of ${plaintext.length} bytes exceeds the limit of ${this.maxMessage} bytes`);
    }
  }

  #checkToken(token: string | Uint8Array): void {
    if (token.length > this.maxToken) {
      throw new CryptError('too_large', `token of ${token.length} characters exceeds the limit of ${this.maxToken}`);
    }
  }
}
