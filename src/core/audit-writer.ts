/**
 * The audit log's writer (see src/core/audit.ts): turns a batch of entries into JSON lines,
 * computing the HMACs of the tokens and plaintexts they carry, and appends the batch to the file
 * in one write. Never logs: it answers each batch with its outcome and the log says the rest.
 */
import { fstatSync, writeSync } from 'node:fs';
import { createHmac, hash } from 'node:crypto';

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
