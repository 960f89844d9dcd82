/**
 * Replies on the TCP wire: the server's encoder and the client's decoder. See docs/protocol.md.
 *
 * Rules:
 * - Every success reply goes through encodeResult, which sends a value bare only when it is
 *   safe to (no CR or LF, not starting with '#'), and length-framed (`#ok:<n>#...#`) otherwise.
 * - An error reply is `#er#<code>#<message>#`; messages never hold a line break.
 * - The decoder bounds what it buffers: a reply longer than its limit is refused, whether it
 *   announces its length or streams without a line break.
 */
import type { CryptError } from '../core/errors.js';

const HASH = 0x23;
const LF = 0x0a;
const CR = 0x0d;

/** True when a value can be sent bare: no CR or LF, and not starting with '#'. */
export function isBare(value: Uint8Array | string): boolean {
  if (typeof value === 'string') return value.indexOf('\n') === -1 && value.indexOf('\r') === -1 && value.charCodeAt(0) !== HASH;
  return value.indexOf(LF) === -1 && value.indexOf(CR) === -1 && value[0] !== HASH;
}

/**
 * Encodes a success reply: the value bare when it is safe to, else `#ok:<n>#<bytes>#`. Strings
 * are latin1. `bare`: the caller knows the value is safe (a token or key: base64url), no scan.
 */
export function encodeResult(value: string | Buffer, bare = false): Array<string | Buffer> {
  if (typeof value === 'string') {
    if (bare || isBare(value)) return [value + '\n'];
    return [`#ok:${Buffer.byteLength(value, 'latin1')}#${value}#\n`];
  }
  if (bare || isBare(value)) return [value, '\n'];
  return [`#ok:${value.length}#`, value, '#\n'];
}

/** Encodes an error reply. */
export const encodeError = (err: CryptError): string => `#er#${err.code}#${err.message.replace(/[\r\n]/g, ' ')}#\n`;

/** A decoded reply from the server; values are views into the pushed chunks. */
export type Reply = { ok: true; value: Buffer } | { ok: false; code: string; message: string };

/** A reply stream that breaks the format, or a reply over the decoder's limit. */
export class ReplyError extends Error {
  override name = 'ReplyError';
  /** The stream looks like an HTTP response (the peer is an HTTP server). */
  readonly http: boolean;
  constructor(message: string, http = false) {
    super(message);
    this.http = http;
  }
}

const OK = Buffer.from('#ok:', 'latin1');
const ER = Buffer.from('#er#', 'latin1');
/** The default limit on one reply: the token of a 192 MiB message. */
export const MAX_REPLY = 256 * 1024 * 1024;

/**
 * Splits the server's reply stream into replies; used by the client library. A long bare reply
 * (the token of a large message) is kept as its chunks until its line break arrives, so each
 * byte is scanned and copied once.
 */
export class ReplyDecoder {
  readonly #max: number;
  /** The start of a reply header (`#`, `#ok:<digits>`), too short to tell yet. */
  #carry: Buffer | null = null;
  /** The chunks of a line reply (bare value or error) whose line break has not arrived. */
  #line: Buffer[] = [];
  #lineSize = 0;
  #parts: Buffer[] = [];
  #size = 0;
  #need = 0;

  constructor(maxReply = MAX_REPLY) {
    this.#max = maxReply;
  }

  /** Feeds a chunk; returns the complete replies; throws a ReplyError on a reply that breaks the format. */
  push(chunk: Buffer): Reply[] {
    const out: Reply[] = [];
    let b = chunk;
    let pos = 0;
    if (this.#need > 0) {
      pos = Math.min(this.#need, b.length);
      this.#parts.push(b.subarray(0, pos));
      this.#size += pos;
      this.#need -= pos;
      if (this.#need > 0) return out;
      const body = Buffer.concat(this.#parts, this.#size);
      this.#parts = [];
      this.#size = 0;
      out.push(okBody(body, 0, body.length - 2));
    } else if (this.#line.length > 0) {
      const lf = b.indexOf(LF);
      if (lf === -1) {
        this.#grow(b);
        return out;
      }
      this.#grow(b.subarray(0, lf + 1));
      const line = Buffer.concat(this.#line);
      this.#line = [];
      this.#lineSize = 0;
      out.push(lineReply(line, 0, line.length - 1));
      pos = lf + 1;
    } else if (this.#carry) {
      b = Buffer.concat([this.#carry, b]);
      this.#carry = null;
    }
    while (pos < b.length) {
      if (b[pos] === HASH && b.length - pos < 4) break;
      if (b[pos] === HASH && OK.equals(b.subarray(pos, pos + 4))) {
        const sep = b.indexOf(HASH, pos + 4);
        if (sep === -1 || sep - pos > 20) {
          if (b.length - pos > 20) throw new ReplyError('malformed reply');
          break;
        }
        const digits = b.toString('latin1', pos + 4, sep);
        if (!/^\d{1,15}$/.test(digits)) throw new ReplyError('malformed reply');
        if (Number(digits) > this.#max) throw new ReplyError(`reply of ${digits} bytes exceeds the limit of ${this.#max}`);
        const start = sep + 1;
        const end = start + Number(digits);
        if (b.length >= end + 2) {
          out.push(okBody(b, start, end));
          pos = end + 2;
          continue;
        }
        this.#parts = [b.subarray(start)];
        this.#size = b.length - start;
        this.#need = end + 2 - b.length;
        return out;
      }
      const lf = b.indexOf(LF, pos);
      if (lf === -1) {
        this.#grow(b.subarray(pos));
        return out;
      }
      out.push(lineReply(b, pos, lf));
      pos = lf + 1;
    }
    if (pos < b.length) this.#carry = Buffer.from(b.subarray(pos));
    return out;
  }

  /** True when part of a reply is still buffered. */
  get pending(): boolean {
    return this.#carry !== null || this.#line.length > 0 || this.#need > 0;
  }

  #grow(part: Buffer): void {
    this.#lineSize += part.length;
    if (this.#lineSize > this.#max + 1) throw new ReplyError(`reply longer than the limit of ${this.#max} bytes without a line break`);
    this.#line.push(part);
  }
}

/** The reply on b[pos, lf): a bare value, or `#er#<code>#<message>#`. */
function lineReply(b: Buffer, pos: number, lf: number): Reply {
  if (b[pos] !== HASH) {
    const value = b.subarray(pos, lf);
    // crypt frames any value holding a CR: a bare line with one is another protocol (HTTP's CR LF)
    if (value.indexOf(CR) !== -1) throw new ReplyError('malformed reply', value.toString('latin1', 0, 5) === 'HTTP/');
    return { ok: true, value };
  }
  if (!ER.equals(b.subarray(pos, pos + 4))) throw new ReplyError('malformed reply');
  const line = b.toString('utf8', pos + 4, lf);
  const sep = line.indexOf('#');
  if (sep === -1 || !line.endsWith('#')) throw new ReplyError('malformed error reply');
  return { ok: false, code: line.slice(0, sep), message: line.slice(sep + 1, -1) };
}

function okBody(b: Buffer, start: number, end: number): Reply {
  if (b[end] !== HASH || b[end + 1] !== LF) throw new ReplyError('malformed reply');
  return { ok: true, value: b.subarray(start, end) };
}
