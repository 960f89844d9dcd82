/**
 * Where a keyring's text lives: the storage seam. A store loads the text with a version, saves
 * new text only if the stored version is still the one the change was made from (compare and
 * swap), and tells when the text may have changed. The keyring (src/keys/keyring.ts) knows
 * nothing else about storage; a distributed store can replace the file without touching it.
 *
 * Rules:
 * - FileStore: the file is read with every secret-file check (src/keys/files.ts); a save takes
 *   the lock (src/keys/lock.ts), re-reads, compares, writes atomically, and checks the lock is
 *   still its own just before the rename. A missing file is never silently recreated by a save.
 * - ListStore: FERNET_KEYS, read-only.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FileError, PID_NAMESPACE, isAlive, readSecret, watchForChanges, writeAtomic } from './files.js';
import { withLock } from './lock.js';

/** Stored text and a version that changes whenever the text does. */
export interface Stored {
  text: string;
  version: string;
}

/** The storage seam of a keyring. */
export interface KeyStore {
  /** Where the keys are, for messages: a path, or FERNET_KEYS. */
  readonly where: string;
  /** False for a store that can't be written (FERNET_KEYS). */
  readonly writable: boolean;
  /** The stored text, or null when there is none. */
  load(): Promise<Stored | null>;
  /**
   * Saves text if the stored version is still `expected` (null: only if nothing is stored yet);
   * resolves with the new version, or null when the version had changed (nothing was written).
   */
  save(text: string, expected: string | null): Promise<string | null>;
  /** Calls onChange when the stored text may have changed; returns the stop function. */
  watch(onChange: () => void, intervalMs?: number): () => void;
}

const versionOf = (text: string): string => createHash('sha256').update(text).digest('hex');

/** A keyring file. */
export class FileStore implements KeyStore {
  readonly where: string;
  readonly writable = true;
  readonly #what: string;

  constructor(path: string, what = 'keyring') {
    this.where = path;
    this.#what = what;
  }

  async load(): Promise<Stored | null> {
    const bytes = await readSecret(this.where, this.#what);
    if (bytes === null) return null;
    const text = bytes.toString('utf8');
    bytes.fill(0);
    return { text, version: versionOf(text) };
  }

  async save(text: string, expected: string | null): Promise<string | null> {
    return withLock(`${this.where}.lock`, async (lock) => {
      await removeLeftovers(this.where);
      const current = await this.load();
      if ((current?.version ?? null) !== expected) return null;
      await writeAtomic(this.where, text, () => lock.verify());
      return versionOf(text);
    });
  }

  watch(onChange: () => void, intervalMs = 500): () => void {
    return watchForChanges(this.where, onChange, intervalMs);
  }
}

/** Keys given as a list (FERNET_KEYS): read-only. */
export class ListStore implements KeyStore {
  readonly where = 'FERNET_KEYS';
  readonly writable = false;
  readonly #text: string;

  constructor(text: string) {
    this.#text = text;
  }

  async load(): Promise<Stored> {
    return { text: this.#text, version: 'list' };
  }

  async save(): Promise<string | null> {
    throw new FileError('FERNET_KEYS is read-only');
  }

  watch(): () => void {
    return () => undefined;
  }
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Removes what killed writers left beside path: temp files and lock attempts of dead processes of
 * this pid namespace (their names carry pid and namespace). Lock files themselves are left to the
 * lock's own rules.
 */
export async function removeLeftovers(path: string): Promise<void> {
  const dir = dirname(path);
  const base = escape(basename(path));
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  // .<base>.<pid>-<ns>.<hex>.tmp, and <base>.lock[.break.<id>...].<pid>-<ns>.<16 hex> attempt files
  const pattern = new RegExp(`^(?:\\.${base}\\.(\\d+)-(\\d+)\\.[0-9a-f]+\\.tmp|${base}\\.lock(?:\\.break\\.[0-9a-z-]+)*\\.(\\d+)-(\\d+)\\.[0-9a-f]{16})$`);
  const stale = names.filter((n) => {
    const m = pattern.exec(n);
    if (!m) return false;
    const pid = Number(m[1] ?? m[3]);
    const ns = m[2] ?? m[4];
    return ns === PID_NAMESPACE && pid > 0 && pid !== process.pid && !isAlive(pid);
  });
  await Promise.all(stale.map((n) => fs.rm(join(dir, n), { force: true })));
}
