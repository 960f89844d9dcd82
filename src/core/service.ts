/**
 * The operations of crypt as plain functions and methods, with no transport, no caller and no
 * policy: the dispatcher (src/core/dispatcher.ts) authorizes, checks and times every call before
 * it gets here.
 *
 * Rules:
 * - The data operations (encryptWith, decryptWith, rewrapWith) are synchronous and work on a
 *   request's resolved keys only, so worker threads run the very same code (src/core/worker.ts).
 * - Each operation reads the keys in force at its start.
 * - Errors are CryptErrors from the catalogue; their messages carry sizes, names and limits,
 *   never data. A keyring that can't be written is `unavailable`, with the file's reason kept as
 *   the cause for the log, never in the message.
 */
import { randomBytes } from 'node:crypto';
import { decrypt, inspectToken } from '../crypto/fernet.js';
import { CryptError } from './errors.js';
import { Health } from './health.js';
import { FileError } from '../keys/files.js';
import { DEFAULT_KEY, KEY_NAME, KeySet, RESERVED_NAME, MIN_AUTO_ROTATE, NEW_KEY_SETTINGS } from '../keys/keyring.js';
import type { KeyDetails, KeyInfo, KeySettings, KeyState, Keyring, ResolvedKey } from '../keys/keyring.js';

/** What ki answers. */
export interface KeyListing {
  /** The key whose versions `keys` lists; null when none was named and default is outside the caller's scope. */
  key: string | null;
  keys: KeyInfo[];
  named_keys: KeyDetails[];
}

/** A new token and the id of the key version that made it (for a rewrap, also the version it was under). */
export interface Encrypted {
  token: string;
  keyId: string;
  previousKeyId?: string;
}

/** A decrypted message, the creation time of its token (seconds since the epoch) and the version that opened it. */
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

/** What a token tells without being decrypted. */
export interface TokenFacts {
  /** Creation time, seconds since the epoch, and as ISO 8601. */
  timestamp: number;
  created: string;
  age_seconds: number;
  /** The named key inspected. */
  key: string;
  /** The version of that key that verifies the token (retired ones too), or null when none does. */
  key_id: string | null;
  key_state: KeyState | null;
}

/** Encrypts a message under the primary version. */
export function encryptWith(keys: ResolvedKey, plaintext: Uint8Array): Encrypted {
  return { token: keys.primary.encrypt(plaintext), keyId: keys.primaryId };
}

/** A data key (dk): 32 random bytes for encrypting near the data, and the same wrapped under the key. */
export interface DataKey {
  /** The key, base64url; absent in the wrapped-only form. */
  plaintext?: string;
  /** A Fernet token whose plaintext is the key's 32 bytes. */
  token: string;
  key_id: string;
}

/** Makes a data key; the wrapped-only form never returns the key itself (KMS's GenerateDataKeyWithoutPlaintext). */
export function dataKeyWith(keys: ResolvedKey, wrappedOnly: boolean): DataKey {
  const key = randomBytes(32);
  try {
    const token = keys.primary.encrypt(key);
    return wrappedOnly ? { token, key_id: keys.primaryId } : { plaintext: key.toString('base64url'), token, key_id: keys.primaryId };
  } finally {
    key.fill(0);
  }
}

/** Decrypts a token with the versions that decrypt, optionally refusing tokens older than ttl seconds. */
export function decryptWith(keys: ResolvedKey, token: string | Uint8Array, ttl: number | undefined): Decrypted {
  const { plaintext, timestamp, key } = decrypt(keys.decrypting, token, { ttl });
  return { plaintext, timestamp, keyId: keys.ids[keys.decrypting.indexOf(key)]! };
}

/** Re-encrypts a token under the primary version, keeping its timestamp; never returns plaintext. */
export function rewrapWith(keys: ResolvedKey, token: string | Uint8Array): Encrypted {
  const { plaintext, timestamp, key } = decrypt(keys.decrypting, token);
  return { token: keys.primary.encrypt(plaintext, timestamp), keyId: keys.primaryId, previousKeyId: keys.ids[keys.decrypting.indexOf(key)]! };
}

/** The encryption service over a keyring: resolving keys, inspecting tokens, and key management. */
export class CryptService {
  readonly keyring: Keyring;
  /** The most versions of a key that may decrypt: a rotation past it is refused. */
  readonly maxKeys: number;
  /** Liveness and readiness; transports add their checks. */
  readonly health: Health;

  constructor(keyring: Keyring, options: { maxKeys?: number } = {}) {
    this.keyring = keyring;
    this.maxKeys = options.maxKeys ?? Infinity;
    this.health = new Health(keyring);
  }

  /** The keys of a request (unknown_key when no key has this name). */
  resolve(name: string | undefined, context: Buffer | null): ResolvedKey {
    return this.keyring.resolve(name ?? DEFAULT_KEY, context);
  }

  /** A token's creation time and the version of the key that verifies it, retired ones included; never its plaintext. */
  inspect(name: string | undefined, context: Buffer | null, token: string | Uint8Array, now = Date.now()): TokenFacts {
    const set = this.keyring.book.key(name ?? DEFAULT_KEY);
    const { keys, entries } = set.resolveAll(context, this.keyring.derived);
    const { timestamp, key } = inspectToken(keys, token);
    const entry = key ? entries[keys.indexOf(key)]! : null;
    return {
      timestamp,
      created: new Date(timestamp * 1000).toISOString(),
      age_seconds: Math.floor(now / 1000) - timestamp,
      key: set.name,
      key_id: entry?.id ?? null,
      key_state: entry?.state ?? null,
    };
  }

  /** A key's primary version in Fernet's format, with its id: only for an exportable key. */
  getKey(name: string | undefined): ExportedKey {
    const set = this.keyring.book.key(name ?? DEFAULT_KEY);
    if (!set.settings.exportable) throw new CryptError('forbidden', `key ${set.name} is not exportable: an admin can change that with crypt-server keys config ${set.name} --exportable true`);
    return { key: set.primary.export(), id: set.details().primary };
  }

  /**
   * What ki answers: the versions of one key (default: `default`) as `keys`, the shape ki has
   * always had, and the facts about every key a filter lets through as `named_keys`.
   */
  keyInfo(name: string | undefined, visible: (name: string) => boolean = () => true): KeyListing {
    const book = this.keyring.book;
    // a key named is checked by the caller; default, when not named and not visible, is not listed
    const set = name !== undefined || visible(DEFAULT_KEY) ? book.key(name ?? DEFAULT_KEY) : null;
    return { key: set?.name ?? null, keys: set ? set.info() : [], named_keys: book.keys().filter((k) => visible(k.name)).map((k) => k.details()) };
  }

  /** Public facts about one key. */
  showKey(name: string): KeyDetails {
    return this.keyring.book.key(name).details();
  }

  /** Creates a named key with one version. */
  async createKey(name: string, settings: Pick<KeySettings, 'derived' | 'exportable'>): Promise<KeyDetails> {
    // checked here for every face (crypt-server keys create passes its argument as given): a bad name would be saved, and the keyring would no longer load
    if (typeof name !== 'string' || !KEY_NAME.test(name)) throw new CryptError('bad_request', "a key name is 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit");
    if (name === RESERVED_NAME) throw new CryptError('bad_request', `the key name ${RESERVED_NAME} is reserved: /keys/${RESERVED_NAME} is the older HTTP path of rk`);
    const book = await storage(() => this.keyring.updateBook((b) => {
      if (b.get(name)) throw new CryptError('conflict', `a key named ${name} exists already`);
      return b.with(KeySet.generate(name, { ...NEW_KEY_SETTINGS, ...settings }));
    }), 'creating the key');
    return book.key(name).details();
  }

  /** Changes a key's settings (those given). */
  async configureKey(name: string, change: Partial<Omit<KeySettings, 'derived'>>): Promise<KeyDetails> {
    const given = Object.fromEntries(Object.entries(change).filter(([, v]) => v !== undefined)) as Partial<Omit<KeySettings, 'derived'>>;
    if (Object.keys(given).length === 0) throw new CryptError('bad_request', 'nothing to change: give exportable, deletion_allowed or auto_rotate');
    // optionValue parses what a face sends and checks it the same way; this guards every other caller of the service
    if (given.autoRotate !== undefined && given.autoRotate !== null && given.autoRotate < MIN_AUTO_ROTATE) throw new CryptError('bad_request', `auto_rotate must be at least ${MIN_AUTO_ROTATE} seconds (1h), or off`);
    const set = await storage(() => this.keyring.update((s) => s.withSettings(given), name), 'changing the key');
    return set.details();
  }

  /** Deletes a key: only one whose settings allow it, and only when confirmed. */
  async deleteKey(name: string, confirmed: boolean): Promise<{ deleted: string }> {
    if (name === DEFAULT_KEY) throw new CryptError('conflict', `the key ${DEFAULT_KEY} can't be deleted: requests without a key name use it`);
    mayDelete(this.keyring.book.key(name));
    if (!confirmed) throw new CryptError('bad_request', `deleting key ${name} makes every token made with it undecryptable, for good: confirm it (confirm=true, --yes)`);
    await storage(() => this.keyring.updateBook((b) => {
      // checked again on the latest stored keys: another process may have changed the setting
      mayDelete(b.key(name));
      return b.without(name);
    }), 'deleting the key');
    return { deleted: name };
  }

  /** Makes a new primary version of a key; returns its public facts. */
  async rotate(name: string | undefined): Promise<KeyInfo> {
    const set = await storage(() => this.keyring.update((s) => s.rotated(new Date(), this.maxKeys), name ?? DEFAULT_KEY), 'rotation');
    return set.info()[0]!;
  }

  /**
   * Rotates every key whose primary is older than its auto_rotate period (or of unknown age: a
   * version from a keyring older than creation times). The age is checked on the latest stored
   * keys inside the update, so of several servers sharing a keyring exactly one rotates. A key
   * that fails (--max-keys, a write error) does not stop the others: its name and reason are in
   * `failed`.
   */
  async autoRotate(now = Date.now()): Promise<{ rotated: string[]; failed: Array<{ name: string; reason: string }> }> {
    const due = (s: KeySet): boolean => s.settings.autoRotate !== null && now - (s.primaryCreated() ?? 0) >= s.settings.autoRotate * 1000;
    const rotated: string[] = [];
    const failed: Array<{ name: string; reason: string }> = [];
    for (const set of this.keyring.book.keys().filter(due)) {
      let did = false;
      try {
        await this.keyring.updateBook((b) => {
          const latest = b.get(set.name);
          did = latest !== undefined && due(latest);
          return did ? b.with(latest!.rotated(new Date(now), this.maxKeys)) : b;
        });
      } catch (err) {
        failed.push({ name: set.name, reason: (err as Error).message });
        continue;
      }
      if (did) rotated.push(set.name);
    }
    return { rotated, failed };
  }
}

/** Throws conflict unless the key's settings allow deleting it. */
function mayDelete(set: KeySet): void {
  if (!set.settings.deletionAllowed) throw new CryptError('conflict', `key ${set.name} may not be deleted: allow it first with crypt-server keys config ${set.name} --deletion-allowed true`);
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
