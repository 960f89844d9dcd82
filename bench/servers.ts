/** Starting the servers under test as separate processes, and reading their memory. */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
/** The built crypt-server, the baseline server and the Python scripts. */
export const PATHS = {
  crypt: here('../server/index.js'),
  baseline: here('./baseline-server.js'),
  python: (name: string) => here(`../../bench/python/${name}`),
};

/** A server process under test. */
export interface Running {
  name: string;
  port: number;
  httpPort?: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts a process and resolves with the port(s) it reports: a bare number line, or crypt's listening logs. */
export function startProcess(name: string, command: string, args: string[], options: { http?: boolean } = {}): Promise<Running> {
  const dir = mkdtempSync(join(tmpdir(), 'crypt-bench-'));
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, HOME: dir, CRYPT_KEYRING: join(dir, 'keyring.json'), CRYPT_INIT: 'true', LOG_LEVEL: 'warn' } });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return new Promise((resolve, reject) => {
    let port = 0;
    let httpPort: number | undefined;
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      if (/^\d+$/.test(line.trim())) port = Number(line);
      else if (line.includes('"msg":"listening"')) {
        const info = JSON.parse(line) as { proto: string; port: number };
        if (info.proto.startsWith('http')) httpPort = info.port;
        else port = info.port;
      }
      if (port && (!options.http || httpPort)) {
        lines.removeAllListeners('line');
        lines.on('line', () => undefined);
        resolve({ name, port, httpPort, child, stop });
      }
    });
    child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before reporting its port`)));
  });
}

/**
 * crypt-server with extra flags, on free ports. One load generator is one address: the per-address
 * limits are raised so that they don't cap the measurements (the attack scenarios set their own).
 */
export const startCrypt = (flags: string[] = [], entry = PATHS.crypt) =>
  startProcess('crypt', process.execPath, [entry, '--port', '0', '--log-level', 'info', '--max-connections', '20000', '--max-per-address', '20000', '--rate-limit', '0', '--max-auth-failures', '0', ...flags], { http: flags.includes('--http') });

/** The resident memory of a process (and its children, for --workers), in MiB. */
export function rssMiB(pid: number): number {
  const kb = (p: number): number => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  };
  let total = kb(pid);
  try {
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    for (const c of children) total += kb(c);
  } catch {
    // no children file: the process alone
  }
  return total / 1024;
}
