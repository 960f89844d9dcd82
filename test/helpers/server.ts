import { Writable } from 'node:stream';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { EventEmitter, once } from 'node:events';
import type { Test } from 'tap';
import { startServer } from '../../src/ops/startup.js';
import type { RunningServer } from '../../src/ops/startup.js';
import { serverConfig } from '../../src/ops/config.js';
import type { ServerConfig } from '../../src/ops/config.js';
import { createLogger } from '../../src/ops/log.js';
import { CryptClient } from '../../src/client/client.js';
import type { ClientOptions } from '../../src/client/client.js';
import { ReplyDecoder } from '../../src/wire/replies.js';
import type { Reply } from '../../src/wire/replies.js';
import { buildHttp } from '../../src/transports/http/app.js';
import type { HttpOptions } from '../../src/transports/http/app.js';
import { Keyring } from '../../src/keys/keyring.js';
import { AccessTokens, AuthThrottle, Policy } from '../../src/core/access.js';
import { CryptService } from '../../src/core/service.js';
import { Dispatcher } from '../../src/core/dispatcher.js';

/** A private temporary directory, removed when the test ends. */
export function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'crypt-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The defaults, as a server with no flags, environment or .env would have them. */
export const defaults = (): ServerConfig => serverConfig({ flags: {}, env: {}, dotenv: {} });

/** An in-process server on port 0 with a fresh keyring; logs are captured in `logs`. */
export interface Started {
  server: RunningServer;
  port: number;
  config: ServerConfig;
  logs: string[];
  /** Resolves with the first log line (already written or to come) that matches. */
  waitForLog(pattern: RegExp): Promise<string>;
  connect(options?: Partial<ClientOptions>): Promise<CryptClient>;
}

export async function start(t: Test, overrides: Partial<ServerConfig> = {}): Promise<Started> {
  const config: ServerConfig = { ...defaults(), port: 0, keyring: join(tempDir(t), 'keyring.json'), init: true, keyringDefault: false, ...overrides };
  const logs: string[] = [];
  const lines = new EventEmitter();
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      lines.emit('line', String(chunk));
      cb();
    },
  });
  const waitForLog = (pattern: RegExp): Promise<string> => {
    const seen = logs.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const on = (line: string) => {
        if (!pattern.test(line)) return;
        lines.off('line', on);
        resolve(line);
      };
      lines.on('line', on);
    });
  };
  const server = await startServer(config, createLogger(config.logLevel, sink));
  let closed = false;
  const close = server.close.bind(server);
  server.close = async () => {
    if (closed) return;
    closed = true;
    await close();
  };
  t.teardown(() => server.close());
  const port = server.tcp.address.port;
  return {
    server,
    port,
    config,
    logs,
    waitForLog,
    connect: async (options = {}) => {
      const client = await CryptClient.connect({ host: '127.0.0.1', port, ...options });
      t.teardown(() => client.close());
      return client;
    },
  };
}

/** A raw TCP session: send bytes, await a number of replies, see the close. */
export interface Raw {
  socket: net.Socket;
  send(data: string | Buffer): void;
  replies(n: number): Promise<Reply[]>;
  /** Resolves when the socket closes; byServer tells whether the server ended the stream first. */
  closed: Promise<{ byServer: boolean }>;
}

export async function raw(port: number, host = '127.0.0.1'): Promise<Raw> {
  const socket = net.connect(port, host);
  await once(socket, 'connect');
  const decoder = new ReplyDecoder();
  const got: Reply[] = [];
  let waiter: (() => void) | null = null;
  let ended = false;
  socket.on('data', (chunk: Buffer) => {
    for (const r of decoder.push(chunk)) got.push(r.ok ? { ok: true, value: Buffer.from(r.value) } : r);
    waiter?.();
  });
  socket.on('end', () => (ended = true));
  const closed = new Promise<{ byServer: boolean }>((resolve) => socket.on('close', () => {
    resolve({ byServer: ended });
    waiter?.();
  }));
  socket.on('error', () => undefined);
  return {
    socket,
    send: (data) => socket.write(data),
    async replies(n) {
      while (got.length < n && !socket.destroyed) await new Promise<void>((r) => (waiter = r));
      waiter = null;
      return got.splice(0, n);
    },
    closed,
  };
}

/** A non-loopback IPv4 address of this machine, if there is one. */
export function externalAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

/** Renders replies compactly for assertions: the value as text, or `!code`. */
export const show = (replies: Reply[]): string[] => replies.map((r) => (r.ok ? r.value.toString('latin1') : `!${r.code}`));

/** A log sink: every line written, as text. */
export function logSink(): { sink: Writable; logs: string[] } {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  return { sink, logs };
}

/** A dispatcher over a fresh keyring (no listener), for unit tests of the core. */
export async function dispatcherFor(t: Test, overrides: Partial<ServerConfig> = {}) {
  const config: ServerConfig = { ...defaults(), keyring: join(tempDir(t), 'keyring.json'), ...overrides };
  const { keyring } = await Keyring.open({ file: config.keyring }, { create: true });
  const tokens = config.tokensFile ? await AccessTokens.load(config.tokensFile) : null;
  const service = new CryptService(keyring, { maxKeys: config.maxKeys });
  const { sink, logs } = logSink();
  const log = createLogger(config.logLevel, sink);
  const policy = new Policy(tokens, config.getKey, new AuthThrottle({ perConnection: 3, perPeer: config.authFailures, windowMs: 60_000 }));
  const dispatcher = new Dispatcher({ service, policy, maxMessage: config.maxFrame, log, limitedPerMinute: config.rotateLimit });
  t.teardown(() => {
    keyring.close();
    tokens?.close();
  });
  return { dispatcher, service, keyring, policy, logs, config };
}

/** A Fastify app over a fresh service (no listener), for inject() tests. */
export async function httpApp(t: Test, overrides: Partial<ServerConfig> = {}, http: Partial<HttpOptions> = {}) {
  const { dispatcher, service, keyring, logs, config } = await dispatcherFor(t, overrides);
  const app = await buildHttp(dispatcher, {
    host: '127.0.0.1', port: 0, maxConnections: config.maxConnections, maxPerAddress: config.maxPerAddress, idleTimeoutMs: 0, handshakeTimeoutMs: 1000,
    rateLimit: config.rateLimit, maxBatch: config.maxBatch, allowedHosts: config.allowedHosts, ...http,
  }, dispatcher.log);
  t.teardown(() => app.close());
  return { app, service, keyring, logs, dispatcher };
}

/** Resolves once the keyring's keys satisfy a condition (now, or after a change event). */
export function untilKeys(keyring: Keyring, ok: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (!ok()) return;
      keyring.off('change', check);
      resolve();
    };
    keyring.on('change', check);
    check();
  });
}
