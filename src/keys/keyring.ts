/**
 * The keyring: named keys, each with its versions, from a store (a file, or FERNET_KEYS), beside
 * the service.
 *
 * Rules:
 * - No key is ever lost. Stored text that can't be read or parsed is an error and stays
 *   untouched; it is never replaced by a new key. Every change is applied to the latest stored
 *   keys and saved with compare-and-swap (src/keys/store.ts), retried when another writer got
 *   there first, so concurrent writers can't drop each other's keys.
 * - A key has a name (KEY_NAME), settings, and versions. Each version has a public id (a
 *   fingerprint), a creation time and a state: `primary` encrypts, `active` decrypts, `retired`
 *   no longer decrypts but stays in the file. The key `default` is what requests without a key
 *   name mean; it can't be deleted.
 * - A derived key's versions are roots: a request's Fernet key is derived from them and its
 *   context (src/crypto/fernet.ts, deriveKey), cached in a bounded LRU.
 * - A keyring file of format 1 (one unnamed set of keys) reads as the key `default`; the first
 *   write saves format 2, after copying the old file beside it (`<file>.v1.bak`, 0600).
 * - A running server reloads the keys when they change (the store's watch); a change that fails
 *   to load is reported and the keys in force stay. Reloads and updates run one at a time.
 * - Nothing here logs or prints key material; errors name files, key names and ids only.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { FernetKey, deriveKey } from '../crypto/fernet.js';
import { CryptError } from '../core/errors.js';
import { FileError, MAX_SECRET_FILE, Serial, checkDirectory, writeAtomic } from './files.js';
import { FileStore, ListStore } from './store.js';
import type { KeyStore, Stored } from './store.js';

/** The state of a key version. */
export type KeyState = 'primary' | 'active' | 'retired';

/** Public facts about a key version: what `ki`, `GET /keys` and `keys list` show. */
export interface KeyInfo {
  id: string;
  state: KeyState;
  created: string | null;
}

/** A key's settings. */
export interface KeySettings {
  /** Requests carry a context; their Fernet keys are derived from the versions and the context. */
  derived: boolean;
  /** `gk` and backups may export it. */
  exportable: boolean;
  /** It may be deleted (and still only with a confirmation). */
  deletionAllowed: boolean;
  /** Seconds between automatic rotations; null for none. */
  autoRotate: number | null;
}

/** Public facts about a named key: its settings and versions (never key material). */
export interface KeyDetails {
  name: string;
  derived: boolean;
  exportable: boolean;
  deletion_allowed: boolean;
  /** The automatic rotation period in seconds, or null. */
  auto_rotate: number | null;
  primary: string;
  versions: KeyInfo[];
}

/** The key that requests without a key name use. */
export const DEFAULT_KEY = 'default';
/** What a key name may be. */
export const KEY_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
/** The shortest automatic rotation period, in seconds. */
export const MIN_AUTO_ROTATE = 3600;
/** A name no key may have: `/keys/rotate` is the older HTTP path of rk (POST), so GET and DELETE of it could not reach such a key. */
export const RESERVED_NAME = 'rotate';

interface Entry extends KeyInfo {
  key: FernetKey;
}

const FORMAT_1 = 'crypt-keyring/1';
const FORMAT_2 = 'crypt-keyring/2';
const STATES: readonly string[] = ['primary', 'active', 'retired'];
const KEY_FIELDS: readonly string[] = ['name', 'derived', 'exportable', 'deletion_allowed', 'auto_rotate', 'versions'];
const VERSION_FIELDS: readonly string[] = ['id', 'state', 'created', 'key'];

/** Settings of a new key, and of the `default` key (as it always behaved). */
export const NEW_KEY_SETTINGS: KeySettings = { derived: false, exportable: false, deletionAllowed: false, autoRotate: null };
const DEFAULT_SETTINGS: KeySettings = { derived: false, exportable: true, deletionAllowed: false, autoRotate: null };

/** The Fernet keys for one request: the primary, those that decrypt, and their version ids. */
export interface ResolvedKey {
  name: string;
  primary: FernetKey;
  primaryId: string;
  decrypting: readonly FernetKey[];
  /** The version id of each decrypting key, in the same order. */
  ids: readonly string[];
}

/** One named key: its settings and versions, exactly one primary. Immutable. */
export class KeySet {
  readonly name: string;
  readonly settings: KeySettings;
  readonly #entries: readonly Entry[];
  /** The resolution of a key that is not derived (the same for every request), made on first use. */
  #plain: ResolvedKey | null = null;
  /**
   * Resolutions of a derived key by context object: a TCP head's checked options (context
   * included) are cached with the head (src/core/dispatcher.ts), so requests that repeat a head
   * bring the same Buffer and skip the derived-key cache's lookups. Weak: an entry lives as long
   * as its context does (the bounded head cache, or one request).
   */
  readonly #byContext = new WeakMap<Buffer, ResolvedKey>();

  constructor(name: string, settings: KeySettings, entries: Entry[]) {
    this.name = name;
    this.settings = settings;
    this.#entries = entries;
    let primaries = 0;
    for (const e of entries) if (e.state === 'primary') primaries++;
    if (primaries !== 1) throw new FileError(`key ${name} needs exactly one primary version, found ${primaries}`);
  }

  /** The version that encrypts (for a derived key, the root its request keys come from). */
  get primary(): FernetKey {
    return this.#resolved().primary;
  }

  /** The id of the primary version. */
  get primaryId(): string {
    return this.#resolved().primaryId;
  }

  /** The versions that decrypt: the primary first, then the active ones, newest first. */
  get decrypting(): readonly FernetKey[] {
    return this.#resolved().decrypting;
  }

  #resolved(): ResolvedKey {
    if (this.#plain) return this.#plain;
    const primary = this.#entries.find((e) => e.state === 'primary')!;
    const active = this.#entries.filter((e) => e.state === 'active');
    return (this.#plain = { name: this.name, primary: primary.key, primaryId: primary.id, decrypting: [primary.key, ...active.map((e) => e.key)], ids: [primary.id, ...active.map((e) => e.id)] });
  }

  /** A new key with one fresh primary version. */
  static generate(name = DEFAULT_KEY, settings: KeySettings = name === DEFAULT_KEY ? DEFAULT_SETTINGS : NEW_KEY_SETTINGS, now = new Date()): KeySet {
    const key = FernetKey.generate();
    return new KeySet(name, settings, [{ id: key.id, state: 'primary', created: now.toISOString(), key }]);
  }

  /** Keys from FERNET_KEYS: comma-separated Fernet keys, newest (primary) first; the key `default`. */
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
    return new KeySet(DEFAULT_KEY, DEFAULT_SETTINGS, unique(entries));
  }

  /** A key set as a keyring file or backup holds it (its versions validated one by one). */
  static fromJson(raw: unknown, where: string): KeySet {
    const k = raw as Record<string, unknown>;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new FileError(`${where}: expected an object`);
    if (typeof k.name !== 'string' || !KEY_NAME.test(k.name)) throw new FileError(`${where}: "name" must match ${KEY_NAME.source}`);
    const unknown = Object.keys(k).find((f) => !KEY_FIELDS.includes(f));
    if (unknown !== undefined) throw new FileError(`${where} (${k.name}): unknown field ${/^[a-z_]{1,40}$/.test(unknown) ? `"${unknown}"` : '(unprintable)'}`);
    for (const flag of ['derived', 'exportable', 'deletion_allowed'] as const) {
      if (typeof k[flag] !== 'boolean') throw new FileError(`${where} (${k.name}): "${flag}" must be true or false`);
    }
    if (k.auto_rotate !== null && !(Number.isSafeInteger(k.auto_rotate) && (k.auto_rotate as number) >= MIN_AUTO_ROTATE)) {
      throw new FileError(`${where} (${k.name}): "auto_rotate" must be null or a whole number of seconds, ${MIN_AUTO_ROTATE} or more`);
    }
    if (!Array.isArray(k.versions)) throw new FileError(`${where} (${k.name}): "versions" must be a list`);
    const settings: KeySettings = { derived: k.derived as boolean, exportable: k.exportable as boolean, deletionAllowed: k.deletion_allowed as boolean, autoRotate: k.auto_rotate as number | null };
    return new KeySet(k.name, settings, unique(k.versions.map((v: unknown, i: number) => version(v, `${where} (${k.name}), version ${i + 1}`))));
  }

  /** This key as a keyring file or backup holds it: every version with its key. Write it only with writeAtomic. */
  toJson(): object {
    return {
      name: this.name,
      derived: this.settings.derived,
      exportable: this.settings.exportable,
      deletion_allowed: this.settings.deletionAllowed,
      auto_rotate: this.settings.autoRotate,
      versions: this.#entries.map((e) => ({ id: e.id, state: e.state, created: e.created, key: e.key.export() })),
    };
  }

  /** Public facts about every version, newest first. */
  info(): KeyInfo[] {
    return this.#entries.map(({ id, state, created }) => ({ id, state, created }));
  }

  /** Public facts about the key. */
  details(): KeyDetails {
    const s = this.settings;
    return { name: this.name, derived: s.derived, exportable: s.exportable, deletion_allowed: s.deletionAllowed, auto_rotate: s.autoRotate, primary: this.#entries.find((e) => e.state === 'primary')!.id, versions: this.info() };
  }

  /** The creation time of the primary version, in milliseconds since the epoch (null when unknown). */
  primaryCreated(): number | null {
    const created = this.#entries.find((e) => e.state === 'primary')!.created;
    return created === null ? null : Date.parse(created);
  }

  /** The keys of a request: as they are, or derived from a context (through the cache). */
  resolve(context: Buffer | null, cache: DerivedKeys): ResolvedKey {
    if (!this.settings.derived) {
      if (context) throw new CryptError('bad_request', `key ${this.name} is not derived: a context means nothing to it, send none`);
      return this.#resolved();
    }
    if (!context) throw new CryptError('bad_request', `key ${this.name} is derived: send a context (base64url, 1 to 256 bytes)`);
    const known = this.#byContext.get(context);
    if (known) return known;
    const plain = this.#resolved();
    const decrypting = plain.decrypting.map((root, i) => cache.get(root, plain.ids[i]!, context));
    const resolved: ResolvedKey = { name: this.name, primary: decrypting[0]!, primaryId: plain.primaryId, decrypting, ids: plain.ids };
    this.#byContext.set(context, resolved);
    return resolved;
  }

  /** Every version (retired ones too) as request keys, with their states: for inspect. */
  resolveAll(context: Buffer | null, cache: DerivedKeys): { keys: FernetKey[]; entries: ReadonlyArray<KeyInfo> } {
    if (!!context !== this.settings.derived) this.resolve(context, cache);
    const keys = this.#entries.map((e) => (context ? cache.get(e.key, e.id, context) : e.key));
    return { keys, entries: this.#entries };
  }

  /**
   * This key with a new primary version; the old primary becomes active. Refused when
   * maxDecrypting versions would then decrypt: every forged token is checked against each.
   */
  rotated(now = new Date(), maxDecrypting = Infinity): KeySet {
    if (this.decrypting.length + 1 > maxDecrypting) {
      throw new CryptError('conflict', `${this.decrypting.length} versions of key ${this.name} decrypt already, the most allowed (--max-keys ${maxDecrypting}): retire old ones first with crypt-server keys retire <id>`);
    }
    const key = FernetKey.generate();
    const rest = this.#entries.map((e): Entry => (e.state === 'primary' ? { ...e, state: 'active' } : e));
    return new KeySet(this.name, this.settings, [{ id: key.id, state: 'primary', created: now.toISOString(), key }, ...rest]);
  }

  /** This key with one version moved to another state; the primary can't be retired. */
  withState(id: string, state: 'active' | 'retired'): KeySet {
    const entry = this.#entries.find((e) => e.id === id);
    if (!entry) throw new CryptError('not_found', `no key version with id ${id}`);
    if (entry.state === 'primary') throw new CryptError('conflict', `key ${id} is the primary key: rotate first, then retire it`);
    return new KeySet(this.name, this.settings, this.#entries.map((e) => (e.id === id ? { ...e, state } : e)));
  }

  /** This key with some settings changed. */
  withSettings(change: Partial<Omit<KeySettings, 'derived'>>): KeySet {
    return new KeySet(this.name, { ...this.settings, ...change }, [...this.#entries]);
  }

  /** True when a version has this id. */
  has(id: string): boolean {
    return this.#entries.some((e) => e.id === id);
  }
}

/**
 * Derived request keys, cached: at most `capacity`, the least recently used dropped first (in
 * halves). Two generations of capacity/2 each: a hit in the current one changes nothing, a hit
 * in the previous one moves the key to the current one, and when the current one is full it
 * becomes the previous one (whose keys are dropped). A Map used as an LRU by delete-and-set
 * costs O(size) per hit at thousands of entries in V8; this costs O(1).
 */
export class DerivedKeys {
  readonly capacity: number;
  #current = new Map<string, FernetKey>();
  #previous = new Map<string, FernetKey>();

  constructor(capacity = 10_000) {
    this.capacity = Math.max(2, capacity);
  }

  /** How many are cached. */
  get size(): number {
    return this.#current.size + this.#previous.size;
  }

  /** The request key for a root version and a context. */
  get(root: FernetKey, rootId: string, context: Buffer): FernetKey {
    const id = `${rootId}:${context.toString('base64url')}`;
    const hit = this.#current.get(id);
    if (hit) return hit;
    const key = this.#previous.get(id) ?? deriveKey(root, context);
    if (this.#current.size >= this.capacity >>> 1) {
      // keys still in the dropped generation are used by no request: no request holds a derived
      // key past its own synchronous call (worker threads get bytes)
      for (const [id, dropped] of this.#previous) if (!this.#current.has(id)) dropped.release();
      this.#previous = this.#current;
      this.#current = new Map();
    }
    this.#current.set(id, key);
    return key;
  }
}

/** A stored version, checked; `strict` refuses unknown fields (format 1 files never did). */
function version(raw: unknown, where: string, strict = true): Entry {
  const e = raw as Record<string, unknown>;
  if (typeof raw !== 'object' || raw === null || typeof e.key !== 'string') throw new FileError(`${where}: missing "key"`);
  let key: FernetKey;
  try {
    key = FernetKey.from(e.key);
  } catch {
    throw new FileError(`${where}: "key" is not a Fernet key`);
  }
  const unknown = Object.keys(e).find((f) => !VERSION_FIELDS.includes(f));
  if (strict && unknown !== undefined) throw new FileError(`${where}: unknown field ${/^[a-z_]{1,40}$/.test(unknown) ? `"${unknown}"` : '(unprintable)'}`);
  if (typeof e.state !== 'string' || !STATES.includes(e.state)) throw new FileError(`${where}: "state" must be one of ${STATES.join(', ')}`);
  if (e.id !== key.id) throw new FileError(`${where}: "id" does not match its key (expected ${key.id})`);
  if (e.created !== null && (typeof e.created !== 'string' || Number.isNaN(Date.parse(e.created)))) {
    throw new FileError(`${where}: "created" must be an ISO 8601 time or null`);
  }
  return { id: key.id, state: e.state as KeyState, created: e.created, key };
}

function unique(entries: Entry[]): Entry[] {
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.id)) throw new FileError(`key ${e.id} appears twice`);
    seen.add(e.id);
  }
  return entries;
}

/** Every named key: what a keyring file holds. Immutable. */
export class KeyBook {
  readonly #keys: ReadonlyMap<string, KeySet>;
  /** The file format this book was read from: 1 until it is first saved. */
  readonly format: 1 | 2;

  private constructor(keys: ReadonlyMap<string, KeySet>, format: 1 | 2) {
    if (!keys.has(DEFAULT_KEY)) throw new FileError(`a keyring needs the key ${DEFAULT_KEY}`);
    this.#keys = keys;
    this.format = format;
  }

  /** A book of one key, `default`. */
  static of(set: KeySet, format: 1 | 2 = 2): KeyBook {
    return new KeyBook(new Map([[set.name, set]]), format);
  }

  /** A new keyring: the key `default` with one fresh version. */
  static generate(now = new Date()): KeyBook {
    return KeyBook.of(KeySet.generate(DEFAULT_KEY, DEFAULT_SETTINGS, now));
  }

  /** Parses a keyring file (format 1 or 2); the error says what is wrong, never shows a key. */
  static parse(text: string): KeyBook {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new FileError('not valid JSON');
    }
    const d = doc as { format?: unknown; keys?: unknown };
    if (typeof doc !== 'object' || doc === null || !Array.isArray(d.keys) || (d.format !== FORMAT_1 && d.format !== FORMAT_2)) {
      throw new FileError(`not a keyring: expected {"format": "${FORMAT_2}", "keys": [...]}`);
    }
    if (d.format === FORMAT_1) {
      const entries = unique(d.keys.map((v: unknown, i: number) => version(v, `key ${i + 1}`, false)));
      return KeyBook.of(new KeySet(DEFAULT_KEY, DEFAULT_SETTINGS, entries), 1);
    }
    const keys = new Map<string, KeySet>();
    d.keys.forEach((raw: unknown, i: number) => {
      const set = KeySet.fromJson(raw, `key ${i + 1}`);
      if (keys.has(set.name)) throw new FileError(`key ${set.name} appears twice`);
      keys.set(set.name, set);
    });
    return new KeyBook(keys, 2);
  }

  /** The file text (format 2). Holds every key: write it only with writeAtomic. */
  serialize(): string {
    return JSON.stringify({ format: FORMAT_2, keys: [...this.#keys.values()].map((k) => k.toJson()) }, null, 2) + '\n';
  }

  /** The key with this name, or undefined. */
  get(name: string): KeySet | undefined {
    return this.#keys.get(name);
  }

  /** The key with this name; unknown_key otherwise. */
  key(name: string): KeySet {
    const set = this.#keys.get(name);
    if (!set) throw new CryptError('unknown_key', `no key named ${name}`);
    return set;
  }

  /** Every key, by name. */
  keys(): KeySet[] {
    return [...this.#keys.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** How many keys. */
  get size(): number {
    return this.#keys.size;
  }

  /** This book with a key added or replaced. */
  with(set: KeySet): KeyBook {
    const keys = new Map(this.#keys);
    keys.set(set.name, set);
    return new KeyBook(keys, 2);
  }

  /** This book without a key. */
  without(name: string): KeyBook {
    if (name === DEFAULT_KEY) throw new CryptError('conflict', `the key ${DEFAULT_KEY} can't be deleted: requests without a key name use it`);
    const keys = new Map(this.#keys);
    keys.delete(name);
    return new KeyBook(keys, 2);
  }

  /**
   * A public fingerprint of every key's name and versions (ids and states), never of material:
   * equal on two servers when they have the same keys in force, so an operator can watch a
   * rotation converge. 16 hex digits of SHA-256.
   */
  fingerprint(): string {
    const h = createHash('sha256');
    for (const set of this.keys()) for (const v of set.info()) h.update(`${set.name} ${v.id} ${v.state}\n`);
    return h.digest('hex').slice(0, 16);
  }

  /** The key holding a version id. */
  keyOf(id: string): KeySet | undefined {
    return this.keys().find((k) => k.has(id));
  }
}

/** Where keys come from: a keyring file, or FERNET_KEYS (read-only). */
export type KeySource = { file: string } | { list: string };

/** The store for a source. */
const storeOf = (source: KeySource): KeyStore => ('list' in source ? new ListStore(source.list) : new FileStore(source.file));

const MAX_RETRIES = 20;

/** Events: `change` (KeyBook, reason) after a reload or an update; `error` (Error) when a reload fails. */
export class Keyring extends EventEmitter {
  #book: KeyBook;
  #version: string;
  readonly store: KeyStore;
  /** Derived request keys, shared by every request. */
  readonly derived: DerivedKeys;
  #unwatch: (() => void) | null = null;
  #problem: string | null = null;
  /** Reloads and updates of this object run one after another, in order. */
  readonly #serial = new Serial();

  private constructor(store: KeyStore, book: KeyBook, version: string, derivedCapacity?: number) {
    super();
    this.store = store;
    this.#book = book;
    this.#version = version;
    this.derived = new DerivedKeys(derivedCapacity);
  }

  /** Every key in force now. */
  get book(): KeyBook {
    return this.#book;
  }

  /** The key `default` in force now: what requests without a key name use. */
  get current(): KeySet {
    return this.#book.get(DEFAULT_KEY)!;
  }

  /**
   * Why the keys in force may not be the stored ones: the last reload failed (its reason, which
   * may name the file: for the log). Null once a reload or an update succeeds.
   */
  get problem(): string | null {
    return this.#problem;
  }

  /** The keyring file, or null for FERNET_KEYS. */
  get file(): string | null {
    return this.store.writable ? this.store.where : null;
  }

  /** The keys of a request: the named key's (unknown_key if there is none), derived from the context if it is derived. */
  resolve(name: string, context: Buffer | null): ResolvedKey {
    return this.#book.key(name).resolve(context, this.derived);
  }

  /**
   * Opens the keyring. A missing keyring file is created (with one new key) only when `create`
   * is true; `created` tells whether this call made it.
   */
  static async open(source: KeySource | KeyStore, options: { create?: boolean; derivedCapacity?: number } = {}): Promise<{ keyring: Keyring; created: boolean }> {
    const store = 'load' in source ? source : storeOf(source);
    if (!store.writable) {
      const stored = (await store.load())!;
      return { keyring: new Keyring(store, KeyBook.of(KeySet.fromList(stored.text)), stored.version, options.derivedCapacity), created: false };
    }
    const existing = await parsed(store);
    if (existing) return { keyring: new Keyring(store, existing.book, existing.version, options.derivedCapacity), created: false };
    if (!options.create) throw new FileError(`keyring ${store.where} does not exist: create it with crypt-server keys init (or start with --init)`);
    await fs.mkdir(dirname(store.where), { recursive: true, mode: 0o700 });
    // the directories are checked as every later read checks them: a keyring never made where it can't be read back
    await checkDirectory(store.where, 'keyring');
    const book = KeyBook.generate();
    const version = await store.save(book.serialize(), null);
    if (version !== null) return { keyring: new Keyring(store, book, version, options.derivedCapacity), created: true };
    // another process created it first: use theirs
    const raced = await parsed(store);
    if (!raced) throw new FileError(`keyring ${store.where} vanished while being created`);
    return { keyring: new Keyring(store, raced.book, raced.version, options.derivedCapacity), created: false };
  }

  /** Applies a change to one key of the latest stored keys (default: `default`), saves it, and puts it in force. */
  update(change: (set: KeySet) => KeySet, name = DEFAULT_KEY): Promise<KeySet> {
    return this.updateBook((book) => book.with(change(book.key(name)))).then((book) => book.key(name));
  }

  /**
   * Applies a change to the latest stored keys, saves it, and puts it in force. A change that
   * returns the same book saves nothing. A format-1 file is copied beside itself before the
   * first save in format 2.
   */
  updateBook(change: (book: KeyBook) => KeyBook): Promise<KeyBook> {
    if (!this.store.writable) return Promise.reject(new CryptError('conflict', 'keys come from FERNET_KEYS: change that list instead (newest first)'));
    return this.#serial.run(async () => {
      for (let i = 0; i < MAX_RETRIES; i++) {
        const latest = await parsed(this.store);
        if (!latest) throw new FileError(`keyring ${this.store.where} has disappeared; refusing to write a new one`);
        const next = change(latest.book);
        if (next === latest.book) {
          this.#install(next, latest.version, 'reload');
          return next;
        }
        const text = next.serialize();
        // a keyring is read only up to MAX_SECRET_FILE: a larger one would be saved and then never load
        if (Buffer.byteLength(text) > MAX_SECRET_FILE) {
          throw new CryptError('conflict', `the keyring would be ${Buffer.byteLength(text)} bytes, more than the ${MAX_SECRET_FILE} a keyring may have: delete keys or retire versions (crypt-server keys delete, keys retire) first`);
        }
        if (latest.book.format === 1) await backupV1(this.store.where, latest.text);
        const version = await this.store.save(text, latest.version);
        if (version !== null) {
          this.#install(next, version, 'update');
          return next;
        }
      }
      throw new FileError(`keyring ${this.store.where} kept changing under this update; try again`);
    });
  }

  /** Saves a format-1 keyring in format 2 (keeping a copy of the old file); true when it did. */
  async migrate(): Promise<boolean> {
    if (this.#book.format !== 1 || !this.store.writable) return false;
    await this.updateBook((book) => (book.format === 1 ? KeyBook.of(book.key(DEFAULT_KEY), 2) : book));
    return true;
  }

  /** Reloads the stored keys if they changed; a failure is emitted as `error` and the keys stay. */
  readonly reload = this.#serial.coalesced(async () => {
    if (!this.store.writable) return;
    try {
      const latest = await parsed(this.store);
      if (!latest) throw new FileError(`keyring ${this.store.where} has disappeared; keeping the keys in force`);
      if (latest.version !== this.#version) this.#install(latest.book, latest.version, 'reload');
      this.#problem = null;
    } catch (err) {
      this.#problem = (err as Error).message;
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

  #install(book: KeyBook, version: string, reason: 'update' | 'reload'): void {
    // what was just read or written is the stored keyring: the keys in force are current
    this.#problem = null;
    if (version === this.#version && book === this.#book) return;
    this.#book = book;
    this.#version = version;
    this.emit('change', book, reason);
  }
}

/** The copy of a format-1 keyring kept beside it when it is first saved in format 2. */
export const v1Backup = (file: string): string => `${file}.v1.bak`;

async function backupV1(file: string, text: string): Promise<void> {
  try {
    await fs.access(v1Backup(file));
  } catch {
    await writeAtomic(v1Backup(file), text);
  }
}

/** Loads and parses the stored keys; null when there are none; a FileError naming the store otherwise. */
async function parsed(store: KeyStore): Promise<{ book: KeyBook; version: string; text: string } | null> {
  const stored: Stored | null = await store.load();
  if (!stored) return null;
  try {
    return { book: KeyBook.parse(stored.text), version: stored.version, text: stored.text };
  } catch (err) {
    throw new FileError(`keyring ${store.where} is not valid: ${(err as Error).message}; it was left untouched`);
  }
}
