/**
 * The keyring: the keys in force, on disk or from FERNET_KEYS, beside the service.
 *
 * Rules:
 * - No key is ever lost. A file that can't be read or parsed is an error and stays untouched;
 *   it is never replaced by a new key. Every change is a locked read-modify-write of the latest
 *   file, written atomically (src/files.ts), so concurrent writers can't drop each other's keys.
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
import { FernetKey } from './fernet.js';
import { CryptError } from './errors.js';
import { FileError, Serial, checkPrivate, removeLeftovers, watchForChanges, withLock, writeAtomic } from './files.js';

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

  /** Public facts about every key, newest first. */
  info(): KeyInfo[] {
    return this.#entries.map(({ id, state, created }) => ({ id, state, created }));
  }

  /** The keys in Fernet's format, as a FERNET_KEYS list would give them (for worker threads). */
  exportDecrypting(): string[] {
    return this.decrypting.map((k) => k.export());
  }

  /** This set with a new primary key; the old primary becomes active. */
  rotated(now = new Date()): KeySet {
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

/** Events: `change` (KeySet, reason) after a reload or an update; `error` (Error) when a reload fails. */
export class Keyring extends EventEmitter {
  #current: KeySet;
  #text: string;
  readonly file: string | null;
  #unwatch: (() => void) | null = null;
  /** Reloads and updates of this object run one after another, in order. */
  readonly #serial = new Serial();

  private constructor(current: KeySet, file: string | null, text: string) {
    super();
    this.#current = current;
    this.file = file;
    this.#text = text;
  }

  /** The keys in force now. */
  get current(): KeySet {
    return this.#current;
  }

  /**
   * Opens the keyring: FERNET_KEYS, or the file, created (with a new key) only when absent.
   * `created` tells whether this call made the file.
   */
  static async open(source: KeySource, options: { create?: boolean } = {}): Promise<{ keyring: Keyring; created: boolean }> {
    if ('list' in source) {
      const set = KeySet.fromList(source.list);
      return { keyring: new Keyring(set, null, ''), created: false };
    }
    const file = source.file;
    const existing = await load(file);
    if (existing) return { keyring: new Keyring(existing.set, file, existing.text), created: false };
    if (options.create === false) throw new FileError(`keyring ${file} does not exist`);
    await fs.mkdir(dirname(file), { recursive: true, mode: 0o700 });
    let created = false;
    const result = await withLock(lockPath(file), async () => {
      const raced = await load(file);
      if (raced) return raced;
      const set = KeySet.generate();
      const text = set.serialize();
      await writeAtomic(file, text);
      created = true;
      return { set, text };
    });
    return { keyring: new Keyring(result.set, file, result.text), created };
  }

  /** Applies a change to the latest file under the lock, saves it, and puts it in force. */
  update(change: (set: KeySet) => KeySet): Promise<KeySet> {
    const file = this.file;
    if (file === null) return Promise.reject(new CryptError('conflict', 'keys come from FERNET_KEYS: change that list instead (newest first)'));
    return this.#serial.run(async () => {
      const { set, text } = await withLock(lockPath(file), async () => {
        await removeLeftovers(file);
        const latest = await load(file);
        if (!latest) throw new FileError(`keyring ${file} has disappeared; refusing to write a new one`);
        const next = change(latest.set);
        const text = next.serialize();
        await writeAtomic(file, text);
        return { set: next, text };
      });
      this.#install(set, text, 'update');
      return set;
    });
  }

  /** Reloads the file if it changed; a failure is emitted as `error` and the keys stay. */
  readonly reload = this.#serial.coalesced(async () => {
    if (this.file === null) return;
    try {
      const latest = await load(this.file);
      if (!latest) throw new FileError(`keyring ${this.file} has disappeared; keeping the keys in force`);
      if (latest.text !== this.#text) this.#install(latest.set, latest.text, 'reload');
    } catch (err) {
      this.emit('error', err);
    }
  });

  /** Watches the file for changes made by other processes (see watchForChanges). */
  watch(intervalMs = 500): void {
    if (this.file === null || this.#unwatch) return;
    this.#unwatch = watchForChanges(this.file, () => void this.reload(), intervalMs);
  }

  /** Stops watching. */
  close(): void {
    this.#unwatch?.();
    this.#unwatch = null;
  }

  #install(set: KeySet, text: string, reason: 'update' | 'reload'): void {
    this.#current = set;
    this.#text = text;
    this.emit('change', set, reason);
  }
}

const lockPath = (file: string): string => `${file}.lock`;

/** Reads and parses the file; null when it doesn't exist; a FileError naming the file otherwise. */
async function load(file: string): Promise<{ set: KeySet; text: string } | null> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') return null;
    throw new FileError(`cannot read keyring ${file} (${e.code ?? e.message})`);
  }
  await checkPrivate(file, 'keyring');
  try {
    return { set: KeySet.parse(text), text };
  } catch (err) {
    throw new FileError(`keyring ${file} is not valid: ${(err as Error).message}; it was left untouched`);
  }
}
