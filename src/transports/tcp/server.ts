/**
 * The TCP listener (plain or TLS): accepts connections and keeps their deadlines; each connection
 * (src/transports/tcp/connection.ts) runs its requests through the dispatcher.
 *
 * Rules:
 * - Over the connection limit, or over the per-address limit, a client gets `busy` and is closed.
 * - One sweep timer keeps every connection's deadlines: idle (no complete request), unfinished
 *   frame, and, with access tokens, authentication. Socket activity alone resets none of them.
 * - A line that looks like HTTP is logged at most once a minute, with a count.
 * - Shutdown stops accepting, answers what each connection received, then closes it.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { CryptError, errorFields } from '../../core/errors.js';
import type { Dispatcher } from '../../core/dispatcher.js';
import { encodeError } from '../../wire/replies.js';
import { AddressCounter, secureContextOptions, tlsServerOptions } from '../listen.js';
import type { ListenOptions, TlsMaterial } from '../listen.js';
import { Connection } from './connection.js';
import type { Deadlines } from './connection.js';

/** The TCP listener's settings. */
export interface TcpOptions extends ListenOptions {
  /** Milliseconds a started frame may take to arrive whole; 0 for no limit. */
  frameTimeoutMs: number;
  /** Milliseconds a connection has to authenticate when access tokens are configured; 0 for no limit. */
  authTimeoutMs: number;
}

const PROBE_LOG_MS = 60_000;

/** A listening TCP (or TLS) server. */
export class TcpServer {
  readonly #server: net.Server | tls.Server;
  readonly #connections = new Set<Connection>();
  readonly #handshaking = new Set<Socket>();
  readonly #perAddress: AddressCounter;
  readonly dispatcher: Dispatcher;
  readonly options: TcpOptions;
  readonly log: Logger;
  readonly #deadlines: Deadlines;
  readonly #sweep: NodeJS.Timeout | null;
  #probes = 0;
  #probeLogged = 0;
  #probeTimer: NodeJS.Timeout | null = null;

  private constructor(dispatcher: Dispatcher, options: TcpOptions, log: Logger) {
    this.dispatcher = dispatcher;
    this.options = options;
    this.log = log;
    this.#perAddress = new AddressCounter(options.maxPerAddress);
    this.#deadlines = { idleMs: options.idleTimeoutMs, frameMs: options.frameTimeoutMs, authMs: options.authTimeoutMs };
    if (options.tls) {
      this.#server = tls.createServer({ ...tlsServerOptions(options.tls, options.handshakeTimeoutMs), allowHalfOpen: true }, (socket) => this.#accept(socket));
      this.#server.on('tlsClientError', (err, socket) => {
        if (log.isLevelEnabled('debug')) log.debug({ peer: socket.remoteAddress, err: errorFields(err) }, 'tls handshake failed');
        socket.destroy();
      });
      // sockets still in their handshake: nothing to answer, so shutdown closes them at once
      this.#server.on('connection', (socket: Socket) => {
        this.#handshaking.add(socket);
        socket.once('close', () => this.#handshaking.delete(socket));
      });
    } else {
      this.#server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#accept(socket));
    }
    const periods = Object.values(this.#deadlines).filter((ms) => ms > 0);
    if (periods.length > 0) {
      const every = Math.max(25, Math.min(1000, Math.min(...periods) / 4));
      this.#sweep = setInterval(() => this.#sweepAll(), every);
      this.#sweep.unref();
    } else {
      this.#sweep = null;
    }
  }

  /** Starts listening; resolves once bound. */
  static async listen(dispatcher: Dispatcher, options: TcpOptions, log: Logger): Promise<TcpServer> {
    const server = new TcpServer(dispatcher, options, log);
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

  /** Whether it accepts connections. */
  get listening(): boolean {
    return this.#server.listening;
  }

  /** Open connections. */
  get connections(): number {
    return this.#connections.size;
  }

  /** Puts new TLS material in force for new connections (a renewed certificate). */
  setTls(material: TlsMaterial): void {
    if (this.#server instanceof tls.Server) this.#server.setSecureContext(secureContextOptions(material));
  }

  /** Stops accepting, lets each connection answer what it received, then closes it. */
  async close(graceMs = 5000): Promise<void> {
    if (this.#sweep) clearInterval(this.#sweep);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#handshaking) socket.destroy();
    const conns = [...this.#connections];
    const force = setTimeout(() => {
      for (const c of this.#connections) c.destroy();
    }, graceMs);
    force.unref();
    await Promise.all(conns.map((c) => c.shutdown()));
    await closed;
    clearTimeout(force);
    this.#logProbes();
  }

  #accept(socket: Socket): void {
    const peer = socket.remoteAddress ?? '';
    const full = this.#connections.size >= this.options.maxConnections;
    if (full || !this.#perAddress.add(peer)) {
      this.log.warn({ peer, limit: full ? this.options.maxConnections : this.options.maxPerAddress }, full ? 'connection refused: too many connections' : 'connection refused: too many connections from this address');
      socket.on('error', () => undefined);
      socket.end(encodeError(new CryptError('busy', full ? 'too many connections, try again later' : 'too many connections from this address, try again later')));
      socket.setTimeout(1000, () => socket.destroy());
      return;
    }
    // the plain listener sets noDelay for every socket; TLS sockets need it here
    if (this.options.tls) socket.setNoDelay(true);
    this.#handshaking.delete((socket as unknown as { _parent?: Socket })._parent ?? socket);
    const conn = new Connection({ dispatcher: this.dispatcher, log: this.log, httpProbe: () => this.#probe() }, socket);
    this.#connections.add(conn);
    socket.once('close', () => {
      this.#connections.delete(conn);
      this.#perAddress.remove(peer);
    });
  }

  #sweepAll(): void {
    const now = Date.now();
    const authRequired = this.dispatcher.policy.tokens !== null;
    for (const c of this.#connections) c.sweep(now, this.#deadlines, authRequired);
  }

  #probe(): void {
    this.#probes++;
    if (Date.now() - this.#probeLogged >= PROBE_LOG_MS) this.#logProbes();
    else if (!this.#probeTimer) {
      this.#probeTimer = setTimeout(() => this.#logProbes(), this.#probeLogged + PROBE_LOG_MS - Date.now());
      this.#probeTimer.unref();
    }
  }

  #logProbes(): void {
    if (this.#probeTimer) clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
    const now = Date.now();
    if (this.#probes === 0) return;
    this.log.warn({ connections: this.#probes }, 'closed connections that spoke HTTP to the TCP port: probably a web page attempting cross-protocol requests (or a client on the wrong port)');
    this.#probes = 0;
    this.#probeLogged = now;
  }
}
