/**
 * One budget for the payload bytes the server holds: bytes buffered by connections (unfinished
 * frames, requests waiting to run, replies waiting to be written), HTTP bodies, and payloads on
 * the worker pool. Past the limit, transports stop reading and the dispatcher answers `busy` to
 * new payloads; whoever waits is called back once usage falls below the limit again.
 *
 * Rule: every take() is matched by a give() of the same size, whatever happens to the request.
 */

/** The shared budget. */
export class MemoryBudget {
  readonly limit: number;
  #used = 0;
  #peak = 0;
  readonly #waiters = new Set<() => void>();

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Bytes held now. */
  get used(): number {
    return this.#used;
  }

  /** The most bytes ever held at once. */
  get peak(): number {
    return this.#peak;
  }

  /** True while usage is at or past the limit. */
  get exhausted(): boolean {
    return this.#used >= this.limit;
  }

  /** Changes the usage by delta bytes (negative to give back). */
  adjust(delta: number): void {
    this.#used += delta;
    if (this.#used > this.#peak) this.#peak = this.#used;
    if (delta < 0 && this.#used < this.limit && this.#waiters.size > 0) {
      const waiters = [...this.#waiters];
      this.#waiters.clear();
      for (const w of waiters) w();
    }
  }

  /** Calls resume once usage is below the limit (at once if it is); returns a cancel function. */
  whenAvailable(resume: () => void): () => void {
    if (!this.exhausted) {
      resume();
      return () => undefined;
    }
    this.#waiters.add(resume);
    return () => this.#waiters.delete(resume);
  }
}
