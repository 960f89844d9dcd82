/**
 * The audit log (--audit-file): one JSON line per operation, from every face, written before the
 * operation's answer is released. The dispatcher is its only writer (and `crypt-server keys` on
 * the command line, through `recordNow`).
 *
 * Rules:
 * - Fail closed, as Vault's audit devices: an operation whose line could not be written is
 *   answered `unavailable`, never `ok`. Each entry has a number (`add` returns it); a transport
 *   holds an answer until `written(n)` (or `whenWritten(n, ...)`), then refuses it when `failures`
 *   moved since its request began: its line may be among those lost. While the log is failing,
 *   operations that change keys are refused before they run; each refusal's line is a new
 *   attempt, and the first batch written ends the failure.
 * - Buffered: the entries of one turn of the event loop are one batch, rendered with their HMACs
 *   and appended in one write at the end of that turn (src/core/audit-writer.ts); the answers
 *   held for it leave right after. "Recorded" means the line is in the operating system's hands
 *   (the page cache) before the answer leaves; it reaches the disk within `syncMs` (fdatasync off
 *   the event loop, 1 s by default) and at a clean shutdown. A line may record an operation whose
 *   answer was then refused (answered with a later failed batch): never the reverse.
 * - Never data: tokens, and plaintexts only with --audit-hmac-plaintext, go in as HMAC-SHA256 under
 *   the log's salt (a 32-byte secret file beside the keyring), never in clear; access tokens as an
 *   HMAC id. No key, file key or access secret ever reaches a line.
 * - Every string written is from a closed set (ops, transports, outcome codes, key names and ids,
 *   request ids, peer addresses, all checked where they are made): the JSON is written without a
 *   serializer.
 */
import { constants, fdatasync, open as openCb, close as closeCb, fstat as fstatCb } from 'node:fs';
import type { Stats } from 'node:fs';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { CryptError } from './errors.js';
import type { Caller } from './access.js';
import type { Payload } from './operations.js';
import { FileError, checkDirectory, myUid, readSecret, writeAtomic } from '../keys/files.js';
import { LineWriter } from './audit-writer.js';
import type { BatchMessage } from './audit-writer.js';

const openFile = promisify(openCb);
const closeFile = promisify(closeCb);
const fstat = promisify(fstatCb) as (fd: number) => Promise<Stats>;

/** What an audit log is made of. */
export interface AuditOptions {
  /** The file, or `-` for standard output. */
  path: string;
  /** The HMAC key (see loadSalt). */
  salt: Buffer;
  /** Also HMAC each plaintext that goes in or comes out. */
  hmacPlaintext?: boolean;
  log: Logger;
  /** Milliseconds between syncs to disk; 0 syncs every batch. */
  syncMs?: number;
  /** Called once for each write that failed (the metrics count it). */
  onWriteFailure?: () => void;
}

/** One line, as the dispatcher knows it. */
export interface AuditEntry {
  requestId: string;
  caller: Caller;
  /** The caller's id when it is not the access token's or loopback (`user:<name>` on the command line). */
  callerId?: string;
  op: string;
  key: string | null;
  keyId: string | null;
  outcome: string;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  /** The token that went in, and the one that came out. */
  tokenIn: Payload | null;
  tokenOut: Payload | null;
  /** The plaintext that went in or came out (recorded only with hmacPlaintext). */
  plaintext: Payload | null;
}

const text = (p: Payload): string => (typeof p === 'string' ? p : Buffer.from(p.buffer, p.byteOffset, p.length).toString('latin1'));

/** The salt of the audit log at path: 32 random bytes, made on first use, owner-only. */
export async function loadSalt(path: string): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    const raw = await readSecret(path, 'audit salt file', 1024);
    if (raw) {
      const salt = Buffer.from(raw.toString('latin1').trim(), 'base64url');
      if (salt.length !== 32) throw new FileError(`audit salt file ${path} does not hold 32 bytes of base64url: restore it from a backup (the HMACs in the audit log are made with it)`);
      return salt;
    }
    if (attempt > 0) throw new FileError(`cannot create audit salt file ${path}`);
    await checkDirectory(path, 'audit salt file');
    try {
      await writeAtomic(path, randomBytes(32).toString('base64url') + '\n', null, true);
    } catch (err) {
      // another server made it first: read theirs
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new FileError(`cannot create audit salt file ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
}

/** Opens the audit file for appending: created 0600, never through a link, refused when others may read it. */
export async function openAuditFile(path: string): Promise<number> {
  await checkDirectory(path, 'audit file');
  let fd: number;
  try {
    fd = await openFile(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new FileError(`audit file ${path} is a symbolic link: give the path of the file itself`);
    throw new FileError(`cannot open audit file ${path} for appending (${code ?? 'error'})`);
  }
  const st = await fstat(fd);
  const problem = !st.isFile()
    ? 'is not a regular file'
    : st.uid !== myUid()
      ? `is owned by uid ${st.uid}, not by this user`
      : (st.mode & 0o077) !== 0
        ? `has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: others may read who did what; run chmod 600 ${path}`
        : null;
  if (problem) {
    await closeFile(fd);
    throw new FileError(`audit file ${path} ${problem}`);
  }
  return fd;
}

/** The audit log of a running server. */
export class AuditLog {
  readonly path: string;
  readonly hmacPlaintext: boolean;
  readonly #salt: Buffer;
  readonly #log: Logger;
  readonly #onWriteFailure: () => void;
  readonly #writer: LineWriter;
  readonly #stdout: boolean;
  #items: string[] = [];
  #scheduled = false;
  /** The number of the last entry added, and of the last one written (or lost). */
  #added = 0;
  #done = 0;
  #failures = 0;
  #failing: string | null = null;
  #closed = false;
  #reopening = false;
  #waiters: Array<{ seq: number; then: () => void }> = [];
  readonly #timer: NodeJS.Timeout | null;
  readonly #callers = new WeakMap<Buffer, string>();
  /** The ISO time of the last millisecond sent. */
  #ms = 0;
  #iso = '';

  private constructor(options: AuditOptions, fd: number) {
    this.path = options.path;
    this.hmacPlaintext = options.hmacPlaintext ?? false;
    this.#salt = options.salt;
    this.#log = options.log;
    this.#onWriteFailure = options.onWriteFailure ?? (() => undefined);
    this.#stdout = options.path === '-';
    const key = options.salt.length > 64 ? createHash('sha256').update(options.salt).digest() : options.salt;
    this.#writer = new LineWriter(fd, key, this.#stdout);
    const syncMs = options.syncMs ?? 1000;
    let synced = 0;
    this.#timer = syncMs > 0 && !this.#stdout ? setInterval(() => {
      if (this.#done === synced || this.#closed) return;
      synced = this.#done;
      fdatasync(this.#writer.fd, (err) => err && this.#failed(err.code ?? 'fdatasync'));
    }, syncMs) : null;
    this.#timer?.unref();
  }

  /** Opens the log: the file, checked as openAuditFile says. */
  static async open(options: AuditOptions): Promise<AuditLog> {
    const fd = options.path === '-' ? 1 : await openAuditFile(options.path);
    return new AuditLog(options, fd);
  }

  /** Why the last batch could not be written, or null when it was. */
  get failing(): string | null {
    return this.#failing;
  }

  /** How many batches could not be written: an answer whose request began before a change of it is refused. */
  get failures(): number {
    return this.#failures;
  }

  /** The number of the last entry added. */
  get last(): number {
    return this.#added;
  }

  /** True once entry n is written, or lost (then `failures` has moved). */
  written(n: number): boolean {
    return n <= this.#done;
  }

  /** Calls back once entry n is written or lost. */
  whenWritten(n: number, then: () => void): void {
    if (n <= this.#done) return then();
    this.#waiters.push({ seq: n, then });
  }

  /** A promise of whenWritten. */
  settled(n: number): Promise<void> {
    return n <= this.#done ? Promise.resolve() : new Promise((resolve) => this.whenWritten(n, resolve));
  }

  /** HMAC-SHA256 of a value under the log's salt, in hex: what a line holds for that token or plaintext. */
  hash(value: Payload): string {
    return createHmac('sha256', this.#salt).update(value).digest('hex');
  }

  /** The id a line gives the caller of an access token: an HMAC of its SHA-256 digest, never the secret. */
  callerIdOf(digest: Buffer): string {
    let id = this.#callers.get(digest);
    if (id === undefined) {
      id = `token:${createHmac('sha256', this.#salt).update('crypt caller v1\0').update(digest).digest('hex').slice(0, 16)}`;
      this.#callers.set(digest, id);
    }
    return id;
  }

  /** The caller id of an access token given as its secret, or as `sha256:<hex>` as a tokens file may hold it. */
  callerIdOfSecret(secret: Payload): string {
    const s = text(secret);
    const digest = /^sha256:[0-9a-f]{64}$/i.test(s) ? Buffer.from(s.slice(7), 'hex') : createHash('sha256').update(secret).digest();
    return this.callerIdOf(digest);
  }

  /** Queues an entry for the batch of this turn of the event loop; returns its number. */
  add(e: AuditEntry): number {
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.#send());
    }
    const c = e.caller;
    const caller = e.callerId ?? (c.digest ? this.callerIdOf(c.digest) : c.loopback ? 'loopback' : 'anonymous');
    this.#items.push(
      `"request_id":"${e.requestId}","pid":${process.pid},"transport":"${c.transport}","peer":"${c.peer}","caller":"${caller}","op":"${e.op}","key":${e.key === null ? 'null' : `"${e.key}"`},"key_id":${e.keyId === null ? 'null' : `"${e.keyId}"`},"outcome":"${e.outcome}","bytes_in":${e.bytesIn},"bytes_out":${e.bytesOut},"duration_ms":${e.durationMs}`,
      e.tokenIn === null ? '' : text(e.tokenIn),
      e.tokenOut === null ? '' : text(e.tokenOut),
      e.plaintext === null || !this.hmacPlaintext ? '' : text(e.plaintext),
    );
    return ++this.#added;
  }

  /** Reopens the file at its path (SIGHUP, after logrotate moved it; or the file was removed). */
  async reopen(why: 'signal' | 'removed' = 'signal'): Promise<void> {
    if (this.#stdout || this.#closed || this.#reopening) return;
    this.#reopening = true;
    try {
      const fd = await openAuditFile(this.path);
      if (this.#closed) return void closeCb(fd, () => undefined);
      const old = this.#writer.fd;
      this.#writer.switchTo(fd);
      fdatasync(old, () => closeCb(old, () => undefined));
      this.#log.info({ audit: this.path, why }, 'audit log reopened');
    } catch (err) {
      const reason = err instanceof FileError ? err.message : (err as Error).message;
      if (why === 'removed') this.#log.error({ audit: this.path, reason }, 'audit file removed and not made again: operations stay refused');
      else this.#log.error({ audit: this.path, reason }, 'audit log not reopened: lines still go to the file that was open');
    } finally {
      this.#reopening = false;
    }
  }

  /** Test seam: makes the writer fail every write with an errno code (null: stop failing). */
  injectFailure(code: string | null): void {
    this.#writer.failWith = code;
  }

  /** Writes what is queued, syncs it to disk and closes the file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#send();
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#stdout) return;
    const fd = this.#writer.fd;
    // the last sync waits: a clean shutdown leaves every line on disk
    await new Promise<void>((resolve) => fdatasync(fd, () => resolve()));
    await closeFile(fd);
  }

  #send(): void {
    this.#scheduled = false;
    if (this.#items.length === 0) return;
    const items = this.#items;
    this.#items = [];
    const batch: BatchMessage = { seq: this.#added, time: this.#time(), items };
    this.#settle(batch.seq, this.#closed ? 'closed' : this.#writer.write(batch));
  }

  #settle(seq: number, error: string | null): void {
    if (error === null) {
      if (this.#failing !== null) {
        this.#failing = null;
        this.#log.warn({ audit: this.path }, 'audit log writable again: operations are served');
      }
    } else {
      this.#failed(error);
      if (error === 'removed') void this.reopen('removed');
    }
    this.#done = Math.max(this.#done, seq);
    if (this.#waiters.length > 0) {
      const due = this.#waiters.filter((w) => w.seq <= this.#done);
      if (due.length > 0) {
        this.#waiters = this.#waiters.filter((w) => w.seq > this.#done);
        for (const w of due) w.then();
      }
    }
  }

  #failed(code: string): void {
    this.#failures++;
    this.#onWriteFailure();
    if (this.#failing === null) this.#log.error({ audit: this.path, code }, 'audit log cannot be written: operations are refused (unavailable) until a line can be written');
    this.#failing = `the audit log cannot be written (${code})`;
  }

  #time(): string {
    const ms = Date.now();
    if (ms !== this.#ms) {
      this.#ms = ms;
      this.#iso = new Date(ms).toISOString();
    }
    return this.#iso;
  }

  /** The error of an answer whose line may be lost. */
  unavailable(): CryptError {
    return new CryptError('unavailable', `refused: ${this.#failing ?? 'the audit log could not record it'}; the server log says why`, { cause: AUDIT_FAILURE });
  }
}

/** The cause of every refusal for want of an audit line: already logged by the audit log itself. */
export const AUDIT_FAILURE = new Error('audit log failure');
