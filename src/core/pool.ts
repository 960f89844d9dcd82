/**
 * Worker threads for large payloads: a data operation (src/core/operations.ts) on OFFLOAD_BYTES or
 * more runs off the event loop, so it never stalls small requests. The dispatcher decides.
 *
 * Rules:
 * - Threads start on the first large job. Each job brings the request's resolved keys (the named
 *   key's versions, or their derivations for the request's context), so it uses exactly the keys
 *   in force when it was sent, as a synchronous call would.
 * - Keys go to threads as raw bytes in buffers of their own, transferred and wiped there: the
 *   pool keeps no copy (no base64 string of a key lingers in memory).
 * - Payloads are copied once into a buffer of their own and transferred: a view sent as it is
 *   would clone its whole backing buffer (a socket chunk, Buffer's pool).
 * - A thread that dies fails its jobs with `internal` and is replaced by the next job.
 * - A thread holds the process open only while it has jobs.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { CryptError, errorCode } from './errors.js';
import type { ResolvedKey } from '../keys/keyring.js';
import type { Operation, Options, Payload, ResultKind, Results } from './operations.js';
import type { JobMessage, ResultMessage } from './worker.js';

/** Payloads of at least this many bytes go to a worker thread. */
export const OFFLOAD_BYTES = 64 * 1024;

interface Pending {
  resolve(result: ResultMessage): void;
  reject(err: Error): void;
}

interface Thread {
  worker: Worker;
  pending: Map<number, Pending>;
  /** Jobs this thread has finished. */
  done: number;
  /** Its number, for metrics: 1, 2... in the order threads started. */
  index: number;
}

/** The default number of threads: the cores, shared by the server processes, at most 4. */
export const defaultThreads = (processes = 1): number => Math.max(1, Math.min(4, Math.floor(availableParallelism() / processes)));

/** A pool of crypto worker threads. */
export class CryptoPool {
  readonly #size: number;
  readonly #script: URL;
  readonly #threads: Thread[] = [];
  #next = 0;
  #started = 0;
  #closed = false;

  /** @param script the worker's entry point (a seam for tests) */
  constructor(size: number, script: URL = new URL('./worker.js', import.meta.url)) {
    this.#size = size;
    this.#script = script;
  }

  /** Runs a data operation on a thread, with the request's keys. */
  async run<K extends ResultKind>(op: Operation<K>, keys: ResolvedKey, input: Payload, options: Options): Promise<Results[K]> {
    const r = (await this.#run(op.command, keys, input, options)) as Results[K];
    const plaintext = (r as { plaintext?: Uint8Array }).plaintext;
    if (plaintext) (r as { plaintext: Buffer }).plaintext = Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.length);
    return r;
  }

  /** Threads running now. */
  get threads(): number {
    return this.#threads.length;
  }

  /** What each running thread is doing, for metrics: jobs waiting or running, jobs done, and its event-loop utilization since it started. */
  stats(): Array<{ thread: number; queued: number; done: number; utilization: number }> {
    return this.#threads.map((t) => ({ thread: t.index, queued: t.pending.size, done: t.done, utilization: t.worker.performance.eventLoopUtilization().utilization }));
  }

  /** Stops every thread; later jobs fail. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#threads.splice(0).map((t) => t.worker.terminate()));
  }

  #run(command: string, keys: ResolvedKey, input: Payload, options: Options): Promise<unknown> {
    if (this.#closed) return Promise.reject(new CryptError('unavailable', 'the server is shutting down'));
    // bytes are copied into a buffer of their own, which is then transferred (see the rules above)
    const data = typeof input === 'string' ? input : new Uint8Array(input);
    const secrets = keys.decrypting.map((k) => k.exportBytes());
    const thread = this.#pick();
    const id = this.#next++;
    return new Promise<ResultMessage>((resolve, reject) => {
      if (thread.pending.size === 0) thread.worker.ref();
      thread.pending.set(id, { resolve, reject });
      const job: JobMessage = { id, command, data, options: { ttl: options.ttl }, secrets, ids: [...keys.ids], name: keys.name };
      const transfer = secrets.map((s) => s.buffer as ArrayBuffer);
      if (typeof data !== 'string') transfer.push(data.buffer as ArrayBuffer);
      thread.worker.postMessage(job, transfer);
    }).then((r) => {
      if (!r.ok) throw new CryptError(errorCode(r.code) ?? 'internal', r.message);
      return r.result;
    });
  }

  /** The least busy thread, starting a new one while the pool is not full. */
  #pick(): Thread {
    let best: Thread | undefined;
    for (const t of this.#threads) if (!best || t.pending.size < best.pending.size) best = t;
    if (best && (best.pending.size === 0 || this.#threads.length >= this.#size)) return best;
    const worker = new Worker(this.#script);
    worker.unref();
    const thread: Thread = { worker, pending: new Map(), done: 0, index: ++this.#started };
    worker.on('message', (r: ResultMessage) => {
      const p = thread.pending.get(r.id);
      thread.pending.delete(r.id);
      thread.done++;
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
