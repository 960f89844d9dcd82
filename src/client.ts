/**
 * The TCP client library: one connection, pipelined requests, replies matched in order.
 * Used by crypt-client, the tests and the benchmark.
 *
 * Rules:
 * - Requests always go in the binary-safe length form, written at once (pipelining).
 * - A server error reply rejects its request with a ServerError (code + message); a transport
 *   failure rejects every pending request with a ConnectionError whose message says what to do.
 */
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { ReplyDecoder, encodeRequest } from './protocol.js';
import type { KeyInfo } from './keyring.js';

/** How to reach a server. */
export interface ClientOptions {
  host: string;
  port: number;
  tls?: boolean | undefined;
  /** PEM of the CA to trust (for TLS); the system's CAs when absent. */
  ca?: Buffer | undefined;
  /** An access token, sent as `au` right after connecting. */
  token?: string | undefined;
  /** Milliseconds allowed for connecting and for each reply (0: no limit). */
  timeoutMs?: number | undefined;
}

/** The server answered with an error reply. */
export class ServerError extends Error {
  override name = 'ServerError';
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** The connection could not be made, or was lost. */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
}

interface Pending {
  resolve(value: Buffer): void;
  reject(err: Error): void;
}

function connectError(err: NodeJS.ErrnoException, options: ClientOptions): ConnectionError {
  const where = `${options.host}:${options.port}`;
  switch (err.code) {
    case 'ECONNREFUSED':
      return new ConnectionError(`cannot connect to ${where} (connection refused): is crypt-server running?`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new ConnectionError(`cannot connect to ${where}: unknown host ${options.host}`);
    case 'ETIMEDOUT':
      return new ConnectionError(`cannot connect to ${where} (timed out): is the address right and reachable?`);
    case 'ECONNRESET':
      return new ConnectionError(`connection to ${where} was reset${options.tls ? '' : ': does the server expect TLS (--tls)?'}`);
    default:
      // on a TLS connection, a failure that is not a socket error is the handshake's
      if (options.tls && !/^E[A-Z]+$/.test(err.code ?? '')) {
        return new ConnectionError(`TLS with ${where} failed (${err.code ?? 'handshake'}): pass the server's CA with --ca <file>`);
      }
      return new ConnectionError(`connection to ${where} failed (${err.code ?? 'unknown error'})`);
  }
}

/** A connection to crypt-server. */
export class CryptClient {
  readonly #socket: net.Socket;
  readonly #decoder = new ReplyDecoder();
  readonly #pending: Pending[] = [];
  readonly #options: ClientOptions;
  #failure: ConnectionError | null = null;
  #replied = false;
  /** The role the server granted to the access token, if one was sent. */
  role: string | null = null;

  private constructor(socket: net.Socket, options: ClientOptions) {
    this.#socket = socket;
    this.#options = options;
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.#fail(connectError(err, options)));
    socket.on('close', () => {
      const hint = !this.#replied && !options.tls ? ' before any reply: does it expect TLS (--tls)?' : '';
      this.#fail(new ConnectionError(`connection to ${options.host}:${options.port} closed by the server${hint}`));
    });
    socket.on('timeout', () => {
      if (this.#pending.length > 0) {
        this.#fail(new ConnectionError(`no reply from ${options.host}:${options.port} within ${options.timeoutMs} ms`));
        socket.destroy();
      }
    });
  }

  /** Connects (with TLS when asked) and authenticates when a token is given. */
  static async connect(options: ClientOptions): Promise<CryptClient> {
    const timeout = options.timeoutMs ?? 0;
    const socket = options.tls
      ? tls.connect({
          host: options.host,
          port: options.port,
          ca: options.ca,
          servername: net.isIP(options.host) ? undefined : options.host,
          minVersion: 'TLSv1.2',
        })
      : net.connect({ host: options.host, port: options.port, noDelay: true });
    if (timeout > 0) socket.setTimeout(timeout);
    const ready = options.tls ? 'secureConnect' : 'connect';
    try {
      await Promise.race([
        once(socket, ready),
        once(socket, 'timeout').then(() => {
          throw Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' });
        }),
      ]);
    } catch (err) {
      socket.destroy();
      throw connectError(err as NodeJS.ErrnoException, options);
    }
    const client = new CryptClient(socket, options);
    if (options.token !== undefined) {
      try {
        client.role = (await client.request('au', Buffer.from(options.token))).toString().replace(/^ok /, '');
      } catch (err) {
        socket.destroy();
        throw err;
      }
    }
    return client;
  }

  /** Sends one request; resolves with the reply value, rejects with ServerError or ConnectionError. */
  request(command: string, payload: Uint8Array = Buffer.alloc(0), options?: Record<string, string | number>): Promise<Buffer> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#pending.push({ resolve, reject });
      this.#socket.write(encodeRequest(command, payload, options));
    });
  }

  /** Encrypts bytes or a UTF-8 string; resolves with the token. */
  async encrypt(data: Uint8Array | string): Promise<string> {
    return (await this.request('en', typeof data === 'string' ? Buffer.from(data) : data)).toString('latin1');
  }

  /** Decrypts a token, optionally refusing it when older than ttl seconds. */
  decrypt(token: string, ttl?: number): Promise<Buffer> {
    return this.request('de', Buffer.from(token, 'latin1'), ttl === undefined ? undefined : { ttl });
  }

  /** Re-encrypts a token under the primary key. */
  async rewrap(token: string): Promise<string> {
    return (await this.request('rw', Buffer.from(token, 'latin1'))).toString('latin1');
  }

  /** The server's primary key (admin). */
  async getKey(): Promise<string> {
    return (await this.request('gk')).toString('latin1');
  }

  /** Rotates the keys (admin); resolves with the new primary key's public facts. */
  async rotate(): Promise<KeyInfo> {
    return JSON.parse((await this.request('rk')).toString()) as KeyInfo;
  }

  /** Public facts about the server's keys. */
  async keyInfo(): Promise<{ keys: KeyInfo[] }> {
    return JSON.parse((await this.request('ki')).toString()) as { keys: KeyInfo[] };
  }

  /** True once the connection has failed or closed. */
  get closed(): boolean {
    return this.#failure !== null;
  }

  /** Closes the connection after the pending replies. */
  async close(): Promise<void> {
    if (this.#socket.destroyed) return;
    const closed = once(this.#socket, 'close');
    this.#socket.end();
    await closed;
  }

  #onData(chunk: Buffer): void {
    let replies;
    try {
      replies = this.#decoder.push(chunk);
    } catch (err) {
      this.#fail(new ConnectionError(`${(err as Error).message}: is ${this.#options.host}:${this.#options.port} a crypt-server?`));
      this.#socket.destroy();
      return;
    }
    for (const reply of replies) {
      this.#replied = true;
      const pending = this.#pending.shift();
      if (!pending) {
        // an unsolicited reply: the server is closing this connection (idle timeout, shutdown)
        if (!reply.ok) this.#fail(new ConnectionError(`server closed the connection: ${reply.message}`));
        continue;
      }
      if (reply.ok) pending.resolve(reply.value);
      else pending.reject(new ServerError(reply.code, reply.message));
    }
  }

  #fail(err: ConnectionError): void {
    this.#failure ??= err;
    for (const p of this.#pending.splice(0)) p.reject(this.#failure);
  }
}
