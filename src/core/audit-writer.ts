/**
 * The audit log's writer thread (see src/core/audit.ts): turns batches of entries into JSON lines,
 * computing the HMACs of the tokens and plaintexts they carry, and appends each batch to the file
 * in one write. HMACs cost more than the rest of a small request: here they cost the event loop
 * nothing. Never logs: it answers each batch with its outcome and the main thread says the rest.
 *
 * In: `{ seq, time, items }` (a batch: for each entry `json, tokenIn, tokenOut, plaintext`, '' for
 * none; `seq` the last entry's number), `{ fd }` (write there from now on:
 * a reopen), `{ sync: true }`, `{ close: true }` (sync), `{ failWith }` (a test seam).
 * Out: `{ seq, error }` (error null when written), `{ synced: error }`, `{ release: fd }` (the old
 * descriptor of a reopen, synced: the main thread closes it), `{ closed: true }`.
 */
import { fdatasync, fdatasyncSync, fstatSync, writeSync } from 'node:fs';
import { createHmac, hash } from 'node:crypto';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';

/** What the main thread gives the writer. */
export interface WriterData {
  fd: number;
  /** The HMAC key of the log. */
  salt: Uint8Array;
  /** The descriptor is standard output: never synced, checked or closed. */
  stdout: boolean;
  /** Marks the thread as the audit writer. */
  auditWriter: true;
}

/** Values up to this many bytes are HMAC'd with the preset blocks; longer ones with createHmac. */
const INLINE = 4096;

/** A batch. */
export interface BatchMessage {
  seq: number;
  time: string;
  items: string[];
}

/** Renders batches into lines and appends them to a descriptor. */
export class LineWriter {
  fd: number;
  readonly #stdout: boolean;
  readonly #salt: Buffer;
  readonly #inner = Buffer.alloc(64 + INLINE);
  readonly #outer = Buffer.alloc(64 + 32);
  /** A write stopped partway through a line: the next one starts on a new line. */
  #torn = false;
  /** Test seam: every write fails with this errno code. */
  failWith: string | null = null;

  constructor(fd: number, salt: Uint8Array, stdout: boolean) {
    this.fd = fd;
    this.#stdout = stdout;
    this.#salt = Buffer.from(salt);
    for (let i = 0; i < 64; i++) {
      this.#inner[i] = (this.#salt[i] ?? 0) ^ 0x36;
      this.#outer[i] = (this.#salt[i] ?? 0) ^ 0x5c;
    }
  }

  /** Writes a batch; null when written, else the errno code (`removed`: the file has no name any more). */
  write(batch: BatchMessage): string | null {
    const buf = this.#render(batch.time, batch.items);
    let at = 0;
    try {
      if (this.failWith) throw Object.assign(new Error(this.failWith), { code: this.failWith });
      while (at < buf.length) at += writeSync(this.fd, buf, at, buf.length - at);
    } catch (err) {
      this.#torn ||= at > 0;
      return (err as NodeJS.ErrnoException).code ?? 'error';
    }
    this.#torn = false;
    // lines in a file that has no name any more are lost
    if (!this.#stdout && fstatSync(this.fd).nlink === 0) return 'removed';
    return null;
  }

  /** Writes from now on to fd (a reopen); the new file starts on a line of its own. */
  switchTo(fd: number): void {
    this.fd = fd;
    this.#torn = false;
  }

  /** HMAC-SHA256 under the salt (at most 64 bytes), in hex: two one-shot hashes over preset blocks. */
  #hmac(value: string): string {
    if (value.length > INLINE) return createHmac('sha256', this.#salt).update(value, 'latin1').digest('hex');
    const n = this.#inner.write(value, 64, 'latin1');
    hash('sha256', this.#inner.subarray(0, 64 + n), 'buffer').copy(this.#outer, 64);
    return hash('sha256', this.#outer, 'hex');
  }

  #render(time: string, f: string[]): Buffer {
    let out = this.#torn ? '\n' : '';
    for (let i = 0; i + 3 < f.length; i += 4) {
      out += `{"time":"${time}",${f[i]!}`;
      const tokenIn = f[i + 1]!;
      const tokenOut = f[i + 2]!;
      if (tokenIn !== '') out += `,"token_hmac":"${this.#hmac(tokenIn)}"`;
      // the token made: token_hmac, or new_token_hmac beside the token that went in (rw)
      if (tokenOut !== '') out += `,"${tokenIn === '' ? 'token_hmac' : 'new_token_hmac'}":"${this.#hmac(tokenOut)}"`;
      if (f[i + 3] !== '') out += `,"plaintext_hmac":"${this.#hmac(f[i + 3]!)}"`;
      out += '}\n';
    }
    return Buffer.from(out, 'latin1');
  }
}

type Message = BatchMessage | { fd: number } | { sync: true } | { close: true } | { failWith: string | null };

if (!isMainThread && (workerData as WriterData | null)?.auditWriter) {
  const data = workerData as WriterData;
  const writer = new LineWriter(data.fd, data.salt, data.stdout);
  parentPort!.on('message', (msg: Message) => {
    if ('seq' in msg) {
      parentPort!.postMessage({ seq: msg.seq, error: writer.write(msg) });
    } else if ('fd' in msg) {
      const old = writer.fd;
      writer.switchTo(msg.fd);
      // descriptors belong to the main thread, which opened them: it closes them
      fdatasync(old, () => parentPort!.postMessage({ release: old }));
    } else if ('sync' in msg) {
      if (data.stdout) return;
      fdatasync(writer.fd, (err) => parentPort!.postMessage({ synced: err ? err.code ?? 'error' : null }));
    } else if ('failWith' in msg) {
      writer.failWith = msg.failWith;
    } else {
      if (!data.stdout) {
        try {
          // the last sync waits: a clean shutdown leaves every line on disk
          fdatasyncSync(writer.fd);
        } catch {
          // closing: nothing more to say
        }
      }
      parentPort!.postMessage({ closed: true });
    }
  });
}
