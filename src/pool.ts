/**
 * Worker threads for large payloads: a message or token of OFFLOAD_BYTES or more is encrypted or
 * decrypted off the event loop, so it never stalls small requests.
 *
 * Rules:
 * - Threads start on the first large job. Each gets the keys in force when it starts, and every
 *   change before any later job (messages to a thread are handled in order). A job therefore uses
 *   the keys in force when it was sent, as a synchronous call would.
 * - Payloads are copied once into a buffer of their own and transferred: a view sent as it is
 *   would clone its whole backing buffer (a socket chunk, Buffer's pool).
 * - A thread that dies fails its jobs with `internal` and is replaced by the next job.
 * - A thread holds the process open only while it has jobs.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { CryptError } from './errors.js';
import type { ErrorCode } from './errors.js';
import type { KeySet } from './keyring.js';
import type { JobMessage, KeysMessage, ResultMessage } from './worker.js';

/** Payloads of at least this many bytes go to a worker thread. */
export const OFFLOAD_BYTES = 64 * 1024;

interface Pending {
  resolve(result: ResultMessage): void;
  reject(err: Error): void;
}

interface Thread {
  worker: Worker;
  pending: Map<number, Pending>;
}

/** The default number of threads: the cores, shared by the server processes, at most 4. */
export const defaultThreads = (processes = 1): number => Math.max(1, Math.min(4, Math.floor(availableParallelism() / processes)));

/** A pool of crypto worker threads over the keys in force. */
export class CryptoPool {
  readonly #size: number;
  readonly #script: URL;
  readonly #threads: Thread[] = [];
  #keys: string[];
  #next = 0;
  #closed = false;

  /** @param script the worker's entry point (a seam for tests) */
  constructor(size: number, keys: KeySet, script: URL = new URL('./worker.js', import.meta.url)) {
    this.#size = size;
    this.#script = script;
    this.#keys = keys.exportDecrypting();
  }

  /** Sends a new key set to every thread (before any later job). */
  updateKeys(keys: KeySet): void {
    this.#keys = keys.exportDecrypting();
    const msg: KeysMessage = { type: 'keys', decrypting: this.#keys };
    for (const t of this.#threads) t.worker.postMessage(msg);
  }

  /** Encrypts on a thread; resolves with the token. */
  async encrypt(plaintext: Uint8Array): Promise<string> {
    const r = await this.#run('encrypt', plaintext);
    return (r as { token: string }).token;
  }

  /** Decrypts on a thread. */
  async decrypt(token: string | Uint8Array, ttl: number | undefined): Promise<{ plaintext: Buffer; timestamp: number }> {
    const r = (await this.#run('decrypt', token, ttl)) as { plaintext: Uint8Array; timestamp: number };
    return { plaintext: Buffer.from(r.plaintext.buffer, r.plaintext.byteOffset, r.plaintext.length), timestamp: r.timestamp };
  }

  /** Rewraps on a thread; resolves with the new token. */
  async rewrap(token: string | Uint8Array): Promise<string> {
    const r = await this.#run('rewrap', token);
    return (r as { token: string }).token;
  }

  /** Threads running now. */
  get threads(): number {
    return this.#threads.length;
  }

  /** Stops every thread; later jobs fail. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#threads.splice(0).map((t) => t.worker.terminate()));
  }

  #run(op: JobMessage['op'], input: Uint8Array | string, ttl?: number): Promise<ResultMessage> {
    if (this.#closed) return Promise.reject(new CryptError('internal', 'shutting down'));
    // bytes are copied into a buffer of their own, which is then transferred (see the rules above)
    const data = typeof input === 'string' ? input : new Uint8Array(input);
    const thread = this.#pick();
    const id = this.#next++;
    return new Promise<ResultMessage>((resolve, reject) => {
      if (thread.pending.size === 0) thread.worker.ref();
      thread.pending.set(id, { resolve, reject });
      const job: JobMessage = { type: 'job', id, op, data, ttl };
      thread.worker.postMessage(job, typeof data === 'string' ? [] : [data.buffer as ArrayBuffer]);
    }).then((r) => {
      if (!r.ok) throw new CryptError(r.code as ErrorCode, r.message);
      return r;
    });
  }

  /** The least busy thread, starting a new one while the pool is not full. */
  #pick(): Thread {
    let best: Thread | undefined;
    for (const t of this.#threads) if (!best || t.pending.size < best.pending.size) best = t;
    if (best && (best.pending.size === 0 || this.#threads.length >= this.#size)) return best;
    const worker = new Worker(this.#script, { workerData: { decrypting: this.#keys } });
    worker.unref();
    const thread: Thread = { worker, pending: new Map() };
    worker.on('message', (r: ResultMessage) => {
      const p = thread.pending.get(r.id);
      thread.pending.delete(r.id);
      if (thread.pending.size === 0) worker.unref();
      p?.resolve(r);
    });
    const fail = () => {
      const i = this.#threads.indexOf(thread);
      if (i !== -1) this.#threads.splice(i, 1);
      for (const p of thread.pending.values()) p.reject(new CryptError('internal'));
      thread.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', fail);
    this.#threads.push(thread);
    return thread;
  }
}
