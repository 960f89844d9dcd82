import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { PassThrough } from 'node:stream';
import type { Test } from 'tap';
import type { Io } from '../../src/cli/common.js';

/** The built entry points: CLI tests run what a user runs (npm test builds first). */
export const SERVER_BIN = fileURLToPath(new URL('../../dist/server/index.js', import.meta.url));
export const CLIENT_BIN = fileURLToPath(new URL('../../dist/client/index.js', import.meta.url));

/** The environment of a spawned CLI: this one without crypt settings, with a private HOME. */
export function cleanEnv(home: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CRYPT_') && k !== 'FERNET_KEYS' && k !== 'LOG_LEVEL' && k !== 'XDG_DATA_HOME') env[k] = v;
  }
  return { ...env, HOME: home, ...extra };
}

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a CLI to completion with optional stdin bytes. */
export function runCli(bin: string, args: string[], options: { env: NodeJS.ProcessEnv; cwd?: string; input?: string | Buffer }): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: options.env, cwd: options.cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() }));
    if (options.input !== undefined) child.stdin.end(options.input);
    else child.stdin.end();
  });
}

/** A crypt-server process; resolves once it logs that it listens (port 0 is fine). */
export interface ServerProcess {
  child: ChildProcess;
  port: number;
  httpPort: number | null;
  lines: string[];
  /** Resolves with the first log line matching, now or later. */
  waitFor(pattern: RegExp): Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnServer(t: Test, args: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<ServerProcess> {
  const child = spawn(process.execPath, [SERVER_BIN, ...args], { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const watchers: Array<{ pattern: RegExp; resolve(line: string): void }> = [];
  const onLine = (line: string): void => {
    lines.push(line);
    for (const w of [...watchers]) {
      if (w.pattern.test(line)) {
        watchers.splice(watchers.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const waitFor = (pattern: RegExp): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      watchers.push({ pattern, resolve });
      void exited.then(() => reject(new Error(`server exited before logging ${pattern}:\n${lines.join('\n')}`)));
    });
  };
  return (async () => {
    // a JSON log line per listener, or at quieter log levels one line on stderr for all
    const tcp = await waitFor(/"msg":"listening".*"proto":"tcp|"proto":"tcp.*"msg":"listening"|^crypt-server: listening: /);
    if (tcp.startsWith('crypt-server: ')) {
      const ports = [...tcp.matchAll(/:(\d+)(?:,|$)/g)].map((m) => Number(m[1]));
      return { child, port: ports[0]!, httpPort: ports[1] ?? null, lines, waitFor, exited };
    }
    const port = (JSON.parse(tcp) as { port: number }).port;
    let httpPort: number | null = null;
    if (args.includes('--http') || args.includes('--http-port')) httpPort = (JSON.parse(await waitFor(/"proto":"http/)) as { port: number }).port;
    return { child, port, httpPort, lines, waitFor, exited };
  })();
}

/** An in-memory Io for run(): stdin from bytes, stdout and stderr collected. */
export function memoryIo(options: { stdin?: string | Buffer; tty?: boolean; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Io & { out(): Buffer; err(): string } {
  const stdin = new PassThrough() as PassThrough & { isTTY?: boolean };
  stdin.isTTY = options.tty ?? false;
  stdin.end(options.stdin ?? '');
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stdout = new PassThrough() as PassThrough & { isTTY?: boolean };
  stdout.isTTY = options.tty ?? false;
  stdout.on('data', (c: Buffer) => out.push(c));
  const stderr = new PassThrough();
  stderr.on('data', (c: Buffer) => err.push(c));
  return {
    stdin,
    stdout,
    stderr,
    env: options.env ?? {},
    cwd: options.cwd ?? process.cwd(),
    out: () => Buffer.concat(out),
    err: () => Buffer.concat(err).toString(),
  };
}
