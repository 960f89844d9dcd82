/**
 * The keyring: the keys in force, from a store (a file, or FERNET_KEYS), beside the service.
 *
 * Rules:
 * - No key is ever lost. Stored text that can't be read or parsed is an error and stays
 *   untouched; it is never replaced by a new key. Every change is applied to the latest stored
 *   keys and saved with compare-and-swap (src/keys/store.ts), retried when another writer got
 *   there first, so concurrent writers can't drop each other's keys.
 * - Each key has a public id (a fingerprint), a creation time and a state: `primary` encrypts,
 *   `active` decrypts, `retired` no longer decrypts but stays in the file.
 * - A running server reloads the file when it changes (inotify on the directory, and polling as a
 *   fallback); a change that fails to load is reported and the keys in force stay. Reloads and
 *   updates run one at a time, so an older read never replaces a newer set.
 * - Nothing here logs or prints key material; errors name files and ids only.
 */
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { FernetKey } from '../crypto/fernet.js';
import { CryptError } from '../core/errors.js';
import { FileError, Serial } from './files.js';
import { FileStore, ListStore } from './store.js';
import type { KeyStore, Stored } from './store.js';

/** The state of a key in the keyring. */
export type KeyState = 'primary' | 'active' | 'retired';

/** Public facts about a key: what `ki`, `GET /keys` and `keys list` show. */
export interface KeyInfo {
  id: string;
  state: KeyState;
  created: string | null;
}

interface Entry extends KeyInfo {
  key: FernetKey;
}

const FORMAT = 'crypt-keyring/1';
const STATES: readonly string[] = ['primary', 'active', 'retired'];

/** An immutable set of keys with exactly one primary. */
export class KeySet {
  readonly #entries: readonly Entry[];
  /** The key that encrypts. */
  readonly primary: FernetKey;
  /** The keys that decrypt: the primary first, then the active keys, newest first. */
  readonly decrypting: readonly FernetKey[];

  private constructor(entries: Entry[]) {
    this.#entries = entries;
    const primaries = entries.filter((e) => e.state === 'primary');
    if (primaries.length !== 1) throw new FileError(`a keyring needs exactly one primary key, found ${primaries.length}`);
    this.primary = primaries[0]!.key;
    this.decrypting = [this.primary, ...entries.filter((e) => e.state === 'active').map((e) => e.key)];
  }

  /** A new key set holding one fresh primary key. */
  static generate(now = new Date()): KeySet {
    const key = FernetKey.generate();
    return new KeySet([{ id: key.id, state: 'primary', created: now.toISOString(), key }]);
  }

  /** Keys from FERNET_KEYS: comma-separated Fernet keys, newest (primary) first. */
  static fromList(list: string): KeySet {
    const parts = list.split(',').map((s) => s.trim()).filter(Boolean);
    if (parts.length === 0) throw new FileError('FERNET_KEYS is set but holds no key');
    const entries = parts.map((text, i): Entry => {
      let key: FernetKey;
      try {
        key = FernetKey.from(text);
      } catch {
        throw new FileError(`FERNET_KEYS: key ${i + 1} of ${parts.length} is not a Fernet key (44 characters of base64url)`);
      }
      return { id: key.id, state: i === 0 ? 'primary' : 'active', created: null, key };
    });
    return new KeySet(unique(entries));
  }

  /** Parses a keyring file's text; the error says what is wrong, never shows a key. */
  static parse(text: string): KeySet {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new FileError('not valid JSON');
    }
    const d = doc as { format?: unknown; keys?: unknown };
    if (typeof doc !== 'object' || doc === null || d.format !== FORMAT || !Array.isArray(d.keys)) {
      throw new FileError(`not a keyring: expected {"format": "${FORMAT}", "keys": [...]}`);
    }
    const entries = d.keys.map((raw: unknown, i: number): Entry => {
      const e = raw as Record<string, unknown>;
      const where = `key ${i + 1}`;
      if (typeof e !== 'object' || e === null || typeof e.key !== 'string') throw new FileError(`${where}: missing "key"`);
      let key: FernetKey;
      try {
        key = FernetKey.from(e.key);
      } catch {
        throw new FileError(`${where}: "key" is not a Fernet key`);
      }
      if (typeof e.state !== 'string' || !STATES.includes(e.state)) throw new FileError(`${where}: "state" must be one of ${STATES.join(', ')}`);
      if (e.id !== key.id) throw new FileError(`${where}: "id" does not match its key (expected ${key.id})`);
      if (e.created !== null && (typeof e.created !== 'string' || Number.isNaN(Date.parse(e.created)))) {
        throw new FileError(`${where}: "created" must be an ISO 8601 time or null`);
      }
      return { id: key.id, state: e.state as KeyState, created: e.created, key };
    });
    return new KeySet(unique(entries));
  }

  /** The file text for this set. Holds every key: write it only with writeAtomic. */
  serialize(): string {
    const keys = this.#entries.map((e) => ({ id: e.id, state: e.state, created: e.created, key: e.key.export() }));
    return JSON.stringify({ format: FORMAT, keys }, null, 2) + '\n';
  }

  /** Every key with its public facts, retired ones too, newest first. */
  all(): ReadonlyArray<KeyInfo & { key: FernetKey }> {
    return this.#entries;
  }

  /** Public facts about every key, newest first. */
  info(): KeyInfo[] {
    return this.#entries.map(({ id, state, created }) => ({ id, state, created }));
  }

  /** The decrypting keys' raw bytes, primary first, each in a buffer of its own (for worker threads; wipe after use). */
  secrets(): Uint8Array[] {
    return this.decrypting.map((k) => k.exportBytes());
  }

  /** A set of decrypting keys, the first one primary (a worker thread's copy). */
  static fromKeys(keys: FernetKey[]): KeySet {
    return new KeySet(keys.map((key, i): Entry => ({ id: key.id, state: i === 0 ? 'primary' : 'active', created: null, key })));
  }

  /**
   * This set with a new primary key; the old primary becomes active. Refused when maxDecrypting
   * keys would then decrypt: every forged token is checked against each of them.
   */
  rotated(now = new Date(), maxDecrypting = Infinity): KeySet {
    if (this.decrypting.length + 1 > maxDecrypting) {
      throw new CryptError('conflict', `${this.decrypting.length} keys decrypt already, the most allowed (--max-keys ${maxDecrypting}): retire old ones first with crypt-server keys retire <id>`);
    }
    const key = FernetKey.generate();
    const rest = this.#entries.map((e): Entry => (e.state === 'primary' ? { ...e, state: 'active' } : e));
    return new KeySet([{ id: key.id, state: 'primary', created: now.toISOString(), key }, ...rest]);
  }

  /** This set with one key moved to another state; the primary can't be retired. */
  withState(id: string, state: 'active' | 'retired'): KeySet {
    const entry = this.#entries.find((e) => e.id === id);
    if (!entry) throw new CryptError('not_found', `no key with id ${id}`);
    if (entry.state === 'primary') throw new CryptError('conflict', `key ${id} is the primary key: rotate first, then retire it`);
    return new KeySet(this.#entries.map((e) => (e.id === id ? { ...e, state } : e)));
  }
}

function unique(entries: Entry[]): Entry[] {
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.id)) throw new FileError(`key ${e.id} appears twice`);
    seen.add(e.id);
  }
  return entries;
}

/** Where keys come from: a keyring file, or FERNET_KEYS (read-only). */
export type KeySource = { file: string } | { list: string };

/** The store for a source. */
export const storeOf = (source: KeySource): KeyStore => ('list' in source ? new ListStore(source.list) : new FileStore(source.file));

const MAX_RETRIES = 20;

/** Events: `change` (KeySet, reason) after a reload or an update; `error` (Error) when a reload fails. */
export class Keyring extends EventEmitter {
  #current: KeySet;
  #version: string;
  readonly store: KeyStore;
  #unwatch: (() => void) | null = null;
  /** Reloads and updates of this object run one after another, in order. */
  readonly #serial = new Serial();

  private constructor(store: KeyStore, current: KeySet, version: string) {
    super();
    this.store = store;
    this.#current = current;
    this.#version = version;
  }

  /** The keys in force now. */
  get current(): KeySet {
    return this.#current;
  }

  /** The keyring file, or null for FERNET_KEYS. */
  get file(): string | null {
    return this.store.writable ? this.store.where : null;
  }

  /**
   * Opens the keyring. A missing keyring file is created (with one new key) only when `create`
   * is true; `created` tells whether this call made it.
   */
  static async open(source: KeySource | KeyStore, options: { create?: boolean } = {}): Promise<{ keyring: Keyring; created: boolean }> {
    const store = 'load' in source ? source : storeOf(source);
    if (!store.writable) {
      const stored = (await store.load())!;
      return { keyring: new Keyring(store, KeySet.fromList(stored.text), stored.version), created: false };
    }
    const existing = await parsed(store);
    if (existing) return { keyring: new Keyring(store, existing.set, existing.version), created: false };
    if (!options.create) throw new FileError(`keyring ${store.where} does not exist: create it with crypt-server keys init (or start with --init)`);
    await fs.mkdir(dirname(store.where), { recursive: true, mode: 0o700 });
    const set = KeySet.generate();
    const version = await store.save(set.serialize(), null);
    if (version !== null) return { keyring: new Keyring(store, set, version), created: true };
    // another process created it first: use theirs
    const raced = await parsed(store);
    if (!raced) throw new FileError(`keyring ${store.where} vanished while being created`);
    return { keyring: new Keyring(store, raced.set, raced.version), created: false };
  }

  /** Applies a change to the latest stored keys, saves it, and puts it in force. */
  update(change: (set: KeySet) => KeySet): Promise<KeySet> {
    if (!this.store.writable) return Promise.reject(new CryptError('conflict', 'keys come from FERNET_KEYS: change that list instead (newest first)'));
    return this.#serial.run(async () => {
      for (let i = 0; i < MAX_RETRIES; i++) {
        const latest = await parsed(this.store);
        if (!latest) throw new FileError(`keyring ${this.store.where} has disappeared; refusing to write a new one`);
        const next = change(latest.set);
        const version = await this.store.save(next.serialize(), latest.version);
        if (version !== null) {
          this.#install(next, version, 'update');
          return next;
        }
      }
      throw new FileError(`keyring ${this.store.where} kept changing under this update; try again`);
    });
  }

  /** Reloads the stored keys if they changed; a failure is emitted as `error` and the keys stay. */
  readonly reload = this.#serial.coalesced(async () => {
    if (!this.store.writable) return;
    try {
      const latest = await parsed(this.store);
      if (!latest) throw new FileError(`keyring ${this.store.where} has disappeared; keeping the keys in force`);
      if (latest.version !== this.#version) this.#install(latest.set, latest.version, 'reload');
    } catch (err) {
      this.emit('error', err);
    }
  });

  /** Watches the store for changes made by other processes. */
  watch(intervalMs = 500): void {
    if (this.#unwatch) return;
    this.#unwatch = this.store.watch(() => void this.reload(), intervalMs);
  }

  /** Stops watching. */
  close(): void {
    this.#unwatch?.();
    this.#unwatch = null;
  }

  #install(set: KeySet, version: string, reason: 'update' | 'reload'): void {
    this.#current = set;
    this.#version = version;
    this.emit('change', set, reason);
  }
}

/** Loads and parses the stored keys; null when there are none; a FileError naming the store otherwise. */
async function parsed(store: KeyStore): Promise<{ set: KeySet; version: string } | null> {
  const stored: Stored | null = await store.load();
  if (!stored) return null;
  try {
    return { set: KeySet.parse(stored.text), version: stored.version };
  } catch (err) {
    throw new FileError(`keyring ${store.where} is not valid: ${(err as Error).message}; it was left untouched`);
  }
}
