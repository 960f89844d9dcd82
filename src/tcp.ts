/**
 * The TCP transport (plain or TLS): bytes -> FrameDecoder -> CryptService -> reply encoder -> bytes.
 *
 * Rules:
 * - Replies go out in request order, one write per batch of replies from one read; an
 *   asynchronous result holds back the replies after it until it is ready.
 * - Backpressure: reading stops while a write is pending or too many results are outstanding.
 * - A connection stays open until the client closes it, except: a fatal framing error, too many
 *   failed authentications, idleness past the idle timeout, or shutdown. Each of these gets an
 *   error reply first when the socket can still take one.
 * - Over the connection limit, a client gets `busy` and is closed.
 * - Shutdown stops accepting, answers what was received, then closes each connection.
 * - Logs carry addresses, commands, sizes and codes; never a payload or a result.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import { CryptError, toCryptError } from './errors.js';
import { FrameDecoder, encodeError, encodeResult, isFault } from './protocol.js';
import type { Decoded, Frame } from './protocol.js';
import type { CryptService, Decrypted } from './service.js';
import type { Caller } from './access.js';
import { errorFields } from './log.js';
import type { Logger } from './log.js';

/** Settings every listener (TCP and HTTP) has. */
export interface ListenOptions {
  host: string;
  port: number;
  tls?: { cert: Buffer; key: Buffer } | undefined;
  maxConnections: number;
  /** Milliseconds of silence before a connection is closed; 0 for never. */
  idleTimeoutMs: number;
  handshakeTimeoutMs: number;
}

/** Failed authentications after which a connection is closed. */
export const MAX_AUTH_FAILURES = 3;
/** Outstanding asynchronous results per connection before reading pauses. */
const MAX_OUTSTANDING = 64;
/** Batches up to this many bytes are copied into one buffer for one write; larger ones are corked. */
const COPY_LIMIT = 64 * 1024;
/** How long a closing connection waits for the client to close its side. */
const LINGER_MS = 2000;

type Result = string | Buffer;
type Chunk = string | Buffer;

interface Command {
  options: readonly string[];
  run(conn: Connection, frame: Frame): Result | Promise<Result>;
}

const noPayload = (frame: Frame): void => {
  if (frame.payload.length > 0) throw new CryptError('bad_request', `${frame.command} takes no payload: send #${frame.command}##`);
};

const ttlOption = (frame: Frame): number | undefined => {
  const ttl = frame.options?.ttl;
  if (ttl === undefined) return undefined;
  if (!/^\d{1,15}$/.test(ttl)) throw new CryptError('bad_request', 'ttl must be a whole number of seconds, 0 or more');
  return Number(ttl);
};

const plaintextOf = (r: Decrypted | Promise<Decrypted>): Buffer | Promise<Buffer> => (r instanceof Promise ? r.then((d) => d.plaintext) : r.plaintext);

/** The commands of the TCP protocol; see docs/protocol.md. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  en: { options: [], run: (c, f) => c.service.encrypt(c.caller, f.payload) },
  de: { options: ['ttl'], run: (c, f) => plaintextOf(c.service.decrypt(c.caller, f.payload, ttlOption(f))) },
  rw: { options: [], run: (c, f) => c.service.rewrap(c.caller, f.payload) },
  gk: { options: [], run: (c, f) => (noPayload(f), c.service.getKey(c.caller)) },
  ki: { options: [], run: (c, f) => (noPayload(f), JSON.stringify(c.service.keyInfo(c.caller))) },
  rk: { options: [], run: async (c, f) => (noPayload(f), JSON.stringify(await c.service.rotate(c.caller))) },
  au: { options: [], run: (c, f) => c.authenticate(f.payload) },
};

const COMMAND_LIST = Object.keys(COMMANDS).join(', ');

/** True for loopback addresses (127.0.0.0/8, ::1, and IPv4-mapped loopback). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/** A listening TCP (or TLS) server. */
export class TcpServer {
  readonly #server: net.Server;
  readonly #connections = new Set<Connection>();
  readonly service: CryptService;
  readonly options: ListenOptions;
  readonly log: Logger;

  private constructor(service: CryptService, options: ListenOptions, log: Logger) {
    this.service = service;
    this.options = options;
    this.log = log;
    if (options.tls) {
      this.#server = tls.createServer({
        cert: options.tls.cert,
        key: options.tls.key,
        minVersion: 'TLSv1.2',
        handshakeTimeout: options.handshakeTimeoutMs,
        allowHalfOpen: true,
      }, (socket) => this.#accept(socket));
      this.#server.on('tlsClientError', (err, socket) => {
        if (log.isLevelEnabled('debug')) log.debug({ remote: socket.remoteAddress, err: errorFields(err) }, 'tls handshake failed');
        socket.destroy();
      });
    } else {
      this.#server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket));
    }
  }

  /** Starts listening; resolves once bound. */
  static async listen(service: CryptService, options: ListenOptions, log: Logger): Promise<TcpServer> {
    const server = new TcpServer(service, options, log);
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject);
      server.#server.listen(options.port, options.host, () => {
        server.#server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  /** The bound address. */
  get address(): AddressInfo {
    return this.#server.address() as AddressInfo;
  }

  /** Open connections. */
  get connections(): number {
    return this.#connections.size;
  }

  /** Stops accepting, lets each connection answer what it received, then closes it. */
  async close(graceMs = 5000): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const conns = [...this.#connections];
    const force = setTimeout(() => {
      for (const c of this.#connections) c.destroy();
    }, graceMs);
    force.unref();
    await Promise.all(conns.map((c) => c.shutdown()));
    await closed;
    clearTimeout(force);
  }

  #accept(socket: Socket): void {
    if (this.#connections.size >= this.options.maxConnections) {
      this.log.warn({ remote: socket.remoteAddress, limit: this.options.maxConnections }, 'connection refused: too many connections');
      socket.on('error', () => undefined);
      socket.end(encodeError(new CryptError('busy', 'too many connections, try again later')));
      socket.setTimeout(1000, () => socket.destroy());
      return;
    }
    // the plain listener sets noDelay for every socket; TLS sockets need it here
    if (this.options.tls) socket.setNoDelay(true);
    const conn = new Connection(this, socket);
    this.#connections.add(conn);
    socket.once('close', () => this.#connections.delete(conn));
  }
}

interface Slot {
  chunks: Chunk[] | null;
}

/** One client connection. */
class Connection {
  readonly socket: Socket;
  readonly service: CryptService;
  readonly caller: Caller;
  readonly remote: string | undefined;
  readonly #log: Logger;
  readonly #decoder: FrameDecoder;
  #batch: Chunk[] = [];
  readonly #slots: Slot[] = [];
  #failures = 0;
  /** No more requests are read or run; the socket ends once the replies are out. */
  #stopping = false;
  #ended = false;
  #onClosed: (() => void) | null = null;

  constructor(server: TcpServer, socket: Socket) {
    this.socket = socket;
    this.service = server.service;
    this.#log = server.log;
    this.remote = socket.remoteAddress;
    this.caller = { role: null, loopback: isLoopback(this.remote) };
    const { maxMessage, maxToken } = server.service;
    this.#decoder = new FrameDecoder((command) => (command === 'en' ? maxMessage : maxToken));
    if (server.options.idleTimeoutMs > 0) socket.setTimeout(server.options.idleTimeoutMs, () => this.#idle());
    socket.on('data', (chunk: Buffer) => this.#handle(this.#decoder.push(chunk)));
    socket.on('end', () => {
      this.#handle(this.#decoder.end());
      this.#stop();
    });
    socket.on('drain', () => this.#resume());
    // debug lines are built only when debug is on: a reset client would otherwise cost a stack format
    socket.on('error', (err) => {
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ remote: this.remote, err: errorFields(err) }, 'connection error');
    });
    socket.on('close', () => {
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ remote: this.remote }, 'connection closed');
      this.#onClosed?.();
    });
    if (this.#log.isLevelEnabled('debug')) this.#log.debug({ remote: this.remote }, 'connection opened');
  }

  /** Checks a presented secret; repeated failures close the connection. */
  authenticate(secret: Buffer): string {
    try {
      const role = this.service.authenticate(this.caller, secret);
      this.#failures = 0;
      return `ok ${role}`;
    } catch (err) {
      if (++this.#failures >= MAX_AUTH_FAILURES) {
        this.#log.warn({ remote: this.remote, failures: this.#failures }, 'closing connection after failed authentications');
        this.#stopping = true;
        throw new CryptError('unauthorized', `invalid access token; closing after ${MAX_AUTH_FAILURES} failures`);
      }
      throw err;
    }
  }

  /** Resolves once this connection has answered what it received and closed. */
  shutdown(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.#onClosed = resolve;
      this.#stop();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  #handle(items: Decoded[]): void {
    for (const item of items) {
      if (this.#stopping) break;
      if (isFault(item)) {
        this.#reply([encodeError(item.error)]);
        if (item.fatal) this.#stopping = true;
      } else {
        this.#run(item);
      }
    }
    this.#flush();
    if (this.#stopping) this.#stop();
  }

  #run(frame: Frame): void {
    let result: Result | Promise<Result>;
    const command = COMMANDS[frame.command];
    try {
      if (!command) throw new CryptError('unknown_command', `unknown command ${frame.command}: commands are ${COMMAND_LIST}`);
      if (frame.options) {
        for (const name of Object.keys(frame.options)) {
          if (!command.options.includes(name)) throw new CryptError('bad_request', `${frame.command} has no option ${name}`);
        }
      }
      result = command.run(this, frame);
    } catch (err) {
      this.#reply([this.#error(err, frame)]);
      return;
    }
    if (typeof result === 'string' || Buffer.isBuffer(result)) {
      this.#reply(encodeResult(result));
      return;
    }
    const slot: Slot = { chunks: null };
    this.#slots.push(slot);
    if (this.#slots.length >= MAX_OUTSTANDING) this.socket.pause();
    result.then(
      (value) => (slot.chunks = encodeResult(value)),
      (err: unknown) => (slot.chunks = [this.#error(err, frame)]),
    ).finally(() => this.#drainSlots());
  }

  #error(err: unknown, frame: Frame): string {
    const e = toCryptError(err);
    if (e.code === 'internal') this.#log.error({ command: frame.command, err: errorFields(err), reason: err === e ? e.message : undefined }, 'internal error');
    else if (this.#log.isLevelEnabled('debug')) this.#log.debug({ command: frame.command, code: e.code }, 'request failed');
    return encodeError(e);
  }

  /** Queues a reply behind any result still pending, else into the batch for the next write. */
  #reply(chunks: Chunk[]): void {
    if (this.#slots.length > 0) this.#slots.push({ chunks });
    else this.#batch.push(...chunks);
  }

  #drainSlots(): void {
    while (this.#slots.length > 0 && this.#slots[0]!.chunks) this.#batch.push(...this.#slots.shift()!.chunks!);
    this.#flush();
    if (this.#slots.length < MAX_OUTSTANDING) this.#resume();
    if (this.#stopping) this.#stop();
  }

  /**
   * Writes the batch in one write: one string when every reply is a string (tokens, keys, JSON,
   * errors: all ASCII), else one buffer, except that large batches are corked instead of copied.
   */
  #flush(): void {
    const batch = this.#batch;
    if (batch.length === 0 || this.socket.destroyed) return;
    this.#batch = [];
    let ok: boolean;
    if (batch.every((c) => typeof c === 'string')) {
      ok = this.socket.write(batch.length === 1 ? (batch[0] as string) : batch.join(''), 'latin1');
    } else {
      let size = 0;
      for (const c of batch) size += c.length;
      if (size > COPY_LIMIT) {
        this.socket.cork();
        for (const c of batch) this.socket.write(c, 'latin1');
        this.socket.uncork();
        ok = !this.socket.writableNeedDrain;
      } else {
        const out = Buffer.allocUnsafe(size);
        let at = 0;
        for (const c of batch) at += typeof c === 'string' ? out.write(c, at, 'latin1') : c.copy(out, at);
        ok = this.socket.write(out);
      }
    }
    if (!ok) this.socket.pause();
  }

  #resume(): void {
    if (!this.#stopping && !this.socket.writableNeedDrain && this.#slots.length < MAX_OUTSTANDING) this.socket.resume();
  }

  /**
   * Stops taking requests; once every reply is written, ends the socket and keeps draining what
   * the client still sends (closing with unread input would reset the replies in flight).
   */
  #stop(): void {
    this.#stopping = true;
    if (this.#slots.length > 0 || this.#ended) return;
    this.#ended = true;
    this.socket.end();
    this.socket.resume();
    this.socket.setTimeout(LINGER_MS, () => this.socket.destroy());
  }

  #idle(): void {
    // the linger timer of a closing connection fires here too (setTimeout adds listeners)
    if (this.#ended) return void this.socket.destroy();
    this.#log.debug({ remote: this.remote }, 'closing idle connection');
    this.#reply([encodeError(new CryptError('timeout', 'connection idle for too long, closing'))]);
    this.#flush();
    this.#stop();
  }
}
