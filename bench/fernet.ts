/**
 * Fernet core: encrypt, decrypt and round trip at 16 B, 1 KiB, 64 KiB and 1 MiB, for crypt's
 * core, a plain node:crypto Fernet (the baseline), the npm `fernet` package and Python's
 * `cryptography` when present. Implementations take turns, three rounds each; the median counts.
 */
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FernetKey, decrypt } from '../src/crypto/fernet.js';
import { PlainFernet } from './plain-fernet.js';
import { median, rate, ratio, table } from './stats.js';

export const SIZES = [16, 1024, 64 * 1024, 1024 * 1024];
const OPS = ['encrypt', 'decrypt', 'roundtrip'] as const;
type Op = (typeof OPS)[number];

/** One measured figure. */
export interface CoreResult {
  impl: string;
  size: number;
  op: Op;
  ops: number;
  mbps: number;
}

interface Impl {
  name: string;
  prepare(message: Buffer): Record<Op, () => unknown>;
}

function implementations(): Impl[] {
  const key = FernetKey.generate();
  const plain = new PlainFernet(key.export());
  const impls: Impl[] = [
    {
      name: 'crypt',
      prepare: (m) => {
        const token = key.encrypt(m);
        const keys = [key];
        return { encrypt: () => key.encrypt(m), decrypt: () => decrypt(keys, token), roundtrip: () => decrypt(keys, key.encrypt(m)) };
      },
    },
    {
      name: 'plain node:crypto',
      prepare: (m) => {
        const token = plain.encrypt(m);
        return { encrypt: () => plain.encrypt(m), decrypt: () => plain.decrypt(token), roundtrip: () => plain.decrypt(plain.encrypt(m)) };
      },
    },
  ];
  try {
    const fernet = createRequire(import.meta.url)('fernet') as {
      Secret: new (key: string) => unknown;
      Token: new (opts: Record<string, unknown>) => { encode(m: string): string; decode(t?: string): string };
    };
    const secret = new fernet.Secret(key.export());
    impls.push({
      name: 'npm fernet',
      prepare: (m) => {
        const text = m.toString('latin1').replace(/[^\x20-\x7e]/g, 'a');
        const enc = () => new fernet.Token({ secret, ttl: 0 }).encode(text);
        const token = enc();
        const dec = (t: string) => new fernet.Token({ secret, token: t, ttl: 0 }).decode();
        return { encrypt: enc, decrypt: () => dec(token), roundtrip: () => dec(enc()) };
      },
    });
  } catch {
    // not installed: left out of the table
  }
  return impls;
}

/** Python's figures, from its own timing loop; null when python3-cryptography is missing. */
function python(seconds: number): { version: string; results: Array<{ size: number; op: Op; ops: number }> } | null {
  const script = fileURLToPath(new URL('../../bench/python/fernet_bench.py', import.meta.url));
  const run = spawnSync('/usr/bin/python3', [script], { input: JSON.stringify({ sizes: SIZES, seconds }), encoding: 'utf8' });
  if (run.status !== 0) return null;
  return JSON.parse(run.stdout) as { version: string; results: Array<{ size: number; op: Op; ops: number }> };
}

/** Runs the core benchmark; `seconds` per measurement. */
export function runFernet(seconds: number, log: (line: string) => void): { results: CoreResult[]; python: string | null } {
  const impls = implementations();
  const results: CoreResult[] = [];
  for (const size of SIZES) {
    const message = Buffer.alloc(size, 'x');
    const prepared = impls.map((impl) => ({ impl, fns: impl.prepare(message) }));
    for (const op of OPS) {
      // npm fernet is 15-100x slower: a shorter turn keeps the run short without changing its figure much
      const rounds = new Map<string, number[]>();
      for (let round = 0; round < 3; round++) {
        for (const { impl, fns } of prepared) {
          const ms = (impl.name === 'npm fernet' ? 0.3 : 1) * seconds * 1000 / 3;
          rounds.set(impl.name, [...(rounds.get(impl.name) ?? []), rate(fns[op], ms)]);
        }
      }
      for (const [impl, values] of rounds) {
        const ops = median(values);
        results.push({ impl, size, op, ops, mbps: (ops * size) / 1e6 });
      }
    }
    log(`  fernet core: ${size} B done`);
  }
  const py = python(seconds);
  if (py) for (const r of py.results) results.push({ impl: 'python cryptography', size: r.size, op: r.op, ops: r.ops, mbps: (r.ops * r.size) / 1e6 });
  return { results, python: py?.version ?? null };
}

/** The core results as a table: ops/s and MB/s, with crypt's ratio to each other implementation. */
export function fernetTable(results: CoreResult[]): string {
  const get = (impl: string, size: number, op: Op) => results.find((r) => r.impl === impl && r.size === size && r.op === op);
  const rows: Array<Array<string | number>> = [];
  for (const size of SIZES) {
    for (const op of OPS) {
      const ours = get('crypt', size, op);
      const plain = get('plain node:crypto', size, op);
      const npm = get('npm fernet', size, op);
      const py = get('python cryptography', size, op);
      rows.push([`${sizeName(size)} ${op}`, ours?.ops ?? NaN, ours?.mbps ?? NaN, plain?.ops ?? NaN, ratio(ours?.ops, plain?.ops), npm?.ops ?? NaN, ratio(ours?.ops, npm?.ops), py?.ops ?? NaN, ratio(ours?.ops, py?.ops)]);
    }
  }
  return table(['size op', 'crypt ops/s', 'crypt MB/s', 'plain ops/s', 'vs plain', 'npm fernet', 'vs npm', 'python', 'vs python'], rows);
}

export const sizeName = (size: number): string => (size >= 1 << 20 ? `${size >> 20} MiB` : size >= 1024 ? `${size >> 10} KiB` : `${size} B`);
