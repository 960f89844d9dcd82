/**
 * The operations of crypt as plain methods, with no transport, no caller and no policy: the
 * dispatcher (src/core/dispatcher.ts) authorizes, checks and times every call before it gets here.
 *
 * Rules:
 * - DataOps (encrypt, decrypt, rewrap) are synchronous and work on a KeySet only, so worker
 *   threads run the very same code on their copy of the keys (src/core/worker.ts).
 * - Each operation reads the keys in force at its start.
 * - Errors are CryptErrors from the catalogue; their messages carry sizes and limits, never data.
 *   A keyring that can't be written is `unavailable`, with the file's reason kept as the cause
 *   for the log, never in the message.
 */
import { decrypt, inspectToken } from '../crypto/fernet.js';
import { CryptError } from './errors.js';
import { FileError } from '../keys/files.js';
import type { Keyring, KeyInfo, KeySet, KeyState } from '../keys/keyring.js';

/** A new token and the id of the key that made it (for a rewrap, also the key it was under). */
export interface Encrypted {
  token: string;
  keyId: string;
  previousKeyId?: string;
}

/** What a token tells without being decrypted. */
export interface TokenFacts {
  /** Creation time, seconds since the epoch, and as ISO 8601. */
  timestamp: number;
  created: string;
  age_seconds: number;
  /** The key in the keyring that verifies the token (retired keys too), or null when none does. */
  key_id: string | null;
  key_state: KeyState | null;
}

/** A decrypted message, the creation time of its token (seconds since the epoch) and the key that opened it. */
export interface Decrypted {
  plaintext: Buffer;
  timestamp: number;
  keyId: string;
}

/** A key in Fernet's format, with its public id. */
export interface ExportedKey {
  key: string;
  id: string;
}

/** The data operations over the keys a function returns (the keys in force, or a thread's copy). */
export class DataOps {
  readonly #keys: () => KeySet;

  constructor(keys: () => KeySet) {
    this.#keys = keys;
  }

  /** Encrypts a message under the primary key. */
  encrypt(plaintext: Uint8Array): Encrypted {
    const primary = this.#keys().primary;
    return { token: primary.encrypt(plaintext), keyId: primary.id };
  }

  /** Decrypts a token with the keys in force, optionally refusing tokens older than ttl seconds. */
  decrypt(token: string | Uint8Array, ttl: number | undefined): Decrypted {
    const { plaintext, timestamp, key } = decrypt(this.#keys().decrypting, token, { ttl });
    return { plaintext, timestamp, keyId: key.id };
  }

  /** Re-encrypts a token under the primary key, keeping its timestamp; never returns plaintext. */
  rewrap(token: string | Uint8Array): Encrypted {
    const keys = this.#keys();
    const { plaintext, timestamp, key } = decrypt(keys.decrypting, token);
    return { token: keys.primary.encrypt(plaintext, timestamp), keyId: keys.primary.id, previousKeyId: key.id };
  }
}

/** The encryption service over a keyring: the data operations and key management. */
export class CryptService {
  readonly keyring: Keyring;
  readonly data: DataOps;
  /** The most keys that may decrypt: a rotation past it is refused. */
  readonly maxKeys: number;

  constructor(keyring: Keyring, options: { maxKeys?: number } = {}) {
    this.keyring = keyring;
    this.data = new DataOps(() => keyring.current);
    this.maxKeys = options.maxKeys ?? Infinity;
  }

  /** The primary key in Fernet's format, with its id. */
  getKey(): ExportedKey {
    const primary = this.keyring.current.primary;
    return { key: primary.export(), id: primary.id };
  }

  /** A token's creation time and the key that verifies it, retired keys included; never its plaintext. */
  inspect(token: string | Uint8Array, now = Date.now()): TokenFacts {
    const all = this.keyring.current.all();
    const { timestamp, key } = inspectToken(all.map((e) => e.key), token);
    const entry = key ? all.find((e) => e.key === key)! : null;
    return {
      timestamp,
      created: new Date(timestamp * 1000).toISOString(),
      age_seconds: Math.floor(now / 1000) - timestamp,
      key_id: entry?.id ?? null,
      key_state: entry?.state ?? null,
    };
  }

  /** Public facts about every key. */
  keyInfo(): { keys: KeyInfo[] } {
    return { keys: this.keyring.current.info() };
  }

  /** Makes a new primary key; returns its public facts. */
  async rotate(): Promise<KeyInfo> {
    const set = await storage(() => this.keyring.update((s) => s.rotated(new Date(), this.maxKeys)), 'rotation');
    return set.info()[0]!;
  }
}

/** Runs a keyring change; a file problem becomes `unavailable`, its reason kept for the log. */
async function storage<T>(change: () => Promise<T>, what: string): Promise<T> {
  try {
    return await change();
  } catch (err) {
    if (err instanceof FileError) throw new CryptError('unavailable', `${what} failed: the keyring could not be updated; the server log says why`, { cause: err });
    throw err;
  }
}
