/**
 * Requests on the TCP wire, with no socket in sight: a decoder that takes chunks and returns
 * complete frames, and the encoder clients use. See docs/protocol.md.
 *
 * Rules:
 * - Line form `#<head>#<payload>#` LF (CR LF too): the payload is every byte between the second
 *   '#' and the last '#' of the line. Length form `#<head>:<n>#`, n bytes, `#` LF: binary-safe.
 *   `<head>` is a command and options: `de` or `de,ttl=60`.
 * - Faults take the place of the request they replace, so replies stay in order. A fault is
 *   fatal when the stream cannot be resynchronised (a broken length form), or when a line looks
 *   like HTTP (a browser's cross-protocol request, or a person pointing curl at this port):
 *   nothing after it is decoded, so nothing after it can run.
 * - Nothing larger than the payload limit is buffered: an oversized line is answered as soon as
 *   it passes the limit and then skipped; an oversized length form is answered from its header
 *   and its bytes are skipped as they arrive.
 * - A frame in one chunk is a view into it; a frame over several chunks is kept as its chunks
 *   (small ones copied together, so many tiny segments cost their bytes, not an object each) and
 *   copied once into one buffer of its size when complete: never allocated to a declared length up
 *   front, and never grown by copying (each regrowth used to leave its old buffer as garbage).
 * - Payloads are views; copy them to keep them past the next push().
 * - Messages quote frames ("#gk##") so that an error line read in nc never ends in an instruction.
 * - Stream commands (se, sd) take the length form only, and their bytes are handed on as they
 *   arrive (StreamPart), never collected: a stream of any size costs one chunk.
 */
import { CryptError } from '../core/errors.js';

const HASH = 0x23;
const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
/**
 * Longest `<head>` (command and options) accepted, in bytes: room for every option of the
 * longest command (`de,ttl=...,key=<64>,context=<344 of base64url for 256 bytes>`).
 */
export const MAX_HEAD = 512;
const MAX_DIGITS = 15;
/** Bytes of a line not starting with '#' looked at to tell HTTP from a typing mistake. */
const PROBE = 24;
const EMPTY = Buffer.alloc(0);

/** A complete request. */
export interface Frame {
  command: string;
  options: ReadonlyMap<string, string> | null;
  payload: Buffer;
}

/** A framing error standing where a request would; fatal when the connection must close. */
export interface Fault {
  error: CryptError;
  fatal: boolean;
  /** The fault is a line that looks like HTTP (a probable cross-protocol request). */
  http?: boolean;
}

/**
 * A stream command's request (se, sd), in pieces as its bytes arrive: `start` with its head and
 * declared length, `data` views (copy to keep them past the next push()), then `end` once the
 * closing `#` and line break came. A fault between start and end means the stream broke.
 */
export type StreamPart =
  | { stream: 'start'; command: string; options: ReadonlyMap<string, string> | null; length: number }
  | { stream: 'data'; data: Buffer }
  | { stream: 'end' };

/** What the decoder yields, in stream order. */
export type Decoded = Frame | Fault | StreamPart;

/** True when a decoded item is a fault rather than a frame. */
export const isFault = (item: Decoded): item is Fault => 'error' in item;

/** True when a decoded item is part of a stream command's request. */
export const isStreamPart = (item: Decoded): item is StreamPart => 'stream' in item;

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

const USAGE = 'expected "#<command>#<payload>#" or "#<command>:<length>#<bytes>#" (see docs/protocol.md)';

/** The message that answers HTTP sent to the TCP port. */
export const HTTP_ON_TCP = "this is crypt's TCP port, which speaks crypt's own protocol (docs/protocol.md), not HTTP: HTTP is served on --http-port (8080 by default)";

const HTTP_LINE = /^(?:(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) |HTTP\/|(?:host|origin|referer|user-agent|accept|accept-[a-z]+|content-type|content-length|connection|cookie|upgrade|sec-fetch-[a-z]+|sec-ch-[a-z-]+|transfer-encoding):)/i;

const fault = (code: 'bad_frame' | 'too_large', message: string, fatal = false): Fault => ({
  error: new CryptError(code, message),
  fatal,
});

const COMMAND = /^[A-Za-z0-9]{1,16}$/;
const OPTION_NAME = /^[a-z][a-z0-9_]*$/;
const OPTION_VALUE = /^[A-Za-z0-9_.=-]*$/;
/** A parsed head: shared by every request that has the same head, so never to be changed. */
export interface Head {
  command: string;
  options: ReadonlyMap<string, string> | null;
}
const HEADS = new Map<string, Head>();
const MAX_CACHED_HEADS = 1024;

/**
 * Parses `cmd` or `cmd,key=value,...`; null when malformed. Options are a Map (never a plain
 * object). Valid heads are cached (at most 1024, the cache emptied when full): a client sends the
 * same few heads again and again, and the dispatcher caches what it checked of each the same way.
 */
export function parseHead(head: string): Head | null {
  const cached = HEADS.get(head);
  if (cached) return cached;
  const parsed = parse(head);
  if (parsed && parsed.options) {
    if (HEADS.size >= MAX_CACHED_HEADS) HEADS.clear();
    HEADS.set(head, parsed);
  }
  return parsed;
}

function parse(head: string): Head | null {
  const comma = head.indexOf(',');
  const command = comma === -1 ? head : head.slice(0, comma);
  if (!COMMAND.test(command)) return null;
  if (comma === -1) return { command, options: null };
  const options = new Map<string, string>();
  let at = comma + 1;
  for (;;) {
    const next = head.indexOf(',', at);
    const end = next === -1 ? head.length : next;
    const eq = head.indexOf('=', at);
    if (eq <= at || eq >= end) return null;
    const name = head.slice(at, eq);
    const value = head.slice(eq + 1, end);
    if (!OPTION_NAME.test(name) || !OPTION_VALUE.test(value) || options.has(name)) return null;
    options.set(name, value);
    if (next === -1) return { command, options };
    at = next + 1;
  }
}

/** Parts of this many bytes or more are kept as they came (views); smaller ones are copied together. */
const KEEP = 4096;
/** The largest buffer small parts are copied into; a full one is kept and a new one started. */
const TAIL = 16 * 1024;

/**
 * Collects the bytes of one frame (or body) with one copy at most: a view while they came in one
 * chunk, else the parts as they came (those under KEEP bytes copied into buffers of up to TAIL
 * bytes, which double from 256 and never exceed what `cap` leaves), joined once by take().
 */
export class Collector {
  #parts: Buffer[] = [];
  #tail: Buffer | null = null;
  #tailUsed = 0;
  size = 0;

  add(part: Buffer, cap: number): void {
    if (part.length === 0) return;
    if (this.size === 0) {
      this.#parts.push(part);
      this.size = part.length;
      return;
    }
    if (this.#parts.length === 1 && this.#tail === null && this.size < KEEP) {
      // a small first part was kept as a view in case it was all: copy it, not keep its chunk
      this.size = 0;
      this.#copy(this.#parts.pop()!, cap);
      this.size = this.#tailUsed;
    }
    if (part.length >= KEEP) {
      this.#seal();
      this.#parts.push(part);
    } else {
      this.#copy(part, cap);
    }
    this.size += part.length;
  }

  /** The bytes, and a reset. */
  take(): Buffer {
    this.#seal();
    const parts = this.#parts;
    const out = parts.length === 0 ? EMPTY : parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.size);
    this.#parts = [];
    this.size = 0;
    return out;
  }

  /** Copies a small part after the others, into the tail buffer or a new, larger one. */
  #copy(part: Buffer, cap: number): void {
    let tail = this.#tail;
    if (!tail || this.#tailUsed + part.length > tail.length) {
      const grown = Math.min(Math.max((tail?.length ?? 128) * 2, part.length), TAIL);
      this.#seal();
      tail = this.#tail = Buffer.allocUnsafe(Math.max(part.length, Math.min(grown, cap - this.size)));
    }
    part.copy(tail, this.#tailUsed);
    this.#tailUsed += part.length;
  }

  /** Ends the tail buffer: what it holds becomes a part. */
  #seal(): void {
    if (this.#tail && this.#tailUsed > 0) this.#parts.push(this.#tail.subarray(0, this.#tailUsed));
    this.#tail = null;
    this.#tailUsed = 0;
  }
}

/** Splits a byte stream into requests; see the rules at the top of this file. */
export class FrameDecoder {
  readonly #limitOf: (command: string) => number;
  #max = 0;
  #state = State.Head;
  #carry: Buffer | null = null;
  readonly #bytes = new Collector();
  #need = 0;
  #skip = false;
  #command = '';
  #options: ReadonlyMap<string, string> | null = null;
  #payload: Buffer = EMPTY;
  readonly #isStream: (command: string) => boolean;
  /** The request in progress is a stream's: its bytes are handed on, not collected. */
  #streaming = false;

  /**
   * @param maxPayload the largest payload accepted, in bytes: one for all, or per command
   * @param isStream which commands are streams (their bytes handed on as they arrive)
   */
  constructor(maxPayload: number | ((command: string) => number), isStream: (command: string) => boolean = () => false) {
    this.#limitOf = typeof maxPayload === 'number' ? () => maxPayload : maxPayload;
    this.#isStream = isStream;
  }

  /** True while a stream's bytes are arriving. */
  get streaming(): boolean {
    return this.#streaming;
  }

  /** Bytes held for the request in progress (for the memory budget). */
  get buffered(): number {
    return this.#bytes.size + (this.#carry?.length ?? 0) + (this.#state === State.TrailHash || this.#state === State.TrailEnd || this.#state === State.TrailLf ? this.#payload.length : 0);
  }

  /** True while part of a request has arrived and the rest has not (a frame deadline runs). */
  get pending(): boolean {
    return this.#carry !== null || (this.#state !== State.Head && this.#state !== State.Closed);
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
            this.#bytes.add(b.subarray(pos), this.#max + 2);
            if (this.#bytes.size > this.#max + 2) {
              out.push(this.#tooLarge());
              this.#reset(State.Discard);
            }
            return out;
          }
          this.#bytes.add(b.subarray(pos, lf), this.#max + 2);
          pos = lf + 1;
          out.push(this.#line());
          break;
        }
        case State.Body: {
          const take = Math.min(this.#need, b.length - pos);
          if (this.#streaming) out.push({ stream: 'data', data: b.subarray(pos, pos + take) });
          else if (!this.#skip) this.#bytes.add(b.subarray(pos, pos + take), this.#bytes.size + this.#need);
          this.#need -= take;
          pos += take;
          if (this.#need === 0) {
            this.#payload = this.#bytes.take();
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
            if (this.#streaming) out.push({ stream: 'end' });
            else if (!this.#skip) out.push(this.#frame(this.#payload));
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
        if (this.#carry) out.push(this.#carry[0] === HASH ? fault('bad_frame', `incomplete request at end of stream: ${USAGE}`) : this.#notAFrame(this.#carry, 0, this.#carry.length));
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
        if (this.#streaming) out.push({ stream: 'end' });
        else if (!this.#skip) out.push(this.#frame(this.#payload));
        break;
      default:
        break;
    }
    this.#reset(State.Closed);
    this.#carry = null;
    return out;
  }

  /** Parses a request head at b[pos]; returns the next position, or -1 when more bytes are needed or the stream closed. */
  #head(b: Buffer, pos: number, out: Decoded[]): number {
    const c = b[pos];
    if (c === LF || c === CR) return pos + 1;
    if (c !== HASH) {
      const lf = b.indexOf(LF, pos);
      const end = lf === -1 ? b.length : lf;
      if (lf === -1 && end - pos < PROBE) {
        this.#carry = Buffer.from(b.subarray(pos));
        return -1;
      }
      const f = this.#notAFrame(b, pos, end);
      out.push(f);
      if (f.fatal) {
        this.#reset(State.Closed);
        return -1;
      }
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
      if (this.#isStream(head.command)) {
        out.push(fault('bad_frame', `${head.command} is a stream: it takes the length form only, "#${head.command}:<length>#<bytes>#" (see docs/protocol.md)`));
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
      this.#fatal(out, 'malformed length form: expected "#<command>:<length>#" (see docs/protocol.md)');
      return -1;
    }
    this.#command = head.command;
    this.#options = head.options;
    this.#max = this.#limitOf(head.command);
    this.#need = Number(b.toString('latin1', i + 1, j));
    if (this.#need > this.#max) {
      out.push(this.#tooLarge());
      this.#skip = true;
    } else if (this.#isStream(head.command)) {
      this.#streaming = true;
      out.push({ stream: 'start', command: head.command, options: head.options, length: this.#need });
    }
    this.#state = this.#need === 0 ? State.TrailHash : State.Body;
    return j + 1;
  }

  /** The fault for a line that does not start with '#': fatal when it looks like HTTP. */
  #notAFrame(b: Buffer, pos: number, end: number): Fault {
    if (HTTP_LINE.test(b.toString('latin1', pos, Math.min(end, pos + PROBE)))) {
      return { error: new CryptError('bad_frame', HTTP_ON_TCP, { close: true }), fatal: true, http: true };
    }
    return fault('bad_frame', `a request starts with '#': ${USAGE}`);
  }

  #tooLarge(): Fault {
    return fault('too_large', `${this.#command} payload exceeds the limit of ${this.#max} bytes`);
  }

  #fatal(out: Decoded[], message: string): Decoded[] {
    out.push(fault('bad_frame', message, true));
    this.#reset(State.Closed);
    return out;
  }

  /** Completes a line-form request from the collected bytes (the payload and its closing '#'). */
  #line(): Decoded {
    const line = this.#bytes.take();
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
    this.#streaming = false;
    this.#bytes.take();
    this.#need = 0;
    this.#skip = false;
    this.#payload = EMPTY;
  }
}

/** Encodes a request in the binary-safe length form. */
export function encodeRequest(command: string, payload: Uint8Array, options?: Readonly<Record<string, string | number | boolean | undefined>>): Buffer {
  let head = command;
  if (options) {
    for (const [k, v] of Object.entries(options)) {
      if (v === undefined) continue;
      // a value is never allowed to end the head or start another option (`#`, `,`, `:`)
      if (!/^[a-z][a-z0-9_]*$/.test(k) || !/^[A-Za-z0-9_.=-]*$/.test(String(v))) throw new RangeError(`option ${/^[a-z_]{1,40}$/.test(k) ? k : '(unprintable)'}: a value of letters, digits and . _ - = only`);
      head += `,${k}=${String(v)}`;
    }
  }
  const header = Buffer.from(`#${head}:${payload.length}#`, 'latin1');
  return Buffer.concat([header, payload, TRAILER]);
}

const TRAILER = Buffer.from('#\n', 'latin1');
