/**
 * Named keys in the benchmark: what choosing a key by name and deriving a tenant's key cost on
 * the TCP hot path, what a keyring of 10,000 named keys costs to load, and what many distinct
 * contexts cost in memory (the derived-key cache is bounded).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CryptClient } from '../src/client/client.js';
import { FernetKey } from '../src/crypto/fernet.js';
import { runLoad } from './load.js';
import type { LoadResult } from './load.js';
import { PATHS, rssMiB, startCrypt } from './servers.js';
import { median } from './stats.js';

/** TCP pipelined req/s of one server with no key named, with `key=billing`, and with a derived key and one context. */
export interface KeyChoiceResult {
  none: LoadResult;
  named: LoadResult;
  derived: LoadResult;
}

const CONTEXT = Buffer.from('tenant-42').toString('base64url');

/** The three loads alternate on one server process, round after round; each figure is the median. */
export async function keyChoice(seconds: number, rounds: number): Promise<KeyChoiceResult> {
  const server = await startCrypt();
  try {
    const admin = await CryptClient.connect({ host: '127.0.0.1', port: server.port, timeoutMs: 10_000 });
    await admin.createKey('billing');
    await admin.createKey('users', { derived: true });
    await admin.close();
    const variants = { none: '', named: ',key=billing', derived: `,key=users,context=${CONTEXT}` } as const;
    const runs: Record<keyof typeof variants, LoadResult[]> = { none: [], named: [], derived: [] };
    for (let i = 0; i < rounds; i++) {
      for (const [name, options] of Object.entries(variants) as Array<[keyof typeof variants, string]>) {
        runs[name].push(await runLoad({ port: server.port, connections: 8, depth: 16, seconds, options }));
      }
    }
    const mid = (rs: LoadResult[]): LoadResult => ({ requests: median(rs.map((r) => r.requests)), rps: median(rs.map((r) => r.rps)), p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)), errors: rs.reduce((a, r) => a + r.errors, 0) });
    return { none: mid(runs.none), named: mid(runs.named), derived: mid(runs.derived) };
  } finally {
    await server.stop();
  }
}

/** A server's start on a keyring of `count` named keys: ms from spawn to listening, and RSS then. */
export interface KeyringLoad {
  keys: number;
  startMs: number;
  rssMiB: number;
}

/** Writes a format-2 keyring with `count` named keys (and default), one version each. */
function writeKeyring(file: string, count: number): void {
  const now = new Date().toISOString();
  const key = (name: string, exportable: boolean) => {
    const k = FernetKey.generate();
    return { name, derived: false, exportable, deletion_allowed: false, auto_rotate: null, versions: [{ id: k.id, state: 'primary', created: now, key: k.export() }] };
  };
  const keys = [key('default', true), ...Array.from({ length: count }, (_, i) => key(`app-${String(i).padStart(5, '0')}`, false))];
  writeFileSync(file, JSON.stringify({ format: 'crypt-keyring/2', keys }), { mode: 0o600 });
}

/** Starts crypt-server on a keyring of `count` named keys; the median of `rounds` starts. */
export async function keyringLoad(count: number, rounds: number): Promise<KeyringLoad> {
  const dir = mkdtempSync(join(tmpdir(), 'crypt-bench-keys-'));
  const file = join(dir, 'keyring.json');
  writeKeyring(file, count);
  const starts: number[] = [];
  const rss: number[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      const begun = performance.now();
      const child = spawn(process.execPath, [PATHS.crypt, '--port', '0', '--keyring', file, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, HOME: dir } });
      const lines = createInterface({ input: child.stdout! });
      await new Promise<void>((resolve, reject) => {
        lines.on('line', (line) => {
          if (line.includes('"msg":"listening"')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`crypt-server exited (${code}) on a keyring of ${count} keys`)));
      });
      starts.push(performance.now() - begun);
      rss.push(rssMiB(child.pid!));
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { keys: count, startMs: median(starts), rssMiB: median(rss) };
}

/** Server RSS as more and more distinct contexts of one derived key are used (each an encrypt). */
export async function manyContexts(counts: readonly number[]): Promise<Array<{ contexts: number; rssMiB: number }>> {
  const server = await startCrypt();
  try {
    const client = await CryptClient.connect({ host: '127.0.0.1', port: server.port, timeoutMs: 30_000 });
    await client.createKey('users', { derived: true });
    const out: Array<{ contexts: number; rssMiB: number }> = [{ contexts: 0, rssMiB: rssMiB(server.child.pid!) }];
    let done = 0;
    for (const count of counts) {
      while (done < count) {
        // 256 requests in flight at a time, each with a context never used before
        const batch = Math.min(256, count - done);
        await Promise.all(Array.from({ length: batch }, (_, i) => client.encrypt('m', { key: 'users', context: Buffer.from(`tenant-${done + i}`) })));
        done += batch;
      }
      out.push({ contexts: count, rssMiB: rssMiB(server.child.pid!) });
    }
    await client.close();
    return out;
  } finally {
    await server.stop();
  }
}
