/**
 * The TCP client library: one connection, pipelined requests, replies matched in order.
 * Used by crypt-client, the tests and the benchmark.
 *
 * Rules:
 * - Requests always go in the binary-safe length form, written at once (pipelining).
 * - A server error reply rejects its request with a ServerError (code + message); a transport
 *   failure rejects every pending request with a ConnectionError whose message says what to do.
 * - Every reply is checked for the shape its request expects (a token looks like a token, a key
 *   like a key, JSON parses to the right object); anything else is a ProtocolError, so a wrong
 *   server (an HTTP port, something else) is never mistaken for an answer. Replies are bounded.
 */
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { encodeRequest } from '../wire/frames.js';
import { ReplyDecoder, ReplyError } from '../wire/replies.js';
import type { KeyDetails, KeyInfo } from '../keys/keyring.js';
import type { KeyListing } from '../core/service.js';
import type { Readiness } from '../core/health.js';
import type { Operation } from '../core/operations.js';
import type { TokenFacts } from '../core/service.js';

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
  /** The largest reply accepted, in bytes. */
  maxReply?: number | undefined;
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

/** The peer answered something that is not a crypt reply of the expected shape. */
export class ProtocolError extends ConnectionError {
  override name = 'ProtocolError';
}

/** The message for a peer that answers HTTP. */
const HTTP_PORT = 'this is an HTTP port: crypt-client speaks the TCP protocol (--port 8000 by default), or use curl for HTTP';

const TOKEN = /^gA[A-Za-z0-9_-]+={0,2}$/;
const KEY = /^[A-Za-z0-9_-]{43}=$/;

interface Pending {
  resolve(value: Buffer): void;
  reject(err: Error): void;
}

const UNTRUSTED = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED']);

/** A failure to connect, as one line that names the real cause and what to do. */
function connectError(err: NodeJS.ErrnoException, options: ClientOptions): ConnectionError {
  const where = `${options.host}:${options.port}`;
  const code = err.code ?? '';
  if (code === 'ECONNREFUSED') return new ConnectionError(`cannot connect to ${where} (connection refused): is crypt-server running?`);
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new ConnectionError(`cannot connect to ${where}: unknown host ${options.host}`);
  if (code === 'ETIMEDOUT') return new ConnectionError(`cannot connect to ${where} (timed out): is the address right and reachable?`);
  if (code === 'ECONNRESET') return new ConnectionError(`connection to ${where} was reset${options.tls ? ' during the TLS handshake: does the server serve TLS (--tls-cert), and is this its port?' : ': does the server expect TLS (--tls)?'}`);
  if (!options.tls) return new ConnectionError(`connection to ${where} failed (${code || 'unknown error'})`);
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new ConnectionError(`TLS with ${where} failed: the server's certificate is not for ${options.host} (${(err as { reason?: string }).reason ?? 'no matching name'}): connect with a name it has, or give it subjectAltName=DNS:localhost,IP:127.0.0.1 (README, TLS)`);
  }
  if (code === 'CERT_HAS_EXPIRED') return new ConnectionError(`TLS with ${where} failed: the server's certificate has expired: renew it (the server picks up new files without a restart)`);
  if (code === 'CERT_NOT_YET_VALID') return new ConnectionError(`TLS with ${where} failed: the server's certificate is not valid yet: check the clocks`);
  if (UNTRUSTED.has(code)) {
    return new ConnectionError(options.ca ? `TLS with ${where} failed: the server's certificate is not signed by the CA given with --ca` : `TLS with ${where} failed: the server's certificate is signed by a CA this machine does not trust: pass that CA with --ca <file>`);
  }
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || /wrong version number|packet length too long/.test(err.message)) {
    return new ConnectionError(`TLS with ${where} failed: the server does not speak TLS there: leave out --tls, or check --port`);
  }
  return new ConnectionError(`TLS with ${where} failed (${code || 'handshake error'})`);
}

/** A connection to crypt-server. */
export class CryptClient {
  readonly #socket: net.Socket;
  readonly #pending: Pending[] = [];
  readonly #options: ClientOptions;
  readonly #decoder: ReplyDecoder;
  #failure: ConnectionError | null = null;
  #replied = false;
  /** The role the server granted to the access token, if one was sent. */
  role: string | null = null;

  private constructor(socket: net.Socket, options: ClientOptions) {
    this.#socket = socket;
    this.#options = options;
    this.#decoder = new ReplyDecoder(options.maxReply);
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
        const reply = (await client.request('au', Buffer.from(options.token))).toString();
        if (!/^ok (admin|user|encrypt|decrypt)$/.test(reply)) throw client.#unexpected('ok <role>');
        client.role = reply.slice(3);
      } catch (err) {
        socket.destroy();
        throw err;
      }
    }
    return client;
  }

  /** Sends one request; resolves with the reply value, rejects with ServerError or ConnectionError. */
  request(command: string, payload: Uint8Array = Buffer.alloc(0), options?: RequestOptions): Promise<Buffer> {
    if (this.#failure) return Promise.reject(this.#failure);
    let frame: Buffer;
    try {
      frame = encodeRequest(command, payload, options);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.#pending.push({ resolve, reject });
      this.#socket.write(frame);
    });
  }

  /** Encrypts bytes or a UTF-8 string, with the key `default` or the one chosen; resolves with the token. */
  async encrypt(data: Uint8Array | string, keys?: KeyChoice): Promise<string> {
    return this.#token(await this.request('en', typeof data === 'string' ? Buffer.from(data) : data, choice(keys)));
  }

  /** Decrypts a token, optionally refusing it when older than ttl seconds. */
  decrypt(token: string, ttl?: number, keys?: KeyChoice): Promise<Buffer> {
    return this.request('de', Buffer.from(token, 'latin1'), { ttl, ...choice(keys) });
  }

  /** Re-encrypts a token under the primary version of its key. */
  async rewrap(token: string, keys?: KeyChoice): Promise<string> {
    return this.#token(await this.request('rw', Buffer.from(token, 'latin1'), choice(keys)));
  }

  /** A key's primary version (admin, an exportable key only). */
  async getKey(name?: string): Promise<string> {
    const key = (await this.request('gk', undefined, { key: name })).toString('latin1');
    if (!KEY.test(key)) throw this.#unexpected('a key');
    return key;
  }

  /** Rotates a key (admin; `default` when none is named); resolves with its new primary version's public facts. */
  async rotate(name?: string): Promise<KeyInfo> {
    const info = this.#json(await this.request('rk', undefined, { key: name }), 'key facts');
    if (!isKeyInfo(info)) throw this.#unexpected('key facts');
    return info;
  }

  /** A fresh data key (dk): its 32 bytes and the same wrapped as a Fernet token under the key chosen. */
  async dataKey(keys?: KeyChoice): Promise<{ key: Buffer; token: string; keyId: string }> {
    const r = this.#json(await this.request('dk', undefined, choice(keys)), 'a data key') as { plaintext?: unknown; token?: unknown; key_id?: unknown };
    const key = typeof r.plaintext === 'string' && /^[A-Za-z0-9_-]{43}$/.test(r.plaintext) ? Buffer.from(r.plaintext, 'base64url') : null;
    if (!key || key.length !== 32 || typeof r.token !== 'string' || !TOKEN.test(r.token) || typeof r.key_id !== 'string') throw this.#unexpected('a data key');
    return { key, token: r.token, keyId: r.key_id };
  }

  /** A token's creation time and the key version that verifies it (never its plaintext). */
  async inspect(token: string, keys?: KeyChoice): Promise<TokenFacts> {
    const facts = this.#json(await this.request('in', Buffer.from(token, 'latin1'), choice(keys)), 'token facts') as Partial<TokenFacts>;
    if (typeof facts.timestamp !== 'number' || !(facts.key_id === null || typeof facts.key_id === 'string')) throw this.#unexpected('token facts');
    return facts as TokenFacts;
  }

  /**
   * Runs any operation of the table, its reply checked for the shape of its result: a token or a
   * key as text, a plaintext as bytes, JSON as an object.
   */
  async call(op: Operation, payload: Uint8Array = Buffer.alloc(0), options?: RequestOptions): Promise<string | Buffer | object> {
    const reply = await this.request(op.command, payload, options);
    switch (op.result) {
      case 'token':
        return this.#token(reply);
      case 'key': {
        const key = reply.toString('latin1');
        if (!KEY.test(key)) throw this.#unexpected('a key');
        return key;
      }
      case 'json':
        return this.#json(reply, 'JSON');
      case 'role':
        return reply.toString('latin1');
      default:
        return reply;
    }
  }

  /** Readiness: ready or not_ready, each check, and the keyring's public facts. */
  async health(): Promise<Readiness> {
    const r = this.#json(await this.request('hc'), 'readiness') as Partial<Readiness>;
    if ((r.status !== 'ready' && r.status !== 'not_ready') || !Array.isArray(r.checks) || typeof r.keyring?.fingerprint !== 'string') throw this.#unexpected('readiness');
    return r as Readiness;
  }

  /** The versions of a key (default: default), and public facts about the named keys this connection may use. */
  async keyInfo(name?: string): Promise<KeyListing> {
    const info = this.#json(await this.request('ki', undefined, { key: name }), 'key facts') as Partial<KeyListing>;
    if ((typeof info.key !== 'string' && info.key !== null) || !Array.isArray(info.keys) || !info.keys.every(isKeyInfo) || !Array.isArray(info.named_keys) || !info.named_keys.every(isKeyDetails)) throw this.#unexpected('key facts');
    return info as KeyListing;
  }

  /** Public facts about one named key. */
  async showKey(name: string): Promise<KeyDetails> {
    return this.#details(await this.request('ks', undefined, { key: name }));
  }

  /** Creates a named key (admin). */
  async createKey(name: string, settings: { derived?: boolean; exportable?: boolean } = {}): Promise<KeyDetails> {
    return this.#details(await this.request('kc', undefined, { key: name, derived: settings.derived, exportable: settings.exportable }));
  }

  /** Changes a named key's settings (admin); auto_rotate is seconds, a period such as `30d`, or `off`. */
  async configureKey(name: string, change: { exportable?: boolean; deletion_allowed?: boolean; auto_rotate?: number | string }): Promise<KeyDetails> {
    return this.#details(await this.request('kf', undefined, { key: name, ...change }));
  }

  /** Deletes a named key, every version of it (admin; only when its settings allow it). */
  async deleteKey(name: string): Promise<void> {
    const r = this.#json(await this.request('kd', undefined, { key: name, confirm: true }), 'a deletion') as { deleted?: unknown };
    if (r.deleted !== name) throw this.#unexpected('a deletion');
  }

  /** True once the connection has failed or closed. */
  get closed(): boolean {
    return this.#failure !== null;
  }

  /** Closes the connection after the pending replies; a peer that doesn't close its side is cut off after the timeout. */
  async close(): Promise<void> {
    if (this.#socket.destroyed) return;
    const closed = new Promise((resolve) => this.#socket.once('close', resolve));
    this.#socket.end();
    const cut = setTimeout(() => this.#socket.destroy(), this.#options.timeoutMs || 1000);
    cut.unref();
    await closed;
    clearTimeout(cut);
  }

  #onData(chunk: Buffer): void {
    let replies;
    try {
      replies = this.#decoder.push(chunk);
    } catch (err) {
      const http = err instanceof ReplyError && err.http;
      this.#fail(new ProtocolError(http ? HTTP_PORT : `${(err as Error).message} from ${this.#where()}: is it a crypt-server?`));
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

  #where(): string {
    return `${this.#options.host}:${this.#options.port}`;
  }

  #unexpected(what: string): ProtocolError {
    return new ProtocolError(`unexpected reply from ${this.#where()} where ${what} was expected: is it a crypt-server?`);
  }

  #token(reply: Buffer): string {
    const token = reply.toString('latin1');
    if (!TOKEN.test(token) || token.length % 4 !== 0) throw this.#unexpected('a token');
    return token;
  }

  #details(reply: Buffer): KeyDetails {
    const details = this.#json(reply, 'key facts');
    if (!isKeyDetails(details)) throw this.#unexpected('key facts');
    return details;
  }

  #json(reply: Buffer, what: string): object {
    try {
      const value = JSON.parse(reply.toString('utf8')) as unknown;
      if (typeof value === 'object' && value !== null) return value;
    } catch {
      // reported below
    }
    throw this.#unexpected(what);
  }
}

/** The named key of a request, and the context of a derived key (bytes, or base64url text). */
export interface KeyChoice {
  key?: string | undefined;
  context?: Uint8Array | string | undefined;
}

/** Options of a request, as the TCP head carries them. */
export type RequestOptions = Readonly<Record<string, string | number | boolean | undefined>>;

const choice = (keys: KeyChoice | undefined): RequestOptions | undefined =>
  keys && { key: keys.key, context: typeof keys.context === 'string' || keys.context === undefined ? keys.context : Buffer.from(keys.context).toString('base64url') };

function isKeyDetails(value: unknown): value is KeyDetails {
  const v = value as Partial<KeyDetails> | null;
  return typeof v === 'object' && v !== null && typeof v.name === 'string' && typeof v.primary === 'string' && Array.isArray(v.versions) && v.versions.every(isKeyInfo);
}

function isKeyInfo(value: unknown): value is KeyInfo {
  const v = value as Partial<KeyInfo> | null;
  return typeof v === 'object' && v !== null && typeof v.id === 'string' && typeof v.state === 'string' && (v.created === null || typeof v.created === 'string');
}
