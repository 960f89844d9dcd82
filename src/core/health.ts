/**
 * Liveness and readiness (`hc`, GET /health, GET /ready): one place that knows whether this
 * server can serve, shared by every transport.
 * - Liveness: the process answers; with the keyring's public fingerprint and primary version id.
 * - Readiness: every check passes. The keyring check is built in (the keys in force are the
 *   stored ones: the last reload did not fail); a transport adds its own (its listener is up).
 *   A failing check is named with a reason for people that names no file and shows no key; the
 *   log has the details.
 */
import type { Keyring } from '../keys/keyring.js';

/** Public facts about the keys in force. */
export interface KeyringFacts {
  /** A hash of every key's name, version ids and states (see KeyBook.fingerprint). */
  fingerprint: string;
  /** The id of the primary version of the key `default`. */
  primary: string;
  /** How many named keys. */
  keys: number;
}

/** One readiness check's result. */
export interface CheckResult {
  name: string;
  ok: boolean;
  reason?: string;
}

/** What `hc` and GET /ready answer. */
export interface Readiness {
  status: 'ready' | 'not_ready';
  checks: CheckResult[];
  keyring: KeyringFacts;
}

/** A check: null when it passes, else why not (for people: no file name, no key). */
export type Check = () => string | null;

export class Health {
  readonly #keyring: Keyring;
  readonly #checks = new Map<string, Check>();
  /** The facts of the last book asked about: a book never changes, a change is a new book. */
  #facts: { book: object; facts: KeyringFacts } | null = null;

  constructor(keyring: Keyring) {
    this.#keyring = keyring;
    this.add('keyring', () =>
      keyring.problem === null ? null : 'the keyring changed and could not be loaded: the last good keys stay in force; the server log says why',
    );
  }

  /** Adds (or replaces) a named readiness check. */
  add(name: string, check: Check): void {
    this.#checks.set(name, check);
  }

  /** Removes a check (a listener that closed on purpose). */
  remove(name: string): void {
    this.#checks.delete(name);
  }

  /** Public facts about the keys in force. */
  facts(): KeyringFacts {
    const book = this.#keyring.book;
    if (this.#facts?.book !== book) this.#facts = { book, facts: Object.freeze({ fingerprint: book.fingerprint(), primary: this.#keyring.current.primaryId, keys: book.size }) };
    return this.#facts.facts;
  }

  /** Liveness: the process answers. */
  live(): { status: 'ok'; keyring: KeyringFacts } {
    return { status: 'ok', keyring: this.facts() };
  }

  /** Readiness: every check, and whether they all pass. */
  ready(): Readiness {
    const checks: CheckResult[] = [];
    for (const [name, check] of this.#checks) {
      let reason: string | null;
      try {
        reason = check();
      } catch {
        reason = 'the check itself failed';
      }
      checks.push(reason === null ? { name, ok: true } : { name, ok: false, reason });
    }
    return { status: checks.every((c) => c.ok) ? 'ready' : 'not_ready', checks, keyring: this.facts() };
  }
}
