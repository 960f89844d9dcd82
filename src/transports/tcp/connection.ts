/**
 * One TCP connection: bytes -> FrameDecoder -> Dispatcher -> reply encoder -> bytes.
 *
 * Rules:
 * - Replies go out in request order, one write per batch of replies; a pending (asynchronous)
 *   result holds back the replies after it until it is ready.
 * - Backpressure, whatever is pending: requests are run only while fewer than MAX_QUEUED replies
 *   wait and the socket's buffer is not full. Otherwise reading stops, and the requests already
 *   decoded (at most one chunk's worth) wait, not run, until the client reads.
 * - What the connection holds (its unfinished frame, requests waiting, replies not yet written)
 *   is charged to the server's memory budget (src/core/budget.ts), and given back as it goes.
 *   Past the budget, reading stops (decoded requests still run: the dispatcher answers busy to
 *   new payloads, which gives their bytes back), and a connection holding half a frame is
 *   answered busy and closed. A closing connection gives back all but its unsent replies, and is
 *   destroyed LINGER_MS after it ends, whatever its peer still sends.
 * - A barrier operation (key management, au) holds back every request after it until it is done,
 *   so a `gk` after `rk` sees the new key.
 * - The connection closes after: a fatal framing error, an error marked `close` (too many failed
 *   authentications), a deadline (idle, unfinished frame, authentication), or shutdown, each with
 *   an error reply first when the socket can still take one.
 * - Logs carry addresses, commands, sizes and codes; never a payload or a result.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { CryptError, errorFields } from '../../core/errors.js';
import { COMMAND_LIST, operation } from '../../core/operations.js';
import type { Operation, ResultKind, Results } from '../../core/operations.js';
import { newCaller } from '../../core/access.js';
import type { Caller } from '../../core/access.js';
import type { AuditLog } from '../../core/audit.js';
import type { Dispatcher, OpenStream } from '../../core/dispatcher.js';
import type { MemoryBudget } from '../../core/budget.js';
import { FrameDecoder, isFault, isStreamPart } from '../../wire/frames.js';
import type { Decoded, Frame, StreamPart } from '../../wire/frames.js';
import { encodeError, encodeResult } from '../../wire/replies.js';

/** Replies waiting behind a pending result (or not yet written) before requests stop running. */
export const MAX_QUEUED = 64;
/** Batches up to this many bytes are copied into one buffer for one write; larger ones are corked. */
const COPY_LIMIT = 64 * 1024;
/** How long a closing connection waits for the client to close its side. */
const LINGER_MS = 2000;

type Chunk = string | Buffer;

interface Slot {
  chunks: Chunk[] | null;
  /** The audit log's failure count when the request ran, and its last entry when it was answered (see #flush). */
  mark: number;
  need: number;
}

/** Replies written together once the audit log has their lines. */
interface Held {
  chunks: Chunk[];
  bytes: number;
  replies: number;
  mark: number;
}

/** What a stream in progress holds: about a chunk in each direction (src/crypto/stream.ts). */
const STREAM_HOLD = 2 * (65_536 + 16);

/** The payload bytes a decoded item holds. */
const sizeOfItem = (item: Decoded): number => (isFault(item) ? 0 : isStreamPart(item) ? (item.stream === 'data' ? item.data.length : 0) : item.payload.length);

const sizeOf = (chunks: Chunk[]): number => {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
};

/** What a connection needs from its server. */
export interface ConnectionHost {
  dispatcher: Dispatcher;
  log: Logger;
  /** Reports a line that looked like HTTP (logged by the server, rate-limited). */
  httpProbe(peer: string): void;
}

/** The deadlines a connection keeps, in milliseconds (0: none). */
export interface Deadlines {
  idleMs: number;
  frameMs: number;
  authMs: number;
}

/** One client connection. */
export class Connection {
  readonly socket: Socket;
  readonly caller: Caller;
  readonly #host: ConnectionHost;
  readonly #dispatcher: Dispatcher;
  readonly #log: Logger;
  readonly #decoder: FrameDecoder;
  readonly #budget: MemoryBudget;
  /** Bytes charged to the budget now; what is held: */
  #charged = 0;
  /** payload bytes of decoded requests not yet run, */
  #itemsBytes = 0;
  /** and bytes of replies queued behind a pending one. */
  #slotBytes = 0;
  #cancelWait: (() => void) | null = null;
  #items: Decoded[] = [];
  #at = 0;
  #batch: Chunk[] = [];
  #batchBytes = 0;
  /** Replies in the batch; the audit log's failure count when the first of them ran, and the entry they all wait for. */
  #batchReplies = 0;
  #batchMark = 0;
  #batchNeed = 0;
  /** A batch waiting for its audit lines; later replies gather in the next. */
  #held: Held | null = null;
  /** The stream being answered, if any (se, sd). */
  #stream: (OpenStream & { declared: number; bytesIn: number; bytesOut: number; replying: boolean }) | null = null;
  /** A stream's closing '#' waits for its audit line: nothing after it runs meanwhile. */
  #streamEnding = false;
  readonly #audit: AuditLog | null;
  readonly #slots: Slot[] = [];
  #barrier = false;
  #paused = false;
  /** No more requests are read; those already decoded are run, then the socket ends. */
  #closing = false;
  /** No more requests are run; the socket ends once the replies are out. */
  #halted = false;
  #ended = false;
  #onClosed: (() => void) | null = null;
  readonly opened = Date.now();
  /** When the last complete request arrived (or the connection opened). */
  lastRequest = this.opened;
  /** When the unfinished frame started arriving; 0 when none is. */
  frameSince = 0;

  constructor(host: ConnectionHost, socket: Socket) {
    this.socket = socket;
    this.#host = host;
    this.#dispatcher = host.dispatcher;
    this.#budget = host.dispatcher.budget;
    this.#audit = host.dispatcher.audit ?? null;
    this.#log = host.log;
    this.caller = newCaller('tcp', socket.remoteAddress);
    const dispatcher = this.#dispatcher;
    this.#decoder = new FrameDecoder((command) => dispatcher.limitOf(command), (command) => operation(command)?.input === 'stream');
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => {
      if (!this.#closing && !this.#halted) this.#take(this.#decoder.end());
      this.#closing = true;
      this.#pump();
    });
    socket.on('drain', () => this.#pump());
    // debug lines are built only when debug is on: a reset client would otherwise cost a stack format
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ERR_TLS_SESSION_ATTACK') this.#log.warn({ peer: this.caller.peer }, 'tls renegotiation attempt; closing');
      else if (this.#log.isLevelEnabled('debug')) this.#log.debug({ peer: this.caller.peer, err: errorFields(err) }, 'connection error');
      socket.destroy();
    });
    socket.on('close', () => {
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ peer: this.caller.peer }, 'connection closed');
      // nobody is left to answer: what was decoded and not run never runs
      this.#halted = true;
      if (this.#stream) {
        // a stream cut off by its caller: recorded as broken
        this.#stream.done('bad_frame', this.#stream.bytesIn, this.#stream.bytesOut);
        this.#stream = null;
      }
      this.#items = [];
      this.#at = 0;
      this.#ended = true;
      this.#cancelWait?.();
      this.#cancelWait = null;
      const charged = this.#charged;
      this.#charged = 0;
      this.#budget.adjust(-charged);
      this.#onClosed?.();
    });
    if (this.#log.isLevelEnabled('debug')) this.#log.debug({ peer: this.caller.peer }, 'connection opened');
  }

  /** Closes the connection when a deadline has passed; called by the server's sweep. */
  sweep(now: number, deadlines: Deadlines, authRequired: boolean): void {
    if (this.#ended) return;
    if (deadlines.frameMs > 0 && this.frameSince > 0 && now - this.frameSince > deadlines.frameMs) {
      this.#expire(`request not completed within ${deadlines.frameMs / 1000} s, closing`);
    } else if (deadlines.authMs > 0 && authRequired && this.caller.role === null && now - this.opened > deadlines.authMs) {
      this.#expire(`not authenticated within ${deadlines.authMs / 1000} s of connecting, closing: send #au#<token># first`, 'unauthorized');
    } else if (deadlines.idleMs > 0 && this.#slots.length === 0 && now - this.lastRequest > deadlines.idleMs) {
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ peer: this.caller.peer }, 'closing idle connection');
      this.#expire('connection idle for too long, closing');
    }
  }

  /** Stops reading, answers what was received, and resolves once the connection has closed. */
  shutdown(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.#onClosed = resolve;
      this.#closing = true;
      this.#pause();
      this.#pump();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    if (this.#closing || this.#halted) return;
    this.#take(this.#decoder.push(chunk));
    if (this.#decoder.streaming) {
      // a stream's deadlines run from its last bytes, not its first: a large one takes its time
      this.frameSince = this.lastRequest = Date.now();
    } else if (this.#decoder.pending) {
      if (this.frameSince === 0) this.frameSince = Date.now();
    } else {
      this.frameSince = 0;
    }
    this.#pump();
  }

  #take(items: Decoded[]): void {
    if (items.length === 0) return;
    for (const item of items) this.#itemsBytes += sizeOfItem(item);
    if (this.#at >= this.#items.length) {
      this.#items = items;
      this.#at = 0;
    } else {
      for (const item of items) this.#items.push(item);
    }
  }

  /** Runs decoded requests while nothing holds them back; pauses reading otherwise. */
  #pump(): void {
    const items = this.#items;
    while (this.#at < items.length && !this.#halted) {
      if (this.#blocked()) {
        this.#flush();
        if (this.#blocked()) {
          this.#stall();
          this.#recharge();
          return;
        }
      }
      const item = items[this.#at++]!;
      if (isStreamPart(item)) {
        if (!this.#streamPart(item)) {
          // a stream starts once every reply before it is out; its bytes wait in the socket meanwhile
          this.#at--;
          this.#pause();
          this.#recharge();
          return;
        }
        this.#itemsBytes -= sizeOfItem(item);
      } else if (isFault(item)) {
        if (this.#stream) this.#streamFailed(item.error, 'bad_frame');
        if (item.http) this.#host.httpProbe(this.caller.peer);
        this.#reply([encodeError(item.error)]);
        if (item.fatal) this.#halted = true;
      } else {
        this.lastRequest = Date.now();
        this.#itemsBytes -= item.payload.length;
        this.#run(item);
      }
    }
    if (this.#at >= items.length || this.#halted) {
      this.#items = [];
      this.#at = 0;
      this.#itemsBytes = 0;
    }
    this.#flush();
    if (this.#halted || this.#closing) this.#finish();
    else if (!this.#blocked() && !this.#budget.exhausted) this.#resume();
    else this.#stall();
    this.#recharge();
  }

  /**
   * One part of a stream (se, sd): its start opens the run through the dispatcher once every
   * reply before it is out (false: not yet); data goes through the run as it comes; its end sends
   * the last bytes and, once the audit line is written, the closing '#'. A failure before the
   * reply began is an error reply (the connection stays usable); after, the connection is closed
   * without the closing '#': the caller sees the reply cut short.
   */
  #streamPart(part: StreamPart): boolean {
    if (part.stream === 'start') {
      this.#flush();
      if (this.#slots.length > 0 || this.#held !== null || this.#batch.length > 0 || this.#streamEnding) return false;
      this.lastRequest = Date.now();
      const op = operation(part.command)!;
      try {
        const open = this.#dispatcher.openStream(op, this.caller, part.options, part.length);
        this.#stream = { ...open, declared: part.length, bytesIn: 0, bytesOut: 0, replying: false };
        this.#streamReply();
      } catch (err) {
        // refused: its bytes are skipped as they come (no run to feed)
        this.#fail(err);
      }
      return true;
    }
    const stream = this.#stream;
    if (!stream) return true;
    try {
      if (part.stream === 'data') {
        stream.bytesIn += part.data.length;
        this.#streamWrite(stream.run.push(part.data));
        return true;
      }
      this.#streamWrite(stream.run.finish());
    } catch (err) {
      this.#streamFailed(err, null);
      return true;
    }
    // the end: the closing '#' goes once the stream's audit line is written
    this.#stream = null;
    const audit = this.#audit;
    const mark = audit === null ? 0 : audit.failures;
    const entry = stream.done('ok', stream.bytesIn, stream.bytesOut);
    const close = (): void => {
      this.#streamEnding = false;
      if (audit !== null && audit.failures !== mark) this.socket.destroy();
      else if (!this.socket.destroyed) this.socket.write('#\n');
      this.#pump();
    };
    if (audit === null || entry === 0) {
      this.socket.write('#\n');
      return true;
    }
    this.#streamEnding = true;
    audit.whenWritten(entry, close);
    return true;
  }

  /** Sends `#ok:<m>#` once the reply's length is known (se: at once; sd: after the header). */
  #streamReply(): void {
    const stream = this.#stream!;
    if (stream.replying || stream.run.replyLength === null) return;
    stream.replying = true;
    this.socket.write(`#ok:${stream.run.replyLength}#`, 'latin1');
  }

  #streamWrite(out: Buffer[]): void {
    const stream = this.#stream!;
    if (out.length === 0) return;
    this.#streamReply();
    // one writev for a chunk and its tag (and the header)
    this.socket.cork();
    for (const b of out) {
      stream.bytesOut += b.length;
      this.socket.write(b);
    }
    this.socket.uncork();
  }

  /** A stream failed: an error reply when its reply has not begun, else the connection closes without its end. */
  #streamFailed(err: unknown, code: string | null): void {
    const stream = this.#stream!;
    this.#stream = null;
    const e = this.#dispatcher.renderError(err, this.caller, null);
    stream.done(code ?? e.code, stream.bytesIn, stream.bytesOut);
    if (stream.replying) {
      this.#halted = true;
      this.socket.destroy();
      return;
    }
    this.#reply([encodeError(e)]);
  }

  /** True while requests must not run: a barrier, too many replies waiting, or a full socket buffer. */
  #blocked(): boolean {
    return this.#barrier || this.#streamEnding || this.#slots.length >= MAX_QUEUED || this.socket.writableNeedDrain || (this.#held !== null && this.#batchBytes >= COPY_LIMIT);
  }

  /** Charges what the connection holds now to the budget. */
  #recharge(): void {
    if (this.#ended) return;
    const held = this.#decoder.buffered + this.#itemsBytes + this.#slotBytes + this.#batchBytes + (this.#held?.bytes ?? 0) + (this.#stream ? STREAM_HOLD : 0) + this.socket.writableLength;
    if (held !== this.#charged) {
      // charged before adjusting: giving back may wake waiters, this connection among them
      const delta = held - this.#charged;
      this.#charged = held;
      this.#budget.adjust(delta);
    }
  }

  #run(frame: Frame): void {
    const op = operation(frame.command);
    const mark = this.#audit === null ? 0 : this.#audit.failures;
    let result: Results[ResultKind] | Promise<Results[ResultKind]>;
    try {
      if (!op) throw new CryptError('unknown_command', `unknown command ${frame.command}: commands are ${COMMAND_LIST}`);
      result = this.#dispatcher.dispatch(op, this.caller, frame.payload, frame.options);
    } catch (err) {
      this.#fail(err);
      return;
    }
    if (!(result instanceof Promise)) {
      this.#reply(encodeResult(render(op, result), BASE64URL.has(op.result)), mark);
      return;
    }
    const slot: Slot = { chunks: null, mark, need: 0 };
    this.#slots.push(slot);
    if (op.barrier) this.#barrier = true;
    const settle = (chunks: Chunk[]): void => {
      slot.chunks = chunks;
      if (this.#audit !== null) slot.need = this.#audit.last;
      this.#slotBytes += sizeOf(chunks);
    };
    result.then(
      (value) => settle(encodeResult(render(op, value), BASE64URL.has(op.result))),
      (err: unknown) => settle(this.#errorChunks(err)),
    ).finally(() => {
      if (op.barrier) this.#barrier = false;
      this.#drainSlots();
    });
  }

  #fail(err: unknown): void {
    this.#reply(this.#errorChunks(err));
  }

  #errorChunks(err: unknown): Chunk[] {
    const e = this.#dispatcher.renderError(err, this.caller, null);
    if (e.close) this.#halted = true;
    return [encodeError(e)];
  }

  /** Queues a reply behind any result still pending, else into the batch for the next write. */
  #reply(chunks: Chunk[], mark = this.#audit === null ? 0 : this.#audit.failures): void {
    const need = this.#audit === null ? 0 : this.#audit.last;
    if (this.#slots.length > 0) {
      this.#slots.push({ chunks, mark, need });
      this.#slotBytes += sizeOf(chunks);
      return;
    }
    this.#toBatch(chunks, mark, need);
    if (this.#batchBytes >= COPY_LIMIT) this.#flush();
  }

  #toBatch(chunks: Chunk[], mark: number, need: number): void {
    if (this.#batchReplies++ === 0) this.#batchMark = mark;
    if (need > this.#batchNeed) this.#batchNeed = need;
    for (const c of chunks) {
      this.#batch.push(c);
      this.#batchBytes += c.length;
    }
  }

  #drainSlots(): void {
    while (this.#slots.length > 0 && this.#slots[0]!.chunks) {
      const slot = this.#slots.shift()!;
      this.#slotBytes -= sizeOf(slot.chunks!);
      this.#toBatch(slot.chunks!, slot.mark, slot.need);
    }
    this.#pump();
  }

  /**
   * Writes the batch in one write: one string when every reply is a string (tokens, keys, JSON,
   * errors: all ASCII), else one buffer, except that large batches are corked instead of copied.
   */
  #flush(): void {
    if (this.#batch.length === 0 || this.#held !== null) return;
    const audit = this.#audit;
    if (audit !== null && !audit.written(this.#batchNeed)) {
      // no answer leaves before its audit line is written: the batch waits, later replies gather behind it
      const held: Held = { chunks: this.#batch, bytes: this.#batchBytes, replies: this.#batchReplies, mark: this.#batchMark };
      this.#held = held;
      this.#batch = [];
      this.#batchBytes = 0;
      this.#batchReplies = 0;
      audit.whenWritten(this.#batchNeed, () => {
        this.#held = null;
        this.#write(held.chunks, held.bytes, held.replies, held.mark);
        this.#pump();
      });
      return;
    }
    const batch = this.#batch;
    this.#batch = [];
    const size = this.#batchBytes;
    this.#batchBytes = 0;
    const replies = this.#batchReplies;
    this.#batchReplies = 0;
    this.#write(batch, size, replies, this.#batchMark);
  }

  /** Writes replies, or refuses each one whose audit line may be lost. */
  #write(batch: Chunk[], size: number, replies: number, mark: number): void {
    const audit = this.#audit;
    if (audit !== null && audit.failures !== mark) {
      const refusal = encodeError(audit.unavailable());
      batch = new Array<Chunk>(replies).fill(refusal);
      size = refusal.length * replies;
    }
    if (this.socket.destroyed) return;
    if (batch.every((c) => typeof c === 'string')) {
      this.socket.write(batch.length === 1 ? (batch[0] as string) : batch.join(''), 'latin1');
    } else if (size > COPY_LIMIT) {
      this.socket.cork();
      for (const c of batch) this.socket.write(c, 'latin1');
      this.socket.uncork();
    } else {
      const out = Buffer.allocUnsafe(size);
      let at = 0;
      for (const c of batch) at += typeof c === 'string' ? out.write(c, at, 'latin1') : c.copy(out, at);
      this.socket.write(out);
    }
  }

  /**
   * Stops reading until what blocks clears. Past the memory budget, a connection with half a frame
   * in is answered busy and closed instead: waiting would keep holding those bytes while everyone
   * else waits for memory to come back.
   */
  #stall(): void {
    if (this.#budget.exhausted && this.#decoder.buffered > 0 && !this.#halted) {
      this.#halted = true;
      this.#items = [];
      this.#at = 0;
      this.#itemsBytes = 0;
      this.#reply([encodeError(new CryptError('busy', 'the server is busy: the payload bytes it may hold (--memory-budget) are in use; closing, retry shortly'))]);
      this.#finish();
      return;
    }
    this.#pause();
  }

  #pause(): void {
    if (this.#budget.exhausted && !this.#cancelWait && !this.#ended) {
      this.#cancelWait = this.#budget.whenAvailable(() => {
        this.#cancelWait = null;
        this.#pump();
      });
    }
    if (this.#paused) return;
    this.#paused = true;
    this.socket.pause();
  }

  #resume(): void {
    if (!this.#paused || this.#ended) return;
    this.#paused = false;
    this.socket.resume();
  }

  /**
   * Ends the socket once nothing is left to run or answer, and keeps draining what the client
   * still sends (closing with unread input would reset the replies in flight).
   */
  #finish(): void {
    if (this.#ended || this.#slots.length > 0 || this.#at < this.#items.length) return;
    this.#flush();
    // a batch waiting for its audit lines ends the connection when it is written (#flush's callback pumps)
    if (this.#held !== null || this.#batch.length > 0) return;
    // nothing more is decoded or run: only the replies being written stay charged
    this.#decoder.end();
    this.#items = [];
    this.#at = 0;
    this.#itemsBytes = 0;
    this.#recharge();
    this.#ended = true;
    this.socket.end();
    this.socket.resume();
    // a fixed deadline: a peer that keeps sending must not keep the connection (and its slot)
    const linger = setTimeout(() => this.socket.destroy(), LINGER_MS);
    linger.unref();
    this.socket.once('close', () => clearTimeout(linger));
  }

  #expire(message: string, code: 'timeout' | 'unauthorized' = 'timeout'): void {
    this.#halted = true;
    this.#items = [];
    this.#at = 0;
    this.#itemsBytes = 0;
    this.#slots.length = 0;
    this.#slotBytes = 0;
    this.#barrier = false;
    this.#reply([encodeError(new CryptError(code, message))]);
    this.#finish();
  }
}

/** A result as the bytes of a TCP reply. */
/** Results that are base64url (tokens, keys): never a CR, LF or '#', so sent bare without a scan. */
const BASE64URL: ReadonlySet<ResultKind> = new Set<ResultKind>(['token', 'key']);

function render(op: Operation, result: Results[ResultKind]): string | Buffer {
  switch (op.result) {
    case 'token': {
      // a large token is copied into bytes once, here: written as a string it would be flattened
      // (token + '\n') and then copied again by the socket, two more copies that V8 frees late
      const token = (result as Results['token']).token;
      return token.length > COPY_LIMIT ? Buffer.from(token, 'latin1') : token;
    }
    case 'plaintext':
      return (result as Results['plaintext']).plaintext;
    case 'key':
      return (result as Results['key']).key;
    case 'role':
      return `ok ${(result as Results['role']).role}`;
    default:
      return Buffer.from(JSON.stringify(result), 'utf8');
  }
}
