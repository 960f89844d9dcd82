/**
 * `npm run bench`: every figure of the performance issue, each beside its baseline as a ratio.
 *
 *   npm run bench                  the full run (about 15 minutes on 2 cores)
 *   npm run bench -- --quick       shorter measurements, for a first look
 *   npm run bench -- --only tcp    some suites: fernet, tcp, keys, http, memory, attacks, streams
 *   npm run bench -- --compare <dist/server/index.js of another build>
 *                                  adds that build as "crypt (compared)" beside crypt in the TCP and
 *                                  HTTP suites (run with the flags both builds know)
 *
 * Results go to bench/results/latest.json (and a dated copy). Servers run as separate processes;
 * the load generators run in this one. Each server figure is the median of its rounds.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fernetTable, runFernet } from './fernet.js';
import type { CoreResult } from './fernet.js';
import { runLoad } from './load.js';
import type { LoadOptions, LoadResult } from './load.js';
import { runHttp } from './http.js';
import type { HttpResult } from './http.js';
import { httpBatchFlood, idleConnections, largeInFlight, pipelineFlood, slowSegments } from './memory.js';
import type { AttackResult } from './memory.js';
import { keyChoice, keyringLoad, manyContexts } from './keys.js';
import type { KeyChoiceResult, KeyringLoad } from './keys.js';
import { PATHS, startCrypt, startProcess } from './servers.js';
import { runStreams } from './stream.js';
import type { StreamResult } from './stream.js';
import type { Running } from './servers.js';
import { format, machine, median, table } from './stats.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const onlyAt = args.indexOf('--only');
const only = onlyAt === -1 ? null : new Set((args[onlyAt + 1] ?? '').split(','));
const want = (suite: string) => !only || only.has(suite);
const compareAt = args.indexOf('--compare');
const compare = compareAt === -1 ? null : args[compareAt + 1] ?? null;
/** Flags an older build knows too, for --compare. */
const LEGACY = ['--port', '0', '--log-level', 'info', '--max-connections', '20000', '--rate-limit', '0'];
const seconds = quick ? 2 : 5;
const rounds = quick ? 1 : 3;
const log = (line: string) => process.stdout.write(line + '\n');
const PY = '/usr/bin/python3';

const AUDIT_FILE = join(mkdtempSync(join(tmpdir(), 'crypt-bench-')), 'audit.log');
process.on('exit', () => rmSync(dirname(AUDIT_FILE), { recursive: true, force: true }));

type Server = () => Promise<Running>;
const SERVERS: Record<string, Server> = {
  crypt: () => startCrypt(),
  'crypt --workers 2': () => startCrypt(['--workers', '2']),
  'crypt --no-metrics': () => startCrypt(['--no-metrics']),
  // one file, emptied at each start: a round writes about 100 MB of lines
  'crypt, audit log on': () => {
    rmSync(AUDIT_FILE, { force: true });
    return startCrypt(['--audit-file', AUDIT_FILE]);
  },
  'crypt (compared)': () => startProcess('crypt (compared)', process.execPath, [compare!, ...LEGACY]),
  'plain Node baseline': () => startProcess('plain Node baseline', process.execPath, [PATHS.baseline]),
  'Node, no crypto': () => startProcess('Node, no crypto', process.execPath, [PATHS.baseline, '--no-crypto']),
  'asyncio, drain each (idiomatic)': () => startProcess('asyncio', PY, [PATHS.python('asyncio_server.py'), '--drain-each']),
  'asyncio, tuned': () => startProcess('asyncio tuned', PY, [PATHS.python('asyncio_server.py')]),
  'old tool design': () => startProcess('old tool design', PY, [PATHS.python('old_tool_server.py')]),
};

/** A load against one server: rounds of measurement, the median of each figure. */
async function measure(start: Server, options: Omit<LoadOptions, 'port' | 'seconds'>): Promise<LoadResult> {
  const runs: LoadResult[] = [];
  for (let i = 0; i < rounds; i++) {
    const server = await start();
    try {
      runs.push(await runLoad({ ...options, port: server.port, seconds }));
    } finally {
      await server.stop();
    }
  }
  return {
    requests: median(runs.map((r) => r.requests)),
    rps: median(runs.map((r) => r.rps)),
    p50: median(runs.map((r) => r.p50)),
    p99: median(runs.map((r) => r.p99)),
    errors: runs.reduce((a, r) => a + r.errors, 0),
  };
}

interface Scenario {
  name: string;
  options: Omit<LoadOptions, 'port' | 'seconds'>;
  servers: string[];
}

const SCENARIOS: Scenario[] = [
  { name: 'sequential (8 connections, 1 in flight each)', options: { connections: 8, depth: 1 }, servers: ['crypt', ...(compare ? ['crypt (compared)'] : []), 'plain Node baseline', 'Node, no crypto', 'asyncio, drain each (idiomatic)', 'asyncio, tuned'] },
  { name: 'pipelined (8 connections, 16 in flight each)', options: { connections: 8, depth: 16 }, servers: ['crypt', ...(compare ? ['crypt (compared)'] : []), 'crypt --workers 2', 'crypt --no-metrics', 'crypt, audit log on', 'plain Node baseline', 'Node, no crypto', 'asyncio, drain each (idiomatic)', 'asyncio, tuned'] },
  { name: 'connection per request (8 clients)', options: { connections: 8, depth: 1, perRequest: true }, servers: ['crypt', 'plain Node baseline', 'old tool design'] },
  { name: 'sequential, 16 connections (latency)', options: { connections: 16, depth: 1 }, servers: ['crypt'] },
];

interface Results {
  date: string;
  machine: Record<string, string | number>;
  settings: { seconds: number; rounds: number; quick: boolean };
  fernet?: { results: CoreResult[]; python: string | null };
  tcp?: Record<string, Record<string, LoadResult>>;
  keys?: { choice: KeyChoiceResult; load: KeyringLoad[]; contexts: Array<{ contexts: number; rssMiB: number }> };
  http?: Record<string, HttpResult>;
  memory?: { crypt: { before: number; idle: number; perConnectionKiB: number }; baseline: { before: number; idle: number; perConnectionKiB: number }; largeInFlight: { rps: number; p50: number; p99: number; peakMiB: number; errors: number } };
  attacks?: { budgetMiB: number; pipelineFlood: AttackResult; httpBatchFlood: AttackResult; slowSegments: AttackResult };
  streams?: StreamResult;
  targets?: Array<{ target: string; measured: string; met: boolean }>;
}

async function main(): Promise<void> {
  const results: Results = { date: new Date().toISOString(), machine: machine(), settings: { seconds, rounds, quick } };
  log(`crypt benchmarks, ${results.date}`);
  log(Object.entries(results.machine).map(([k, v]) => `${k}: ${v}`).join('; '));
  log(`${seconds} s per measurement, ${rounds} round(s) each, median reported\n`);

  if (want('fernet')) {
    log('Fernet core (ops/s; ratios are crypt / other)');
    results.fernet = runFernet(quick ? 0.6 : 1.5, log);
    log(fernetTable(results.fernet.results) + '\n');
  }

  if (want('tcp')) {
    results.tcp = {};
    for (const s of SCENARIOS) {
      log(`TCP ${s.name}, 100-byte messages, every reply checked`);
      const rows: Array<Array<string | number>> = [];
      const figures: Record<string, LoadResult> = {};
      for (const name of s.servers) {
        const r = await measure(SERVERS[name]!, s.options);
        figures[name] = r;
        rows.push([name, r.rps, r.p50, r.p99, r.errors]);
        log(`  ${name}: ${format(r.rps)} req/s`);
      }
      const crypt = figures.crypt!.rps;
      log(table(['server', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'crypt ÷ this'], rows.map((r) => [...r, r[0] === 'crypt' ? '' : `${(crypt / (r[1] as number)).toFixed(2)}x`])) + '\n');
      results.tcp[s.name] = figures;
    }
  }

  if (want('keys')) {
    log('Named keys: TCP pipelined (8 connections, 16 in flight each), 100-byte messages, the three loads alternating on one server');
    const choice = await keyChoice(seconds, rounds);
    log(table(['request options', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'this ÷ none'], (Object.entries({ 'none (the key default)': choice.none, 'key=billing': choice.named, 'key=users,context=... (derived, cached)': choice.derived }) as Array<[string, LoadResult]>).map(([n, r]) => [n, r.rps, r.p50, r.p99, r.errors, `${(r.rps / choice.none.rps).toFixed(2)}x`])));
    const load = [await keyringLoad(0, rounds), await keyringLoad(10_000, rounds)];
    log(table(['named keys in the keyring', 'start to listening ms', 'RSS then MiB'], load.map((l) => [l.keys, l.startMs, l.rssMiB])));
    const contexts = await manyContexts(quick ? [10_000, 50_000] : [10_000, 50_000, 200_000]);
    log(table(['distinct contexts used', 'server RSS MiB'], contexts.map((c) => [c.contexts, c.rssMiB])) + '\n');
    results.keys = { choice, load, contexts };
  }

  if (want('http')) {
    log('HTTP (autocannon, 8 connections, encrypt then decrypt, every reply checked)');
    const http: Record<string, HttpResult> = {};
    const httpServers: Array<[string, () => Promise<Running>]> = [
      ['crypt', () => startCrypt(['--http', '--http-port', '0'])],
      ...(compare ? [['crypt (compared)', () => startProcess('crypt (compared)', process.execPath, [compare, ...LEGACY, '--http', '--http-port', '0'], { http: true })] as [string, () => Promise<Running>]] : []),
      ['bare Fastify, same Fernet', () => startProcess('fastify baseline', process.execPath, [PATHS.baseline, '--fastify'])],
      ['plain node:http baseline', () => startProcess('http baseline', process.execPath, [PATHS.baseline, '--http'])],
    ];
    for (const [name, start] of httpServers) {
      const runs: HttpResult[] = [];
      for (let i = 0; i < rounds; i++) {
        const server = await start();
        try {
          runs.push(await runHttp(server.httpPort ?? server.port, seconds));
        } finally {
          await server.stop();
        }
      }
      http[name] = { rps: median(runs.map((r) => r.rps)), p50: median(runs.map((r) => r.p50)), p99: median(runs.map((r) => r.p99)), errors: runs.reduce((a, r) => a + r.errors, 0) };
    }
    results.http = http;
    log(table(['server', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'crypt ÷ this'], Object.entries(http).map(([n, r]) => [n, r.rps, r.p50, r.p99, r.errors, n === 'crypt' ? '' : `${(http.crypt!.rps / r.rps).toFixed(2)}x`])) + '\n');
  }

  if (want('memory')) {
    log('Memory');
    const crypt = await startCrypt();
    const ours = await idleConnections(crypt);
    await crypt.stop();
    const base = await startProcess('baseline', process.execPath, [PATHS.baseline]);
    const theirs = await idleConnections(base);
    await base.stop();
    const heavy = await startCrypt();
    const inFlight = await largeInFlight(heavy, seconds);
    await heavy.stop();
    results.memory = { crypt: ours, baseline: theirs, largeInFlight: inFlight };
    log(table(['', 'RSS before MiB', 'RSS with 10,000 idle MiB', 'KiB per connection'], [['crypt', ours.before, ours.idle, ours.perConnectionKiB], ['plain Node baseline', theirs.before, theirs.idle, theirs.perConnectionKiB]]));
    log(`1 MiB request always in flight: 100-byte requests at ${format(inFlight.rps)} req/s, p50 ${format(inFlight.p50)} ms, p99 ${format(inFlight.p99)} ms; peak RSS ${format(inFlight.peakMiB)} MiB; errors ${inFlight.errors}\n`);
  }

  if (want('attacks')) {
    log('Attacks on memory (default settings: --memory-budget 256 MiB), peak RSS of the server process');
    const budgetMiB = 256;
    const flood = await startCrypt();
    const pipeline = await pipelineFlood(flood);
    await flood.stop();
    const web = await startCrypt(['--http', '--http-port', '0']);
    const batches = await httpBatchFlood(web);
    await web.stop();
    const slow = await startCrypt();
    const segments = await slowSegments(slow, 8, quick ? 5 : 20);
    await slow.stop();
    results.attacks = { budgetMiB, pipelineFlood: pipeline, httpBatchFlood: batches, slowSegments: segments };
    log(table(['attack', 'RSS before MiB', 'peak RSS MiB', 'what happened'], [['TCP pipelined 1 MiB frames, never read', pipeline.beforeMiB, pipeline.peakMiB, pipeline.detail], ['HTTP batches of one 1 MiB item', batches.beforeMiB, batches.peakMiB, batches.detail], ['one byte per TCP segment', segments.beforeMiB, segments.peakMiB, segments.detail]]) + '\n');
  }

  if (want('streams')) {
    const size = quick ? 256 * 1024 * 1024 : 1024 * 1024 * 1024;
    log(`Streams (crypt-stream/1), ${size / 1048576} MiB each`);
    results.streams = await runStreams(size, log);
    log('');
  }

  results.targets = targets(results);
  if (results.targets.length) {
    log('Targets');
    log(table(['target', 'measured', 'met'], results.targets.map((t) => [t.target, t.measured, t.met ? 'yes' : 'NO'])));
  }
  const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const json = JSON.stringify(results, null, 2) + '\n';
  if (!only && !quick) writeFileSync(`${dir}latest.json`, json);
  writeFileSync(`${dir}${results.date.replace(/[:.]/g, '-')}${quick ? '-quick' : ''}${only ? '-partial' : ''}.json`, json);
  log(`\nresults written to bench/results/`);
}

function targets(r: Results): Array<{ target: string; measured: string; met: boolean }> {
  const out: Array<{ target: string; measured: string; met: boolean }> = [];
  const ratioTarget = (target: string, a: number | undefined, b: number | undefined, min: number) => {
    if (!a || !b) return;
    out.push({ target, measured: `${(a / b).toFixed(2)}x (${format(a)} / ${format(b)})`, met: a / b >= min });
  };
  const tcp = (scenario: string, server: string) => r.tcp?.[SCENARIOS.find((s) => s.name.startsWith(scenario))!.name]?.[server];
  const seq = 'sequential (8';
  const pipe = 'pipelined';
  ratioTarget('TCP pipelined >= 2x plain Node', tcp(pipe, 'crypt')?.rps, tcp(pipe, 'plain Node baseline')?.rps, 2);
  ratioTarget('HTTP >= 0.95x a bare Fastify route with the same Fernet', r.http?.crypt?.rps, r.http?.['bare Fastify, same Fernet']?.rps, 0.95);
  if (compare) ratioTarget('TCP pipelined: the dispatcher costs nothing visible (>= 0.95x the compared build)', tcp(pipe, 'crypt')?.rps, tcp(pipe, 'crypt (compared)')?.rps, 0.95);
  ratioTarget('TCP pipelined with metrics on (the default) >= 0.97x --no-metrics', tcp(pipe, 'crypt')?.rps, tcp(pipe, 'crypt --no-metrics')?.rps, 0.97);
  ratioTarget('TCP pipelined with the audit log on >= 0.85x off', tcp(pipe, 'crypt, audit log on')?.rps, tcp(pipe, 'crypt')?.rps, 0.85);
  ratioTarget('TCP pipelined >= 8x asyncio (idiomatic)', tcp(pipe, 'crypt')?.rps, tcp(pipe, 'asyncio, drain each (idiomatic)')?.rps, 8);
  ratioTarget('TCP pipelined >= 8x asyncio (tuned)', tcp(pipe, 'crypt')?.rps, tcp(pipe, 'asyncio, tuned')?.rps, 8);
  ratioTarget('TCP sequential >= 1.0x plain Node', tcp(seq, 'crypt')?.rps, tcp(seq, 'plain Node baseline')?.rps, 1.0);
  ratioTarget('TCP sequential >= 3x asyncio (idiomatic)', tcp(seq, 'crypt')?.rps, tcp(seq, 'asyncio, drain each (idiomatic)')?.rps, 3);
  ratioTarget('TCP sequential >= 3x asyncio (tuned)', tcp(seq, 'crypt')?.rps, tcp(seq, 'asyncio, tuned')?.rps, 3);
  ratioTarget('connection per request >= 2x old design', tcp('connection per request', 'crypt')?.rps, tcp('connection per request', 'old tool design')?.rps, 2);
  const core = (impl: string, size: number) => r.fernet?.results.find((x) => x.impl === impl && x.size === size && x.op === 'roundtrip')?.ops;
  ratioTarget('Fernet round trip >= 2.5x Python, 16 B', core('crypt', 16), core('python cryptography', 16), 2.5);
  ratioTarget('Fernet round trip >= 2.5x Python, 1 MiB', core('crypt', 1 << 20), core('python cryptography', 1 << 20), 2.5);
  if (r.memory) {
    const mb = (r.memory.crypt.idle * 1048576) / 1e6;
    out.push({ target: '10,000 idle connections < 150 MB RSS', measured: `${format(mb)} MB (${format(r.memory.crypt.idle)} MiB)`, met: mb < 150 });
    out.push({ target: 'p99 < 20 ms beside a 1 MiB request', measured: `${format(r.memory.largeInFlight.p99)} ms`, met: r.memory.largeInFlight.p99 < 20 });
  }
  if (r.attacks) {
    const bound = r.attacks.budgetMiB + 128;
    for (const [name, a] of [['TCP pipelined 1 MiB frames', r.attacks.pipelineFlood], ['HTTP 1 MiB batches', r.attacks.httpBatchFlood], ['one-byte segments', r.attacks.slowSegments]] as const) {
      out.push({ target: `${name}: peak RSS < budget + 128 MiB (${bound} MiB)`, measured: `${format(a.peakMiB)} MiB`, met: a.peakMiB < bound });
    }
  }
  if (r.streams) {
    const st = r.streams;
    const raw = st.rawMBps;
    const mb = (x: number) => x;
    ratioTarget('crypt-client encrypt-file >= 0.75x raw ChaCha20-Poly1305 (64 KiB chunks)', mb(st.client.encryptMBps), raw, 0.75);
    ratioTarget('crypt-client decrypt-file >= 0.75x raw ChaCha20-Poly1305', st.client.decryptMBps, raw, 0.75);
    ratioTarget('server TCP se, end to end >= 0.40x raw', st.server.tcpEncryptMBps, raw, 0.4);
    ratioTarget('server TCP sd, end to end >= 0.40x raw', st.server.tcpDecryptMBps, raw, 0.4);
    ratioTarget('server HTTP PUT /stream/encrypt, end to end >= 0.40x raw', st.server.httpEncryptMBps, raw, 0.4);
    const rss = (target: string, v: number, max: number) => out.push({ target, measured: `${format((v * 1048576) / 1e6)} MB (${format(v)} MiB)`, met: (v * 1048576) / 1e6 < max });
    rss(`client RSS < 128 MB while ${st.sizeMiB} MiB streams (encrypt-file)`, st.client.encryptPeakMiB, 128);
    rss('client RSS < 128 MB (decrypt-file)', st.client.decryptPeakMiB, 128);
    rss('server RSS < 128 MB while streams run (se, sd, HTTP, one at a time)', st.server.peakMiB, 128);
    rss('server RSS < 256 MB with 8 concurrent streams', st.server.eightConcurrentPeakMiB, 256);
    out.push({ target: '100-byte requests beside 4 streams: p99 < 20 ms', measured: `${st.beside.p99.toFixed(2)} ms`, met: st.beside.p99 < 20 });
  }
  if (r.keys) {
    ratioTarget('TCP pipelined with key= >= 0.95x without', r.keys.choice.named.rps, r.keys.choice.none.rps, 0.95);
    ratioTarget('TCP pipelined with a derived key (cache hit) >= 0.9x without', r.keys.choice.derived.rps, r.keys.choice.none.rps, 0.9);
    const many = r.keys.load.find((l) => l.keys === 10_000);
    if (many) {
      out.push({ target: '10,000 named keys: start to listening < 1 s', measured: `${format(many.startMs)} ms`, met: many.startMs < 1000 });
      const mb = (many.rssMiB * 1048576) / 1e6;
      out.push({ target: '10,000 named keys: < 100 MB RSS', measured: `${format(mb)} MB (${format(many.rssMiB)} MiB)`, met: mb < 100 });
    }
  }
  const lat = tcp('sequential, 16', 'crypt');
  if (lat) out.push({ target: 'p99 < 5 ms at 16 sequential connections', measured: `${format(lat.p99)} ms`, met: lat.p99 < 5 });
  return out;
}

await main();
