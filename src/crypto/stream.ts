/**
 * crypt-stream/1, files and streams of any size (docs/stream-format.md): a header naming the key
 * that wraps the file key, and age's STREAM payload (C2SP agead) under a key derived from it.
 * Pure: no I/O. The header is parsed before the file key is known (the service unwraps the token
 * it holds) and verified after.
 *
 * Rules:
 * - Decryption releases a chunk's plaintext only once its tag verified; a chunk is the final one
 *   only when nothing follows it, so truncation at a chunk boundary, reordered, repeated or
 *   appended chunks all fail. An empty final chunk is valid only as the whole of an empty stream.
 * - The encryptor holds back the last full chunk until it knows whether more data follows: a
 *   stream of exactly k * 65,536 bytes ends with a full final chunk, never an empty one.
 * - Every failure is a StreamError (`invalid_stream`) saying what failed, in general terms; no
 *   message carries a key, a nonce, or data.
 * - push() keeps views of the buffers it is given (no copy where a chunk is whole): callers must
 *   not reuse a buffer after handing it over.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { CryptError } from '../core/errors.js';

/** The first line of every stream. */
export const MAGIC = Buffer.from('crypt-stream/1\n', 'latin1');
/** Plaintext bytes per chunk. */
export const CHUNK = 65_536;
/** Bytes of a chunk's tag. */
export const TAG = 16;
/** Bytes of the header's nonce (the payload key's salt). */
export const NONCE = 16;
/** Bytes of the header MAC. */
export const HEADER_MAC = 32;
/** Bytes of a file key. */
export const FILE_KEY = 32;
/** Longest token line accepted (a token of a 32-byte key is 140 characters). */
const MAX_TOKEN = 1024;
/** A key name, as the keyring has it (src/keys/keyring.ts): crypto/ imports nothing of keys/. */
const KEY_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const TOKEN = /^[A-Za-z0-9_-]+={0,2}$/;
/** The longest header: magic, a 64-character name, a 1024-character token, two line breaks, nonce, MAC. */
export const MAX_HEADER = MAGIC.length + 64 + 1 + MAX_TOKEN + 1 + NONCE + HEADER_MAC;

/** A stream that is not crypt-stream/1, or was changed: `invalid_stream`. */
export class StreamError extends CryptError {
  constructor(message: string) {
    super('invalid_stream', message);
  }
}

/** A parsed header, before its MAC is checked. */
export interface StreamHeader {
  keyName: string;
  /** The Fernet token of the file key. */
  token: string;
  nonce: Buffer;
  mac: Buffer;
  /** Every header byte, MAC included. */
  bytes: Buffer;
}

const headerKey = (fileKey: Uint8Array): Buffer => Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'crypt-stream header', 32));

/** The payload key: HKDF-SHA-256(file key, salt = nonce, info "payload"), as in age. */
export function payloadKey(fileKey: Uint8Array, nonce: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', fileKey, nonce, 'payload', 32));
}

/** The header bytes for a key name, the token of the file key and a nonce, with their MAC. */
export function encodeHeader(keyName: string, token: string, nonce: Uint8Array, fileKey: Uint8Array): Buffer {
  if (!KEY_NAME.test(keyName)) throw new RangeError('a key name: 1 to 64 of a-z, 0-9, ., _ and -');
  if (token.length > MAX_TOKEN || !TOKEN.test(token)) throw new RangeError('a Fernet token of at most 1024 characters');
  if (nonce.length !== NONCE || fileKey.length !== FILE_KEY) throw new RangeError('a 16-byte nonce and a 32-byte file key');
  const body = Buffer.concat([MAGIC, Buffer.from(`${keyName}\n${token}\n`, 'latin1'), nonce]);
  return Buffer.concat([body, createHmac('sha256', headerKey(fileKey)).update(body).digest()]);
}

/** Throws unless the header's MAC is right for the file key (compared in constant time). */
export function verifyHeader(header: StreamHeader, fileKey: Uint8Array): void {
  const expected = createHmac('sha256', headerKey(fileKey)).update(header.bytes.subarray(0, header.bytes.length - HEADER_MAC)).digest();
  if (!timingSafeEqual(expected, header.mac)) throw new StreamError('the header failed authentication: it was changed, or its token opens to another file key');
}

/** The header of a rewrap: the same nonce (so the same payload key), a new token and key name. */
export function rewrapHeader(header: StreamHeader, fileKey: Uint8Array, keyName: string, token: string): Buffer {
  verifyHeader(header, fileKey);
  return encodeHeader(keyName, token, header.nonce, fileKey);
}

/** The stream length of a plaintext length under a header of headerLength bytes. */
export function streamLength(plaintextLength: number, headerLength: number): number {
  const chunks = Math.max(1, Math.ceil(plaintextLength / CHUNK));
  return headerLength + plaintextLength + chunks * TAG;
}

/** The plaintext length of a stream, or -1 when no plaintext has that stream length. */
export function plaintextLength(streamLength: number, headerLength: number): number {
  const payload = streamLength - headerLength;
  if (payload < TAG) return -1;
  const full = Math.floor(payload / (CHUNK + TAG));
  const rest = payload - full * (CHUNK + TAG);
  // the final chunk is full (rest 0), or holds 1 to CHUNK - 1 bytes; empty only when it is the only one
  if (rest === 0) return full * CHUNK;
  if (rest < TAG || (rest === TAG && full > 0)) return -1;
  return full * CHUNK + rest - TAG;
}

/** Reads a header from the first bytes of a stream: push() until it returns the header and what followed. */
export class HeaderReader {
  #parts: Buffer[] = [];
  #size = 0;

  /** Feeds bytes; returns the header and the bytes after it once complete, else null; throws on a malformed header. */
  push(chunk: Buffer): { header: StreamHeader; rest: Buffer } | null {
    this.#parts.push(chunk);
    this.#size += chunk.length;
    const seen = this.#parts.length === 1 ? chunk : Buffer.concat(this.#parts, this.#size);
    this.#parts = [seen];
    const magic = seen.subarray(0, Math.min(seen.length, MAGIC.length));
    if (!magic.equals(MAGIC.subarray(0, magic.length))) throw new StreamError('not a crypt stream: it does not start with "crypt-stream/1"');
    if (seen.length <= MAGIC.length) return null;
    const nameEnd = seen.indexOf(0x0a, MAGIC.length);
    if (nameEnd === -1) {
      if (seen.length - MAGIC.length > 65) throw new StreamError('the header has no valid key name line');
      return null;
    }
    const keyName = seen.toString('latin1', MAGIC.length, nameEnd);
    if (!KEY_NAME.test(keyName)) throw new StreamError('the header has no valid key name line');
    const tokenEnd = seen.indexOf(0x0a, nameEnd + 1);
    if (tokenEnd === -1) {
      if (seen.length - nameEnd - 1 > MAX_TOKEN + 1) throw new StreamError('the header has no valid token line');
      return null;
    }
    const token = seen.toString('latin1', nameEnd + 1, tokenEnd);
    if (token.length > MAX_TOKEN || !TOKEN.test(token)) throw new StreamError('the header has no valid token line');
    const end = tokenEnd + 1 + NONCE + HEADER_MAC;
    if (seen.length < end) return null;
    const bytes = Buffer.from(seen.subarray(0, end));
    this.#parts = [];
    this.#size = 0;
    return {
      header: { keyName, token, nonce: bytes.subarray(tokenEnd + 1, tokenEnd + 1 + NONCE), mac: bytes.subarray(end - HEADER_MAC), bytes },
      rest: seen.subarray(end),
    };
  }
}

/** Chunk i's nonce: 11-byte big-endian i, then 1 for the final chunk, else 0. */
function chunkNonce(i: number, final: boolean): Buffer {
  const nonce = Buffer.alloc(12);
  nonce.writeUIntBE(i, 5, 6);
  nonce[11] = final ? 1 : 0;
  return nonce;
}

/** STREAM encryption: push plaintext, get ciphertext; finish() seals the final chunk. */
export class StreamEncryptor {
  readonly #key: Buffer;
  #held: Buffer[] = [];
  #heldBytes = 0;
  #counter = 0;
  #done = false;

  constructor(payloadKey: Uint8Array) {
    this.#key = Buffer.from(payloadKey);
  }

  /** Encrypts what completes chunks; the last full chunk waits until more data (or finish) says whether it is final. */
  push(data: Buffer): Buffer[] {
    if (this.#done) throw new Error('the stream is finished');
    const out: Buffer[] = [];
    let at = 0;
    while (at < data.length) {
      if (this.#heldBytes === CHUNK) this.#seal(false, out);
      const take = Math.min(CHUNK - this.#heldBytes, data.length - at);
      this.#held.push(at === 0 && take === data.length ? data : data.subarray(at, at + take));
      this.#heldBytes += take;
      at += take;
    }
    return out;
  }

  /** Seals the final chunk (empty only when nothing was pushed). */
  finish(): Buffer[] {
    if (this.#done) throw new Error('the stream is finished');
    const out: Buffer[] = [];
    this.#seal(true, out);
    this.#done = true;
    this.#key.fill(0);
    return out;
  }

  #seal(final: boolean, out: Buffer[]): void {
    const cipher = createCipheriv('chacha20-poly1305', this.#key, chunkNonce(this.#counter++, final), { authTagLength: TAG });
    for (const part of this.#held) out.push(cipher.update(part));
    cipher.final();
    out.push(cipher.getAuthTag());
    this.#held = [];
    this.#heldBytes = 0;
  }
}

/** STREAM decryption: push ciphertext, get verified plaintext; finish() checks the final chunk. */
export class StreamDecryptor {
  readonly #key: Buffer;
  /** Ciphertext not yet decrypted: a chunk is decrypted once more bytes show it is not the final one. */
  #held: Buffer[] = [];
  #heldBytes = 0;
  #counter = 0;
  #done = false;
  /** Where chunks split across pushes are joined: one copy, into one buffer. */
  readonly #join = Buffer.allocUnsafe(CHUNK + TAG);

  constructor(payloadKey: Uint8Array) {
    this.#key = Buffer.from(payloadKey);
  }

  /** Chunks verified so far. */
  get chunks(): number {
    return this.#counter;
  }

  /** Decrypts every chunk that more bytes show is not the final one; throws StreamError on a bad tag. */
  push(data: Buffer): Buffer[] {
    if (this.#done) throw new StreamError('bytes after the end of the stream');
    const out: Buffer[] = [];
    if (data.length === 0) return out;
    this.#held.push(data);
    this.#heldBytes += data.length;
    while (this.#heldBytes > CHUNK + TAG) out.push(this.#open(this.#take(CHUNK + TAG), false));
    return out;
  }

  /** Decrypts the final chunk; throws StreamError when the stream is truncated or its end was changed. */
  finish(): Buffer[] {
    if (this.#done) throw new StreamError('the stream is finished');
    this.#done = true;
    if (this.#heldBytes < TAG) throw new StreamError(this.#counter === 0 && this.#heldBytes === 0 ? 'the stream has no payload: it is truncated' : 'the stream is truncated: its final chunk is missing or cut');
    const size = this.#heldBytes;
    const plaintext = this.#open(this.#take(size), true);
    this.#key.fill(0);
    if (plaintext.length === 0 && this.#counter > 1) throw new StreamError('the stream ends with an empty chunk after others: it was changed');
    return [plaintext];
  }

  /** The first n held bytes, as one buffer (a view when one part holds them). */
  #take(n: number): Buffer {
    const first = this.#held[0]!;
    if (first.length >= n) {
      const taken = first.subarray(0, n);
      if (first.length === n) this.#held.shift();
      else this.#held[0] = first.subarray(n);
      this.#heldBytes -= n;
      return taken;
    }
    const out = n <= this.#join.length ? this.#join.subarray(0, n) : Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const part = this.#held[0]!;
      const take = Math.min(part.length, n - at);
      part.copy(out, at, 0, take);
      at += take;
      if (take === part.length) this.#held.shift();
      else this.#held[0] = part.subarray(take);
    }
    this.#heldBytes -= n;
    return out;
  }

  #open(chunk: Buffer, final: boolean): Buffer {
    const i = this.#counter;
    const decipher = createDecipheriv('chacha20-poly1305', this.#key, chunkNonce(i, final), { authTagLength: TAG });
    decipher.setAuthTag(chunk.subarray(chunk.length - TAG));
    const plaintext = decipher.update(chunk.subarray(0, chunk.length - TAG));
    try {
      decipher.final();
    } catch {
      plaintext.fill(0);
      throw new StreamError(final ? `the final chunk (${i}) failed authentication: the stream was truncated or changed` : `chunk ${i} failed authentication: the stream was changed`);
    }
    this.#counter++;
    return plaintext;
  }
}
