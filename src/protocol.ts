/**
 * The TCP wire format, with no socket in sight: a request decoder that takes chunks and returns
 * complete frames, the reply encoder, and the reply decoder the client uses. See docs/protocol.md.
 *
 * Rules:
 * - Line form `#<head>#<payload>#` LF (CR LF too): the payload is every byte between the second
 *   '#' and the last '#' of the line. Length form `#<head>:<n>#`, n bytes, `#` LF: binary-safe.
 *   `<head>` is a command and options: `de` or `de,ttl=60`.
 * - Faults take the place of the request they replace, so replies stay in order. A fault is
 *   fatal only when the stream cannot be resynchronised (a broken length form); a bad line is
 *   skipped up to its line break.
 * - Nothing larger than the payload limit is buffered: an oversized line is answered as soon as
 *   it passes the limit and then skipped; an oversized length form is answered from its header
 *   and its bytes are skipped as they arrive.
 * - Payloads are views into the chunks given to push(); copy them to keep them.
 */
import { CryptError } from './errors.js';

const HASH = 0x23;
const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
/** Longest `<head>` (command and options) accepted, in bytes. */
export const MAX_HEAD = 64;
const MAX_DIGITS = 15;
const EMPTY = Buffer.alloc(0);

/** A complete request. */
export interface Frame {
  command: string;
  options: Readonly<Record<string, string>> | null;
  payload: Buffer;
}

/** A framing error standing where a request would; fatal when the connection must close. */
export interface Fault {
  error: CryptError;
  fatal: boolean;
}

/** What the decoder yields, in stream order. */
export type Decoded = Frame | Fault;

/** True when a decoded item is a fault rather than a frame. */
export const isFault = (item: Decoded): item is Fault => 'error' in item;

const enum State {
  Head,
  Line,
  Body,
  TrailHash,
  TrailEnd,
  TrailLf,
  Discard,
  Closed,
}

const USAGE = 'expected #<command>#<payload># or #<command>:<length>#<bytes>#';

const fault = (code: 'bad_frame' | 'too_large', message: string, fatal = false): Fault => ({
  error: new CryptError(code, message),
  fatal,
});

/** Parses `cmd` or `cmd,key=value,...`; null when malformed. */
export function parseHead(head: string): { command: string; options: Record<string, string> | null } | null {
  const comma = head.indexOf(',');
  const command = comma === -1 ? head : head.slice(0, comma);
  if (!/^[A-Za-z0-9]{1,16}$/.test(command)) return null;
  if (comma === -1) return { command, options: null };
  const options: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const part of head.slice(comma + 1).split(',')) {
    const m = /^([a-z][a-z0-9_]*)=([A-Za-z0-9_.-]*)$/.exec(part);
    if (!m) return null;
    options[m[1]!] = m[2]!;
  }
  return { command, options };
}

/** Splits a byte stream into requests; see the rules at the top of this file. */
export class FrameDecoder {
  readonly #limitOf: (command: string) => number;
  #max = 0;
  #state = State.Head;
  #carry: Buffer | null = null;
  #parts: Buffer[] = [];
  #size = 0;
  #need = 0;
  #skip = false;
  #command = '';
  #options: Record<string, string> | null = null;
  #payload: Buffer = EMPTY;

  /** @param maxPayload the largest payload accepted, in bytes: one for all, or per command */
  constructor(maxPayload: number | ((command: string) => number)) {
    this.#limitOf = typeof maxPayload === 'number' ? () => maxPayload : maxPayload;
  }

  /** Feeds a chunk; returns the requests and faults it completes, in order. */
  push(chunk: Buffer): Decoded[] {
    const out: Decoded[] = [];
    let b = chunk;
    if (this.#carry) {
      b = Buffer.concat([this.#carry, chunk]);
      this.#carry = null;
    }
    let pos = 0;
    while (pos < b.length) {
      switch (this.#state) {
        case State.Head:
          pos = this.#head(b, pos, out);
          if (pos < 0) return out;
          break;
        case State.Line: {
          const lf = b.indexOf(LF, pos);
          if (lf === -1) {
            this.#collect(b.subarray(pos));
            if (this.#size > this.#max + 2) {
              out.push(this.#tooLarge());
              this.#reset(State.Discard);
            }
            return out;
          }
          this.#collect(b.subarray(pos, lf));
          pos = lf + 1;
          out.push(this.#line());
          break;
        }
        case State.Body: {
          const take = Math.min(this.#need, b.length - pos);
          if (!this.#skip) this.#collect(b.subarray(pos, pos + take));
          this.#need -= take;
          pos += take;
          if (this.#need === 0) {
            this.#payload = this.#joined();
            this.#state = State.TrailHash;
          }
          break;
        }
        case State.TrailHash:
          if (b[pos++] !== HASH) return this.#fatal(out, `length form: expected '#' right after the ${this.#payload.length || 'declared'} bytes`);
          this.#state = State.TrailEnd;
          break;
        case State.TrailEnd:
        case State.TrailLf: {
          const c = b[pos++];
          if (c === CR && this.#state === State.TrailEnd) {
            this.#state = State.TrailLf;
          } else if (c === LF) {
            if (!this.#skip) out.push(this.#frame(this.#payload));
            this.#reset(State.Head);
          } else {
            return this.#fatal(out, "length form: expected a line break after the closing '#'");
          }
          break;
        }
        case State.Discard: {
          const lf = b.indexOf(LF, pos);
          if (lf === -1) return out;
          pos = lf + 1;
          this.#state = State.Head;
          break;
        }
        case State.Closed:
          return out;
      }
    }
    return out;
  }

  /** Ends the stream: a last line without its line break is answered; a cut frame is a fault. */
  end(): Decoded[] {
    const out: Decoded[] = [];
    switch (this.#state) {
      case State.Head:
        if (this.#carry) out.push(fault('bad_frame', `incomplete request at end of stream: ${USAGE}`));
        break;
      case State.Line:
        out.push(this.#line());
        break;
      case State.Body:
      case State.TrailHash:
        if (!this.#skip) out.push(fault('bad_frame', 'incomplete request at end of stream: fewer bytes than the declared length'));
        break;
      case State.TrailEnd:
      case State.TrailLf:
        if (!this.#skip) out.push(this.#frame(this.#payload));
        break;
      default:
        break;
    }
    this.#reset(State.Closed);
    this.#carry = null;
    return out;
  }

  /** Parses a request head at b[pos]; returns the next position, or -1 when more bytes are needed. */
  #head(b: Buffer, pos: number, out: Decoded[]): number {
    const c = b[pos];
    if (c === LF || c === CR) return pos + 1;
    if (c !== HASH) {
      out.push(fault('bad_frame', `a request starts with '#': ${USAGE}`));
      this.#state = State.Discard;
      return pos;
    }
    const limit = Math.min(b.length, pos + 2 + MAX_HEAD);
    let i = pos + 1;
    while (i < limit && b[i] !== HASH && b[i] !== COLON && b[i] !== LF) i++;
    if (i === limit) {
      if (limit === b.length && i - pos <= MAX_HEAD + 1) {
        this.#carry = Buffer.from(b.subarray(pos));
        return -1;
      }
      out.push(fault('bad_frame', `command longer than ${MAX_HEAD} bytes: ${USAGE}`));
      this.#state = State.Discard;
      return i;
    }
    if (b[i] === LF) {
      out.push(fault('bad_frame', USAGE));
      return i + 1;
    }
    const head = parseHead(b.toString('latin1', pos + 1, i));
    if (b[i] === HASH) {
      if (!head) {
        out.push(fault('bad_frame', `malformed command or options: ${USAGE}`));
        this.#state = State.Discard;
        return i + 1;
      }
      this.#command = head.command;
      this.#options = head.options;
      this.#max = this.#limitOf(head.command);
      this.#state = State.Line;
      return i + 1;
    }
    // length form: digits up to '#'
    let j = i + 1;
    while (j < b.length && j - i <= MAX_DIGITS + 1 && b[j]! >= 0x30 && b[j]! <= 0x39) j++;
    if (j === b.length && j - i <= MAX_DIGITS + 1) {
      this.#carry = Buffer.from(b.subarray(pos));
      return -1;
    }
    if (!head || b[j] !== HASH || j === i + 1 || j - i > MAX_DIGITS + 1) {
      this.#fatal(out, 'malformed length form: expected #<command>:<length>#');
      return -1;
    }
    this.#command = head.command;
    this.#options = head.options;
    this.#max = this.#limitOf(head.command);
    this.#need = Number(b.toString('latin1', i + 1, j));
    if (this.#need > this.#max) {
      out.push(this.#tooLarge());
      this.#skip = true;
    }
    this.#state = this.#need === 0 ? State.TrailHash : State.Body;
    return j + 1;
  }

  #tooLarge(): Fault {
    return fault('too_large', `${this.#command} payload exceeds the limit of ${this.#max} bytes`);
  }

  #fatal(out: Decoded[], message: string): Decoded[] {
    out.push(fault('bad_frame', message, true));
    this.#reset(State.Closed);
    return out;
  }

  #collect(part: Buffer): void {
    if (part.length === 0) return;
    this.#parts.push(part);
    this.#size += part.length;
  }

  /** The collected bytes as one buffer: a view when they came in one chunk, else one copy. */
  #joined(): Buffer {
    const parts = this.#parts;
    const joined = parts.length === 1 ? parts[0]! : parts.length === 0 ? EMPTY : Buffer.concat(parts, this.#size);
    this.#parts = [];
    this.#size = 0;
    return joined;
  }

  /** Completes a line-form request from the collected bytes (the payload and its closing '#'). */
  #line(): Decoded {
    const line = this.#joined();
    this.#state = State.Head;
    let end = line.length;
    if (end > 0 && line[end - 1] === CR) end--;
    if (end === 0 || line[end - 1] !== HASH) return fault('bad_frame', `a request ends with '#' before the line break: ${USAGE}`);
    if (end - 1 > this.#max) return this.#tooLarge();
    return this.#frame(line.subarray(0, end - 1));
  }

  #frame(payload: Buffer): Frame {
    return { command: this.#command, options: this.#options, payload };
  }

  #reset(state: State): void {
    this.#state = state;
    this.#parts = [];
    this.#size = 0;
    this.#need = 0;
    this.#skip = false;
    this.#payload = EMPTY;
  }
}

/** True when a value can be sent bare: no CR or LF, and not starting with '#'. */
export function isBare(value: Uint8Array): boolean {
  return value.indexOf(LF) === -1 && value.indexOf(CR) === -1 && value[0] !== HASH;
}

/** Encodes a request in the binary-safe length form. */
export function encodeRequest(command: string, payload: Uint8Array, options?: Record<string, string | number>): Buffer {
  let head = command;
  if (options) for (const [k, v] of Object.entries(options)) head += `,${k}=${v}`;
  const header = Buffer.from(`#${head}:${payload.length}#`, 'latin1');
  return Buffer.concat([header, payload, TRAILER]);
}

const TRAILER = Buffer.from('#\n', 'latin1');

/** Encodes a success reply: the value bare when it is safe to, else `#ok:<n>#<bytes>#`. */
export function encodeResult(value: string | Buffer): Array<string | Buffer> {
  if (typeof value === 'string') return [value + '\n'];
  if (isBare(value)) return [value, '\n'];
  return [`#ok:${value.length}#`, value, '#\n'];
}

/** Encodes an error reply. */
export const encodeError = (err: CryptError): string => `#er#${err.code}#${err.message}#\n`;

/** A decoded reply from the server; values are views into the pushed chunks. */
export type Reply = { ok: true; value: Buffer } | { ok: false; code: string; message: string };

const OK = Buffer.from('#ok:', 'latin1');
const ER = Buffer.from('#er#', 'latin1');

/**
 * Splits the server's reply stream into replies; used by the client library. A long bare reply
 * (the token of a large message) is kept as its chunks until its line break arrives, so each
 * byte is scanned and copied once.
 */
export class ReplyDecoder {
  /** The start of a reply header (`#`, `#ok:<digits>`), too short to tell yet. */
  #carry: Buffer | null = null;
  /** The chunks of a line reply (bare value or error) whose line break has not arrived. */
  #line: Buffer[] = [];
  #parts: Buffer[] = [];
  #size = 0;
  #need = 0;

  /** Feeds a chunk; returns the complete replies; throws on a reply that breaks the format. */
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
        this.#line.push(b);
        return out;
      }
      this.#line.push(b.subarray(0, lf + 1));
      const line = Buffer.concat(this.#line);
      this.#line = [];
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
          if (b.length - pos > 20) throw new Error('malformed reply from server');
          break;
        }
        const digits = b.toString('latin1', pos + 4, sep);
        if (!/^\d{1,15}$/.test(digits)) throw new Error('malformed reply from server');
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
        this.#line.push(b.subarray(pos));
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
}

/** The reply on b[pos, lf): a bare value, or `#er#<code>#<message>#`. */
function lineReply(b: Buffer, pos: number, lf: number): Reply {
  if (b[pos] !== HASH) return { ok: true, value: b.subarray(pos, lf) };
  if (!ER.equals(b.subarray(pos, pos + 4))) throw new Error('malformed reply from server');
  const line = b.toString('utf8', pos + 4, lf);
  const sep = line.indexOf('#');
  if (sep === -1 || !line.endsWith('#')) throw new Error('malformed error reply from server');
  return { ok: false, code: line.slice(0, sep), message: line.slice(sep + 1, -1) };
}

function okBody(b: Buffer, start: number, end: number): Reply {
  if (b[end] !== HASH || b[end + 1] !== LF) throw new Error('malformed reply from server');
  return { ok: true, value: b.subarray(start, end) };
}
