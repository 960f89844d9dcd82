/**
 * Fernet (spec version 0x80) on node:crypto: AES-128-CBC, PKCS#7, HMAC-SHA256, base64url.
 *
 * Rules:
 * - Every failure of a token (base64, version, length, TTL, MAC, padding) is the same opaque
 *   invalid_token error: nothing tells which check failed.
 * - The TTL is checked before the MAC; the MAC is compared with timingSafeEqual before any
 *   decryption.
 * - Speed without per-token objects: each key keeps one long AES-CBC stream per direction. A
 *   token's IV is folded into its first block (block ^ IV ^ last block of the stream), which
 *   gives exactly the ciphertext of a fresh CBC with that IV. The HMAC is two one-shot SHA-256
 *   calls over `ipad || data` and `opad || inner`. IVs come from a pooled CSPRNG buffer.
 * - A message over 64 KiB is not staged: the cipher reads it in place and writes the token's
 *   buffer, whose base64 is then one flat string (concatenated strings would cost a flattening
 *   copy at the next use).
 *   All of this state is used synchronously, so one thread never interleaves two tokens.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hash, randomFillSync, timingSafeEqual } from 'node:crypto';
import type { Cipher, Decipher } from 'node:crypto';
import { inspect } from 'node:util';
import { invalidToken } from '../core/errors.js';

const VERSION = 0x80;
const HEADER = 25; // version (1) + timestamp (8) + IV (16)
const MAC = 32;
const OVERHEAD = HEADER + MAC;
const BLOCK = 16;
const HMAC_BLOCK = 64;
/** The reference implementations' tolerance for timestamps from the future, in seconds. */
export const MAX_CLOCK_SKEW = 60;
const PADDING = ['', '==', '='];
const KEY_ID_CONTEXT = 'crypt key id v1\0';
const DERIVE_SALT = 'crypt derived key v1';
const HKDF_BLOCK_1 = Buffer.of(1);

/** Seconds since the epoch, as Fernet timestamps count them. */
export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** Characters of the padded base64url token for a message of `length` bytes. */
export function tokenLength(length: number): number {
  const bytes = OVERHEAD + (Math.floor(length / BLOCK) + 1) * BLOCK;
  return Math.ceil(bytes / 3) * 4;
}

let ivPool = Buffer.alloc(0);
let ivPos = 0;

function writeIv(dst: Buffer, offset: number): void {
  if (ivPos + BLOCK > ivPool.length) {
    ivPool = randomFillSync(Buffer.allocUnsafeSlow(4096));
    ivPos = 0;
  }
  ivPool.copy(dst, offset, ivPos, ivPos + BLOCK);
  ivPos += BLOCK;
}

/** Writes version, timestamp and IV (given, or fresh from the pool) at buf[t, t + 25). */
function writeHeader(buf: Buffer, t: number, time: number, iv: Uint8Array | null): void {
  buf[t] = VERSION;
  buf.writeUInt32BE(Math.floor(time / 0x100000000), t + 1);
  buf.writeUInt32BE(time >>> 0, t + 5);
  if (iv) buf.set(iv.subarray(0, BLOCK), t + 9);
  else writeIv(buf, t + 9);
}

let scratch = Buffer.allocUnsafeSlow(4096);
const SCRATCH_MAX = 64 * 1024;

/** A buffer of at least n bytes: the shared scratch when small, a fresh one when large. */
function workspace(n: number): Buffer {
  if (n > SCRATCH_MAX) return Buffer.allocUnsafe(n);
  if (n > scratch.length) scratch = Buffer.allocUnsafeSlow(SCRATCH_MAX);
  return scratch;
}

const outer = Buffer.allocUnsafeSlow(HMAC_BLOCK + 32);
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const computedMac = outer.subarray(0, MAC);
const givenMac = Buffer.allocUnsafeSlow(MAC);

/** A Fernet key: a 128-bit signing key and a 128-bit encryption key, with a non-secret id. */
export class FernetKey {
  #id: string | null = null;
  /** HKDF's pseudorandom key for keys derived from this one. */
  #prk: Buffer | null = null;
  readonly #secret: Buffer;
  /*
   * Everything below is made on first use, so a key that is only held (one of 10,000 named
   * keys, an old version) costs its 32 bytes and little more.
   */
  /** HMAC's inner and outer pads: ipad in [0, 64), opad in [64, 128). */
  #pads: Buffer | null = null;
  /** The AES contexts. */
  #enc: Cipher | null = null;
  #dec: Decipher | null = null;
  /** The last ciphertext block each context chained from (see encryptWith): ZERO_BLOCK (shared, never written) until the context exists. */
  #encChain: Buffer = ZERO_BLOCK;
  #decChain: Buffer | null = null;

  private constructor(secret: Buffer) {
    this.#secret = secret;
  }

  /** A short public fingerprint of the key: hex of a domain-separated SHA-256, never the key. */
  get id(): string {
    return (this.#id ??= createHash('sha256').update(KEY_ID_CONTEXT).update(this.#secret).digest('hex').slice(0, 12));
  }

  /** A new key from the CSPRNG. */
  static generate(): FernetKey {
    return new FernetKey(randomFillSync(Buffer.alloc(32)));
  }

  /** Parses a key in Fernet's format (base64url of 32 bytes); the error never shows the key. */
  static from(text: string): FernetKey {
    const bytes = Buffer.alloc(32);
    if (decodeBase64url(text.trim(), bytes, 0, 'optional') !== 32) {
      throw new TypeError('not a Fernet key: expected 44 characters of base64url encoding 32 bytes');
    }
    return new FernetKey(bytes);
  }

  /** A key from its 32 bytes (copied). */
  static fromBytes(bytes: Uint8Array): FernetKey {
    if (bytes.length !== 32) throw new TypeError('not a Fernet key: expected 32 bytes');
    return new FernetKey(Buffer.from(bytes));
  }

  /** The key's 32 bytes, in a buffer of their own: the secret, for a worker thread; wipe it after use. */
  exportBytes(): Uint8Array {
    return new Uint8Array(this.#secret);
  }

  /** The key in Fernet's format. This is the secret: never log it. */
  export(): string {
    return this.#secret.toString('base64url') + '=';
  }

  /** Encrypts a message now with a fresh IV. */
  encrypt(message: Uint8Array, time: number = nowSeconds()): string {
    return this.encryptWith(message, time, null);
  }

  /** Encrypts with a given timestamp and IV (null: a fresh one): the seam for the spec vectors. */
  encryptWith(message: Uint8Array, time: number, iv: Uint8Array | null): string {
    if (message.length > SCRATCH_MAX) return this.#encryptLarge(message, time, iv);
    const length = message.length;
    const padded = (Math.floor(length / BLOCK) + 1) * BLOCK;
    const size = OVERHEAD + padded;
    const buf = workspace(HMAC_BLOCK + size + padded);
    // layout: [ipad 64][version ts iv ciphertext mac][plaintext staging]
    const t = HMAC_BLOCK;
    writeHeader(buf, t, time, iv);
    const pt = buf.subarray(t + size, t + size + padded);
    pt.set(message);
    pt.fill(padded - length, length);
    const chain = this.#encChain;
    for (let i = 0; i < BLOCK; i++) pt[i]! ^= buf[t + 9 + i]! ^ chain[i]!;
    const ct = this.#cipher().update(pt);
    // copied, not a view: a view would keep the whole ciphertext alive until the key's next encrypt
    ct.copy(this.#encChain, 0, padded - BLOCK);
    ct.copy(buf, t + HEADER);
    this.#mac(buf, t + HEADER + padded, buf, t + HEADER + padded);
    return buf.toString('base64url', t, t + size) + PADDING[size % 3];
  }

  /** encryptWith for a message of more than 64 KiB, read in place by the cipher (see the rules above). */
  #encryptLarge(message: Uint8Array, time: number, iv: Uint8Array | null): string {
    const length = message.length;
    const full = length - (length % BLOCK);
    const size = OVERHEAD + full + BLOCK;
    const buf = Buffer.allocUnsafe(HMAC_BLOCK + size);
    const t = HMAC_BLOCK;
    writeHeader(buf, t, time, iv);
    const first = Buffer.from(message.subarray(0, BLOCK));
    const chain = this.#encChain;
    for (let i = 0; i < BLOCK; i++) first[i]! ^= buf[t + 9 + i]! ^ chain[i]!;
    const last = Buffer.alloc(BLOCK, BLOCK - (length - full));
    last.set(message.subarray(full));
    let at = t + HEADER;
    const enc = this.#cipher();
    for (const part of [enc.update(first), enc.update(message.subarray(BLOCK, full)), enc.update(last)]) {
      part.copy(buf, at);
      at += part.length;
    }
    buf.copy(this.#encChain, 0, at - BLOCK, at);
    this.#mac(buf, at, buf, at);
    return buf.toString('base64url', t, t + size) + PADDING[size % 3];
  }

  #makePads(): Buffer {
    const pads = Buffer.alloc(2 * HMAC_BLOCK, 0x36);
    pads.fill(0x5c, HMAC_BLOCK);
    for (let i = 0; i < 16; i++) {
      pads[i]! ^= this.#secret[i]!;
      pads[HMAC_BLOCK + i]! ^= this.#secret[i]!;
    }
    return (this.#pads = pads);
  }

  /**
   * Frees what this key made on first use (the AES contexts' native memory at once, rather than
   * whenever the garbage collector gets to them); a later use makes them again. For keys dropped
   * from a cache.
   */
  release(): void {
    // final() frees the native context; its output (nothing: no padding, whole blocks) is not used
    this.#enc?.final();
    this.#dec?.final();
    this.#enc = null;
    this.#dec = null;
    this.#encChain = ZERO_BLOCK;
    this.#decChain = null;
    this.#pads = null;
  }

  /** The encrypting AES context; its chaining starts from a zero block, as #encChain does. */
  #cipher(): Cipher {
    if (this.#enc) return this.#enc;
    // a new context chains from a zero block, as #encChain reads until now; from here on the key has its own
    this.#encChain = Buffer.alloc(BLOCK);
    return (this.#enc = createCipheriv('aes-128-cbc', this.#secret.subarray(16, 32), ZERO_BLOCK).setAutoPadding(false));
  }

  /**
   * HMAC of buf[64, end) into out[at, at + 32); buf[0, 64) is overwritten with this key's ipad.
   * The digests come back as latin1 ('binary') strings: Node makes a 32-character string much
   * faster than a Buffer, and writing it into our scratch is byte for byte the same.
   */
  #mac(buf: Buffer, end: number, out: Buffer, at: number): void {
    const pads = this.#pads ?? this.#makePads();
    pads.copy(buf, 0, 0, HMAC_BLOCK);
    outer.write(hash('sha256', buf.subarray(0, end), 'binary'), HMAC_BLOCK, 'latin1');
    pads.copy(outer, 0, HMAC_BLOCK, 2 * HMAC_BLOCK);
    out.write(hash('sha256', outer, 'binary'), at, 'latin1');
  }

  /** True when the MAC of the decoded token in buf[64, 64 + size) verifies under this key. */
  #verify(buf: Buffer, size: number): boolean {
    const end = HMAC_BLOCK + size - MAC;
    this.#mac(buf, end, outer, 0);
    buf.copy(givenMac, 0, end, end + MAC);
    return timingSafeEqual(computedMac, givenMac);
  }

  /** Decrypts the verified token in buf[64, 64 + size); throws invalid_token on bad padding. */
  #open(buf: Buffer, size: number): Buffer {
    const t = HMAC_BLOCK;
    const ct = buf.subarray(t + HEADER, t + size - MAC);
    if (!this.#dec) {
      this.#dec = createDecipheriv('aes-128-cbc', this.#secret.subarray(16, 32), ZERO_BLOCK).setAutoPadding(false);
      this.#decChain = Buffer.alloc(BLOCK);
    }
    const pt = this.#dec.update(ct);
    const chain = this.#decChain!;
    for (let i = 0; i < BLOCK; i++) pt[i]! ^= buf[t + 9 + i]! ^ chain[i]!;
    ct.copy(chain, 0, ct.length - BLOCK);
    // the MAC has verified already, so this check leaks nothing an attacker could use
    const pad = pt[pt.length - 1]!;
    if (pad === 0 || pad > BLOCK) throw invalidToken();
    for (let i = 2; i <= pad; i++) if (pt[pt.length - i] !== pad) throw invalidToken();
    return pt.subarray(0, pt.length - pad);
  }

  /** See decrypt(): a static method so that it reaches each key's private state. */
  static decrypt(keys: readonly FernetKey[], token: string | Uint8Array, options: DecryptOptions): Opened {
    const { buf, size, timestamp } = decodeToken(token);
    const { ttl } = options;
    if (ttl !== undefined) {
      const now = options.now ?? nowSeconds();
      if (timestamp + ttl < now || now + MAX_CLOCK_SKEW < timestamp) throw invalidToken();
    }
    for (const key of keys) {
      if (key.#verify(buf, size)) return { plaintext: key.#open(buf, size), timestamp, key };
    }
    throw invalidToken();
  }

  /** See deriveKey(): a static method so that it reaches the root's secret. */
  static derive(root: FernetKey, context: Uint8Array): FernetKey {
    // HKDF-SHA256 (RFC 5869) for 32 bytes: extract once per root, then one HMAC per context
    const prk = (root.#prk ??= createHmac('sha256', DERIVE_SALT).update(root.#secret).digest());
    return new FernetKey(createHmac('sha256', prk).update(context).update(HKDF_BLOCK_1).digest());
  }

  /** See inspect(): the token's timestamp and the first key whose MAC verifies, never decrypting. */
  static inspect(keys: readonly FernetKey[], token: string | Uint8Array): Inspected {
    const { buf, size, timestamp } = decodeToken(token);
    for (const key of keys) if (key.#verify(buf, size)) return { timestamp, key };
    return { timestamp, key: null };
  }

  [inspect.custom](): string {
    return `FernetKey(${this.id})`;
  }

  toJSON(): { id: string } {
    return { id: this.id };
  }
}

/** What a successful decryption gives: the message, the token's timestamp and the key that opened it. */
export interface Opened {
  plaintext: Buffer;
  timestamp: number;
  key: FernetKey;
}

/** What inspecting a token tells: its creation time and the key that verifies it, if any. */
export interface Inspected {
  timestamp: number;
  key: FernetKey | null;
}

/** Decodes a token into the scratch buffer; checks its form (base64, version, length) only. */
function decodeToken(token: string | Uint8Array): { buf: Buffer; size: number; timestamp: number } {
  const text = typeof token === 'string' ? token : Buffer.from(token.buffer, token.byteOffset, token.length).toString('latin1');
  const buf = workspace(HMAC_BLOCK + Math.ceil((text.length * 3) / 4) + 3);
  const size = decodeBase64url(text, buf, HMAC_BLOCK);
  if (size < OVERHEAD + BLOCK || (size - OVERHEAD) % BLOCK !== 0 || buf[HMAC_BLOCK] !== VERSION) throw invalidToken();
  const timestamp = buf.readUInt32BE(HMAC_BLOCK + 1) * 0x100000000 + buf.readUInt32BE(HMAC_BLOCK + 5);
  return { buf, size, timestamp };
}

/** Options of a decryption: a maximum age in seconds, and the clock (for tests). */
export interface DecryptOptions {
  ttl?: number | undefined;
  now?: number | undefined;
}

/**
 * Decodes canonical base64url into out at offset; the decoded length, or -1. Canonical: the
 * URL-safe alphabet only, padded to a multiple of 4 as Fernet and Python write it (keys may
 * leave the padding out), and zero in the bits the last character does not use. Node's decoder
 * skips foreign characters and stops at '=', which the length check catches (any skipped
 * character makes the output shorter than expected); it also takes '+' and '/', refused here.
 */
function decodeBase64url(text: string, out: Buffer, offset: number, padding: 'required' | 'optional' = 'required'): number {
  const length = text.length;
  let end = length;
  if (end > 0 && text.charCodeAt(end - 1) === 61) end--;
  if (end > 0 && text.charCodeAt(end - 1) === 61) end--;
  if (end % 4 === 1) return -1;
  if (end === length ? padding === 'required' && length % 4 !== 0 : length % 4 !== 0) return -1;
  const expected = (end * 3) >>> 2;
  if (out.length - offset < expected) return -1;
  if (text.indexOf('+') !== -1 || text.indexOf('/') !== -1) return -1;
  if (end % 4 !== 0 && (ALPHABET.indexOf(text[end - 1]!) & (end % 4 === 2 ? 0x0f : 0x03)) !== 0) return -1;
  return out.write(text, offset, expected, 'base64url') === expected ? expected : -1;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * Verifies and decrypts a token with the first key whose MAC matches (keys in order, newest
 * first), as MultiFernet does. Throws the one invalid_token error on any failure.
 */
export function decrypt(keys: readonly FernetKey[], token: string | Uint8Array, options: DecryptOptions = {}): Opened {
  return FernetKey.decrypt(keys, token, options);
}

/**
 * Tells a token's creation time and which of the keys (in order) verifies its MAC, or that none
 * does, without decrypting it. A token that is not even well-formed is the one invalid_token.
 */
export function inspectToken(keys: readonly FernetKey[], token: string | Uint8Array): Inspected {
  return FernetKey.inspect(keys, token);
}

/**
 * The Fernet key of a derived key's version for one context: the 32 bytes of
 * HKDF-SHA256(ikm = the version's 32 bytes, salt = "crypt derived key v1", info = the context).
 * Tokens made with it open only with the same version and the same context.
 */
export function deriveKey(root: FernetKey, context: Uint8Array): FernetKey {
  return FernetKey.derive(root, context);
}
